/**
 * The load run's report: the issue's table (figure | chatmeter | bare socket.io |
 * target | ratio/met) as aligned text on stdout, the two-node table when there is
 * one, and the whole result as JSON in bench/results/ (its path printed).
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { BareRun } from './bare-run.js';
import type { ChatmeterRun } from './chatmeter-run.js';
import type { LoadConfig } from './config.js';
import type { PhaseResult } from './phases.js';
import { round } from './stats.js';

/** What HTTP polling of the same freshness cost per update (the issue's figure, µs of server CPU). */
export const POLLING_US_PER_UPDATE = 933;

/** Everything one load run measured. */
export interface LoadResult {
  bench: 'load';
  startedAt: string;
  totalSeconds: number;
  machine: { cores: number; node: string; openFileLimit: number | null };
  config: LoadConfig;
  chatmeter: ChatmeterRun;
  twoNodes: ChatmeterRun | null;
  bare: BareRun | null;
  notes: string[];
}

type Row = [figure: string, a: string, b: string, target: string, verdict: string];

const met = (ok: boolean) => (ok ? 'met' : 'NOT MET');
const x = (a: number, b: number) => (b > 0 ? `${round(a / b, 2)}x` : '-');
const ms = (v: number) => `${Math.round(v).toLocaleString('en-US')}`;
const pair = (d: { p50: number; p99: number }) => `${ms(d.p50)} / ${ms(d.p99)}`;
const seconds = (msOrNull: number | null) => (msOrNull === null ? 'not all' : `${round(msOrNull / 1000, 1)} s`);
const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);

/** The idle CPU of a run: nodes and database, % of one core. */
const idlePct = (p: PhaseResult) => round(sum(p.idle.nodePctOfCore) + p.idle.databasePctOfCore, 2);

/** Whether the achieved connect rate is the offered one: paced exactly, completions measure a hair under it. */
const rateMet = (p: PhaseResult, rate: number) => p.storm.connectsPerSecond >= 0.99 * rate;

/** The billing checks of a chatmeter run, in a cell. */
function billing(run: ChatmeterRun): string {
  const k = run.checks;
  return `${k.verify.exitCode === 0 ? 'verify ok' : `verify exit ${k.verify.exitCode}`}; ${k.maxBilledMinusWallSeconds ?? '-'} s, ${k.maxBilledMinusPresentSeconds ?? '-'} s`;
}

const billingOk = (run: ChatmeterRun) =>
  run.checks.verify.exitCode === 0 && (run.checks.maxBilledMinusWallSeconds ?? 0) <= 0 && (run.checks.maxBilledMinusPresentSeconds ?? 0) <= 0;

function table(head: Row, rows: Row[]): string {
  const all = [head, ...rows];
  const widths = head.map((_, i) => Math.max(...all.map((r) => r[i]!.length)));
  const line = (r: Row) => r.map((c, i) => c.padEnd(widths[i]!)).join(' | ').trimEnd();
  return [line(head), widths.map((w) => '-'.repeat(w)).join('-|-'), ...rows.map(line)].join('\n');
}

function mainTable(r: LoadResult): string {
  const c = r.chatmeter.phases;
  const b = r.bare?.phases ?? null;
  const cfg = r.config;
  const bare = <T>(f: (p: PhaseResult) => T, show: (v: T) => string) => (b ? show(f(b)) : '-');
  const vsBare = (a: number, f: (p: PhaseResult) => number) => (b ? `${x(a, f(b))} bare; ` : '');
  const cpuC = c.steady.usPerMeter.withDatabase;
  const cpuB = b?.steady.usPerMeter.server ?? 0;
  const rows: Row[] = [
    ['sockets joined', `${c.storm.joined} / ${c.sockets}`, bare((p) => p, (p) => `${p.storm.joined} / ${p.sockets}`), 'all', met(c.storm.joined === c.sockets)],
    [
      'connects/s achieved',
      `${c.storm.connectsPerSecond} (offered ${cfg.rate})`,
      bare((p) => p.storm.connectsPerSecond, String),
      `>= ${cfg.rate}`,
      met(rateMet(c, cfg.rate)),
    ],
    [
      `reconnect of all ${c.reconnect.dropped.toLocaleString('en-US')}`,
      `${seconds(c.reconnect.allMs)} (${c.reconnect.rejoined} rejoined)`,
      bare((p) => p.reconnect.allMs, seconds),
      'within 10 s',
      met(c.reconnect.allMs !== null && c.reconnect.allMs <= 10_000),
    ],
    ['connect ms p50/p99', pair(c.storm.connectMs), bare((p) => p.storm.connectMs, pair), 'p99 < 1,000', vsBare(c.storm.connectMs.p99, (p) => p.storm.connectMs.p99) + met(c.storm.connectMs.p99 < 1000)],
    ['join ack ms p50/p99', pair(c.storm.joinMs), bare((p) => p.storm.joinMs, pair), 'p99 < 500', vsBare(c.storm.joinMs.p99, (p) => p.storm.joinMs.p99) + met(c.storm.joinMs.p99 < 500)],
    [
      `meters per tab in ${cfg.seconds} s`,
      `${c.steady.tabMeters.p50} (min ${c.steady.tabMeters.min}, max ${c.steady.tabMeters.max})`,
      bare((p) => p.steady.tabMeters, (t) => `${t.p50} (min ${t.min}, max ${t.max})`),
      `${c.steady.expectedPerTab}: one per tick per tab`,
      met(c.steady.tabMeters.p50 >= c.steady.expectedPerTab && c.steady.tabMeters.min >= c.steady.expectedPerTab - 1),
    ],
    ['meters lost (seq gaps)', String(c.steady.seqGaps), bare((p) => p.steady.seqGaps, String), '0', met(c.steady.seqGaps === 0)],
    ['interval jitter p99', `${ms(c.steady.jitterMs.p99)} ms`, bare((p) => p.steady.jitterMs.p99, (v) => `${ms(v)} ms`), '< 100 ms', met(c.steady.jitterMs.p99 < 100)],
    [
      'serverTime to arrival p50/p99',
      `${pair(c.steady.lagMs)} ms`,
      bare((p) => p.steady.lagMs, (d) => `${pair(d)} ms`),
      'p99 < 100 ms',
      met(c.steady.lagMs.p99 < 100),
    ],
    [
      'server CPU per delivered meter',
      `${cpuC} us (node ${c.steady.usPerMeter.server} + pg ${round(cpuC - c.steady.usPerMeter.server, 2)})`,
      bare((p) => p.steady.usPerMeter.server, (v) => `${v} us`),
      '<= 1.5x bare, Postgres included',
      b ? `${x(cpuC, cpuB)}; ${met(cpuC <= 1.5 * cpuB)}` : 'no baseline',
    ],
    [
      `CPU, ${cfg.chats.toLocaleString('en-US')} active chats, no socket`,
      `${idlePct(c)}% of a core (pg ${c.idle.databasePctOfCore}%)`,
      bare((p) => idlePct(p), (v) => `${v}%`),
      '<= 2% of a core',
      met(idlePct(c) <= 2),
    ],
    ['RSS per socket', `${c.memory.perSocketKB} KB`, bare((p) => p.memory.perSocketKB, (v) => `${v} KB`), '<= 30 KB', vsBare(c.memory.perSocketKB, (p) => p.memory.perSocketKB) + met(c.memory.perSocketKB <= 30)],
    [
      `POST /v1/chats/:id/start, ${cfg.startConcurrency} in flight`,
      `${r.chatmeter.setup.start.perSecond.toLocaleString('en-US')} req/s (p99 ${ms(r.chatmeter.setup.start.latencyMs.p99)} ms)`,
      '-',
      '>= 1,000 req/s',
      met(r.chatmeter.setup.start.perSecond >= 1000 && r.chatmeter.setup.start.ok === r.chatmeter.setup.start.requests),
    ],
    [
      `push vs HTTP polling (${POLLING_US_PER_UPDATE} us/update)`,
      cpuC > 0 ? `${round(POLLING_US_PER_UPDATE / cpuC, 1)}x cheaper` : '-',
      bare((p) => p.steady.usPerMeter.server, (v) => (v > 0 ? `${round(POLLING_US_PER_UPDATE / v, 1)}x` : '-')),
      '>= 15x: keep it so',
      met(cpuC > 0 && POLLING_US_PER_UPDATE / cpuC >= 15),
    ],
    ['billing: verify; billed beyond wall, presence', billing(r.chatmeter), '-', 'ok; <= 0 s', met(billingOk(r.chatmeter))],
  ];
  return table(['figure', 'chatmeter', b ? 'bare socket.io' : 'bare socket.io (skipped)', 'target', 'ratio/met'], rows);
}

function twoNodeTable(r: LoadResult, two: ChatmeterRun): string {
  const one = r.chatmeter.phases;
  const t = two.phases;
  // per-node cost: the nodes' CPU per meter they delivered, one node against two
  const oneUs = one.steady.usPerMeter.server;
  const twoUs = t.steady.usPerMeter.server;
  const rows: Row[] = [
    ['sockets joined (per node)', `${one.storm.joined} / ${one.sockets}`, `${t.storm.joined} / ${t.sockets} (${t.storm.joinedPerNode.join(' + ')})`, 'all', met(t.storm.joined === t.sockets)],
    ['connect ms p50/p99', pair(one.storm.connectMs), pair(t.storm.connectMs), 'p99 < 1,000', met(t.storm.connectMs.p99 < 1000)],
    ['join ack ms p50/p99', pair(one.storm.joinMs), pair(t.storm.joinMs), 'p99 < 500', met(t.storm.joinMs.p99 < 500)],
    [
      `meters per tab in ${r.config.seconds} s`,
      `${one.steady.tabMeters.p50} (min ${one.steady.tabMeters.min})`,
      `${t.steady.tabMeters.p50} (min ${t.steady.tabMeters.min}, max ${t.steady.tabMeters.max})`,
      String(t.steady.expectedPerTab),
      met(t.steady.tabMeters.p50 >= t.steady.expectedPerTab && t.steady.tabMeters.min >= t.steady.expectedPerTab - 1),
    ],
    ['meters received / expected', `${one.steady.receivedPct}%`, `${t.steady.receivedPct}%`, '100%', met(t.steady.receivedPct >= 99.5)],
    ['meters lost (seq gaps)', String(one.steady.seqGaps), String(t.steady.seqGaps), '0: nothing lost', met(t.steady.seqGaps === 0)],
    ['interval jitter p99', `${ms(one.steady.jitterMs.p99)} ms`, `${ms(t.steady.jitterMs.p99)} ms`, '< 100 ms', met(t.steady.jitterMs.p99 < 100)],
    ['serverTime to arrival p50/p99', `${pair(one.steady.lagMs)} ms`, `${pair(t.steady.lagMs)} ms`, 'p99 < 100 ms', met(t.steady.lagMs.p99 < 100)],
    [
      'node CPU per delivered meter',
      `${oneUs} us`,
      `${twoUs} us (per node ${t.steady.usPerMeter.perNode.join(', ')})`,
      'within 20% of one node',
      `${x(twoUs, oneUs)}; ${met(twoUs <= 1.2 * oneUs)}`,
    ],
    [
      '+ Postgres, + Redis per meter',
      `${one.steady.usPerMeter.withDatabase} us`,
      `${t.steady.usPerMeter.withDatabase} us + Redis ${t.steady.usPerMeter.shared} us`,
      '-',
      x(t.steady.usPerMeter.withDatabase + t.steady.usPerMeter.shared, one.steady.usPerMeter.withDatabase),
    ],
    [
      `reconnect of all ${t.reconnect.dropped.toLocaleString('en-US')}`,
      seconds(one.reconnect.allMs),
      `${seconds(t.reconnect.allMs)} (${t.reconnect.rejoined} rejoined)`,
      'within 10 s',
      met(t.reconnect.allMs !== null && t.reconnect.allMs <= 10_000),
    ],
    [
      'CPU with active chats, no socket',
      `${idlePct(one)}%`,
      `${idlePct(t)}% (nodes ${t.idle.nodePctOfCore.join(' + ')}, pg ${t.idle.databasePctOfCore}, Redis ${t.idle.sharedPctOfCore})`,
      '<= 2% of a core',
      met(idlePct(t) <= 2),
    ],
    ['RSS per socket', `${one.memory.perSocketKB} KB`, `${t.memory.perSocketKB} KB`, '<= 30 KB', met(t.memory.perSocketKB <= 30)],
    ['billing: verify; billed beyond wall, presence', billing(r.chatmeter), billing(two), 'ok; <= 0 s', met(billingOk(two))],
  ];
  return table(['figure', 'one node', 'two nodes over Redis', 'target', 'ratio/met'], rows);
}

/** Prints the tables and notes, writes the JSON; returns the JSON's path. */
export function report(r: LoadResult): string {
  const cfg = r.config;
  const c = r.chatmeter;
  const out: string[] = [];
  out.push(
    `load: ${cfg.chats.toLocaleString('en-US')} active chats, ${(cfg.chats * cfg.tabsPerChat).toLocaleString('en-US')} user tabs, ` +
      `${Math.ceil(cfg.chats / cfg.chatsPerAdvisor)} advisor dashboards at ${cfg.rate} connects/s from ${cfg.clients} client processes, ` +
      `${cfg.seconds} s steady; ${c.database === 'postgres' ? 'Postgres' : 'PGlite (set DATABASE_URL for the issue\'s setup)'}, ${r.machine.cores} cores, Node ${r.machine.node}`,
    '',
    mainTable(r),
  );
  if (r.twoNodes) out.push('', twoNodeTable(r, r.twoNodes));
  const p = c.phases;
  const k = p.steady.counters;
  const slots = k.chatmeter_tick_slot_seconds_count ?? 0;
  out.push(
    '',
    `chatmeter ticker in the window: ${Math.round((k.chatmeter_settled_chats_total ?? 0) / cfg.seconds)} settlements/s, ` +
      `slot mean ${slots ? round(((k.chatmeter_tick_slot_seconds_sum ?? 0) * 1000) / slots) : '-'} ms, ` +
      `slot start lag mean ${k.chatmeter_tick_lag_seconds_count ? round(((k.chatmeter_tick_lag_seconds_sum ?? 0) * 1000) / k.chatmeter_tick_lag_seconds_count) : '-'} ms; ` +
      `${Math.round((k.pg_xact_commit ?? 0) / cfg.seconds)} database commits/s; ` +
      `pushes per 100 ms p50 ${p.steady.per100ms.p50} (min ${p.steady.per100ms.min}, max ${p.steady.per100ms.max}, cv ${p.steady.per100ms.cv}; bare cv ${r.bare?.phases.steady.per100ms.cv ?? '-'}); ` +
      `closing every tab stopped every meter in ${p.idle.metersStoppedMs ?? '-'} ms`,
    `payload: ${p.steady.payloadBytes.mean} B a meter (bare ${r.bare?.phases.steady.payloadBytes.mean ?? '-'} B); ` +
      `heartbeats ${p.steady.heartbeats.perSecond}/s, ack p99 ${ms(p.steady.heartbeats.ackMs.p99)} ms; ` +
      `storm: ${p.storm.cpuUsPerSocket} us of server CPU per socket joined (bare ${r.bare?.phases.storm.cpuUsPerSocket ?? '-'}); ` +
      `window: node ${round(sum(p.steady.cpu.nodesMs) / Math.max(1, p.steady.cpu.wallMs), 2)} cores, pg ${round(p.steady.cpu.databaseMs / Math.max(1, p.steady.cpu.wallMs), 2)}, ` +
      `clients ${p.steady.clients.cores}, machine ${p.steady.cpu.machineBusyPct ?? '-'}% busy`,
    `client workers took ${p.storm.clientCores} cores in the storm and ${p.reconnect.clientCores} in the reconnect ` +
      `(bare: ${r.bare ? `${r.bare.phases.storm.clientCores} and ${r.bare.phases.reconnect.clientCores}` : '-'}); ` +
      `machine busy: storm ${p.storm.cpu.machineBusyPct ?? '-'}%, reconnect ${p.reconnect.cpu.machineBusyPct ?? '-'}%`,
  );
  for (const n of r.notes) out.push(`note: ${n}`);
  const dir = fileURLToPath(new URL('../results/', import.meta.url));
  mkdirSync(dir, { recursive: true });
  const file = `${dir}load-${r.startedAt.replace(/[:.]/g, '-')}.json`;
  writeFileSync(file, `${JSON.stringify(r, null, 2)}\n`);
  out.push(`load: the whole result is in ${file}`);
  process.stdout.write(`${out.join('\n')}\n`);
  return file;
}

/** Warnings a reader needs beside the figures (a saturated machine, errors, a short run). */
export function notesOf(r: Omit<LoadResult, 'notes'>): string[] {
  const notes: string[] = [];
  const runs: Array<[string, PhaseResult]> = [['chatmeter', r.chatmeter.phases]];
  if (r.twoNodes) runs.push(['two nodes', r.twoNodes.phases]);
  if (r.bare) runs.push(['bare', r.bare.phases]);
  for (const [name, p] of runs) {
    if ((p.steady.cpu.machineBusyPct ?? 0) > 90) {
      notes.push(`${name}: the machine was ${p.steady.cpu.machineBusyPct}% busy in the window (servers, database and clients share ${r.machine.cores} cores): latencies include waiting for a core`);
    }
    const errs = Object.entries(p.storm.errors);
    if (errs.length) notes.push(`${name}: storm errors ${JSON.stringify(p.storm.errors)}`);
    if (Object.keys(p.reconnect.errors).length) notes.push(`${name}: reconnect errors ${JSON.stringify(p.reconnect.errors)}`);
    if (p.steady.unexpectedDisconnects) notes.push(`${name}: ${p.steady.unexpectedDisconnects} sockets disconnected unasked`);
    if (p.steady.heartbeats.errors) notes.push(`${name}: ${p.steady.heartbeats.errors} heartbeats failed`);
    if (p.steady.notRunning) notes.push(`${name}: ${p.steady.notRunning} meters in the window were not running`);
  }
  for (const [name, run] of [['chatmeter', r.chatmeter], ['two nodes', r.twoNodes]] as const) {
    if (!run) continue;
    if (run.checks.nodeLog.errors || run.checks.nodeLog.warnings) {
      notes.push(`${name}: the node logged ${run.checks.nodeLog.errors} errors and ${run.checks.nodeLog.warnings} warnings; last: ${run.checks.nodeLog.last.join(' | ')}`);
    }
    if (run.checks.verify.exitCode !== 0) notes.push(`${name}: npm run verify: ${run.checks.verify.summary}`);
    if (run.checks.nodeExitCodes.some((code) => code !== 0)) notes.push(`${name}: node exit codes ${run.checks.nodeExitCodes.join(', ')} after SIGTERM`);
    const errors = run.phases.steady.counters.chatmeter_settlement_errors_total ?? 0;
    if (errors) notes.push(`${name}: ${errors} settlement errors in the window`);
    if (Object.keys(run.setup.errors).length || Object.keys(run.setup.start.errors).length) {
      notes.push(`${name}: setup errors ${JSON.stringify({ ...run.setup.errors, ...run.setup.start.errors })}`);
    }
  }
  // a target the bare server misses too is beyond this machine and these clients, not (only) chatmeter's
  const b = r.bare?.phases;
  if (b) {
    const floor: string[] = [];
    if (b.storm.joined < b.sockets) floor.push('sockets joined');
    if (b.storm.connectsPerSecond < 0.99 * r.config.rate) floor.push('connects/s');
    if (b.reconnect.allMs === null || b.reconnect.allMs > 10_000) floor.push('reconnect within 10 s');
    if (b.storm.connectMs.p99 >= 1000) floor.push('connect p99');
    if (b.storm.joinMs.p99 >= 500) floor.push('join ack p99');
    if (b.steady.jitterMs.p99 >= 100) floor.push('jitter p99');
    if (b.steady.lagMs.p99 >= 100) floor.push('arrival p99');
    if (floor.length) {
      notes.push(
        `bare socket.io misses ${floor.join(', ')} too: there the floor is this machine and its clients ` +
          `(socket.io-client costs about a millisecond of client CPU per connect; the workers took ${b.storm.clientCores} cores in the bare storm and ${b.reconnect.clientCores} in its reconnect)`,
      );
    }
  }
  if (r.config.chats < 5000 || r.config.seconds < 30) notes.push(`a smaller run than the issue's (5,000 chats, 30 s): the targets are the issue's`);
  return notes;
}
