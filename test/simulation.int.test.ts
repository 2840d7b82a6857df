/**
 * The deterministic simulation (issue 10, item 1; docs/RELIABILITY.md): seeded runs of
 * several logical nodes over one database, with crashes, stalls, Redis loss and failed
 * queries, each checked against what its users did. A failure prints its seed and
 * path; `SIM_SEED=<seed> SIM_PATH=<path> npx mocha test/simulation.int.test.ts`
 * replays exactly that run, with its story. `npm run sim` runs a longer campaign.
 */
import { expect } from 'chai';
import fc from 'fast-check';
import { freshDatabase, type TestDb } from './support/db.js';
import { type Scenario, type SimEvent, SIM, Simulation, installBilledLog } from './support/simulation.js';

/** The CI budget: 120 runs, 50 s on the quiet 2-core machine (0.4 s a run), 90 s when it is loaded. */
const RUNS = Number(process.env.SIM_RUNS ?? 120);

const node = fc.nat({ max: 5 });
const event: fc.Arbitrary<SimEvent> = fc.oneof(
  { weight: 6, arbitrary: fc.record({ k: fc.constant('join' as const), chat: fc.nat({ max: 5 }), node, late: fc.boolean() }) },
  { weight: 3, arbitrary: fc.record({ k: fc.constant('leave' as const), tab: fc.nat({ max: 9 }) }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('silence' as const), tab: fc.nat({ max: 9 }) }) },
  {
    weight: 6,
    arbitrary: fc.record({
      k: fc.constant('command' as const),
      chat: fc.nat({ max: 5 }),
      node,
      cmd: fc.constantFrom('start' as const, 'start' as const, 'pause' as const, 'resume' as const, 'end' as const),
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({ k: fc.constant('topup' as const), user: fc.nat({ max: 2 }), node, amount: fc.constantFrom('0.1', '1', '5'), key: fc.nat({ max: 3 }) }),
  },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('crash' as const), node }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('restart' as const) }) },
  // a stall shorter than a lease, past it, and past the three leases that get a node taken for dead
  { weight: 2, arbitrary: fc.record({ k: fc.constant('stall' as const), node, ms: fc.constantFrom(700, 2500, 6000) }) },
  { weight: 1, arbitrary: fc.record({ k: fc.constant('redisDown' as const), ms: fc.constantFrom(1500, 4000), wiped: fc.boolean() }) },
  {
    weight: 2,
    arbitrary: fc.record({ k: fc.constant('pgFault' as const), node, when: fc.constantFrom('before' as const, 'after' as const), nth: fc.nat({ max: 6 }) }),
  },
);

export const scenario: fc.Arbitrary<Scenario> = fc
  .record({
    nodes: fc.integer({ min: 2, max: 3 }),
    skews: fc.array(fc.integer({ min: -40, max: 40 }), { minLength: 4, maxLength: 4 }),
    users: fc.array(fc.constantFrom('0.2', '2', '50'), { minLength: 1, maxLength: 3 }),
    advisors: fc.array(fc.record({ rate: fc.constantFrom('0', '0.6', '6'), freeSeconds: fc.constantFrom(0, 4, 30) }), { minLength: 2, maxLength: 2 }),
    chats: fc.array(fc.record({ user: fc.nat({ max: 2 }), advisor: fc.nat({ max: 1 }) }), { minLength: 1, maxLength: 4 }),
    events: fc.array(fc.record({ at: fc.integer({ min: 0, max: SIM.durationMs - 1 }), e: event }), { minLength: 4, maxLength: 24 }),
    warm: fc.boolean(),
  })
  .map(({ warm, ...sc }) => {
    const chats = sc.chats.map((c) => ({ user: c.user % sc.users.length, advisor: c.advisor }));
    // most runs start billing at once: the first chat joined on one node and started from another
    const warmUp: Scenario['events'] = warm
      ? [
          { at: 0, e: { k: 'join', chat: 0, node: 0, late: false } },
          { at: 100, e: { k: 'command', chat: 0, node: 1, cmd: 'start' } },
        ]
      : [];
    return { ...sc, chats, events: [...warmUp, ...sc.events].sort((a, b) => a.at - b.at) };
  });

describe('the deterministic simulation: logical nodes over one database, with faults', function () {
  this.timeout(30 * 60_000);
  let db: TestDb;

  before(async function () {
    db = await freshDatabase();
    if (db.embedded) this.skip(); // one connection: leases and fences need real Postgres
    await installBilledLog(db.ds);
  });
  after(() => db?.close());

  it(`keeps every invariant, bills no second twice and loses none the design owes, over ${process.env.SIM_PATH ? 'one replayed run' : `${RUNS} seeded runs`}`, async () => {
    let runs = 0;
    const started = Date.now();
    const seen: Record<string, number> = {};
    const property = fc.asyncProperty(scenario, async (sc) => {
      runs++;
      const sim = new Simulation(db.ds, sc);
      const problems = await sim.run();
      // runs that saw each thing (a guard against a generator that stops exercising it)
      for (const [k, v] of Object.entries(sim.seen)) seen[k] = (seen[k] ?? 0) + Number(v > 0);
      if (process.env.SIM_STORY) console.log(sim.story());
      if (problems.length) throw new Error(`${problems.join('\n')}\n--- the run ---\n${sim.story()}`);
    });
    const seed = process.env.SIM_SEED ? Number(process.env.SIM_SEED) : Date.now() ^ (Math.random() * 0x7fffffff);
    const details = await fc.check(property, { numRuns: process.env.SIM_PATH ? 1 : RUNS, seed, path: process.env.SIM_PATH, endOnFailure: !process.env.SIM_SHRINK });
    const seconds = ((Date.now() - started) / 1000).toFixed(1);
    const saw = Object.entries(seen).map(([k, v]) => `${k} ${v}`).join(', ');
    console.log(`      simulation: ${runs} runs in ${seconds} s (${(Number(seconds) / Math.max(1, runs)).toFixed(2)} s a run), seed ${seed}; runs that saw: ${saw}`);
    if (details.failed) {
      const replay = `SIM_SEED=${details.seed} SIM_PATH=${details.counterexamplePath} npx mocha test/simulation.int.test.ts`;
      throw new Error(`simulation failed (seed ${details.seed}, path ${details.counterexamplePath}); replay it with:\n  ${replay}\n${String(details.errorInstance instanceof Error ? details.errorInstance.message : details.errorInstance)}`);
    }
    expect(runs).to.be.at.least(1);
    if (process.env.SIM_PATH || runs < 100) return;
    for (const k of ['billed', 'fenced', 'departed', 'pgFaults', 'outages', 'stalls', 'crashes']) expect(seen[k], `runs that saw ${k}`).to.be.greaterThan(0);
  });

  it('replays a run exactly: one scenario run twice tells the same story and leaves the same rows', async () => {
    for (const sc of fc.sample(scenario, { numRuns: 3, seed: 20261202 })) {
      const [a, b] = [new Simulation(db.ds, sc), new Simulation(db.ds, sc)];
      expect(await a.run()).to.deep.equal([]);
      expect(await b.run()).to.deep.equal([]);
      expect(b.story()).to.equal(a.story());
      expect(b.digest).to.equal(a.digest);
    }
  });
});
