import { expect } from 'chai';
import pg from 'pg';
import { freshDatabase, type TestDb } from './support/db.js';
import { type TestNode, call, collect, startNode, waitFor } from './support/server.js';

/** No chat stalls another (real Postgres, one node). */
describe('a chat whose rows are held elsewhere (real Postgres)', function () {
  this.timeout(30_000);
  let db: TestDb;
  let node: TestNode;
  const timers: NodeJS.Timeout[] = [];

  before(async function () {
    db = await freshDatabase();
    // PGlite has one connection: a second transaction holding a row can't exist there
    if (db.embedded) this.skip();
  });
  after(() => db?.close());
  afterEach(async () => {
    for (const t of timers.splice(0)) clearInterval(t);
    await node?.close();
  });

  it('keeps every other chat ticking while a user row is locked for seconds, and bills the held one exactly once it is free', async () => {
    node = await startNode(db, { REDIS_URL: '' });
    await node.api('PUT', '/v1/advisors/a1', { ratePerMinute: '6', freeSeconds: 0 });
    const tabs = [];
    for (const id of ['1', '2']) {
      await node.api('PUT', `/v1/users/u${id}`, { balance: '100' });
      await node.api('POST', '/v1/chats', { id: `c${id}`, userId: `u${id}`, advisorId: 'a1' });
      const tab = await node.connect(`u${id}`, 'user');
      expect((await call(tab, 'chat:join', { chatId: `c${id}` })).ok).to.equal(true);
      timers.push(setInterval(() => tab.emit('heartbeat', { chatId: `c${id}` }), 100));
      expect((await node.api('POST', `/v1/chats/c${id}/start`)).status).to.equal(200);
      tabs.push(tab);
    }
    await waitFor(tabs[0]!, 'meter', (m) => m.durationSeconds >= 1, 4000);

    // another transaction (a psql session, a slow report) holds u1's row
    const holder = new pg.Client({ connectionString: db.url! });
    await holder.connect();
    await holder.query('BEGIN');
    await holder.query(`SELECT * FROM users WHERE id = 'u1' FOR UPDATE`);
    const held = collect(tabs[0]!, 'meter');
    try {
      const m = await waitFor(tabs[1]!, 'meter', () => true, 2000);
      // c2 ticks on, every tick, while c1's row is held
      await waitFor(tabs[1]!, 'meter', (x) => x.durationSeconds >= m.durationSeconds + 2, 4000);
      expect(held.filter((x) => x.state === 'running'), 'c1 is skipped, not waited for').to.have.length.at.most(1);
      const busy = await node.app.metrics.registry.getSingleMetricAsString('chatmeter_busy_settlements_total');
      expect(Number(busy.trim().split(' ').at(-1))).to.be.greaterThan(0);
    } finally {
      await holder.query('COMMIT');
      await holder.end();
    }
    // free again: c1 is billed everything its user was present for, nothing lost
    await waitFor(tabs[0]!, 'meter', (x) => x.state === 'running', 3000);
    const ended = await node.api('POST', '/v1/chats/c1/end');
    const [r] = await db.ds.query(
      `SELECT r.duration, extract(epoch FROM c.ended_at - c.started_at)::float8 AS span FROM conversation_time_records r JOIN chats c ON c.id = r.chat_id WHERE r.chat_id = 'c1'`,
    );
    expect(ended.status).to.equal(200);
    expect(r.duration).to.be.within(Math.floor(r.span) - 1, Math.floor(r.span));
  });

  it('lets commands of other chats through while one command waits for rows held elsewhere', async () => {
    node = await startNode(db, { REDIS_URL: '' });
    await node.api('PUT', '/v1/advisors/a1', { ratePerMinute: '6', freeSeconds: 0 });
    for (const id of ['3', '4']) {
      await node.api('PUT', `/v1/users/u${id}`, { balance: '100' });
      await node.api('POST', '/v1/chats', { id: `c${id}`, userId: `u${id}`, advisorId: 'a1' });
    }
    const holder = new pg.Client({ connectionString: db.url! });
    await holder.connect();
    await holder.query('BEGIN');
    await holder.query(`SELECT * FROM users WHERE id = 'u3' FOR NO KEY UPDATE`);
    let heldDone = false;
    const held = node.api('POST', '/v1/chats/c3/start').then((r) => {
      heldDone = true;
      return r;
    });
    try {
      // c4's start, sent after c3's, is answered while c3's still waits
      const other = await node.api('POST', '/v1/chats/c4/start');
      expect([other.status, other.body.chat?.status], JSON.stringify(other.body)).to.deep.equal([200, 'active']);
      expect(heldDone, 'c3 waits for its user row').to.equal(false);
    } finally {
      await holder.query('COMMIT');
      await holder.end();
    }
    const first = await held;
    expect([first.status, first.body.chat?.status], JSON.stringify(first.body)).to.deep.equal([200, 'active']);
  });
});
