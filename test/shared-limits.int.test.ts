import { randomBytes } from 'node:crypto';
import { expect } from 'chai';
import { createClient } from 'redis';
import { freshDatabase, type TestDb } from './support/db.js';
import { type TestNode, call, collect, eventually, startNode } from './support/server.js';

/** Limits and presence that two nodes of one cluster share through Redis (in-process nodes, real Redis). */
describe('what two nodes share through Redis', function () {
  let db: TestDb;
  let a: TestNode | null = null;
  let b: TestNode | null = null;

  before(async function () {
    if (!process.env.REDIS_URL) return this.skip();
    db = await freshDatabase();
  });
  after(() => db?.close());
  afterEach(async () => {
    await a?.close();
    await b?.close();
    a = b = null;
    await db.reset();
  });

  let redisKeyPrefix = '';

  /** Two nodes of one cluster: one database, one Redis namespace. */
  async function twoNodes(rateLimit = { perSocket: 100, perPrincipal: 100 }) {
    redisKeyPrefix = `cm-test-${randomBytes(4).toString('hex')}`;
    a = await startNode(db, {}, { redisKeyPrefix, rateLimit, nodeId: 'node-a' });
    b = await startNode(db, {}, { redisKeyPrefix, rateLimit, nodeId: 'node-b' });
    await a.api('PUT', '/v1/users/u1', { balance: '10' });
    await a.api('PUT', '/v1/advisors/a1', { ratePerMinute: '6', freeSeconds: 0 });
    await a.api('POST', '/v1/chats', { id: 'c1', userId: 'u1', advisorId: 'a1' });
    return { a, b };
  }

  it('counts a user\'s events on every node against one per-principal budget', async function () {
    if (db.embedded) this.skip();
    const { a, b } = await twoNodes({ perSocket: 100, perPrincipal: 10 });
    const onA = await a.connect('u1', 'user');
    const onB = await b.connect('u1', 'user');
    const acks = await Promise.all([
      ...Array.from({ length: 8 }, () => call(onA, 'chat:join', { chatId: 'c1' })),
      ...Array.from({ length: 8 }, () => call(onB, 'chat:join', { chatId: 'c1' })),
    ]);
    const codes = acks.map((x) => (x.ok ? 'ok' : x.error.code));
    // per node, 8 events are within 10 a second; together they are not
    expect(codes.filter((c) => c === 'ok')).to.have.length(10);
    expect(codes.filter((c) => c === 'rate_limited')).to.have.length(6);
  });

  it('sees a tab on one node from the other: presence is shared', async function () {
    if (db.embedded) this.skip();
    const { a, b } = await twoNodes();
    const tab = await a.connect('u1', 'user');
    expect((await call(tab, 'chat:join', { chatId: 'c1' })).ok).to.equal(true);
    const started = await b.api('POST', '/v1/chats/c1/start');
    expect(started.status).to.equal(200);
    // node b settled the start with the presence of a tab on node a
    expect(started.body.meter.state).to.equal('running');
  });

  it('pushes each meter once to the tabs on both nodes and the dashboard, and drops a fan-out message it can\'t read', async function () {
    if (db.embedded) this.skip();
    const { a, b } = await twoNodes();
    const tabs = [await a.connect('u1', 'user'), await b.connect('u1', 'user')];
    const dashboard = await b.connect('a1', 'advisor');
    for (const t of tabs) expect((await call(t, 'chat:join', { chatId: 'c1' })).ok).to.equal(true);
    const beat = setInterval(() => tabs.forEach((t) => t.emit('heartbeat', { chatId: 'c1' })), 100);
    const seen = [...tabs, dashboard].map((s) => collect<{ seq: number }>(s, 'meter'));
    const redis = createClient({ url: process.env.REDIS_URL });
    await redis.connect();
    try {
      // messages from no node of the cluster, or from one that sent nonsense
      await redis.publish(`${redisKeyPrefix}:fanout`, 'another-node\n{not json');
      await redis.publish(`${redisKeyPrefix}:fanout`, 'another-node\n{"rooms":["pair:u1/a1"]}');
      expect((await a.api('POST', '/v1/chats/c1/start')).status).to.equal(200);
      await eventually(() => seen.every((s) => s.length >= 5), 10_000);
    } finally {
      clearInterval(beat);
      await redis.close();
    }
    for (const meters of seen) {
      const seqs = meters.map((m) => m.seq);
      // once each, in order: a node drops its own batches instead of delivering them twice
      expect(seqs, 'seq strictly increasing').to.deep.equal([...new Set(seqs)].sort((x, y) => x - y));
    }
    for (const node of [a, b]) {
      const text = await fetch(`${node.url}/metrics`).then((r) => r.text());
      expect(text).to.contain('chatmeter_background_errors_total{where="fanout"} 2');
    }
  });
});
