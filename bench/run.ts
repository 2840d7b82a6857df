/**
 * Benchmarks, printing figures (nothing here fails because a machine is slow).
 *
 * settlement: 5,000 metered chats settled once per simulated tick, in phase
 * buckets as the ticker does (10 batches of ~500), on the database of
 * DATABASE_URL or on PGlite. Prints the time per batch and per whole tick and
 * the round trips per batch.
 *
 * `npm run bench` runs this, then the load mode (bench/load/load.ts: nodes and a
 * bare socket.io baseline under 10,000 tabs); BENCH_CHATS sets the chats of both.
 *
 * @example npm run bench                       # PGlite
 * @example DATABASE_URL=postgres://... npm run bench
 */
import { Accounts } from '../server/accounts.js';
import { throwawayDatabase } from './throwaway-db.js';
import { createDataSource } from '../server/db.js';
import { SettlementService } from '../server/metering/settlement.js';
import { bucketOf } from '../server/metering/ticker.js';

const CHATS = Number(process.env.BENCH_CHATS ?? 5000);
const TICKS = Number(process.env.BENCH_TICKS ?? 5);
const BUCKETS = 10;

async function main(): Promise<void> {
  const { url, drop: dropDb } = await throwawayDatabase(process.env.DATABASE_URL, 'chatmeter_bench');
  const ds = await createDataSource({ databaseUrl: url, dataDir: 'memory://' });
  await ds.initialize();
  await ds.runMigrations();
  const engine = new SettlementService(ds, { abandonTimeoutMs: 120_000, lowBalanceSeconds: 60 });
  const accounts = new Accounts(ds, { freeTimeSeconds: 30 });

  let queries = 0;
  const realQuery = ds.query.bind(ds);
  (ds as { query: unknown }).query = (...a: Parameters<typeof realQuery>) => {
    queries++;
    return realQuery(...a);
  };
  // time each statement of a settlement by what it does (its first words), to see where a batch goes
  const statementMs = new Map<string, number[]>();
  let timing = false;
  const createRunner = ds.createQueryRunner.bind(ds);
  ds.createQueryRunner = (...a: Parameters<typeof createRunner>) => {
    const runner = createRunner(...a);
    const query = runner.query.bind(runner);
    runner.query = (async (sql: string, ...rest: unknown[]) => {
      const start = performance.now();
      try {
        return await (query as (sql: string, ...r: unknown[]) => Promise<unknown>)(sql, ...rest);
      } finally {
        if (timing) {
          const key = sql.replace(/\s+/g, ' ').trim().slice(0, 48);
          const xs = statementMs.get(key) ?? [];
          xs.push(performance.now() - start);
          statementMs.set(key, xs);
        }
      }
    }) as typeof runner.query;
    return runner;
  };

  const setupStart = performance.now();
  const users = Math.ceil(CHATS / 2);
  await ds.query(`INSERT INTO users (id, balance) SELECT 'u' || g, 1000000 FROM generate_series(1, $1) g`, [users]);
  // half the advisors give no free time, so half the chats charge credits (balances, ledger) from the first tick
  await ds.query(`INSERT INTO advisors (id, rate_per_minute, free_seconds) SELECT 'a' || g, 3, CASE WHEN g % 2 = 0 THEN 0 ELSE 30 END FROM generate_series(1, 50) g`);
  // two chats per user, with two different advisors
  await ds.query(
    `INSERT INTO chats (id, user_id, advisor_id, status, started_at)
     SELECT 'c' || g, 'u' || ((g - 1) / 2 + 1), 'a' || (g % 50 + 1), 'active', $2 FROM generate_series(1, $1) g`,
    [CHATS, new Date(0).toISOString()],
  );
  void accounts;
  const ids: string[] = Array.from({ length: CHATS }, (_, i) => `c${i + 1}`);
  for (let i = 0; i < ids.length; i += 500) {
    const slice = ids.slice(i, i + 500);
    await Promise.all(slice.map((id, k) => engine.initializeTimeTrackingForChat(`u${Math.floor((i + k) / 2) + 1}`, `a${((i + k + 1) % 50) + 1}`, id)));
  }
  const t0 = Date.now();
  await ds.query(`UPDATE conversation_time_records SET settled_until = $1`, [new Date(t0).toISOString()]);
  console.log(`setup: ${CHATS} active chats in ${((performance.now() - setupStart) / 1000).toFixed(1)} s on ${url ? 'Postgres' : 'PGlite'}`);

  const buckets: string[][] = Array.from({ length: BUCKETS }, () => []);
  for (const id of ids) buckets[bucketOf(id, BUCKETS)]!.push(id);
  const batchMs: number[] = [];
  const tickMs: number[] = [];
  let settled = 0;
  let batchQueries = 0;
  timing = true;
  const cpu0 = process.cpuUsage();
  for (let tick = 1; tick <= TICKS; tick++) {
    const now = t0 + tick * 1000;
    const tickStart = performance.now();
    for (const bucket of buckets) {
      const start = performance.now();
      const q0 = queries;
      const out = await engine.settleBatch(
        bucket.map((chatId) => ({ chatId, presence: { since: t0, until: now + 10_000, lastHeartbeatAt: now } })),
        now,
        { skipLocked: true },
      );
      batchQueries = Math.max(batchQueries, queries - q0);
      settled += out.filter((o) => o.ok).length;
      batchMs.push(performance.now() - start);
    }
    tickMs.push(performance.now() - tickStart);
  }
  const cpu = process.cpuUsage(cpu0);
  const pct = (xs: number[], p: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor((p / 100) * xs.length))]!;
  const [{ billed }] = await ds.query(`SELECT sum(duration)::int AS billed FROM conversation_time_records`);
  console.log(
    JSON.stringify(
      {
        bench: 'settlement',
        database: url ? 'postgres' : 'pglite',
        chats: CHATS,
        ticks: TICKS,
        batchesPerTick: BUCKETS,
        chatsPerBatch: Math.round(CHATS / BUCKETS),
        roundTripsPerBatch: batchQueries + 2,
        batchMs: { p50: +pct(batchMs, 50).toFixed(1), p95: +pct(batchMs, 95).toFixed(1), max: +Math.max(...batchMs).toFixed(1) },
        tickMs: { p50: +pct(tickMs, 50).toFixed(1), max: +Math.max(...tickMs).toFixed(1) },
        // this process's CPU (user + system) per batch: the pg client and the settlement's JS, not Postgres's
        nodeCpuMsPerBatch: +((cpu.user + cpu.system) / 1000 / batchMs.length).toFixed(2),
        statementMsPerBatch: Object.fromEntries(
          [...statementMs].map(([sql, xs]) => [sql, +(xs.reduce((a, b) => a + b, 0) / batchMs.length).toFixed(2)]),
        ),
        settlementsPerSecond: Math.round(settled / (tickMs.reduce((a, b) => a + b, 0) / 1000)),
        secondsBilled: billed,
        secondsExpected: CHATS * TICKS,
      },
      null,
      2,
    ),
  );
  await ds.destroy();
  await dropDb();
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
