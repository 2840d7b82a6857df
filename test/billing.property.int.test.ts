import * as chai from 'chai';
import { expect } from 'chai';
import fc from 'fast-check';
import { ConflictError } from '../server/errors.js';
import type { Command, Policy } from '../server/metering/rules.js';
import type { SettleItem, SettleOutcome } from '../server/metering/settlement.js';
import { freshDatabase, type TestDb } from './support/db.js';
import { T0, at, present, services } from './support/fixtures.js';
import {
  type ModelCommand,
  type ModelPolicy,
  type ModelState,
  type PresenceChange,
  type Snapshot,
  type StepResult,
  changePresence,
  command,
  createChat,
  newModel,
  presenceOf,
  replacesSpan,
  settle,
  snapshot,
  topUp,
  units,
} from './support/reference-model.js';

/** A short abandon timeout so random runs reach it. */
const policy: Policy = { abandonTimeoutMs: 30_000, lowBalanceSeconds: 60 };
const modelPolicy: ModelPolicy = { graceMs: 15_000, abandonMs: policy.abandonTimeoutMs, lowBalanceSeconds: policy.lowBalanceSeconds };
const USER = 'u';
const MAX_CHATS = 4;

type Action =
  | { k: 'create'; advisor: number }
  | { k: ModelCommand; chat: number }
  | { k: 'join'; chat: number; aheadMs: number }
  | { k: Exclude<PresenceChange, 'join'>; chat: number }
  | { k: 'advance'; ms: number }
  | { k: 'topup'; key: number; amount: string }
  | { k: 'settle'; chat: number }
  | { k: 'settleAll'; order: number[]; repeatFirst: boolean }
  | { k: 'concurrent'; batches: Array<Array<{ chat: number; cmd: ModelCommand | null }>>; topup: { key: number; amount: string } | null };

interface Scenario {
  balance: string;
  advisors: Array<{ rate: string; freeSeconds: number }>;
  firstChats: number[];
  actions: Action[];
}

const chat = fc.nat({ max: MAX_CHATS - 1 });
const topup = fc.record({ key: fc.nat({ max: 3 }), amount: fc.constantFrom('0.0001', '0.5', '1', '5') });
const action: fc.Arbitrary<Action> = fc.oneof(
  { weight: 1, arbitrary: fc.record({ k: fc.constant('create' as const), advisor: fc.nat({ max: 1 }) }) },
  { weight: 3, arbitrary: fc.record({ k: fc.constant('start' as const), chat }) },
  { weight: 2, arbitrary: fc.record({ k: fc.constantFrom('pause' as const, 'resume' as const), chat }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('end' as const), chat }) },
  {
    weight: 2,
    // now and then the join is stamped after the instant a settlement already read (a race, or clock skew)
    arbitrary: fc.record({ k: fc.constant('join' as const), chat, aheadMs: fc.oneof({ weight: 3, arbitrary: fc.constant(0) }, fc.integer({ min: 1, max: 3000 })) }),
  },
  { weight: 2, arbitrary: fc.record({ k: fc.constant('heartbeat' as const), chat }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constantFrom('leave' as const, 'forget' as const), chat }) },
  { weight: 6, arbitrary: fc.record({ k: fc.constant('advance' as const), ms: fc.integer({ min: 0, max: 20_000 }) }) },
  {
    weight: 1,
    arbitrary: topup.map((t) => ({ k: 'topup' as const, ...t })),
  },
  { weight: 3, arbitrary: fc.record({ k: fc.constant('settle' as const), chat }) },
  {
    weight: 2,
    arbitrary: fc.record({
      k: fc.constant('settleAll' as const),
      order: fc.shuffledSubarray([0, 1, 2, 3], { minLength: MAX_CHATS }),
      repeatFirst: fc.boolean(),
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      k: fc.constant('concurrent' as const),
      batches: fc.array(
        fc.array(fc.record({ chat, cmd: fc.option(fc.constantFrom('pause' as const, 'resume' as const, 'end' as const), { freq: 8, nil: null }) }), {
          minLength: 1,
          maxLength: 4,
        }),
        { minLength: 2, maxLength: 3 },
      ),
      // a top-up racing the settlements
      topup: fc.option(topup, { freq: 3, nil: null }),
    }),
  },
);

/** Joins and starts the first chats at once, so most runs bill from the first step. */
const warmUp: Action[] = [0, 1].flatMap((chat) => [{ k: 'join' as const, chat, aheadMs: 0 }, { k: 'start' as const, chat }]);

const scenario: fc.Arbitrary<Scenario> = fc.record({
  balance: fc.constantFrom('0', '0.5', '1', '3', '25'),
  advisors: fc.array(
    fc.record({ rate: fc.constantFrom('0', '1', '2.5', '6', '0.0001'), freeSeconds: fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 60 })) }),
    { minLength: 2, maxLength: 2 },
  ),
  firstChats: fc.array(fc.nat({ max: 1 }), { minLength: 2, maxLength: 2 }),
  actions: fc
    .tuple(fc.boolean(), fc.array(action, { minLength: 12, maxLength: 25 }))
    .map(([warm, actions]) => (warm ? [...warmUp, ...actions].slice(0, 25) : actions)),
});

const json = (x: unknown) => JSON.stringify(x, (_, v) => (typeof v === 'bigint' ? String(v) : v));
/** JSON with object keys sorted, to compare snapshots whatever order their keys came in. */
const canonical = (x: unknown) =>
  JSON.stringify(x, (_, v) =>
    v && typeof v === 'object' && !Array.isArray(v) ? Object.fromEntries(Object.entries(v).sort(([a], [b]) => (a < b ? -1 : 1))) : v,
  );

describe('billing against a reference model (property, real database)', function () {
  this.timeout(120_000);
  // a counterexample is useless if its diff is cut to "{ balance: '0.0001', …(2) }"
  before(() => {
    chai.config.truncateThreshold = 0;
  });
  after(() => {
    chai.config.truncateThreshold = 40;
  });
  let db: TestDb;

  before(async () => {
    db = await freshDatabase();
  });
  after(() => db.close());

  /** What the database holds, in the model's comparable shape. */
  async function dbSnapshot(): Promise<Snapshot> {
    const [user] = await db.ds.query(`SELECT balance::text, low_balance_warned FROM users WHERE id = $1`, [USER]);
    const allowances: Array<{ advisor_id: string; used_seconds: number }> = await db.ds.query(
      `SELECT advisor_id, used_seconds FROM free_time_allowances WHERE user_id = $1`,
      [USER],
    );
    const chats: Array<{
      id: string;
      status: string;
      paused: boolean;
      end_reason: string | null;
      duration: number;
      free_time_used: number;
      paid_seconds: number;
      credits_used: string;
      low_balance_warned: boolean;
    }> = await db.ds.query(
      `SELECT c.id, c.status, c.paused, c.end_reason, r.duration, r.free_time_used, r.paid_seconds, r.credits_used::text,
              r.low_balance_warned
         FROM chats c JOIN conversation_time_records r ON r.chat_id = c.id`,
    );
    return {
      balance: user.balance,
      lowWarned: user.low_balance_warned,
      allowances: Object.fromEntries(allowances.map((a) => [a.advisor_id, a.used_seconds])),
      chats: Object.fromEntries(
        chats.map((c) => [
          c.id,
          {
            status: c.status,
            paused: c.paused,
            endReason: c.end_reason,
            duration: c.duration,
            free: c.free_time_used,
            paid: c.paid_seconds,
            credits: c.credits_used,
            warned: c.low_balance_warned,
          },
        ]),
      ),
    };
  }

  /** Every invariant of SPEC section 1 that the database must hold at every moment. */
  async function expectInvariants(m: ModelState, step: string): Promise<void> {
    const pairs: Array<{ advisor_id: string; allocation_seconds: number; used_seconds: number; free_sum: number }> = await db.ds.query(
      `SELECT f.advisor_id, f.allocation_seconds, f.used_seconds, coalesce(sum(r.free_time_used), 0)::int AS free_sum
         FROM free_time_allowances f
         LEFT JOIN conversation_time_records r ON r.user_id = f.user_id AND r.advisor_id = f.advisor_id
        GROUP BY f.user_id, f.advisor_id, f.allocation_seconds, f.used_seconds`,
    );
    for (const p of pairs) {
      expect(p.free_sum, `${step}: rule 2, sum of free seconds of pair ${p.advisor_id}`).to.equal(p.used_seconds);
      expect(p.used_seconds, `${step}: rule 2, allowance ${p.advisor_id} within its allocation`).to.be.at.most(p.allocation_seconds);
    }

    const [ledger] = await db.ds.query(
      `SELECT u.balance::text AS balance,
              coalesce(sum(l.amount) FILTER (WHERE l.type = 'topup'), 0)::text AS topups,
              coalesce(sum(l.amount) FILTER (WHERE l.type = 'charge'), 0)::text AS charges,
              coalesce(sum(l.amount) FILTER (WHERE l.type = 'refund'), 0)::text AS refunds
         FROM users u LEFT JOIN ledger_entries l ON l.user_id = u.id
        WHERE u.id = $1 GROUP BY u.id, u.balance`,
      [USER],
    );
    expect(units(ledger.balance), `${step}: rule 6, balance = topups - charges + refunds`).to.equal(
      units(ledger.topups) - units(ledger.charges) + units(ledger.refunds),
    );
    expect(units(ledger.balance) >= 0n, `${step}: rule 4, balance never below zero`).to.equal(true);
    const modelTopups = Object.values(m.topups).reduce((a, b) => a + b, 0n);
    expect(units(ledger.topups), `${step}: top-ups once per key`).to.equal(modelTopups);

    const records: Array<{
      id: string;
      status: string;
      n: number;
      is_active: boolean | null;
      credits_used: string | null;
      expected_credits: string | null;
      charged: string;
    }> = await db.ds.query(
      `SELECT c.id, c.status,
              (SELECT count(*)::int FROM conversation_time_records x WHERE x.chat_id = c.id) AS n,
              r.is_active, r.credits_used::text,
              round(r.paid_seconds * r.rate_per_minute / 60, 4)::text AS expected_credits,
              (SELECT coalesce(sum(l.amount), 0)::text FROM ledger_entries l WHERE l.chat_id = c.id AND l.type = 'charge') AS charged
         FROM chats c LEFT JOIN conversation_time_records r ON r.chat_id = c.id
        ORDER BY c.id`,
    );
    expect(records.map((r) => r.id), `${step}: the chats`).to.deep.equal(m.chats.map((c) => c.id).sort());
    for (const r of records) {
      expect(r.n, `${step}: rule 7, exactly one record for chat ${r.id}`).to.equal(1);
      expect(r.is_active, `${step}: record of chat ${r.id} active exactly while the chat is not ended`).to.equal(r.status !== 'ended');
      expect(units(r.charged), `${step}: rule 6, charges of chat ${r.id} = its creditsUsed`).to.equal(units(r.credits_used!));
      expect(r.credits_used, `${step}: rule 3, creditsUsed of chat ${r.id} from cumulative paid seconds`).to.equal(r.expected_credits);
    }
  }

  it('bills exactly what the reference model bills, and keeps every invariant, for random sequences', async () => {
    let runs = 0;
    // a guard against a generator that stops exercising billing: some runs must bill
    const coverage = { paid: 0, free: 0 };
    await fc.assert(
      fc.asyncProperty(scenario, async (sc) => {
        runs++;
        await db.reset();
        const { accounts, engine } = services(db.ds, policy);
        const m = newModel(sc.balance);
        let now = T0;
        const log: string[] = [];
        const step = () => `after [${log.join(', ')}]`;

        await accounts.putUser(USER, { balance: sc.balance });
        for (const [i, a] of sc.advisors.entries()) await accounts.putAdvisor(`a${i}`, { ratePerMinute: a.rate, freeSeconds: a.freeSeconds });

        const create = async (advisor: number) => {
          const id = `c${m.chats.length}`;
          const advisorId = `a${advisor}`;
          await accounts.createChat({ id, userId: USER, advisorId });
          // rule 7: concurrent initializations yield the one record
          const records = await Promise.all([0, 1, 2].map(() => engine.initializeTimeTrackingForChat(USER, advisorId, id)));
          expect(new Set(records.map((r) => r.id)).size, `${step()}: one record for ${id}`).to.equal(1);
          createChat(m, id, advisorId, sc.advisors[advisor]!.rate, sc.advisors[advisor]!.freeSeconds);
        };
        const item = (i: number, cmd?: ModelCommand | null): SettleItem => {
          const it: SettleItem = { chatId: m.chats[i]!.id, presence: presenceOf(m, i) };
          if (cmd) it.command = toCommand(cmd);
          return it;
        };
        const ix = (n: number) => n % m.chats.length;
        const engineTopUp = (t: { key: number; amount: string }) =>
          engine.topUp(USER, t.amount, `order-${t.key}`).then(
            (r) => (r.replayed ? 'replayed' : 'added'),
            (e: unknown) => (e instanceof ConflictError ? 'conflict' : Promise.reject(e)),
          );

        for (const c of sc.firstChats) await create(c);

        for (const a of sc.actions) {
          log.push(json(a));
          switch (a.k) {
            case 'create':
              if (m.chats.length < MAX_CHATS) await create(a.advisor);
              break;
            case 'start':
            case 'pause':
            case 'resume':
            case 'end': {
              const i = ix(a.chat);
              const [out] = await engine.settleBatch([item(i, a.k)], now);
              const want = command(m, modelPolicy, i, a.k, now);
              expectOutcome(out, want, step());
              break;
            }
            case 'join':
            case 'heartbeat':
            case 'leave':
            case 'forget': {
              const i = ix(a.chat);
              if (replacesSpan(m, i, a.k, now)) {
                // the realtime layer settles with the old span before it is replaced
                const [out] = await engine.settleBatch([item(i)], now);
                expectOutcome(out, settle(m, modelPolicy, i, now), step());
              }
              changePresence(m, modelPolicy, i, a.k, now, a.k === 'join' ? a.aheadMs : 0);
              break;
            }
            case 'advance':
              now += a.ms;
              break;
            case 'topup': {
              const got = await engineTopUp(a);
              expect(got, `${step()}: top-up`).to.equal(topUp(m, `order-${a.key}`, a.amount));
              break;
            }
            case 'settle': {
              const i = ix(a.chat);
              const [out] = await engine.settleBatch([item(i)], now);
              expectOutcome(out, settle(m, modelPolicy, i, now), step());
              break;
            }
            case 'settleAll': {
              const order = a.order.filter((i) => i < m.chats.length);
              if (a.repeatFirst) order.push(order[0]!);
              await engine.settleBatch(order.map((i) => item(i)), now);
              for (const i of order) settle(m, modelPolicy, i, now);
              break;
            }
            case 'concurrent': {
              type Job = { settle: Array<{ i: number; cmd: ModelCommand | null }> } | { topup: { key: number; amount: string } };
              const jobs: Job[] = a.batches.map((b) => ({ settle: uniqueBy(b.map((x) => ({ i: ix(x.chat), cmd: x.cmd })), (x) => x.i) }));
              if (a.topup) jobs.push({ topup: a.topup });
              await Promise.all(
                jobs.map((j) => ('settle' in j ? engine.settleBatch(j.settle.map((x) => item(x.i, x.cmd)), now) : engineTopUp(j.topup))),
              );
              // every job locks the user's row first, so they ran one after the other in some
              // order: one of those orders must explain exactly what the database holds
              const got = await dbSnapshot();
              const candidates = permutations(jobs).map((order) => {
                const trial = structuredClone(m);
                for (const j of order) {
                  if ('topup' in j) topUp(trial, `order-${j.topup.key}`, j.topup.amount);
                  else for (const x of j.settle) x.cmd ? command(trial, modelPolicy, x.i, x.cmd, now) : settle(trial, modelPolicy, x.i, now);
                }
                return trial;
              });
              const match = candidates.find((trial) => canonical(snapshot(trial)) === canonical(got));
              expect(got, `${step()}: concurrent jobs billed as some serial order`).to.deep.equal(snapshot(match ?? candidates[0]!));
              Object.assign(m, match!);
              break;
            }
            default: {
              const _exhaustive: never = a;
              throw new Error(`unknown action ${json(_exhaustive)}`);
            }
          }
          await expectInvariants(m, step());
          expect(await dbSnapshot(), `${step()}: database vs model`).to.deep.equal(snapshot(m));
        }
        if (m.chats.some((c) => c.paid > 0)) coverage.paid++;
        if (m.chats.some((c) => c.free > 0)) coverage.free++;
      }),
      // a failure prints its seed and path: PROPERTY_SEED=... PROPERTY_PATH=... replays exactly that case
      { numRuns: Number(process.env.PROPERTY_RUNS ?? 60), seed: process.env.PROPERTY_SEED ? Number(process.env.PROPERTY_SEED) : undefined, path: process.env.PROPERTY_PATH },
    );
    expect(runs).to.be.at.least(1);
    if (process.env.PROPERTY_PATH) return; // a replay of one case: the coverage of a whole run doesn't apply
    expect(coverage.paid, 'runs that billed paid seconds').to.be.greaterThan(0);
    expect(coverage.free, 'runs that billed free seconds').to.be.greaterThan(0);
  });

  it('reports the end a settlement caused, even when it makes the command that triggered it moot', async () => {
    await db.reset();
    const { accounts, engine } = services(db.ds, policy);
    await accounts.putUser(USER, { balance: '1' });
    await accounts.putAdvisor('a0', { ratePerMinute: '6', freeSeconds: 0 });
    await accounts.createChat({ id: 'c0', userId: USER, advisorId: 'a0' });
    await engine.initializeTimeTrackingForChat(USER, 'a0', 'c0');
    await engine.settleBatch([{ chatId: 'c0', presence: present(T0), command: { kind: 'start' } }], T0);
    // 1 credit pays 10 s at 0.1/s; the advisor pauses at 12 s, before any tick settled
    const [paused] = await engine.settleBatch([{ chatId: 'c0', presence: present(T0, at(12)), command: { kind: 'pause' } }], at(12));
    expect(paused, json(paused)).to.include({ ok: true, ended: 'out_of_credits', push: true });
    expect(paused!.ok && paused.meter).to.include({ state: 'ended', durationSeconds: 10, balance: '0.0000' });
    // the next tick finds the chat ended and has nothing new to say: only the outcome above can carry chat:ended
    const [next] = await engine.settleBatch([{ chatId: 'c0', presence: present(T0, at(12)) }], at(13));
    expect(next).to.include({ ok: true, ended: null, push: false });
  });
});

function toCommand(cmd: ModelCommand): Command {
  return cmd === 'end' ? { kind: 'end', reason: 'ended_by_user' } : { kind: cmd };
}

/** A single-chat outcome as the model expects it: refused or not, and the end it caused. */
function expectOutcome(out: SettleOutcome | undefined, want: StepResult, step: string): void {
  if (!out) throw new Error(`${step}: no outcome`);
  expect(out.ok, `${step}: command ${want.refused ? 'refused' : 'accepted'} (${json(out)})`).to.equal(!want.refused);
  if (!out.ok) return;
  expect(out.ended, `${step}: end reason of this step`).to.equal(want.ended);
  expect(out.lowBalance, `${step}: balance:low goes out`).to.equal(want.lowBalance);
  expect(out.meter.secondsAffordable, `${step}: secondsAffordable`).to.equal(want.secondsAffordable);
}

function uniqueBy<T>(xs: T[], key: (x: T) => number): T[] {
  const seen = new Set<number>();
  return xs.filter((x) => !seen.has(key(x)) && (seen.add(key(x)), true));
}

function permutations<T>(xs: T[]): T[][] {
  if (xs.length <= 1) return [xs];
  return xs.flatMap((x, i) => permutations([...xs.slice(0, i), ...xs.slice(i + 1)]).map((rest) => [x, ...rest]));
}
