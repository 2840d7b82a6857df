/**
 * `npm run verify`: checks every invariant of SPEC section 1 over the configured
 * database (DATABASE_URL, or the embedded PGlite in DATA_DIR). Prints each violation
 * as one JSON line on stdout, then a summary line (`verify: 0 violations`).
 * Exit status: 0 when sound, 1 on any violation, 2 when it could not check at all
 * (bad configuration, unreachable database, no schema).
 */
import { existsSync } from 'node:fs';
import { type Config, loadConfig } from './config.js';
import { createDataSource } from './db.js';
import { verifyInvariants } from './verify.js';

const TABLES = ['users', 'advisors', 'chats', 'free_time_allowances', 'conversation_time_records', 'ledger_entries'];

const say = (line: string) => process.stdout.write(`${line}\n`);
const complain = (line: string) => process.stderr.write(`verify: ${line}\n`);
const messageOf = (err: unknown) => (err instanceof Error ? err.message : String(err));

/** Where the data is, for messages: the URL without its password, or the data directory. */
function where(config: Config): string {
  if (!config.databaseUrl) return `the embedded database in ${config.dataDir}`;
  try {
    const u = new URL(config.databaseUrl);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return 'DATABASE_URL';
  }
}

async function main(): Promise<number> {
  let config: Config;
  try {
    config = loadConfig();
  } catch (err) {
    complain(messageOf(err));
    return 2;
  }
  if (!config.databaseUrl) {
    // opening a directory that isn't there would create an empty database: say so instead
    if (!existsSync(config.dataDir)) {
      complain(`no embedded database in ${config.dataDir}: set DATABASE_URL or DATA_DIR`);
      return 2;
    }
  }

  let ds;
  try {
    // refuses a data directory a running server holds (one process per PGlite directory)
    ds = await createDataSource(config);
    await ds.initialize();
  } catch (err) {
    complain(`cannot reach ${where(config)}: ${messageOf(err)}`);
    return 2;
  }
  try {
    const found: Array<{ name: string; present: boolean }> = await ds.query(
      `SELECT t AS name, to_regclass(t) IS NOT NULL AS present FROM unnest($1::text[]) AS t`,
      [TABLES],
    );
    const missing = found.filter((t) => !t.present).map((t) => t.name);
    if (missing.length) {
      complain(`${where(config)} has no chatmeter schema (missing ${missing.join(', ')}): run \`npm run migrate\` first`);
      return 2;
    }
    const violations = await verifyInvariants(ds);
    for (const v of violations) say(JSON.stringify(v));
    say(`verify: ${violations.length} violation${violations.length === 1 ? '' : 's'}`);
    return violations.length ? 1 : 0;
  } catch (err) {
    complain(`could not check ${where(config)}: ${messageOf(err)}`);
    return 2;
  } finally {
    await ds.destroy().catch(() => undefined);
  }
}

const code = await main();
// exit once stdout is written, whatever timers a driver left behind
process.stdout.write('', () => process.exit(code));
