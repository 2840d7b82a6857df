/**
 * Realtime benchmark: one node under a realistic load, printing figures as JSON
 * (nothing here fails because the machine is slow; it only reports).
 *
 * The node runs in this process's main thread exactly as `createApp` builds it
 * (default 1000 ms tick, 10 phase buckets), on the database of DATABASE_URL (a
 * throwaway database, dropped at the end) or on PGlite in memory. The clients
 * run in a child process (this file again), so they get a core, an event loop and
 * a file descriptor limit of their own (each process holds one end of every
 * socket: `ulimit -n` must exceed 2.1 × BENCH_CHATS) and their work shows apart
 * from the node's. BENCH_CHATS metered chats (default 1000), each with its user's
 * two tabs (TABS = 2 × CHATS), one advisor socket per 10 chats, every user tab
 * heartbeating every HEARTBEAT_INTERVAL_MS / 2.
 *
 * Figures: connect and join times, start command latency, over a steady window
 * of BENCH_SECONDS (default 20) the meter pushes received against expected, the
 * interval between meters of one chat seen by one socket, lost meters (seq gaps),
 * the push lag from a snapshot's serverTime to its receipt, how evenly pushes
 * spread (per 100 ms window), heartbeat ack latency, tick slot durations (from
 * chatmeter_tick_slot_seconds and exactly per slot) and where their time goes,
 * database queries, CPU of the node and client processes, their event loops and
 * the whole machine (the rest being mostly Postgres), memory, and after shutdown
 * the most any chat was billed beyond the wall time it ran (maxBilledMinusWall)
 * and beyond the time its user was present while it ran (maxBilledMinusPresentWall);
 * both must stay <= 0.
 *
 * Only 127.0.0.1 traffic. Environment: BENCH_CHATS, BENCH_SECONDS,
 * BENCH_WARMUP_SECONDS (3), BENCH_BATCH (200 sockets or joins at a time),
 * BENCH_START_CONCURRENCY (20 start commands at a time), BENCH_DEADLINE_SECONDS
 * (600: a last-resort watchdog, the run itself is bounded by per-step timeouts).
 *
 * @example npm run bench                                   # settlement, then this, on PGlite
 * @example npx tsx bench/realtime.ts
 * @example DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres BENCH_CHATS=5000 npx tsx bench/realtime.ts
 */
import { type ChildProcess, fork } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { type EventLoopUtilization, monitorEventLoopDelay, performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { getHeapStatistics, setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import type { Socket } from 'socket.io-client';
import type { ClientToServerEvents, MeterSnapshot, ServerToClientEvents } from '../client-sdk/src/protocol.js';

const int = (name: string, def: number, min = 1): number => {
  const v = Number(process.env[name] ?? def);
  return Number.isFinite(v) && v >= min ? Math.floor(v) : def;
};

const CHATS = int('BENCH_CHATS', 1000);
const SECONDS = int('BENCH_SECONDS', 20);
const WARMUP_SECONDS = int('BENCH_WARMUP_SECONDS', 3, 0);
const BATCH = int('BENCH_BATCH', 200);
const START_CONCURRENCY = int('BENCH_START_CONCURRENCY', 20);
const DEADLINE_SECONDS = int('BENCH_DEADLINE_SECONDS', 600);
const TABS_PER_CHAT = 2;
const CHATS_PER_ADVISOR = 10;
/** Per-step ack and connect timeout: a slow machine reports long latencies, it never hangs. */
const ACK_TIMEOUT_MS = 30_000;
const LOOP_RESOLUTION_MS = 10;

// ---------------------------------------------------------------- shared helpers

interface Dist {
  n: number;
  min: number;
  p50: number;
  p95: number;
  p99: number;
  max: number;
}

/** Percentiles of `xs` (nearest rank), rounded to 0.1. */
function dist(xs: number[]): Dist {
  if (xs.length === 0) return { n: 0, min: 0, p50: 0, p95: 0, p99: 0, max: 0 };
  const s = Float64Array.from(xs).sort();
  const at = (p: number) => +s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]!.toFixed(1);
  return { n: s.length, min: +s[0]!.toFixed(1), p50: at(50), p95: at(95), p99: at(99), max: +s[s.length - 1]!.toFixed(1) };
}

const round = (x: number, digits = 1) => +x.toFixed(digits);
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

// ----------------------------------------------------- node <-> client process

interface UserTabsSpec {
  token: string;
  chatId: string;
}
interface AdvisorSpec {
  token: string;
  chatIds: string[];
}
interface ClientSetup {
  url: string;
  users: UserTabsSpec[];
  advisors: AdvisorSpec[];
  tabsPerChat: number;
  batch: number;
  ackTimeoutMs: number;
}

/** What the client side measured in the steady window. */
interface WindowReport {
  received: number;
  receivedByUserTabs: number;
  receivedByAdvisors: number;
  /** Meters in a state other than running (a presence lapse, an end). */
  notRunning: number;
  /** Interval between consecutive meters of one chat at one socket (ms). */
  intervalMs: Dist;
  intervalsOver1500ms: number;
  /** Meters a socket never saw: seq jumps beyond +1. */
  seqGaps: number;
  /** Meters with a seq not above the last seen one. */
  seqRepeats: number;
  /** Receipt time minus the snapshot's serverTime (ms): settle + publish + transport. */
  pushLagMs: Dist;
  per100ms: Dist & { mean: number; stddev: number };
  perSecond: { min: number; max: number };
  /** Share of pushes (%) in each tenth of the tick, relative to the window start. */
  phaseSharePct: number[];
  /** (Socket, chat) pairs that got no meter at all in the window. */
  silentStreams: number;
  heartbeats: { sent: number; ackMs: Dist; errors: number };
  unexpectedDisconnects: number;
  /** Cores the client process used in the window, and how busy its event loop was. */
  clientCores: number;
  clientEventLoopBusy: number;
  clientRssMB: number | null;
}

type ToClients =
  | { type: 'setup'; setup: ClientSetup }
  | { type: 'window'; start: number; end: number; tickMs: number; binMs: number }
  | { type: 'report' }
  | { type: 'close' };

type FromClients =
  | { type: 'connected'; sockets: number; ms: number; latencyMs: Dist; errors: Record<string, number> }
  | {
      type: 'joined';
      ms: number;
      userJoinAckMs: Dist;
      advisorJoinAckMs: Dist;
      errors: Record<string, number>;
      heartbeatEveryMs: number;
    }
  | ({ type: 'report' } & WindowReport)
  | { type: 'closed' }
  | { type: 'fatal'; message: string };

// ------------------------------------------------------------------ client side

type ClientSocket = Socket<ServerToClientEvents, ClientToServerEvents>;

/** Sends a message to the node's process. */
const toNode = (m: FromClients) => process.send!(m);

/** Runs in the client process: connects every socket, joins, heartbeats, and measures what arrives. */
async function clientSide(): Promise<void> {
  // the node's process gone (crashed, killed): nothing left to measure
  process.on('disconnect', () => process.exit(0));
  const { io: connectClient } = await import('socket.io-client');
  const setup = await new Promise<ClientSetup>((resolve) => {
    const onSetup = (m: ToClients) => {
      if (m.type !== 'setup') return;
      process.off('message', onSetup);
      resolve(m.setup);
    };
    process.on('message', onSetup);
  });

  interface Stream {
    lastAt: number;
    lastEpoch: number;
    lastSeq: number;
    inWindow: number;
  }
  interface Conn {
    s: ClientSocket | null;
    token: string;
    role: 'user' | 'advisor';
    chatIds: string[];
    streams: Map<string, Stream>;
    timers: NodeJS.Timeout[];
  }
  const conns: Conn[] = [];
  for (const u of setup.users) {
    for (let t = 0; t < setup.tabsPerChat; t++) {
      conns.push({ s: null, token: u.token, role: 'user', chatIds: [u.chatId], streams: new Map(), timers: [] });
    }
  }
  for (const a of setup.advisors) conns.push({ s: null, token: a.token, role: 'advisor', chatIds: a.chatIds, streams: new Map(), timers: [] });

  let win = { start: Infinity, end: -Infinity, tickMs: 1000, binMs: 100 };
  let closing = false;
  let bins: number[] = [];
  const phase = new Array<number>(10).fill(0);
  const intervals: number[] = [];
  const lags: number[] = [];
  const hbAcks: number[] = [];
  const w = {
    received: 0, byUser: 0, byAdvisor: 0, notRunning: 0, over1500: 0, seqGaps: 0, seqRepeats: 0,
    hbSent: 0, hbErrors: 0, disconnects: 0,
  };

  const onMeter = (c: Conn, m: MeterSnapshot) => {
    const t = performance.now();
    const epoch = Date.now();
    const inWindow = epoch >= win.start && epoch < win.end;
    let st = c.streams.get(m.chatId);
    if (!st) {
      st = { lastAt: -Infinity, lastEpoch: -Infinity, lastSeq: -1, inWindow: 0 };
      c.streams.set(m.chatId, st);
    }
    if (inWindow) {
      w.received++;
      if (c.role === 'user') w.byUser++;
      else w.byAdvisor++;
      st.inWindow++;
      if (m.state !== 'running') w.notRunning++;
      const rel = epoch - win.start;
      const bin = Math.floor(rel / win.binMs);
      bins[bin] = (bins[bin] ?? 0) + 1;
      phase[Math.min(9, Math.floor(((rel % win.tickMs) / win.tickMs) * 10))]!++;
      lags.push(epoch - Date.parse(m.serverTime));
      if (st.lastEpoch >= win.start) {
        const gap = t - st.lastAt;
        intervals.push(gap);
        if (gap > 1500) w.over1500++;
      }
      if (st.lastSeq >= 0) {
        if (m.seq > st.lastSeq + 1) w.seqGaps += m.seq - st.lastSeq - 1;
        else if (m.seq <= st.lastSeq) w.seqRepeats++;
      }
    }
    st.lastAt = t;
    st.lastEpoch = epoch;
    st.lastSeq = Math.max(st.lastSeq, m.seq);
  };

  const connectOne = (c: Conn): Promise<number> =>
    new Promise((resolve, reject) => {
      const t0 = performance.now();
      const s: ClientSocket = connectClient(setup.url, {
        auth: { token: c.token },
        transports: ['websocket'],
        reconnection: false,
        forceNew: true,
        timeout: setup.ackTimeoutMs,
      });
      s.once('connect', () => {
        c.s = s;
        s.on('meter', (m) => onMeter(c, m));
        s.on('disconnect', () => {
          if (!closing) w.disconnects++;
        });
        resolve(performance.now() - t0);
      });
      s.once('connect_error', (err) => {
        s.close();
        reject(err);
      });
    });

  /** Runs `fn` over `items`, `batch` at a time; failures are counted by message, never thrown. */
  const inBatches = async <T>(items: T[], fn: (x: T) => Promise<number>, latencies: number[], errors: Record<string, number>) => {
    for (let i = 0; i < items.length; i += setup.batch) {
      await Promise.all(
        items.slice(i, i + setup.batch).map((x) =>
          fn(x).then(
            (ms) => void latencies.push(ms),
            (err: unknown) => {
              const key = String((err as Error)?.message ?? err).slice(0, 80);
              errors[key] = (errors[key] ?? 0) + 1;
            },
          ),
        ),
      );
    }
  };

  // connect
  const t0 = performance.now();
  const connectLat: number[] = [];
  const connectErr: Record<string, number> = {};
  await inBatches(conns, connectOne, connectLat, connectErr);
  toNode({
    type: 'connected',
    sockets: conns.filter((c) => c.s).length,
    ms: round(performance.now() - t0),
    latencyMs: dist(connectLat),
    errors: connectErr,
  } satisfies FromClients);

  // join (user tabs first: they create the time records), then heartbeat
  let heartbeatEveryMs = 5000;
  const heartbeat = (c: Conn, chatId: string) => {
    const s = c.s;
    if (!s || !s.connected || closing) return;
    const sentAt = performance.now();
    const inWindow = Date.now() >= win.start && Date.now() < win.end;
    if (inWindow) w.hbSent++;
    s.timeout(setup.ackTimeoutMs)
      .emitWithAck('heartbeat', { chatId })
      .then(
        (ack) => {
          if (!inWindow) return;
          if (ack.ok) hbAcks.push(performance.now() - sentAt);
          else w.hbErrors++;
        },
        () => {
          if (inWindow && !closing) w.hbErrors++;
        },
      );
  };
  const joinOne = async ([c, chatId]: [Conn, string]): Promise<number> => {
    if (!c.s) throw new Error('not connected');
    const started = performance.now();
    const ack = await c.s.timeout(setup.ackTimeoutMs).emitWithAck('chat:join', { chatId });
    const ms = performance.now() - started;
    if (!ack.ok) throw new Error(`${ack.error.code}: ${ack.error.message}`);
    if (c.role === 'user') {
      heartbeatEveryMs = Math.max(1, Math.floor(ack.heartbeatIntervalMs / 2));
      // a random phase per tab: heartbeats spread over the interval as real tabs' do
      c.timers.push(
        setTimeout(() => {
          heartbeat(c, chatId);
          c.timers.push(setInterval(() => heartbeat(c, chatId), heartbeatEveryMs));
        }, Math.random() * heartbeatEveryMs),
      );
    }
    return ms;
  };
  const t1 = performance.now();
  const joinErr: Record<string, number> = {};
  const userJoins: number[] = [];
  const advisorJoins: number[] = [];
  const jobs = (role: Conn['role']) => conns.filter((c) => c.role === role).flatMap((c) => c.chatIds.map((id) => [c, id] as [Conn, string]));
  await inBatches(jobs('user'), joinOne, userJoins, joinErr);
  await inBatches(jobs('advisor'), joinOne, advisorJoins, joinErr);
  toNode({
    type: 'joined',
    ms: round(performance.now() - t1),
    userJoinAckMs: dist(userJoins),
    advisorJoinAckMs: dist(advisorJoins),
    errors: joinErr,
    heartbeatEveryMs,
  } satisfies FromClients);

  let atStart = { cpu: process.cpuUsage(), elu: performance.eventLoopUtilization(), wall: performance.now() };
  let atEnd = atStart;
  process.on('message', (msg: ToClients) => {
    if (msg.type === 'window') {
      win = { start: msg.start, end: msg.end, tickMs: msg.tickMs, binMs: msg.binMs };
      bins = new Array<number>(Math.ceil((msg.end - msg.start) / msg.binMs)).fill(0);
      const sampleNow = () => ({ cpu: process.cpuUsage(), elu: performance.eventLoopUtilization(), wall: performance.now() });
      setTimeout(() => {
        atStart = sampleNow();
      }, msg.start - Date.now());
      setTimeout(() => {
        atEnd = sampleNow();
      }, msg.end - Date.now());
    } else if (msg.type === 'report') {
      let silent = 0;
      for (const c of conns) {
        if (!c.s) continue;
        for (const id of c.chatIds) if ((c.streams.get(id)?.inWindow ?? 0) === 0) silent++;
      }
      const mean = bins.reduce((a, b) => a + b, 0) / Math.max(1, bins.length);
      const perSecond: number[] = [];
      const perTick = Math.round(win.tickMs / win.binMs);
      for (let i = 0; i < bins.length; i += perTick) perSecond.push(bins.slice(i, i + perTick).reduce((a, b) => a + b, 0));
      const total = phase.reduce((a, b) => a + b, 0) || 1;
      toNode({
        type: 'report',
        received: w.received,
        receivedByUserTabs: w.byUser,
        receivedByAdvisors: w.byAdvisor,
        notRunning: w.notRunning,
        intervalMs: dist(intervals),
        intervalsOver1500ms: w.over1500,
        seqGaps: w.seqGaps,
        seqRepeats: w.seqRepeats,
        pushLagMs: dist(lags),
        per100ms: {
          ...dist(bins),
          mean: round(mean),
          stddev: round(Math.sqrt(bins.reduce((a, b) => a + (b - mean) ** 2, 0) / Math.max(1, bins.length))),
        },
        perSecond: { min: Math.min(...perSecond), max: Math.max(...perSecond) },
        phaseSharePct: phase.map((p) => round((100 * p) / total)),
        silentStreams: silent,
        heartbeats: { sent: w.hbSent, ackMs: dist(hbAcks), errors: w.hbErrors },
        unexpectedDisconnects: w.disconnects,
        clientCores: (atEnd.cpu.user + atEnd.cpu.system - atStart.cpu.user - atStart.cpu.system) / 1e3 / Math.max(1, atEnd.wall - atStart.wall),
        clientEventLoopBusy: busyShare(atStart.elu, atEnd.elu),
        clientRssMB: rssMB(),
      } satisfies FromClients);
    } else if (msg.type === 'close') {
      closing = true;
      for (const c of conns) {
        for (const t of c.timers) clearTimeout(t);
        c.s?.disconnect();
      }
      toNode({ type: 'closed' } satisfies FromClients);
      // let the close frames go out, then leave
      setTimeout(() => process.exit(0), 500);
    }
  });
}

// ------------------------------------------------------------------- node side

/** Busy and total jiffies of the whole machine (Linux) and its CPU count, or null. */
function machineCpu(): { busy: number; total: number; cpus: number } | null {
  try {
    const lines = readFileSync('/proc/stat', 'utf8').split('\n');
    const f = lines[0]!.trim().split(/\s+/).slice(1).map(Number);
    const total = f.reduce((a, b) => a + b, 0);
    const idle = (f[3] ?? 0) + (f[4] ?? 0);
    return { busy: total - idle, total, cpus: lines.filter((l) => /^cpu\d/.test(l)).length };
  } catch {
    return null;
  }
}

/** This process's open file limit (Linux), or null. */
function openFileLimit(): number | null {
  try {
    const m = /^Max open files\s+(\d+|unlimited)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
    return m ? (m[1] === 'unlimited' ? Infinity : Number(m[1])) : null;
  } catch {
    return null;
  }
}

/** Resident memory in MB; null when it can't be read (no file descriptor left, say). */
function rssMB(): number | null {
  try {
    return Math.round(process.memoryUsage.rss() / 2 ** 20);
  } catch {
    return null;
  }
}

/** Heap in use after a full collection (MB): what the process really holds, garbage aside. */
function liveHeapMB(): number {
  setFlagsFromString('--expose-gc');
  (runInNewContext('gc') as () => void)();
  return Math.round(getHeapStatistics().used_heap_size / 2 ** 20);
}

/** The share of time an event loop was busy between two samples. */
function busyShare(a: EventLoopUtilization, b: EventLoopUtilization): number {
  const active = b.active - a.active;
  const idle = b.idle - a.idle;
  return active + idle > 0 ? active / (active + idle) : 0;
}

async function main(): Promise<void> {
  const wallStart = performance.now();
  const fdLimit = openFileLimit();
  const fdNeeded = CHATS * TABS_PER_CHAT + Math.ceil(CHATS / CHATS_PER_ADVISOR) + 200;
  if (fdLimit !== null && fdLimit < fdNeeded) {
    console.error(`realtime bench: ulimit -n is ${fdLimit}, about ${fdNeeded} are needed per process: expect connect errors`);
  }
  const [{ throwawayDatabase }, { createApp }, { loadConfig }, { createDataSource }, { bucketOf }] = await Promise.all([
    import('./throwaway-db.js'),
    import('../server/app.js'),
    import('../server/config.js'),
    import('../server/db.js'),
    import('../server/metering/ticker.js'),
  ]);

  // database: a throwaway Postgres database, or PGlite in memory
  const { url, drop: dropDb } = await throwawayDatabase(process.env.DATABASE_URL || undefined, 'chatmeter_bench_rt');
  const database = url ? 'postgres' : 'pglite';

  // whatever happens from here on, the client process goes and the database is dropped
  let clients: ChildProcess | null = null;
  const abandon = async () => {
    if (clients && clients.exitCode === null && clients.signalCode === null) clients.kill();
    await dropDb().catch((err: unknown) => console.error('realtime bench: could not drop the database:', err));
  };
  const deadline = setTimeout(() => {
    console.error(`realtime bench: gave up after ${DEADLINE_SECONDS} s (BENCH_DEADLINE_SECONDS)`);
    void abandon().finally(() => process.exit(2));
  }, DEADLINE_SECONDS * 1000);
  deadline.unref();

  try {
    const ds = await createDataSource({ databaseUrl: url, dataDir: 'memory://' });
    await ds.initialize();
    const config = loadConfig({
      PORT: '0',
      ...(url ? { DATABASE_URL: url } : {}),
      DATA_DIR: 'memory://',
      CHATMETER_API_KEY: randomBytes(24).toString('base64url'),
      CHATMETER_JWT_SECRET: randomBytes(32).toString('base64url'),
      FREE_TIME_SECONDS: '30',
      LOG_LEVEL: 'silent',
    });
    const app = await createApp(config, { dataSource: ds, nodeId: 'bench-realtime' });

    // exact slot figures beside the histogram: when each slot ended, how long it took, how many chats
    const slots: Array<{ at: number; ms: number; chats: number }> = [];
    const observeSlot = app.metrics.observeSlot.bind(app.metrics);
    app.metrics.observeSlot = (seconds: number, chats: number) => {
      slots.push({ at: Date.now(), ms: seconds * 1000, chats });
      observeSlot(seconds, chats);
    };
    // where a slot's time goes: queries (round trip and driver), the rest of settleBatch, the rest of the slot
    let queries = 0;
    let queryMs = 0;
    let settleMs = 0;
    const realQuery = ds.query.bind(ds);
    (ds as { query: unknown }).query = async (...a: Parameters<typeof realQuery>) => {
      queries++;
      const t0 = performance.now();
      try {
        return await realQuery(...a);
      } finally {
        queryMs += performance.now() - t0;
      }
    };
    const engine = app.services.engine;
    const settleBatch = engine.settleBatch.bind(engine);
    engine.settleBatch = async (...a: Parameters<typeof settleBatch>) => {
      const t0 = performance.now();
      try {
        return await settleBatch(...a);
      } finally {
        settleMs += performance.now() - t0;
      }
    };

    // seed in bulk: user i has chat i with advisor ceil(i / 10); all pending
    const seedStart = performance.now();
    const advisors = Math.ceil(CHATS / CHATS_PER_ADVISOR);
    await realQuery(`INSERT INTO users (id, balance) SELECT 'bu' || g, 1000000 FROM generate_series(1, $1) g`, [CHATS]);
    await realQuery(`INSERT INTO advisors (id, rate_per_minute, free_seconds) SELECT 'ba' || g, 3, 30 FROM generate_series(1, $1) g`, [advisors]);
    await realQuery(
      `INSERT INTO chats (id, user_id, advisor_id, status)
       SELECT 'bc' || g, 'bu' || g, 'ba' || ((g - 1) / ${CHATS_PER_ADVISOR} + 1), 'pending' FROM generate_series(1, $1) g`,
      [CHATS],
    );
    const chatIds = Array.from({ length: CHATS }, (_, i) => `bc${i + 1}`);
    const now = Date.now();
    const users: UserTabsSpec[] = [];
    for (let i = 0; i < CHATS; i++) {
      users.push({ chatId: chatIds[i]!, token: (await app.services.tokens.sign({ sub: `bu${i + 1}`, role: 'user' }, 3600, now)).token });
    }
    const advisorSpecs: AdvisorSpec[] = [];
    for (let a = 0; a < advisors; a++) {
      advisorSpecs.push({
        token: (await app.services.tokens.sign({ sub: `ba${a + 1}`, role: 'advisor' }, 3600, now)).token,
        chatIds: chatIds.slice(a * CHATS_PER_ADVISOR, (a + 1) * CHATS_PER_ADVISOR),
      });
    }
    const seedMs = performance.now() - seedStart;

    const port = await app.listen(0);
    const nodeUrl = `http://127.0.0.1:${port}`;

    // the clients: this file again, in a child process (tsx's loader comes with process.execArgv);
    // a process of their own gives them a core, an event loop and a file descriptor limit apart
    const child = fork(fileURLToPath(import.meta.url), [CLIENTS_FLAG], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    clients = child;
    const inbox: FromClients[] = [];
    const waiters: Array<() => void> = [];
    let clientsFailure: Error | null = null;
    const wake = () => waiters.splice(0).forEach((w) => w());
    child.on('message', (m: FromClients) => {
      if (m.type === 'fatal') clientsFailure = new Error(`client process: ${m.message}`);
      else inbox.push(m);
      wake();
    });
    child.on('error', (err) => {
      clientsFailure = err;
      wake();
    });
    child.on('exit', (code, signal) => {
      clientsFailure ??= new Error(`client process exited (${signal ?? code})`);
      wake();
    });
    const send = (m: ToClients) => {
      if (child.connected) child.send(m);
    };
    const next = async <T extends FromClients['type']>(type: T, ms = 15 * 60_000): Promise<Extract<FromClients, { type: T }>> => {
      const until = Date.now() + ms;
      for (;;) {
        const i = inbox.findIndex((m) => m.type === type);
        if (i >= 0) return inbox.splice(i, 1)[0] as Extract<FromClients, { type: T }>;
        if (clientsFailure) throw clientsFailure;
        if (Date.now() > until) throw new Error(`client process: no '${type}' within ${ms} ms`);
        await new Promise<void>((r) => {
          waiters.push(r);
          setTimeout(r, 1000);
        });
      }
    };
    send({ type: 'setup', setup: { url: nodeUrl, users, advisors: advisorSpecs, tabsPerChat: TABS_PER_CHAT, batch: BATCH, ackTimeoutMs: ACK_TIMEOUT_MS } });

    const connected = await next('connected');
    const joined = await next('joined');

    // start every chat, START_CONCURRENCY at a time (each command settles one chat)
    const startLat: number[] = [];
    const startErr: Record<string, number> = {};
    const startBegin = performance.now();
    let cursor = 0;
    await Promise.all(
      Array.from({ length: START_CONCURRENCY }, async () => {
        while (cursor < chatIds.length) {
          const id = chatIds[cursor++]!;
          const t = performance.now();
          try {
            await app.services.meters.command(id, { kind: 'start' });
            startLat.push(performance.now() - t);
          } catch (err) {
            const key = String((err as Error)?.message ?? err).replace(/bc\d+/g, 'bc…').slice(0, 80);
            startErr[key] = (startErr[key] ?? 0) + 1;
          }
        }
      }),
    );
    const startMs = performance.now() - startBegin;
    await sleep(WARMUP_SECONDS * 1000);

    // the steady window
    const running = async () =>
      Number((await realQuery(`SELECT count(*)::int AS n FROM conversation_time_records WHERE meter_state = 'running'`))[0].n);
    const runningAtStart = await running();
    const counter = async (m: { get(): Promise<{ values: Array<{ value: number }> }> }) => (await m.get()).values.reduce((a, v) => a + v.value, 0);
    const histo = async () => {
      const v = (await app.metrics.slotDuration.get()).values;
      const pick = (suffix: string) => v.filter((x) => (x as { metricName?: string }).metricName?.endsWith(suffix)).reduce((a, x) => a + x.value, 0);
      return { sum: pick('_sum'), count: pick('_count') };
    };
    const sample = async () => ({
      wall: performance.now(),
      cpu: process.cpuUsage(),
      machine: machineCpu(),
      elu: performance.eventLoopUtilization(),
      queries,
      queryMs,
      settleMs,
      histo: await histo(),
      settled: await counter(app.metrics.settledChats),
      errors: await counter(app.metrics.settlementErrors),
      background: await counter(app.metrics.backgroundErrors),
      rejected: await counter(app.metrics.rejectedEvents),
    });
    // align the window on the ticker's slots (one phase bucket each, tick / 10 apart): each bin of
    // a slice then holds one slot's pushes, from half a slice before them to half a slice after
    const slice = config.meterTickMs / 10;
    let sx = 0;
    let sy = 0;
    for (const s of slots.slice(-50)) {
      const angle = (2 * Math.PI * (s.at % slice)) / slice;
      sx += Math.cos(angle);
      sy += Math.sin(angle);
    }
    const pushPhase = ((((Math.atan2(sy, sx) / (2 * Math.PI)) * slice) % slice) + slice) % slice;
    const t = Date.now() + 20;
    const winStart = t + ((((pushPhase - slice / 2 - t) % slice) + slice) % slice);
    const winEnd = winStart + SECONDS * 1000;
    send({ type: 'window', start: winStart, end: winEnd, tickMs: config.meterTickMs, binMs: slice });
    const loopDelay = monitorEventLoopDelay({ resolution: LOOP_RESOLUTION_MS });
    await sleep(winStart - Date.now());
    const s0 = await sample();
    loopDelay.enable();
    await sleep(winEnd - Date.now());
    loopDelay.disable();
    const s1 = await sample();
    const rss = rssMB();
    const heapUsed = getHeapStatistics().used_heap_size;
    await sleep(500); // pushes stamped inside the window that are still in flight
    send({ type: 'report' });
    const report = await next('report', 120_000);
    const liveHeap = liveHeapMB(); // after the report: its pause is in no figure

    // shutdown: close every tab, let the node stop the meters, close the node
    const closeAt = Date.now();
    send({ type: 'close' });
    await next('closed', 120_000).catch(() => undefined);
    const stopDeadline = Date.now() + 30_000;
    while (Date.now() < stopDeadline && ((await counter(app.metrics.sockets)) > 0 || (await running()) > 0)) await sleep(100);
    const metersStoppedMs = Date.now() - closeAt;
    const stillRunning = await running();
    await app.close();
    const wallEnd = Date.now();

    // billing against wall time: a chat runs from its start (started_at) until the node closed at most
    // and against the time the user was present while it ran (last_present_at: when the node saw the last tab go)
    const rows: Array<{ duration: number; started_at: Date | string | null; last_present_at: Date | string | null }> = await realQuery(
      `SELECT r.duration, c.started_at, r.last_present_at FROM conversation_time_records r JOIN chats c ON c.id = r.chat_id
        WHERE c.started_at IS NOT NULL`,
    );
    let maxBilledMinusWall = -Infinity;
    let maxBilledMinusPresent = -Infinity;
    const vsTabsClosed: number[] = [];
    const leaveSeenAfterClose: number[] = [];
    let billed = 0;
    for (const r of rows) {
      const started = new Date(r.started_at!).getTime();
      billed += r.duration;
      maxBilledMinusWall = Math.max(maxBilledMinusWall, r.duration - (wallEnd - started) / 1000);
      vsTabsClosed.push(r.duration - (closeAt - started) / 1000);
      if (r.last_present_at) {
        const present = new Date(r.last_present_at).getTime();
        maxBilledMinusPresent = Math.max(maxBilledMinusPresent, r.duration - (present - started) / 1000);
        leaveSeenAfterClose.push(present - closeAt);
      }
    }
    await ds.destroy();
    await dropDb();
    clearTimeout(deadline);

    // figures
    const wallS = (s1.wall - s0.wall) / 1000;
    const cpu = process.cpuUsage(s0.cpu);
    const cores = availableParallelism();
    const nodeCores = (cpu.user + cpu.system) / 1e6 / wallS;
    const machineBusy = s0.machine && s1.machine ? (s1.machine.busy - s0.machine.busy) / Math.max(1, s1.machine.total - s0.machine.total) : null;
    const nodeElu = busyShare(s0.elu, s1.elu);
    const clientElu = report.clientEventLoopBusy;
    const inWin = slots.filter((s) => s.at >= winStart && s.at < winEnd);
    const slotStarts = inWin.map((s) => s.at - s.ms);
    const slotGaps = slotStarts.slice(1).map((x, i) => x - slotStarts[i]!);
    const perBucket = new Array<number>(10).fill(0);
    for (const id of chatIds) perBucket[bucketOf(id, 10)]!++;
    const tabs = CHATS * TABS_PER_CHAT;
    const expectedPerSecond = runningAtStart * (TABS_PER_CHAT + 1) * (1000 / config.meterTickMs);
    const receivedPerSecond = report.received / SECONDS;
    const slotTotalMs = inWin.reduce((a, s) => a + s.ms, 0);
    const slotBusy = slotTotalMs / (wallS * 1000);
    const windowQueryMs = s1.queryMs - s0.queryMs;
    const windowSettleMs = s1.settleMs - s0.settleMs;
    const pctOfSlots = (x: number) => round((100 * x) / Math.max(1, slotTotalMs));
    const ms = (x: number) => Math.round(x);

    const notes: string[] = ['the node runs in this process (its main thread), the clients in a child process of their own'];
    if (database === 'pglite') notes.push("PGlite runs in the node's main thread: every query is event-loop time of the node");
    if (clientElu > 0.9 || report.clientCores > 0.9) {
      notes.push(`the client side saturated its core (event loop ${Math.round(clientElu * 100)}% busy): received rates and latencies understate the node`);
    }
    if (nodeElu > 0.9) notes.push(`the node's event loop was saturated (${Math.round(nodeElu * 100)}% busy)`);
    if (machineBusy !== null && machineBusy > 0.9) {
      notes.push(`the machine's ${cores} cores were saturated (${Math.round(machineBusy * 100)}% busy), shared by node, clients and database`);
    }
    if (receivedPerSecond < expectedPerSecond * 0.99) notes.push(`meters short of expected: ${round((100 * receivedPerSecond) / Math.max(1, expectedPerSecond))}% received`);
    if (report.seqGaps > 0) notes.push(`${report.seqGaps} meters never reached a socket that should have seen them (seq gaps)`);
    if (report.intervalMs.p95 > 1.5 * config.meterTickMs) notes.push('meters of a chat arrive more than 1.5 ticks apart at p95: ticks are late');
    if (slotBusy > 0.8) notes.push(`the ticker was settling ${Math.round(slotBusy * 100)}% of the window: slots run back to back and merge buckets`);
    if (fdLimit !== null && fdLimit < fdNeeded) notes.push(`ulimit -n ${fdLimit} is below the ${fdNeeded} file descriptors each process needs`);
    if (maxBilledMinusWall > 0) notes.push('A CHAT WAS BILLED MORE SECONDS THAN THE WALL TIME IT RAN');
    if (maxBilledMinusPresent > 0) notes.push('A CHAT WAS BILLED MORE SECONDS THAN ITS USER WAS PRESENT WHILE IT RAN');

    console.log(
      JSON.stringify(
        {
          bench: 'realtime',
          database,
          chats: CHATS,
          tabs,
          advisorSockets: advisors,
          sockets: tabs + advisors,
          tickMs: config.meterTickMs,
          heartbeatEveryMs: joined.heartbeatEveryMs,
          windowSeconds: SECONDS,
          cores,
          setup: {
            seedMs: ms(seedMs),
            connect: { allSocketsMs: ms(connected.ms), connected: connected.sockets, socketMs: connected.latencyMs, batch: BATCH, errors: connected.errors },
            join: { allJoinsMs: ms(joined.ms), userTabAckMs: joined.userJoinAckMs, advisorAckMs: joined.advisorJoinAckMs, batch: BATCH, errors: joined.errors },
            start: { allChatsMs: ms(startMs), commandMs: dist(startLat), concurrency: START_CONCURRENCY, errors: startErr },
          },
          meters: {
            runningChats: runningAtStart,
            expectedPerSecond: Math.round(expectedPerSecond),
            receivedPerSecond: Math.round(receivedPerSecond),
            receivedPct: round((100 * receivedPerSecond) / Math.max(1, expectedPerSecond)),
            byUserTabsPerSecond: Math.round(report.receivedByUserTabs / SECONDS),
            byAdvisorsPerSecond: Math.round(report.receivedByAdvisors / SECONDS),
            intervalMs: report.intervalMs,
            intervalsOver1500ms: report.intervalsOver1500ms,
            seqGaps: report.seqGaps,
            seqRepeats: report.seqRepeats,
            silentStreams: report.silentStreams,
            notRunning: report.notRunning,
            pushLagMs: report.pushLagMs,
          },
          spread: {
            binMs: slice,
            binsAlignedOnSlots: true,
            per100ms: report.per100ms,
            per100msCv: round(report.per100ms.stddev / Math.max(1, report.per100ms.mean), 3),
            perSecond: report.perSecond,
            phaseSharePct: report.phaseSharePct,
            chatsPerBucket: { min: Math.min(...perBucket), max: Math.max(...perBucket) },
          },
          heartbeats: { sentPerSecond: Math.round(report.heartbeats.sent / SECONDS), ackMs: report.heartbeats.ackMs, errors: report.heartbeats.errors },
          ticker: {
            slots: s1.histo.count - s0.histo.count,
            slotMeanMs: round(((s1.histo.sum - s0.histo.sum) * 1000) / Math.max(1, s1.histo.count - s0.histo.count)),
            slotMs: dist(inWin.map((s) => s.ms)),
            chatsPerSlot: dist(inWin.map((s) => s.chats)),
            slotStartGapMs: dist(slotGaps),
            busyPct: round(slotBusy * 100),
            // shares of the slots' wall time (the window has no joins or commands: the slots do all settling)
            slotTimePct: {
              dbQueries: pctOfSlots(windowQueryMs),
              settleOther: pctOfSlots(windowSettleMs - windowQueryMs),
              publishAndRest: pctOfSlots(slotTotalMs - windowSettleMs),
            },
            settlementsPerSecond: Math.round((s1.settled - s0.settled) / wallS),
            settlementErrors: s1.errors - s0.errors,
            settlementErrorsTotal: s1.errors,
            backgroundErrors: s1.background,
            rejectedEvents: s1.rejected,
            dbQueriesPerSecond: Math.round((s1.queries - s0.queries) / wallS),
          },
          cpu: {
            nodeProcessCores: round(nodeCores, 2),
            nodeEventLoopBusyPct: round(nodeElu * 100),
            clientProcessCores: round(report.clientCores, 2),
            clientEventLoopBusyPct: round(clientElu * 100),
            machineBusyPct: machineBusy === null ? null : round(machineBusy * 100),
            // what the machine did beyond node and clients: mostly Postgres
            otherProcessesCores: machineBusy === null ? null : round(Math.max(0, machineBusy * s1.machine!.cpus - nodeCores - report.clientCores), 2),
            // the histogram counts the sampling interval itself: take it off
            nodeEventLoopDelayMs: {
              p50: round(Math.max(0, loopDelay.percentile(50) / 1e6 - LOOP_RESOLUTION_MS)),
              p99: round(Math.max(0, loopDelay.percentile(99) / 1e6 - LOOP_RESOLUTION_MS)),
              max: round(Math.max(0, loopDelay.max / 1e6 - LOOP_RESOLUTION_MS)),
            },
          },
          memory: { nodeRssMB: rss, nodeHeapUsedMB: Math.round(heapUsed / 2 ** 20), nodeLiveHeapMB: liveHeap, clientRssMB: report.clientRssMB },
          shutdown: {
            unexpectedDisconnects: report.unexpectedDisconnects,
            metersStoppedMs,
            stillRunningAfterWait: stillRunning,
          },
          billing: {
            chatsBilled: rows.length,
            secondsBilled: billed,
            maxBilledMinusWall: round(maxBilledMinusWall, 3),
            maxBilledMinusPresentWall: round(maxBilledMinusPresent, 3),
            // billing runs until the node sees the tabs go, which is after the clients closed them
            billedMinusUntilTabsClosedMs: dist(vsTabsClosed.map((x) => x * 1000)),
            lastPresenceAfterTabsClosedMs: dist(leaveSeenAfterClose),
          },
          totalSeconds: round((performance.now() - wallStart) / 1000),
          notes,
        },
        null,
        2,
      ),
    );
  } catch (err) {
    await abandon();
    throw err;
  }
}

const CLIENTS_FLAG = '--bench-clients';

if (process.argv.includes(CLIENTS_FLAG)) {
  clientSide().catch((err: unknown) => {
    toNode({ type: 'fatal', message: String((err as Error)?.stack ?? err) });
    process.exit(1);
  });
} else {
  main().then(
    () => process.exit(0),
    (err: unknown) => {
      console.error(err);
      process.exit(1);
    },
  );
}
