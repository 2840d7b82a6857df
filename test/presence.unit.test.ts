import { expect } from 'chai';
import { LocalPresence, type PresenceTiming } from '../server/metering/presence.js';
import { presenceContract } from './support/presence-contract.js';
import { SimPresenceStore } from './support/sim-presence.js';

const timing: PresenceTiming = { heartbeatIntervalMs: 10_000, heartbeatGraceMs: 5000 };

presenceContract('LocalPresence', async () => new LocalPresence(timing));

// the simulation's shared store (test/simulation.int.test.ts) keeps the same contract
presenceContract('simulated shared presence', async () => new SimPresenceStore(timing).view('n1'));

describe('simulated shared presence', () => {
  it('fails every call while unreachable, and comes back with or without what it held', async () => {
    const store = new SimPresenceStore(timing);
    const a = store.view('a');
    await a.join('c', 's1', 0);
    store.lose();
    let failed = 0;
    for (const op of [() => a.join('c', 's2', 1), () => a.span('c', 1), () => a.leave('c', 's1', 1)]) await op().catch(() => failed++);
    expect(failed).to.equal(3);
    store.restore();
    expect(await a.span('c', 2)).to.deep.include({ since: 0 });
    store.restore(true);
    expect(await a.span('c', 2)).to.equal(null);
  });

  it('ends a dead node\'s sockets at the instant given, and only that node\'s', async () => {
    const store = new SimPresenceStore(timing);
    await store.view('a').join('c', 's1', 0);
    await store.view('b').join('d', 's2', 0);
    expect(await store.view('b').releaseNode('a', 2000)).to.deep.equal(['c']);
    expect((await store.view('b').span('c', 3000))!.until).to.equal(2000);
    expect((await store.view('b').span('d', 3000))!.until).to.equal(15_000);
  });
});
