import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { expect } from 'chai';
import pg from 'pg';
import { freshDatabase, type TestDb } from './support/db.js';
import { freePort } from './support/ports.js';
import { type TestNode, call, eventually, startNode, waitFor } from './support/server.js';

const hasRedisServer = spawnSync('redis-server', ['--version']).status === 0;

describe('resilience (real Postgres and a Redis of its own)', () => {
  let db: TestDb;
  let node: TestNode | null = null;

  before(async () => {
    db = await freshDatabase();
  });
  after(() => db.close());
  beforeEach(() => db.reset());
  afterEach(async () => {
    await node?.close();
    node = null;
  });

  async function runningChat(n: TestNode) {
    await n.api('PUT', '/v1/users/u1', { balance: '100' });
    await n.api('PUT', '/v1/advisors/a1', { ratePerMinute: '6', freeSeconds: 0 });
    await n.api('POST', '/v1/chats', { id: 'c1', userId: 'u1', advisorId: 'a1' });
    const tab = await n.connect('u1', 'user');
    expect((await call(tab, 'chat:join', { chatId: 'c1' })).ok).to.equal(true);
    const timer = setInterval(() => tab.emit('heartbeat', { chatId: 'c1' }), 100);
    const advisor = await n.connect('a1', 'advisor');
    expect((await call(advisor, 'chat:start', { chatId: 'c1' })).ok).to.equal(true);
    return { tab, advisor, stop: () => clearInterval(timer) };
  }

  it('keeps metering after its Postgres connections are cut, as on a database restart', async function () {
    if (!db.url) this.skip();
    node = await startNode(db, { REDIS_URL: '' });
    const r = await runningChat(node);
    try {
      await waitFor(r.advisor, 'meter', (m) => m.durationSeconds >= 1, 4000);
      const admin = new pg.Client({ connectionString: db.url! });
      await admin.connect();
      const dbName = new URL(db.url!).pathname.slice(1);
      await admin.query(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()`, [dbName]);
      await admin.end();
      // the node shares this test's pool, whose connections were cut too: the first query on one may fail
      const { duration } = await eventually(async () => (await db.ds.query(`SELECT duration FROM conversation_time_records WHERE chat_id = 'c1'`))[0]);
      // the node reconnects by itself and the meter goes on
      await waitFor(r.advisor, 'meter', (m) => m.durationSeconds >= duration + 2, 8000);
      const ready = await node.api('GET', '/readyz');
      expect(ready.status).to.equal(200);
    } finally {
      r.stop();
    }
  });

  it('refuses a second node on the same database until the first has stopped', async function () {
    if (!db.url) this.skip();
    node = await startNode(db, { REDIS_URL: '' });
    const err = await startNode(db, { REDIS_URL: '' }).then(
      async (second) => {
        await second.close();
        return null;
      },
      (e: Error) => e,
    );
    expect(err?.name).to.equal('NodeConflictError');
    await node.close();
    node = await startNode(db, { REDIS_URL: '' });
    expect((await node.api('GET', '/readyz')).status).to.equal(200);
  });

  it('never runs a node without Redis beside nodes of a cluster, whichever starts first', async function () {
    if (!db.url || !process.env.REDIS_URL) this.skip();
    const refused = (p: Promise<TestNode>) =>
      p.then(
        async (n) => {
          await n.close();
          return null;
        },
        (e: Error) => e,
      );
    node = await startNode(db);
    const lone = await refused(startNode(db, { REDIS_URL: '' }));
    expect(lone?.name).to.equal('NodeConflictError');
    expect(lone?.message).to.include('set REDIS_URL on every node');
    // a second node of the cluster is welcome
    const peer = await startNode(db);
    await peer.close();
    await node.close();
    node = await startNode(db, { REDIS_URL: '' });
    const clustered = await refused(startNode(db));
    expect(clustered?.message).to.include('every node of a cluster needs REDIS_URL');
  });

  it('stops metering when another node took the database over after its lock\'s connection died', async function () {
    if (!db.url) this.skip();
    this.timeout(30_000);
    node = await startNode(db, { REDIS_URL: '' });
    const admin = new pg.Client({ connectionString: db.url! });
    await admin.connect();
    const dbName = new URL(db.url!).pathname.slice(1);
    await admin.query(
      `SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND database = (SELECT oid FROM pg_database WHERE datname = $1)`,
      [dbName],
    );
    await admin.end();
    const second = await startNode(db, { REDIS_URL: '' });
    try {
      await eventually(async () => (await node!.api('GET', '/readyz')).status === 503, 15_000, 250);
      expect((await second.api('GET', '/readyz')).status).to.equal(200);
    } finally {
      await second.close();
    }
  });

  it('survives losing Redis, and serves and meters again when it is back', async function () {
    if (!hasRedisServer) this.skip();
    this.timeout(60_000);
    const port = await freePort();
    const startRedis = (): ChildProcess =>
      spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
    let redis = startRedis();
    try {
      const url = `redis://127.0.0.1:${port}`;
      await eventually(() => spawnSync('redis-cli', ['-p', String(port), 'ping']).stdout?.toString().includes('PONG'), 5000);
      node = await startNode(db, { REDIS_URL: url });
      const r = await runningChat(node);
      try {
        await waitFor(r.advisor, 'meter', (m) => m.durationSeconds >= 1, 4000);
        redis.kill('SIGKILL');
        await new Promise((res) => redis.once('exit', res));
        const billed = async () => (await db.ds.query(`SELECT duration FROM conversation_time_records WHERE chat_id = 'c1'`))[0].duration as number;
        const atKill = await billed();
        // still serving the users present on it: ready, and saying it is degraded, once it has noticed
        const degraded = await eventually(async () => {
          const res = await node!.api('GET', '/readyz');
          return res.body.degraded?.includes('presence') ? res : null;
        }, 10_000, 100);
        expect(degraded.status).to.equal(200);
        expect(degraded.body).to.deep.include({ ok: true, degraded: ['redis', 'presence'] });
        expect(degraded.body.checks).to.deep.equal({ database: true, redis: false });
        // broadcasting with Redis gone must not crash the node: HTTP keeps answering, and the meter goes on
        const duration = await eventually(async () => {
          const d = await billed();
          return d >= atKill + 2 ? d : 0;
        }, 10_000, 100);
        expect((await node.api('GET', '/healthz')).status).to.equal(200);
        redis = startRedis();
        await eventually(async () => (await node!.api('GET', '/readyz')).body.degraded?.length === 0, 15_000, 200);
        const later = await waitFor(r.advisor, 'meter', (m) => m.durationSeconds > duration, 8000);
        expect(later.state).to.equal('running');
      } finally {
        r.stop();
      }
    } finally {
      redis.kill('SIGKILL');
    }
  });
});
