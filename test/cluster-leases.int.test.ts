import { expect } from 'chai';
import { pino } from 'pino';
import type { DataSource } from 'typeorm';
import { type Cluster, LocalCluster } from '../server/cluster/cluster.js';
import { PostgresCluster } from '../server/cluster/postgres-cluster.js';
import { shardOf } from '../server/cluster/shards.js';
import { createDataSource } from '../server/db.js';
import { LeaseLostError } from '../server/errors.js';
import { CHATS, clusterContract } from './support/cluster-contract.js';
import { freshDatabase, type TestDb } from './support/db.js';
import { SettlementService } from '../server/metering/settlement.js';
import { T0, present, services, testPolicy } from './support/fixtures.js';

const quiet = pino({ level: 'silent' });
const noMetrics = { leasesAcquired: () => {}, leasesLost: () => {}, reconcileFailed: () => {} };

clusterContract('LocalCluster (one node)', async () => ({ shared: false, member: async (id) => new LocalCluster(id) }));

describe('settlement leases in Postgres', function () {
  this.timeout(30_000);
  let db: TestDb;
  const extra: DataSource[] = [];

  before(async () => {
    db = await freshDatabase();
  });
  after(async () => {
    for (const ds of extra) if (ds.isInitialized) await ds.destroy();
    await db.close();
  });
  const clean = async () => {
    await db.ds.query(`DELETE FROM cluster_nodes`);
    await db.ds.query(`UPDATE settlement_shards SET owner = NULL, epoch = 0, expires_at = '-infinity'`);
  };

  /** A member on a connection pool of its own, so a crash can take its pool down with it. */
  const member = async (nodeId: string, leaseMs = 600, leaseClock?: () => number): Promise<{ cluster: PostgresCluster; ds: DataSource }> => {
    const ds = await createDataSource({ databaseUrl: db.url, dataDir: '' });
    await ds.initialize();
    extra.push(ds);
    return { cluster: new PostgresCluster(ds, { nodeId, leaseMs, log: quiet, metrics: noMetrics, leaseClock }), ds };
  };

  describe('contract', () => {
    const pools = new Map<Cluster, DataSource>();
    before(function () {
      if (db.embedded) this.skip();
    });
    beforeEach(clean);
    for (const [name, leaseClock] of [
      ['PostgresCluster', undefined],
      // the simulation's lease clock (test/simulation.int.test.ts), here on the real time
      ['PostgresCluster on an injected lease clock', () => Date.now()],
    ] as const) {
      clusterContract(name, async () => ({
        shared: true,
        member: async (id) => {
          const m = await member(id, 600, leaseClock);
          pools.set(m.cluster, m.ds);
          return m.cluster;
        },
        crash: async (m) => {
          // its pool dies: it can neither renew nor hand over, and its leases lapse
          await pools.get(m)!.destroy();
        },
      }));
    }
  });

  describe('an injected lease clock', () => {
    beforeEach(async function () {
      if (db.embedded) this.skip();
      await clean();
      await db.reset();
    });

    it('measures leases and the fence with that clock, not the database\'s', async () => {
      const { accounts } = services(db.ds);
      let leaseNow = Date.parse('2030-01-01T00:00:00Z');
      const engine = new SettlementService(db.ds, testPolicy, null, () => leaseNow);
      await accounts.putUser('u1', { balance: '100' });
      await accounts.putAdvisor('a1', { ratePerMinute: '6', freeSeconds: 0 });
      await accounts.createChat({ id: 'c1', userId: 'u1', advisorId: 'a1' });
      await engine.initializeTimeTrackingForChat('u1', 'a1', 'c1');
      const a = await member('n-a', 600, () => leaseNow);
      await a.cluster.start();
      (a.cluster as unknown as { member: boolean }).member = false; // renews no more
      const { fence } = a.cluster.claim(['c1']);
      const [row] = await db.ds.query(`SELECT (extract(epoch FROM expires_at) * 1000)::float8 AS ms FROM settlement_shards WHERE shard = $1`, [shardOf('c1')]);
      expect(Number(row.ms), 'the lease runs from the injected now').to.equal(leaseNow + 600);
      // real time passes the lease: the injected clock says it still holds
      await new Promise((r) => setTimeout(r, 700));
      const [held] = await engine.settleBatch([{ chatId: 'c1', presence: null }], T0, { fence });
      expect(held!.ok, 'the lease holds on the injected clock').to.equal(true);
      leaseNow += 600;
      const [out] = await engine.settleBatch([{ chatId: 'c1', presence: null }], T0, { fence });
      expect(!out!.ok && out!.error).to.be.instanceOf(LeaseLostError);
    });
  });

  describe('the fence', () => {
    beforeEach(async function () {
      if (db.embedded) this.skip();
      await clean();
      await db.reset();
    });

    it('refuses a settlement under a lease that was taken over, and commits nothing of it', async () => {
      const { accounts, engine } = services(db.ds);
      await accounts.putUser('u1', { balance: '100' });
      await accounts.putAdvisor('a1', { ratePerMinute: '6', freeSeconds: 0 });
      await accounts.createChat({ id: 'c1', userId: 'u1', advisorId: 'a1' });
      await engine.initializeTimeTrackingForChat('u1', 'a1', 'c1');
      await engine.settleBatch([{ chatId: 'c1', presence: present(T0), command: { kind: 'start' } }], T0);

      const a = await member('n-a');
      await a.cluster.start();
      const stale = a.cluster.claim(['c1']);
      expect(stale.chatIds).to.deep.equal(['c1']);
      // a pauses past its lease (its timer never fires again); b takes the shard over with a new epoch
      await a.cluster.leave().catch(() => undefined);
      const b = await member('n-b');
      await b.cluster.start();
      const fresh = b.cluster.claim(['c1']);
      expect(fresh.fence!.epochs.get(shardOf('c1'))).to.not.equal(stale.fence!.epochs.get(shardOf('c1')));

      const [refused] = await engine.settleBatch([{ chatId: 'c1', presence: present(T0) }], T0 + 5000, { fence: stale.fence });
      expect(refused!.ok).to.equal(false);
      expect(!refused!.ok && refused!.error).to.be.instanceOf(LeaseLostError);
      const [rec] = await db.ds.query(`SELECT duration FROM conversation_time_records WHERE chat_id = 'c1'`);
      expect(rec.duration, 'nothing billed under the stale lease').to.equal(0);

      const [settled] = await engine.settleBatch([{ chatId: 'c1', presence: present(T0) }], T0 + 5000, { fence: fresh.fence });
      expect(settled!.ok && settled!.meter.durationSeconds).to.equal(5);
      await b.cluster.leave();
    });

    it('refuses a lease that expired even when nobody took it yet', async () => {
      const { engine, accounts } = services(db.ds);
      await accounts.putUser('u1', { balance: '100' });
      await accounts.putAdvisor('a1', { ratePerMinute: '6', freeSeconds: 0 });
      await accounts.createChat({ id: 'c1', userId: 'u1', advisorId: 'a1' });
      await engine.initializeTimeTrackingForChat('u1', 'a1', 'c1');
      const a = await member('n-a', 400);
      await a.cluster.start();
      const { fence } = a.cluster.claim(['c1']);
      // stop renewing without handing over, as a stopped process would
      (a.cluster as unknown as { member: boolean }).member = false;
      await new Promise((r) => setTimeout(r, 700));
      const [out] = await engine.settleBatch([{ chatId: 'c1', presence: null }], T0, { fence });
      expect(!out!.ok && out!.error).to.be.instanceOf(LeaseLostError);
    });
  });

  it('takes no node for dead right after an outage that kept this one from renewing too, and does once they had time to come back', async function () {
    if (db.embedded) this.skip();
    await clean();
    const { eventually } = await import('./support/server.js');
    let clock = 0;
    const departed: string[] = [];
    const { ds } = await member('unused');
    const a = new PostgresCluster(ds, { nodeId: 'a', leaseMs: 600, log: quiet, metrics: noMetrics, monotonic: () => clock });
    a.onDeparted((id) => departed.push(id));
    await ds.query(`INSERT INTO cluster_nodes (node_id) VALUES ('b')`);
    await a.start(); // it looks every 200 ms from now on, on the clock this test moves
    /** Lets a's looks run for a while (each at the same moment of its clock). */
    const looks = async () => {
      const since = Date.now();
      await eventually(() => (a.poke(), Date.now() - since > 300));
    };
    try {
      // the database was away 10 s for everyone: both rows are stale, and a renews first
      await ds.query(`UPDATE cluster_nodes SET seen_at = clock_timestamp() - interval '10 seconds'`);
      clock += 10_000;
      await looks();
      expect(departed, 'b had no chance to renew yet').to.deep.equal([]);
      // b renews within the grace (three leases): it stays
      await ds.query(`UPDATE cluster_nodes SET seen_at = clock_timestamp() WHERE node_id = 'b'`);
      clock += 1000;
      await looks();
      expect(departed).to.deep.equal([]);
      // b really died: once the grace is over, it is taken for dead
      await ds.query(`UPDATE cluster_nodes SET seen_at = clock_timestamp() - interval '10 seconds' WHERE node_id = 'b'`);
      clock += 1000;
      await eventually(() => (a.poke(), departed.length > 0));
      expect(departed).to.deep.equal(['b']);
    } finally {
      await a.leave();
    }
  });

  it('spreads the shards evenly over three nodes and moves few when one leaves', async function () {
    if (db.embedded) this.skip();
    await clean();
    const ms = await Promise.all(['n1', 'n2', 'n3'].map((id) => member(id)));
    for (const m of ms) await m.cluster.start();
    for (let i = 0; i < 3; i++) for (const m of ms) m.cluster.poke();
    await new Promise((r) => setTimeout(r, 500));
    const owned = () => ms.map((m) => m.cluster.claim(CHATS).chatIds.length);
    const { eventually } = await import('./support/server.js');
    await eventually(() => (ms.forEach((m) => m.cluster.poke()), owned().reduce((x, y) => x + y, 0) === CHATS.length && owned().every((n) => n > 0)), 10_000, 100);
    for (const n of owned()) expect(n).to.be.within(CHATS.length / 6, CHATS.length / 1.5);
    const before = new Map(CHATS.map((id) => [id, ms.findIndex((m) => m.cluster.claim([id]).chatIds.length)]));
    await ms[2]!.cluster.leave();
    await eventually(() => (ms.forEach((m) => m.cluster.poke()), owned()[0]! + owned()[1]! === CHATS.length), 5000, 50);
    // rendezvous hashing: chats of the nodes that stayed stay where they were
    for (const [id, was] of before) if (was !== 2) expect(ms[was]!.cluster.claim([id]).chatIds, id).to.deep.equal([id]);
    for (const m of ms.slice(0, 2)) await m.cluster.leave();
  });
});
