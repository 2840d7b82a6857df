/**
 * `npm run faults`: the fault run (issue 10, item 2). Real node processes on
 * 127.0.0.1 (three, as `npm start` runs them) on a throwaway database of
 * DATABASE_URL's server and a Redis of the run's own, faults injected one after
 * another (scenarios.ts), and a table of what each did to billing. The last line,
 *
 *   faults: N run, D seconds double-billed, L seconds lost, C crashes, verify ok|failed
 *
 * is what scripts judge; the exit code is 0 only with D = 0, C = 0 and verify ok.
 * FAULTS_ONLY=kill9,storm runs some rows; FAULTS_TIMEOUT_MS (600000) bounds the run;
 * FAULTS_LOG_DIR=dir keeps every node's JSON log lines there.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { verifyInvariants } from '../server/verify.js';
import { Cluster } from './cluster.js';
import { lastLine, notes, table } from './report.js';
import { type Row, runScenario } from './runner.js';
import { SCENARIOS } from './scenarios.js';

const base = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';
const only = process.env.FAULTS_ONLY?.split(',').map((s) => s.trim()).filter(Boolean);
const scenarios = only ? SCENARIOS.filter((s) => only.includes(s.key)) : SCENARIOS;
const timeoutMs = Number(process.env.FAULTS_TIMEOUT_MS ?? 600_000);

const log = (line: string) => process.stdout.write(`${line}\n`);
const rows: Row[] = [];
let cluster: Cluster | null = null;
let finished = false;

async function main(): Promise<number> {
  const began = Date.now();
  log(`fault run: ${scenarios.length} scenarios on 3 nodes, database on ${new URL(base).host}, a redis-server of the run's own`);
  cluster = await Cluster.start(base);
  await cluster.ensure(3);
  log(`cluster up in ${((Date.now() - began) / 1000).toFixed(1)} s`);
  for (const [i, sc] of scenarios.entries()) {
    log(`- ${sc.key}: ${sc.title}`);
    try {
      rows.push(await runScenario(cluster, sc, i));
    } catch (err) {
      // the row could not be measured: it fails the run, whatever the cause
      rows.push(failedRow(sc.key, sc.title, sc.chats, err));
      await cluster.ensure(3).catch(() => undefined);
    }
    const r = rows.at(-1)!;
    log(`  ${r.seconds.toFixed(0)} s: billed ${r.billed} s, present ${(r.presentMs / 1000).toFixed(1)} s, ${r.double} double-billed, ${r.lost} lost, ${r.crashes} crashes, verify ${r.verify ? 'ok' : 'failed'}`);
  }
  const violations = await verifyInvariants(cluster.ds);
  const setupCrashes = cluster.crashes.filter((c) => c.scenario === 'setup').length;
  finished = true;
  log('');
  log(table(rows));
  log('');
  log(notes(rows));
  if (violations.length) log(`final verify: ${violations.length} violations, e.g. ${violations[0]!.message}`);
  log(`total ${((Date.now() - began) / 1000).toFixed(0)} s`);
  const verifyOk = violations.length === 0 && rows.every((r) => r.verify);
  const line = lastLine(rows, verifyOk, setupCrashes);
  if (process.env.FAULTS_LOG_DIR) dumpLogs(cluster, process.env.FAULTS_LOG_DIR);
  await cluster.close();
  log(line);
  const bad = rows.some((r) => r.double > 0) || rows.some((r) => r.crashes > 0) || setupCrashes > 0 || !verifyOk;
  return bad ? 1 : 0;
}

/** Every node's JSON log lines, one file a node, for a closer look. */
function dumpLogs(c: Cluster, dir: string): void {
  mkdirSync(dir, { recursive: true });
  for (const n of c.all) writeFileSync(join(dir, `${n.label}.jsonl`), n.proc.lines.map((l) => JSON.stringify(l)).join('\n') + '\n');
  log(`node logs in ${dir}`);
}

function failedRow(key: string, fault: string, chats: number, err: unknown): Row {
  const message = err instanceof Error ? err.message : String(err);
  return {
    key,
    fault,
    chats,
    tabs: 0,
    affected: 0,
    billed: 0,
    presentMs: 0,
    unsureMs: 0,
    double: 0,
    lost: 0,
    crashes: cluster?.crashes.filter((c) => c.scenario === key).length ?? 0,
    recoveryMs: null,
    verify: false,
    notes: [`the row did not complete: ${message.slice(0, 500)}`],
    seconds: 0,
  };
}

/** Abandons the run (timeout, Ctrl-C): cleans up and prints the line as failed. */
async function abandon(why: string): Promise<never> {
  if (!finished) {
    log(`fault run abandoned: ${why}`);
    await cluster?.close().catch(() => undefined);
    log(lastLine(rows, false));
  }
  process.exit(1);
}

const watchdog = setTimeout(() => void abandon(`over ${timeoutMs / 1000} s`), timeoutMs);
process.on('SIGINT', () => void abandon('interrupted'));
process.on('SIGTERM', () => void abandon('terminated'));

main().then(
  (code) => {
    clearTimeout(watchdog);
    process.exit(code);
  },
  (err: unknown) => void abandon(err instanceof Error ? (err.stack ?? err.message) : String(err)),
);
