import { Validator } from '@seriousme/openapi-schema-validator';
import { Ajv2020, type ValidateFunction } from 'ajv/dist/2020.js';
import ajvFormats from 'ajv-formats';
import { expect } from 'chai';
import { type ApiDeps, apiRouter } from '../server/http/api.js';
import { freshDatabase, type TestDb } from './support/db.js';
import { type TestNode, call, eventually, startNode } from './support/server.js';

// ajv-formats is CommonJS: imported from ESM, its default export is a property of the module
const addFormats = ajvFormats.default;

type Json = any;
const METHODS = ['get', 'put', 'post', 'delete', 'patch'] as const;

/** `METHOD /v1/...{param}` of every route the `/v1` router has, read from its stack. */
function routerRoutes(apiKey: string): string[] {
  // building the router reads only the key; the other collaborators serve requests, and none is made here
  const router = apiRouter({ apiKey } as ApiDeps);
  const routes: string[] = [];
  for (const layer of router.stack) {
    if (!layer.route) continue; // the API-key check and the 404 fallback
    for (const { method } of layer.route.stack) {
      routes.push(`${method.toUpperCase()} /v1${layer.route.path.replace(/:(\w+)/g, '{$1}')}`);
    }
  }
  return [...new Set(routes)].sort();
}

/** `METHOD /v1/...{param}` of every operation the document describes. */
function describedRoutes(doc: Json): string[] {
  return Object.entries<Json>(doc.paths)
    .flatMap(([path, item]) => METHODS.filter((m) => item[m]).map((m) => `${m.toUpperCase()} ${path}`))
    .sort();
}

/** A template's concrete path with every `{param}` set to `value`. */
const fill = (template: string, value: string) => template.replace(/\{\w+\}/g, value);

describe('GET /openapi.json (OpenAPI 3.1, real server)', () => {
  let db: TestDb;
  let node: TestNode;
  let doc: Json;
  /** Validates a response body of an operation and status, compiled from the document. */
  let validatorOf: (method: string, template: string, status: number) => ValidateFunction;
  /** `METHOD template status` of every response checked so far. */
  const seen = new Set<string>();

  before(async () => {
    db = await freshDatabase();
    node = await startNode(db);
    const res = await fetch(`${node.url}/openapi.json`); // no API key
    expect(res.status).to.equal(200);
    expect(res.headers.get('content-type')).to.match(/^application\/json/);
    doc = await res.json();

    // component $refs point into the document: hand ajv the components under an $id of their own
    const base = 'https://chatmeter.invalid/openapi.json';
    const rebase = (schema: Json): Json => JSON.parse(JSON.stringify(schema).replaceAll('"#/components/schemas/', `"${base}#/$defs/`));
    // strict: a schema ajv would only half understand fails instead of passing everything
    const ajv = new Ajv2020({ strict: true, allowUnionTypes: true, allErrors: true });
    addFormats(ajv);
    ajv.addSchema({ $id: base, $defs: rebase(doc.components.schemas) });
    const compiled = new Map<string, ValidateFunction>();
    validatorOf = (method, template, status) => {
      const key = `${method} ${template} ${status}`;
      const op = doc.paths[template]?.[method.toLowerCase()];
      expect(op, `${method} ${template} is not in the document`).to.be.an('object');
      const response = op.responses[String(status)];
      expect(response, `${method} ${template} answered ${status}, which the document does not list (it lists ${Object.keys(op.responses).join(', ')})`).to.be.an('object');
      const schema = response.content?.['application/json']?.schema;
      expect(schema, `${key} has no application/json schema`).to.be.an('object');
      if (!compiled.has(key)) compiled.set(key, ajv.compile(rebase(schema)));
      return compiled.get(key)!;
    };
  });
  after(async () => {
    await node?.close();
    await db?.close();
  });

  /** The document's path template a concrete path falls under. */
  function templateOf(path: string): string {
    const bare = path.split('?')[0]!;
    const matches = Object.keys(doc.paths).filter((t) => new RegExp(`^${t.replace(/\{\w+\}/g, '[^/]+')}$`).test(bare));
    // where templates overlap, the one with fewer parameters (a literal segment) wins
    matches.sort((a, b) => a.split('{').length - b.split('{').length);
    expect(matches, `no path of the document matches ${bare}`).to.not.be.empty;
    return matches[0]!;
  }

  /** Calls the API, then checks that the document lists the status for the route and the body matches its schema. */
  async function request(
    method: string,
    path: string,
    body?: unknown,
    opts: { key?: boolean; expect?: number } = {},
  ): Promise<{ status: number; body: Json }> {
    const res = await fetch(node.url + path, {
      method,
      headers: { ...(opts.key === false ? {} : { authorization: `Bearer ${node.config.apiKey}` }), 'content-type': 'application/json' },
      body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
    });
    const text = await res.text();
    const label = `${method} ${path} -> ${res.status} ${text.slice(0, 300)}`;
    expect(res.headers.get('content-type'), label).to.match(/^application\/json/);
    const parsed = JSON.parse(text);
    if (opts.expect !== undefined) expect(res.status, label).to.equal(opts.expect);
    const template = templateOf(path);
    const validate = validatorOf(method, template, res.status);
    expect(validate(parsed), `${label}\ndoes not match the document: ${JSON.stringify(validate.errors, null, 1)}`).to.equal(true);
    seen.add(`${method} ${template} ${res.status}`);
    return { status: res.status, body: parsed };
  }

  it('serves a valid OpenAPI 3.1 document without an API key, also to other origins', async () => {
    const validator = new Validator();
    const result = await validator.validate(structuredClone(doc));
    expect(result.valid, JSON.stringify(result.errors, null, 1)).to.equal(true);
    expect(validator.version).to.equal('3.1');
    expect(doc.openapi).to.match(/^3\.1\./);
    expect(doc.components.securitySchemes.apiKey).to.include({ type: 'http', scheme: 'bearer' });
    expect(doc.security).to.deep.equal([{ apiKey: [] }]);
    // a viewer on another origin (Swagger UI, Redoc) can fetch it
    const res = await fetch(`${node.url}/openapi.json`, { headers: { origin: 'https://viewer.example' } });
    expect(res.headers.get('access-control-allow-origin')).to.equal('*');
  });

  it('describes every route of the /v1 router, and no route the router does not have', () => {
    const routes = routerRoutes(node.config.apiKey);
    const described = describedRoutes(doc);
    const missing = routes.filter((r) => !described.includes(r));
    const extra = described.filter((r) => !routes.includes(r));
    expect(missing, 'routes of server/http/api.ts not described in server/http/openapi.ts (describeRoutes)').to.deep.equal([]);
    expect(extra, 'routes described in server/http/openapi.ts that server/http/api.ts does not have').to.deep.equal([]);
    expect(routes.length).to.be.greaterThan(10);
  });

  it('lists, on every operation, its errors as { error: { code, message } } with the codes of their status', () => {
    for (const route of describedRoutes(doc)) {
      const [method, template] = route.split(' ') as [string, string];
      const op = doc.paths[template][method.toLowerCase()];
      for (const status of ['400', '401', '500', ...(op.requestBody ? ['413'] : [])]) {
        expect(op.responses, `${route} lists ${status}`).to.have.property(status);
      }
      for (const [status, response] of Object.entries<Json>(op.responses)) {
        if (Number(status) < 400) continue;
        const ref: string = response.content['application/json'].schema.$ref;
        const schema = doc.components.schemas[ref.replace('#/components/schemas/', '')];
        expect(schema.required, `${route} ${status}`).to.deep.equal(['error']);
        expect(schema.properties.error.required, `${route} ${status}`).to.have.members(['code', 'message']);
        expect(schema.properties.error.properties.code.enum, `${route} ${status}`).to.not.be.empty;
      }
    }
  });

  it('answers every route as described: successes and typical errors validate against the document', async () => {
    const routes = describedRoutes(doc);

    // 401 for a missing key, on every route
    for (const route of routes) {
      const [method, template] = route.split(' ') as [string, string];
      const op = doc.paths[template][method.toLowerCase()];
      await request(method, fill(template, 'u1'), op.requestBody ? {} : undefined, { key: false, expect: 401 });
    }
    // 400 for a malformed id, or for a malformed body where the path has none
    for (const route of routes) {
      const [method, template] = route.split(' ') as [string, string];
      const op = doc.paths[template][method.toLowerCase()];
      if (template.includes('{')) await request(method, fill(template, encodeURIComponent('bad id!')), op.requestBody ? {} : undefined, { expect: 400 });
      else if (op.requestBody) await request(method, template, {}, { expect: 400 });
    }
    // 413 for a body over 16 KB, on every route that takes one
    for (const route of routes) {
      const [method, template] = route.split(' ') as [string, string];
      if (doc.paths[template][method.toLowerCase()].requestBody) {
        await request(method, fill(template, 'u1'), { pad: 'x'.repeat(20_000) }, { expect: 413 });
      }
    }
    // malformed JSON
    await request('PUT', '/v1/users/u1', '{"name":', { expect: 400 });

    // users and credits
    await request('PUT', '/v1/users/u1', { name: 'Ursula', balance: '10' }, { expect: 201 });
    await request('PUT', '/v1/users/u1', { name: 'Ursula B.' }, { expect: 200 });
    await request('PUT', '/v1/users/u2', {}, { expect: 201 });
    await request('GET', '/v1/users/u1', undefined, { expect: 200 });
    await request('GET', '/v1/users/ghost', undefined, { expect: 404 });
    await request('POST', '/v1/users/u1/credits', { amount: '5', idempotencyKey: 'order-1' }, { expect: 201 });
    await request('POST', '/v1/users/u1/credits', { amount: '5', idempotencyKey: 'order-1' }, { expect: 200 });
    await request('POST', '/v1/users/u1/credits', { amount: '6', idempotencyKey: 'order-1' }, { expect: 409 });
    await request('POST', '/v1/users/u1/credits', { amount: '0', idempotencyKey: 'order-2' }, { expect: 422 });
    await request('POST', '/v1/users/ghost/credits', { amount: '1', idempotencyKey: 'order-3' }, { expect: 404 });
    await request('GET', '/v1/users/ghost/ledger', undefined, { expect: 404 });
    await request('GET', '/v1/users/u1/ledger?limit=0', undefined, { expect: 400 });

    // advisors: a paid one with one free second, and a free one (unlimited: secondsAffordable null)
    await request('PUT', '/v1/advisors/a1', { name: 'Ada', ratePerMinute: '6', freeSeconds: 1 }, { expect: 201 });
    await request('PUT', '/v1/advisors/a1', { ratePerMinute: '6' }, { expect: 200 });
    await request('PUT', '/v1/advisors/a0', { ratePerMinute: '0' }, { expect: 201 });
    await request('GET', '/v1/advisors/a1', undefined, { expect: 200 });
    await request('GET', '/v1/advisors/ghost', undefined, { expect: 404 });

    // chats before any record: record, meter and allowance are null
    await request('POST', '/v1/chats', { id: 'c1', userId: 'u1', advisorId: 'a1' }, { expect: 201 });
    await request('POST', '/v1/chats', { id: 'c1', userId: 'u1', advisorId: 'a1' }, { expect: 200 });
    await request('POST', '/v1/chats', { id: 'c1', userId: 'u2', advisorId: 'a1' }, { expect: 409 });
    await request('POST', '/v1/chats', { id: 'c2', userId: 'ghost', advisorId: 'a1' }, { expect: 404 });
    await request('POST', '/v1/chats', { id: 'c0', userId: 'u2', advisorId: 'a0' }, { expect: 201 });
    const before = await request('GET', '/v1/chats/c1', undefined, { expect: 200 });
    expect(before.body.record).to.equal(null);
    expect(before.body.meter).to.equal(null);
    await request('GET', '/v1/chats/ghost', undefined, { expect: 404 });
    await request('GET', '/v1/chats/c1/meter', undefined, { expect: 404 });
    await request('GET', '/v1/chats/c1/time-record', undefined, { expect: 404 });
    const pair = await request('GET', '/v1/users/u1/advisors/a1/time-records', undefined, { expect: 200 });
    expect(pair.body.allowance).to.equal(null);
    await request('GET', '/v1/users/u1/advisors/ghost/time-records', undefined, { expect: 404 });
    for (const kind of ['start', 'pause', 'resume', 'end']) await request('POST', `/v1/chats/ghost/${kind}`, undefined, { expect: 404 });

    // the user joins (a pending meter), the chat runs through its free second into credits
    const socket = await node.connect('u1', 'user');
    expect((await call(socket, 'chat:join', { chatId: 'c1' })).ok).to.equal(true);
    const heartbeats = setInterval(() => socket.emit('heartbeat', { chatId: 'c1' }), 100);
    try {
      expect((await request('GET', '/v1/chats/c1/meter', undefined, { expect: 200 })).body.state).to.equal('pending');
      await request('POST', '/v1/chats/c1/pause', undefined, { expect: 409 });
      await request('POST', '/v1/chats/c1/resume', undefined, { expect: 409 });
      await request('POST', '/v1/chats/c1/start', undefined, { expect: 200 });
      await eventually(async () => (await request('GET', '/v1/chats/c1/meter', undefined, { expect: 200 })).body.creditsUsed !== '0.0000', 10_000);
      await request('POST', '/v1/chats/c1/pause', undefined, { expect: 200 });
      await request('POST', '/v1/chats/c1/resume', undefined, { expect: 200 });
      await request('GET', '/v1/chats/c1', undefined, { expect: 200 });
      await request('GET', '/v1/chats/c1/time-record', undefined, { expect: 200 });
      await request('POST', '/v1/chats/c1/end', undefined, { expect: 200 });
    } finally {
      clearInterval(heartbeats);
    }
    await request('POST', '/v1/chats/c1/start', undefined, { expect: 409 });
    const ended = await request('GET', '/v1/chats/c1', undefined, { expect: 200 });
    expect(ended.body.chat.endReason).to.equal('ended_by_platform');
    await request('GET', '/v1/users/u1/advisors/a1/time-records', undefined, { expect: 200 });
    // a free chat: its meter has secondsAffordable null
    const free = await request('POST', '/v1/chats/c0/start', undefined, { expect: 200 });
    expect(free.body.meter.secondsAffordable).to.equal(null);

    // the ledger, paged: the opening balance, the top-up and the chat's charge
    const first = await request('GET', '/v1/users/u1/ledger?limit=1', undefined, { expect: 200 });
    expect(first.body.nextCursor).to.be.a('string');
    const rest = await request('GET', `/v1/users/u1/ledger?cursor=${first.body.nextCursor}`, undefined, { expect: 200 });
    expect([...first.body.items, ...rest.body.items].map((e: Json) => e.type).sort()).to.deep.equal(['charge', 'topup', 'topup']);
    expect(rest.body.nextCursor).to.equal(null);

    // tokens
    await request('POST', '/v1/tokens', { sub: 'u1', role: 'user', ttlSeconds: 60 }, { expect: 201 });

    // webhook deliveries: none is recorded without WEBHOOK_URL; a failed and a delivered one made here
    const [failed, delivered] = ['6f1c3c52-4a43-4d1e-9a0c-5b4a3c2d1e01', '6f1c3c52-4a43-4d1e-9a0c-5b4a3c2d1e02'];
    await db.ds.query(
      `INSERT INTO webhook_events (id, type, created_at, body, status, attempts, last_attempt_at, last_response_status, next_attempt_at, delivered_at)
       VALUES ($1, 'credits.added', now(), '{}', 'failed', 3, now(), 500, NULL, NULL),
              ($2, 'chat.ended', now(), '{}', 'delivered', 1, now(), 200, NULL, now())`,
      [failed, delivered],
    );
    expect((await request('GET', '/v1/webhook-deliveries', undefined, { expect: 200 })).body.items).to.have.length(2);
    await request('GET', '/v1/webhook-deliveries?status=failed&limit=1', undefined, { expect: 200 });
    await request('GET', '/v1/webhook-deliveries?status=bogus', undefined, { expect: 400 });
    await request('POST', `/v1/webhook-deliveries/${failed}/retry`, undefined, { expect: 200 });
    await request('POST', `/v1/webhook-deliveries/${delivered}/retry`, undefined, { expect: 409 });
    await request('POST', '/v1/webhook-deliveries/6f1c3c52-4a43-4d1e-9a0c-5b4a3c2d1eff/retry', undefined, { expect: 404 });

    // every status the document lists was seen on every route, but 500 (an unexpected failure)
    const notDriven = routes.flatMap((route) => {
      const [method, template] = route.split(' ') as [string, string];
      return Object.keys(doc.paths[template][method.toLowerCase()].responses)
        .filter((status) => status !== '500' && !seen.has(`${route} ${status}`))
        .map((status) => `${route} ${status}`);
    });
    expect(notDriven, 'documented answers no request of this test produced: drive them here').to.deep.equal([]);
  });
});
