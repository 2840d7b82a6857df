import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import { createDataSource } from '../server/db.js';
import { freshDatabase, type TestDb } from './support/db.js';
import { spawnNode } from './support/processes.js';
import { FAST_ENV, call, eventually, startNode, waitFor } from './support/server.js';

describe('SIGTERM (a real process)', () => {
  let db: TestDb;
  let dataDir: string | null = null;

  before(async () => {
    db = await freshDatabase();
  });
  after(async () => {
    await db.close();
    if (dataDir) rmSync(dataDir, { recursive: true, force: true });
  });

  it('settles every open meter, closes its sockets so they reconnect elsewhere, and exits 0', async function () {
    this.timeout(60_000);
    const env: Record<string, string> = db.url ? { DATABASE_URL: db.url } : { DATA_DIR: (dataDir = mkdtempSync(join(tmpdir(), 'chatmeter-sigterm-'))) };
    if (!db.url) await db.close();
    const p = await spawnNode(env);
    try {
      const api = async (method: string, path: string, body?: unknown) => (await p.api(method, path, body)).body;
      await api('PUT', '/v1/users/u1', { balance: '100' });
      await api('PUT', '/v1/advisors/a1', { ratePerMinute: '6', freeSeconds: 0 });
      await api('POST', '/v1/chats', { id: 'c1', userId: 'u1', advisorId: 'a1' });
      const tab = await p.connect('u1', 'user');
      expect((await call(tab, 'chat:join', { chatId: 'c1' })).ok).to.equal(true);
      const beat = setInterval(() => tab.emit('heartbeat', { chatId: 'c1' }), 100);
      try {
        await api('POST', '/v1/chats/c1/start');
        await waitFor(tab, 'meter', (m) => m.durationSeconds >= 2, 8000);
        const told = new Promise<string>((resolve) => tab.once('disconnect', (reason) => resolve(reason)));
        const stopAt = Date.now();
        p.kill('SIGTERM');
        // a closed transport, not a server-side disconnect: socket.io clients reconnect by themselves
        expect(await told).to.equal('transport close');
        expect(tab.active).to.equal(true);
        expect(await p.exited).to.equal(0);
        expect(p.lines.map((l) => l.msg)).to.include.members(['shutting down', 'shut down']);
        // no secret in any log line
        const logged = JSON.stringify(p.lines);
        expect(logged).to.not.include(FAST_ENV.CHATMETER_API_KEY);
        expect(logged).to.not.include(FAST_ENV.CHATMETER_JWT_SECRET);
        // everything metered up to the stop was settled: the chat stays active for the next node
        // (on PGlite the node's data directory is opened once it has exited: one process per directory)
        const ds = db.url ? db.ds : await createDataSource({ databaseUrl: null, dataDir: dataDir! }).then((d) => d.initialize());
        try {
          const [rec] = await ds.query(
            `SELECT r.duration, r.settled_until, r.is_active, r.credits_used::text, c.started_at,
                    (SELECT coalesce(sum(amount), 0)::text FROM ledger_entries l WHERE l.chat_id = r.chat_id AND l.type = 'charge') AS charged
               FROM conversation_time_records r JOIN chats c ON c.id = r.chat_id WHERE r.chat_id = 'c1'`,
          );
          expect(rec.is_active).to.equal(true);
          expect(stopAt - rec.settled_until.getTime()).to.be.within(-1000, 1000);
          // billed seconds up to where billing stopped, never more than have passed since the start, and charged
          expect(rec.duration).to.be.at.least(2);
          expect(rec.duration * 1000).to.be.at.most(rec.settled_until.getTime() - rec.started_at.getTime());
          expect(rec.charged).to.equal(rec.credits_used);
        } finally {
          if (!db.url) await ds.destroy();
        }
      } finally {
        clearInterval(beat);
        tab.close();
      }
    } finally {
      p.kill('SIGKILL');
    }
  });
});

describe('shutdown of a node with HTTP requests in flight', () => {
  let db: TestDb;
  before(async function () {
    db = await freshDatabase();
    if (!db.url) this.skip(); // a second connection holding a row lock needs a Postgres server
  });
  after(() => db.close());

  it('lets a request in flight finish before closing the pool, and refuses none', async () => {
    const node = await startNode(db);
    await node.api('PUT', '/v1/users/u1', { balance: '1' });
    const runner = db.ds.createQueryRunner();
    await runner.connect();
    await runner.startTransaction();
    let closed = false;
    try {
      // the top-up waits for this lock: it is in flight when the shutdown begins
      await runner.query(`SELECT 1 FROM users WHERE id = 'u1' FOR UPDATE`);
      const topUp = node.api('POST', '/v1/users/u1/credits', { amount: '2', idempotencyKey: 'in-flight' });
      // (this database's backends only: other work may share the server)
      await eventually(
        async () => (await db.ds.query(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`))[0].n > 0,
      );
      const closing = node.close().then(() => (closed = true));
      const since = Date.now();
      // the shutdown is under way, waiting on the request, longer than its other steps' bounds (2 s)
      await eventually(() => Date.now() - since > 2500, 5000);
      expect(closed, 'the node waits for its request').to.equal(false);
      await runner.commitTransaction();
      const res = await topUp;
      expect(res.status).to.equal(201);
      expect(res.body.balance).to.equal('3.0000');
      await closing;
    } finally {
      if (runner.isTransactionActive) await runner.rollbackTransaction();
      await runner.release();
      if (!closed) await node.close();
    }
  });
});
