/**
 * One row of the fault run: fresh chats on the running cluster, their tabs joined and
 * heartbeating, the chats started and metered for a while, the fault injected, the
 * time until every affected tab sees its meter running again, a few steady seconds,
 * then every chat ended over HTTP and billed seconds compared with present ones;
 * `verifyInvariants` over the whole database closes the row.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { verifyInvariants } from '../server/verify.js';
import { eventually } from '../test/support/server.js';
import { chatRows, createChats, durations, endChats, openTabs, startChats } from './chats.js';
import { type Cluster, type Node, TIMING } from './cluster.js';
import { type ChatMeasure, type ChatRow, acrossFault, measureChat } from './measure.js';
import type { Tab } from './tab.js';

/** How long the rules let the meter run past the latest heartbeat. */
export const WINDOW_MS = TIMING.heartbeatIntervalMs + TIMING.heartbeatGraceMs;
const RECOVERY_LIMIT_MS = 30_000;

/** What a scenario's fault sees. */
export interface FaultContext {
  h: Cluster;
  chatIds: string[];
  tabs: Tab[];
  /** Each chat's settler (node id) just before the fault. */
  settlers: Map<string, string | null>;
  note(line: string): void;
}

/** What the fault did. */
export interface FaultOutcome {
  affected: Set<string>;
  /** When the fault ended (recovery is measured from it); null when it lasts the whole row. */
  end: number | null;
  /** How many times it moved an affected chat's presence or settlement (each may cost the fraction of a second). */
  handovers: number;
  /** Chats whose settler the fault took away while their user stayed on a live node: how soon another took over. */
  takeover?: { since: number; tabs: Tab[] };
}

export interface Scenario {
  key: string;
  title: string;
  chats: number;
  /** The first `split` chats have two tabs on two nodes, the others one tab. */
  split: number;
  /** Tabs connect through the balancer instead of being placed on the nodes in turn. */
  balanced?: boolean;
  /** A node to settle two chats in three: their ids are picked among its shards. */
  preferSettler?(h: Cluster): Node;
  prepare?(h: Cluster): Promise<void>;
  inject(ctx: FaultContext): Promise<FaultOutcome>;
  /** Puts the cluster back as the next row expects it; may say something worth noting. */
  cleanup?(h: Cluster): Promise<string | void>;
}

export interface Row {
  key: string;
  fault: string;
  chats: number;
  tabs: number;
  affected: number;
  billed: number;
  presentMs: number;
  unsureMs: number;
  double: number;
  lost: number;
  crashes: number;
  /** ms; null: not within the limit; undefined: not applicable. */
  recoveryMs: number | null | undefined;
  verify: boolean;
  notes: string[];
  seconds: number;
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function runScenario(h: Cluster, sc: Scenario, index: number): Promise<Row> {
  const began = Date.now();
  h.scenario = sc.key;
  const crashesBefore = h.crashes.length;
  const notes: string[] = [];
  const mark = h.logMark();
  let run: Metered | null = null;
  let completed = false;
  try {
    await h.ensure(3);
    await sc.prepare?.(h);
    run = await meterThroughFault(h, sc, index, notes);
    completed = true;
  } catch (err) {
    notes.push(`the row did not complete: ${err instanceof Error ? err.message : String(err)}`.slice(0, 600));
  } finally {
    const said = await sc.cleanup?.(h).catch((err: unknown) => `cleanup failed: ${String(err)}`);
    if (said) notes.push(said);
  }
  const violations = await verifyInvariants(h.ds);
  for (const v of violations.slice(0, 5)) notes.push(`verify: ${v.invariant}: ${v.message}`);
  const logs = h.logSince(mark);
  if (logs.warn + logs.error) {
    notes.push(`node logs: ${logs.warn} warnings, ${logs.error} errors (${[...logs.messages].map(([m, n]) => `${n}× ${m}`).join('; ')})`);
  }
  const crashes = h.crashes.slice(crashesBefore);
  for (const c of crashes) notes.push(`CRASH ${c.node}: exit ${c.code ?? c.signal}; ${c.stderr.slice(-300)} ${c.lastLines.join(' ')}`);
  const measures = run?.measures ?? [];
  return {
    key: sc.key,
    fault: sc.title,
    chats: sc.chats,
    tabs: run?.tabs ?? 0,
    affected: run?.affected ?? 0,
    billed: sum(measures.map((m) => m.billed)),
    presentMs: sum(measures.map((m) => m.certainMs)),
    unsureMs: sum(measures.map((m) => m.mostMs - m.certainMs)),
    double: sum(measures.map((m) => m.double)),
    lost: sum(measures.map((m) => m.lost)),
    crashes: crashes.length,
    recoveryMs: run ? run.recoveryMs : null,
    verify: completed && violations.length === 0,
    notes,
    seconds: (Date.now() - began) / 1000,
  };
}

interface Metered {
  tabs: number;
  affected: number;
  recoveryMs: number | null | undefined;
  measures: ChatMeasure[];
}

/** Chats and tabs up, metered, the fault, recovery, steady seconds, ended and measured. */
async function meterThroughFault(h: Cluster, sc: Scenario, index: number, notes: string[]): Promise<Metered> {
  const chats = await createChats(h, `f${index}-${sc.key}`, sc.chats, sc.preferSettler?.(h) ?? null);
  const ids = chats.map((c) => c.id);
  const tabs = await openTabs(h, chats, sc.split, [...h.live], sc.balanced ?? false);
  try {
    await startChats(h, chats);
    await eventually(() => tabs.every((t) => t.last?.state === 'running' && t.last.duration >= 1), 20_000, 100);
    await sleep(2000);
    const settlers = await h.settlers(ids);
    const d0 = await durations(h, ids);
    const faultAt = Date.now();
    const outcome = await sc.inject({ h, chatIds: ids, tabs, settlers, note: (l) => notes.push(l) });
    const recoveryMs = outcome.end === null ? undefined : await recovered(tabs.filter((t) => outcome.affected.has(t.chatId)), outcome.end, d0);
    if (outcome.takeover?.tabs.length) {
      const ms = await recovered(outcome.takeover.tabs, outcome.takeover.since, d0);
      const n = new Set(outcome.takeover.tabs.map((t) => t.chatId)).size;
      notes.push(`the ${n} chats it settled whose user was on a live node: metered again ${ms === null ? 'not within 30 s' : `${(ms / 1000).toFixed(1)} s after the fault began`}`);
    }
    await sleep(3000);
    await endChats(h, chats);
    const rows = await chatRows(h, ids);
    const now = Date.now();
    const measures = rows.map((r) =>
      measureChat(r, tabs.filter((t) => t.chatId === r.id), outcome.affected.has(r.id) ? outcome.handovers : 0, TIMING.tickMs, now),
    );
    for (const r of rows) if (r.endReason !== 'ended_by_platform') notes.push(`${r.id} ended ${r.endReason}, not by the run`);
    for (const m of measures.filter((x) => x.double || x.lost)) {
      if (process.env.FAULTS_LOG_DIR) dumpChat(process.env.FAULTS_LOG_DIR, m, rows.find((r) => r.id === m.chatId)!, tabs.filter((t) => t.chatId === m.chatId), faultAt, outcome);
      notes.push(
        `${m.chatId}: billed ${m.billed} s, present ${(m.certainMs / 1000).toFixed(1)}-${(m.mostMs / 1000).toFixed(1)} s in ${m.spans} span(s): ` +
          `${m.double} double-billed, ${m.lost} lost; ${acrossFault(tabs.filter((t) => t.chatId === m.chatId), faultAt, outcome.end)}`,
      );
    }
    const gaps = measures.map((m) => m.billed - m.certainMs / 1000);
    const over = Math.max(...measures.map((m) => m.billed - m.mostMs / 1000));
    if (gaps.length) {
      notes.push(`per chat, billed minus surely present: ${Math.min(...gaps).toFixed(2)} to ${Math.max(...gaps).toFixed(2)} s; billed minus at most present: at most ${over.toFixed(2)} s`);
    }
    const hb = sum(tabs.map((t) => t.heartbeatErrors));
    if (hb) notes.push(`${hb} heartbeats answered with an error`);
    return { tabs: tabs.length, affected: outcome.affected.size, recoveryMs, measures };
  } finally {
    for (const t of tabs) t.close();
  }
}

/** A flagged chat's whole story, for a closer look: its row, figures, the fault's times, each tab's sessions, windows and meters. */
function dumpChat(dir: string, m: ChatMeasure, row: ChatRow, tabs: Tab[], faultAt: number, outcome: FaultOutcome): void {
  mkdirSync(dir, { recursive: true });
  const story = { row, measure: m, faultAt, faultEnd: outcome.end, tabs: tabs.map((t) => ({ node: t.node, sessions: t.sessions, overrides: t.overrides, meters: t.meters })) };
  writeFileSync(join(dir, `${m.chatId}.json`), JSON.stringify(story, null, 1));
}

/** ms from `since` until every tab has seen a running meter settled after it, beyond `d0` (null past the limit). */
async function recovered(tabs: Tab[], since: number, d0: Map<string, number>): Promise<number | null> {
  const at = () => tabs.map((t) => t.resumedAt(since, d0.get(t.chatId) ?? 0));
  try {
    await eventually(() => at().every((x) => x !== null), RECOVERY_LIMIT_MS, 50);
  } catch {
    return null;
  }
  return Math.max(since, ...(at() as number[])) - since;
}

const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);
