/**
 * `GET /openapi.json`: the OpenAPI 3.1 description of every `/v1` route, generated once
 * at start from the zod schemas the routes validate with (server/http/schemas.ts) by
 * zod-openapi, which renders them with zod's own JSON Schema. Describing a route is one
 * `route(...)` call in `describeRoutes` below; test/openapi.int.test.ts fails while a
 * route of the router is not described, or the document describes one it doesn't have.
 */
import { type Request, type Response, Router } from 'express';
import { z } from 'zod';
import { type ZodOpenApiPathsObject, type ZodOpenApiResponseObject, createDocument } from 'zod-openapi';
import { ErrorCode } from '../../client-sdk/src/protocol.js';
import { Id } from '../validation.js';
import { HTTP_STATUS } from './api.js';
import {
  AdvisorBody,
  AdvisorSchema,
  ChatBody,
  ChatDetailsSchema,
  ChatMeterSchema,
  ChatSchema,
  ClientTokenSchema,
  CreditsBody,
  DeliveriesQuery,
  DeliveryPageSchema,
  DeliverySchema,
  EventId,
  ErrorSchema,
  LedgerPageSchema,
  LedgerQuery,
  MeterSnapshotSchema,
  PairTimeRecordsSchema,
  TimeRecordSchema,
  TokenBody,
  TopUpSchema,
  UserBody,
  UserSchema,
  errorSchema,
} from './schemas.js';

/** Where server/app.ts mounts the API router. */
const PREFIX = '/v1';

/** What one route takes and answers. */
interface RouteDescription {
  operationId: string;
  tags: string[];
  summary: string;
  description?: string;
  /** The path's parameters; by default each `:name` of the path is an `Id`, as api.ts parses them. */
  params?: z.ZodObject;
  query?: z.ZodObject;
  /** The JSON body; a route with one may also answer 413. */
  body?: z.ZodType;
  /** Success statuses: what each means and the schema of its body. */
  responses: Record<number, { description: string; schema: z.ZodType }>;
  /**
   * Errors this route answers besides those of every route (bad_request, unauthorized,
   * internal, and payload_too_large with a body), each with when.
   */
  errors?: Partial<Record<ErrorCode, string>>;
}

/** Describes one route of server/http/api.ts, its path written as express writes it there. */
type DescribeRoute = (method: 'get' | 'post' | 'put' | 'delete' | 'patch', path: string, d: RouteDescription) => void;

/** Every route of the `/v1` router, in the order of server/http/api.ts. */
function describeRoutes(route: DescribeRoute): void {
  route('put', '/users/:id', {
    operationId: 'putUser',
    tags: ['users'],
    summary: 'Create or rename a user',
    description: '`balance` is taken only when the user is created (as a `topup` ledger entry); on an existing user it is ignored.',
    body: UserBody,
    responses: { 201: { description: 'created', schema: UserSchema }, 200: { description: 'updated', schema: UserSchema } },
  });
  route('get', '/users/:id', {
    operationId: 'getUser',
    tags: ['users'],
    summary: 'A user and their balance',
    responses: { 200: { description: 'the user', schema: UserSchema } },
    errors: { not_found: 'no such user' },
  });
  route('post', '/users/:id/credits', {
    operationId: 'topUp',
    tags: ['users'],
    summary: "Add credits to a user's balance",
    description: 'Idempotent by `idempotencyKey`: the same key again returns the first result (200) and adds nothing.',
    body: CreditsBody,
    responses: {
      201: { description: 'added', schema: TopUpSchema },
      200: { description: 'a replay: the first top-up under this key, nothing added', schema: TopUpSchema },
    },
    errors: {
      not_found: 'no such user',
      conflict: 'the key was used for another amount',
      unprocessable: 'an amount of 0, or a balance beyond what the server computes with',
    },
  });
  route('get', '/users/:id/ledger', {
    operationId: 'getLedger',
    tags: ['users'],
    summary: "A page of the user's ledger, newest first",
    query: LedgerQuery,
    responses: { 200: { description: 'a page; nextCursor is null on the last', schema: LedgerPageSchema } },
    errors: { not_found: 'no such user' },
  });
  route('put', '/advisors/:id', {
    operationId: 'putAdvisor',
    tags: ['advisors'],
    summary: 'Create or update an advisor',
    description: 'A new rate applies to chats whose time record is created afterwards; new free seconds to pairs whose allowance is created afterwards.',
    body: AdvisorBody,
    responses: { 201: { description: 'created', schema: AdvisorSchema }, 200: { description: 'updated', schema: AdvisorSchema } },
  });
  route('get', '/advisors/:id', {
    operationId: 'getAdvisor',
    tags: ['advisors'],
    summary: 'An advisor',
    responses: { 200: { description: 'the advisor', schema: AdvisorSchema } },
    errors: { not_found: 'no such advisor' },
  });
  route('post', '/chats', {
    operationId: 'createChat',
    tags: ['chats'],
    summary: 'Create a pending chat',
    body: ChatBody,
    responses: {
      201: { description: 'created', schema: ChatSchema },
      200: { description: 'the same body again: nothing changed', schema: ChatSchema },
    },
    errors: { not_found: 'no such user or advisor', conflict: 'the chat exists with another user or advisor' },
  });
  for (const [kind, summary, conflict] of [
    ['start', 'Start a chat: pending to active, metering starts', 'the chat has ended'],
    ['pause', 'Pause the meter without ending the chat', 'the chat is not active'],
    ['resume', 'Resume a paused meter', 'the chat is not active'],
    ['end', 'End the chat (reason ended_by_platform); ending an ended chat changes nothing', null],
  ] as const) {
    route('post', `/chats/:id/${kind}`, {
      operationId: `${kind}Chat`,
      tags: ['chats'],
      summary,
      responses: { 200: { description: 'the chat and its meter after the command', schema: ChatMeterSchema } },
      errors: { not_found: 'no such chat', ...(conflict && { conflict }) },
    });
  }
  route('get', '/chats/:id', {
    operationId: 'getChat',
    tags: ['chats'],
    summary: 'A chat, its time record and its meter',
    responses: { 200: { description: 'record and meter are null before the first join or start', schema: ChatDetailsSchema } },
    errors: { not_found: 'no such chat' },
  });
  route('get', '/chats/:id/meter', {
    operationId: 'getChatMeter',
    tags: ['chats'],
    summary: "A chat's meter, for clients that poll",
    responses: { 200: { description: 'the latest meter', schema: MeterSnapshotSchema } },
    errors: { not_found: 'no such chat, or no time record yet (no one joined or started it)' },
  });
  route('get', '/chats/:id/time-record', {
    operationId: 'getChatTimeRecord',
    tags: ['chats'],
    summary: "A chat's one time record, active or ended",
    responses: { 200: { description: 'the record', schema: TimeRecordSchema } },
    errors: { not_found: 'no such chat, or no time record yet (no one joined or started it)' },
  });
  route('get', '/users/:uid/advisors/:aid/time-records', {
    operationId: 'getPairTimeRecords',
    tags: ['chats'],
    summary: 'Every time record of a user-advisor pair, newest first, and their shared allowance',
    responses: { 200: { description: 'the allowance is null before the pair has a record', schema: PairTimeRecordsSchema } },
    errors: { not_found: 'no such user or advisor' },
  });
  route('post', '/tokens', {
    operationId: 'createToken',
    tags: ['tokens'],
    summary: 'Sign a client JWT for the socket (for platforms that do not sign their own)',
    body: TokenBody,
    responses: { 201: { description: 'a token and when it expires', schema: ClientTokenSchema } },
  });
  route('get', '/webhook-deliveries', {
    operationId: 'listWebhookDeliveries',
    tags: ['webhooks'],
    summary: 'Webhook events and where their delivery stands, newest first',
    query: DeliveriesQuery,
    responses: { 200: { description: 'a page of deliveries', schema: DeliveryPageSchema } },
  });
  route('post', '/webhook-deliveries/:id/retry', {
    operationId: 'retryWebhookDelivery',
    tags: ['webhooks'],
    summary: 'Send a pending or failed event at once; it is pending again',
    params: z.object({ id: EventId }),
    responses: { 200: { description: 'the delivery, pending and due now', schema: DeliverySchema } },
    errors: { not_found: 'no such event', conflict: 'the event was delivered already' },
  });
}

/** What every route may answer, and when. */
const COMMON_ERRORS = {
  bad_request: 'a malformed request: an id, the query, the body or its JSON',
  unauthorized: 'a missing or wrong API key',
  internal: 'an unexpected failure',
} as const satisfies Partial<Record<ErrorCode, string>>;
const BODY_ERRORS = { payload_too_large: 'a body over 16 KB' } as const satisfies Partial<Record<ErrorCode, string>>;

/**
 * The error schema of each status of HTTP_STATUS, naming the codes it answers with:
 * `{ error: { code: "not_found", message } }` for 404. Built once: a component id is
 * registered once with zod.
 */
const ERROR_SCHEMAS: ReadonlyMap<number, z.ZodType> = (() => {
  const byStatus = new Map<number, ErrorCode[]>();
  for (const code of Object.values(ErrorCode)) byStatus.set(HTTP_STATUS[code], [...(byStatus.get(HTTP_STATUS[code]) ?? []), code]);
  const keyOf = (code: ErrorCode) => Object.entries(ErrorCode).find(([, c]) => c === code)![0];
  return new Map(
    [...byStatus].map(([status, codes]) => [
      status,
      errorSchema(codes as [ErrorCode, ...ErrorCode[]]).meta({
        id: `${codes.map(keyOf).join('Or')}Error`,
        description: `the error of a ${status}: ${codes.join(', ')}`,
      }),
    ]),
  );
})();

/** The responses of one route: its successes, then its errors grouped by status. */
function responsesOf(d: RouteDescription): Record<`${number}`, ZodOpenApiResponseObject> {
  const out: Record<`${number}`, ZodOpenApiResponseObject> = {};
  for (const [status, r] of Object.entries(d.responses)) {
    out[status as `${number}`] = { description: r.description, content: { 'application/json': { schema: r.schema } } };
  }
  const errors: Partial<Record<ErrorCode, string>> = { ...COMMON_ERRORS, ...(d.body ? BODY_ERRORS : {}), ...d.errors };
  const byStatus = new Map<number, string[]>();
  for (const [code, when] of Object.entries(errors) as Array<[ErrorCode, string]>) {
    const status = HTTP_STATUS[code];
    byStatus.set(status, [...(byStatus.get(status) ?? []), `${code}: ${when}`]);
  }
  for (const [status, whens] of [...byStatus].sort(([a], [b]) => a - b)) {
    out[`${status}`] = { description: whens.join('; '), content: { 'application/json': { schema: ERROR_SCHEMAS.get(status)! } } };
  }
  return out;
}

/** `/users/:uid/advisors/:aid` → `/v1/users/{uid}/advisors/{aid}`, and the names of its parameters. */
function openApiPath(expressPath: string): { path: string; names: string[] } {
  const names: string[] = [];
  const path = expressPath.replace(/:(\w+)/g, (_, name: string) => {
    names.push(name);
    return `{${name}}`;
  });
  return { path: PREFIX + path, names };
}

/** The OpenAPI 3.1 document of the `/v1` API. */
export function openApiDocument(): ReturnType<typeof createDocument> {
  const paths: ZodOpenApiPathsObject = {};
  describeRoutes((method, expressPath, d) => {
    const { path, names } = openApiPath(expressPath);
    if (paths[path]?.[method]) throw new Error(`${method.toUpperCase()} ${path} is described twice`);
    const params = d.params ?? (names.length ? z.object(Object.fromEntries(names.map((n) => [n, Id]))) : undefined);
    paths[path] = {
      ...paths[path],
      [method]: {
        operationId: d.operationId,
        tags: d.tags,
        summary: d.summary,
        ...(d.description && { description: d.description }),
        requestParams: { ...(params && { path: params }), ...(d.query && { query: d.query }) },
        ...(d.body && { requestBody: { required: true, content: { 'application/json': { schema: d.body } } } }),
        responses: responsesOf(d),
      },
    };
  });
  return createDocument({
    openapi: '3.1.0',
    info: {
      title: 'chatmeter',
      version: 'v1',
      description: [
        'The HTTP API for integrators: users, advisors, chats, their time records and meters, credits, client tokens.',
        'Every route takes `Authorization: Bearer <CHATMETER_API_KEY>`. Bodies are JSON (at most 16 KB: a larger one is 413 on any route).',
        'Every error is `{ error: { code, message } }`; each status has its codes. Amounts are decimal strings with 4 fraction digits',
        '(at most 4 in requests); times are ISO 8601 strings or null. The real-time socket protocol is in the SDK (client-sdk/).',
      ].join(' '),
    },
    security: [{ apiKey: [] }],
    tags: [
      { name: 'users', description: 'paying clients, their balances and ledgers' },
      { name: 'advisors', description: 'who sells chat time, at a rate per minute with free seconds per user' },
      { name: 'chats', description: 'one conversation each, with exactly one time record from its first join or start' },
      { name: 'tokens', description: 'client JWTs for the socket' },
    ],
    paths,
    components: {
      securitySchemes: {
        apiKey: { type: 'http', scheme: 'bearer', description: "the integrator's API key (CHATMETER_API_KEY): `Authorization: Bearer <key>`" },
      },
      // the shape of every error, also as one schema for clients that want a single type
      schemas: { Error: ErrorSchema },
    },
  });
}

/** Serves the document at `GET /openapi.json`, without an API key; built once, here, not per request. */
export function openApiRouter(): Router {
  const body = JSON.stringify(openApiDocument());
  const router = Router();
  router.get('/openapi.json', (_req: Request, res: Response) => {
    // a public description: viewers on other origins (Swagger UI, Redoc) may fetch it
    res.set({ 'Access-Control-Allow-Origin': '*', 'Cross-Origin-Resource-Policy': 'cross-origin', 'Cache-Control': 'no-cache' });
    res.type('application/json').send(body);
  });
  return router;
}
