/**
 * chatmeter under the load run: one or two nodes as `npm start` runs them
 * (`node --import tsx server/main.ts`, each its own process so its CPU and memory
 * are its own), on a throwaway Postgres database (two nodes share it and Redis),
 * data made over the HTTP API, then the phases of `phases.ts`; afterwards, no
 * chat billed beyond the wall time it ran, and `npm run verify` over the database.
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import type { MeterSnapshot } from '../../client-sdk/src/protocol.js';
import { Tokens } from '../../server/tokens.js';
import { freePort } from '../../test/support/ports.js';
import { throwawayDatabase } from '../throwaway-db.js';
import type { LoadConfig } from './config.js';
import { type LoadPlan, type SetupResult, planOf, setUpOverHttp } from './http-setup.js';
import type { SocketSpec } from './messages.js';
import { type PhaseResult, runPhases } from './phases.js';
import { pidsNamed } from './procfs.js';
import { round, sleep } from './stats.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

/** Registers a cleanup to run if the whole run is abandoned (the watchdog); returns its removal. */
export type OnAbandon = (fn: () => Promise<void>) => () => void;

/** What a chatmeter run measured and checked. */
export interface ChatmeterRun {
  nodes: number;
  database: 'postgres' | 'pglite';
  setup: SetupResult;
  phases: PhaseResult;
  /** A snapshot from the steady window: the bare baseline's meters copy it. */
  template: MeterSnapshot | null;
  checks: {
    /** Most seconds any chat was billed beyond the wall time from its start to its node's stop (must be <= 0). */
    maxBilledMinusWallSeconds: number | null;
    /** Most seconds any chat was billed beyond the span from its start to its user's last presence (must be <= 0). */
    maxBilledMinusPresentSeconds: number | null;
    secondsBilled: number | null;
    verify: { exitCode: number | null; summary: string };
    nodeExitCodes: Array<number | null>;
    /** Warning and error lines the nodes logged, and the last few of them. */
    nodeLog: { warnings: number; errors: number; last: string[] };
  };
}

/** A running chatmeter node process. */
interface NodeProc {
  child: ChildProcess;
  url: string;
  exited: Promise<number | null>;
  log: { warnings: number; errors: number; last: string[] };
}

/** Spawns `server/main.ts` with `env`; resolves once `/readyz` answers 200. */
async function spawnNode(env: Record<string, string>, nodeArgs: string[]): Promise<NodeProc> {
  const port = await freePort();
  const child = spawn(process.execPath, [...nodeArgs, '--import', 'tsx', 'server/main.ts'], {
    cwd: ROOT,
    env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', ...env, PORT: String(port) },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const log = { warnings: 0, errors: 0, last: [] as string[] };
  createInterface({ input: child.stdout! }).on('line', (line) => {
    let level = 0;
    try {
      level = Number((JSON.parse(line) as { level?: number }).level ?? 0);
    } catch {
      return; // the banner is not JSON
    }
    if (level >= 50) log.errors++;
    else if (level >= 40) log.warnings++;
    else return;
    log.last.push(line.slice(0, 400));
    if (log.last.length > 5) log.last.shift();
  });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-4000)));
  let exitCode: number | null | undefined;
  const exited = new Promise<number | null>((resolve) =>
    child.once('exit', (code) => {
      exitCode = code;
      resolve(code);
    }),
  );
  const url = `http://127.0.0.1:${port}`;
  const until = Date.now() + 60_000;
  for (;;) {
    if (exitCode !== undefined) throw new Error(`chatmeter node exited with ${exitCode} before it was ready:\n${stderr}`);
    try {
      if ((await fetch(`${url}/readyz`)).status === 200) return { child, url, exited, log };
    } catch {
      // not listening yet
    }
    if (Date.now() > until) {
      child.kill('SIGKILL');
      throw new Error(`chatmeter node not ready within 60 s:\n${stderr}`);
    }
    await sleep(100);
  }
}

/** SIGTERM, as an operator stops a node; SIGKILL after 40 s. */
async function stopNode(n: NodeProc): Promise<number | null> {
  if (n.child.exitCode !== null || n.child.signalCode !== null) return n.child.exitCode;
  n.child.kill('SIGTERM');
  const timer = setTimeout(() => n.child.kill('SIGKILL'), 40_000);
  const code = await n.exited;
  clearTimeout(timer);
  return code;
}

/** Sums the counters of interest over the nodes' `/metrics`. */
async function scrape(urls: string[]): Promise<Record<string, number>> {
  const names = [
    'chatmeter_settled_chats_total',
    'chatmeter_settlement_errors_total',
    'chatmeter_background_errors_total',
    'chatmeter_events_rejected_total',
    'chatmeter_tick_slot_seconds_sum',
    'chatmeter_tick_slot_seconds_count',
    'chatmeter_tick_lag_seconds_sum',
    'chatmeter_tick_lag_seconds_count',
    'chatmeter_busy_settlements_total',
    'chatmeter_fenced_settlements_total',
  ];
  const out: Record<string, number> = Object.fromEntries(names.map((n) => [n, 0]));
  for (const url of urls) {
    try {
      const text = await (await fetch(`${url}/metrics`)).text();
      for (const line of text.split('\n')) {
        const m = /^([a-z_]+)(?:\{[^}]*\})? ([0-9.eE+-]+)$/.exec(line);
        if (m && m[1]! in out) out[m[1]!]! += Number(m[2]);
      }
    } catch {
      // a node that doesn't answer adds nothing
    }
  }
  return out;
}

/** Transactions and rows of the database so far (pg_stat_database), to count its work in the window. */
async function databaseCounters(probe: pg.Client): Promise<Record<string, number>> {
  const { rows } = await probe.query<Record<string, string>>(
    `SELECT xact_commit, xact_rollback, tup_fetched, tup_inserted, tup_updated FROM pg_stat_database WHERE datname = current_database()`,
  );
  return Object.fromEntries(Object.entries(rows[0] ?? {}).map(([k, v]) => [`pg_${k}`, Number(v)]));
}

/** The sockets of a run: dashboards first, then each user's tabs, spread over the nodes (a user's tabs on different nodes). */
export async function socketsOf(plan: LoadPlan, urls: string[], cfg: LoadConfig, secret: string): Promise<SocketSpec[]> {
  const tokens = new Tokens(secret);
  const now = Date.now();
  const ttl = cfg.deadlineSeconds + 600;
  const sockets: SocketSpec[] = [];
  for (const [j, a] of plan.advisors.entries()) {
    const { token } = await tokens.sign({ sub: a.id, role: 'advisor' }, ttl, now);
    sockets.push({ role: 'advisor', token, url: urls[j % urls.length]!, node: j % urls.length, chatId: null });
  }
  for (const c of plan.chats) {
    const { token } = await tokens.sign({ sub: c.userId, role: 'user' }, ttl, now);
    for (let t = 0; t < cfg.tabsPerChat; t++) sockets.push({ role: 'user', token, url: urls[t % urls.length]!, node: t % urls.length, chatId: c.id });
  }
  return sockets;
}

/** Runs `npm run verify` over the database; its exit code and last line. */
function verify(env: Record<string, string>): Promise<{ exitCode: number | null; summary: string }> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      ['--import', 'tsx', 'server/verify-cli.ts'],
      { cwd: ROOT, env: { PATH: process.env.PATH ?? '', ...env }, timeout: 120_000, maxBuffer: 64 * 2 ** 20 },
      (err, stdout, stderr) => {
        const lines = `${stdout}\n${stderr}`.trim().split('\n').filter(Boolean);
        const code = err ? ((err as { code?: unknown }).code as number | null) : 0;
        resolve({ exitCode: typeof code === 'number' ? code : null, summary: (lines[lines.length - 1] ?? '').slice(0, 200) });
      },
    );
  });
}

/** One chatmeter run of `nodes` nodes. */
export async function runChatmeter(cfg: LoadConfig, nodes: 1 | 2, log: (line: string) => void, onAbandon: OnAbandon): Promise<ChatmeterRun> {
  if (nodes === 2 && !cfg.databaseUrl) throw new Error('the two-node run needs DATABASE_URL (a Postgres server) and Redis');
  const db = await throwawayDatabase(cfg.databaseUrl ?? undefined, 'chatmeter_bench_load');
  const dataDir = db.url ? null : mkdtempSync(join(tmpdir(), 'chatmeter-load-'));
  const procs: NodeProc[] = [];
  let probe: pg.Client | null = null;
  const cleanup = async () => {
    for (const p of procs) if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL');
    await probe?.end().catch(() => undefined);
    await db.drop().catch((err: unknown) => console.error('load bench: could not drop the database:', err));
    if (dataDir) rmSync(dataDir, { recursive: true, force: true });
  };
  const forget = onAbandon(cleanup);
  try {
    const apiKey = randomBytes(24).toString('base64url');
    const secret = randomBytes(32).toString('base64url');
    const env: Record<string, string> = {
      ...(db.url ? { DATABASE_URL: db.url } : { DATA_DIR: dataDir! }),
      ...(nodes > 1 ? { REDIS_URL: cfg.redisUrl } : {}),
      CHATMETER_API_KEY: apiKey,
      CHATMETER_JWT_SECRET: secret,
      LOG_LEVEL: cfg.nodeLogLevel,
    };
    for (let i = 0; i < nodes; i++) procs.push(await spawnNode(env, cfg.nodeArgs));
    const urls = procs.map((p) => p.url);
    log(`chatmeter (${nodes} node${nodes > 1 ? 's' : ''}, ${db.url ? 'Postgres' : 'PGlite'}): setting up ${cfg.chats} chats over HTTP`);

    const plan = planOf(cfg);
    const setup = await setUpOverHttp(urls, apiKey, plan, cfg);
    log(`chatmeter: setup ${JSON.stringify(setup.stepMs)} ms; start ${setup.start.perSecond} req/s with ${cfg.startConcurrency} in flight`);
    const sockets = await socketsOf(plan, urls, cfg, secret);

    if (db.url) {
      probe = new pg.Client({ connectionString: db.url });
      await probe.connect();
    }
    const databasePids = async () => {
      if (!probe) return [];
      // this database's backends (the probe's own aside) and the server's WAL writer, writer and checkpointer, whose work the load causes
      const rows = await probe.query<{ pid: number }>(
        `SELECT pid FROM pg_stat_activity
          WHERE (datname = current_database() AND pid <> pg_backend_pid())
             OR backend_type IN ('walwriter', 'background writer', 'checkpointer')`,
      );
      return rows.rows.map((r) => r.pid);
    };
    let template: MeterSnapshot | null = null;
    const phases = await runPhases(
      {
        name: nodes > 1 ? `chatmeter x${nodes}` : 'chatmeter',
        pids: procs.map((p) => p.child.pid!),
        databasePids,
        sharedPids: nodes > 1 ? pidsNamed('redis-server') : [],
        counters: async () => ({ ...(await scrape(urls)), ...(probe ? await databaseCounters(probe) : {}) }),
        runningMeters: probe
          ? async () => (await probe!.query<{ n: number }>(`SELECT count(*)::int AS n FROM conversation_time_records WHERE meter_state = 'running'`)).rows[0]!.n
          : undefined,
        async duringWindow() {
          const res = await fetch(`${urls[0]}/v1/chats/${plan.chats[0]!.id}/meter`, { headers: { authorization: `Bearer ${apiKey}` } });
          if (res.ok) {
            const body = (await res.json()) as MeterSnapshot | { meter: MeterSnapshot };
            template = 'meter' in body ? body.meter : body;
          }
        },
      },
      sockets,
      cfg,
      log,
    );

    const nodeExitCodes: Array<number | null> = [];
    for (const p of procs) nodeExitCodes.push(await stopNode(p));
    const stoppedAt = new Date();

    let maxBilledMinusWallSeconds: number | null = null;
    let maxBilledMinusPresentSeconds: number | null = null;
    let secondsBilled: number | null = null;
    if (probe) {
      const { rows } = await probe.query<{ over: number | null; overPresent: number | null; billed: number | null }>(
        `SELECT max(r.duration - extract(epoch FROM ($1::timestamptz - c.started_at)))::float8 AS over,
                max(r.duration - extract(epoch FROM (r.last_present_at - c.started_at)))::float8 AS "overPresent",
                sum(r.duration)::float8 AS billed
           FROM conversation_time_records r JOIN chats c ON c.id = r.chat_id WHERE c.started_at IS NOT NULL`,
        [stoppedAt],
      );
      const r3 = (v: number | null | undefined) => (v === null || v === undefined ? null : round(v, 3));
      maxBilledMinusWallSeconds = r3(rows[0]?.over);
      maxBilledMinusPresentSeconds = r3(rows[0]?.overPresent);
      secondsBilled = rows[0]?.billed ?? null;
      await probe.end();
      probe = null;
    }
    log('chatmeter: npm run verify over the database');
    const verified = await verify(db.url ? { DATABASE_URL: db.url } : { DATA_DIR: dataDir! });
    const nodeLog = procs.reduce(
      (a, p) => ({ warnings: a.warnings + p.log.warnings, errors: a.errors + p.log.errors, last: [...a.last, ...p.log.last].slice(-5) }),
      { warnings: 0, errors: 0, last: [] as string[] },
    );
    return {
      nodes,
      database: db.url ? 'postgres' : 'pglite',
      setup,
      phases,
      template,
      checks: { maxBilledMinusWallSeconds, maxBilledMinusPresentSeconds, secondsBilled, verify: verified, nodeExitCodes, nodeLog },
    };
  } finally {
    forget();
    await cleanup();
  }
}
