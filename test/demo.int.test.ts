import { expect } from 'chai';
import { loadDemo } from '../server/demo.js';
import { freshDatabase, type TestDb } from './support/db.js';
import { type TestNode, call, connectWith, startNode } from './support/server.js';

describe('demo data and pages (npm start on a fresh machine)', () => {
  let db: TestDb;
  let node: TestNode;

  before(async () => {
    db = await freshDatabase();
    node = await startNode(db);
  });
  after(async () => {
    await node.close();
    await db.close();
  });

  it('serves the demo pages and their scripts', async () => {
    for (const path of ['/demo/user.html', '/demo/advisor.html', '/demo/user.js', '/demo/advisor.js', '/demo/common.js', '/socket.io/socket.io.min.js']) {
      const res = await fetch(node.url + path);
      expect(res.status, path).to.equal(200);
    }
  });

  it('loads the demo rows once, with tokens that open the demo chat, and a new chat once it ended', async () => {
    const first = await loadDemo(node.app, node.url, Date.now());
    const again = await loadDemo(node.app, node.url, Date.now());
    expect(again.chatId).to.equal(first.chatId);
    const token = new URL(first.userPage).searchParams.get('token')!;
    const tab = await connectWith(node.url, { token });
    const joined = await call(tab, 'chat:join', { chatId: first.chatId });
    expect(joined.ok).to.equal(true);
    expect(joined.meter).to.include({ userId: 'demo-user', advisorId: 'demo-advisor', freeSecondsAllocation: 30 });
    expect((await call(tab, 'chat:end', { chatId: first.chatId })).ok).to.equal(true);
    tab.close();
    const next = await loadDemo(node.app, node.url, Date.now());
    expect(next.chatId).to.not.equal(first.chatId);
    const [{ n }] = await db.ds.query(`SELECT count(*)::int AS n FROM users WHERE id = 'demo-user'`);
    expect(n).to.equal(1);
  });
});
