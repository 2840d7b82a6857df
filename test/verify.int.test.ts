import { expect } from 'chai';
import { type Violation, verifyInvariants } from '../server/verify.js';
import { freshDatabase, type TestDb } from './support/db.js';
import { T0, at, present, services } from './support/fixtures.js';
import { runVerifyCli } from './support/verify-cli.js';


describe('verify: the invariants of SPEC section 1 over the whole database', () => {
  let db: TestDb;
  let s: ReturnType<typeof services>;
  /** Statements that put back constraints a test dropped, run on the emptied tables. */
  const restores: string[] = [];
  /** Record id of each chat that has one. */
  let rec: Record<string, string>;
  let constraintsBefore: string[];

  const constraints = async () =>
    ((await db.ds.query(
      `SELECT conname || ' ' || pg_get_constraintdef(oid) AS c FROM pg_constraint WHERE connamespace = 'public'::regnamespace ORDER BY 1`,
    )) as Array<{ c: string }>).map((r) => r.c);

  before(async () => {
    db = await freshDatabase();
    s = services(db.ds);
    constraintsBefore = await constraints();
  });
  beforeEach(async () => {
    await db.reset();
    rec = await givenHealthyDatabase();
  });
  afterEach(async () => {
    if (!restores.length) return;
    await db.reset();
    for (const sql of restores.splice(0)) await db.ds.query(sql);
  });
  after(() => db.close());

  const settle = async (chatId: string, t: number, command?: Parameters<typeof s.engine.settleBatch>[0][0]['command']) => {
    const [out] = await s.engine.settleBatch([{ chatId, presence: present(T0, at(t - 5)), command }], at(t));
    if (!out?.ok) throw new Error(`settling ${chatId} failed`);
  };

  /**
   * Given, built through the real services:
   * - u1 (10 credits) with a1 (1/min, 180 s free): c1 ended after 100 free seconds;
   *   c2 active, 80 free + 30 paid seconds = 0.5000; c4 joined, never started. u1 has 9.5000.
   * - u2 (20 credits) with a2 (6/min, no free time): c3 ended after 25 paid seconds = 2.5000,
   *   in two charge entries around a top-up of 5; c5 created, never joined.
   * - u2 with a3 (0.009/min): c6 ended after 3 paid seconds: 0.00045 rounds half-up to 0.0005.
   */
  async function givenHealthyDatabase(): Promise<Record<string, string>> {
    await s.accounts.putUser('u1', { balance: '10' });
    await s.accounts.putUser('u2', { balance: '20' });
    await s.accounts.putAdvisor('a1', { ratePerMinute: '1', freeSeconds: 180 });
    await s.accounts.putAdvisor('a2', { ratePerMinute: '6', freeSeconds: 0 });
    await s.accounts.putAdvisor('a3', { ratePerMinute: '0.009', freeSeconds: 0 });
    const chats = [
      ['c1', 'u1', 'a1'],
      ['c2', 'u1', 'a1'],
      ['c3', 'u2', 'a2'],
      ['c4', 'u1', 'a1'],
      ['c5', 'u2', 'a2'],
      ['c6', 'u2', 'a3'],
    ] as const;
    const ids: Record<string, string> = {};
    for (const [id, userId, advisorId] of chats) {
      await s.accounts.createChat({ id, userId, advisorId });
      if (id !== 'c5') ids[id] = (await s.engine.initializeTimeTrackingForChat(userId, advisorId, id)).id;
    }
    for (const id of ['c1', 'c2', 'c3', 'c6']) await settle(id, 0, { kind: 'start' });
    await settle('c1', 100, { kind: 'end', reason: 'ended_by_user' });
    await settle('c2', 110);
    await settle('c3', 10);
    await s.engine.topUp('u2', '5', 'k1');
    await settle('c3', 25, { kind: 'end', reason: 'ended_by_advisor' });
    await settle('c6', 3, { kind: 'end', reason: 'ended_by_user' });
    return ids;
  }

  /** Drops a constraint for one test; it comes back (as it was) once the tables are emptied. */
  async function dropConstraint(table: string, name: string): Promise<void> {
    const [row]: Array<{ def: string }> = await db.ds.query(
      `SELECT pg_get_constraintdef(oid) AS def FROM pg_constraint WHERE conname = $1 AND conrelid = $2::regclass`,
      [name, table],
    );
    if (!row) throw new Error(`no constraint ${name} on ${table}`);
    await db.ds.query(`ALTER TABLE ${table} DROP CONSTRAINT ${name}`);
    restores.push(`ALTER TABLE ${table} ADD CONSTRAINT ${name} ${row.def}`);
  }

  /** Runs statements with triggers off, foreign keys included (they are triggers). */
  async function withoutForeignKeys(...sql: string[]): Promise<void> {
    await db.ds.transaction(async (em) => {
      await em.query(`SET LOCAL session_replication_role = replica`);
      for (const q of sql) await em.query(q);
    });
  }

  /** Then verify reports exactly these invariants with these ids, each message naming its ids. */
  /** Exactly these violations, besides any of the invariants in `also` (which the caller checks itself). */
  async function expectViolations(expected: Array<Pick<Violation, 'invariant' | 'ids'>>, also: string[] = []): Promise<Violation[]> {
    const found = await verifyInvariants(db.ds);
    expect(found.filter((v) => !also.includes(v.invariant)).map(({ invariant, ids }) => ({ invariant, ids }))).to.deep.equal(expected);
    for (const v of found) for (const id of Object.values(v.ids)) expect(v.message).to.include(id);
    return found;
  }

  it('finds nothing wrong with a database built by the services', async () => {
    const [u1] = await db.ds.query(`SELECT balance FROM users WHERE id = 'u1'`);
    const [u2] = await db.ds.query(`SELECT balance FROM users WHERE id = 'u2'`);
    expect([u1.balance, u2.balance]).to.deep.equal(['9.5000', '22.4995']);
    const [c6] = await db.ds.query(`SELECT credits_used FROM conversation_time_records WHERE chat_id = 'c6'`);
    expect(c6.credits_used).to.equal('0.0005');
    expect(await verifyInvariants(db.ds)).to.deep.equal([]);
  });

  describe('one record per chat', () => {
    it('reports a second record of a chat', async () => {
      await dropConstraint('conversation_time_records', 'conversation_time_records_chat_id_key');
      const [dup] = await db.ds.query(
        `INSERT INTO conversation_time_records
           (chat_id, user_id, advisor_id, rate_per_minute, total_free_time_allocation, is_active, ended_at, end_reason, meter_state)
         SELECT chat_id, user_id, advisor_id, rate_per_minute, total_free_time_allocation, false, ended_at, end_reason, 'ended'
           FROM conversation_time_records WHERE chat_id = 'c1'
         RETURNING id`,
      );
      const records = [rec.c1!, dup.id as string].sort().join(',');
      await expectViolations([{ invariant: 'one_record_per_chat', ids: { chat: 'c1', records, user: 'u1', advisor: 'a1' } }]);
    });

    it('reports an active chat without a record', async () => {
      await db.ds.query(`UPDATE chats SET status = 'active', started_at = now() WHERE id = 'c5'`);
      await expectViolations([{ invariant: 'active_chat_has_record', ids: { chat: 'c5', user: 'u2', advisor: 'a2' } }]);
    });
  });

  describe('records and their chats', () => {
    it("reports a record whose user is not its chat's", async () => {
      await withoutForeignKeys(`UPDATE chats SET user_id = 'u2' WHERE id = 'c4'`);
      const [v] = await expectViolations([
        { invariant: 'record_matches_chat', ids: { chat: 'c4', record: rec.c4!, user: 'u1', advisor: 'a1' } },
      ]);
      expect(v!.message).to.include('between user u2 and advisor a1');
    });

    it('reports a record without its allowance', async () => {
      await withoutForeignKeys(`DELETE FROM free_time_allowances WHERE user_id = 'u2' AND advisor_id = 'a2'`);
      await expectViolations([{ invariant: 'record_has_allowance', ids: { chat: 'c3', record: rec.c3!, user: 'u2', advisor: 'a2' } }]);
    });

    it('reports an active record of an ended chat', async () => {
      await db.ds.query(`UPDATE chats SET status = 'ended', end_reason = 'ended_by_platform', ended_at = now() WHERE id = 'c2'`);
      await expectViolations([
        { invariant: 'record_active_matches_chat', ids: { chat: 'c2', record: rec.c2!, user: 'u1', advisor: 'a1' } },
      ]);
    });

    it('reports an ended record of a chat that has not ended', async () => {
      await db.ds.query(
        `UPDATE conversation_time_records SET is_active = false, ended_at = now(), end_reason = 'abandoned' WHERE chat_id = 'c4'`,
      );
      const [v] = await expectViolations([
        { invariant: 'record_active_matches_chat', ids: { chat: 'c4', record: rec.c4!, user: 'u1', advisor: 'a1' } },
      ]);
      expect(v!.message).to.include('inactive but the chat is pending');
    });
  });

  describe('record arithmetic', () => {
    it('reports negative counts', async () => {
      await dropConstraint('conversation_time_records', 'conversation_time_records_counts_nonnegative');
      // -5 free + 5 paid at rate 0 keeps the duration and credits right; c1 takes the 5 back for the pair's sum
      await db.ds.query(
        `UPDATE conversation_time_records SET free_time_used = -5, paid_seconds = 5, rate_per_minute = 0 WHERE chat_id = 'c4'`,
      );
      await db.ds.query(`UPDATE conversation_time_records SET free_time_used = 105, duration = 105 WHERE chat_id = 'c1'`);
      await expectViolations([
        { invariant: 'record_counts_nonnegative', ids: { chat: 'c4', record: rec.c4!, user: 'u1', advisor: 'a1' } },
      ]);
    });

    it('reports a duration that is not free + paid seconds', async () => {
      await dropConstraint('conversation_time_records', 'conversation_time_records_duration_sum');
      await db.ds.query(`UPDATE conversation_time_records SET duration = duration + 1 WHERE chat_id = 'c2'`);
      const [v] = await expectViolations([
        { invariant: 'record_duration_sum', ids: { chat: 'c2', record: rec.c2!, user: 'u1', advisor: 'a1' } },
      ]);
      expect(v!.message).to.include('duration 111 <> free_time_used 80 + paid_seconds 30');
    });

    it('reports credits rounded half-down, even when charges and balance agree with them', async () => {
      // 3 s at 0.009/min = 0.00045: half-up gives 0.0005, not 0.0004
      await db.ds.query(`UPDATE conversation_time_records SET credits_used = 0.0004 WHERE chat_id = 'c6'`);
      await db.ds.query(`UPDATE ledger_entries SET amount = 0.0004 WHERE chat_id = 'c6'`);
      await db.ds.query(`UPDATE users SET balance = balance + 0.0001 WHERE id = 'u2'`);
      // and the ledger's running balance, from that charge on, agrees too
      await db.ds.query(
        `UPDATE ledger_entries SET balance_after = balance_after + 0.0001
          WHERE user_id = 'u2' AND id >= (SELECT min(id) FROM ledger_entries WHERE chat_id = 'c6')`,
      );
      const [v] = await expectViolations([
        { invariant: 'record_credits_rounding', ids: { chat: 'c6', record: rec.c6!, user: 'u2', advisor: 'a3' } },
      ]);
      expect(v!.message).to.include('credits_used 0.0004 <> 0.0005');
    });
  });

  describe('free-time allowances', () => {
    it("reports used seconds that differ from the sum of the pair's records", async () => {
      await db.ds.query(`UPDATE free_time_allowances SET used_seconds = used_seconds - 1 WHERE user_id = 'u1' AND advisor_id = 'a1'`);
      const [v] = await expectViolations([{ invariant: 'allowance_matches_records', ids: { user: 'u1', advisor: 'a1' } }]);
      expect(v!.message).to.include('used_seconds 179 <> 180');
    });

    it('reports used seconds beyond the allocation', async () => {
      await dropConstraint('free_time_allowances', 'free_time_allowances_used_within_allocation');
      await db.ds.query(`UPDATE free_time_allowances SET allocation_seconds = 179 WHERE user_id = 'u1' AND advisor_id = 'a1'`);
      await expectViolations([{ invariant: 'allowance_within_allocation', ids: { user: 'u1', advisor: 'a1' } }]);
    });
  });

  describe('balances and the ledger', () => {
    it('reports a balance that differs from the ledger', async () => {
      await db.ds.query(`UPDATE users SET balance = balance + 1 WHERE id = 'u1'`);
      const [v] = await expectViolations([{ invariant: 'balance_matches_ledger', ids: { user: 'u1' } }]);
      expect(v!.message).to.include('balance 10.5000 <> 9.5000');
    });

    it('reports a stray top-up entry that never reached the balance', async () => {
      await db.ds.query(
        `INSERT INTO ledger_entries (user_id, type, amount, balance_after, idempotency_key) VALUES ('u2', 'topup', 3, 25.4995, 'stray')`,
      );
      await expectViolations([{ invariant: 'balance_matches_ledger', ids: { user: 'u2' } }]);
    });

    it('reports a negative balance, even one the ledger agrees with', async () => {
      await dropConstraint('users', 'users_balance_nonnegative');
      await dropConstraint('ledger_entries', 'ledger_entries_balance_after_nonnegative');
      // 660 more paid seconds at 1/min: 11 more credits, charged and taken from the 9.5 left
      await db.ds.query(
        `UPDATE conversation_time_records
            SET paid_seconds = paid_seconds + 660, duration = duration + 660, credits_used = credits_used + 11
          WHERE chat_id = 'c2'`,
      );
      await db.ds.query(`UPDATE ledger_entries SET amount = amount + 11 WHERE chat_id = 'c2' AND type = 'charge'`);
      await db.ds.query(`UPDATE users SET balance = balance - 11 WHERE id = 'u1'`);
      await db.ds.query(
        `UPDATE ledger_entries SET balance_after = balance_after - 11
          WHERE user_id = 'u1' AND id >= (SELECT min(id) FROM ledger_entries WHERE chat_id = 'c2' AND type = 'charge')`,
      );
      const [v] = await expectViolations([{ invariant: 'balance_nonnegative', ids: { user: 'u1' } }]);
      expect(v!.message).to.include('-1.5000');
    });

    it('reports a ledger amount that is not positive', async () => {
      await dropConstraint('ledger_entries', 'ledger_entries_amount_positive');
      const [e] = await db.ds.query(
        `INSERT INTO ledger_entries (user_id, type, amount, balance_after, idempotency_key) VALUES ('u1', 'refund', 0, 9.5, 'zero') RETURNING id`,
      );
      await expectViolations([{ invariant: 'ledger_amount_positive', ids: { entry: String(e.id), user: 'u1' } }]);
    });

    it('reports a charge without a chat', async () => {
      await dropConstraint('ledger_entries', 'ledger_entries_charge_has_chat');
      // a refund of the same amount keeps the balance equation
      const [e] = await db.ds.query(
        `INSERT INTO ledger_entries (user_id, type, amount, balance_after, idempotency_key) VALUES ('u1', 'charge', 1, 8.5, 'nochat') RETURNING id`,
      );
      await db.ds.query(
        `INSERT INTO ledger_entries (user_id, type, amount, balance_after, idempotency_key) VALUES ('u1', 'refund', 1, 9.5, 'back')`,
      );
      await expectViolations([{ invariant: 'charge_has_chat', ids: { entry: String(e.id), user: 'u1' } }]);
    });

    it('reports a running balance that does not follow from the entry before it', async () => {
      const [e] = await db.ds.query(`SELECT id FROM ledger_entries WHERE chat_id = 'c3' ORDER BY id LIMIT 1`);
      await db.ds.query(`UPDATE ledger_entries SET balance_after = balance_after + 1 WHERE id = $1`, [e.id]);
      // that entry's balance is off, and so the next one no longer follows from it
      const [next] = await db.ds.query(`SELECT id FROM ledger_entries WHERE user_id = 'u2' AND id > $1 ORDER BY id LIMIT 1`, [e.id]);
      await expectViolations([
        { invariant: 'ledger_chains', ids: { entry: String(e.id), user: 'u2' } },
        { invariant: 'ledger_chains', ids: { entry: String(next.id), user: 'u2' } },
      ]);
    });

    it("reports a charge taken from another user than the chat's", async () => {
      const [e] = await db.ds.query(
        `WITH moved AS (
           UPDATE ledger_entries SET user_id = 'u1' WHERE chat_id = 'c3' AND idempotency_key = 'charge:c3:1' RETURNING id, amount
         ) SELECT id, amount FROM moved`,
      );
      expect(e.amount).to.equal('1.0000');
      await db.ds.query(`UPDATE users SET balance = balance + 1 WHERE id = 'u2'`);
      await db.ds.query(`UPDATE users SET balance = balance - 1 WHERE id = 'u1'`);
      // an entry moved between users breaks both users' running balances too
      const found = await expectViolations(
        [{ invariant: 'charge_user_matches_chat', ids: { entry: String(e.id), chat: 'c3', user: 'u1', advisor: 'a2' } }],
        ['ledger_chains'],
      );
      expect(found.filter((v) => v.invariant === 'ledger_chains').map((v) => v.ids.user).sort()).to.include.members(['u1', 'u2']);
    });

    it("reports stray charges that don't add up to the record's credits, or have no record", async () => {
      // the balance pays for them, so only the per-chat sum is off
      await db.ds.query(
        `INSERT INTO ledger_entries (user_id, type, amount, balance_after, chat_id, idempotency_key)
         VALUES ('u2', 'charge', 1, 21.4995, 'c3', 'stray-1'), ('u2', 'charge', 2, 19.4995, 'c5', 'stray-2')`,
      );
      await db.ds.query(`UPDATE users SET balance = balance - 3 WHERE id = 'u2'`);
      const [c3, c5] = await expectViolations([
        { invariant: 'charges_match_credits', ids: { chat: 'c3', record: rec.c3!, user: 'u2', advisor: 'a2' } },
        { invariant: 'charges_match_credits', ids: { chat: 'c5', user: 'u2', advisor: 'a2' } },
      ]);
      expect(c3!.message).to.include('3.5000').and.include('2.5000');
      expect(c5!.message).to.include('without a time record');
    });
  });

  describe('after the corruptions', () => {
    it('has put back every constraint the tests dropped', async () => {
      expect(constraintsBefore.length).to.be.greaterThan(30);
      expect(await constraints()).to.deep.equal(constraintsBefore);
    });
  });

  describe('npm run verify', () => {
    it('exits 0 on a sound database and 1 with one JSON line per violation on a corrupted one', async function () {
      if (!db.url) return this.skip(); // PGlite: one process per data directory
      const healthy = await runVerifyCli({ DATABASE_URL: db.url });
      expect(healthy, healthy.stderr).to.include({ code: 0 });
      expect(healthy.stdout.trim().split('\n')).to.deep.equal(['verify: 0 violations']);

      await db.ds.query(`UPDATE users SET balance = balance + 1 WHERE id = 'u1'`);
      await db.ds.query(`UPDATE free_time_allowances SET used_seconds = 0 WHERE user_id = 'u1' AND advisor_id = 'a1'`);
      const broken = await runVerifyCli({ DATABASE_URL: db.url });
      expect(broken, broken.stderr).to.include({ code: 1 });
      const lines = broken.stdout.trim().split('\n');
      expect(lines.at(-1)).to.equal('verify: 2 violations');
      const printed = lines.slice(0, -1).map((l) => JSON.parse(l) as Violation);
      expect(printed.map(({ invariant, ids }) => ({ invariant, ids }))).to.deep.equal([
        { invariant: 'allowance_matches_records', ids: { user: 'u1', advisor: 'a1' } },
        { invariant: 'balance_matches_ledger', ids: { user: 'u1' } },
      ]);
      expect(printed[1]!.message).to.include('u1');
    });

    it('exits 2 with a clear message when the database cannot be reached', async () => {
      const out = await runVerifyCli({ DATABASE_URL: 'postgres://postgres:secret@127.0.0.1:1/nowhere' });
      expect(out.code).to.equal(2);
      expect(out.stdout).to.equal('');
      expect(out.stderr).to.include('cannot reach postgres://postgres:***@127.0.0.1:1/nowhere');
      expect(out.stderr).to.not.include('secret');
    });
  });
});
