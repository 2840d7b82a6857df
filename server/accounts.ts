/**
 * Users, advisors and chats: the integrator's own ids, created and read here.
 * Balances change only through the settlement service; the one exception is the
 * opening balance of a new user, written with its `topup` ledger entry.
 */
import type { DataSource } from 'typeorm';
import type { ChatView } from '../client-sdk/src/protocol.js';
import { ConflictError, NotFoundError } from './errors.js';
import { type LedgerEntryView, type LedgerRow, toLedgerView } from './metering/settlement.js';
import { batchedReads } from './batched-reads.js';
import { formatAmount, parseAmount } from './money.js';

/** A user as the API shows it. */
export interface UserView {
  id: string;
  name: string;
  balance: string;
}

/** An advisor as the API shows it. */
export interface AdvisorView {
  id: string;
  name: string;
  ratePerMinute: string;
  freeSeconds: number;
}

/** The key of the ledger entry that records a user's opening balance. */
export const OPENING_BALANCE_KEY = 'opening-balance';

interface ChatRow {
  id: string;
  user_id: string;
  advisor_id: string;
  status: ChatView['status'];
  end_reason: ChatView['endReason'];
  created_at: Date;
  started_at: Date | null;
  ended_at: Date | null;
}

/** Creates and reads users, advisors and chats. */
export class Accounts {
  private readonly chatsTracking = batchedReads(async (ids) => {
    const rows: Array<ChatRow & { tracked: boolean }> = await this.ds.query(
      `SELECT c.*, EXISTS (SELECT 1 FROM conversation_time_records r WHERE r.chat_id = c.id) AS tracked
         FROM chats c WHERE c.id = ANY($1::text[])`,
      [ids],
    );
    return new Map(rows.map((r) => [r.id, { chat: toChatView(r), tracked: r.tracked }]));
  });

  constructor(
    private readonly ds: DataSource,
    private readonly defaults: { freeTimeSeconds: number },
  ) {}

  /**
   * Creates a user, or renames an existing one. `balance` is taken only at creation
   * (as a `topup` entry); on an existing user it is ignored: top-ups go through
   * the credits route. Returns whether the user was created.
   */
  async putUser(id: string, input: { name?: string; balance?: string }): Promise<{ user: UserView; created: boolean }> {
    return this.ds.transaction(async (em) => {
      const balance = formatAmount(parseAmount(input.balance ?? '0'));
      const inserted: UserRow[] = await em.query(
        `INSERT INTO users (id, name, balance) VALUES ($1, $2, $3)
         ON CONFLICT (id) DO NOTHING RETURNING id, name, balance`,
        [id, input.name ?? '', balance],
      );
      if (inserted[0]) {
        if (parseAmount(balance) > 0n) {
          await em.query(
            `INSERT INTO ledger_entries (user_id, type, amount, balance_after, idempotency_key)
             VALUES ($1, 'topup', $2, $2, $3)`,
            [id, balance, OPENING_BALANCE_KEY],
          );
        }
        return { user: toUserView(inserted[0]), created: true };
      }
      if (input.name !== undefined) {
        // no RETURNING: TypeORM answers an UPDATE with [rows, rowCount], not with the rows
        await em.query(`UPDATE users SET name = $2, updated_at = now() WHERE id = $1`, [id, input.name]);
      }
      const rows: UserRow[] = await em.query(`SELECT id, name, balance FROM users WHERE id = $1`, [id]);
      return { user: toUserView(rows[0]!), created: false };
    });
  }

  /** The user, or NotFoundError. */
  async getUser(id: string): Promise<UserView> {
    const rows: UserRow[] = await this.ds.query(`SELECT id, name, balance FROM users WHERE id = $1`, [id]);
    if (!rows[0]) throw new NotFoundError(`user ${id} does not exist`);
    return toUserView(rows[0]);
  }

  /**
   * Creates or updates an advisor. A new rate applies to chats whose time record is
   * created afterwards; `freeSeconds` to pairs whose allowance is created afterwards.
   */
  async putAdvisor(
    id: string,
    input: { name?: string; ratePerMinute: string; freeSeconds?: number },
  ): Promise<{ advisor: AdvisorView; created: boolean }> {
    const rate = formatAmount(parseAmount(input.ratePerMinute));
    const rows: Array<AdvisorRow & { created: boolean }> = await this.ds.query(
      `INSERT INTO advisors (id, name, rate_per_minute, free_seconds) VALUES ($1, coalesce($2::text, ''), $3::numeric, coalesce($4::int, $5::int))
       ON CONFLICT (id) DO UPDATE SET
         name = coalesce($2::text, advisors.name),
         rate_per_minute = EXCLUDED.rate_per_minute,
         free_seconds = coalesce($4::int, advisors.free_seconds),
         updated_at = now()
       RETURNING id, name, rate_per_minute, free_seconds, (xmax = 0) AS created`,
      [id, input.name ?? null, rate, input.freeSeconds ?? null, this.defaults.freeTimeSeconds],
    );
    const row = rows[0]!;
    return { advisor: toAdvisorView(row), created: row.created };
  }

  /** The advisor, or NotFoundError. */
  async getAdvisor(id: string): Promise<AdvisorView> {
    const rows: AdvisorRow[] = await this.ds.query(`SELECT id, name, rate_per_minute, free_seconds FROM advisors WHERE id = $1`, [id]);
    if (!rows[0]) throw new NotFoundError(`advisor ${id} does not exist`);
    return toAdvisorView(rows[0]);
  }

  /**
   * Creates a pending chat. The same body again is a no-op; the same id with
   * another user or advisor is a ConflictError.
   */
  async createChat(input: { id: string; userId: string; advisorId: string }): Promise<{ chat: ChatView; created: boolean }> {
    const [users, advisors]: [unknown[], unknown[]] = await Promise.all([
      this.ds.query(`SELECT 1 FROM users WHERE id = $1`, [input.userId]),
      this.ds.query(`SELECT 1 FROM advisors WHERE id = $1`, [input.advisorId]),
    ]);
    if (!users.length) throw new NotFoundError(`user ${input.userId} does not exist`);
    if (!advisors.length) throw new NotFoundError(`advisor ${input.advisorId} does not exist`);
    const inserted: ChatRow[] = await this.ds.query(
      `INSERT INTO chats (id, user_id, advisor_id) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING RETURNING *`,
      [input.id, input.userId, input.advisorId],
    );
    if (inserted[0]) return { chat: toChatView(inserted[0]), created: true };
    const chat = await this.getChat(input.id);
    if (chat.userId !== input.userId || chat.advisorId !== input.advisorId) {
      throw new ConflictError(`chat ${input.id} exists between user ${chat.userId} and advisor ${chat.advisorId}`);
    }
    return { chat, created: false };
  }

  /** A page of the user's ledger, newest first; `cursor` is a previous page's `nextCursor`. */
  async ledgerPage(userId: string, limit: number, cursor: string | null): Promise<{ items: LedgerEntryView[]; nextCursor: string | null }> {
    await this.getUser(userId);
    const rows: LedgerRow[] = await this.ds.query(
      `SELECT * FROM ledger_entries WHERE user_id = $1 AND ($2::bigint IS NULL OR id < $2::bigint)
        ORDER BY id DESC LIMIT $3`,
      [userId, cursor, limit + 1],
    );
    const items = rows.slice(0, limit).map(toLedgerView);
    return { items, nextCursor: rows.length > limit ? items[items.length - 1]!.id : null };
  }

  /** The advisor's pending and active chats, oldest first. */
  async openChatsOfAdvisor(advisorId: string): Promise<ChatView[]> {
    const rows: ChatRow[] = await this.ds.query(
      `SELECT * FROM chats WHERE advisor_id = $1 AND status <> 'ended' ORDER BY created_at, id`,
      [advisorId],
    );
    return rows.map(toChatView);
  }

  /** Ids of the user's active chats. */
  async activeChatIds(userId: string): Promise<string[]> {
    const rows: Array<{ id: string }> = await this.ds.query(`SELECT id FROM chats WHERE user_id = $1 AND status = 'active' ORDER BY id`, [userId]);
    return rows.map((r) => r.id);
  }

  /**
   * The chat and whether its time record exists yet, or NotFoundError: one statement
   * for every chat asked for in the same turn of the event loop (a join's first read).
   */
  async getChatTracking(id: string): Promise<{ chat: ChatView; tracked: boolean }> {
    const found = await this.chatsTracking.load(id);
    if (!found) throw new NotFoundError(`chat ${id} does not exist`);
    return found;
  }

  /** The chat, or NotFoundError. */
  async getChat(id: string): Promise<ChatView> {
    const rows: ChatRow[] = await this.ds.query(`SELECT * FROM chats WHERE id = $1`, [id]);
    if (!rows[0]) throw new NotFoundError(`chat ${id} does not exist`);
    return toChatView(rows[0]);
  }
}

interface UserRow {
  id: string;
  name: string;
  balance: string;
}

interface AdvisorRow {
  id: string;
  name: string;
  rate_per_minute: string;
  free_seconds: number;
}

function toUserView(r: UserRow): UserView {
  return { id: r.id, name: r.name, balance: r.balance };
}

function toAdvisorView(r: AdvisorRow): AdvisorView {
  return { id: r.id, name: r.name, ratePerMinute: r.rate_per_minute, freeSeconds: r.free_seconds };
}

/** A chat row as the API shows it. */
export function toChatView(r: ChatRow): ChatView {
  return {
    id: r.id,
    userId: r.user_id,
    advisorId: r.advisor_id,
    status: r.status,
    endReason: r.end_reason,
    createdAt: r.created_at.toISOString(),
    startedAt: r.started_at?.toISOString() ?? null,
    endedAt: r.ended_at?.toISOString() ?? null,
  };
}
