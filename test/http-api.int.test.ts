import { expect } from 'chai';
import { decodeJwt } from 'jose';
import { freshDatabase, type TestDb } from './support/db.js';
import { type ClientSocket, type TestNode, SNAPSHOT_KEYS, call, collect, connectWith, eventually, startNode, waitFor } from './support/server.js';

/** The keys of a meter snapshot (SPEC section 2). */
const RECORD_KEYS = [
  'advisorId', 'chatId', 'creditsUsed', 'durationSeconds', 'endReason', 'endedAt', 'freeSecondsAllocation', 'freeSecondsUsed',
  'id', 'isActive', 'lastHeartbeatAt', 'startedAt', 'userId',
];
const CHAT_KEYS = ['advisorId', 'createdAt', 'endReason', 'endedAt', 'id', 'startedAt', 'status', 'userId'];
const LEDGER_KEYS = ['amount', 'balanceAfter', 'chatId', 'createdAt', 'id', 'idempotencyKey', 'type'];
const ISO = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/;

/** An amount string as 1/10000 units, and back (exact, as the server computes). */
const units = (s: string): bigint => BigInt(s.replace('.', ''));
const amount = (u: bigint): string => `${u / 10_000n}.${(u % 10_000n).toString().padStart(4, '0')}`;

type Res = { status: number; body: any; contentType: string };

/**
 * Asserts an error response: the status, the code, and exactly `{ error: { code, message } }`
 * as JSON with a non-empty message.
 */
function expectError(res: Res | { status: number; body: any }, status: number, code: string, what = ''): void {
  const label = `${what} -> ${res.status} ${JSON.stringify(res.body)}`;
  expect(res.status, label).to.equal(status);
  expect(res.body, label).to.be.an('object');
  expect(Object.keys(res.body), label).to.deep.equal(['error']);
  expect(Object.keys(res.body.error).sort(), label).to.deep.equal(['code', 'message']);
  expect(res.body.error.code, label).to.equal(code);
  expect(res.body.error.message, label).to.be.a('string').that.is.not.empty;
  if ('contentType' in res) expect(res.contentType, label).to.match(/^application\/json/);
}

describe('HTTP API (real server, fetch on loopback)', () => {
  let db: TestDb;
  let node: TestNode;

  before(async () => {
    db = await freshDatabase();
  });
  after(() => db.close());
  beforeEach(async () => {
    await db.reset();
    node = await startNode(db);
  });
  afterEach(() => node.close());

  /** A request with exactly the headers given (no API key unless passed). */
  async function raw(method: string, path: string, opts: { headers?: Record<string, string>; body?: string } = {}): Promise<Res> {
    const res = await fetch(node.url + path, { method, headers: opts.headers, body: opts.body });
    const text = await res.text();
    let body: unknown = text;
    try {
      body = JSON.parse(text);
    } catch {
      // not JSON: keep the text
    }
    return { status: res.status, body, contentType: res.headers.get('content-type') ?? '' };
  }

  /** A request with the API key and a JSON body. */
  const api = (method: string, path: string, body?: unknown) =>
    raw(method, path, {
      headers: { authorization: `Bearer ${node.config.apiKey}`, 'content-type': 'application/json' },
      body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
    });

  /** Given a user, an advisor and a pending chat between them, created over HTTP. */
  async function given(opts: { chatId?: string; userId?: string; advisorId?: string; balance?: string; rate?: string; free?: number } = {}) {
    const userId = opts.userId ?? 'u1';
    const advisorId = opts.advisorId ?? 'a1';
    const chatId = opts.chatId ?? 'c1';
    expect((await api('PUT', `/v1/users/${userId}`, { name: 'Ursula', balance: opts.balance ?? '10' })).status).to.be.oneOf([200, 201]);
    expect((await api('PUT', `/v1/advisors/${advisorId}`, { name: 'Ada', ratePerMinute: opts.rate ?? '6', freeSeconds: opts.free ?? 0 })).status).to.be.oneOf([200, 201]);
    expect((await api('POST', '/v1/chats', { id: chatId, userId, advisorId })).status).to.be.oneOf([200, 201]);
    return { userId, advisorId, chatId };
  }

  /** A user socket joined to the chat. */
  async function joined(userId: string, chatId: string): Promise<{ socket: ClientSocket; ack: any }> {
    const socket = await node.connect(userId, 'user');
    const ack = await call(socket, 'chat:join', { chatId });
    expect(ack.ok, JSON.stringify(ack)).to.equal(true);
    return { socket, ack };
  }

  const heartbeats = (s: ClientSocket, chatId: string) => {
    const t = setInterval(() => s.emit('heartbeat', { chatId }), 100);
    return () => clearInterval(t);
  };

  const ledger = async (userId: string) => {
    const res = await api('GET', `/v1/users/${userId}/ledger?limit=100`);
    expect(res.status).to.equal(200);
    return res.body.items as any[];
  };

  describe('authentication and operational routes', () => {
    const V1_ROUTES: Array<[string, string, unknown?]> = [
      ['PUT', '/v1/users/u1', { name: 'x', balance: '5' }],
      ['GET', '/v1/users/u1'],
      ['POST', '/v1/users/u1/credits', { amount: '1', idempotencyKey: 'k' }],
      ['GET', '/v1/users/u1/ledger'],
      ['PUT', '/v1/advisors/a1', { ratePerMinute: '1' }],
      ['GET', '/v1/advisors/a1'],
      ['POST', '/v1/chats', { id: 'c1', userId: 'u1', advisorId: 'a1' }],
      ['POST', '/v1/chats/c1/start'],
      ['POST', '/v1/chats/c1/pause'],
      ['POST', '/v1/chats/c1/resume'],
      ['POST', '/v1/chats/c1/end'],
      ['GET', '/v1/chats/c1'],
      ['GET', '/v1/chats/c1/meter'],
      ['GET', '/v1/chats/c1/time-record'],
      ['GET', '/v1/users/u1/advisors/a1/time-records'],
      ['POST', '/v1/tokens', { sub: 'u1', role: 'user' }],
      ['GET', '/v1/no-such-route'],
    ];

    it('answers every /v1 route 401 unauthorized without the key, with a wrong key or a wrong scheme, and changes nothing', async () => {
      await given();
      const key = node.config.apiKey;
      const badHeaders: Array<[string, Record<string, string>]> = [
        ['missing', {}],
        ['empty', { authorization: '' }],
        ['wrong key', { authorization: 'Bearer not-the-key-0123456789' }],
        ['key prefix', { authorization: `Bearer ${key.slice(0, -1)}` }],
        ['key plus a char', { authorization: `Bearer ${key}x` }],
        ['Basic scheme', { authorization: `Basic ${Buffer.from(`${key}:`).toString('base64')}` }],
        ['Token scheme', { authorization: `Token ${key}` }],
        ['no scheme', { authorization: key }],
        ['key in x-api-key', { 'x-api-key': key }],
      ];
      for (const [method, path, body] of V1_ROUTES) {
        for (const [what, headers] of badHeaders) {
          const res = await raw(method, path, {
            headers: { ...headers, 'content-type': 'application/json' },
            body: body === undefined ? undefined : JSON.stringify(body),
          });
          expectError(res, 401, 'unauthorized', `${method} ${path} (${what})`);
        }
      }
      // nothing was written by the refused calls
      expect((await api('GET', '/v1/users/u1')).body.balance).to.equal('10.0000');
      expect(await ledger('u1')).to.have.length(1);
      expect((await api('GET', '/v1/chats/c1')).body.chat.status).to.equal('pending');
      expect((await api('GET', '/v1/advisors/a1')).body.ratePerMinute).to.equal('6.0000');
      // and the right key works, the scheme in any case (RFC 7235)
      expect((await api('GET', '/v1/users/u1')).status).to.equal(200);
      expect((await raw('GET', '/v1/users/u1', { headers: { authorization: `bearer ${key}` } })).status).to.equal(200);
    });

    it('serves /healthz, /readyz (with its checks) and /metrics without a key', async () => {
      const health = await raw('GET', '/healthz');
      expect(health.status).to.equal(200);
      expect(health.body.ok).to.equal(true);

      const ready = await raw('GET', '/readyz');
      expect(ready.status).to.equal(200);
      expect(ready.body.ok).to.equal(true);
      expect(ready.body.checks.database).to.equal(true);
      if (node.config.redisUrl) expect(ready.body.checks.redis).to.equal(true);
      else expect(ready.body.checks).to.not.have.property('redis');

      // a refused client event, so the counter has a sample
      await given();
      const stranger = await node.connect('nobody', 'user');
      expect((await call(stranger, 'chat:join', { chatId: 'c1' })).error.code).to.equal('forbidden');

      const metrics = await raw('GET', '/metrics');
      expect(metrics.status).to.equal(200);
      expect(metrics.contentType).to.match(/^text\/plain/);
      const text = metrics.body as string;
      for (const name of ['chatmeter_sockets', 'chatmeter_active_chats', 'chatmeter_tick_slot_seconds', 'chatmeter_settlement_errors_total', 'chatmeter_events_rejected_total']) {
        expect(text, name).to.match(new RegExp(`^# TYPE ${name} `, 'm'));
      }
      expect(text).to.match(/^chatmeter_sockets [1-9]/m);
      expect(text).to.match(/^chatmeter_events_rejected_total\{code="forbidden"\} [1-9]/m);
    });
  });

  describe('/metrics behind METRICS_TOKEN', () => {
    it('answers only the bearer of the token, 401 to anyone else', async () => {
      await node.close();
      node = await startNode(db, { METRICS_TOKEN: 'metrics-token-0123456789' });
      expect((await raw('GET', '/metrics')).status).to.equal(401);
      expect((await raw('GET', '/metrics', { headers: { authorization: 'Bearer wrong-token-0123456789' } })).status).to.equal(401);
      expect((await raw('GET', '/metrics', { headers: { authorization: `Bearer ${node.config.apiKey}` } })).status, 'the API key is not the metrics token').to.equal(401);
      const ok = await raw('GET', '/metrics', { headers: { authorization: 'Bearer metrics-token-0123456789' } });
      expect(ok.status).to.equal(200);
      expect(ok.body).to.match(/^# TYPE chatmeter_sockets /m);
      expect((await raw('GET', '/healthz')).status, 'health stays open for load balancers').to.equal(200);
    });
  });

  describe('users', () => {
    it('creates with 201 and the opening balance as a topup entry; a later PUT renames with 200 and ignores its balance', async () => {
      const created = await api('PUT', '/v1/users/u1', { name: 'Ursula', balance: '12.5' });
      expect(created.status).to.equal(201);
      expect(created.body).to.deep.equal({ id: 'u1', name: 'Ursula', balance: '12.5000' });

      const [opening] = await ledger('u1');
      expect(Object.keys(opening).sort()).to.deep.equal(LEDGER_KEYS);
      expect(opening).to.include({ type: 'topup', amount: '12.5000', balanceAfter: '12.5000', chatId: null });
      expect(opening.createdAt).to.match(ISO);

      const renamed = await api('PUT', '/v1/users/u1', { name: 'Ulla', balance: '999' });
      expect(renamed.status).to.equal(200);
      expect(renamed.body).to.deep.equal({ id: 'u1', name: 'Ulla', balance: '12.5000' });
      const untouched = await api('PUT', '/v1/users/u1', {});
      expect(untouched.status).to.equal(200);
      expect(untouched.body).to.deep.equal({ id: 'u1', name: 'Ulla', balance: '12.5000' });

      expect((await api('GET', '/v1/users/u1')).body).to.deep.equal({ id: 'u1', name: 'Ulla', balance: '12.5000' });
      expect(await ledger('u1')).to.have.length(1);
    });

    it('creates a user without balance at 0 with no ledger entry', async () => {
      const created = await api('PUT', '/v1/users/u0', {});
      expect(created.status).to.equal(201);
      expect(created.body).to.deep.equal({ id: 'u0', name: '', balance: '0.0000' });
      expect(await ledger('u0')).to.deep.equal([]);
    });

    it('creates a user once under concurrent PUTs, with one opening entry', async () => {
      const results = await Promise.all(Array.from({ length: 6 }, () => api('PUT', '/v1/users/u1', { balance: '3' })));
      expect(results.map((r) => r.status).sort()).to.deep.equal([200, 200, 200, 200, 200, 201]);
      expect((await api('GET', '/v1/users/u1')).body.balance).to.equal('3.0000');
      expect(await ledger('u1')).to.have.length(1);
    });

    it('answers 404 for an unknown user', async () => {
      expectError(await api('GET', '/v1/users/ghost'), 404, 'not_found');
    });

    it('refuses bad ids and bad balances with 400 and creates nothing', async () => {
      const longId = 'x'.repeat(65);
      for (const path of [`/v1/users/${encodeURIComponent('bad id!')}`, `/v1/users/${longId}`, `/v1/users/${encodeURIComponent('a/b')}`, '/v1/users/%C3%A9']) {
        expectError(await api('PUT', path, { balance: '1' }), 400, 'bad_request', `PUT ${path}`);
        expectError(await api('GET', path), 400, 'bad_request', `GET ${path}`);
      }
      // 64 characters is still an id
      expect((await api('PUT', `/v1/users/${'x'.repeat(64)}`, {})).status).to.equal(201);

      for (const balance of ['-1', '1.23456', 12, 'abc', '', '1e3', ' 1', null, '1234567890123456']) {
        expectError(await api('PUT', '/v1/users/u1', { balance }), 400, 'bad_request', `balance ${JSON.stringify(balance)}`);
      }
      for (const name of [42, null, 'n'.repeat(201)]) {
        expectError(await api('PUT', '/v1/users/u1', { name }), 400, 'bad_request', `name ${JSON.stringify(name)}`);
      }
      expectError(await api('GET', '/v1/users/u1'), 404, 'not_found');
      const [{ n }] = await db.ds.query(`SELECT count(*)::int AS n FROM ledger_entries`);
      expect(n).to.equal(0);
    });
  });

  describe('credits', () => {
    it('adds once per idempotency key: 201 first, 200 with the same entry after, 409 for another amount', async () => {
      await api('PUT', '/v1/users/u1', { balance: '10' });
      const first = await api('POST', '/v1/users/u1/credits', { amount: '2.5', idempotencyKey: 'order-1' });
      expect(first.status).to.equal(201);
      expect(Object.keys(first.body).sort()).to.deep.equal(['balance', 'entry']);
      expect(first.body.balance).to.equal('12.5000');
      expect(first.body.entry).to.include({ type: 'topup', amount: '2.5000', balanceAfter: '12.5000', chatId: null, idempotencyKey: 'order-1' });

      const again = await api('POST', '/v1/users/u1/credits', { amount: '2.5', idempotencyKey: 'order-1' });
      expect(again.status).to.equal(200);
      expect(again.body).to.deep.equal(first.body);
      // the same amount written differently is the same request
      const same = await api('POST', '/v1/users/u1/credits', { amount: '2.50', idempotencyKey: 'order-1' });
      expect(same.status).to.equal(200);
      expect(same.body.entry).to.deep.equal(first.body.entry);

      expectError(await api('POST', '/v1/users/u1/credits', { amount: '3', idempotencyKey: 'order-1' }), 409, 'conflict');
      expect((await api('GET', '/v1/users/u1')).body.balance).to.equal('12.5000');
      expect((await ledger('u1')).map((e) => e.idempotencyKey)).to.deep.equal(['order-1', 'opening-balance']);

      // another key is another top-up
      const second = await api('POST', '/v1/users/u1/credits', { amount: '0.0001', idempotencyKey: 'order-2' });
      expect(second.status).to.equal(201);
      expect(second.body.balance).to.equal('12.5001');
      // a replay after the balance moved answers the first result, not today's balance
      const later = await api('POST', '/v1/users/u1/credits', { amount: '2.5', idempotencyKey: 'order-1' });
      expect(later.status).to.equal(200);
      expect(later.body).to.deep.equal(first.body);
    });

    it('refuses keys and names with control characters or lone surrogates with 400, so two keys never collide in storage', async () => {
      await api('PUT', '/v1/users/u1', { balance: '1' });
      // JSON escapes reach the server as the characters themselves
      const send = (path: string, json: string, method = 'POST') => raw(method, path, { headers: { authorization: `Bearer ${node.config.apiKey}`, 'content-type': 'application/json' }, body: json });
      for (const key of ['nul\\u0000key', 'lone\\ud800', 'lone\\udfffx', 'bell\\u0007', 'c1\\u0085']) {
        const res = await send('/v1/users/u1/credits', `{"amount":"1","idempotencyKey":"${key}"}`);
        expect(res.status, key).to.equal(400);
        expect(res.body.error.code).to.equal('bad_request');
      }
      expect((await send('/v1/users/u1', '{"name":"Ur\\u0000sula"}', 'PUT')).status).to.equal(400);
      expect((await send('/v1/advisors/a1', '{"name":"\\ud83d","ratePerMinute":"1"}', 'PUT')).status).to.equal(400);
      // well-formed text of any script, emoji included, is taken as is
      const emoji = await send('/v1/users/u1/credits', '{"amount":"1","idempotencyKey":"order-\\ud83d\\ude00-é"}');
      expect(emoji.status).to.equal(201);
      expect(emoji.body.entry.idempotencyKey).to.equal('order-😀-é');
      expect((await api('GET', '/v1/users/u1')).body.balance).to.equal('2.0000');
    });

    it('adds once when the same key is sent concurrently', async () => {
      await api('PUT', '/v1/users/u1', { balance: '1' });
      const results = await Promise.all(Array.from({ length: 6 }, () => api('POST', '/v1/users/u1/credits', { amount: '5', idempotencyKey: 'dup' })));
      expect(results.map((r) => r.status).sort()).to.deep.equal([200, 200, 200, 200, 200, 201]);
      for (const r of results) expect(r.body.entry.id).to.equal(results[0]!.body.entry.id);
      expect((await api('GET', '/v1/users/u1')).body.balance).to.equal('6.0000');
    });

    it('refuses a zero amount with 422, an unknown user with 404 and malformed bodies with 400', async () => {
      await api('PUT', '/v1/users/u1', { balance: '1' });
      for (const amount of ['0', '0.0000', '00']) {
        expectError(await api('POST', '/v1/users/u1/credits', { amount, idempotencyKey: `z-${amount}` }), 422, 'unprocessable', amount);
      }
      expectError(await api('POST', '/v1/users/ghost/credits', { amount: '1', idempotencyKey: 'k' }), 404, 'not_found');
      const malformed: unknown[] = [
        {},
        { amount: '1' },
        { idempotencyKey: 'k' },
        { amount: 1, idempotencyKey: 'k' },
        { amount: '-1', idempotencyKey: 'k' },
        { amount: '1.00001', idempotencyKey: 'k' },
        { amount: 'abc', idempotencyKey: 'k' },
        { amount: '1', idempotencyKey: '' },
        { amount: '1', idempotencyKey: 7 },
        { amount: '1', idempotencyKey: 'k'.repeat(201) },
        [],
        'null',
        '"1"',
      ];
      for (const body of malformed) {
        expectError(await api('POST', '/v1/users/u1/credits', body), 400, 'bad_request', JSON.stringify(body));
      }
      expectError(await api('POST', `/v1/users/${encodeURIComponent('bad id!')}/credits`, { amount: '1', idempotencyKey: 'k' }), 400, 'bad_request');
      expect((await api('GET', '/v1/users/u1')).body.balance).to.equal('1.0000');
      expect(await ledger('u1')).to.have.length(1);
    });

    it('does not let the opening balance swallow an integrator top-up that uses its idempotency key', async () => {
      // the opening balance is stored as a topup with key "opening-balance"; an integrator's own
      // top-up with that key must not be answered as a replay of it (nothing added, 200)
      await api('PUT', '/v1/users/u1', { balance: '10' });
      const res = await api('POST', '/v1/users/u1/credits', { amount: '10', idempotencyKey: 'opening-balance' });
      expect(res.status, JSON.stringify(res.body)).to.not.equal(200);
      if (res.status === 201) expect(res.body.balance).to.equal('20.0000');
      else expectError(res, 400, 'bad_request');
    });

    it('refuses with 422 a top-up that would take the balance beyond what the server can compute with, and the user stays usable', async () => {
      // amounts have at most 15 integer digits (money.ts), balances are numeric(20,4)
      const max = '999999999999999.9999';
      expect((await api('PUT', '/v1/users/rich', { balance: max })).status).to.equal(201);
      let last: Res | null = null;
      for (let i = 0; i < 10; i++) {
        last = await api('POST', '/v1/users/rich/credits', { amount: max, idempotencyKey: `big-${i}` });
        if (last.status !== 201) break;
      }
      expectError(last!, 422, 'unprocessable');
      const user = await api('GET', '/v1/users/rich');
      const [top] = await ledger('rich');
      expect(user.body.balance).to.equal(top.balanceAfter);
      // whatever balance it holds, the server can still meter a chat of this user
      await api('PUT', '/v1/advisors/a1', { ratePerMinute: '1' });
      await api('POST', '/v1/chats', { id: 'c1', userId: 'rich', advisorId: 'a1' });
      const socket = await node.connect('rich', 'user');
      const ack = await call(socket, 'chat:join', { chatId: 'c1' });
      expect(ack.ok, JSON.stringify(ack)).to.equal(true);
      expect(ack.meter.balance).to.equal(user.body.balance);
    });
  });

  describe('ledger', () => {
    it('pages newest first with limit and cursor, without duplicates, to a null nextCursor', async () => {
      await api('PUT', '/v1/users/u1', { balance: '1' });
      await api('PUT', '/v1/users/u2', { balance: '50' });
      for (let i = 1; i <= 6; i++) {
        expect((await api('POST', '/v1/users/u1/credits', { amount: String(i), idempotencyKey: `k${i}` })).status).to.equal(201);
        // another user's entries interleave and must not show up
        expect((await api('POST', '/v1/users/u2/credits', { amount: '1', idempotencyKey: `k${i}` })).status).to.equal(201);
      }
      const pages: any[][] = [];
      let cursor: string | null = null;
      do {
        const q: string = cursor === null ? '?limit=2' : `?limit=2&cursor=${encodeURIComponent(cursor)}`;
        const res = await api('GET', `/v1/users/u1/ledger${q}`);
        expect(res.status).to.equal(200);
        expect(Object.keys(res.body).sort()).to.deep.equal(['items', 'nextCursor']);
        pages.push(res.body.items);
        cursor = res.body.nextCursor;
        if (cursor !== null) expect(cursor).to.be.a('string');
        expect(pages.length).to.be.at.most(10);
      } while (cursor !== null);

      expect(pages.map((p) => p.length)).to.deep.equal([2, 2, 2, 1]);
      const items = pages.flat();
      expect(items.map((e) => e.idempotencyKey)).to.deep.equal(['k6', 'k5', 'k4', 'k3', 'k2', 'k1', 'opening-balance']);
      // 1 + 1 + 2 + ... + 6 = 22, read backwards
      expect(items.map((e) => e.balanceAfter)).to.deep.equal(['22.0000', '16.0000', '11.0000', '7.0000', '4.0000', '2.0000', '1.0000']);
      expect(new Set(items.map((e) => e.id)).size).to.equal(7);
      const ids = items.map((e) => BigInt(e.id));
      for (let i = 1; i < ids.length; i++) expect(ids[i]! < ids[i - 1]!, 'ids decrease').to.equal(true);
      for (let i = 1; i < items.length; i++) expect(Date.parse(items[i].createdAt)).to.be.at.most(Date.parse(items[i - 1].createdAt));

      // the default page holds all of them; a limit equal to the count has no next page
      const all = await api('GET', '/v1/users/u1/ledger');
      expect(all.body.items).to.deep.equal(items);
      expect(all.body.nextCursor).to.equal(null);
      expect((await api('GET', '/v1/users/u1/ledger?limit=7')).body.nextCursor).to.equal(null);
      const six = await api('GET', '/v1/users/u1/ledger?limit=6');
      expect(six.body.nextCursor).to.equal(items[5].id);
      const rest = await api('GET', `/v1/users/u1/ledger?limit=6&cursor=${six.body.nextCursor}`);
      expect(rest.body).to.deep.equal({ items: [items[6]], nextCursor: null });
    });

    it('refuses a bad limit or cursor with 400, an unknown user with 404', async () => {
      await api('PUT', '/v1/users/u1', { balance: '1' });
      for (const q of ['limit=0', 'limit=101', 'limit=x', 'limit=1.5', 'limit=-1', 'limit=', 'cursor=abc', 'cursor=-1', 'cursor=1.5', 'cursor=', 'cursor=9999999999999999999', 'limit=2&limit=3']) {
        expectError(await api('GET', `/v1/users/u1/ledger?${q}`), 400, 'bad_request', q);
      }
      expect((await api('GET', '/v1/users/u1/ledger?limit=100')).status).to.equal(200);
      expect((await api('GET', '/v1/users/u1/ledger?limit=1&cursor=9223372036854775807')).body.items).to.have.length(1);
      expectError(await api('GET', '/v1/users/ghost/ledger'), 404, 'not_found');
    });
  });

  describe('advisors', () => {
    it('creates with 201 and FREE_TIME_SECONDS free seconds when omitted, updates with 200 keeping what is omitted', async () => {
      const created = await api('PUT', '/v1/advisors/a1', { name: 'Ada', ratePerMinute: '6' });
      expect(created.status).to.equal(201);
      expect(created.body).to.deep.equal({ id: 'a1', name: 'Ada', ratePerMinute: '6.0000', freeSeconds: 180 });

      const updated = await api('PUT', '/v1/advisors/a1', { ratePerMinute: '7.5', freeSeconds: 30 });
      expect(updated.status).to.equal(200);
      expect(updated.body).to.deep.equal({ id: 'a1', name: 'Ada', ratePerMinute: '7.5000', freeSeconds: 30 });
      const again = await api('PUT', '/v1/advisors/a1', { name: 'Adele', ratePerMinute: '0' });
      expect(again.status).to.equal(200);
      expect(again.body).to.deep.equal({ id: 'a1', name: 'Adele', ratePerMinute: '0.0000', freeSeconds: 30 });
      expect((await api('GET', '/v1/advisors/a1')).body).to.deep.equal(again.body);
      expectError(await api('GET', '/v1/advisors/ghost'), 404, 'not_found');

      // the default comes from the configuration
      await node.close();
      node = await startNode(db, { FREE_TIME_SECONDS: '42' });
      expect((await api('PUT', '/v1/advisors/a2', { ratePerMinute: '1' })).body.freeSeconds).to.equal(42);
    });

    it('refuses a bad rate, bad free seconds or a bad id with 400', async () => {
      const bodies: unknown[] = [
        {},
        { name: 'Ada' },
        { ratePerMinute: 6 },
        { ratePerMinute: '-1' },
        { ratePerMinute: '1.23456' },
        { ratePerMinute: 'abc' },
        { ratePerMinute: '' },
        { ratePerMinute: '1', freeSeconds: -1 },
        { ratePerMinute: '1', freeSeconds: 1.5 },
        { ratePerMinute: '1', freeSeconds: '10' },
        { ratePerMinute: '1', freeSeconds: null },
        { ratePerMinute: '1', name: 5 },
        // capped so a chat of any length stays within the columns' range
        { ratePerMinute: '1000000.0001' },
        { ratePerMinute: '999999999999999.9999' },
      ];
      for (const body of bodies) expectError(await api('PUT', '/v1/advisors/a1', body), 400, 'bad_request', JSON.stringify(body));
      expectError(await api('PUT', `/v1/advisors/${'a'.repeat(65)}`, { ratePerMinute: '1' }), 400, 'bad_request');
      expectError(await api('PUT', `/v1/advisors/${encodeURIComponent('bad id!')}`, { ratePerMinute: '1' }), 400, 'bad_request');
      expectError(await api('GET', '/v1/advisors/a1'), 404, 'not_found');
      expect((await api('PUT', '/v1/advisors/a1', { ratePerMinute: '1000000' })).status).to.equal(201);
    });
  });

  describe('chats', () => {
    beforeEach(async () => {
      await api('PUT', '/v1/users/u1', { balance: '10' });
      await api('PUT', '/v1/users/u2', { balance: '10' });
      await api('PUT', '/v1/advisors/a1', { ratePerMinute: '6', freeSeconds: 0 });
      await api('PUT', '/v1/advisors/a2', { ratePerMinute: '6', freeSeconds: 0 });
    });

    it('settles concurrent commands in shared transactions, each answered alone', async () => {
      for (let i = 0; i < 20; i++) expect((await api('POST', '/v1/chats', { id: `b${i}`, userId: 'u1', advisorId: 'a1' })).status).to.equal(201);
      const engine = node.app.services.engine;
      const settleBatch = engine.settleBatch.bind(engine);
      let transactions = 0;
      engine.settleBatch = (...args) => {
        transactions++;
        return settleBatch(...args);
      };
      // 20 starts and a pause of a pending chat (refused alone) at once
      await api('POST', '/v1/chats', { id: 'p1', userId: 'u2', advisorId: 'a1' });
      const [pause, ...started] = await Promise.all([
        api('POST', '/v1/chats/p1/pause'),
        ...Array.from({ length: 20 }, (_, i) => api('POST', `/v1/chats/b${i}/start`)),
      ]);
      expectError(pause!, 409, 'conflict', 'pause of a pending chat');
      for (const r of started) expect(r.status, JSON.stringify(r.body)).to.equal(200);
      expect(started.map((r) => [r.body.chat.status, r.body.meter.state])).to.deep.equal(Array(20).fill(['active', 'away']));
      // what the answers said is what was stored
      for (const [i, r] of started.entries()) expect((await api('GET', `/v1/chats/b${i}`)).body.chat, `b${i}`).to.deep.equal(r.body.chat);
      expect(transactions, 'commands share transactions').to.be.below(21);
    });

    it('creates a pending chat with 201; the same body again is a 200 no-op; another pair for the id is a 409', async () => {
      const created = await api('POST', '/v1/chats', { id: 'c1', userId: 'u1', advisorId: 'a1' });
      expect(created.status).to.equal(201);
      expect(Object.keys(created.body).sort()).to.deep.equal(CHAT_KEYS);
      expect(created.body).to.include({ id: 'c1', userId: 'u1', advisorId: 'a1', status: 'pending', endReason: null, startedAt: null, endedAt: null });
      expect(created.body.createdAt).to.match(ISO);

      const again = await api('POST', '/v1/chats', { id: 'c1', userId: 'u1', advisorId: 'a1' });
      expect(again.status).to.equal(200);
      expect(again.body).to.deep.equal(created.body);

      expectError(await api('POST', '/v1/chats', { id: 'c1', userId: 'u2', advisorId: 'a1' }), 409, 'conflict', 'other user');
      expectError(await api('POST', '/v1/chats', { id: 'c1', userId: 'u1', advisorId: 'a2' }), 409, 'conflict', 'other advisor');
      expect((await api('GET', '/v1/chats/c1')).body.chat).to.deep.equal(created.body);

      // a no-op on a started chat leaves it started
      await api('POST', '/v1/chats/c1/start');
      const started = await api('POST', '/v1/chats', { id: 'c1', userId: 'u1', advisorId: 'a1' });
      expect(started.status).to.equal(200);
      expect(started.body.status).to.equal('active');
    });

    it('answers 404 for an unknown user or advisor and 400 for malformed bodies, creating nothing', async () => {
      expectError(await api('POST', '/v1/chats', { id: 'c9', userId: 'ghost', advisorId: 'a1' }), 404, 'not_found');
      expectError(await api('POST', '/v1/chats', { id: 'c9', userId: 'u1', advisorId: 'ghost' }), 404, 'not_found');
      const bodies: unknown[] = [{}, { id: 'c9', userId: 'u1' }, { id: 'bad id!', userId: 'u1', advisorId: 'a1' }, { id: 'c'.repeat(65), userId: 'u1', advisorId: 'a1' }, { id: 9, userId: 'u1', advisorId: 'a1' }, []];
      for (const body of bodies) expectError(await api('POST', '/v1/chats', body), 400, 'bad_request', JSON.stringify(body));
      expectError(await api('GET', '/v1/chats/c9'), 404, 'not_found');
      const [{ n }] = await db.ds.query(`SELECT count(*)::int AS n FROM chats`);
      expect(n).to.equal(0);
    });

    it('start, pause, resume and end return { chat, meter } through pending -> active -> ended', async () => {
      await api('POST', '/v1/chats', { id: 'c1', userId: 'u1', advisorId: 'a1' });
      expectError(await api('POST', '/v1/chats/c1/pause'), 409, 'conflict', 'pause a pending chat');
      expectError(await api('POST', '/v1/chats/c1/resume'), 409, 'conflict', 'resume a pending chat');

      const started = await api('POST', '/v1/chats/c1/start');
      expect(started.status).to.equal(200);
      expect(Object.keys(started.body).sort()).to.deep.equal(['chat', 'meter']);
      expect(started.body.chat).to.include({ id: 'c1', status: 'active', endReason: null, endedAt: null });
      expect(started.body.chat.startedAt).to.match(ISO);
      expect(Object.keys(started.body.meter).sort()).to.deep.equal(SNAPSHOT_KEYS);
      // nobody joined: active but the user is away
      expect(started.body.meter).to.include({ chatId: 'c1', state: 'away', durationSeconds: 0 });

      // a retried start is a no-op
      const restarted = await api('POST', '/v1/chats/c1/start');
      expect(restarted.status).to.equal(200);
      expect(restarted.body.chat.startedAt).to.equal(started.body.chat.startedAt);

      const paused = await api('POST', '/v1/chats/c1/pause');
      expect(paused.status).to.equal(200);
      expect(paused.body.chat.status).to.equal('active');
      expect(paused.body.meter.state).to.equal('paused');

      const resumed = await api('POST', '/v1/chats/c1/resume');
      expect(resumed.status).to.equal(200);
      expect(resumed.body.meter.state).to.equal('away');

      const ended = await api('POST', '/v1/chats/c1/end');
      expect(ended.status).to.equal(200);
      expect(ended.body.chat).to.include({ status: 'ended', endReason: 'ended_by_platform' });
      expect(ended.body.chat.endedAt).to.match(ISO);
      expect(ended.body.meter.state).to.equal('ended');
      // the record of the ended chat is closed with the same reason
      const record = await api('GET', '/v1/chats/c1/time-record');
      expect(record.body).to.include({ isActive: false, endReason: 'ended_by_platform' });

      for (const cmd of ['start', 'pause', 'resume']) expectError(await api('POST', `/v1/chats/c1/${cmd}`), 409, 'conflict', `${cmd} an ended chat`);
      // ending again is a retry: 200, still ended_by_platform
      const endedAgain = await api('POST', '/v1/chats/c1/end');
      expect(endedAgain.status).to.equal(200);
      expect(endedAgain.body.chat).to.deep.equal(ended.body.chat);
    });

    it('ends a pending chat over HTTP', async () => {
      await api('POST', '/v1/chats', { id: 'c1', userId: 'u1', advisorId: 'a1' });
      const ended = await api('POST', '/v1/chats/c1/end');
      expect(ended.status).to.equal(200);
      expect(ended.body.chat).to.include({ status: 'ended', endReason: 'ended_by_platform' });
      expect(ended.body.meter.state).to.equal('ended');
    });

    it('answers 404 for commands on an unknown chat and 400 for a bad chat id', async () => {
      for (const cmd of ['start', 'pause', 'resume', 'end']) {
        expectError(await api('POST', `/v1/chats/ghost/${cmd}`), 404, 'not_found', cmd);
        expectError(await api('POST', `/v1/chats/${'c'.repeat(65)}/${cmd}`), 400, 'bad_request', cmd);
      }
      for (const sub of ['', '/meter', '/time-record']) {
        expectError(await api('GET', `/v1/chats/ghost${sub}`), 404, 'not_found', sub);
        expectError(await api('GET', `/v1/chats/${encodeURIComponent('bad id!')}${sub}`), 400, 'bad_request', sub);
      }
      const [{ n }] = await db.ds.query(`SELECT count(*)::int AS n FROM conversation_time_records`);
      expect(n).to.equal(0);
    });
  });

  describe('chat reads', () => {
    it('GET /v1/chats/:id has record and meter null before the first join, and both after', async () => {
      const g = await given({ free: 30 });
      const before = await api('GET', '/v1/chats/c1');
      expect(before.status).to.equal(200);
      expect(Object.keys(before.body).sort()).to.deep.equal(['chat', 'meter', 'record']);
      expect(before.body.chat).to.include({ id: 'c1', status: 'pending' });
      expect(before.body.record).to.equal(null);
      expect(before.body.meter).to.equal(null);
      expectError(await api('GET', '/v1/chats/c1/meter'), 404, 'not_found', 'meter before join');
      expectError(await api('GET', '/v1/chats/c1/time-record'), 404, 'not_found', 'record before join');

      const { ack } = await joined(g.userId, g.chatId);
      const after = await api('GET', '/v1/chats/c1');
      expect(after.status).to.equal(200);
      expect(Object.keys(after.body.record).sort()).to.deep.equal(RECORD_KEYS);
      expect(after.body.record).to.include({ id: ack.meter.recordId, chatId: 'c1', userId: 'u1', advisorId: 'a1', isActive: true, durationSeconds: 0, freeSecondsUsed: 0, creditsUsed: '0.0000', freeSecondsAllocation: 30, endedAt: null, endReason: null });
      expect(after.body.record.startedAt).to.match(ISO);
      expect(Object.keys(after.body.meter).sort()).to.deep.equal(SNAPSHOT_KEYS);
      expect(after.body.meter).to.include({ chatId: 'c1', recordId: ack.meter.recordId, state: 'pending', freeSecondsRemaining: 30, balance: '10.0000' });

      const meter = await api('GET', '/v1/chats/c1/meter');
      expect(meter.status).to.equal(200);
      expect(Object.keys(meter.body).sort()).to.deep.equal(SNAPSHOT_KEYS);
      expect(meter.body).to.include({ recordId: ack.meter.recordId, state: 'pending' });
      const record = await api('GET', '/v1/chats/c1/time-record');
      expect(record.status).to.equal(200);
      expect(record.body).to.deep.equal(after.body.record);
    });

    it('a chat started over HTTP before anyone joined has its record, and the meter polls it running, then ended', async () => {
      const g = await given({ free: 0, balance: '100' });
      const started = await api('POST', '/v1/chats/c1/start');
      expect(started.status).to.equal(200);
      const record = await api('GET', '/v1/chats/c1/time-record');
      expect(record.status).to.equal(200);
      expect(record.body.id).to.equal(started.body.meter.recordId);

      const { socket, ack } = await joined(g.userId, g.chatId);
      expect(ack.meter.recordId).to.equal(record.body.id);
      const stop = heartbeats(socket, g.chatId);
      try {
        // a polling client sees the meter run
        const polled = await eventually(async () => {
          const m = await api('GET', '/v1/chats/c1/meter');
          return m.body.state === 'running' && m.body.durationSeconds >= 1 ? m.body : null;
        }, 5000);
        expect(polled.creditsUsed).to.not.equal('0.0000');
      } finally {
        stop();
      }
      const ended = await api('POST', '/v1/chats/c1/end');
      expect(ended.status).to.equal(200);

      // still queryable after the end, with the final numbers
      const m = await api('GET', '/v1/chats/c1/meter');
      expect(m.status).to.equal(200);
      expect(m.body).to.include({ state: 'ended', durationSeconds: ended.body.meter.durationSeconds, creditsUsed: ended.body.meter.creditsUsed });
      const r = await api('GET', '/v1/chats/c1/time-record');
      expect(r.status).to.equal(200);
      expect(r.body).to.include({ id: record.body.id, isActive: false, endReason: 'ended_by_platform', durationSeconds: ended.body.meter.durationSeconds, creditsUsed: ended.body.meter.creditsUsed });
      expect(r.body.endedAt).to.match(ISO);
      const details = await api('GET', '/v1/chats/c1');
      expect(details.body.chat.status).to.equal('ended');
      expect(details.body.record).to.deep.equal(r.body);
      expect(details.body.meter.state).to.equal('ended');
    });

    it('lists every record of a pair newest first with the shared allowance', async () => {
      await given({ chatId: 'c1', free: 40 });
      await api('POST', '/v1/chats', { id: 'c2', userId: 'u1', advisorId: 'a1' });
      // a chat with another advisor stays out of the pair's list
      await api('PUT', '/v1/advisors/a2', { ratePerMinute: '1' });
      await api('POST', '/v1/chats', { id: 'c3', userId: 'u1', advisorId: 'a2' });

      const empty = await api('GET', '/v1/users/u1/advisors/a1/time-records');
      expect(empty.status).to.equal(200);
      expect(empty.body).to.deep.equal({ allowance: null, records: [] });

      const first = await joined('u1', 'c1');
      await api('POST', '/v1/chats/c1/end');
      // the records' start times must differ for "newest first" to mean something
      await eventually(async () => Date.now() - Date.parse((await api('GET', '/v1/chats/c1/time-record')).body.startedAt) > 20);
      const second = await joined('u1', 'c2');
      await joined('u1', 'c3');

      const res = await api('GET', '/v1/users/u1/advisors/a1/time-records');
      expect(res.status).to.equal(200);
      expect(Object.keys(res.body).sort()).to.deep.equal(['allowance', 'records']);
      expect(res.body.allowance).to.deep.equal({ userId: 'u1', advisorId: 'a1', allocationSeconds: 40, usedSeconds: 0 });
      expect(res.body.records.map((r: any) => r.chatId)).to.deep.equal(['c2', 'c1']);
      expect(res.body.records.map((r: any) => r.id)).to.deep.equal([second.ack.meter.recordId, first.ack.meter.recordId]);
      expect(res.body.records[1]).to.include({ isActive: false, endReason: 'ended_by_platform' });
      expect(res.body.records[0]).to.include({ isActive: true, endReason: null });
      for (const r of res.body.records) expect(Object.keys(r).sort()).to.deep.equal(RECORD_KEYS);
      expect(Date.parse(res.body.records[0].startedAt)).to.be.greaterThan(Date.parse(res.body.records[1].startedAt));
    });

    it('answers 404 for the records of an unknown user or advisor and 400 for bad ids', async () => {
      await given();
      expectError(await api('GET', '/v1/users/ghost/advisors/a1/time-records'), 404, 'not_found', 'unknown user');
      expectError(await api('GET', '/v1/users/u1/advisors/ghost/time-records'), 404, 'not_found', 'unknown advisor');
      expectError(await api('GET', `/v1/users/${encodeURIComponent('bad id!')}/advisors/a1/time-records`), 400, 'bad_request');
      expectError(await api('GET', `/v1/users/u1/advisors/${'a'.repeat(65)}/time-records`), 400, 'bad_request');
    });
  });

  describe('tokens', () => {
    it('signs a token that connects a user socket and an advisor socket', async () => {
      const g = await given();
      const t0 = Date.now();
      const user = await api('POST', '/v1/tokens', { sub: 'u1', role: 'user' });
      expect(user.status).to.equal(201);
      expect(Object.keys(user.body).sort()).to.deep.equal(['expiresAt', 'token']);
      expect(user.body.expiresAt).to.match(ISO);
      // one hour by default
      expect(Date.parse(user.body.expiresAt) - t0).to.be.closeTo(3600_000, 5000);
      const claims = decodeJwt(user.body.token);
      expect(claims).to.include({ sub: 'u1', role: 'user' });
      expect(claims.exp! * 1000).to.equal(Date.parse(user.body.expiresAt));

      const advisor = await api('POST', '/v1/tokens', { sub: 'a1', role: 'advisor', ttlSeconds: 60 });
      expect(advisor.status).to.equal(201);
      expect(Date.parse(advisor.body.expiresAt) - t0).to.be.closeTo(60_000, 5000);
      expect(decodeJwt(advisor.body.token)).to.include({ sub: 'a1', role: 'advisor' });

      const userSocket = await connectWith(node.url, { token: user.body.token });
      const advisorSocket = await connectWith(node.url, { token: advisor.body.token });
      try {
        expect((await call(userSocket, 'chat:join', { chatId: g.chatId })).ok).to.equal(true);
        // the role is the token's: the user may not start, the advisor may
        expect((await call(userSocket, 'chat:start', { chatId: g.chatId })).error.code).to.equal('forbidden');
        const started = await call(advisorSocket, 'chat:start', { chatId: g.chatId });
        expect(started.ok, JSON.stringify(started)).to.equal(true);
        expect(started.chat.status).to.equal('active');
      } finally {
        userSocket.close();
        advisorSocket.close();
      }
    });

    it('refuses a bad role, sub or ttl with 400', async () => {
      const bodies: unknown[] = [
        {},
        { sub: 'u1' },
        { role: 'user' },
        { sub: 'u1', role: 'admin' },
        { sub: 'u1', role: 'USER' },
        { sub: 'bad id!', role: 'user' },
        { sub: 'x'.repeat(65), role: 'user' },
        { sub: '', role: 'user' },
        { sub: 7, role: 'user' },
        { sub: 'u1', role: 'user', ttlSeconds: 0 },
        { sub: 'u1', role: 'user', ttlSeconds: -5 },
        { sub: 'u1', role: 'user', ttlSeconds: 1.5 },
        { sub: 'u1', role: 'user', ttlSeconds: '60' },
        { sub: 'u1', role: 'user', ttlSeconds: 8 * 24 * 3600 },
      ];
      for (const body of bodies) expectError(await api('POST', '/v1/tokens', body), 400, 'bad_request', JSON.stringify(body));
    });
  });

  describe('bodies and routes', () => {
    it('answers malformed JSON with 400 bad_request', async () => {
      for (const body of ['{', '{"name":', "{'name':'x'}", 'not json', '{"balance":"1",}']) {
        const res = await raw('PUT', '/v1/users/u1', { headers: { authorization: `Bearer ${node.config.apiKey}`, 'content-type': 'application/json' }, body });
        expectError(res, 400, 'bad_request', body);
      }
      // a JSON body sent as another content type is not read: the body is missing
      const asText = await raw('POST', '/v1/chats', {
        headers: { authorization: `Bearer ${node.config.apiKey}`, 'content-type': 'text/plain' },
        body: JSON.stringify({ id: 'c1', userId: 'u1', advisorId: 'a1' }),
      });
      expectError(asText, 400, 'bad_request', 'text/plain');
      expectError(await api('GET', '/v1/users/u1'), 404, 'not_found');
    });

    it('answers a body over the limit with 413 payload_too_large and keeps serving', async () => {
      const big = JSON.stringify({ name: 'n'.repeat(100 * 1024), balance: '1' });
      expectError(await api('PUT', '/v1/users/u1', big), 413, 'payload_too_large');
      expectError(await api('POST', '/v1/chats', JSON.stringify({ id: 'c1', userId: 'u1', advisorId: 'a1', pad: 'x'.repeat(20_000) })), 413, 'payload_too_large');
      expectError(await api('GET', '/v1/users/u1'), 404, 'not_found');
      expect((await api('PUT', '/v1/users/u1', { name: 'small' })).status).to.equal(201);
    });

    it('answers unknown routes and methods with a 404 JSON error', async () => {
      expectError(await raw('GET', '/nope'), 404, 'not_found', '/nope');
      expectError(await raw('POST', '/v2/users/u1'), 404, 'not_found', '/v2');
      expectError(await api('GET', '/v1/nope'), 404, 'not_found', '/v1/nope');
      expectError(await api('GET', '/v1/users'), 404, 'not_found', 'GET /v1/users');
      expectError(await api('DELETE', '/v1/users/u1'), 404, 'not_found', 'DELETE user');
      expectError(await api('GET', '/v1/chats/c1/nope'), 404, 'not_found', 'chat sub-route');
    });

    it('answers a malformed percent-encoding in a path with 400 bad_request that does not blame the body', async () => {
      const res = await api('GET', '/v1/users/%E0%A4%A');
      expectError(res, 400, 'bad_request');
      expect(res.body.error.message).to.not.match(/JSON/);
    });
  });

  describe('a walkthrough as in the README', () => {
    it('creates a user, an advisor and a chat, connects with a token, and watches the meter go from free time into credits until the platform ends it', async () => {
      // the integrator's backend sets things up
      expect((await api('PUT', '/v1/users/alice', { name: 'Alice', balance: '10' })).status).to.equal(201);
      expect((await api('PUT', '/v1/advisors/bob', { name: 'Bob', ratePerMinute: '6', freeSeconds: 2 })).status).to.equal(201);
      expect((await api('POST', '/v1/chats', { id: 'chat-1', userId: 'alice', advisorId: 'bob' })).status).to.equal(201);
      const token = await api('POST', '/v1/tokens', { sub: 'alice', role: 'user' });
      expect(token.status).to.equal(201);

      // the user's page connects and joins
      const tab = await connectWith(node.url, { token: token.body.token });
      const meters = collect(tab, 'meter');
      const endedEvent = waitFor(tab, 'chat:ended', () => true, 15_000);
      let stop = () => {};
      try {
        const join = await call(tab, 'chat:join', { chatId: 'chat-1' });
        expect(join.ok, JSON.stringify(join)).to.equal(true);
        expect(join.meter).to.include({ state: 'pending', freeSecondsRemaining: 2, balance: '10.0000' });
        stop = heartbeats(tab, 'chat-1');

        // the advisor starts over HTTP: the meter runs at once, the user being present
        const started = await api('POST', '/v1/chats/chat-1/start');
        expect(started.status).to.equal(200);
        expect(started.body.meter.state).to.equal('running');

        // free time first
        const inFree = await waitFor(tab, 'meter', (m) => m.freeSecondsUsed >= 1 && m.freeSecondsRemaining >= 1, 5000);
        expect(inFree).to.include({ state: 'running', creditsUsed: '0.0000', balance: '10.0000' });
        expect(inFree.freeSecondsRemaining).to.equal(2 - inFree.freeSecondsUsed);
        // then credits: 6 per minute is 0.1 a second
        const paid = await waitFor(tab, 'meter', (m) => m.durationSeconds >= 4, 8000);
        expect(paid).to.include({ state: 'running', freeSecondsUsed: 2, freeSecondsRemaining: 0 });
        const paidUnits = BigInt(paid.durationSeconds - 2) * 1000n; // 0.1 credit is 1000 units
        expect(paid.creditsUsed).to.equal(amount(paidUnits));
        expect(paid.balance).to.equal(amount(100_000n - paidUnits));
      } finally {
        stop();
      }

      // every pushed meter is consistent, and the balance only goes down
      const own = meters.filter((m) => m.chatId === 'chat-1');
      expect(own.length).to.be.at.least(3);
      for (let i = 1; i < own.length; i++) {
        expect(own[i].seq, 'seq').to.be.greaterThan(own[i - 1].seq);
        expect(own[i].durationSeconds).to.be.at.least(own[i - 1].durationSeconds);
        expect(units(own[i].balance) <= units(own[i - 1].balance), 'balance never rises').to.equal(true);
      }
      for (const m of own) {
        expect(m.freeSecondsUsed + m.freeSecondsRemaining).to.equal(2);
        expect(m.freeSecondsUsed).to.equal(Math.min(2, m.durationSeconds));
        const credits = BigInt(m.durationSeconds - m.freeSecondsUsed) * 1000n;
        expect(m.creditsUsed).to.equal(amount(credits));
        expect(m.balance).to.equal(amount(100_000n - credits));
      }
      expect(own.some((m) => m.freeSecondsRemaining === 0 && m.creditsUsed !== '0.0000')).to.equal(true);

      // the platform ends the chat
      const ended = await api('POST', '/v1/chats/chat-1/end');
      expect(ended.status).to.equal(200);
      expect(ended.body.chat).to.include({ status: 'ended', endReason: 'ended_by_platform' });
      const pushed = await endedEvent;
      expect(pushed).to.include({ chatId: 'chat-1', reason: 'ended_by_platform' });
      expect(pushed.meter.state).to.equal('ended');
      tab.close();

      // and the books agree with the last meter
      const record = await api('GET', '/v1/chats/chat-1/time-record');
      expect(record.body).to.include({ isActive: false, endReason: 'ended_by_platform', durationSeconds: pushed.meter.durationSeconds, creditsUsed: pushed.meter.creditsUsed, freeSecondsUsed: 2 });
      const user = await api('GET', '/v1/users/alice');
      expect(user.body.balance).to.equal(pushed.meter.balance);
      const entries = await ledger('alice');
      const charged = entries.filter((e) => e.type === 'charge');
      expect(charged.length).to.be.at.least(1);
      for (const e of charged) expect(e.chatId).to.equal('chat-1');
      expect(charged.reduce((sum, e) => sum + units(e.amount), 0n)).to.equal(units(record.body.creditsUsed));
      expect(entries[0].balanceAfter).to.equal(user.body.balance);
      const pair = await api('GET', '/v1/users/alice/advisors/bob/time-records');
      expect(pair.body.allowance).to.deep.equal({ userId: 'alice', advisorId: 'bob', allocationSeconds: 2, usedSeconds: 2 });
    });
  });
});
