/**
 * The decide step of a settlement, pure: given the rows a settlement transaction
 * read under lock, the items to settle and the instant, it runs the billing rules
 * and says what to write (one list per table) and what each chat's outcome is.
 * No database, no clock: the settlement service reads, calls this, and writes.
 */
import type { ChatView, EndReason, MeterSnapshot, TimeRecordView } from '../../client-sdk/src/protocol.js';
import type { Fence } from '../cluster/cluster.js';
import { ConflictError, DomainError, NotFoundError } from '../errors.js';
import { formatAmount, parseAmount } from '../money.js';
import {
  type Allowance,
  type ChatMeter,
  type Command,
  type Policy,
  type PresenceSpan,
  abandonDeadline,
  applyCommand,
  freeSecondsRemaining,
  meterState,
  secondsAffordable,
  settle,
} from './rules.js';

/** One chat to settle, with what presence knows of its user, and maybe a state command. */
export interface SettleItem {
  chatId: string;
  presence: PresenceSpan | null;
  command?: Command;
  /** Make a new snapshot even if nothing changed (the balance moved under an away or paused chat). */
  refresh?: boolean;
}

/** What settling one chat did. */
export type SettleOutcome =
  | {
      chatId: string;
      ok: true;
      meter: MeterSnapshot;
      /** True when a new snapshot was made (its seq is new): push it. */
      push: boolean;
      ended: EndReason | null;
      lowBalance: boolean;
      /** Credits taken from the balance by this settlement (units). */
      charge: bigint;
      /**
       * For an away or paused chat: when it must be settled again even if nothing else
       * happens (its abandonment deadline); null otherwise.
       */
      wakeAt: number | null;
      /** The chat's state as this settlement left it (its other fields never change). */
      chat: Pick<ChatView, 'status' | 'startedAt' | 'endedAt' | 'endReason'>;
      /** When the chat was created (formatted only when an event needs it: this runs for every chat every tick). */
      createdAt: Date;
      /** State commands of this settlement that changed the chat (a no-op command is not here). */
      applied: Array<'start' | 'pause' | 'resume'>;
      /** The time record as this settlement left it, for a chat it ended (the receipt); null otherwise. */
      record: TimeRecordView | null;
    }
  | { chatId: string; ok: false; error: DomainError };

/** Options of one batch. */
export interface SettleOptions {
  /** Absence before this instant doesn't count towards abandonment (the node's start). */
  observedSince?: number;
  /**
   * Settle only chats whose shard lease the fence still holds (checked and share-locked
   * in this transaction, so no takeover commits meanwhile); the others get a LeaseLostError.
   */
  fence?: Fence | null;
  /**
   * Skip chats whose rows another transaction holds (a scheduled tick): they get a
   * BusyError and are settled at their next tick, and no chat waits on another's lock.
   */
  skipLocked?: boolean;
  /** Wait at most this long for any lock (Postgres `lock_timeout`): longer fails the batch with SQLSTATE 55P03. */
  lockTimeoutMs?: number;
}

/** A time record row as Postgres returns it. */
export interface RecordRow {
  id: string;
  chat_id: string;
  user_id: string;
  advisor_id: string;
  duration: number;
  free_time_used: number;
  paid_seconds: number;
  credits_used: string;
  rate_per_minute: string;
  total_free_time_allocation: number;
  is_active: boolean;
  timestamp: Date;
  last_heartbeat_time: Date | null;
  settled_until: Date | null;
  last_present_at: Date | null;
  ended_at: Date | null;
  end_reason: EndReason | null;
  charge_segment: number;
  meter_seq: string;
  low_balance_warned: boolean;
  meter_state: ChatMeter['meterState'];
}

/** A chat row as Postgres returns it. */
export interface ChatRow {
  id: string;
  user_id: string;
  advisor_id: string;
  status: ChatMeter['status'];
  paused: boolean;
  started_at: Date | null;
  ended_at: Date | null;
  end_reason: EndReason | null;
  created_at: Date;
}

/** A user row as Postgres returns it (the columns settlement reads). */
export interface UserRow {
  id: string;
  balance: string;
  low_balance_warned: boolean;
  /** The key of the user's latest ledger entry when it is a charge; null otherwise. */
  ledger_head: string | null;
}

/** A free-time allowance row as Postgres returns it. */
export interface AllowanceRow {
  user_id: string;
  advisor_id: string;
  allocation_seconds: number;
  used_seconds: number;
}

/** What a settlement transaction read under lock: the rows of every chat of the batch. */
export interface LockedRows {
  users: UserRow[];
  allowances: AllowanceRow[];
  chats: ChatRow[];
  records: RecordRow[];
}

/** What one batch decided: the outcome of each item, and the rows to write, one list per table. */
export interface BatchDecision {
  outcomes: SettleOutcome[];
  users: UserRow[];
  allowances: Array<{ user_id: string; advisor_id: string; used_seconds: number }>;
  chats: object[];
  records: object[];
  /** One open charge entry per chat: an amount to add to it (units) and the balance after. */
  charges: Array<{ user_id: string; chat_id: string; amount: bigint; balance_after: string; idempotency_key: string }>;
}

const ms = (d: Date | null): number | null => (d ? d.getTime() : null);
const iso = (t: number | null): string | null => (t === null ? null : new Date(t).toISOString());
/** The idempotency key of a chat's charge entry of one segment. */
const chargeKey = (chatId: string, segment: number) => `charge:${chatId}:${segment}`;

/** A map key for a user-advisor pair. */
export const pairKey = (userId: string, advisorId: string) => `${userId}\u0000${advisorId}`;

/**
 * Settles every item against the rows: bills metered whole seconds, applies state
 * commands, ends chats out of credits or abandoned, and makes a snapshot per chat.
 * Items settle in order, so a chat's balance and allowance carry from one to the next.
 */
export function decideBatch(rows: LockedRows, items: SettleItem[], now: number, policy: Policy, opts: SettleOptions = {}): BatchDecision {
  const balances = new Map(rows.users.map((u) => [u.id, parseAmount(u.balance)]));
  // balance:low once per user balance, whichever of the user's chats runs low first (cleared by a top-up)
  const warned = new Map(rows.users.map((u) => [u.id, u.low_balance_warned]));
  // the ledger reads line by line: a chat's charge entry grows only while it is the user's latest
  const heads = new Map(rows.users.map((u) => [u.id, u.ledger_head]));
  const segments = new Map<string, number>();
  const allowances = new Map(rows.allowances.map((a) => [pairKey(a.user_id, a.advisor_id), toAllowance(a)]));
  const chatsById = new Map(rows.chats.map((c) => [c.id, c]));
  const recordsByChat = new Map(rows.records.map((r) => [r.chat_id, r]));

  interface Work {
    record: RecordRow;
    before: ChatMeter;
    meter: ChatMeter;
    rate: bigint;
    /** A command applied, or a refresh asked: a new snapshot goes out whatever changed. */
    commanded: boolean;
    refusal?: ConflictError;
    ended: EndReason | null;
    lowBalance: boolean;
    charge: bigint;
    applied: Array<'start' | 'pause' | 'resume'>;
  }
  const work = new Map<string, Work>();
  const failures: SettleOutcome[] = [];
  // one row per entry (key), in the order the entries chain: a statement may not touch a row twice
  const charges = new Map<string, { user_id: string; chat_id: string; amount: bigint; balance_after: string; idempotency_key: string }>();

  for (const item of items) {
    const chat = chatsById.get(item.chatId);
    const record = recordsByChat.get(item.chatId);
    if (!chat) {
      failures.push({ chatId: item.chatId, ok: false, error: new NotFoundError(`chat ${item.chatId} does not exist`) });
      continue;
    }
    if (!record) {
      if (item.command) {
        failures.push({ chatId: item.chatId, ok: false, error: new ConflictError(`chat ${item.chatId} has no time record yet`) });
      }
      continue;
    }
    try {
      const key = pairKey(chat.user_id, chat.advisor_id);
      const prior = work.get(item.chatId);
      const w: Work = prior ?? {
        record,
        before: toMeter(chat, record),
        meter: toMeter(chat, record),
        rate: parseAmount(record.rate_per_minute),
        commanded: false,
        ended: null,
        lowBalance: false,
        charge: 0n,
        applied: [],
      };
      if (item.refresh) w.commanded = true;
      const result = settle({
        chat: w.meter,
        allowance: allowances.get(key)!,
        balance: balances.get(chat.user_id)!,
        ratePerMinute: w.rate,
        presence: item.presence,
        now,
        observedSince: opts.observedSince ?? -Infinity,
        policy,
      });
      let meter = result.chat;
      if (item.command) {
        const applied = applyCommand(meter, item.command, now);
        if ('refused' in applied) {
          // a chat this very settlement ended (out of credits, abandoned) reports that end, which
          // must be pushed, rather than a refusal, which callers drop
          if (!result.ended) w.refusal = new ConflictError(applied.refused);
        } else {
          if (changedBy(item.command.kind, meter, applied)) w.applied.push(item.command.kind as 'start' | 'pause' | 'resume');
          meter = applied;
          if (meter.status !== 'ended') meter.meterState = meterState(meter, item.presence, now);
          w.commanded = true;
        }
      }
      const balance = result.balance;
      balances.set(chat.user_id, balance);
      allowances.set(key, result.allowance);
      w.meter = meter;
      w.ended = w.ended ?? result.ended ?? (meter.status === 'ended' && w.before.status !== 'ended' ? meter.endReason : null);
      // the rules keep each chat's level (low or not) in lowBalanceWarned; the warning is the user's
      if (result.chat.lowBalanceWarned && !warned.get(chat.user_id)) {
        warned.set(chat.user_id, true);
        w.lowBalance = true;
      }
      w.charge += result.charge;
      work.set(item.chatId, w);
      if (result.charge > 0n) {
        let segment = segments.get(chat.id) ?? record.charge_segment;
        // another entry followed this chat's (a top-up, another chat's charge): open the next one
        if (heads.get(chat.user_id) !== chargeKey(chat.id, segment)) segment += 1;
        const key = chargeKey(chat.id, segment);
        segments.set(chat.id, segment);
        heads.set(chat.user_id, key);
        const prev = charges.get(key);
        charges.set(key, {
          user_id: chat.user_id,
          chat_id: chat.id,
          amount: (prev?.amount ?? 0n) + result.charge,
          balance_after: formatAmount(balance),
          idempotency_key: key,
        });
      }
    } catch (err) {
      // one chat's bad data (an amount out of range) fails that chat, never its batch; what can
      // throw (parsing its rows) runs before any balance or allowance of the batch moves
      failures.push({ chatId: item.chatId, ok: false, error: new DomainError('internal', `settling chat ${item.chatId} failed: ${(err as Error).message}`, { cause: err }) });
    }
  }

  // a snapshot is new when something changed or the meter runs: only those take a seq
  const outcomes: SettleOutcome[] = [];
  const recordUpdates: object[] = [];
  const chatUpdates: object[] = [];
  for (const [chatId, w] of work) {
    const changed = !sameMeter(w.before, w.meter);
    const push = changed || w.commanded || w.meter.meterState === 'running';
    const seq = Number(w.record.meter_seq) + (push ? 1 : 0);
    if (changed || push) {
      recordUpdates.push({
        id: w.record.id,
        duration: w.meter.durationSeconds,
        free_time_used: w.meter.freeSecondsUsed,
        paid_seconds: w.meter.paidSeconds,
        credits_used: formatAmount(w.meter.creditsUsed),
        is_active: w.meter.status !== 'ended',
        last_heartbeat_time: iso(w.meter.lastHeartbeatAt),
        settled_until: iso(w.meter.settledUntil),
        last_present_at: iso(w.meter.lastPresentAt),
        ended_at: w.meter.status === 'ended' ? iso(w.meter.endedAt) : null,
        end_reason: w.meter.status === 'ended' ? w.meter.endReason : null,
        meter_seq: seq,
        low_balance_warned: w.meter.lowBalanceWarned,
        meter_state: w.meter.meterState,
        charge_segment: segments.get(chatId) ?? w.record.charge_segment,
      });
    }
    if (chatChanged(w.before, w.meter)) {
      chatUpdates.push({
        id: chatId,
        status: w.meter.status,
        paused: w.meter.paused,
        started_at: iso(w.meter.startedAt),
        ended_at: iso(w.meter.endedAt),
        end_reason: w.meter.endReason,
      });
    }
    const key = pairKey(w.meter.userId, w.meter.advisorId);
    if (w.refusal) {
      outcomes.push({ chatId, ok: false, error: w.refusal });
      continue;
    }
    outcomes.push({
      chatId,
      ok: true,
      meter: buildSnapshot(w.record.id, w.meter, allowances.get(key)!, balances.get(w.meter.userId)!, w.rate, seq, now),
      push,
      ended: w.ended,
      lowBalance: w.lowBalance,
      charge: w.charge,
      wakeAt: w.meter.meterState === 'away' || w.meter.meterState === 'paused' ? abandonDeadline(w.meter, opts.observedSince ?? -Infinity, policy) : null,
      chat: { status: w.meter.status, startedAt: iso(w.meter.startedAt), endedAt: iso(w.meter.endedAt), endReason: w.meter.endReason },
      createdAt: chatsById.get(chatId)!.created_at,
      applied: w.applied,
      record: w.ended ? recordView(w.record, w.meter) : null,
    });
  }

  const userUpdates = rows.users
    .filter((u) => parseAmount(u.balance) !== balances.get(u.id) || u.low_balance_warned !== warned.get(u.id) || u.ledger_head !== heads.get(u.id))
    .map((u) => ({ id: u.id, balance: formatAmount(balances.get(u.id)!), low_balance_warned: warned.get(u.id)!, ledger_head: heads.get(u.id)! }));
  const allowanceUpdates = rows.allowances
    .filter((a) => a.used_seconds !== allowances.get(pairKey(a.user_id, a.advisor_id))!.usedSeconds)
    .map((a) => ({ user_id: a.user_id, advisor_id: a.advisor_id, used_seconds: allowances.get(pairKey(a.user_id, a.advisor_id))!.usedSeconds }));

  return {
    outcomes: [...outcomes, ...failures],
    users: userUpdates,
    allowances: allowanceUpdates,
    chats: chatUpdates,
    records: recordUpdates,
    charges: [...charges.values()],
  };
}

/** True when a state command changed what it commands (a start of an active chat, a resume of a running one, change nothing). */
function changedBy(kind: Command['kind'], before: ChatMeter, after: ChatMeter): boolean {
  if (kind === 'start') return before.status === 'pending' && after.status === 'active';
  if (kind === 'pause') return !before.paused && after.paused;
  if (kind === 'resume') return before.paused && !after.paused;
  return false; // an end is reported as the end it caused
}

/** A time record as the API shows it, after this settlement. */
function recordView(r: RecordRow, m: ChatMeter): TimeRecordView {
  return {
    id: r.id,
    chatId: r.chat_id,
    userId: r.user_id,
    advisorId: r.advisor_id,
    isActive: m.status !== 'ended',
    durationSeconds: m.durationSeconds,
    freeSecondsUsed: m.freeSecondsUsed,
    creditsUsed: formatAmount(m.creditsUsed),
    freeSecondsAllocation: r.total_free_time_allocation,
    startedAt: r.timestamp.toISOString(),
    lastHeartbeatAt: iso(m.lastHeartbeatAt),
    endedAt: m.status === 'ended' ? iso(m.endedAt) : null,
    endReason: m.status === 'ended' ? m.endReason : null,
  };
}

/** An allowance row as the rules see it. */
export function toAllowance(a: { allocation_seconds: number; used_seconds: number }): Allowance {
  return { allocationSeconds: a.allocation_seconds, usedSeconds: a.used_seconds };
}

/** A chat and its record as the rules see them. */
export function toMeter(chat: Omit<ChatRow, 'created_at'>, r: RecordRow): ChatMeter {
  return {
    chatId: chat.id,
    userId: chat.user_id,
    advisorId: chat.advisor_id,
    status: chat.status,
    paused: chat.paused,
    startedAt: ms(chat.started_at),
    endedAt: ms(chat.ended_at),
    endReason: chat.end_reason,
    durationSeconds: r.duration,
    freeSecondsUsed: r.free_time_used,
    paidSeconds: r.paid_seconds,
    creditsUsed: parseAmount(r.credits_used),
    settledUntil: ms(r.settled_until),
    lastPresentAt: ms(r.last_present_at),
    lastHeartbeatAt: ms(r.last_heartbeat_time),
    lowBalanceWarned: r.low_balance_warned,
    meterState: r.meter_state,
  };
}

/** The meter snapshot of SPEC section 2. */
export function buildSnapshot(
  recordId: string,
  m: ChatMeter,
  allowance: Allowance,
  balance: bigint,
  rate: bigint,
  seq: number,
  now: number,
): MeterSnapshot {
  return {
    chatId: m.chatId,
    recordId,
    userId: m.userId,
    advisorId: m.advisorId,
    state: m.meterState,
    durationSeconds: m.durationSeconds,
    freeSecondsUsed: m.freeSecondsUsed,
    freeSecondsRemaining: freeSecondsRemaining(allowance),
    freeSecondsAllocation: allowance.allocationSeconds,
    creditsUsed: formatAmount(m.creditsUsed),
    balance: formatAmount(balance),
    ratePerMinute: formatAmount(rate),
    secondsAffordable: secondsAffordable(m, allowance, balance, rate),
    seq,
    serverTime: new Date(now).toISOString(),
  };
}

function sameMeter(a: ChatMeter, b: ChatMeter): boolean {
  return (
    a.status === b.status &&
    a.paused === b.paused &&
    a.durationSeconds === b.durationSeconds &&
    a.creditsUsed === b.creditsUsed &&
    a.settledUntil === b.settledUntil &&
    a.lastPresentAt === b.lastPresentAt &&
    a.lastHeartbeatAt === b.lastHeartbeatAt &&
    a.lowBalanceWarned === b.lowBalanceWarned &&
    a.meterState === b.meterState
  );
}

function chatChanged(a: ChatMeter, b: ChatMeter): boolean {
  return a.status !== b.status || a.paused !== b.paused || a.startedAt !== b.startedAt || a.endedAt !== b.endedAt;
}

/** The distinct values of `xs` by `key`, sorted by it. */
export function uniqueBy<T>(xs: T[], key: (x: T) => string): T[] {
  const seen = new Map<string, T>();
  for (const x of xs) if (!seen.has(key(x))) seen.set(key(x), x);
  return [...seen.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([, x]) => x);
}

