/**
 * The schemas of the HTTP API. Requests: the bodies and queries the `/v1` routes
 * validate with (server/http/api.ts parses with these). Responses: what the routes
 * return, as the wire types of client-sdk/src/protocol.ts and the server's views say
 * (test/http-schemas.types.unit.test.ts checks they agree). The OpenAPI document
 * (server/http/openapi.ts) is generated from these same objects; `.meta({ id })`
 * names a schema as a component of it.
 */
import { z } from 'zod';
import { ChatStatus, EndReason, ErrorCode, LedgerEntryType, MeterState } from '../../client-sdk/src/protocol.js';
import { MAX_RATE_UNITS, formatAmount, isAmount, parseAmount } from '../money.js';
import { AmountString, Id, PrintableText } from '../validation.js';

// --- requests

/** `PUT /v1/users/:id`. */
export const UserBody = z.object({
  name: PrintableText(200).optional(),
  balance: AmountString.optional().describe('the opening balance; taken only when the user is created, ignored afterwards'),
});

/** `POST /v1/users/:id/credits`: a top-up. */
export const CreditsBody = z.object({
  amount: AmountString.describe('greater than 0'),
  idempotencyKey: PrintableText(200)
    .min(1)
    .describe('the same key again returns the first result and adds nothing; "opening-balance" is reserved'),
});

/** `PUT /v1/advisors/:id`. */
export const AdvisorBody = z.object({
  name: PrintableText(200).optional(),
  ratePerMinute: AmountString.refine((s) => !isAmount(s) || parseAmount(s) <= MAX_RATE_UNITS, `must be at most ${formatAmount(MAX_RATE_UNITS)} credits a minute`).describe(
    `credits a minute, at most ${formatAmount(MAX_RATE_UNITS)}; a chat keeps the rate of when its time record was created`,
  ),
  freeSeconds: z
    .number()
    .int()
    .min(0)
    .max(10_000_000)
    .optional()
    .describe("free seconds of each new user-advisor pair; the server's FREE_TIME_SECONDS when an advisor is created without it"),
});

/** `POST /v1/chats`. */
export const ChatBody = z.object({ id: Id, userId: Id, advisorId: Id });

/** `POST /v1/tokens`: a client JWT for a user or an advisor. */
export const TokenBody = z.object({
  sub: Id.describe('the user or advisor id'),
  role: z.enum(['user', 'advisor']),
  ttlSeconds: z.number().int().min(1).max(7 * 24 * 3600).optional().describe('the lifetime of the token; 3600 when omitted'),
});

/** The largest ledger entry id (bigint). */
const MAX_BIGINT = 9223372036854775807n;

/** A page's limit and the `nextCursor` of the previous page (a bigint). */
const Page = z.object({
  limit: z.coerce.number().int().min(1).max(100).default(50),
  cursor: z
    .string()
    .regex(/^\d{1,19}$/, 'must be a nextCursor returned by this route')
    // 19 digits can still exceed a bigint id, which Postgres would refuse with a 500
    .refine((s) => !/^\d+$/.test(s) || BigInt(s) <= MAX_BIGINT, 'must be a nextCursor returned by this route')
    .optional()
    .describe("the previous page's nextCursor"),
});

/** `GET /v1/users/:id/ledger?limit&cursor`. */
export const LedgerQuery = Page;

/** `GET /v1/webhook-deliveries?status&limit&cursor`. */
export const DeliveriesQuery = Page.extend({ status: z.enum(['pending', 'failed', 'delivered']).optional() });

/** The id of a webhook event. */
export const EventId = z.uuid('must be an event id');

// --- responses

/** An amount as the server returns it: the columns' numeric(20,4), always 4 fraction digits. */
const Amount = z
  .string()
  .regex(/^\d{1,16}\.\d{4}$/)
  .meta({ id: 'Amount', description: 'a decimal string with 4 fraction digits', examples: ['12.5000'] });
/** A time, ISO 8601 in UTC. */
const Time = z.iso.datetime().meta({ id: 'Time', description: 'ISO 8601, UTC', examples: ['2026-01-31T12:00:00.000Z'] });
/** A count of whole seconds. */
const Seconds = z.int().min(0);

/** A user (`UserView`). */
export const UserSchema = z.strictObject({ id: Id, name: z.string(), balance: Amount }).meta({ id: 'User' });

/** An advisor (`AdvisorView`). */
export const AdvisorSchema = z.strictObject({ id: Id, name: z.string(), ratePerMinute: Amount, freeSeconds: Seconds }).meta({ id: 'Advisor' });

/** A chat (`ChatView`). */
export const ChatSchema = z
  .strictObject({
    id: Id,
    userId: Id,
    advisorId: Id,
    status: z.enum(ChatStatus),
    endReason: z.enum(EndReason).nullable(),
    createdAt: Time,
    startedAt: Time.nullable(),
    endedAt: Time.nullable(),
  })
  .meta({ id: 'Chat' });

/** The one time record of a chat (`TimeRecordView`). */
export const TimeRecordSchema = z
  .strictObject({
    id: z.string(),
    chatId: Id,
    userId: Id,
    advisorId: Id,
    isActive: z.boolean(),
    durationSeconds: Seconds.describe('metered (billed) seconds, free and paid'),
    freeSecondsUsed: Seconds,
    creditsUsed: Amount,
    freeSecondsAllocation: Seconds,
    startedAt: Time,
    lastHeartbeatAt: Time.nullable(),
    endedAt: Time.nullable(),
    endReason: z.enum(EndReason).nullable(),
  })
  .meta({ id: 'TimeRecord' });

/** A user-advisor pair's free-time allowance (`AllowanceView`). */
export const AllowanceSchema = z
  .strictObject({ userId: Id, advisorId: Id, allocationSeconds: Seconds, usedSeconds: Seconds })
  .meta({ id: 'Allowance' });

/** The live numbers of a chat (`MeterSnapshot`), as pushed on the socket. */
export const MeterSnapshotSchema = z
  .strictObject({
    chatId: Id,
    recordId: z.string(),
    userId: Id,
    advisorId: Id,
    state: z.enum(MeterState),
    durationSeconds: Seconds.describe("this chat's metered (billed) seconds, free and paid; not wall time"),
    freeSecondsUsed: Seconds,
    freeSecondsRemaining: Seconds.describe("the pair's free seconds left, shared by all its chats"),
    freeSecondsAllocation: Seconds,
    creditsUsed: Amount,
    balance: Amount.describe("the user's balance"),
    ratePerMinute: Amount,
    secondsAffordable: Seconds.nullable().describe('free seconds left + the seconds the balance pays for; null when the rate is 0 (unlimited)'),
    seq: z.int().min(0).describe('increases by one per pushed snapshot of this chat'),
    serverTime: Time,
  })
  .meta({ id: 'MeterSnapshot' });

/** A change of a balance (`LedgerEntryView`). */
export const LedgerEntrySchema = z
  .strictObject({
    id: z.string(),
    type: z.enum(LedgerEntryType),
    amount: Amount,
    balanceAfter: Amount,
    chatId: Id.nullable(),
    idempotencyKey: z.string(),
    createdAt: Time,
  })
  .meta({ id: 'LedgerEntry' });

/** A page of the ledger, newest first. */
export const LedgerPageSchema = z
  .strictObject({
    items: z.array(LedgerEntrySchema),
    nextCursor: z.string().nullable().describe("the cursor of the next page; null on the last page"),
  })
  .meta({ id: 'LedgerPage' });

/** A top-up's entry and the balance after it (`TopUpResult` without `replayed`, which the status says). */
export const TopUpSchema = z.strictObject({ entry: LedgerEntrySchema, balance: Amount }).meta({ id: 'TopUp' });

/** What a chat command returns: the chat and its meter after it (`ChatWithMeter` of the meter service). */
export const ChatMeterSchema = z.strictObject({ chat: ChatSchema, meter: MeterSnapshotSchema }).meta({ id: 'ChatMeter' });

/** `GET /v1/chats/:id`: record and meter are null before the chat's first join or start. */
export const ChatDetailsSchema = z
  .strictObject({ chat: ChatSchema, record: TimeRecordSchema.nullable(), meter: MeterSnapshotSchema.nullable() })
  .meta({ id: 'ChatDetails' });

/** Every record of a user-advisor pair, newest first, and the pair's allowance (null before its first record). */
export const PairTimeRecordsSchema = z
  .strictObject({ allowance: AllowanceSchema.nullable(), records: z.array(TimeRecordSchema) })
  .meta({ id: 'PairTimeRecords' });

/** One webhook event's delivery (`DeliveryView` of server/webhooks/deliveries.ts). */
export const DeliverySchema = z
  .strictObject({
    id: z.uuid().describe("the event's id, as receivers deduplicate by it"),
    type: z.enum(['chat.started', 'chat.paused', 'chat.resumed', 'chat.ended', 'balance.low', 'credits.added']),
    createdAt: Time.describe("the change's time"),
    status: z.enum(['pending', 'delivered', 'failed']),
    attempts: z.int().min(0),
    lastAttemptAt: Time.nullable(),
    lastResponseStatus: z.int().nullable().describe("the receiver's HTTP status; null when it did not answer"),
    nextAttemptAt: Time.nullable().describe('null once delivered or failed'),
  })
  .meta({ id: 'WebhookDelivery' });

/** A page of deliveries, newest first. */
export const DeliveryPageSchema = z
  .strictObject({
    items: z.array(DeliverySchema),
    nextCursor: z.string().nullable().describe('the cursor of the next page; null on the last page'),
  })
  .meta({ id: 'WebhookDeliveryPage' });

/** A client token for the socket's `auth: { token }`. */
export const ClientTokenSchema = z.strictObject({ token: z.string(), expiresAt: Time }).meta({ id: 'ClientToken' });

/** Every error of the API: `{ error: { code, message } }`. */
export function errorSchema<C extends ErrorCode>(codes: readonly [C, ...C[]]) {
  return z.strictObject({ error: z.strictObject({ code: z.enum(codes), message: z.string() }) });
}

/** An error with any code. */
export const ErrorSchema = errorSchema(Object.values(ErrorCode) as [ErrorCode, ...ErrorCode[]]).meta({ id: 'Error' });
