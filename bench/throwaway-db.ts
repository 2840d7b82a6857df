import { randomBytes } from 'node:crypto';
import pg from 'pg';

/**
 * A new database on the server of `base` (a Postgres URL), or null without one
 * (PGlite then). `drop` removes it, connections and all.
 */
export async function throwawayDatabase(base: string | undefined, prefix: string): Promise<{ url: string | null; drop: () => Promise<void> }> {
  if (!base) return { url: null, drop: async () => {} };
  const name = `${prefix}_${randomBytes(4).toString('hex')}`;
  const run = async (sql: string) => {
    const c = new pg.Client({ connectionString: base });
    await c.connect();
    try {
      await c.query(sql);
    } finally {
      await c.end();
    }
  };
  await run(`CREATE DATABASE ${name}`);
  const u = new URL(base);
  u.pathname = `/${name}`;
  return { url: u.toString(), drop: () => run(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`) };
}
