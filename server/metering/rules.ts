/**
 * The billing rules of SPEC section 1 as pure functions over plain values. No
 * database, no timers, no `Date.now()`: every instant is passed in as epoch ms.
 * The settlement service locks rows, calls these, and writes what they return.
 */
import type { ChatStatus, EndReason, MeterState } from '../../client-sdk/src/protocol.js';
import { affordablePaidSeconds, creditsFor } from '../money.js';

/** One chat and its time record, as the rules see them. Amounts are units (1/10000 credit). */
export interface ChatMeter {
  chatId: string;
  userId: string;
  advisorId: string;
  status: ChatStatus;
  paused: boolean;
  startedAt: number | null;
  endedAt: number | null;
  endReason: EndReason | null;
  durationSeconds: number;
  freeSecondsUsed: number;
  paidSeconds: number;
  creditsUsed: bigint;
  /** The instant billing has reached; only whole seconds after it are billed. */
  settledUntil: number | null;
  /** The latest instant the user was known present. */
  lastPresentAt: number | null;
  lastHeartbeatAt: number | null;
  lowBalanceWarned: boolean;
  meterState: MeterState;
}

/** A pair's shared free time. */
export interface Allowance {
  allocationSeconds: number;
  usedSeconds: number;
}

/**
 * What presence knows of the user in one chat: the current (or latest) span of
 * presence. The meter may run from `since` up to `until`, which is the latest
 * heartbeat plus interval plus grace, or the moment the user's last socket left.
 */
export interface PresenceSpan {
  since: number;
  until: number;
  lastHeartbeatAt: number | null;
}

/** Settings the rules depend on. */
export interface Policy {
  abandonTimeoutMs: number;
  lowBalanceSeconds: number;
}

/** Everything one settlement of one chat needs. */
export interface SettleInput {
  chat: ChatMeter;
  allowance: Allowance;
  /** The user's balance in units. */
  balance: bigint;
  /** The advisor's rate per minute in units. */
  ratePerMinute: bigint;
  /** Null when the user has not been seen in this chat since `observedSince`. */
  presence: PresenceSpan | null;
  now: number;
  /** Absence before this instant doesn't count towards abandonment (e.g. the node's start). */
  observedSince: number;
  policy: Policy;
}

/** What one settlement decided. */
export interface SettleResult {
  chat: ChatMeter;
  allowance: Allowance;
  balance: bigint;
  /** The increase of `creditsUsed`, to take from the balance into the ledger. */
  charge: bigint;
  freeSecondsBilled: number;
  paidSecondsBilled: number;
  /** Set when this settlement ended the chat. */
  ended: EndReason | null;
  /** True when `balance:low` must go out now. */
  lowBalance: boolean;
  /** Remaining free seconds + what the balance pays for; null when unlimited. */
  secondsAffordable: number | null;
}

const SECOND = 1000;

/** Remaining free seconds of an allowance. */
export function freeSecondsRemaining(a: Allowance): number {
  return Math.max(0, a.allocationSeconds - a.usedSeconds);
}

/** Free seconds left plus the seconds the balance pays for this chat; null when unlimited. */
export function secondsAffordable(chat: ChatMeter, allowance: Allowance, balance: bigint, rate: bigint): number | null {
  const paid = affordablePaidSeconds(chat.paidSeconds, rate, balance);
  return paid === null ? null : freeSecondsRemaining(allowance) + paid;
}

/** True while the user is present at `now` according to the span. */
export function isPresent(presence: PresenceSpan | null, now: number): boolean {
  return presence !== null && presence.since <= now && now < presence.until;
}

/** The meter's state for a chat at `now`. */
export function meterState(chat: ChatMeter, presence: PresenceSpan | null, now: number): MeterState {
  switch (chat.status) {
    // the state of a pending or ended chat is its status, which is also what the default returns:
    // Stryker disable next-line StringLiteral: equivalent (see above)
    case 'pending':
      return 'pending';
    // Stryker disable next-line StringLiteral: equivalent (see above)
    case 'ended':
      return 'ended';
    case 'active':
      if (chat.paused) return 'paused';
      return isPresent(presence, now) ? 'running' : 'away';
    // Stryker disable next-line all: unreachable, the compiler proves the switch exhaustive
    default: {
      const _exhaustive: never = chat.status;
      return _exhaustive;
    }
  }
}

/**
 * When an active chat whose user stays away ends `abandoned`: the abandon timeout after
 * the user was last present (or the chat started, or absence began to be observed).
 * Null for a chat that is not active. Until then an away or paused chat needs no settling.
 */
export function abandonDeadline(chat: ChatMeter, observedSince: number, policy: Policy): number | null {
  if (chat.status !== 'active') return null;
  const since = Math.max(
    chat.lastPresentAt ?? -Infinity,
    // Stryker disable next-line UnaryOperator: unreachable, an active chat always has startedAt (its start command sets it)
    chat.startedAt ?? -Infinity,
    observedSince,
  );
  return since + policy.abandonTimeoutMs;
}

/** Ends a chat at `now`; the caller has already billed up to it. */
export function endChat(chat: ChatMeter, reason: EndReason, now: number): ChatMeter {
  return { ...chat, status: 'ended', paused: false, endedAt: now, endReason: reason, meterState: 'ended' };
}

/**
 * Bills the whole seconds metered since the chat's last settlement, free seconds
 * first, then paid ones as far as the balance goes, and ends the chat when the user
 * cannot pay for the next second or has been absent for the abandon timeout.
 * Running it again with the same `now` bills nothing: `settledUntil` moves forward
 * by exactly the seconds billed.
 */
export function settle(input: SettleInput): SettleResult {
  const { presence, now, ratePerMinute: rate, policy } = input;
  let chat = { ...input.chat };
  let allowance = { ...input.allowance };
  let balance = input.balance;
  let ended: EndReason | null = null;
  let freeBilled = 0;
  let paidBilled = 0;

  if (chat.status === 'active' && presence) {
    chat.lastPresentAt = Math.max(chat.lastPresentAt ?? -Infinity, Math.min(now, presence.until));
    chat.lastHeartbeatAt = maxOrNull(chat.lastHeartbeatAt, presence.lastHeartbeatAt);
  }

  if (chat.status === 'active' && !chat.paused) {
    let from = chat.settledUntil ?? chat.startedAt ?? now;
    if (presence) {
      // presence that began after the last settlement: the gap before it is never billed,
      // even when the span was stamped after `now` (a join racing this tick, another node's clock)
      const to = Math.min(now, presence.until);
      // Stryker disable next-line EqualityOperator: equivalent, at since === from both branches leave from as it is
      if (presence.since > from) {
        // but a span that covers nothing yet (stamped ahead of `now`, or already over) moves billing
        // no further than `to`: a later span starting before its `since` must still bill from there
        // Stryker disable next-line EqualityOperator: equivalent, at since === to both sides are to
        from = presence.since < to ? presence.since : Math.max(from, to);
      }
      // Stryker disable next-line EqualityOperator: equivalent, at to === from both sides are 0
      const seconds = to > from ? Math.floor((to - from) / SECOND) : 0;

      freeBilled = Math.min(seconds, freeSecondsRemaining(allowance));
      const paidWanted = seconds - freeBilled;
      const affordable = affordablePaidSeconds(chat.paidSeconds, rate, balance);
      paidBilled = affordable === null ? paidWanted : Math.min(paidWanted, affordable);

      const credits = creditsFor(chat.paidSeconds + paidBilled, rate);
      const charge = credits - chat.creditsUsed;
      balance -= charge;
      allowance = { ...allowance, usedSeconds: allowance.usedSeconds + freeBilled };
      chat = {
        ...chat,
        durationSeconds: chat.durationSeconds + freeBilled + paidBilled,
        freeSecondsUsed: chat.freeSecondsUsed + freeBilled,
        paidSeconds: chat.paidSeconds + paidBilled,
        creditsUsed: credits,
        settledUntil: from + (freeBilled + paidBilled) * SECOND,
      };
      // billing every affordable second leaves none affordable, so the check below would end the chat too:
      // Stryker disable next-line ConditionalExpression,StringLiteral: equivalent (see above)
      if (paidBilled < paidWanted) ended = 'out_of_credits';
    } else {
      chat.settledUntil = from;
    }
    if (!ended && freeSecondsRemaining(allowance) === 0 && affordablePaidSeconds(chat.paidSeconds, rate, balance) === 0) {
      ended = 'out_of_credits';
    }
  }

  if (!ended && chat.status === 'active' && !isPresent(presence, now)) {
    if (now >= abandonDeadline(chat, input.observedSince, policy)!) ended = 'abandoned';
  }

  if (ended) chat = endChat(chat, ended, now);
  else chat.meterState = meterState(chat, presence, now);

  const affordableNow = secondsAffordable(chat, allowance, balance, rate);
  const low = chat.status === 'active' && affordableNow !== null && affordableNow < policy.lowBalanceSeconds;
  const lowBalance = low && !chat.lowBalanceWarned;
  chat.lowBalanceWarned = low;

  return {
    chat,
    allowance,
    balance,
    charge: chat.creditsUsed - input.chat.creditsUsed,
    freeSecondsBilled: freeBilled,
    paidSecondsBilled: paidBilled,
    ended,
    lowBalance,
    secondsAffordable: affordableNow,
  };
}

/** Commands that change a chat's state; each is applied after settling up to `now`. */
export type Command =
  | { kind: 'start' }
  | { kind: 'pause' }
  | { kind: 'resume' }
  | { kind: 'end'; reason: EndReason };

/** Why a command cannot apply to a chat in its state. */
export interface CommandRefusal {
  refused: string;
}

/**
 * Applies a state command to a chat that has just been settled up to `now`.
 * Repeating a command that already took effect (start an active chat, end an ended
 * one) is a no-op, so retries are safe; a command that makes no sense in the
 * chat's state is refused.
 */
export function applyCommand(chat: ChatMeter, cmd: Command, now: number): ChatMeter | CommandRefusal {
  switch (cmd.kind) {
    case 'start':
      if (chat.status === 'ended') return { refused: 'the chat has ended' };
      if (chat.status === 'active') return chat;
      return { ...chat, status: 'active', paused: false, startedAt: now, settledUntil: now };
    case 'pause':
      if (chat.status !== 'active') return { refused: `a ${chat.status} chat cannot be paused` };
      return { ...chat, paused: true };
    case 'resume':
      if (chat.status !== 'active') return { refused: `a ${chat.status} chat cannot be resumed` };
      if (!chat.paused) return chat;
      // the paused time is never billed; and a node whose clock lags never moves billing back
      return { ...chat, paused: false, settledUntil: Math.max(now, chat.settledUntil ?? now) };
    case 'end':
      if (chat.status === 'ended') return chat;
      return endChat(chat, cmd.reason, now);
    // Stryker disable next-line all: unreachable, the compiler proves the switch exhaustive
    default: {
      const _exhaustive: never = cmd;
      return _exhaustive;
    }
  }
}

function maxOrNull(a: number | null, b: number | null): number | null {
  // Stryker disable next-line ConditionalExpression: equivalent, Math.max(null, b) is b for any instant (null reads as 0)
  if (a === null) return b;
  // Stryker disable next-line ConditionalExpression: as above; `if (true)` is killed, but disabling is per mutator
  if (b === null) return a;
  return Math.max(a, b);
}
