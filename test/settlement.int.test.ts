import { randomUUID } from 'node:crypto';
import { expect } from 'chai';
import pg from 'pg';
import { shardOf } from '../server/cluster/shards.js';
import { BadRequestError, BusyError, ConflictError, DomainError, ForbiddenError, LeaseLostError, NotFoundError } from '../server/errors.js';
import { type SettleOutcome, SettlementService } from '../server/metering/settlement.js';
import { freshDatabase, type TestDb } from './support/db.js';
import { T0, at, left, present, services, testPolicy } from './support/fixtures.js';

type Ok = Extract<SettleOutcome, { ok: true }>;
const ok = (o: SettleOutcome | undefined): Ok => {
  if (!o || !o.ok) throw new Error(`expected a settled outcome, got ${JSON.stringify(o, (_, v) => (typeof v === 'bigint' ? String(v) : v))}`);
  return o;
};

describe('settlement engine (real database, explicit clock)', () => {
  let db: TestDb;
  let s: ReturnType<typeof services>;

  before(async () => {
    db = await freshDatabase();
    s = services(db.ds);
  });
  beforeEach(() => db.reset());
  after(() => db.close());

  /** Given a user, an advisor and an active chat started at t=0. */
  async function givenActiveChat(opts: { chatId?: string; balance?: string; rate?: string; free?: number; userId?: string; advisorId?: string } = {}) {
    const userId = opts.userId ?? 'u1';
    const advisorId = opts.advisorId ?? 'a1';
    const chatId = opts.chatId ?? 'c1';
    await s.accounts.putUser(userId, { name: 'User', balance: opts.balance ?? '10' });
    await s.accounts.putAdvisor(advisorId, { name: 'Advisor', ratePerMinute: opts.rate ?? '1', freeSeconds: opts.free ?? 180 });
    await s.accounts.createChat({ id: chatId, userId, advisorId });
    const record = await s.engine.initializeTimeTrackingForChat(userId, advisorId, chatId);
    ok((await s.engine.settleBatch([{ chatId, presence: present(T0), command: { kind: 'start' } }], T0))[0]);
    return { userId, advisorId, chatId, recordId: record.id };
  }

  async function ledgerSum(userId: string) {
    const rows = await db.ds.query(
      `SELECT coalesce(sum(CASE type WHEN 'charge' THEN -amount ELSE amount END), 0)::text AS net FROM ledger_entries WHERE user_id = $1`,
      [userId],
    );
    return rows[0].net as string;
  }

  async function record(chatId: string) {
    const rows = await db.ds.query(`SELECT * FROM conversation_time_records WHERE chat_id = $1`, [chatId]);
    return rows[0];
  }

  describe('single chat', () => {
    it('creates one record and bills free seconds, then paid seconds at the rate', async () => {
      const { chatId, recordId, userId } = await givenActiveChat({ balance: '10', rate: '1', free: 180 });
      // when: the user stays for 200 s with heartbeats
      const first = ok((await s.engine.settleBatch([{ chatId, presence: present(T0, at(95)) }], at(100)))[0]);
      expect(first.meter).to.include({ recordId, state: 'running', durationSeconds: 100, freeSecondsUsed: 100, freeSecondsRemaining: 80, creditsUsed: '0.0000', balance: '10.0000' });
      const second = ok((await s.engine.settleBatch([{ chatId, presence: present(T0, at(195)) }], at(200)))[0]);
      // then: 80 more free seconds and 20 paid at 1 credit/minute = 0.3333
      expect(second.meter).to.include({ durationSeconds: 200, freeSecondsUsed: 180, freeSecondsRemaining: 0, creditsUsed: '0.3333', balance: '9.6667' });
      expect(second.meter.seq).to.equal(first.meter.seq + 1);
      expect(await ledgerSum(userId)).to.equal('9.6667');
      const r = await record(chatId);
      expect(r).to.include({ duration: 200, free_time_used: 180, paid_seconds: 20, credits_used: '0.3333', is_active: true });
    });

    it('bills nothing when settled twice at the same instant', async () => {
      const { chatId, userId } = await givenActiveChat({ free: 0 });
      const a = ok((await s.engine.settleBatch([{ chatId, presence: present(T0, at(25)) }], at(30.7)))[0]);
      const b = ok((await s.engine.settleBatch([{ chatId, presence: present(T0, at(25)) }], at(30.7)))[0]);
      expect(a.meter.durationSeconds).to.equal(30);
      expect(b.charge).to.equal(0n);
      expect(b.meter.durationSeconds).to.equal(30);
      expect(b.meter.creditsUsed).to.equal('0.5000');
      // the 0.7 s left over is billed with the next second, not lost
      const c = ok((await s.engine.settleBatch([{ chatId, presence: present(T0, at(25)) }], at(31)))[0]);
      expect(c.meter.durationSeconds).to.equal(31);
      expect(await ledgerSum(userId)).to.equal(c.meter.balance);
    });

    it('rounds credits from cumulative paid seconds, never by summing rounded increments', async () => {
      const { chatId } = await givenActiveChat({ free: 0, rate: '1' });
      const seen: string[] = [];
      for (let t = 1; t <= 3; t++) {
        seen.push(ok((await s.engine.settleBatch([{ chatId, presence: present(T0) }], at(t)))[0]).meter.creditsUsed);
      }
      // 1/60 = 0.01666.. → 0.0167; 2/60 → 0.0333 (not 0.0334); 3/60 → 0.0500
      expect(seen).to.deep.equal(['0.0167', '0.0333', '0.0500']);
    });
  });

  describe('multiple chats, same advisor', () => {
    it('gives each chat its own record and never more free time than the allocation in total', async () => {
      await givenActiveChat({ chatId: 'c1', free: 180 });
      await s.accounts.createChat({ id: 'c2', userId: 'u1', advisorId: 'a1' });
      const r2 = await s.engine.initializeTimeTrackingForChat('u1', 'a1', 'c2');
      ok((await s.engine.settleBatch([{ chatId: 'c2', presence: present(T0), command: { kind: 'start' } }], T0))[0]);
      const out = await s.engine.settleBatch(
        [
          { chatId: 'c1', presence: present(T0, at(95)) },
          { chatId: 'c2', presence: present(T0, at(95)) },
        ],
        at(100),
      );
      const [m1, m2] = [ok(out.find((o) => o.chatId === 'c1')).meter, ok(out.find((o) => o.chatId === 'c2')).meter];
      expect(m1.recordId).to.not.equal(m2.recordId);
      expect(m2.recordId).to.equal(r2.id);
      expect(m1.freeSecondsUsed + m2.freeSecondsUsed).to.equal(180);
      expect(m1.durationSeconds + m2.durationSeconds).to.equal(200);
      const [allowance] = await db.ds.query(`SELECT * FROM free_time_allowances WHERE user_id = 'u1' AND advisor_id = 'a1'`);
      expect(allowance).to.include({ allocation_seconds: 180, used_seconds: 180 });
    });
  });

  describe('switch A → B → A', () => {
    it('keeps A to its one record, queryable before and after it ended', async () => {
      const a = await givenActiveChat({ chatId: 'A' });
      ok((await s.engine.settleBatch([{ chatId: 'A', presence: present(T0) }], at(10)))[0]);
      ok((await s.engine.settleBatch([{ chatId: 'A', presence: present(T0), command: { kind: 'end', reason: 'ended_by_user' } }], at(12)))[0]);
      await s.accounts.createChat({ id: 'B', userId: 'u1', advisorId: 'a1' });
      const b = await s.engine.initializeTimeTrackingForChat('u1', 'a1', 'B');
      // back to A, after it ended: the same record, no error
      const again = await s.engine.initializeTimeTrackingForChat('u1', 'a1', 'A');
      expect(again.id).to.equal(a.recordId);
      expect(b.id).to.not.equal(a.recordId);
      const meterA = await s.engine.readMeter('A', null, at(20));
      expect(meterA).to.include({ recordId: a.recordId, state: 'ended', durationSeconds: 12 });
      const [{ n }] = await db.ds.query(`SELECT count(*)::int AS n FROM conversation_time_records WHERE chat_id = 'A'`);
      expect(n).to.equal(1);
      expect(await record('A')).to.include({ is_active: false, end_reason: 'ended_by_user' });
    });

    it('refuses unknown chats and mismatched users or advisors with typed errors', async () => {
      await givenActiveChat({ chatId: 'A' });
      await s.accounts.putUser('u2', {});
      let err: unknown = await s.engine.initializeTimeTrackingForChat('u1', 'a1', 'nope').catch((e) => e);
      expect(err).to.be.instanceOf(NotFoundError).with.property('message', 'chat nope does not exist');
      err = await s.engine.initializeTimeTrackingForChat('u2', 'a1', 'A').catch((e) => e);
      expect(err).to.be.instanceOf(ForbiddenError).with.property('message', 'chat A is not between user u2 and advisor a1');
      await s.accounts.putAdvisor('a2', { ratePerMinute: '1' });
      err = await s.engine.initializeTimeTrackingForChat('u1', 'a2', 'A').catch((e) => e);
      expect(err).to.be.instanceOf(ForbiddenError).with.property('message', 'chat A is not between user u1 and advisor a2');
      expect(await db.ds.query(`SELECT 1 FROM free_time_allowances WHERE advisor_id = 'a2'`)).to.deep.equal([]);
    });
  });

  describe('free time sharing', () => {
    it('takes the free time used in A away from B', async () => {
      await givenActiveChat({ chatId: 'A', free: 180 });
      ok((await s.engine.settleBatch([{ chatId: 'A', presence: present(T0, at(95)), command: { kind: 'end', reason: 'ended_by_advisor' } }], at(100)))[0]);
      await s.accounts.createChat({ id: 'B', userId: 'u1', advisorId: 'a1' });
      await s.engine.initializeTimeTrackingForChat('u1', 'a1', 'B');
      const started = ok((await s.engine.settleBatch([{ chatId: 'B', presence: present(at(100)), command: { kind: 'start' } }], at(100)))[0]);
      expect(started.meter).to.include({ freeSecondsRemaining: 80, freeSecondsUsed: 0 });
      const b = ok((await s.engine.settleBatch([{ chatId: 'B', presence: present(at(100), at(190)) }], at(200)))[0]);
      expect(b.meter).to.include({ freeSecondsUsed: 80, durationSeconds: 100, creditsUsed: '0.3333' });
    });
  });

  describe('credit deduction, several simultaneous chats', () => {
    it('charges each chat its own paid seconds and keeps balance = ledger', async () => {
      await givenActiveChat({ chatId: 'x', advisorId: 'ax', rate: '2', free: 0, balance: '100' });
      await s.accounts.putAdvisor('ay', { ratePerMinute: '3', freeSeconds: 0 });
      await s.accounts.createChat({ id: 'y', userId: 'u1', advisorId: 'ay' });
      await s.engine.initializeTimeTrackingForChat('u1', 'ay', 'y');
      ok((await s.engine.settleBatch([{ chatId: 'y', presence: present(T0), command: { kind: 'start' } }], T0))[0]);
      const out = await s.engine.settleBatch(
        [
          { chatId: 'x', presence: present(T0, at(55)) },
          { chatId: 'y', presence: present(T0, at(55)) },
        ],
        at(60),
      );
      expect(ok(out.find((o) => o.chatId === 'x')).meter.creditsUsed).to.equal('2.0000');
      expect(ok(out.find((o) => o.chatId === 'y')).meter.creditsUsed).to.equal('3.0000');
      expect((await s.accounts.getUser('u1')).balance).to.equal('95.0000');
      expect(await ledgerSum('u1')).to.equal('95.0000');
      const charges = await db.ds.query(`SELECT chat_id, sum(amount)::text AS total FROM ledger_entries WHERE type = 'charge' GROUP BY chat_id ORDER BY chat_id`);
      expect(charges).to.deep.equal([
        { chat_id: 'x', total: '2.0000' },
        { chat_id: 'y', total: '3.0000' },
      ]);
    });
  });

  describe('presence', () => {
    it('closes an abandoned chat inactive, billing nothing past presence', async () => {
      const { chatId } = await givenActiveChat({ free: 0, balance: '100' });
      const away = ok((await s.engine.settleBatch([{ chatId, presence: left(T0, at(10.5)) }], at(50)))[0]);
      expect(away.meter).to.include({ state: 'away', durationSeconds: 10 });
      const still = ok((await s.engine.settleBatch([{ chatId, presence: left(T0, at(10.5)) }], at(130.4)))[0]);
      expect(still.ended).to.equal(null);
      const gone = ok((await s.engine.settleBatch([{ chatId, presence: null }], at(130.5)))[0]);
      expect(gone.ended).to.equal('abandoned');
      expect(gone.meter).to.include({ state: 'ended', durationSeconds: 10, creditsUsed: '0.1667' });
      expect(await record(chatId)).to.include({ is_active: false, end_reason: 'abandoned', duration: 10 });
    });

    it('resumes when presence returns without billing the gap', async () => {
      const { chatId } = await givenActiveChat({ free: 0 });
      ok((await s.engine.settleBatch([{ chatId, presence: left(T0, at(10)) }], at(30)))[0]);
      const back = ok((await s.engine.settleBatch([{ chatId, presence: present(at(50)) }], at(60)))[0]);
      expect(back.meter).to.include({ state: 'running', durationSeconds: 20 });
    });

    it('never runs the meter past the last heartbeat plus grace', async () => {
      const { chatId } = await givenActiveChat({ free: 0 });
      const out = ok((await s.engine.settleBatch([{ chatId, presence: present(T0, at(20), 15_000) }], at(100)))[0]);
      expect(out.meter).to.include({ state: 'away', durationSeconds: 35 });
    });

    it('bills nothing while paused', async () => {
      const { chatId } = await givenActiveChat({ free: 0 });
      ok((await s.engine.settleBatch([{ chatId, presence: present(T0), command: { kind: 'pause' } }], at(10)))[0]);
      const paused = ok((await s.engine.settleBatch([{ chatId, presence: present(T0) }], at(14)))[0]);
      expect(paused.meter).to.include({ state: 'paused', durationSeconds: 10 });
      ok((await s.engine.settleBatch([{ chatId, presence: present(T0) }], at(14)))[0]);
      ok((await s.engine.settleBatch([{ chatId, presence: present(T0, at(20)), command: { kind: 'resume' } }], at(20)))[0]);
      const resumed = ok((await s.engine.settleBatch([{ chatId, presence: present(T0, at(20)) }], at(25)))[0]);
      expect(resumed.meter).to.include({ state: 'running', durationSeconds: 15 });
    });
  });

  describe('rapid switching, concurrent settlement', () => {
    it('bills no second twice and duplicates no record', async function () {
      await givenActiveChat({ chatId: 'c1', free: 30, balance: '1000', rate: '6' });
      await s.accounts.createChat({ id: 'c2', userId: 'u1', advisorId: 'a1' });
      await Promise.all(Array.from({ length: 10 }, () => s.engine.initializeTimeTrackingForChat('u1', 'a1', 'c2')));
      ok((await s.engine.settleBatch([{ chatId: 'c2', presence: present(T0), command: { kind: 'start' } }], T0))[0]);
      const items = [
        { chatId: 'c1', presence: present(T0, at(55)) },
        { chatId: 'c2', presence: present(T0, at(55)) },
      ];
      // five settlers at once, in both orders, at each of three instants
      for (const t of [20, 40, 60]) {
        await Promise.all(
          Array.from({ length: 5 }, (_, i) => s.engine.settleBatch(i % 2 ? items : [...items].reverse(), at(t))),
        );
      }
      const records = await db.ds.query(`SELECT chat_id, duration, free_time_used, paid_seconds, credits_used FROM conversation_time_records ORDER BY chat_id`);
      expect(records.map((r: { duration: number }) => r.duration)).to.deep.equal([60, 60]);
      const free = records.reduce((n: number, r: { free_time_used: number }) => n + r.free_time_used, 0);
      expect(free).to.equal(30);
      // 90 paid seconds at 6/min = 9 credits
      expect((await s.accounts.getUser('u1')).balance).to.equal('991.0000');
      expect(await ledgerSum('u1')).to.equal('991.0000');
    });
  });

  describe('row locks (real Postgres: PGlite has one connection, so no second transaction can hold a row)', () => {
    let holder: pg.Client;
    beforeEach(async function () {
      if (db.embedded) return this.skip();
      holder = new pg.Client({ connectionString: db.url! });
      await holder.connect();
    });
    afterEach(async () => {
      await holder?.query('ROLLBACK').catch(() => undefined);
      await holder?.end();
    });

    /** Resolves once a backend of this database waits for a lock; fails if `work` finishes first. */
    async function waitingForLock(work: Promise<unknown>): Promise<void> {
      let done = false;
      void work.then(
        () => (done = true),
        () => (done = true),
      );
      const deadline = Date.now() + 5000;
      for (;;) {
        const [{ n }] = await db.ds.query(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`);
        if (n > 0) return;
        if (done) throw new Error('finished without waiting for the row held elsewhere');
        if (Date.now() > deadline) throw new Error('nothing waited for a lock within 5 s');
        await new Promise((r) => setTimeout(r, 10));
      }
    }

    it('settles against the balance a transaction holding the user row commits (a top-up), never over it', async () => {
      const { chatId } = await givenActiveChat({ free: 0, balance: '10', rate: '6' });
      await holder.query('BEGIN');
      await holder.query(`SELECT 1 FROM users WHERE id = 'u1' FOR UPDATE`);
      // a command waits for the row, up to its lock timeout
      const settling = s.engine.settleBatch([{ chatId, presence: present(T0) }], at(10), { lockTimeoutMs: 5000 });
      await waitingForLock(settling);
      await holder.query(`UPDATE users SET balance = balance + 1 WHERE id = 'u1'`);
      await holder.query('COMMIT');
      // 10 s at 0.1 a second from the 11 credits committed meanwhile
      expect(ok((await settling)[0]).meter.balance).to.equal('10.0000');
      expect((await s.accounts.getUser('u1')).balance).to.equal('10.0000');
    });

    it('gives a command up after its lock timeout, billing nothing', async () => {
      const { chatId } = await givenActiveChat({ free: 0, balance: '10', rate: '6' });
      await holder.query('BEGIN');
      await holder.query(`SELECT 1 FROM users WHERE id = 'u1' FOR UPDATE`);
      const err = await s.engine.settleBatch([{ chatId, presence: present(T0) }], at(10), { lockTimeoutMs: 200 }).catch((e) => e);
      expect(err?.driverError?.code, String(err)).to.equal('55P03');
      await holder.query('COMMIT');
      expect((await record(chatId)).duration).to.equal(0);
    });

    it('tops up on the balance a settlement holding the user row commits, never over it', async () => {
      await s.accounts.putUser('u1', { balance: '10' });
      await holder.query('BEGIN');
      await holder.query(`SELECT 1 FROM users WHERE id = 'u1' FOR NO KEY UPDATE`);
      const topping = s.engine.topUp('u1', '2', 'k1');
      await waitingForLock(topping);
      await holder.query(`UPDATE users SET balance = balance - 1 WHERE id = 'u1'`);
      await holder.query('COMMIT');
      expect((await topping).balance).to.equal('11.0000');
      expect((await s.accounts.getUser('u1')).balance).to.equal('11.0000');
    });

    for (const [table, where] of [
      ['users', `id = 'u1'`],
      ['free_time_allowances', `user_id = 'u1'`],
      ['chats', `id = 'c1'`],
      ['conversation_time_records', `chat_id = 'c1'`],
    ] as const) {
      it(`reports a chat busy, billing nothing, to a tick while another transaction holds its row of ${table}, and settles the rest`, async () => {
        const { chatId } = await givenActiveChat({ free: 0, balance: '10', rate: '6' });
        await givenActiveChat({ chatId: 'c2', userId: 'u2', advisorId: 'a2', free: 0, balance: '10', rate: '6' });
        const items = [
          { chatId, presence: present(T0) },
          { chatId: 'c2', presence: present(T0) },
        ];
        await holder.query('BEGIN');
        await holder.query(`SELECT 1 FROM ${table} WHERE ${where} FOR NO KEY UPDATE`);
        // a tick never waits for a lock: were it to, the lock timeout fails this batch at once
        const out = await s.engine.settleBatch(items, at(10), { skipLocked: true, lockTimeoutMs: 1000 });
        const busy = out.find((o) => o.chatId === chatId);
        expect(busy?.ok === false && busy.error).to.be.instanceOf(BusyError).with.property('message', 'chat c1 is being settled elsewhere');
        expect(ok(out.find((o) => o.chatId === 'c2')).meter.durationSeconds).to.equal(10);
        await holder.query('COMMIT');
        const [later] = await s.engine.settleBatch([{ chatId, presence: present(T0) }], at(10), { skipLocked: true });
        expect(ok(later).meter).to.include({ durationSeconds: 10, balance: '9.0000' });
      });
    }
  });

  describe('out of credits', () => {
    it('ends the chat with balance exactly 0 when the balance runs out on a second boundary', async () => {
      const { chatId } = await givenActiveChat({ free: 0, balance: '1', rate: '6' });
      ok((await s.engine.settleBatch([{ chatId, presence: present(T0) }], at(5)))[0]);
      const out = ok((await s.engine.settleBatch([{ chatId, presence: present(T0, at(15)) }], at(20)))[0]);
      expect(out.ended).to.equal('out_of_credits');
      expect(out.meter).to.include({ state: 'ended', durationSeconds: 10, creditsUsed: '1.0000', balance: '0.0000' });
      expect(await record(chatId)).to.include({ is_active: false, end_reason: 'out_of_credits' });
      expect(await ledgerSum('u1')).to.equal('0.0000');
    });

    it('leaves what one second cannot pay, never going below zero', async () => {
      const { chatId } = await givenActiveChat({ free: 2, balance: '0.25', rate: '6' });
      const out = ok((await s.engine.settleBatch([{ chatId, presence: present(T0) }], at(10)))[0]);
      // 2 free seconds, then 2 paid at 0.1 each; 0.05 cannot pay a third
      expect(out.ended).to.equal('out_of_credits');
      expect(out.meter).to.include({ durationSeconds: 4, freeSecondsUsed: 2, creditsUsed: '0.2000', balance: '0.0500' });
    });

    it('warns of a low balance once, and again after a top-up falls back below the threshold', async () => {
      const { chatId } = await givenActiveChat({ free: 0, balance: '10', rate: '6' });
      // 10 credits at 0.1/s = 100 s affordable; the threshold is 60 s
      const warns: boolean[] = [];
      for (const t of [30, 41, 45]) warns.push(ok((await s.engine.settleBatch([{ chatId, presence: present(T0, at(t)) }], at(t)))[0]).lowBalance);
      expect(warns).to.deep.equal([false, true, false]);
      await s.engine.topUp('u1', '5', 'k1');
      const after = ok((await s.engine.settleBatch([{ chatId, presence: present(T0, at(46)) }], at(46)))[0]);
      expect(after.lowBalance).to.equal(false);
      expect(after.meter.secondsAffordable).to.be.greaterThan(60);
      const again = ok((await s.engine.settleBatch([{ chatId, presence: present(T0, at(100)) }], at(100)))[0]);
      expect(again.lowBalance).to.equal(true);
    });
  });

  describe('commands', () => {
    it('refuses to pause a pending chat and to start an ended one', async () => {
      await s.accounts.putUser('u1', { balance: '1' });
      await s.accounts.putAdvisor('a1', { ratePerMinute: '1' });
      await s.accounts.createChat({ id: 'p', userId: 'u1', advisorId: 'a1' });
      await s.engine.initializeTimeTrackingForChat('u1', 'a1', 'p');
      const [paused] = await s.engine.settleBatch([{ chatId: 'p', presence: null, command: { kind: 'pause' } }], at(1));
      expect(paused).to.include({ ok: false });
      ok((await s.engine.settleBatch([{ chatId: 'p', presence: null, command: { kind: 'end', reason: 'ended_by_platform' } }], at(2)))[0]);
      const [restart] = await s.engine.settleBatch([{ chatId: 'p', presence: null, command: { kind: 'start' } }], at(3));
      expect(restart.ok).to.equal(false);
      expect(!restart.ok && restart.error).to.be.instanceOf(ConflictError);
    });
  });

  describe('top-ups', () => {
    it('adds once per idempotency key and refuses the same key with another amount', async () => {
      await s.accounts.putUser('u1', { balance: '1.5' });
      const first = await s.engine.topUp('u1', '2.25', 'order-1');
      const again = await s.engine.topUp('u1', '2.25', 'order-1');
      expect(first).to.include({ balance: '3.7500', replayed: false });
      expect(again).to.include({ replayed: true });
      expect(again.entry.id).to.equal(first.entry.id);
      expect(await s.engine.topUp('u1', '3', 'order-1').catch((e) => e))
        .to.be.instanceOf(ConflictError)
        .with.property('message', 'idempotency key order-1 was used for a top-up of 2.2500');
      expect((await s.accounts.getUser('u1')).balance).to.equal('3.7500');
      expect(await ledgerSum('u1')).to.equal('3.7500');
      expect(await s.engine.topUp('ghost', '1', 'k').catch((e) => e))
        .to.be.instanceOf(NotFoundError)
        .with.property('message', 'user ghost does not exist');
    });

    it('answers a top-up with its ledger entry', async () => {
      await s.accounts.putUser('u1', { balance: '1' });
      const before = Date.now();
      const { entry } = await s.engine.topUp('u1', '2', 'order-9');
      const [row] = await db.ds.query(`SELECT id::text FROM ledger_entries WHERE idempotency_key = 'order-9'`);
      expect(entry).to.deep.include({ id: row.id, type: 'topup', amount: '2.0000', balanceAfter: '3.0000', chatId: null, idempotencyKey: 'order-9' });
      expect(Date.parse(entry.createdAt)).to.be.within(before - 5000, Date.now() + 5000);
    });

    it('refuses a top-up of nothing, and one that would take the balance past the largest amount', async () => {
      await s.accounts.putUser('u1', { balance: '1' });
      expect(await s.engine.topUp('u1', '0', 'zero').catch((e) => e))
        .to.be.instanceOf(BadRequestError)
        .with.property('message', 'a top-up amount must be positive');
      // up to exactly the largest amount is fine; a unit more is not
      expect((await s.engine.topUp('u1', '999999999999998.9999', 'max')).balance).to.equal('999999999999999.9999');
      const over = await s.engine.topUp('u1', '0.0001', 'over').catch((e) => e);
      expect(over).to.be.instanceOf(DomainError).with.property('code', 'unprocessable');
      expect(over.message).to.equal('a balance may not exceed 999999999999999.9999');
      expect((await s.accounts.getUser('u1')).balance).to.equal('999999999999999.9999');
      expect(await ledgerSum('u1')).to.equal('999999999999999.9999');
    });

    it('starts a new charge entry after a top-up so the ledger reads in order', async () => {
      const { chatId } = await givenActiveChat({ free: 0, balance: '10', rate: '6' });
      ok((await s.engine.settleBatch([{ chatId, presence: present(T0) }], at(5)))[0]);
      ok((await s.engine.settleBatch([{ chatId, presence: present(T0) }], at(10)))[0]);
      await s.engine.topUp('u1', '1', 'k');
      ok((await s.engine.settleBatch([{ chatId, presence: present(T0) }], at(12)))[0]);
      const entries = await db.ds.query(`SELECT type, amount, balance_after FROM ledger_entries WHERE user_id = 'u1' ORDER BY id`);
      expect(entries).to.deep.equal([
        { type: 'topup', amount: '10.0000', balance_after: '10.0000' },
        { type: 'charge', amount: '1.0000', balance_after: '9.0000' },
        { type: 'topup', amount: '1.0000', balance_after: '10.0000' },
        { type: 'charge', amount: '0.2000', balance_after: '9.8000' },
      ]);
    });
  });

  describe('webhook events (SPEC 8), with an outbox', () => {
    it('records each event in the change\'s transaction and announces it once committed; a replayed top-up records none', async () => {
      let announced = 0;
      const engine = new SettlementService(db.ds, testPolicy, { newId: randomUUID, recorded: () => void announced++ });
      await s.accounts.putUser('u1', { balance: '100' });
      await s.accounts.putAdvisor('a1', { ratePerMinute: '6', freeSeconds: 0 });
      await s.accounts.createChat({ id: 'c1', userId: 'u1', advisorId: 'a1' });
      await engine.initializeTimeTrackingForChat('u1', 'a1', 'c1');
      ok((await engine.settleBatch([{ chatId: 'c1', presence: present(T0), command: { kind: 'start' } }], T0))[0]);
      expect(announced).to.equal(1);
      // a tick with nothing to report announces nothing
      ok((await engine.settleBatch([{ chatId: 'c1', presence: present(T0) }], at(1)))[0]);
      expect(announced).to.equal(1);
      await engine.topUp('u1', '2', 'order-1');
      expect(announced).to.equal(2);
      await engine.topUp('u1', '2', 'order-1');
      expect(announced, 'a replay records nothing').to.equal(2);
      const events: Array<{ type: string }> = await db.ds.query(`SELECT type FROM webhook_events ORDER BY seq`);
      expect(events.map((e) => e.type)).to.deep.equal(['chat.started', 'credits.added']);
    });
  });

  describe('reads and empty batches', () => {
    it('settles an empty batch to nothing, and reads no meter for a chat without a record', async () => {
      expect(await s.engine.settleBatch([], at(1))).to.deep.equal([]);
      await s.accounts.putUser('u1', { balance: '1' });
      await s.accounts.putAdvisor('a1', { ratePerMinute: '6' });
      await s.accounts.createChat({ id: 'p', userId: 'u1', advisorId: 'a1' });
      expect(await s.engine.readMeter('p', null, at(1))).to.equal(null);
      expect(await s.engine.readMeter('nope', null, at(1))).to.equal(null);
      // a tick skips a chat nobody joined yet (no record), and says nothing of it
      expect(await s.engine.settleBatch([{ chatId: 'p', presence: null }], at(1), { skipLocked: true })).to.deep.equal([]);
    });
  });

  describe('the fence (a cluster\'s settlement leases)', () => {
    it('settles only the chats of shards it still holds at their epochs, and bills nothing of the others', async function () {
      if (db.embedded) return this.skip(); // the fence locks lease rows FOR KEY SHARE: a Postgres server's
      await givenActiveChat({ chatId: 'c1', free: 0, balance: '10', rate: '6' });
      await s.accounts.createChat({ id: 'c2', userId: 'u1', advisorId: 'a1' });
      await s.engine.initializeTimeTrackingForChat('u1', 'a1', 'c2');
      ok((await s.engine.settleBatch([{ chatId: 'c2', presence: present(T0), command: { kind: 'start' } }], T0))[0]);
      expect(shardOf('c1')).to.not.equal(shardOf('c2'));
      await db.ds.query(`UPDATE settlement_shards SET owner = 'n1', epoch = 7, expires_at = clock_timestamp() + interval '1 minute' WHERE shard = ANY($1::int[])`, [
        [shardOf('c1'), shardOf('c2')],
      ]);
      const items = [
        { chatId: 'c1', presence: present(T0) },
        { chatId: 'c2', presence: present(T0) },
      ];
      // c1's shard at its epoch; c2's at an epoch another node has since replaced
      const out = await s.engine.settleBatch(items, at(10), { fence: { owner: 'n1', epochs: new Map([[shardOf('c1'), '7'], [shardOf('c2'), '6']]) } });
      expect(ok(out.find((o) => o.chatId === 'c1')).meter.durationSeconds).to.equal(10);
      const lost = out.find((o) => o.chatId === 'c2');
      expect(lost?.ok === false && lost.error)
        .to.be.instanceOf(LeaseLostError)
        .with.property('message', `this node no longer holds the lease of shard ${shardOf('c2')}`);
      expect((await record('c2')).duration, 'nothing billed under a lost lease').to.equal(0);
      // a fence that holds none of them refuses the whole batch
      const none = await s.engine.settleBatch(items, at(20), { fence: { owner: 'n1', epochs: new Map() } });
      expect(none.map((o) => [o.chatId, o.ok]).sort()).to.deep.equal([['c1', false], ['c2', false]]);
      expect([(await record('c1')).duration, (await record('c2')).duration]).to.deep.equal([10, 0]);
    });
  });
});
