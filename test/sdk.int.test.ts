/**
 * The client SDK against a real node (Postgres, Redis, sockets on loopback): what an integrator's
 * browser app and dashboard get from it.
 */
import { spawn } from 'node:child_process';
import { gzipSync } from 'node:zlib';
import { expect } from 'chai';
import { type Client, ChatmeterError, type ClientState, type MeterSnapshot, connect } from '../client-sdk/src/index.js';
import { freshDatabase, type TestDb } from './support/db.js';
import { startBalancer } from './support/balancer.js';
import { type TestNode, eventually, startNode } from './support/server.js';

/** Short backoff: a restart on the same port is found in well under a second. */
const FAST_BACKOFF = { baseMs: 50, capMs: 400 };

describe('client SDK (real node)', () => {
  let db: TestDb;
  let node: TestNode;
  const clients: Client[] = [];

  before(async () => {
    db = await freshDatabase();
  });
  after(() => db.close());
  beforeEach(async () => {
    await db.reset();
    node = await startNode(db);
  });
  afterEach(async () => {
    for (const c of clients.splice(0)) c.close();
    await node.close();
  });

  function open(opts: Partial<Parameters<typeof connect>[0]> & { token?: string }): Client {
    const client = connect({ url: node.url, backoff: FAST_BACKOFF, ...opts });
    clients.push(client);
    return client;
  }
  const as = async (sub: string, role: 'user' | 'advisor', extra: Partial<Parameters<typeof connect>[0]> = {}) =>
    open({ token: await node.token(sub, role), ...extra });

  async function given(opts: { chatId?: string; userId?: string; balance?: string; free?: number } = {}) {
    const userId = opts.userId ?? 'u1';
    const chatId = opts.chatId ?? 'c1';
    await node.api('PUT', `/v1/users/${userId}`, { name: 'Ursula', balance: opts.balance ?? '100' });
    await node.api('PUT', '/v1/advisors/a1', { name: 'Ada', ratePerMinute: '6', freeSeconds: opts.free ?? 0 });
    expect((await node.api('POST', '/v1/chats', { id: chatId, userId, advisorId: 'a1' })).status).to.be.oneOf([200, 201]);
    return { userId, chatId };
  }

  /** A user session in a chat the advisor started; meters collected from the start. */
  async function running() {
    const g = await given();
    const user = await as(g.userId, 'user');
    const session = await user.joinChat(g.chatId);
    const meters: MeterSnapshot[] = [];
    session.on('meter', (m) => meters.push(m));
    const advisor = await as('a1', 'advisor');
    const advisorSession = await advisor.joinChat(g.chatId);
    await advisorSession.start();
    await eventually(() => session.meter.state === 'running');
    return { ...g, user, session, meters, advisor, advisorSession };
  }

  const states = (client: Client) => {
    const seen: ClientState[] = [];
    client.on('state', (s) => seen.push(s));
    return seen;
  };
  const errorOf = (p: Promise<unknown>) => p.then(() => null, (e: unknown) => e as ChatmeterError);

  it('joins a chat and keeps its meter running with heartbeats, seq rising by one', async () => {
    const { session, meters } = await running();
    expect(session.chat).to.include({ id: 'c1', status: 'active' });
    const from = meters.length;
    // 12 ticks of 100 ms: more than two heartbeat windows (300 + 200 ms), so presence rests on the SDK's heartbeats
    await eventually(() => meters.length >= from + 12, 5000);
    const seqs = meters.map((m) => m.seq);
    expect(seqs.every((s, i) => i === 0 || s === seqs[i - 1]! + 1), `seqs ${seqs}`).to.equal(true);
    expect(meters.slice(from).map((m) => m.state)).to.not.include('away');
    expect(session.secondsLeft()).to.be.a('number').and.to.be.above(0);
  });

  it('rejects every refusal with a typed ChatmeterError of its code', async () => {
    await given();
    await given({ userId: 'u2', chatId: 'c2' });
    const user = await as('u1', 'user');
    const advisor = await as('a1', 'advisor');
    const codeOf = async (p: Promise<unknown>) => {
      const err = await errorOf(p);
      expect(err, 'a ChatmeterError').to.be.instanceOf(ChatmeterError);
      return err!.code;
    };
    expect(await codeOf(user.joinChat(''))).to.equal('bad_request');
    expect(await codeOf(user.joinChat('nope'))).to.equal('not_found');
    expect(await codeOf(user.joinChat('c2'))).to.equal('forbidden');
    expect(await codeOf(user.watchDashboard())).to.equal('forbidden');
    const chat = await advisor.joinChat('c1');
    expect(await codeOf(chat.pause())).to.equal('conflict'); // a pending chat can't pause
    const limited = await as('u1', 'user', {});
    // the node's limit is 20 events a second per socket
    // 40 joins of different chats (joins of one chat at once share one event)
    const burst = await Promise.all(Array.from({ length: 40 }, (_, i) => errorOf(limited.joinChat(`c1-${i}`))));
    expect(burst.map((e) => e?.code)).to.include('rate_limited');
  });

  it('fails for good when the server refuses the token and getToken gives no other', async () => {
    const refused = open({ token: 'not-a-token' });
    const seen = states(refused);
    await eventually(() => refused.state === 'failed');
    expect(seen).to.deep.equal(['failed']);
    expect((await errorOf(refused.joinChat('c1')))?.code).to.equal('unauthorized');

    let asked = 0;
    const same = open({ getToken: () => (asked++, 'still-not-a-token') });
    await eventually(() => same.state === 'failed');
    expect(asked).to.equal(2); // before the connect, and after the refusal

    const throwing = open({ token: 'bad', getToken: () => Promise.reject(new Error('token endpoint down')) });
    await eventually(() => throwing.state === 'failed' || throwing.state === 'connected');
    expect(throwing.state).to.equal('failed');
  });

  it('connects with a fresh token when getToken gives another after a refusal', async () => {
    const good = await node.token('u1', 'user');
    const tokens = ['expired-or-bad', good];
    let asked = 0;
    const client = open({ getToken: () => (asked++, tokens.shift() ?? good) });
    await eventually(() => client.state === 'connected');
    expect(asked, 'once before the first attempt, once after the refusal: its answer is used').to.equal(2);
  });

  it('asks getToken before every reconnect, rejoins after the server closes the transport, and the listeners go on', async () => {
    const g = await given();
    let asked = 0;
    const user = open({ getToken: async () => (asked++, node.token(g.userId, 'user')) });
    const seen = states(user);
    const session = await user.joinChat(g.chatId);
    const meters: MeterSnapshot[] = [];
    session.on('meter', (m) => meters.push(m));
    const advisor = await as('a1', 'advisor');
    await (await advisor.joinChat(g.chatId)).start();
    await eventually(() => meters.some((m) => m.state === 'running'));
    expect(asked).to.equal(1);

    for (const s of node.app.io.of('/').sockets.values()) if (s.data.principal?.sub === g.userId) s.conn.close();
    await eventually(() => seen.includes('reconnecting') && user.state === 'connected');
    expect(asked).to.equal(2);
    const before = meters.length;
    await eventually(() => meters.length > before + 5 && meters.at(-1)!.state === 'running');
    const seqs = meters.map((m) => m.seq);
    expect(seqs.every((s, i) => i === 0 || s > seqs[i - 1]!), `seqs ${seqs}`).to.equal(true);
  });

  it('rejoins after the node restarts on the same port, the same listeners receiving the restarted node\'s meters', async () => {
    const { session, meters, user } = await running();
    const seen = states(user);
    const port = Number(new URL(node.url).port);
    await node.close();
    await eventually(() => user.state === 'reconnecting');
    // while disconnected the countdown holds still (nobody bills it): over a second and more, not a tick down
    const frozen = session.secondsLeft();
    const downAt = Date.now();
    await eventually(() => Date.now() - downAt > 1200);
    expect(session.secondsLeft(), 'frozen while disconnected').to.equal(frozen);
    node = await startNode(db, {}, {}, port);
    await eventually(() => user.state === 'connected', 10_000);
    const before = meters.length;
    await eventually(() => meters.length > before + 3 && meters.at(-1)!.state === 'running', 10_000);
    expect(seen).to.include.ordered.members(['reconnecting', 'connected']);
  });

  it('moves to another node behind a balancer when its node shuts down, and the meters go on from the same record', async function () {
    if (!process.env.REDIS_URL || !db.url) return this.skip(); // two nodes share presence and pushes through Redis
    const other = await startNode(db);
    const balancer = await startBalancer([Number(new URL(node.url).port), Number(new URL(other.url).port)]);
    try {
      const g = await given();
      const user = open({ url: balancer.url, token: await node.token(g.userId, 'user') });
      const session = await user.joinChat(g.chatId);
      const meters: MeterSnapshot[] = [];
      session.on('meter', (m) => meters.push(m));
      await node.api('POST', `/v1/chats/${g.chatId}/start`);
      await eventually(() => meters.filter((m) => m.state === 'running').length >= 3);
      const seen = states(user);
      // whichever node holds the tab, shut one down and then the other's meters must carry on
      const holder = node.app.io.of('/').sockets.size > 0 ? node : other;
      const survivor = holder === node ? other : node;
      balancer.backends = [Number(new URL(survivor.url).port)];
      await holder.close();
      await eventually(() => seen.includes('reconnecting') && user.state === 'connected', 10_000);
      const before = meters.length;
      await eventually(() => meters.length > before + 3 && meters.at(-1)!.state === 'running', 10_000);
      expect(new Set(meters.map((m) => m.recordId)).size, 'one record throughout').to.equal(1);
      const seqs = meters.map((m) => m.seq);
      expect(seqs.every((s, i) => i === 0 || s > seqs[i - 1]!), `seqs ${seqs}`).to.equal(true);
      if (holder === node) node = survivor; // afterEach closes the node left; the finally closes the other (closing twice is a no-op)
    } finally {
      if (other !== node) await other.close();
      await balancer.close();
    }
  });

  it('leave() stops the heartbeats: the meter goes away and stays away', async () => {
    const { session, advisorSession } = await running();
    const advisorMeters: MeterSnapshot[] = [];
    advisorSession.on('meter', (m) => advisorMeters.push(m));
    const heartbeats: number[] = [];
    for (const s of node.app.io.of('/').sockets.values()) s.onAny((event) => event === 'heartbeat' && heartbeats.push(Date.now()));
    await eventually(() => heartbeats.length >= 2, 3000);
    await session.leave();
    const leftAt = Date.now();
    await eventually(() => advisorSession.meter.state === 'away');
    const count = heartbeats.length;
    await eventually(() => Date.now() - leftAt > 1000); // two heartbeat windows
    expect(heartbeats.length, 'heartbeats after leave()').to.equal(count);
    expect(advisorSession.meter.state).to.equal('away');
  });

  it('watchDashboard() lists pending and active chats, adds a chat created over HTTP, and drops it when it ends', async () => {
    await given();
    const advisor = await as('a1', 'advisor');
    const dashboard = await advisor.watchDashboard();
    expect([...dashboard.chats.keys()]).to.deep.equal(['c1']);
    const changes: Array<[string, unknown]> = [];
    dashboard.on('change', (id, entry) => changes.push([id, entry]));

    await given({ userId: 'u2', chatId: 'c2' });
    await eventually(() => dashboard.chats.has('c2'));
    expect(dashboard.chats.get('c2')).to.deep.include({ meter: null });
    expect(dashboard.chats.get('c2')!.chat).to.include({ status: 'pending', userId: 'u2' });

    // started by the user joining and the advisor starting: the entry goes active with a live meter
    const user2 = await as('u2', 'user');
    await user2.joinChat('c2');
    await node.api('POST', '/v1/chats/c2/start');
    await eventually(() => dashboard.chats.get('c2')?.meter?.state === 'running' && dashboard.chats.get('c2')?.chat.status === 'active');
    expect(dashboard.chats.get('c2')!.chat.startedAt).to.be.a('string');

    expect((await node.api('POST', '/v1/chats/c2/end')).status).to.equal(200);
    await eventually(() => !dashboard.chats.has('c2'));
    expect(changes.at(-1)).to.deep.equal(['c2', null]);
    expect([...dashboard.chats.keys()]).to.deep.equal(['c1']);
  });

  it('fires ended once with the reason, and a session joined on an ended chat fires none', async () => {
    const { session } = await running();
    const ended: unknown[] = [];
    session.on('ended', (e) => ended.push(e));
    const meter = await session.end();
    expect(meter.state).to.equal('ended');
    await eventually(() => ended.length === 1);
    expect(ended[0]).to.deep.include({ reason: 'ended_by_user' });

    const late = await as('u1', 'user');
    const again = await late.joinChat('c1');
    const lateEnded: unknown[] = [];
    again.on('ended', (e) => lateEnded.push(e));
    expect(again.meter.state).to.equal('ended');
    const joinedAt = Date.now();
    await eventually(() => Date.now() - joinedAt > 300);
    expect(lateEnded).to.deep.equal([]);
    expect(ended).to.have.length(1);
  });

  it('close() leaves every chat and leaves no timer behind: the process exits by itself', async function () {
    this.timeout(20_000);
    const g = await given();
    await node.api('POST', `/v1/chats/${g.chatId}/start`);
    const token = await node.token(g.userId, 'user');
    const script = `
      import { connect } from ${JSON.stringify(new URL('../client-sdk/src/index.ts', import.meta.url).href)};
      const client = connect({ url: ${JSON.stringify(node.url)}, token: ${JSON.stringify(token)} });
      const session = await client.joinChat(${JSON.stringify(g.chatId)});
      await new Promise((r) => setTimeout(r, 700)); // a heartbeat or two
      if (session.meter.state !== 'running' && (await new Promise((r) => session.on('meter', (m) => m.state === 'running' && r(m))))) {}
      client.close();
      console.log('closed', client.state, session.meter.chatId);
    `;
    const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    const started = Date.now();
    const code = await new Promise<number | null>((resolve) => {
      const kill = setTimeout(() => child.kill('SIGKILL'), 10_000);
      child.on('exit', (c) => {
        clearTimeout(kill);
        resolve(c);
      });
    });
    expect(code, `the process hung or failed: ${out}`).to.equal(0);
    expect(out).to.include('closed closed c1');
    expect(Date.now() - started).to.be.below(10_000);
    // and it left: the meter it ran is away
    await eventually(async () => (await node.api('GET', '/v1/chats/c1/meter')).body.state === 'away');
  });
});

describe('client SDK package', () => {
  it('resolves @chatmeter/client through its exports to the built ES module, CommonJS file and types', async () => {
    const esm = await import('@chatmeter/client');
    const source = await import('../client-sdk/src/index.js');
    expect(Object.keys(esm).sort()).to.deep.equal(Object.keys(source).sort());
    const { createRequire } = await import('node:module');
    const require = createRequire(import.meta.url);
    expect(Object.keys(require('@chatmeter/client')).sort()).to.deep.equal(Object.keys(source).sort());
    const pkg = require('@chatmeter/client/package.json');
    const { existsSync } = await import('node:fs');
    expect(existsSync(new URL(`../client-sdk/${pkg.exports['.'].types}`, import.meta.url))).to.equal(true);
  });

  it('serves the browser bundle at /sdk/chatmeter.js within its size budget, loadable from any origin', async () => {
    const db = await freshDatabase();
    const node = await startNode(db);
    try {
      const res = await fetch(`${node.url}/sdk/chatmeter.js`);
      expect(res.status).to.equal(200);
      expect(res.headers.get('content-type')).to.match(/^text\/javascript/);
      expect(res.headers.get('access-control-allow-origin')).to.equal('*');
      const code = Buffer.from(await res.arrayBuffer());
      expect(code.toString()).to.match(/export\s*\{/);
      // socket.io-client alone is about 13 KB gzipped; the SDK on top of it stays small
      const gzipped = gzipSync(code).length;
      expect(gzipped, `${gzipped} bytes gzipped`).to.be.below(20 * 1024);
      expect(code.toString(), 'no Node built-ins in the browser bundle').to.not.match(/from\s*["']node:|require\(["'](ws|net|tls|http)["']\)/);
    } finally {
      await node.close();
      await db.close();
    }
  });
});
