/**
 * The HTTP API of SPEC section 3: API-key auth, validation with the shared
 * schemas, one error catalogue. Routes validate → call the same services as the
 * socket handlers → respond.
 */
import express, { type NextFunction, type Request, type Response, type Router } from 'express';
import { z } from 'zod';
import { type ChatView, ErrorCode } from '../../client-sdk/src/protocol.js';
import { type Accounts, OPENING_BALANCE_KEY } from '../accounts.js';
import type { Clock } from '../clock.js';
import { BadRequestError, DomainError, NotFoundError } from '../errors.js';
import type { Logger } from '../log.js';
import type { MeterService } from '../metering/meter-service.js';
import type { TimeRecords } from '../metering/records.js';
import type { SettlementService } from '../metering/settlement.js';
import type { Tokens } from '../tokens.js';
import { bearerMatches } from './bearer.js';
import type { WebhookDeliveries } from '../webhooks/deliveries.js';
import { Id, describeIssues } from '../validation.js';
import { parseAmount } from '../money.js';
import { AdvisorBody, ChatBody, CreditsBody, DeliveriesQuery, EventId, LedgerQuery, TokenBody, UserBody } from './schemas.js';

/** HTTP status of each error code. */
export const HTTP_STATUS: Record<ErrorCode, number> = {
  bad_request: 400,
  unauthorized: 401,
  forbidden: 403,
  not_found: 404,
  conflict: 409,
  payload_too_large: 413,
  unprocessable: 422,
  rate_limited: 429,
  internal: 500,
};

/** The collaborators of the API. */
export interface ApiDeps {
  apiKey: string;
  accounts: Accounts;
  engine: SettlementService;
  meters: MeterService;
  records: TimeRecords;
  tokens: Tokens;
  clock: Clock;
  log: Logger;
  /** Tells the user's sockets about a balance change not caused by a tick. */
  notifyBalance: (userId: string, balance: string) => void;
  /** Tells the advisor's sockets (their dashboards) about a chat just created. */
  notifyChatCreated: (chat: ChatView) => void;
  deliveries: WebhookDeliveries;
}

function parse<S extends z.ZodType>(schema: S, value: unknown): z.infer<S> {
  const r = schema.safeParse(value);
  if (!r.success) throw new BadRequestError(describeIssues(r.error));
  return r.data;
}

const id = (req: Request, name: string): string => parse(Id, req.params[name]);

/** The `/v1` router. */
export function apiRouter(d: ApiDeps): Router {
  const r = express.Router();

  r.use((req, _res, next) => {
    if (!bearerMatches(req.get('authorization'), d.apiKey)) {
      return next(new DomainError(ErrorCode.Unauthorized, 'missing or wrong API key (Authorization: Bearer <key>)'));
    }
    next();
  });

  r.put('/users/:id', async (req, res) => {
    const body = parse(UserBody, req.body);
    const { user, created } = await d.accounts.putUser(id(req, 'id'), body);
    res.status(created ? 201 : 200).json(user);
  });

  r.get('/users/:id', async (req, res) => {
    res.json(await d.accounts.getUser(id(req, 'id')));
  });

  r.post('/users/:id/credits', async (req, res) => {
    const userId = id(req, 'id');
    const body = parse(CreditsBody, req.body);
    if (parseAmount(body.amount) <= 0n) throw new DomainError(ErrorCode.Unprocessable, 'amount must be greater than 0');
    // the opening balance is a topup under this key: a top-up reusing it would be taken for its replay
    if (body.idempotencyKey === OPENING_BALANCE_KEY) {
      throw new BadRequestError(`idempotencyKey "${OPENING_BALANCE_KEY}" is reserved for the opening balance`);
    }
    const result = await d.engine.topUp(userId, body.amount, body.idempotencyKey);
    if (!result.replayed) {
      d.notifyBalance(userId, result.balance);
      // the top-up is done: a failure to refresh meters must not turn it into an error
      d.meters.balanceChanged(userId).catch((err: unknown) => d.log.warn({ err, userId }, 'refreshing meters after a top-up failed'));
    }
    res.status(result.replayed ? 200 : 201).json({ entry: result.entry, balance: result.balance });
  });

  r.get('/users/:id/ledger', async (req, res) => {
    const userId = id(req, 'id');
    const q = parse(LedgerQuery, req.query);
    res.json(await d.accounts.ledgerPage(userId, q.limit, q.cursor ?? null));
  });

  r.put('/advisors/:id', async (req, res) => {
    const body = parse(AdvisorBody, req.body);
    const { advisor, created } = await d.accounts.putAdvisor(id(req, 'id'), body);
    res.status(created ? 201 : 200).json(advisor);
  });

  r.get('/advisors/:id', async (req, res) => {
    res.json(await d.accounts.getAdvisor(id(req, 'id')));
  });

  r.post('/chats', async (req, res) => {
    const body = parse(ChatBody, req.body);
    const { chat, created } = await d.accounts.createChat(body);
    if (created) d.notifyChatCreated(chat);
    res.status(created ? 201 : 200).json(chat);
  });

  for (const kind of ['start', 'pause', 'resume'] as const) {
    r.post(`/chats/:id/${kind}`, async (req, res) => {
      res.json(await d.meters.command(id(req, 'id'), { kind }));
    });
  }
  r.post('/chats/:id/end', async (req, res) => {
    res.json(await d.meters.command(id(req, 'id'), { kind: 'end', reason: 'ended_by_platform' }));
  });

  r.get('/chats/:id', async (req, res) => {
    res.json(await d.meters.chatDetails(id(req, 'id')));
  });

  r.get('/chats/:id/meter', async (req, res) => {
    const chatId = id(req, 'id');
    await d.accounts.getChat(chatId);
    const meter = await d.meters.meter(chatId);
    if (!meter) throw new NotFoundError(`chat ${chatId} has no time record yet (no one joined it)`);
    res.json(meter);
  });

  r.get('/chats/:id/time-record', async (req, res) => {
    const chatId = id(req, 'id');
    await d.accounts.getChat(chatId);
    const record = await d.records.ofChat(chatId);
    if (!record) throw new NotFoundError(`chat ${chatId} has no time record yet (no one joined it)`);
    res.json(record);
  });

  r.get('/users/:uid/advisors/:aid/time-records', async (req, res) => {
    const userId = id(req, 'uid');
    const advisorId = id(req, 'aid');
    // an unknown user or advisor is a 404, not an empty pair
    await Promise.all([d.accounts.getUser(userId), d.accounts.getAdvisor(advisorId)]);
    res.json(await d.records.ofPair(userId, advisorId));
  });

  r.post('/tokens', async (req, res) => {
    const body = parse(TokenBody, req.body);
    res.status(201).json(await d.tokens.sign({ sub: body.sub, role: body.role }, body.ttlSeconds ?? 3600, d.clock.now()));
  });

  r.get('/webhook-deliveries', async (req, res) => {
    const q = parse(DeliveriesQuery, req.query);
    res.json(await d.deliveries.page(q.status ?? null, q.limit, q.cursor ?? null));
  });

  r.post('/webhook-deliveries/:id/retry', async (req, res) => {
    res.json(await d.deliveries.retry(parse(EventId, req.params.id)));
  });

  r.use((_req, _res, next) => next(new NotFoundError('no such route')));
  return r;
}

/** Turns any error into `{ error: { code, message } }` with its status. */
export function errorHandler(log: Logger) {
  return (err: unknown, req: Request, res: Response, _next: NextFunction): void => {
    let code: ErrorCode = ErrorCode.Internal;
    let message = 'internal error';
    const e = err as { type?: string; status?: number; message?: string; expose?: boolean };
    if (err instanceof DomainError) {
      code = err.code;
      message = err.message;
    } else if (e?.type === 'entity.too.large') {
      code = ErrorCode.PayloadTooLarge;
      message = 'request body too large';
    } else if (e?.type === 'entity.parse.failed') {
      code = ErrorCode.BadRequest;
      message = 'malformed JSON body';
    } else if (e?.status === 400) {
      // e.g. a path with a malformed percent-encoding: not the body's fault
      code = ErrorCode.BadRequest;
      message = e.expose && e.message ? e.message : 'bad request';
    } else if (e?.type === 'encoding.unsupported' || e?.type === 'charset.unsupported' || e?.status === 415) {
      code = ErrorCode.BadRequest;
      message = e.message ?? 'unsupported body encoding';
    } else {
      log.error({ err, method: req.method, path: req.path }, 'request failed');
    }
    res.status(HTTP_STATUS[code]).json({ error: { code, message } });
  };
}
