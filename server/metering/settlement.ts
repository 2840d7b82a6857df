/**
 * The only place that writes balances, allowances, time records and charges.
 * Each settlement is one transaction in three steps: read every row of the batch
 * under lock (one join skipping locked rows on the clock; otherwise in a fixed
 * order, users, allowances, chats, records, each sorted, so settlements that wait
 * never deadlock); decide with the pure `decideBatch`; and write every table with
 * one statement. Rows are locked FOR NO KEY UPDATE: settlement never changes a key,
 * so the foreign-key checks of new chats, records and ledger rows don't block it.
 * A whole batch of chats costs the same four round trips as one chat.
 */
import type { DataSource, EntityManager } from 'typeorm';
import { ErrorCode, type MeterSnapshot } from '../../client-sdk/src/protocol.js';
import { type Fence, type LeaseClock, leaseNow } from '../cluster/cluster.js';
import { shardOf } from '../cluster/shards.js';
import { BadRequestError, BusyError, ConflictError, DomainError, ForbiddenError, LeaseLostError, NotFoundError } from '../errors.js';
import { batchedReads } from '../batched-reads.js';
import { MAX_AMOUNT_UNITS, formatAmount, parseAmount } from '../money.js';
import {
  type AllowanceRow,
  type UserRow,
  type BatchDecision,
  type ChatRow,
  type LockedRows,
  type RecordRow,
  type SettleItem,
  type SettleOptions,
  type SettleOutcome,
  buildSnapshot,
  decideBatch,
  pairKey,
  toAllowance,
  toMeter,
  uniqueBy,
} from './decide.js';
import { type OutboxRow, creditsAdded, settlementEvents } from '../webhooks/events.js';
import { type Policy, type PresenceSpan, meterState } from './rules.js';

export type { SettleItem, SettleOptions, SettleOutcome } from './decide.js';

/** The result of a top-up. */
export interface TopUpResult {
  entry: LedgerEntryView;
  balance: string;
  /** True when the key had been used before: nothing was added this time. */
  replayed: boolean;
}

/** A ledger entry as the API shows it. */
export interface LedgerEntryView {
  id: string;
  type: 'topup' | 'charge' | 'refund';
  amount: string;
  balanceAfter: string;
  chatId: string | null;
  idempotencyKey: string;
  createdAt: string;
}

/** Where the events of SPEC 8 go: recorded in the change's transaction, announced after its commit. */
export interface Outbox {
  /** A new event id (a UUID). */
  newId(): string;
  /** Events were committed: deliver them soon. */
  recorded(): void;
}

/** Drives the billing rules against the database. */
export class SettlementService {
  /**
   * @param outbox with webhooks on: every settlement and top-up records its events in its
   *   own transaction (SPEC 8); null records none.
   * @param leaseClock for tests only: the fence checks leases on this clock, the one the
   *   cluster was given, instead of the database's `clock_timestamp()`.
   */
  constructor(
    private readonly ds: DataSource,
    private readonly policy: Policy,
    private readonly outbox: Outbox | null = null,
    private readonly leaseClock?: LeaseClock,
  ) {}

  /**
   * Returns the one time record of a chat, creating it (and the pair's allowance)
   * on first call. Idempotent and safe under concurrency on any number of nodes:
   * the unique constraint on chat_id decides, and losers read the winner's row.
   * @throws NotFoundError when the chat doesn't exist; ForbiddenError when the
   *   user or advisor given don't match the chat's.
   */
  async initializeTimeTrackingForChat(userId: string, advisorId: string, chatId: string): Promise<RecordRow> {
    const chats: ChatRow[] = await this.ds.query(`SELECT * FROM chats WHERE id = $1`, [chatId]);
    const chat = chats[0];
    if (!chat) throw new NotFoundError(`chat ${chatId} does not exist`);
    if (chat.user_id !== userId || chat.advisor_id !== advisorId) {
      throw new ForbiddenError(`chat ${chatId} is not between user ${userId} and advisor ${advisorId}`);
    }
    // a fast path: createRecord returns the existing record too (its insert conflicts and it reads the winner)
    // Stryker disable next-line StringLiteral: equivalent in outcome, see above (an empty query reads no rows)
    const existing: RecordRow[] = await this.ds.query(`SELECT * FROM conversation_time_records WHERE chat_id = $1`, [chatId]);
    // Stryker disable next-line ConditionalExpression: equivalent in outcome, as above
    if (existing[0]) return existing[0];
    return this.createRecord(userId, advisorId, chatId);
  }

  /**
   * Creates the chat's time record (and the pair's allowance), for a caller that has
   * just read the chat and found it without one; a concurrent creator's row wins.
   * The creations asked for in one turn of the event loop (a burst of starts or first
   * joins) share one statement; a chat that statement could not create (a concurrent
   * creator got there first, or the batch failed) is created alone.
   */
  async createRecord(userId: string, advisorId: string, chatId: string): Promise<RecordRow> {
    return (await this.newRecords.load(chatId)) ?? this.createRecordAlone(userId, advisorId, chatId);
  }

  /**
   * One statement for many chats: the pairs' allowances, then the records. The
   * records see the allowances this statement inserted through its RETURNING, and
   * older ones through the snapshot; an allowance another transaction committed
   * meanwhile is in neither, so its chat is left to `createRecordAlone`.
   */
  private readonly newRecords = batchedReads(async (chatIds) => {
    let rows: RecordRow[];
    try {
      rows = await this.ds.query(
        `WITH c AS (
           SELECT c.id, c.user_id, c.advisor_id, c.status, c.ended_at, c.end_reason, a.rate_per_minute, a.free_seconds
             FROM chats c JOIN advisors a ON a.id = c.advisor_id
            WHERE c.id = ANY($1::text[])
         ), added AS (
           INSERT INTO free_time_allowances (user_id, advisor_id, allocation_seconds)
           SELECT DISTINCT user_id, advisor_id, free_seconds FROM c
           ON CONFLICT (user_id, advisor_id) DO NOTHING
           RETURNING user_id, advisor_id, allocation_seconds
         ), f AS (
           SELECT user_id, advisor_id, allocation_seconds FROM added
           UNION ALL
           SELECT f.user_id, f.advisor_id, f.allocation_seconds
             FROM free_time_allowances f JOIN (SELECT DISTINCT user_id, advisor_id FROM c) p USING (user_id, advisor_id)
         )
         INSERT INTO conversation_time_records
           (chat_id, user_id, advisor_id, rate_per_minute, total_free_time_allocation,
            is_active, ended_at, end_reason, meter_state)
         SELECT c.id, c.user_id, c.advisor_id, c.rate_per_minute, f.allocation_seconds,
                c.status <> 'ended', c.ended_at, c.end_reason,
                CASE c.status WHEN 'pending' THEN 'pending' WHEN 'ended' THEN 'ended' ELSE 'away' END
           FROM c JOIN f USING (user_id, advisor_id)
         ORDER BY c.id
         ON CONFLICT (chat_id) DO NOTHING
         RETURNING *`,
        [chatIds],
      );
    } catch {
      // each chat on its own then, so one chat's failure is its own
      return new Map<string, RecordRow>();
    }
    return new Map(rows.map((r) => [r.chat_id, r]));
  });

  /** Creates one chat's record in two statements; a concurrent creator's row wins. */
  private async createRecordAlone(userId: string, advisorId: string, chatId: string): Promise<RecordRow> {
    await this.ds.query(
      `INSERT INTO free_time_allowances (user_id, advisor_id, allocation_seconds)
       SELECT $1, a.id, a.free_seconds FROM advisors a WHERE a.id = $2
       ON CONFLICT (user_id, advisor_id) DO NOTHING`,
      [userId, advisorId],
    );
    const inserted: RecordRow[] = await this.ds.query(
      `INSERT INTO conversation_time_records
         (chat_id, user_id, advisor_id, rate_per_minute, total_free_time_allocation,
          is_active, ended_at, end_reason, meter_state)
       SELECT c.id, c.user_id, c.advisor_id, a.rate_per_minute, f.allocation_seconds,
              c.status <> 'ended', c.ended_at, c.end_reason,
              CASE c.status WHEN 'pending' THEN 'pending' WHEN 'ended' THEN 'ended' ELSE 'away' END
         FROM chats c
         JOIN advisors a ON a.id = c.advisor_id
         JOIN free_time_allowances f ON f.user_id = c.user_id AND f.advisor_id = c.advisor_id
        WHERE c.id = $1
       ON CONFLICT (chat_id) DO NOTHING
       RETURNING *`,
      [chatId],
    );
    // Stryker disable next-line ConditionalExpression: equivalent, the read below returns the row just inserted
    if (inserted[0]) return inserted[0];
    const winner: RecordRow[] = await this.ds.query(`SELECT * FROM conversation_time_records WHERE chat_id = $1`, [chatId]);
    return winner[0]!;
  }

  /**
   * Settles a batch of chats up to `now` in one transaction: bills metered whole
   * seconds, applies state commands, ends chats out of credits or abandoned, and
   * returns a meter snapshot per chat. Chats without a time record yet are
   * skipped unless a command needs them (callers initialize before commands).
   */
  async settleBatch(items: SettleItem[], now: number, opts: SettleOptions = {}): Promise<SettleOutcome[]> {
    if (items.length === 0) return [];
    let events = 0;
    const outcomes = await this.ds.transaction(async (em) => {
      const settled = await this.settleIn(em, items, now, opts);
      events = settled.events;
      return settled.outcomes;
    });
    // Stryker disable next-line OptionalChaining: equivalent, events are recorded only with an outbox
    if (events) this.outbox?.recorded();
    return outcomes;
  }

  /** Read → decide → write, in the caller's transaction; says how many webhook events it recorded. */
  private async settleIn(em: EntityManager, items: SettleItem[], now: number, opts: SettleOptions): Promise<{ outcomes: SettleOutcome[]; events: number }> {
    if (opts.lockTimeoutMs !== undefined) await em.query(`SET LOCAL lock_timeout = ${Math.max(1, Math.round(opts.lockTimeoutMs))}`);
    const fenced = opts.fence ? await this.checkFence(em, items, opts.fence) : [];
    // Stryker disable next-line ConditionalExpression: equivalent, with nothing refused the filter keeps every item
    if (fenced.length) {
      const refused = new Set(fenced.map((o) => o.chatId));
      items = items.filter((i) => !refused.has(i.chatId));
      // Stryker disable next-line ConditionalExpression: equivalent, an empty batch reads, decides and writes nothing
      if (!items.length) return { outcomes: fenced, events: 0 };
    }
    const { rows, busy } = await this.readLocked(em, items, opts.skipLocked ?? false);
    // Stryker disable next-line ConditionalExpression: equivalent, with nothing busy the filter keeps every item
    if (busy.size) items = items.filter((i) => !busy.has(i.chatId));
    const decision = decideBatch(rows, items, now, this.policy, opts);
    const events = this.outbox ? settlementEvents(decision.outcomes, now, this.outbox.newId) : [];
    await this.write(em, decision, events);
    const skipped: SettleOutcome[] = [...busy].map((chatId) => ({ chatId, ok: false, error: new BusyError(`chat ${chatId} is being settled elsewhere`) }));
    return { outcomes: [...decision.outcomes, ...fenced, ...skipped], events: events.length };
  }

  /**
   * Reads every row of the batch's chats, locked in a fixed order (users, allowances,
   * chats, records, each sorted) so concurrent settlements never deadlock. With
   * `skipLocked`, rows another transaction holds are skipped, and their chats come
   * back as busy.
   */
  private async readLocked(em: EntityManager, items: SettleItem[], skipLocked: boolean): Promise<{ rows: LockedRows; busy: Set<string> }> {
    // the locks are taken in each query's ORDER BY, so these sorts only tidy the parameters:
    // Stryker disable next-line MethodExpression: equivalent (see above)
    const chatIds = [...new Set(items.map((i) => i.chatId))].sort();
    if (skipLocked) return this.readSkippingLocked(em, chatIds);
    // user and advisor of a chat never change: read them without a lock to know what to lock
    const owners: Array<{ id: string; user_id: string; advisor_id: string }> = await em.query(
      `SELECT id, user_id, advisor_id FROM chats WHERE id = ANY($1::text[])`,
      [chatIds],
    );
    // Stryker disable next-line MethodExpression: equivalent (see above)
    const userIds = [...new Set(owners.map((o) => o.user_id))].sort();
    const pairs = uniqueBy(owners.map((o) => [o.user_id, o.advisor_id] as const), ([u, a]) => pairKey(u, a));

    const users: UserRow[] = await em.query(
      `SELECT id, balance, low_balance_warned, ledger_head FROM users WHERE id = ANY($1::text[]) ORDER BY id FOR NO KEY UPDATE`,
      [userIds],
    );
    const allowanceRows: AllowanceRow[] = await em.query(
      `SELECT user_id, advisor_id, allocation_seconds, used_seconds FROM free_time_allowances
        WHERE (user_id, advisor_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))
        ORDER BY user_id, advisor_id FOR NO KEY UPDATE`,
      [pairs.map((p) => p[0]), pairs.map((p) => p[1])],
    );
    const chatRows: ChatRow[] = await em.query(
      `SELECT * FROM chats WHERE id = ANY($1::text[]) ORDER BY id FOR NO KEY UPDATE`,
      [chatIds],
    );
    const recordRows: RecordRow[] = await em.query(
      `SELECT * FROM conversation_time_records WHERE chat_id = ANY($1::text[]) ORDER BY id FOR NO KEY UPDATE`,
      [chatIds],
    );

    return { rows: { users, allowances: allowanceRows, chats: chatRows, records: recordRows }, busy: new Set() };
  }

  /**
   * The tick's read: every row of the batch's metered chats in one statement, each
   * joined row locked whole or skipped whole (a transaction that never waits for a
   * lock can't deadlock, so the join's order is safe here). A chat missing from the
   * result is busy (some row held elsewhere, settled next tick) or has no record yet.
   */
  private async readSkippingLocked(em: EntityManager, chatIds: string[]): Promise<{ rows: LockedRows; busy: Set<string> }> {
    const joined: Array<RecordRow & JoinedColumns> = await em.query(
      `SELECT r.*, c.status AS c_status, c.paused AS c_paused, c.started_at AS c_started_at,
              c.ended_at AS c_ended_at, c.end_reason AS c_end_reason, c.created_at AS c_created_at, u.balance AS u_balance,
              u.low_balance_warned AS u_low_balance_warned, u.ledger_head AS u_ledger_head,
              f.allocation_seconds AS f_allocation_seconds, f.used_seconds AS f_used_seconds
         FROM conversation_time_records r
         JOIN chats c ON c.id = r.chat_id
         JOIN users u ON u.id = r.user_id
         JOIN free_time_allowances f ON f.user_id = r.user_id AND f.advisor_id = r.advisor_id
        WHERE r.chat_id = ANY($1::text[])
          FOR NO KEY UPDATE OF r, c, u, f SKIP LOCKED`,
      [chatIds],
    );
    // users and allowances are replaced below, and an element without ids in chats or records is never looked up:
    // Stryker disable next-line ArrayDeclaration: equivalent (see above)
    const rows: LockedRows = { users: [], allowances: [], chats: [], records: [] };
    const users = new Map<string, UserRow>();
    const pairs = new Map<string, AllowanceRow>();
    for (const j of joined) {
      const { c_status, c_paused, c_started_at, c_ended_at, c_end_reason, c_created_at, u_balance, u_low_balance_warned, u_ledger_head, f_allocation_seconds, f_used_seconds, ...record } = j;
      rows.records.push(record);
      rows.chats.push({
        id: record.chat_id,
        user_id: record.user_id,
        advisor_id: record.advisor_id,
        status: c_status,
        paused: c_paused,
        started_at: c_started_at,
        ended_at: c_ended_at,
        end_reason: c_end_reason,
        created_at: c_created_at,
      });
      users.set(record.user_id, { id: record.user_id, balance: u_balance, low_balance_warned: u_low_balance_warned, ledger_head: u_ledger_head });
      const pair = { user_id: record.user_id, advisor_id: record.advisor_id, allocation_seconds: f_allocation_seconds, used_seconds: f_used_seconds };
      pairs.set(pairKey(pair.user_id, pair.advisor_id), pair);
    }
    rows.users = [...users.values()];
    rows.allowances = [...pairs.values()];

    const busy = new Set<string>();
    const found = new Set(rows.records.map((r) => r.chat_id));
    const missing = chatIds.filter((id) => !found.has(id));
    // Stryker disable next-line ConditionalExpression: equivalent, a shortcut: the query finds nothing for no ids
    if (missing.length) {
      // rare: which of them have a record (busy), and the chat rows of those without one (skipped)
      const others: Array<ChatRow & { has_record: boolean }> = await em.query(
        `SELECT c.*, EXISTS (SELECT 1 FROM conversation_time_records r WHERE r.chat_id = c.id) AS has_record
           FROM chats c WHERE c.id = ANY($1::text[])`,
        [missing],
      );
      for (const { has_record, ...chat } of others) {
        if (has_record) busy.add(chat.id);
        else rows.chats.push(chat);
      }
    }
    return { rows, busy };
  }

  /**
   * Writes what a batch decided in one statement: a data-modifying CTE per table that
   * changed, each reading its rows from one JSON parameter. On this machine a round
   * trip costs about 100 us of node CPU whatever it carries, so four writes cost four
   * times one (docs/BENCHMARKS.md). The CTEs touch different tables, so running them
   * on one snapshot is safe.
   */
  private async write(em: EntityManager, d: BatchDecision, events: OutboxRow[]): Promise<void> {
    const parts: string[] = [];
    const data: Record<string, unknown> = {};
    const add = (name: keyof typeof WRITES, rows: object[]) => {
      // Stryker disable next-line ConditionalExpression: equivalent, a CTE over no rows writes nothing
      if (!rows.length) return;
      data[name] = rows;
      parts.push(`${name} AS (${WRITES[name]})`);
    };
    add('users', d.users);
    add('allowances', d.allowances);
    add('chats', d.chats);
    add('records', d.records);
    // one open charge entry per chat and segment: later settlements increase it
    add('charges', d.charges.map((c) => ({ ...c, amount: formatAmount(c.amount) })));
    // the webhook events of these changes, in their transaction: none lost, none invented
    add('events', events);
    if (!parts.length) return;
    await em.query(`WITH w AS (SELECT $1::jsonb AS j), ${parts.join(', ')} SELECT 1`, [JSON.stringify(data)]);
  }

  /**
   * The fence: key-share-locks the shard rows this node still leases at the epochs it
   * holds, and refuses every item of any other shard. A takeover locks the rows FOR
   * UPDATE first, so it waits for this transaction; the holder's own renewals (plain
   * updates) don't. Checked against the database's clock, whatever this node's says (or
   * against the lease clock a test injected).
   */
  private async checkFence(em: EntityManager, items: SettleItem[], fence: Fence): Promise<SettleOutcome[]> {
    // Shortcuts, each equivalent: a shard without an epoch matches no row (its epoch is null), the query locks in
    // its own ORDER BY whatever order it is given, and no shards means no rows held.
    // Stryker disable next-line MethodExpression,ArrowFunction,ArithmeticOperator: equivalent (see above)
    const shards = [...new Set(items.map((i) => shardOf(i.chatId)))].filter((s) => fence.epochs.has(s)).sort((a, b) => a - b);
    const params: unknown[] = [fence.owner, shards, shards.map((s) => fence.epochs.get(s))];
    const now = leaseNow(this.leaseClock, params);
    const rows: Array<{ shard: number }> = shards.length
      ? await em.query(
          `SELECT shard FROM settlement_shards
            WHERE owner = $1 AND expires_at > ${now}
              AND (shard, epoch) IN (SELECT * FROM unnest($2::int[], $3::bigint[]))
            ORDER BY shard FOR KEY SHARE`,
          params,
        )
      : // Stryker disable next-line ArrayDeclaration: equivalent (see above)
        [];
    const held = new Set(rows.map((r) => r.shard));
    return items
      .filter((i) => !held.has(shardOf(i.chatId)))
      .map((i) => {
        const shard = shardOf(i.chatId);
        return { chatId: i.chatId, ok: false as const, error: new LeaseLostError(shard, `this node no longer holds the lease of shard ${shard}`) };
      });
  }

  /**
   * Adds credits to a user's balance once per idempotency key: the same key again
   * returns the first result and adds nothing; the same key with another amount is
   * a conflict. A top-up becomes the head of the user's ledger, so each chat's next charge opens a
   * new entry after it, and the ledger reads in order.
   */
  async topUp(userId: string, amount: string, idempotencyKey: string): Promise<TopUpResult> {
    const units = parseAmount(amount);
    if (units <= 0n) throw new BadRequestError('a top-up amount must be positive');
    const result = await this.ds.transaction(async (em): Promise<TopUpResult> => {
      const users: Array<{ balance: string }> = await em.query(`SELECT balance FROM users WHERE id = $1 FOR UPDATE`, [userId]);
      if (!users[0]) throw new NotFoundError(`user ${userId} does not exist`);
      const prior: LedgerRow[] = await em.query(
        `SELECT * FROM ledger_entries WHERE user_id = $1 AND type = 'topup' AND idempotency_key = $2`,
        [userId, idempotencyKey],
      );
      if (prior[0]) {
        if (parseAmount(prior[0].amount) !== units) {
          throw new ConflictError(`idempotency key ${idempotencyKey} was used for a top-up of ${prior[0].amount}`);
        }
        // a replay answers what the first request answered (SPEC 3), not today's balance
        return { entry: toLedgerView(prior[0]), balance: prior[0].balance_after, replayed: true };
      }
      const next = parseAmount(users[0].balance) + units;
      if (next > MAX_AMOUNT_UNITS) {
        throw new DomainError(ErrorCode.Unprocessable, `a balance may not exceed ${formatAmount(MAX_AMOUNT_UNITS)}`);
      }
      const balance = formatAmount(next);
      // a new balance: its own balance:low when it runs low again; the top-up is the ledger's head now,
      // so each chat's next charge opens a new entry after it
      await em.query(`UPDATE users SET balance = $2, low_balance_warned = false, ledger_head = NULL, updated_at = now() WHERE id = $1`, [userId, balance]);
      const rows: LedgerRow[] = await em.query(
        `INSERT INTO ledger_entries (user_id, type, amount, balance_after, idempotency_key)
         VALUES ($1, 'topup', $2, $3, $4) RETURNING *`,
        [userId, formatAmount(units), balance, idempotencyKey],
      );
      const entry = toLedgerView(rows[0]!);
      if (this.outbox) await insertEvents(em, [creditsAdded(userId, entry, balance, this.outbox.newId)]);
      return { entry, balance, replayed: false };
    });
    if (!result.replayed) this.outbox?.recorded();
    return result;
  }

  /** A chat's current snapshot without settling (for acks and polling); seq is the latest pushed. */
  async readMeter(chatId: string, presence: PresenceSpan | null, now: number): Promise<MeterSnapshot | null> {
    const row = await this.meterRows.load(chatId);
    if (!row) return null;
    const meter = toMeter({ ...row, id: row.chat_id }, row);
    meter.meterState = meterState(meter, presence, now);
    return buildSnapshot(row.id, meter, toAllowance(row), parseAmount(row.balance), parseAmount(row.rate_per_minute), Number(row.meter_seq), now);
  }

  /** What a snapshot is made of, for every chat asked for in one turn of the event loop (second tabs joining). */
  private readonly meterRows = batchedReads(async (chatIds) => {
    const rows: MeterRow[] = await this.ds.query(
      `SELECT r.*, c.status, c.paused, c.started_at, u.balance, f.allocation_seconds, f.used_seconds
         FROM conversation_time_records r
         JOIN chats c ON c.id = r.chat_id
         JOIN users u ON u.id = r.user_id
         JOIN free_time_allowances f ON f.user_id = r.user_id AND f.advisor_id = r.advisor_id
        WHERE r.chat_id = ANY($1::text[])`,
      [chatIds],
    );
    return new Map(rows.map((r) => [r.chat_id, r]));
  });
}

type MeterRow = RecordRow & Pick<ChatRow, 'status' | 'paused' | 'started_at'> & AllowanceRow & { balance: string };

/** The write of each table, reading its rows from `w.j` (see `write`). */
const WRITES = {
  users: `UPDATE users u SET balance = v.balance, low_balance_warned = v.low_balance_warned, ledger_head = v.ledger_head, updated_at = now()
            FROM w, jsonb_to_recordset(w.j->'users') AS v(id text, balance numeric, low_balance_warned boolean, ledger_head text)
           WHERE u.id = v.id`,
  allowances: `UPDATE free_time_allowances f SET used_seconds = v.used_seconds, updated_at = now()
                 FROM w, jsonb_to_recordset(w.j->'allowances') AS v(user_id text, advisor_id text, used_seconds int)
                WHERE f.user_id = v.user_id AND f.advisor_id = v.advisor_id`,
  chats: `UPDATE chats c SET status = v.status, paused = v.paused, started_at = v.started_at,
                 ended_at = v.ended_at, end_reason = v.end_reason
            FROM w, jsonb_to_recordset(w.j->'chats')
              AS v(id text, status text, paused boolean, started_at timestamptz, ended_at timestamptz, end_reason text)
           WHERE c.id = v.id`,
  records: `UPDATE conversation_time_records r SET
                   duration = v.duration, free_time_used = v.free_time_used, paid_seconds = v.paid_seconds,
                   credits_used = v.credits_used, is_active = v.is_active,
                   last_heartbeat_time = v.last_heartbeat_time, settled_until = v.settled_until,
                   last_present_at = v.last_present_at, ended_at = v.ended_at, end_reason = v.end_reason,
                   meter_seq = v.meter_seq, low_balance_warned = v.low_balance_warned, meter_state = v.meter_state,
                   charge_segment = v.charge_segment
              FROM w, jsonb_to_recordset(w.j->'records') AS v(
                   id uuid, duration int, free_time_used int, paid_seconds int, credits_used numeric,
                   is_active boolean, last_heartbeat_time timestamptz, settled_until timestamptz,
                   last_present_at timestamptz, ended_at timestamptz, end_reason text, meter_seq bigint,
                   low_balance_warned boolean, meter_state text, charge_segment int)
             WHERE r.id = v.id`,
  events: `INSERT INTO webhook_events (id, type, created_at, body, next_attempt_at)
           SELECT v.id, v.type, v.created_at, v.body, v.created_at
             FROM w, jsonb_to_recordset(w.j->'events') AS v(id uuid, type text, created_at timestamptz, body text)`,
  // in the order decided: new entries take ids in the order their balances chain
  charges: `INSERT INTO ledger_entries (user_id, type, amount, balance_after, chat_id, idempotency_key)
            SELECT v.user_id, 'charge', v.amount, v.balance_after, v.chat_id, v.idempotency_key
              FROM w, ROWS FROM (jsonb_to_recordset(w.j->'charges')
                     AS (user_id text, chat_id text, amount numeric, balance_after numeric, idempotency_key text))
                   WITH ORDINALITY AS v(user_id, chat_id, amount, balance_after, idempotency_key, ord)
             ORDER BY v.ord
            ON CONFLICT (user_id, type, idempotency_key) DO UPDATE
               SET amount = ledger_entries.amount + EXCLUDED.amount,
                   balance_after = EXCLUDED.balance_after, updated_at = now()`,
} as const;

/** The columns of a chat, its user and its allowance joined to a record row by the tick's read. */
interface JoinedColumns {
  c_status: ChatRow['status'];
  c_paused: boolean;
  c_started_at: Date | null;
  c_ended_at: Date | null;
  c_end_reason: ChatRow['end_reason'];
  c_created_at: Date;
  u_balance: string;
  u_low_balance_warned: boolean;
  u_ledger_head: string | null;
  f_allocation_seconds: number;
  f_used_seconds: number;
}

/** A ledger row as Postgres returns it. */
export interface LedgerRow {
  id: string;
  type: 'topup' | 'charge' | 'refund';
  amount: string;
  balance_after: string;
  chat_id: string | null;
  idempotency_key: string;
  created_at: Date;
}

/** A ledger row as the API shows it. */
export function toLedgerView(r: LedgerRow): LedgerEntryView {
  return {
    id: String(r.id),
    type: r.type,
    amount: r.amount,
    balanceAfter: r.balance_after,
    chatId: r.chat_id,
    idempotencyKey: r.idempotency_key,
    createdAt: r.created_at.toISOString(),
  };
}

/** Inserts outbox rows in the caller's transaction. */
async function insertEvents(em: EntityManager, events: OutboxRow[]): Promise<void> {
  await em.query(`WITH w AS (SELECT $1::jsonb AS j) ${WRITES.events}`, [JSON.stringify({ events })]);
}
