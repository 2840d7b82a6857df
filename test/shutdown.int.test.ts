import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import { freshDatabase, type TestDb } from './support/db.js';
import { spawnNode } from './support/processes.js';
import { FAST_ENV, call, waitFor } from './support/server.js';

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
        if (db.url) {
          const [rec] = await db.ds.query(`SELECT duration, settled_until, is_active FROM conversation_time_records WHERE chat_id = 'c1'`);
          expect(rec.is_active).to.equal(true);
          expect(stopAt - rec.settled_until.getTime()).to.be.within(-1000, 1000);
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
