/**
 * The SDK against a scripted socket.io server on loopback: what a real node can't be made to do
 * on demand (stale seqs, an ack that never comes, a made-up server clock, an internal error).
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { expect } from 'chai';
import { Server, type Socket } from 'socket.io';
import { type Client, ChatmeterError, type MeterSnapshot, connect } from '../client-sdk/src/index.js';
import { Backoff, ServerClock } from '../client-sdk/src/timing.js';
import { eventually } from './support/server.js';

const SERVER_EPOCH = Date.parse('2026-12-02T12:00:00.000Z');

function snapshot(over: Partial<MeterSnapshot> = {}): MeterSnapshot {
  return {
    chatId: 'c1',
    recordId: 'r1',
    userId: 'u1',
    advisorId: 'a1',
    state: 'running',
    durationSeconds: 0,
    freeSecondsUsed: 0,
    freeSecondsRemaining: 60,
    freeSecondsAllocation: 60,
    creditsUsed: '0.0000',
    balance: '10.0000',
    ratePerMinute: '6.0000',
    secondsAffordable: 100,
    seq: 1,
    serverTime: new Date(SERVER_EPOCH).toISOString(),
    ...over,
  };
}

const chatView = { id: 'c1', userId: 'u1', advisorId: 'a1', status: 'active', endReason: null, createdAt: '', startedAt: '', endedAt: null };

/** A scripted server: `on(event, handler)` for every connection; handlers get the socket, payload and ack. */
async function scripted(handlers: Record<string, (s: Socket, payload: any, ack: (a: unknown) => void) => void>) {
  const http = createServer();
  const io = new Server(http);
  const sockets: Socket[] = [];
  const heartbeats: number[] = [];
  io.on('connection', (s) => {
    sockets.push(s);
    s.on('heartbeat', (_p, ack?: (a: unknown) => void) => {
      heartbeats.push(Date.now());
      ack?.({ ok: true, serverTime: new Date().toISOString() });
    });
    for (const [event, handler] of Object.entries(handlers)) s.on(event, (p, ack) => handler(s, p, ack ?? (() => undefined)));
  });
  await new Promise<void>((r) => http.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${(http.address() as AddressInfo).port}`;
  return {
    url,
    io,
    sockets,
    heartbeats,
    close: () => new Promise<void>((r) => io.close(() => r())),
  };
}

const joinAck = (meter = snapshot(), heartbeatIntervalMs = 10_000) => ({ ok: true, chat: chatView, meter, heartbeatIntervalMs });
/** A JWT-shaped token with these claims (the scripted server doesn't check it; the SDK reads the role). */
const tokenFor = (role: 'user' | 'advisor') =>
  `e30.${Buffer.from(JSON.stringify({ sub: role === 'user' ? 'u1' : 'a1', role })).toString('base64url')}.sig`;

describe('client SDK (scripted server)', () => {
  const clients: Client[] = [];
  const closers: Array<() => Promise<void>> = [];
  const open = (opts: Parameters<typeof connect>[0]) => {
    const c = connect(opts);
    clients.push(c);
    return c;
  };
  afterEach(async () => {
    for (const c of clients.splice(0)) c.close();
    for (const close of closers.splice(0)) await close();
  });
  async function server(handlers: Parameters<typeof scripted>[0]) {
    const s = await scripted(handlers);
    closers.push(s.close);
    return s;
  }

  it('drops every snapshot whose seq is not above the last one seen', async () => {
    const srv = await server({ 'chat:join': (_s, _p, ack) => ack(joinAck(snapshot({ seq: 2 }))) });
    const client = open({ url: srv.url, token: tokenFor('user') });
    const session = await client.joinChat('c1');
    const seen: number[] = [];
    session.on('meter', (m) => seen.push(m.seq));
    for (const seq of [3, 2, 4, 4, 1, 5]) srv.sockets[0]!.emit('meter', snapshot({ seq }));
    await eventually(() => session.meter.seq === 5);
    expect(seen).to.deep.equal([3, 4, 5]);
  });

  it('keeps the pushes that overtake a join\'s answer: the session starts from the newest, and an end still fires', async () => {
    const srv = await server({
      'chat:join': (s, _p, ack) => {
        ack(joinAck(snapshot({ seq: 2 })));
        // sent with the answer, so they arrive before the join's promise settles
        s.emit('meter', snapshot({ seq: 3, durationSeconds: 1 }));
        s.emit('chat:ended', { chatId: 'c1', reason: 'out_of_credits', meter: snapshot({ seq: 4, state: 'ended' }) });
      },
    });
    const session = await open({ url: srv.url, token: tokenFor('user') }).joinChat('c1');
    expect(session.meter.seq).to.equal(4);
    const ended = await new Promise((resolve) => session.on('ended', resolve));
    expect(ended).to.deep.include({ reason: 'out_of_credits' });
  });

  it('counts secondsLeft() down on the server clock between pushes, whole seconds, never below 0, frozen unless running', async () => {
    let now = 1_000_000; // our clock, far from the server's: only the offset matters
    const srv = await server({
      'chat:join': (_s, _p, ack) => ack(joinAck(snapshot({ secondsAffordable: 100, serverTime: new Date(SERVER_EPOCH).toISOString() }))),
      'chat:pause': (_s, _p, ack) =>
        ack({ ok: true, chat: chatView, meter: snapshot({ seq: 9, state: 'paused', secondsAffordable: 97, serverTime: new Date(SERVER_EPOCH + 3000).toISOString() }) }),
    });
    const client = open({ url: srv.url, token: tokenFor('advisor'), now: () => now });
    const session = await client.joinChat('c1');
    // the join's answer came back at our `now`, stamped SERVER_EPOCH: offset = SERVER_EPOCH - now
    expect(session.secondsLeft()).to.equal(100);
    now += 250;
    expect(session.secondsLeft()).to.equal(99); // 99.75, rounded down
    now += 2250;
    expect(session.secondsLeft()).to.equal(97);
    now += 500_000;
    expect(session.secondsLeft()).to.equal(0);
    now = 1_000_000 + 3000;
    await session.pause();
    now += 60_000;
    expect(session.secondsLeft(), 'paused: the snapshot, not a countdown').to.equal(97);
  });

  it('shares one join and one session between two joins of a chat at once', async () => {
    let joins = 0;
    const srv = await server({ 'chat:join': (_s, _p, ack) => (joins++, ack(joinAck())) });
    const client = open({ url: srv.url, token: tokenFor('user') });
    const [a, b] = await Promise.all([client.joinChat('c1'), client.joinChat('c1')]);
    expect(a).to.equal(b);
    expect(joins).to.equal(1);
    expect(await client.joinChat('c1'), 'a later join returns the same session').to.equal(a);
  });

  describe('dashboard', () => {
    const listed = (id: string, over: Partial<typeof chatView> = {}) => ({ chat: { ...chatView, id, status: 'pending', startedAt: null, ...over }, meter: null });

    it('keeps a chat created while its first list is read', async () => {
      const srv = await server({
        'advisor:chats': (s, _p, ack) => {
          // created after the list was read, pushed before the answer
          s.emit('chat:created', { chat: { ...chatView, id: 'c2', status: 'pending' } });
          ack({ ok: true, chats: [listed('c1')] });
        },
      });
      const dashboard = await open({ url: srv.url, token: tokenFor('advisor') }).watchDashboard();
      expect([...dashboard.chats.keys()].sort()).to.deep.equal(['c1', 'c2']);
    });

    it('shows a listed chat as its newer meter says, not as the older list does', async () => {
      let lists = 0;
      const srv = await server({
        'advisor:chats': (_s, _p, ack) => ack({ ok: true, chats: [listed('c1')], n: ++lists }),
      });
      const client = open({ url: srv.url, token: tokenFor('advisor') });
      const dashboard = await client.watchDashboard();
      srv.sockets[0]!.emit('meter', snapshot({ seq: 5, state: 'paused' }));
      await eventually(() => dashboard.chats.get('c1')?.meter?.seq === 5);
      await client.watchDashboard(); // a list read before the start arrives after the meter
      expect(dashboard.chats.get('c1')!.chat.status).to.equal('active');
      expect(dashboard.chats.get('c1')!.meter!.state).to.equal('paused');
    });

    it('reads the list again when a meter of an unknown chat comes, retrying a refusal for a passing reason', async () => {
      let lists = 0;
      const srv = await server({
        'advisor:chats': (_s, _p, ack) => {
          lists++;
          if (lists === 1) return ack({ ok: true, chats: [listed('c1')] });
          if (lists === 2) return ack({ ok: false, error: { code: 'rate_limited', message: 'slow down' } });
          ack({ ok: true, chats: [listed('c1'), listed('c2', { status: 'active' })] });
        },
      });
      const dashboard = await open({ url: srv.url, token: tokenFor('advisor') }).watchDashboard();
      srv.sockets[0]!.emit('meter', snapshot({ chatId: 'c2', seq: 3 }));
      await eventually(() => dashboard.chats.has('c2'), 4000);
      expect(lists).to.equal(3);
    });

    it('rejects the first watchDashboard() of a user with forbidden', async () => {
      const srv = await server({ 'advisor:chats': (_s, _p, ack) => ack({ ok: false, error: { code: 'forbidden', message: 'advisors only' } }) });
      const client = open({ url: srv.url, token: tokenFor('user') });
      const err = await client.watchDashboard().catch((e: unknown) => e);
      expect(err).to.include({ code: 'forbidden' });
    });
  });

  it('tries the last token when getToken throws or hangs on a reconnect', async () => {
    let mode: 'ok' | 'throw' | 'hang' = 'ok';
    let asked = 0;
    const srv = await server({ 'chat:join': (_s, _p, ack) => ack(joinAck()) });
    const client = open({
      url: srv.url,
      timeoutMs: 300,
      backoff: { baseMs: 20, capMs: 50 },
      getToken: () => {
        asked++;
        if (mode === 'throw') throw new Error('token endpoint down');
        if (mode === 'hang') return new Promise<string>(() => undefined);
        return tokenFor('user');
      },
    });
    await client.joinChat('c1');
    for (const m of ['throw', 'hang'] as const) {
      mode = m;
      const before = srv.sockets.length;
      srv.sockets.at(-1)!.disconnect(true);
      await eventually(() => srv.sockets.length === before + 1 && client.state === 'connected', 3000);
    }
    expect(asked).to.equal(3);
  });

  it('answers null from secondsLeft() when the rate is 0 (unlimited)', async () => {
    const srv = await server({ 'chat:join': (_s, _p, ack) => ack(joinAck(snapshot({ secondsAffordable: null }))) });
    const session = await open({ url: srv.url, token: tokenFor('user') }).joinChat('c1');
    expect(session.secondsLeft()).to.equal(null);
  });

  it('rejects with timeout when no answer comes within timeoutMs, and with disconnected when the connection drops first', async () => {
    const srv = await server({
      'chat:join': () => undefined, // never answers
      'chat:end': (s) => s.disconnect(true),
    });
    const client = open({ url: srv.url, token: tokenFor('user'), timeoutMs: 300 });
    const started = Date.now();
    const timedOut = await client.joinChat('c1').catch((e: unknown) => e);
    expect(timedOut).to.be.instanceOf(ChatmeterError);
    expect((timedOut as ChatmeterError).code).to.equal('timeout');
    expect(Date.now() - started).to.be.within(250, 2000);
    const dropped = await client.call('chat:end', { chatId: 'c1' }).catch((e: unknown) => e);
    expect((dropped as ChatmeterError).code).to.equal('disconnected');
  });

  it('passes the server\'s error code through, internal included', async () => {
    const srv = await server({ 'chat:join': (_s, _p, ack) => ack({ ok: false, error: { code: 'internal', message: 'boom' } }) });
    const err = await open({ url: srv.url, token: tokenFor('user') }).joinChat('c1').catch((e: unknown) => e);
    expect(err).to.be.instanceOf(ChatmeterError);
    expect(err).to.include({ code: 'internal', message: 'boom' });
  });

  it('heartbeats a user session from each answer, and stops when the session leaves', async () => {
    const srv = await server({
      'chat:join': (_s, _p, ack) => ack(joinAck(snapshot(), 100)),
      'chat:leave': (_s, _p, ack) => ack({ ok: true }),
    });
    const session = await open({ url: srv.url, token: tokenFor('user') }).joinChat('c1');
    await eventually(() => srv.heartbeats.length >= 5, 3000);
    await session.leave();
    const after = srv.heartbeats.length;
    const leftAt = Date.now();
    await eventually(() => Date.now() - leftAt > 500); // five intervals: a running loop would have sent some
    expect(srv.heartbeats.length).to.equal(after);
  });

  it('sends no heartbeat for an advisor\'s session', async () => {
    const srv = await server({ 'chat:join': (_s, _p, ack) => ack(joinAck(snapshot(), 100)) });
    await open({ url: srv.url, token: tokenFor('advisor') }).joinChat('c1');
    const joinedAt = Date.now();
    await eventually(() => Date.now() - joinedAt > 500);
    expect(srv.heartbeats).to.have.length(0);
  });

  describe('waking up (a browser page: online, pageshow, visibilitychange)', () => {
    const page = globalThis as { addEventListener?: unknown; removeEventListener?: unknown };
    let target: EventTarget;
    beforeEach(() => {
      target = new EventTarget();
      page.addEventListener = target.addEventListener.bind(target);
      page.removeEventListener = target.removeEventListener.bind(target);
    });
    afterEach(() => {
      delete page.addEventListener;
      delete page.removeEventListener;
    });

    it('retries at once instead of waiting out the backoff', async () => {
      const http = createServer();
      await new Promise<void>((r) => http.listen(0, '127.0.0.1', r));
      const port = (http.address() as AddressInfo).port;
      await new Promise<void>((r) => http.close(() => r())); // nobody listens: the first attempt fails
      const client = open({ url: `http://127.0.0.1:${port}`, token: tokenFor('user'), backoff: { baseMs: 60_000, capMs: 60_000, random: () => 0.99 } });
      const srv = await eventually(async () => {
        if (client.state !== 'connecting') return null;
        await new Promise((r) => setTimeout(r, 300)); // the failed attempt is over: a minute's wait is set
        const io = new Server(port);
        closers.push(() => new Promise<void>((r) => io.close(() => r())));
        return io;
      });
      await new Promise((r) => setTimeout(r, 300));
      expect(client.state, 'still waiting out the backoff').to.equal('connecting');
      target.dispatchEvent(new Event('online'));
      await eventually(() => client.state === 'connected', 3000);
      expect(srv.engine.clientsCount).to.equal(1);
    });

    it('replaces a connection silent for 45 s by wall time, and keeps one that is not', async () => {
      let now = Date.now();
      const srv = await server({ 'chat:join': (_s, _p, ack) => ack(joinAck()) });
      const client = open({ url: srv.url, token: tokenFor('user'), now: () => now });
      await client.joinChat('c1');
      target.dispatchEvent(new Event('online'));
      await new Promise((r) => setTimeout(r, 200));
      expect(srv.sockets, 'a live connection stays').to.have.length(1);
      now += 46_000; // the page slept: no timer ran, nothing was heard
      target.dispatchEvent(new Event('pageshow'));
      await eventually(() => srv.sockets.length === 2 && client.state === 'connected', 3000);
    });
  });

  it('waits for the connection before a call, within timeoutMs', async () => {
    const srv = await server({ 'chat:join': (_s, _p, ack) => ack(joinAck()) });
    const client = open({ url: srv.url, token: tokenFor('user') });
    expect(client.state).to.equal('connecting');
    const session = await client.joinChat('c1'); // called before the socket connected
    expect(session.chatId).to.equal('c1');
    expect(client.state).to.equal('connected');
  });
});

describe('client SDK timing', () => {
  it('backs off with full jitter: each wait in [0, min(cap, base * 2^n)), widening, then reset', () => {
    const top = new Backoff(500, 20_000, () => 0.999999);
    expect([1, 2, 3, 4, 5, 6, 7, 8].map(() => top.next())).to.deep.equal([499, 999, 1999, 3999, 7999, 15999, 19999, 19999]);
    top.reset();
    expect(top.next()).to.equal(499);
    expect(new Backoff(500, 20_000, () => 0).next()).to.equal(0);
  });

  it('estimates the server clock from the round trip with the shortest time', () => {
    const clock = new ServerClock(() => 10_000);
    clock.sample(0, 400, new Date(5200).toISOString()); // midpoint 200: offset 5000, rtt 400
    clock.sample(1000, 1020, new Date(6110).toISOString()); // midpoint 1010: offset 5100, rtt 20
    clock.sample(2000, 2900, new Date(9000).toISOString()); // rtt 900: ignored while a better one is kept
    expect(clock.offsetMs).to.equal(5100);
    expect(clock.serverNow()).to.equal(15_100);
    clock.sample(3000, 2000, 'not a time');
    expect(clock.offsetMs).to.equal(5100);
  });
});
