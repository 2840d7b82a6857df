/**
 * The second line of defence behind the schema's constraints: every invariant of
 * SPEC section 1 checked over the whole database, one set-based query each, all in
 * one read-only snapshot so a settlement committing meanwhile can't show up as a
 * false violation. Read-only: it reports, it never repairs.
 */
import type { DataSource } from 'typeorm';

/** The invariants checked, one query each. */
export const Invariant = {
  /** A chat has exactly one time record (unique on chat_id). */
  OneRecordPerChat: 'one_record_per_chat',
  /** An active chat is being metered, which needs its record. */
  ActiveChatHasRecord: 'active_chat_has_record',
  /** A record's user and advisor are its chat's. */
  RecordMatchesChat: 'record_matches_chat',
  /** A record's (user, advisor) pair has its free-time allowance. */
  RecordHasAllowance: 'record_has_allowance',
  /** A record is active exactly while its chat has not ended. */
  RecordActiveMatchesChat: 'record_active_matches_chat',
  /** Free seconds, paid seconds and credits of a record are never negative. */
  RecordCountsNonnegative: 'record_counts_nonnegative',
  /** duration = free_time_used + paid_seconds. */
  RecordDurationSum: 'record_duration_sum',
  /** credits_used = round_half_up(paid_seconds × rate_per_minute / 60, 4). */
  RecordCreditsRounding: 'record_credits_rounding',
  /** A pair's used_seconds = the sum of free_time_used over the pair's records. */
  AllowanceMatchesRecords: 'allowance_matches_records',
  /** 0 <= used_seconds <= allocation_seconds. */
  AllowanceWithinAllocation: 'allowance_within_allocation',
  /** A user's balance is never negative. */
  BalanceNonnegative: 'balance_nonnegative',
  /** balance = sum(topups) - sum(charges) + sum(refunds). */
  BalanceMatchesLedger: 'balance_matches_ledger',
  /** Every ledger amount is positive. */
  LedgerAmountPositive: 'ledger_amount_positive',
  /** Every charge names its chat. */
  ChargeHasChat: 'charge_has_chat',
  /** A charge is taken from its chat's user. */
  ChargeUserMatchesChat: 'charge_user_matches_chat',
  /** The charges of a chat sum to its record's credits_used. */
  ChargesMatchCredits: 'charges_match_credits',
  /** A user's ledger reads line by line: each balance_after is the one before it, minus a charge or plus a top-up or refund. */
  LedgerChains: 'ledger_chains',
} as const;
export type Invariant = (typeof Invariant)[keyof typeof Invariant];

/** One broken invariant, with the ids of the rows that break it. */
export interface Violation {
  invariant: Invariant;
  message: string;
  /** Ids of the rows involved: some of chat, record(s), user, advisor, entry. */
  ids: Record<string, string>;
}

type Row = Record<string, string | null>;

interface Check {
  invariant: Invariant;
  /** One set-based query; every selected value is cast to text (or null). */
  sql: string;
  ids(row: Row): Record<string, string | null>;
  /** What is wrong, after the ids. */
  problem(row: Row): string;
}

/** `chat c1 (record r, user u, advisor a)`-style prefix naming every id of a violation. */
function label(ids: Record<string, string>): string {
  const [first, ...rest] = Object.entries(ids);
  if (!first) return '';
  const tail = rest.map(([k, v]) => `${k} ${v}`).join(', ');
  return `${first[0]} ${first[1]}${tail ? ` (${tail})` : ''}`;
}

const recordIds = (r: Row) => ({ chat: r.chat_id, record: r.record_id, user: r.user_id, advisor: r.advisor_id });

const CHECKS: Check[] = [
  {
    invariant: Invariant.OneRecordPerChat,
    sql: `
      SELECT chat_id, count(*)::text AS n, string_agg(id::text, ',' ORDER BY id) AS record_ids,
             min(user_id) AS user_id, min(advisor_id) AS advisor_id
        FROM conversation_time_records
       GROUP BY chat_id HAVING count(*) > 1
       ORDER BY chat_id`,
    ids: (r) => ({ chat: r.chat_id, records: r.record_ids, user: r.user_id, advisor: r.advisor_id }),
    problem: (r) => `has ${r.n} time records instead of one`,
  },
  {
    invariant: Invariant.ActiveChatHasRecord,
    sql: `
      SELECT c.id AS chat_id, c.user_id, c.advisor_id
        FROM chats c
       WHERE c.status = 'active'
         AND NOT EXISTS (SELECT 1 FROM conversation_time_records r WHERE r.chat_id = c.id)
       ORDER BY c.id`,
    ids: (r) => ({ chat: r.chat_id, user: r.user_id, advisor: r.advisor_id }),
    problem: () => 'is active but has no time record',
  },
  {
    invariant: Invariant.RecordMatchesChat,
    sql: `
      SELECT r.chat_id, r.id::text AS record_id, r.user_id, r.advisor_id,
             c.id AS chat_found, c.user_id AS chat_user_id, c.advisor_id AS chat_advisor_id
        FROM conversation_time_records r
        LEFT JOIN chats c ON c.id = r.chat_id
       WHERE c.id IS NULL OR c.user_id <> r.user_id OR c.advisor_id <> r.advisor_id
       ORDER BY r.chat_id, r.id`,
    ids: recordIds,
    problem: (r) =>
      r.chat_found === null
        ? 'the record points at a chat that does not exist'
        : `the record is for user ${r.user_id} and advisor ${r.advisor_id} but the chat is between user ${r.chat_user_id} and advisor ${r.chat_advisor_id}`,
  },
  {
    invariant: Invariant.RecordHasAllowance,
    sql: `
      SELECT r.chat_id, r.id::text AS record_id, r.user_id, r.advisor_id
        FROM conversation_time_records r
       WHERE NOT EXISTS (SELECT 1 FROM free_time_allowances f
                          WHERE f.user_id = r.user_id AND f.advisor_id = r.advisor_id)
       ORDER BY r.chat_id, r.id`,
    ids: recordIds,
    problem: () => 'the record has no free-time allowance for its user and advisor',
  },
  {
    invariant: Invariant.RecordActiveMatchesChat,
    sql: `
      SELECT r.chat_id, r.id::text AS record_id, r.user_id, r.advisor_id, r.is_active::text AS is_active, c.status
        FROM conversation_time_records r
        JOIN chats c ON c.id = r.chat_id
       WHERE r.is_active <> (c.status <> 'ended')
       ORDER BY r.chat_id, r.id`,
    ids: recordIds,
    problem: (r) =>
      r.is_active === 'true'
        ? `the record is active but the chat is ${r.status}`
        : `the record is inactive but the chat is ${r.status}`,
  },
  {
    invariant: Invariant.RecordCountsNonnegative,
    sql: `
      SELECT chat_id, id::text AS record_id, user_id, advisor_id,
             free_time_used::text AS free, paid_seconds::text AS paid, credits_used::text AS credits
        FROM conversation_time_records
       WHERE free_time_used < 0 OR paid_seconds < 0 OR credits_used < 0
       ORDER BY chat_id, id`,
    ids: recordIds,
    problem: (r) => `negative count: free_time_used ${r.free}, paid_seconds ${r.paid}, credits_used ${r.credits}`,
  },
  {
    invariant: Invariant.RecordDurationSum,
    sql: `
      SELECT chat_id, id::text AS record_id, user_id, advisor_id,
             duration::text AS duration, free_time_used::text AS free, paid_seconds::text AS paid
        FROM conversation_time_records
       WHERE duration <> free_time_used + paid_seconds
       ORDER BY chat_id, id`,
    ids: recordIds,
    problem: (r) => `duration ${r.duration} <> free_time_used ${r.free} + paid_seconds ${r.paid}`,
  },
  {
    // Postgres rounds numeric half away from zero: half-up for these non-negative amounts
    invariant: Invariant.RecordCreditsRounding,
    sql: `
      SELECT chat_id, id::text AS record_id, user_id, advisor_id, paid_seconds::text AS paid,
             rate_per_minute::text AS rate, credits_used::text AS credits,
             round(paid_seconds::numeric * rate_per_minute / 60, 4)::text AS expected
        FROM conversation_time_records
       WHERE credits_used <> round(paid_seconds::numeric * rate_per_minute / 60, 4)
       ORDER BY chat_id, id`,
    ids: recordIds,
    problem: (r) => `credits_used ${r.credits} <> ${r.expected} (${r.paid} paid seconds at ${r.rate} per minute)`,
  },
  {
    invariant: Invariant.AllowanceMatchesRecords,
    sql: `
      SELECT f.user_id, f.advisor_id, f.used_seconds::text AS used,
             coalesce(r.free, 0)::text AS free, coalesce(r.n, 0)::text AS n
        FROM free_time_allowances f
        LEFT JOIN (SELECT user_id, advisor_id, sum(free_time_used) AS free, count(*) AS n
                     FROM conversation_time_records GROUP BY user_id, advisor_id) r
          ON r.user_id = f.user_id AND r.advisor_id = f.advisor_id
       WHERE f.used_seconds <> coalesce(r.free, 0)
       ORDER BY f.user_id, f.advisor_id`,
    ids: (r) => ({ user: r.user_id, advisor: r.advisor_id }),
    problem: (r) => `allowance used_seconds ${r.used} <> ${r.free}, the free_time_used of the pair's ${r.n} records`,
  },
  {
    invariant: Invariant.AllowanceWithinAllocation,
    sql: `
      SELECT user_id, advisor_id, used_seconds::text AS used, allocation_seconds::text AS allocation
        FROM free_time_allowances
       WHERE used_seconds > allocation_seconds OR used_seconds < 0 OR allocation_seconds < 0
       ORDER BY user_id, advisor_id`,
    ids: (r) => ({ user: r.user_id, advisor: r.advisor_id }),
    problem: (r) => `allowance used_seconds ${r.used} is outside 0..allocation_seconds ${r.allocation}`,
  },
  {
    invariant: Invariant.BalanceNonnegative,
    sql: `SELECT id AS user_id, balance::text AS balance FROM users WHERE balance < 0 ORDER BY id`,
    ids: (r) => ({ user: r.user_id }),
    problem: (r) => `balance ${r.balance} is negative`,
  },
  {
    invariant: Invariant.BalanceMatchesLedger,
    sql: `
      SELECT u.id AS user_id, u.balance::text AS balance, round(coalesce(l.net, 0), 4)::text AS net
        FROM users u
        LEFT JOIN (SELECT user_id,
                          sum(CASE type WHEN 'charge' THEN -amount WHEN 'topup' THEN amount WHEN 'refund' THEN amount END) AS net
                     FROM ledger_entries GROUP BY user_id) l
          ON l.user_id = u.id
       WHERE u.balance <> coalesce(l.net, 0)
       ORDER BY u.id`,
    ids: (r) => ({ user: r.user_id }),
    problem: (r) => `balance ${r.balance} <> ${r.net}, the ledger's topups - charges + refunds`,
  },
  {
    invariant: Invariant.LedgerChains,
    sql: `
      SELECT l.id::text AS entry_id, l.user_id, l.balance_after::text AS balance_after, l.expected::text AS expected
        FROM (SELECT id, user_id, balance_after,
                     lag(balance_after, 1, 0::numeric) OVER (PARTITION BY user_id ORDER BY id)
                       + CASE type WHEN 'charge' THEN -amount ELSE amount END AS expected
                FROM ledger_entries) l
       WHERE l.balance_after <> l.expected
       ORDER BY l.user_id, l.id`,
    ids: (r) => ({ entry: r.entry_id, user: r.user_id }),
    problem: (r) => `balance_after ${r.balance_after} <> ${r.expected}, the entry before it and this entry's amount`,
  },
  {
    invariant: Invariant.LedgerAmountPositive,
    sql: `
      SELECT id::text AS entry_id, user_id, type, amount::text AS amount, chat_id
        FROM ledger_entries WHERE amount <= 0 ORDER BY id`,
    ids: (r) => ({ entry: r.entry_id, user: r.user_id, chat: r.chat_id }),
    problem: (r) => `${r.type} amount ${r.amount} is not positive`,
  },
  {
    invariant: Invariant.ChargeHasChat,
    sql: `
      SELECT id::text AS entry_id, user_id, amount::text AS amount
        FROM ledger_entries WHERE type = 'charge' AND chat_id IS NULL ORDER BY id`,
    ids: (r) => ({ entry: r.entry_id, user: r.user_id }),
    problem: (r) => `charge of ${r.amount} names no chat`,
  },
  {
    invariant: Invariant.ChargeUserMatchesChat,
    sql: `
      SELECT l.id::text AS entry_id, l.chat_id, l.user_id, c.user_id AS chat_user_id, c.advisor_id
        FROM ledger_entries l
        JOIN chats c ON c.id = l.chat_id
       WHERE l.type = 'charge' AND l.user_id <> c.user_id
       ORDER BY l.id`,
    ids: (r) => ({ entry: r.entry_id, chat: r.chat_id, user: r.user_id, advisor: r.advisor_id }),
    problem: (r) => `charge taken from user ${r.user_id} but the chat is user ${r.chat_user_id}'s`,
  },
  {
    invariant: Invariant.ChargesMatchCredits,
    sql: `
      SELECT coalesce(r.chat_id, l.chat_id) AS chat_id, r.id::text AS record_id,
             coalesce(r.user_id, c.user_id) AS user_id, coalesce(r.advisor_id, c.advisor_id) AS advisor_id,
             r.credits_used::text AS credits, round(coalesce(l.charged, 0), 4)::text AS charged
        FROM conversation_time_records r
        FULL JOIN (SELECT chat_id, sum(amount) AS charged FROM ledger_entries
                    WHERE type = 'charge' AND chat_id IS NOT NULL GROUP BY chat_id) l
          ON l.chat_id = r.chat_id
        LEFT JOIN chats c ON c.id = coalesce(r.chat_id, l.chat_id)
       WHERE coalesce(r.credits_used, 0) <> coalesce(l.charged, 0)
       ORDER BY 1, 2`,
    ids: (r) => ({ chat: r.chat_id, record: r.record_id, user: r.user_id, advisor: r.advisor_id }),
    problem: (r) =>
      r.record_id === null
        ? `charges of ${r.charged} for a chat without a time record`
        : `charges sum to ${r.charged} but the record's credits_used is ${r.credits}`,
  },
];

/** Drops null ids, so a violation names only what it is about. */
function present(ids: Record<string, string | null>): Record<string, string> {
  return Object.fromEntries(Object.entries(ids).filter((e): e is [string, string] => e[1] !== null));
}

/**
 * Checks every invariant of SPEC section 1 over the whole database and returns each
 * violation found (empty when the database is sound), in a stable order: by
 * invariant, then by ids.
 * @example
 * const violations = await verifyInvariants(ds);
 * for (const v of violations) console.log(v.invariant, v.message);
 */
export async function verifyInvariants(ds: DataSource): Promise<Violation[]> {
  return ds.transaction('REPEATABLE READ', async (em) => {
    await em.query('SET TRANSACTION READ ONLY');
    const violations: Violation[] = [];
    for (const check of CHECKS) {
      const rows: Row[] = await em.query(check.sql);
      for (const row of rows) {
        const ids = present(check.ids(row));
        violations.push({ invariant: check.invariant, message: `${label(ids)}: ${check.problem(row)}`, ids });
      }
    }
    return violations;
  });
}
