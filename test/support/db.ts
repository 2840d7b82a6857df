import { randomBytes } from 'node:crypto';
import pg from 'pg';
import type { DataSource } from 'typeorm';
import { createDataSource } from '../../server/db.js';

/** A migrated, empty database of its own, and how to drop it. */
export interface TestDb {
  ds: DataSource;
  /** The Postgres URL of this database, or null on PGlite. */
  url: string | null;
  /** True on the embedded PGlite: one connection, so concurrency is not exercised. */
  embedded: boolean;
  /** Empties every table, much faster than a new database. */
  reset(): Promise<void>;
  close(): Promise<void>;
}

const TABLES = 'webhook_events, ledger_entries, conversation_time_records, free_time_allowances, chats, advisors, users';
const truncate = (ds: DataSource) => ds.query(`TRUNCATE ${TABLES} RESTART IDENTITY CASCADE`).then(() => undefined);

/**
 * A fresh database: a new Postgres database on the server of `DATABASE_URL` when it
 * is set, otherwise an in-memory PGlite (never in CI, which must set it). Pass
 * `embedded: true` to force PGlite.
 */
export async function freshDatabase(opts: { embedded?: boolean; migrate?: boolean } = {}): Promise<TestDb> {
  const base = process.env.DATABASE_URL;
  if (!base && !opts.embedded && process.env.CI) {
    // on PGlite's one connection every concurrency test runs one transaction at a time and proves nothing
    throw new Error('CI runs the database tests on a Postgres server: set DATABASE_URL (.ci/run does)');
  }
  if (!base || opts.embedded) {
    const ds = await createDataSource({ databaseUrl: null, dataDir: 'memory://' });
    await ds.initialize();
    if (opts.migrate !== false) await ds.runMigrations({ transaction: 'each' });
    return { ds, url: null, embedded: true, reset: () => truncate(ds), close: () => ds.destroy() };
  }
  // a mutation run names its own (stryker.config.mjs), to drop those a killed test runner left behind
  const prefix = /^[a-z_]{1,20}$/.test(process.env.TEST_DATABASE_PREFIX ?? '') ? process.env.TEST_DATABASE_PREFIX : 'chatmeter_t';
  const name = `${prefix}_${randomBytes(6).toString('hex')}`;
  await admin(base, `CREATE DATABASE ${name}`);
  const url = withDatabase(base, name);
  const ds = await createDataSource({ databaseUrl: url, dataDir: '' });
  await ds.initialize();
  if (opts.migrate !== false) await ds.runMigrations({ transaction: 'each' });
  return {
    ds,
    url,
    embedded: false,
    reset: () => truncate(ds),
    close: async () => {
      if (ds.isInitialized) await ds.destroy();
      await admin(base, `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
    },
  };
}

/** The same server URL pointing at another database. */
export function withDatabase(url: string, name: string): string {
  const u = new URL(url);
  u.pathname = `/${name}`;
  return u.toString();
}

async function admin(url: string, sql: string): Promise<void> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    await client.query(sql);
  } finally {
    await client.end();
  }
}
