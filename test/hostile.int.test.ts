/**
 * Hostile clients against a real node (issue 10, item 3): the published socket.io, engine.io
 * and ws advisories replayed as raw frames, floods of events, tokens with odd claims. Each
 * must end in a clear refusal with the node alive and nothing billed.
 */
import { createHmac } from 'node:crypto';
import { connect as tcpConnect } from 'node:net';
import { expect } from 'chai';
import { WebSocket } from 'ws';
import { verifyInvariants } from '../server/verify.js';
import { freshDatabase, type TestDb } from './support/db.js';
import { type TestNode, call, connectWith, eventually, startNode, waitFor } from './support/server.js';

/** A raw engine.io v4 / socket.io v5 connection: frames out exactly as written, frames in as received. */
interface Raw {
  ws: WebSocket;
  frames: Array<string | Buffer>;
  closed: boolean;
  send(...frames: Array<string | Buffer>): void;
  /** The first text frame not yet consumed that matches `pred`; consumes everything up to it. */
  next(pred: (f: string) => boolean, ms?: number): Promise<string>;
}

/** How a replayed frame must be refused. */
type Outcome =
  | 'closed' // the server cuts the connection (parser or protocol error)
  | 'ignored' // handled without an answer; the socket keeps serving
  | 'bad_request' // answered on ack id 7 with `{ ok: false, error: { code: 'bad_request' } }`
  | 'invalid_namespace'; // a CONNECT_ERROR for that namespace; the socket keeps serving

type Replay = [what: string, frames: Array<string | Buffer>, outcome: Outcome];

/** An HS256 JWT over `claims` exactly as written (so `1e999`, NUL or a string `exp` go through as they are). */
function hs256(secret: string, claims: string): string {
  const signed = [JSON.stringify({ alg: 'HS256', typ: 'JWT' }), claims].map((s) => Buffer.from(s).toString('base64url')).join('.');
  return `${signed}.${createHmac('sha256', secret).update(signed).digest('base64url')}`;
}

/** A claims object from raw JSON values; `undefined` leaves the claim out. */
const claimsText = (c: Record<string, string | undefined>) =>
  `{${Object.entries(c).filter(([, v]) => v !== undefined).map(([k, v]) => `${JSON.stringify(k)}:${v}`).join(',')}}`;

/** Writes `request` on a plain TCP socket and resolves with everything the server sent before closing. */
function rawHttp(port: number, request: string, ms = 5000): Promise<string> {
  return new Promise((resolve, reject) => {
    const sock = tcpConnect(port, '127.0.0.1', () => sock.end(request));
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error(`no close within ${ms} ms; got ${Buffer.concat(chunks).toString().slice(0, 80)}`));
    }, ms);
    sock.on('data', (c) => chunks.push(c));
    sock.on('error', () => undefined); // a reset after the answer is still an answer
    sock.on('close', () => {
      clearTimeout(timer);
      resolve(Buffer.concat(chunks).toString('latin1'));
    });
  });
}

describe('hostile clients (real node, raw frames on loopback)', () => {
  let db: TestDb;
  let node: TestNode;
  let baseline: unknown;
  const raws: Raw[] = [];
  const timers: NodeJS.Timeout[] = [];

  before(async () => {
    db = await freshDatabase();
  });
  after(() => db.close());

  /** Every balance, ledger line and billed second: what a hostile client must never move. */
  const billing = async () => ({
    users: await db.ds.query(`SELECT id, balance::text FROM users ORDER BY id`),
    ledger: await db.ds.query(`SELECT id::text, user_id, type, amount::text, balance_after::text, chat_id FROM ledger_entries ORDER BY id`),
    records: await db.ds.query(`SELECT chat_id, duration, credits_used::text, meter_state FROM conversation_time_records ORDER BY chat_id`),
  });

  /** A normal client on the bystander's pending chat: connects and joins. */
  const bystanderJoins = async () => {
    const s = await connectWith(node.url, { token: await node.token('u2', 'user') });
    try {
      const ack = await call(s, 'chat:join', { chatId: 'c2' }, 2000);
      expect(ack.ok, JSON.stringify(ack)).to.equal(true);
      expect(ack.meter.state).to.equal('pending');
    } finally {
      s.close();
    }
  };

  /** The node is alive and serving, and nothing was billed since the baseline. */
  async function aliveAndUnbilled(after: string) {
    expect((await fetch(`${node.url}/healthz`)).status, `healthz after ${after}`).to.equal(200);
    await bystanderJoins();
    expect(await billing(), `billing after ${after}`).to.deep.equal(baseline);
    // within the first second a join that got through would bill nothing yet, but it would have made the attacker present
    expect(await node.app.services.presence.span('c-bad', Date.now()), `the attacker's presence after ${after}`).to.equal(null);
    expect(await verifyInvariants(db.ds), `invariants after ${after}`).to.deep.equal([]);
  }

  async function openRaw(): Promise<Raw> {
    const ws = new WebSocket(`${node.url.replace('http', 'ws')}/socket.io/?EIO=4&transport=websocket`);
    let cursor = 0;
    const raw: Raw = {
      ws,
      frames: [],
      closed: false,
      send: (...frames) => frames.forEach((f) => ws.send(f)),
      async next(pred, ms = 3000) {
        const at = await eventually(() => {
          const i = raw.frames.findIndex((f, j) => j >= cursor && typeof f === 'string' && pred(f));
          return i >= 0 ? i + 1 : raw.closed ? Promise.reject(new Error('closed')) : 0;
        }, ms);
        cursor = at;
        return raw.frames[at - 1] as string;
      },
    };
    raws.push(raw);
    ws.on('message', (data, isBinary) => {
      const f = isBinary ? (data as Buffer) : data.toString();
      if (f === '2') ws.send('3'); // engine.io ping: pong
      raw.frames.push(f);
    });
    ws.on('close', () => (raw.closed = true));
    ws.on('error', () => undefined); // a refused or cut connection closes: that is what is asserted
    await raw.next((f) => f.startsWith('0{')); // engine.io open
    return raw;
  }

  /** A raw connection through the namespace handshake as the attacker (user u-bad). */
  async function connectedRaw(): Promise<Raw> {
    const raw = await openRaw();
    raw.send(`40${JSON.stringify({ token: await node.token('u-bad', 'user') })}`);
    await raw.next((f) => f.startsWith('40{'));
    return raw;
  }

  const serverSockets = () => node.app.io.of('/').sockets.size;

  /** Sends each replay on a fresh connection, checks its refusal, then that the node is alive and nothing was billed. */
  async function replay(replays: Replay[]) {
    for (const [what, frames, outcome] of replays) {
      const raw = await connectedRaw();
      raw.send(...frames);
      if (outcome === 'closed') {
        await eventually(() => raw.closed, 3000).catch(() => expect.fail(`${what}: the connection was not closed`));
        await eventually(() => serverSockets() === 0, 3000);
      } else {
        if (outcome === 'bad_request') {
          const ack = JSON.parse((await raw.next((f) => f.startsWith('437['))).slice(3))[0];
          expect(ack, what).to.deep.include({ ok: false });
          expect(ack.error.code, what).to.equal('bad_request');
        }
        if (outcome === 'invalid_namespace') expect(await raw.next((f) => f.startsWith('44/admin,')), what).to.contain('Invalid namespace');
        // still serving, in order: an event behind the hostile frame is answered
        raw.send('4290["chat:leave",{"chatId":"nope"}]');
        const probe = JSON.parse((await raw.next((f) => f.startsWith('4390['))).slice(4))[0];
        expect(probe.error?.code, `${what}: the probe after it`).to.equal('not_found');
        expect(raw.closed, what).to.equal(false);
        expect(serverSockets(), what).to.equal(1);
        raw.ws.terminate();
        await eventually(() => serverSockets() === 0, 3000);
      }
      await aliveAndUnbilled(what);
    }
  }

  beforeEach(async () => {
    await db.reset();
    node = await startNode(db);
    const put = async (path: string, body: unknown, method = 'PUT') => {
      const res = await node.api(method, path, body);
      expect(res.status, `${method} ${path}: ${JSON.stringify(res.body)}`).to.be.oneOf([200, 201]);
    };
    await put('/v1/advisors/a1', { name: 'Ada', ratePerMinute: '6', freeSeconds: 0 });
    // the attacker's chat is running (started over HTTP) while the attacker is away: a join that
    // got through any crafted frame would start billing it
    await put('/v1/users/u-bad', { name: 'Mallory', balance: '10' });
    await put('/v1/chats', { id: 'c-bad', userId: 'u-bad', advisorId: 'a1' }, 'POST');
    await put('/v1/chats/c-bad/start', undefined, 'POST');
    await put('/v1/users/u2', { name: 'Bob', balance: '10' });
    await put('/v1/chats', { id: 'c2', userId: 'u2', advisorId: 'a1' }, 'POST');
    await bystanderJoins(); // its first join creates its (pending) record: part of the baseline
    baseline = await billing();
  });
  afterEach(async () => {
    for (const raw of raws.splice(0)) raw.ws.terminate();
    timers.splice(0).forEach(clearInterval);
    await node.close();
  });

  describe('published advisories replayed as raw frames', () => {
    it('CVE-2024-38355: an event named "error" (socket.io < 4.6.2 re-emitted it with no listener: ERR_UNHANDLED_ERROR killed the process)', () =>
      replay([
        ['42["error","x"]', ['42["error","x"]'], 'ignored'],
        ['42["error"]', ['42["error"]'], 'ignored'],
        ['427["error",{"chatId":"c-bad"}] with an ack', ['427["error",{"chatId":"c-bad"}]'], 'bad_request'],
      ]));

    it('CVE-2023-32695: event names that are not strings, or reserved (socket.io-parser < 4.2.3 let `42[{"toString":"foo"}]` throw in EventEmitter.emit)', () =>
      replay([
        ...['[{"toString":"foo"}]', '[true,"foo"]', '[null,"bar"]', '[["chat:join"],{"chatId":"c-bad"}]', '["connect"]', '["disconnect","123"]', '["disconnecting"]', '["newListener","x"]'].map(
          (p): Replay => [`42${p}`, [`42${p}`], 'closed'],
        ),
        // a number is a legal event name in the protocol: an unknown event, answered
        ['427[1,{"chatId":"c-bad"}]', ['427[1,{"chatId":"c-bad"}]'], 'bad_request'],
      ]));

    it('CVE-2022-2421: binary placeholders with a bad `num` (socket.io-parser < 4.2.1 took buffers[num] unchecked: `__proto__` or `splice` put functions into the event args)', () => {
      const bad = ['"__proto__"', '"splice"', '"toString"', '"0"', '-1', '1', 'null', '1e999'];
      return replay([
        ...bad.map((num): Replay => {
          const frame = `451-["chat:join",{"_placeholder":true,"num":${num}}]`;
          return [`${frame} + 1 attachment`, [frame, Buffer.from('c-bad')], 'closed'];
        }),
        ['a nested placeholder with num "__proto__"', ['451-["chat:join",{"chatId":{"_placeholder":true,"num":"__proto__"}}]', Buffer.from('c-bad')], 'closed'],
        // in range but not an integer: the parser passes it and substitutes buffers[0.5], undefined; the schema refuses that
        ['num 0.5', ['451-7["chat:join",{"_placeholder":true,"num":0.5}]', Buffer.from('c-bad')], 'bad_request'],
        // a well-formed attachment arrives as a Buffer: never coerced into the chat id "c-bad"
        ['a valid placeholder for the chat id', ['451-7["chat:join",{"chatId":{"_placeholder":true,"num":0}}]', Buffer.from('c-bad')], 'bad_request'],
      ]);
    });

    it('malformed packets: bad JSON, unknown packet types, huge attachment counts, frames out of order, oversized frames', () =>
      replay([
        ['truncated JSON', ['42["chat:join",{"chatId":'], 'closed'],
        ['socket.io packet type 9', ['49["chat:join",{"chatId":"c-bad"}]'], 'closed'],
        ['engine.io packet type 9', ['9hello'], 'closed'],
        ['11 attachments (the parser allows 10)', ['4511-["chat:join",{"_placeholder":true,"num":0}]'], 'closed'],
        ['99999999999 attachments', ['4599999999999-["chat:join",{"_placeholder":true,"num":0}]'], 'closed'],
        ['0 attachments', ['450-["chat:join",{"chatId":"c-bad"}]'], 'closed'],
        ['a binary frame with no binary packet', [Buffer.from('c-bad')], 'closed'],
        // the join would bill the attacker's running chat if it ran: it must not
        ['a text packet while an attachment is awaited', ['451-["chat:join",{"_placeholder":true,"num":0}]', '42["chat:join",{"chatId":"c-bad"}]'], 'closed'],
        ['a second CONNECT on a connected namespace', ['40{}'], 'closed'],
        ['a 17 KB frame (maxHttpBufferSize is 16 KB)', [`42["chat:join",{"chatId":"${'x'.repeat(17_000)}"}]`], 'closed'],
        ['a CONNECT to an unknown namespace', ['40/admin,{}'], 'invalid_namespace'],
      ]));

    it('CVE-2024-37890: an upgrade request with 2,000 headers before Upgrade (ws < 8.17.1 read the headers Node dropped past maxHeadersCount: crash)', async () => {
      const port = Number(new URL(node.url).port);
      // the advisory's proof of concept: 2,000 distinct two-character names (under Node's 16 KB header cap)
      const chars = "!#$%&'*+-.0123456789abcdefghijklmnopqrstuvwxyz^_`|~".split('');
      const names = chars.flatMap((a) => chars.map((b) => a + b));
      const filler = (n: number, value = 'x') => names.slice(0, n).map((k) => `${k}: ${value}\r\n`).join('');
      const upgrade = 'Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n';
      const request = (headers: string) => `GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n${headers}\r\n`;

      // control: the same upgrade headers first, within the count, are a real upgrade
      const control = await new Promise<string>((resolve, reject) => {
        const sock = tcpConnect(port, '127.0.0.1', () => sock.write(request(upgrade + filler(100))));
        sock.once('data', (c) => {
          sock.destroy();
          resolve(c.toString('latin1'));
        });
        sock.once('error', reject);
      });
      expect(control).to.match(/^HTTP\/1\.1 101 /);
      await eventually(() => node.app.io.engine.clientsCount === 0);

      // the replay: Upgrade, Connection and the key are past the 2,000th header, so req.headers lacks them
      expect(await rawHttp(port, request(filler(2000) + upgrade)), 'upgrade headers dropped').to.match(/^HTTP\/1\.1 400 /);
      await aliveAndUnbilled('2,000 headers');
      // 2,704 headers of 10 bytes of names and values (27 KB): over Node's 16 KB cap, refused by the HTTP parser itself
      expect(await rawHttp(port, request(filler(names.length, 'x'.repeat(8)) + upgrade)), 'over the header size cap').to.match(/^HTTP\/1\.1 431 /);
      await aliveAndUnbilled('2,704 headers');
    });
  });

  describe('floods', () => {
    it('1,000 joins then 1,000 heartbeats from one socket: rate_limited past 20/s, another socket answered within 2 s, only the chat\'s own metering billed', async () => {
      expect((await node.api('PUT', '/v1/users/u1', { name: 'Flo', balance: '100' })).status).to.equal(201);
      expect((await node.api('POST', '/v1/chats', { id: 'c1', userId: 'u1', advisorId: 'a1' })).status).to.equal(201);
      const tab = await node.connect('u1', 'user');
      expect((await call(tab, 'chat:join', { chatId: 'c1' })).ok).to.equal(true);
      const advisor = await node.connect('a1', 'advisor');
      const bystander = await node.connect('u2', 'user');
      const startedAt = Date.now();
      expect((await call(advisor, 'chat:start', { chatId: 'c1' })).ok).to.equal(true);
      // normal heartbeats throughout (10/s, within the limit): the chat is metered before, during and after the floods
      timers.push(setInterval(() => tab.emit('heartbeat', { chatId: 'c1' }), 100));
      await waitFor(advisor, 'meter', (m) => m.chatId === 'c1' && m.durationSeconds >= 1, 5000);

      for (const event of ['chat:join', 'heartbeat']) {
        const floodAt = Date.now();
        const flood = Promise.all(Array.from({ length: 1000 }, () => call(tab, event, { chatId: 'c1' }, 20_000)));
        const askedAt = Date.now();
        const other = await call(bystander, 'chat:join', { chatId: 'c2' }, 2000); // rejects past 2 s
        const latency = Date.now() - askedAt;
        expect(other.ok, `bystander during the ${event} flood`).to.equal(true);
        expect(latency, `bystander join latency (ms) during the ${event} flood`).to.be.below(2000);
        const acks = await flood;
        // fixed 1 s windows of 20 points: the flood can overlap at most this many of them
        const windows = Math.ceil((Date.now() - floodAt) / 1000) + 1;
        const codes = acks.map((a) => (a.ok ? 'ok' : a.error.code));
        const ok = codes.filter((c) => c === 'ok').length;
        expect([...new Set(codes)].filter((c) => c !== 'ok' && c !== 'rate_limited'), `${event}: codes other than ok and rate_limited`).to.deep.equal([]);
        expect(ok, `${event}: events served`).to.be.at.most(20 * windows);
        if (event === 'chat:join') expect(ok, 'some joins are served').to.be.at.least(1);
        expect(codes.length - ok, `${event}: rate_limited`).to.be.at.least(1000 - 20 * windows);
        expect(tab.connected).to.equal(true);
      }

      const metered = await waitFor(advisor, 'meter', (m) => m.chatId === 'c1' && m.durationSeconds >= 3, 8000);
      timers.splice(0).forEach(clearInterval);
      const ended = await call(advisor, 'chat:end', { chatId: 'c1' });
      const endedAt = Date.now();
      expect(ended.ok, JSON.stringify(ended)).to.equal(true);
      const { durationSeconds, creditsUsed, balance } = ended.meter;
      // at most the wall time it ran, plus one tick; 6 credits a minute is 0.1 a second
      expect(durationSeconds).to.be.at.least(metered.durationSeconds);
      expect(durationSeconds).to.be.at.most(Math.ceil((endedAt - startedAt) / 1000) + 1);
      expect(creditsUsed).to.equal((durationSeconds / 10).toFixed(4));
      expect(balance).to.equal((100 - durationSeconds / 10).toFixed(4));
      const [charged] = await db.ds.query(`SELECT coalesce(sum(amount), 0)::numeric(20,4)::text AS sum FROM ledger_entries WHERE type = 'charge' AND chat_id = 'c1'`);
      expect(charged.sum).to.equal(creditsUsed);
      // nothing else moved: the attacker's and the bystander's money and records are as they were
      const now = await billing();
      expect(now.users.filter((u: { id: string }) => u.id !== 'u1')).to.deep.equal((baseline as typeof now).users);
      expect(now.ledger.filter((e: { user_id: string }) => e.user_id !== 'u1')).to.deep.equal((baseline as typeof now).ledger);
      expect(now.records.filter((r: { chat_id: string }) => r.chat_id !== 'c1')).to.deep.equal((baseline as typeof now).records);
      expect(await verifyInvariants(db.ds)).to.deep.equal([]);
    });

    // FINDING: unknown events skip the rate limiter (socket.onAny answers them bad_request before any
    // consume()), so `421["no:such:event",{}]` is answered every time however fast it comes. Cheap (no
    // I/O, one ack per frame), but SPEC 2's 20 events/s per socket doesn't hold for them. Unskip once
    // unknown events count against the limit.
    it('rate limits 1,000 unknown events from one socket past 20/s, like any other event', async () => {
      const tab = await node.connect('u2', 'user');
      const floodAt = Date.now();
      const acks = await Promise.all(Array.from({ length: 1000 }, () => call(tab, 'no:such:event', {}, 20_000)));
      const windows = Math.ceil((Date.now() - floodAt) / 1000) + 1;
      expect(acks.filter((a) => a.error?.code === 'rate_limited').length).to.be.at.least(1000 - 20 * windows);
    });
  });

  describe('tokens with odd claims', () => {
    /** The connect_error message for `token`, or null when it connected. */
    const refusal = (token: string) =>
      connectWith(node.url, { token }).then(
        (s) => {
          s.close();
          return null;
        },
        (e: Error) => e.message,
      );
    const good = () => ({ sub: '"u-bad"', role: '"user"', exp: String(Math.floor(Date.now() / 1000) + 60) });
    const sign = (over: Record<string, string | undefined>) => hs256(node.config.jwtSecret, claimsText({ ...good(), ...over }));

    it('refuses at the handshake with connect_error unauthorized, and bills nothing', async () => {
      // the signer is right: the plain claims connect, and unknown claims are ignored (RFC 7519 section 4)
      expect(await refusal(sign({})), 'plain claims').to.equal(null);
      expect(await refusal(sign({ extra: '{"a":{"b":[1,{"role":"advisor"}]}}' })), 'an extra nested claim').to.equal(null);
      const odd: Record<string, Record<string, string | undefined>> = {
        'sub a number': { sub: '42' },
        'sub an array': { sub: '["u-bad"]' },
        'sub an object': { sub: '{"id":"u-bad"}' },
        'sub empty': { sub: '""' },
        'sub null': { sub: 'null' },
        'sub of 65 characters': { sub: JSON.stringify('u'.repeat(65)) },
        'sub with a /': { sub: '"u-bad/a1"' },
        'sub with a NUL': { sub: '"u-bad\\u0000"' },
        'sub with a trailing newline': { sub: '"u-bad\\n"' },
        'role admin': { role: '"admin"' },
        'role an array': { role: '["user"]' },
        'role USER': { role: '"USER"' },
        'exp a string': { exp: `"${Math.floor(Date.now() / 1000) + 60}"` },
        'exp far in the past': { exp: '1' },
        'exp -Infinity (-1e999)': { exp: '-1e999' },
        'exp null (what JSON makes of NaN)': { exp: 'null' },
        'exp true': { exp: 'true' },
        'exp missing': { exp: undefined },
        'nbf in the future': { nbf: String(Math.floor(Date.now() / 1000) + 3600) },
        'iat a string': { iat: '"yesterday"' },
        'sub and role only under __proto__': { sub: undefined, role: undefined, ['__proto__']: '{"sub":"u-bad","role":"user"}' },
        'role only under constructor.prototype': { role: undefined, constructor: '{"prototype":{"role":"user"}}' },
        'sub and role only nested': { sub: undefined, role: undefined, principal: '{"sub":"u-bad","role":"user"}' },
        'a 10 KB token (over the 4 KB cap)': { pad: JSON.stringify('x'.repeat(10_000)) },
      };
      for (const [what, over] of Object.entries(odd)) expect(await refusal(sign(over)), what).to.equal('unauthorized');

      // 100 KB: its CONNECT frame is over maxHttpBufferSize (16 KB), so the transport is cut before any check
      const raw = await openRaw();
      raw.send(`40${JSON.stringify({ token: sign({ pad: JSON.stringify('x'.repeat(100_000)) }) })}`);
      await eventually(() => raw.closed, 3000);
      expect(raw.frames.filter((f) => typeof f === 'string' && f.startsWith('40')), 'a 100 KB token').to.deep.equal([]);
      await aliveAndUnbilled('odd tokens');
    });

    // FINDING: `"exp": 1e999` parses to Infinity, which jose accepts as a number that never passes, and
    // server/tokens.ts checks only sub and role: the token is accepted and never expires (expiresAt =
    // Infinity, so neither the expiry timer nor the per-event check ever fires). Unskip once tokens.ts
    // refuses a non-finite exp.
    it('refuses a token whose exp is 1e999 (Infinity: a token that never expires)', async () => {
      expect(await refusal(sign({ exp: '1e999' }))).to.equal('unauthorized');
    });
  });
});
