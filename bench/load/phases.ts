/**
 * The phases of one load run against one server (chatmeter, one or two nodes, or
 * the bare baseline), with the same client workers for each: the paced connect
 * storm, the steady window, every socket reconnecting at once, and idle with every
 * socket closed. The server's CPU and memory are read from /proc for its own
 * processes (and its database's backends), apart from the clients'.
 */
import { type ChildProcess, fork } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { LoadConfig } from './config.js';
import type { FromWorker, SocketSpec, StormResult, ToWorker } from './messages.js';
import { cpuMs, machineCpu, rssKB } from './procfs.js';
import { type Dist, dist, mergeCounts, round, sleep } from './stats.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const CLIENTS = fileURLToPath(new URL('./clients.ts', import.meta.url));

/** The server under load, as the phases see it. */
export interface Target {
  name: string;
  /** The server's process of each node. */
  pids: number[];
  /** Processes working for the server whose CPU counts with it (its database's backends); asked at each sample. */
  databasePids(): Promise<number[]>;
  /** Processes shared by the nodes (Redis), reported apart. */
  sharedPids: number[];
  /** Called halfway through the steady window. */
  duringWindow?(): Promise<void>;
  /** Counters of the server's own (its /metrics), read before and after the window. */
  counters?(): Promise<Record<string, number>>;
  /** Chats whose meter runs now (chatmeter's records), to time how fast closing every tab stops them. */
  runningMeters?(): Promise<number>;
}

/** CPU of every process of interest at one instant (ms of CPU so far). */
interface CpuSample {
  at: number;
  nodes: number[];
  database: Map<number, number>;
  shared: number;
  machine: ReturnType<typeof machineCpu>;
}

/** CPU between two samples. */
export interface CpuSpan {
  wallMs: number;
  /** CPU ms of each node's process. */
  nodesMs: number[];
  databaseMs: number;
  sharedMs: number;
  /** How busy the whole machine was (%), everything included. */
  machineBusyPct: number | null;
}

/** What the phases measured. */
export interface PhaseResult {
  target: string;
  sockets: number;
  storm: {
    attempted: number;
    connected: number;
    joined: number;
    joinedPerNode: number[];
    offeredRate: number;
    /** Connects completed per second, first to last. */
    connectsPerSecond: number;
    seconds: number;
    connectMs: Dist;
    joinMs: Dist;
    dashboardMs: Dist;
    errors: Record<string, number>;
    cpu: CpuSpan;
    /** The server's CPU per socket connected and joined (µs), database included. */
    cpuUsPerSocket: number;
    /** Cores the client workers took meanwhile. */
    clientCores: number;
  };
  memory: { rssBeforeKB: number[]; rssAfterKB: number[]; perSocketKB: number };
  steady: {
    seconds: number;
    expectedPerTab: number;
    tabMeters: { min: number; p50: number; max: number };
    dashboardMeters: { expected: number; min: number; p50: number; max: number };
    expected: number;
    received: number;
    receivedPct: number;
    receivedPerNode: number[];
    /** Meters received per 100 ms of the window, all sockets: how evenly the server spreads its pushes over the tick. */
    per100ms: Dist & { mean: number; cv: number };
    jitterMs: Dist;
    lagMs: Dist;
    seqGaps: number;
    seqRepeats: number;
    notRunning: number;
    payloadBytes: { mean: number; min: number; max: number };
    heartbeats: { perSecond: number; errors: number; ackMs: Dist };
    unexpectedDisconnects: number;
    cpu: CpuSpan;
    /** CPU per delivered meter (µs): the server's processes, each node's (per meter its sockets got), and with the database. */
    usPerMeter: { server: number; perNode: number[]; withDatabase: number; shared: number };
    clients: { cores: number; rssMB: number[] };
    counters: Record<string, number>;
  };
  reconnect: {
    dropped: number;
    rejoined: number;
    /** From the drop to the last socket's rejoin ack (ms); null when not all came back. */
    allMs: number | null;
    rejoinMs: Dist;
    attempts: number;
    errors: Record<string, number>;
    cpu: CpuSpan;
    /** Cores the client workers took meanwhile. */
    clientCores: number;
  };
  idle: {
    /** From closing every socket until no meter ran (ms); null without a way to tell or when some still ran. */
    metersStoppedMs: number | null;
    seconds: number;
    cpu: CpuSpan;
    nodePctOfCore: number[];
    databasePctOfCore: number;
    sharedPctOfCore: number;
  };
}

/** The client worker processes, driven together. */
class Workers {
  private readonly procs: ChildProcess[] = [];
  private readonly inbox: FromWorker[][] = [];
  private failure: Error | null = null;
  private wake: Array<() => void> = [];

  constructor(n: number) {
    for (let i = 0; i < n; i++) {
      // each its own process: its own core, event loop and file descriptors
      const child = fork(CLIENTS, [], {
        cwd: ROOT,
        execArgv: ['--import', 'tsx'],
        serialization: 'advanced',
        stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
      });
      this.procs.push(child);
      this.inbox.push([]);
      child.on('message', (m: FromWorker) => {
        if (m.type === 'fatal') this.failure ??= new Error(`client worker ${i}: ${m.message}`);
        else this.inbox[i]!.push(m);
        this.poke();
      });
      child.on('exit', (code, signal) => {
        this.failure ??= new Error(`client worker ${i} exited (${signal ?? code})`);
        this.poke();
      });
    }
  }

  get pids(): number[] {
    return this.procs.map((p) => p.pid!);
  }

  send(i: number, m: ToWorker): void {
    if (this.procs[i]!.connected) this.procs[i]!.send(m);
  }

  all(m: ToWorker): void {
    for (let i = 0; i < this.procs.length; i++) this.send(i, m);
  }

  /** One message of `type` from every worker, in worker order. */
  async collect<T extends FromWorker['type']>(type: T, timeoutMs: number): Promise<Array<Extract<FromWorker, { type: T }>>> {
    const until = Date.now() + timeoutMs;
    for (;;) {
      if (this.failure) throw this.failure;
      if (this.inbox.every((box) => box.some((m) => m.type === type))) {
        return this.inbox.map((box) => box.splice(box.findIndex((m) => m.type === type), 1)[0] as Extract<FromWorker, { type: T }>);
      }
      if (Date.now() > until) throw new Error(`client workers: no '${type}' from every worker within ${timeoutMs} ms`);
      await new Promise<void>((r) => {
        this.wake.push(r);
        setTimeout(r, 1000);
      });
    }
  }

  /** Stops every worker (they also exit when this process goes). */
  kill(): void {
    for (const p of this.procs) {
      p.removeAllListeners('exit');
      if (p.exitCode === null && p.signalCode === null) p.kill();
    }
  }

  private poke(): void {
    this.wake.splice(0).forEach((r) => r());
  }
}

/** Everything `sockets` does to `target`, phase by phase. */
export async function runPhases(target: Target, sockets: SocketSpec[], cfg: LoadConfig, log: (line: string) => void): Promise<PhaseResult> {
  const n = Math.min(cfg.clients, sockets.length);
  const workers = new Workers(n);
  try {
    return await drive(target, sockets, cfg, workers, log);
  } finally {
    workers.kill();
  }
}

async function sampleCpu(target: Target): Promise<CpuSample> {
  const database = new Map<number, number>();
  for (const pid of await target.databasePids()) {
    const ms = cpuMs(pid);
    if (ms !== null) database.set(pid, ms);
  }
  return {
    at: performance.now(),
    nodes: target.pids.map((pid) => cpuMs(pid) ?? 0),
    database,
    shared: target.sharedPids.reduce((a, pid) => a + (cpuMs(pid) ?? 0), 0),
    machine: machineCpu(),
  };
}

function span(a: CpuSample, b: CpuSample): CpuSpan {
  let databaseMs = 0;
  // a backend that appeared in between did all its work in between
  for (const [pid, ms] of b.database) databaseMs += ms - (a.database.get(pid) ?? 0);
  return {
    wallMs: Math.round(b.at - a.at),
    nodesMs: b.nodes.map((ms, i) => Math.round(ms - a.nodes[i]!)),
    databaseMs: Math.round(databaseMs),
    sharedMs: Math.round(b.shared - a.shared),
    machineBusyPct: a.machine && b.machine ? round((100 * (b.machine.busy - a.machine.busy)) / Math.max(1, b.machine.total - a.machine.total)) : null,
  };
}

const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);
const concat = <T>(xss: T[][]): T[] => ([] as T[]).concat(...xss);

async function drive(target: Target, sockets: SocketSpec[], cfg: LoadConfig, workers: Workers, log: (line: string) => void): Promise<PhaseResult> {
  const n = workers.pids.length;
  // round robin: socket i opens at start + i / rate whichever worker holds it
  for (let w = 0; w < n; w++) {
    workers.send(w, {
      type: 'setup',
      setup: {
        sockets: sockets.filter((_, i) => i % n === w),
        rate: cfg.rate / n,
        offsetMs: (w * 1000) / cfg.rate,
        ackTimeoutMs: cfg.ackTimeoutMs,
        heartbeatEveryMs: cfg.heartbeatEveryMs,
        tickMs: cfg.tickMs,
        nodes: target.pids.length,
      },
    });
  }
  await workers.collect('ready', 60_000);
  const nodes = target.pids.length;

  // ---- storm
  const rssBeforeKB = target.pids.map((pid) => rssKB(pid) ?? 0);
  const startAt = Date.now() + 500;
  log(`${target.name}: connect storm, ${sockets.length} sockets at ${cfg.rate}/s`);
  const stormCpu0 = await sampleCpu(target);
  const stormClients0 = workers.pids.map((pid) => cpuMs(pid) ?? 0);
  workers.all({ type: 'storm', startAt });
  const storms = (await workers.collect('storm', (sockets.length / cfg.rate) * 1000 + 2 * cfg.ackTimeoutMs + 30_000)).map((m) => m.result);
  const stormCpu1 = await sampleCpu(target);
  const stormClientsMs = sum(workers.pids.map((pid, i) => (cpuMs(pid) ?? 0) - stormClients0[i]!));
  const storm = mergeStorms(storms, nodes);
  log(`${target.name}: ${storm.joined}/${sockets.length} joined; steady window of ${cfg.seconds} s after ${cfg.warmupSeconds} s`);
  await sleep(2000);
  const rssAfterKB = target.pids.map((pid) => rssKB(pid) ?? 0);
  await sleep(Math.max(0, cfg.warmupSeconds * 1000 - 2000));

  // ---- steady window
  const counters0 = (await target.counters?.()) ?? {};
  const start = Date.now() + 300;
  const end = start + cfg.seconds * 1000;
  workers.all({ type: 'window', start, end });
  await sleep(start - Date.now());
  const c0 = await sampleCpu(target);
  const clients0 = workers.pids.map((pid) => cpuMs(pid) ?? 0);
  await sleep((end - start) / 2);
  await target.duringWindow?.().catch(() => undefined);
  await sleep(end - Date.now());
  const c1 = await sampleCpu(target);
  const clients1 = workers.pids.map((pid) => cpuMs(pid) ?? 0);
  const counters1 = (await target.counters?.()) ?? {};
  await sleep(700); // meters stamped inside the window still in flight
  workers.all({ type: 'report' });
  const windows = (await workers.collect('window', 120_000)).map((m) => m.result);
  const steadyCpu = span(c0, c1);

  // ---- reconnect: every transport dropped at once
  log(`${target.name}: every socket drops its transport and reconnects`);
  const dropAt = Date.now() + 300;
  const r0 = await sampleCpu(target);
  const reconnectClients0 = workers.pids.map((pid) => cpuMs(pid) ?? 0);
  workers.all({ type: 'drop', at: dropAt, timeoutMs: cfg.reconnectTimeoutSeconds * 1000, delayMs: cfg.reconnectDelayMs });
  const reconnects = (await workers.collect('reconnected', cfg.reconnectTimeoutSeconds * 1000 + 30_000)).map((m) => m.result);
  const r1 = await sampleCpu(target);
  const reconnectClientsMs = sum(workers.pids.map((pid, i) => (cpuMs(pid) ?? 0) - reconnectClients0[i]!));
  await sleep(2000);

  // ---- idle: every socket closed, the chats still active (away)
  log(`${target.name}: idle, every socket closed`);
  const closedAt = Date.now();
  workers.all({ type: 'close' });
  await workers.collect('closed', 60_000);
  let metersStoppedMs: number | null = null;
  if (target.runningMeters) {
    const until = Date.now() + 30_000;
    while (Date.now() < until) {
      if ((await target.runningMeters().catch(() => 1)) === 0) {
        metersStoppedMs = Date.now() - closedAt;
        break;
      }
      await sleep(100);
    }
  }
  await sleep(cfg.idleSettleSeconds * 1000);
  const i0 = await sampleCpu(target);
  await sleep(cfg.idleSeconds * 1000);
  const idleCpu = span(i0, await sampleCpu(target));

  const deliveries = sum(windows.map((w) => w.received));
  const perNode = Array.from({ length: nodes }, (_, i) => sum(windows.map((w) => w.receivedPerNode[i]!)));
  const expectedPerTab = (cfg.seconds * 1000) / cfg.tickMs;
  const tabMeters = dist(concat(windows.map((w) => w.tabMeters)));
  const dashboardMeters = dist(concat(windows.map((w) => w.dashboardMeters)));
  const expected = cfg.chats * (cfg.tabsPerChat + 1) * expectedPerTab;
  const payload = windows.reduce((a, w) => ({ sum: a.sum + w.payloadBytes.sum, n: a.n + w.payloadBytes.n, min: Math.min(a.min, w.payloadBytes.min || Infinity), max: Math.max(a.max, w.payloadBytes.max) }), {
    sum: 0,
    n: 0,
    min: Infinity,
    max: 0,
  });
  const us = (ms: number, count: number) => (count > 0 ? round((ms * 1000) / count, 2) : 0);
  const nodeMs = sum(steadyCpu.nodesMs);
  const stormServerMs = sum(span(stormCpu0, stormCpu1).nodesMs) + span(stormCpu0, stormCpu1).databaseMs;
  const rejoined = sum(reconnects.map((r) => r.rejoined));
  const dropped = sum(reconnects.map((r) => r.dropped));
  const pctOfCore = (ms: number) => round((100 * ms) / Math.max(1, idleCpu.wallMs), 2);
  return {
    target: target.name,
    sockets: sockets.length,
    storm: { ...storm, offeredRate: cfg.rate, cpu: span(stormCpu0, stormCpu1), cpuUsPerSocket: us(stormServerMs, storm.joined), clientCores: round(stormClientsMs / Math.max(1, stormCpu1.at - stormCpu0.at), 2) },
    memory: {
      rssBeforeKB,
      rssAfterKB,
      perSocketKB: round((sum(rssAfterKB) - sum(rssBeforeKB)) / Math.max(1, storm.joined), 2),
    },
    steady: {
      seconds: cfg.seconds,
      expectedPerTab,
      tabMeters: { min: tabMeters.min, p50: tabMeters.p50, max: tabMeters.max },
      dashboardMeters: { expected: expectedPerTab * cfg.chatsPerAdvisor, min: dashboardMeters.min, p50: dashboardMeters.p50, max: dashboardMeters.max },
      expected,
      received: deliveries,
      receivedPct: round((100 * deliveries) / Math.max(1, expected), 2),
      receivedPerNode: perNode,
      per100ms: spread(windows.map((w) => w.per100ms)),
      jitterMs: dist(concat(windows.map((w) => w.jitterMs))),
      lagMs: dist(concat(windows.map((w) => w.lagMs))),
      seqGaps: sum(windows.map((w) => w.seqGaps)),
      seqRepeats: sum(windows.map((w) => w.seqRepeats)),
      notRunning: sum(windows.map((w) => w.notRunning)),
      payloadBytes: { mean: payload.n ? Math.round(payload.sum / payload.n) : 0, min: payload.n ? payload.min : 0, max: payload.max },
      heartbeats: {
        perSecond: Math.round(sum(windows.map((w) => w.heartbeats.sent)) / cfg.seconds),
        errors: sum(windows.map((w) => w.heartbeats.errors)),
        ackMs: dist(concat(windows.map((w) => w.heartbeats.ackMs))),
      },
      unexpectedDisconnects: sum(windows.map((w) => w.unexpectedDisconnects)),
      cpu: steadyCpu,
      usPerMeter: {
        server: us(nodeMs, deliveries),
        perNode: steadyCpu.nodesMs.map((ms, i) => us(ms, perNode[i]!)),
        withDatabase: us(nodeMs + steadyCpu.databaseMs, deliveries),
        shared: us(steadyCpu.sharedMs, deliveries),
      },
      clients: {
        cores: round(sum(clients1.map((ms, i) => ms - clients0[i]!)) / Math.max(1, steadyCpu.wallMs), 2),
        rssMB: windows.map((w) => w.rssMB),
      },
      counters: Object.fromEntries(Object.entries(counters1).map(([k, v]) => [k, round(v - (counters0[k] ?? 0), 3)])),
    },
    reconnect: {
      dropped,
      rejoined,
      allMs: rejoined === dropped && dropped > 0 ? Math.max(...reconnects.map((r) => r.lastRejoinedAt)) - dropAt : null,
      rejoinMs: dist(concat(reconnects.map((r) => r.rejoinMs))),
      attempts: sum(reconnects.map((r) => r.attempts)),
      errors: reconnects.reduce((a, r) => mergeCounts(a, r.errors), {} as Record<string, number>),
      cpu: span(r0, r1),
      clientCores: round(reconnectClientsMs / Math.max(1, r1.at - r0.at), 2),
    },
    idle: {
      metersStoppedMs,
      seconds: cfg.idleSeconds,
      cpu: idleCpu,
      nodePctOfCore: idleCpu.nodesMs.map(pctOfCore),
      databasePctOfCore: pctOfCore(idleCpu.databaseMs),
      sharedPctOfCore: pctOfCore(idleCpu.sharedMs),
    },
  };
}

/** Sums the workers' per-100 ms counts and summarizes them, with the coefficient of variation. */
function spread(perWorker: number[][]): Dist & { mean: number; cv: number } {
  const bins = perWorker[0]!.map((_, i) => sum(perWorker.map((b) => b[i] ?? 0)));
  const mean = sum(bins) / Math.max(1, bins.length);
  const sd = Math.sqrt(sum(bins.map((b) => (b - mean) ** 2)) / Math.max(1, bins.length));
  return { ...dist(bins), mean: round(mean), cv: round(sd / Math.max(1, mean), 3) };
}

function mergeStorms(storms: StormResult[], nodes: number) {
  const connected = sum(storms.map((s) => s.connected));
  const first = Math.min(...storms.map((s) => s.firstConnectedAt));
  const last = Math.max(...storms.map((s) => s.lastConnectedAt));
  const firstAttempt = Math.min(...storms.map((s) => s.firstAttemptAt));
  const lastJoined = Math.max(...storms.map((s) => s.lastJoinedAt));
  return {
    attempted: sum(storms.map((s) => s.attempted)),
    connected,
    joined: sum(storms.map((s) => s.joined)),
    joinedPerNode: Array.from({ length: nodes }, (_, i) => sum(storms.map((s) => s.joinedPerNode[i]!))),
    offeredRate: 0,
    // completions per second between the first and the last: the rate the server kept up with
    connectsPerSecond: connected > 1 && last > first ? round(((connected - 1) * 1000) / (last - first), 0) : 0,
    seconds: round((lastJoined - firstAttempt) / 1000, 2),
    connectMs: dist(concat(storms.map((s) => s.connectMs))),
    joinMs: dist(concat(storms.map((s) => s.joinMs))),
    dashboardMs: dist(concat(storms.map((s) => s.dashboardMs))),
    errors: storms.reduce((a, s) => mergeCounts(a, s.errors), {} as Record<string, number>),
  };
}
