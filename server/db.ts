import { mkdirSync } from 'node:fs';
import { DataSource } from 'typeorm';
import { entities } from '../entities/index.js';
import { migrations } from '../migrations/index.js';

/** Where the data lives: a Postgres URL, or a directory for the embedded PGlite. */
export interface DbTarget {
  databaseUrl: string | null;
  dataDir: string;
}

/**
 * The one DataSource of the app, the CLI and the tests: real Postgres when a URL is
 * given, otherwise PGlite through its node-postgres adapter, so both run the same
 * driver, entities and migrations. PGlite has a single connection: code inside a
 * transaction must use the manager it is given, or it waits on itself forever.
 */
export async function createDataSource(target: DbTarget): Promise<DataSource> {
  const common = { type: 'postgres' as const, entities, migrations, synchronize: false, logging: false };
  if (target.databaseUrl) {
    return new DataSource({ ...common, url: target.databaseUrl, poolSize: 20, extra: { application_name: 'chatmeter' } });
  }
  const { createPgConfig } = await import('@electric-sql/pglite/node-postgres');
  const dir = target.dataDir;
  if (!dir.startsWith('memory://')) mkdirSync(dir, { recursive: true });
  const pg = createPgConfig(dir);
  return new DataSource({
    ...common,
    host: pg.host,
    port: pg.port,
    username: pg.user,
    password: pg.password,
    database: pg.database,
    poolSize: 1,
    extra: { connection: pg.connection, idleTimeoutMillis: 0 },
  });
}

/** True when the data source is the embedded database (one connection, no real concurrency). */
export function isEmbedded(target: DbTarget): boolean {
  return !target.databaseUrl;
}
