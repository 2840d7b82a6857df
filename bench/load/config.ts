/**
 * The load run's sizes and timings, from the environment (every variable is
 * optional; the defaults reproduce the run).
 */

/** How big and how long a load run is. */
export interface LoadConfig {
  /** Active chats (BENCH_CHATS, 5000). */
  chats: number;
  /** User tabs per chat (each user has one chat, so these are one user's tabs). */
  tabsPerChat: number;
  /** One advisor dashboard per this many chats: 100 dashboards at 5,000 chats. */
  chatsPerAdvisor: number;
  /** Steady window (BENCH_SECONDS, 30). */
  seconds: number;
  /** Connects per second of the storm, all workers together (BENCH_RATE, 500). */
  rate: number;
  /** Client worker processes (BENCH_CLIENTS, 3). */
  clients: number;
  /** chatmeter nodes (BENCH_NODES, 1; 2 adds a two-node run over Redis after the one-node run). */
  nodes: 1 | 2;
  /** Run the bare socket.io baseline (BENCH_BASELINE; on by default with one node, off with two). */
  baseline: boolean;
  /** Between the storm and the window, for every meter to run (BENCH_WARMUP_SECONDS, 3). */
  warmupSeconds: number;
  /** After every socket closed, before the idle measure (BENCH_IDLE_SETTLE_SECONDS, 5). */
  idleSettleSeconds: number;
  /** The idle measure (BENCH_IDLE_SECONDS, 10). */
  idleSeconds: number;
  /** How long the reconnect may take before it is reported incomplete (BENCH_RECONNECT_TIMEOUT_SECONDS, 60). */
  reconnectTimeoutSeconds: number;
  /** First reconnect delay of socket.io-client after the drop, ± 50% (BENCH_RECONNECT_DELAY_MS, 1000: its default). */
  reconnectDelayMs: number;
  /** A tab's heartbeat period (BENCH_HB_EVERY_MS); null: the join ack's heartbeatIntervalMs, as SPEC says. */
  heartbeatEveryMs: number | null;
  /** Bounds every connect, ack and HTTP request (ms). */
  ackTimeoutMs: number;
  /** Requests in flight while starting the chats over HTTP (BENCH_START_CONCURRENCY, 32). */
  startConcurrency: number;
  /** The node's meter period and heartbeat interval: the server's defaults, which the run doesn't change. */
  tickMs: number;
  heartbeatIntervalMs: number;
  /** Postgres server for throwaway databases (DATABASE_URL); null runs the node on PGlite. */
  databaseUrl: string | null;
  /** Redis of the two-node run (REDIS_URL, else redis://127.0.0.1:6379). */
  redisUrl: string;
  /** The chatmeter nodes' LOG_LEVEL (BENCH_NODE_LOG_LEVEL, warn). */
  nodeLogLevel: string;
  /** Extra `node` flags of the chatmeter nodes (BENCH_NODE_ARGS) and of the bare server (BENCH_BARE_ARGS), e.g. `--cpu-prof`. */
  nodeArgs: string[];
  bareArgs: string[];
  /** A last-resort watchdog on the whole run (BENCH_DEADLINE_SECONDS; default from the sizes). */
  deadlineSeconds: number;
}

/** Space-separated flags; none when unset. */
const flags = (raw: string | undefined): string[] => (raw ?? '').split(' ').filter(Boolean);

const int = (env: NodeJS.ProcessEnv, name: string, def: number, min = 1): number => {
  const raw = env[name];
  if (raw === undefined || raw === '') return def;
  const v = Number(raw);
  if (!Number.isFinite(v) || v < min) throw new Error(`${name} must be a number >= ${min} (got ${JSON.stringify(raw)})`);
  return Math.floor(v);
};

/** The configuration of a load run; throws on a bad variable. */
export function loadConfig(env: NodeJS.ProcessEnv = process.env): LoadConfig {
  const nodes = int(env, 'BENCH_NODES', 1);
  if (nodes !== 1 && nodes !== 2) throw new Error(`BENCH_NODES must be 1 or 2 (got ${nodes})`);
  const chats = int(env, 'BENCH_CHATS', 5000);
  const seconds = int(env, 'BENCH_SECONDS', 30);
  const rate = int(env, 'BENCH_RATE', 500);
  const reconnectTimeoutSeconds = int(env, 'BENCH_RECONNECT_TIMEOUT_SECONDS', 60);
  const baselineRaw = env.BENCH_BASELINE;
  const cfg: LoadConfig = {
    chats,
    tabsPerChat: 2,
    chatsPerAdvisor: 50,
    seconds,
    rate,
    clients: int(env, 'BENCH_CLIENTS', 3),
    nodes,
    baseline: baselineRaw === undefined || baselineRaw === '' ? nodes === 1 : baselineRaw !== '0',
    warmupSeconds: int(env, 'BENCH_WARMUP_SECONDS', 3, 0),
    idleSettleSeconds: int(env, 'BENCH_IDLE_SETTLE_SECONDS', 5, 0),
    idleSeconds: int(env, 'BENCH_IDLE_SECONDS', 10),
    reconnectTimeoutSeconds,
    reconnectDelayMs: int(env, 'BENCH_RECONNECT_DELAY_MS', 1000),
    heartbeatEveryMs: env.BENCH_HB_EVERY_MS ? int(env, 'BENCH_HB_EVERY_MS', 10_000) : null,
    ackTimeoutMs: 30_000,
    startConcurrency: int(env, 'BENCH_START_CONCURRENCY', 32),
    tickMs: 1000,
    heartbeatIntervalMs: 10_000,
    databaseUrl: env.DATABASE_URL || null,
    redisUrl: env.REDIS_URL || 'redis://127.0.0.1:6379',
    nodeLogLevel: env.BENCH_NODE_LOG_LEVEL || 'warn',
    nodeArgs: flags(env.BENCH_NODE_ARGS),
    bareArgs: flags(env.BENCH_BARE_ARGS),
    deadlineSeconds: 0,
  };
  // a run: setup (5 requests a chat at a few hundred a second), the storm, the window, the reconnect, idle
  const perRun = (5 * chats) / 300 + socketCount(cfg) / rate + cfg.warmupSeconds + seconds + reconnectTimeoutSeconds + cfg.idleSettleSeconds + cfg.idleSeconds + 60;
  const runs = nodes + (cfg.baseline ? 1 : 0);
  cfg.deadlineSeconds = int(env, 'BENCH_DEADLINE_SECONDS', Math.ceil(Math.max(300, 2 * perRun * runs)));
  return cfg;
}

/** User tabs and advisor dashboards of a run. */
export function socketCount(cfg: LoadConfig): number {
  return cfg.chats * cfg.tabsPerChat + advisorCount(cfg);
}

/** Advisors (one dashboard each). */
export function advisorCount(cfg: LoadConfig): number {
  return Math.ceil(cfg.chats / cfg.chatsPerAdvisor);
}
