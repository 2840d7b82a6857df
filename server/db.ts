import { existsSync, mkdirSync, readFileSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { DataSource } from 'typeorm';
import { entities } from '../entities/index.js';
import { migrations } from '../migrations/index.js';
import { pgTypes } from './timestamps.js';

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
    return new DataSource({
      ...common,
      url: target.databaseUrl,
      poolSize: 20,
      // a stuck lock or a blackholed server fails a query instead of hanging a tick or a shutdown
      // timestamptz read digit by digit, not by pg's regular expressions (server/timestamps.ts)
      extra: { application_name: 'chatmeter', statement_timeout: 30_000, connectionTimeoutMillis: 10_000, keepAlive: true, types: pgTypes },
    });
  }
  const { PGlite } = await import('@electric-sql/pglite');
  const { createPgConfig } = await import('@electric-sql/pglite/node-postgres');
  const dir = target.dataDir;
  const onDisk = !dir.startsWith('memory://');
  if (onDisk) {
    mkdirSync(dir, { recursive: true });
    takeLock(dir);
  }
  const pglite = new PGlite(dir);
  const pg = createPgConfig(pglite);
  const ds = new DataSource({
    ...common,
    host: pg.host,
    port: pg.port,
    username: pg.user,
    password: pg.password,
    database: pg.database,
    poolSize: 1,
    extra: { connection: pg.connection, idleTimeoutMillis: 0 },
  });
  // the adapter never closes the PGlite it wraps: close it (and free the directory) with the data source
  const destroy = ds.destroy.bind(ds);
  ds.destroy = async () => {
    if (ds.isInitialized) await destroy();
    if (!pglite.closed) await pglite.close();
    if (onDisk) releaseLock(dir);
  };
  return ds;
}

/** Thrown when another live process holds the embedded data directory. */
export class DataDirInUseError extends Error {
  override name = 'DataDirInUseError';
}

const lockPath = (dir: string) => join(dir, 'chatmeter.lock');

/**
 * One process per PGlite directory (two lose writes silently): a lock file with
 * the owner's pid; a stale one, whose process is gone, is taken over.
 */
function takeLock(dir: string): void {
  const path = lockPath(dir);
  if (existsSync(path)) {
    const pid = Number(readFileSync(path, 'utf8').trim());
    if (pid && pid !== process.pid && alive(pid)) {
      throw new DataDirInUseError(`the embedded database in ${dir} is in use by process ${pid}; stop it first or set DATABASE_URL`);
    }
  }
  writeFileSync(path, String(process.pid));
}

function releaseLock(dir: string): void {
  try {
    if (readFileSync(lockPath(dir), 'utf8').trim() === String(process.pid)) unlinkSync(lockPath(dir));
  } catch {
    // already gone
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** The rows of an UPDATE ... RETURNING: TypeORM answers it with [rows, rowCount], an INSERT or SELECT with the rows. */
export async function updateReturning<T>(q: Pick<DataSource, 'query'>, sql: string, params: unknown[]): Promise<T[]> {
  const result: unknown = await q.query(sql, params);
  return (Array.isArray(result) && Array.isArray(result[0]) ? result[0] : result) as T[];
}
