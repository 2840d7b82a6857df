import { expect } from 'chai';
import { ConflictError, ForbiddenError, NotFoundError } from '../server/errors.js';
import type { SettleOutcome } from '../server/metering/settlement.js';
import { freshDatabase, type TestDb } from './support/db.js';
import { T0, at, left, present, services } from './support/fixtures.js';

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
      expect(err).to.be.instanceOf(NotFoundError);
      err = await s.engine.initializeTimeTrackingForChat('u2', 'a1', 'A').catch((e) => e);
      expect(err).to.be.instanceOf(ForbiddenError);
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
      expect(await s.engine.topUp('u1', '3', 'order-1').catch((e) => e)).to.be.instanceOf(ConflictError);
      expect((await s.accounts.getUser('u1')).balance).to.equal('3.7500');
      expect(await ledgerSum('u1')).to.equal('3.7500');
      expect(await s.engine.topUp('ghost', '1', 'k').catch((e) => e)).to.be.instanceOf(NotFoundError);
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
});
