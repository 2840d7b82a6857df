/**
 * A reference model of SPEC section 1 for one user, written apart from
 * server/metering/rules.ts and on purpose differently: it keeps the metered
 * *windows* of each chat (stretches where the chat was active, unpaused and the
 * user present, each cut by every event that stops or restarts the meter), the
 * expected billed seconds are the sum over windows of their whole seconds, and
 * every new second is handed out one at a time: free while the pair's allowance
 * lasts, then paid while the balance pays the next second.
 *
 * The model is plain data (structuredClone-able) so a test can replay one step
 * in several orders and keep the one the database matches.
 */
import type { EndReason } from '../../client-sdk/src/protocol.js';

/** The user's presence in one chat, as the presence layer reports it. */
export interface ModelSpan {
  since: number;
  /** Latest heartbeat plus interval and grace, or the moment the last socket left. */
  until: number;
  lastHeartbeatAt: number;
  /** False once the user's last socket left: no heartbeat can come any more. */
  connected: boolean;
}

/** A stretch of metered time; `end` null while it is still open (bounded by the span). */
interface Window {
  start: number;
  end: number | null;
}

/** One chat and what the model expects of its time record. */
export interface ModelChat {
  id: string;
  advisorId: string;
  rate: bigint;
  status: 'pending' | 'active' | 'ended';
  paused: boolean;
  startedAt: number | null;
  endReason: EndReason | null;
  span: ModelSpan | null;
  /** The latest presence instant of spans already replaced. */
  pastPresence: number | null;
  windows: Window[];
  free: number;
  paid: number;
  credits: bigint;
  /** True while the chat's affordable time is below the threshold and the user was told. */
  warned: boolean;
}

/** The whole model: one user, their top-ups, their pairs' allowances, their chats. */
export interface ModelState {
  balance: bigint;
  /** balance:low went out for this balance (once per user; a top-up clears it). */
  lowWarned: boolean;
  /** Top-ups by idempotency key, in units. */
  topups: Record<string, bigint>;
  /** Allowances of the user's pairs, by advisor id. */
  allowances: Record<string, { allocation: number; used: number }>;
  chats: ModelChat[];
}

/** Settings the model needs. */
export interface ModelPolicy {
  /** HEARTBEAT_INTERVAL_MS + HEARTBEAT_GRACE_MS. */
  graceMs: number;
  abandonMs: number;
  lowBalanceSeconds: number;
}

/** What one step did to one chat. */
export interface StepResult {
  refused: boolean;
  ended: EndReason | null;
  /** True when `balance:low` must go out. */
  lowBalance: boolean;
  /** Free seconds left plus what the balance pays for; null when unlimited. */
  secondsAffordable: number | null;
}

/** A state command, as the model knows them. */
export type ModelCommand = 'start' | 'pause' | 'resume' | 'end';

/** The comparable view of the model (and of the database): amounts as 4-decimal strings. */
export interface Snapshot {
  balance: string;
  /** The user's balance:low flag (once per balance). */
  lowWarned: boolean;
  allowances: Record<string, number>;
  chats: Record<
    string,
    {
      status: string;
      paused: boolean;
      endReason: string | null;
      duration: number;
      free: number;
      paid: number;
      credits: string;
      warned: boolean;
    }
  >;
}

/** Decimal string to 1/10000 units, written here rather than imported. */
export function units(amount: string): bigint {
  const [whole, frac = ''] = amount.split('.');
  if (!/^\d+$/.test(whole!) || !/^\d{0,4}$/.test(frac)) throw new Error(`bad amount ${amount}`);
  return BigInt(whole!) * 10_000n + BigInt(frac.padEnd(4, '0'));
}

/** Units to a 4-decimal string. */
export function decimal(u: bigint): string {
  const s = u.toString().padStart(5, '0');
  return `${s.slice(0, -4)}.${s.slice(-4)}`;
}

/** Credits of a chat with `paid` seconds: paid × rate / 60 rounded half-up (quotient and remainder). */
export function creditsOf(paid: number, rate: bigint): bigint {
  const exact = BigInt(paid) * rate;
  return exact / 60n + (exact % 60n >= 30n ? 1n : 0n);
}

/** A model with a user holding `balance`. */
export function newModel(balance: string): ModelState {
  const opening = units(balance);
  return { balance: opening, lowWarned: false, topups: opening > 0n ? { 'opening-balance': opening } : {}, allowances: {}, chats: [] };
}

/** A new chat, with the pair's allowance created on the pair's first chat. */
export function createChat(m: ModelState, id: string, advisorId: string, rate: string, freeSeconds: number): void {
  m.allowances[advisorId] ??= { allocation: freeSeconds, used: 0 };
  m.chats.push({
    id,
    advisorId,
    rate: units(rate),
    status: 'pending',
    paused: false,
    startedAt: null,
    endReason: null,
    span: null,
    pastPresence: null,
    windows: [],
    free: 0,
    paid: 0,
    credits: 0n,
    warned: false,
  });
}

/** True while the user is present in the chat at `t`. */
export function presentAt(c: ModelChat, t: number): boolean {
  return c.span !== null && c.span.since <= t && t < c.span.until;
}

const metered = (c: ModelChat) => c.status === 'active' && !c.paused && c.span !== null;

function openWindow(c: ModelChat, t: number): void {
  // a span may be stamped a little after `t` (a join racing a settlement): metering starts with it
  if (metered(c)) c.windows.push({ start: Math.max(t, c.span!.since), end: null });
}

function closeWindow(c: ModelChat, t: number): void {
  const w = c.windows.at(-1);
  if (w && w.end === null) w.end = Math.max(w.start, Math.min(t, c.span!.until));
}

/** Whole seconds the chat should have been billed by `now`: every window's own whole seconds. */
export function targetSeconds(c: ModelChat, now: number): number {
  let total = 0;
  for (const w of c.windows) {
    const end = w.end ?? Math.max(w.start, Math.min(now, c.span!.until));
    total += Math.floor((end - w.start) / 1000);
  }
  return total;
}

function canPayNextSecond(m: ModelState, c: ModelChat): boolean {
  return creditsOf(c.paid + 1, c.rate) - c.credits <= m.balance;
}

function end(c: ModelChat, reason: EndReason, t: number): void {
  closeWindow(c, t);
  c.status = 'ended';
  c.paused = false;
  c.endReason = reason;
}

/**
 * The seconds the chat can still have: the pair's free seconds left plus the most
 * paid seconds the balance pays for (found by doubling and bisection); null at rate 0.
 */
export function secondsAffordable(m: ModelState, c: ModelChat): number | null {
  if (c.rate === 0n) return null;
  const allowance = m.allowances[c.advisorId]!;
  const pays = (k: number) => creditsOf(c.paid + k, c.rate) - c.credits <= m.balance;
  let hi = 1;
  while (pays(hi)) hi *= 2;
  let lo = 0; // pays(lo) holds, pays(hi) does not
  while (hi - lo > 1) {
    const mid = Math.floor((lo + hi) / 2);
    if (pays(mid)) lo = mid;
    else hi = mid;
  }
  return Math.max(0, allowance.allocation - allowance.used) + lo;
}

/**
 * Settles chat `i` at `now`: bills its new whole seconds one by one, ends it if out
 * of credits or abandoned, and says whether the low-balance warning goes out.
 */
export function settle(m: ModelState, policy: ModelPolicy, i: number, now: number): StepResult {
  const c = m.chats[i]!;
  const ended = bill(m, policy, c, now);
  const affordable = secondsAffordable(m, c);
  const low = c.status === 'active' && affordable !== null && affordable < policy.lowBalanceSeconds;
  // the warning is the user's: once per balance, whichever chat runs low first
  const lowBalance = low && !m.lowWarned;
  if (lowBalance) m.lowWarned = true;
  c.warned = low;
  return { refused: false, ended, lowBalance, secondsAffordable: affordable };
}

function bill(m: ModelState, policy: ModelPolicy, c: ModelChat, now: number): EndReason | null {
  if (c.status !== 'active') return null;
  if (!c.paused) {
    const allowance = m.allowances[c.advisorId]!;
    let wanted = targetSeconds(c, now) - (c.free + c.paid);
    if (wanted < 0) throw new Error(`model: chat ${c.id} billed past its metered time`);
    for (; wanted > 0; wanted--) {
      if (allowance.used < allowance.allocation) {
        allowance.used++;
        c.free++;
      } else if (canPayNextSecond(m, c)) {
        const credits = creditsOf(c.paid + 1, c.rate);
        m.balance -= credits - c.credits;
        c.credits = credits;
        c.paid++;
      } else break;
    }
    if (allowance.used >= allowance.allocation && c.rate > 0n && !canPayNextSecond(m, c)) {
      end(c, 'out_of_credits', now);
      return 'out_of_credits';
    }
  }
  if (!presentAt(c, now)) {
    const seen = [c.pastPresence, c.span ? Math.min(now, c.span.until) : null, c.startedAt].filter((x): x is number => x !== null);
    if (now - Math.max(...seen) >= policy.abandonMs) {
      end(c, 'abandoned', now);
      return 'abandoned';
    }
  }
  return null;
}

/** Settles chat `i` at `now`, then applies a state command to it. */
export function command(m: ModelState, policy: ModelPolicy, i: number, cmd: ModelCommand, now: number): StepResult {
  const settled = settle(m, policy, i, now);
  const c = m.chats[i]!;
  // a chat this very settlement ended reports its end rather than refusing the command
  const refused = settled.ended ? settled : { ...settled, refused: true };
  switch (cmd) {
    case 'start':
      if (c.status === 'ended') return refused;
      if (c.status === 'pending') {
        c.status = 'active';
        c.startedAt = now;
        openWindow(c, now);
      }
      return settled;
    case 'pause':
      if (c.status !== 'active') return refused;
      if (!c.paused) {
        closeWindow(c, now);
        c.paused = true;
      }
      return settled;
    case 'resume':
      if (c.status !== 'active') return refused;
      if (c.paused) {
        c.paused = false;
        openWindow(c, now);
      }
      return settled;
    case 'end':
      if (c.status === 'ended') return settled;
      end(c, 'ended_by_user', now);
      return { ...settled, ended: 'ended_by_user' };
    default: {
      const _exhaustive: never = cmd;
      return _exhaustive;
    }
  }
}

/** Presence changes the test can make. */
export type PresenceChange = 'join' | 'heartbeat' | 'leave' | 'forget';

/**
 * True when the change starts a new span (or drops it): the previous span is then
 * gone for good, so the caller must settle the chat with it first, as the realtime
 * layer does on every presence change, or its unsettled seconds would be lost.
 */
export function replacesSpan(m: ModelState, i: number, change: PresenceChange, now: number): boolean {
  const span = m.chats[i]!.span;
  const alive = span !== null && span.connected && now < span.until;
  switch (change) {
    case 'join':
      return !alive;
    case 'heartbeat':
      return span !== null && span.connected && !alive;
    case 'leave':
      return false;
    case 'forget':
      return span !== null;
    default: {
      const _exhaustive: never = change;
      return _exhaustive;
    }
  }
}

function replaceSpan(c: ModelChat, span: ModelSpan | null, t: number): void {
  closeWindow(c, t);
  if (c.span) c.pastPresence = Math.max(c.pastPresence ?? -Infinity, Math.min(t, c.span.until));
  c.span = span;
  openWindow(c, t);
}

/**
 * Applies a presence change to chat `i` at `now`. A join that starts a new span may
 * be stamped `aheadMs` later than `now`, as when it races a settlement that already
 * read its clock.
 */
export function changePresence(m: ModelState, policy: ModelPolicy, i: number, change: PresenceChange, now: number, aheadMs = 0): void {
  const c = m.chats[i]!;
  const alive = c.span !== null && c.span.connected && now < c.span.until;
  switch (change) {
    case 'join':
    case 'heartbeat':
      if (alive) {
        // another tab, or the next heartbeat: the same span goes on
        c.span!.lastHeartbeatAt = Math.max(c.span!.lastHeartbeatAt, now);
        c.span!.until = Math.max(c.span!.until, now + policy.graceMs);
      } else if (change === 'join' || c.span?.connected) {
        // heartbeats lapsed past the grace, or the user comes back: a new span
        const since = change === 'join' ? now + aheadMs : now;
        replaceSpan(c, { since, until: since + policy.graceMs, lastHeartbeatAt: since, connected: true }, now);
      }
      return;
    case 'leave':
      if (c.span?.connected) {
        c.span.until = Math.min(c.span.until, now);
        c.span.connected = false;
      }
      return;
    case 'forget':
      if (c.span) replaceSpan(c, null, now);
      return;
    default: {
      const _exhaustive: never = change;
      return _exhaustive;
    }
  }
}

/** What presence tells the engine about chat `i`. */
export function presenceOf(m: ModelState, i: number): { since: number; until: number; lastHeartbeatAt: number | null } | null {
  const span = m.chats[i]!.span;
  return span && { since: span.since, until: span.until, lastHeartbeatAt: span.lastHeartbeatAt };
}

/** A top-up: added once per key; the same key with another amount is a conflict. */
export function topUp(m: ModelState, key: string, amount: string): 'added' | 'replayed' | 'conflict' {
  const u = units(amount);
  const prior = m.topups[key];
  if (prior !== undefined) return prior === u ? 'replayed' : 'conflict';
  m.topups[key] = u;
  m.balance += u;
  m.lowWarned = false;
  return 'added';
}

/** The comparable view of the model. */
export function snapshot(m: ModelState): Snapshot {
  return {
    balance: decimal(m.balance),
    lowWarned: m.lowWarned,
    allowances: Object.fromEntries(Object.entries(m.allowances).map(([a, x]) => [a, x.used])),
    chats: Object.fromEntries(
      m.chats.map((c) => [
        c.id,
        {
          status: c.status,
          paused: c.paused,
          endReason: c.endReason,
          duration: c.free + c.paid,
          free: c.free,
          paid: c.paid,
          credits: decimal(c.credits),
          warned: c.warned,
        },
      ]),
    ),
  };
}
