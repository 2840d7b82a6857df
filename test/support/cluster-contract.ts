import { expect } from 'chai';
import type { Cluster } from '../../server/cluster/cluster.js';
import { eventually } from './server.js';

/** Chat ids spread over every shard. */
export const CHATS = Array.from({ length: 400 }, (_, i) => `chat-${i}`);

/** Makes cluster members; `shared` ones can have several members at once. */
export interface ClusterFactory {
  shared: boolean;
  member(nodeId: string): Promise<Cluster>;
  /** Ends a member as a crash would: no hand-over, its leases lapse. */
  crash?(member: Cluster): Promise<void>;
}

/**
 * The contract every Cluster keeps (who settles which chat on the clock), run
 * against each implementation as presence's is: the single node and Postgres leases.
 */
export function clusterContract(name: string, make: () => Promise<ClusterFactory>) {
  describe(`cluster contract: ${name}`, () => {
    let f: ClusterFactory;
    const members: Cluster[] = [];
    const member = async (id: string) => {
      const m = await f.member(id);
      members.push(m);
      return m;
    };
    beforeEach(async () => {
      f = await make();
    });
    afterEach(async () => {
      for (const m of members.splice(0)) await m.leave().catch(() => undefined);
    });

    it('claims nothing before it starts, every chat once started alone, and nothing after leaving', async () => {
      const m = await member('n1');
      expect(m.claim(CHATS).chatIds).to.deep.equal([]);
      await m.start();
      expect(m.claim(CHATS).chatIds).to.deep.equal(CHATS);
      expect(m.status()).to.deep.include({ nodes: 1 });
      expect(m.status().shards).to.be.greaterThan(0);
      await m.leave();
      expect(m.claim(CHATS).chatIds).to.deep.equal([]);
      expect(m.status().shards).to.equal(0);
    });

    it('claims a subset of what it is asked, in the order asked', async () => {
      const m = await member('n1');
      await m.start();
      const asked = ['z', 'a', 'm'];
      expect(m.claim(asked).chatIds).to.deep.equal(asked);
      expect(m.claim([]).chatIds).to.deep.equal([]);
    });

    it('splits the chats between two members, each chat to exactly one', async function () {
      if (!f.shared) return this.skip();
      const a = await member('n-a');
      const b = await member('n-b');
      await a.start();
      await b.start();
      await eventually(() => {
        a.poke();
        b.poke();
        const ca = new Set(a.claim(CHATS).chatIds);
        const cb = new Set(b.claim(CHATS).chatIds);
        return ca.size > 0 && cb.size > 0 && CHATS.every((id) => ca.has(id) !== cb.has(id));
      }, 10_000, 100);
      expect(a.status().nodes).to.equal(2);
      // every chat of a shard goes the same way: fences are per shard
      const fence = a.claim(CHATS).fence!;
      expect(fence.owner).to.equal('n-a');
      expect(fence.epochs.size).to.equal(a.status().shards);
    });

    it('hands every chat to the other member at once when one leaves', async function () {
      if (!f.shared) return this.skip();
      const a = await member('n-a');
      const b = await member('n-b');
      await a.start();
      await b.start();
      await eventually(() => (b.poke(), b.claim(CHATS).chatIds.length > 0 && a.claim(CHATS).chatIds.length > 0), 10_000, 100);
      await a.leave();
      b.poke();
      // well within the lease: handed over, not expired
      await eventually(() => (b.poke(), b.claim(CHATS).chatIds.length === CHATS.length), 1500, 50);
    });

    it('takes a crashed member\'s chats over once its leases lapse', async function () {
      if (!f.shared || !f.crash) return this.skip();
      const a = await member('n-a');
      const b = await member('n-b');
      await a.start();
      await b.start();
      await eventually(() => (b.poke(), a.poke(), b.claim(CHATS).chatIds.length > 0 && a.claim(CHATS).chatIds.length > 0), 10_000, 100);
      await f.crash(a);
      await eventually(() => (b.poke(), b.claim(CHATS).chatIds.length === CHATS.length), 10_000, 100);
    });
  });
}
