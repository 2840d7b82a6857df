/**
 * The schemas of the HTTP API: the bodies and queries the `/v1` routes validate
 * with (server/http/api.ts parses with these), and the OpenAPI document
 * (server/http/openapi.ts) is generated from the same objects.
 */
import { z } from 'zod';
import { MAX_RATE_UNITS, formatAmount, isAmount, parseAmount } from '../money.js';
import { AmountString, Id } from '../validation.js';

/** `PUT /v1/users/:id`. */
export const UserBody = z.object({
  name: z.string().max(200).optional(),
  balance: AmountString.optional(),
});

/** `POST /v1/users/:id/credits`: a top-up. */
export const CreditsBody = z.object({
  amount: AmountString,
  idempotencyKey: z.string().min(1).max(200),
});

/** `PUT /v1/advisors/:id`. */
export const AdvisorBody = z.object({
  name: z.string().max(200).optional(),
  ratePerMinute: AmountString.refine((s) => !isAmount(s) || parseAmount(s) <= MAX_RATE_UNITS, `must be at most ${formatAmount(MAX_RATE_UNITS)} credits a minute`),
  freeSeconds: z.number().int().min(0).max(10_000_000).optional(),
});

/** `POST /v1/chats`. */
export const ChatBody = z.object({ id: Id, userId: Id, advisorId: Id });

/** `POST /v1/tokens`: a client JWT for a user or an advisor. */
export const TokenBody = z.object({
  sub: Id,
  role: z.enum(['user', 'advisor']),
  ttlSeconds: z.number().int().min(1).max(7 * 24 * 3600).optional(),
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
    .optional(),
});

/** `GET /v1/users/:id/ledger?limit&cursor`. */
export const LedgerQuery = Page;

/** `GET /v1/webhook-deliveries?status&limit&cursor`. */
export const DeliveriesQuery = Page.extend({ status: z.enum(['pending', 'failed', 'delivered']).optional() });

/** The id of a webhook event. */
export const EventId = z.uuid('must be an event id');
