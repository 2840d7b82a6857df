/** Schemas for everything that enters the server, shared by sockets and HTTP. */
import { z } from 'zod';
import { AMOUNT_PATTERN } from './money.js';

/** The integrator's ids: 1-64 chars of `A-Za-z0-9_.:-`. */
export const ID_PATTERN = /^[A-Za-z0-9_.:-]{1,64}$/;

export const Id = z.string().regex(ID_PATTERN, 'must be 1-64 characters of A-Za-z0-9_.:-');

/**
 * A non-negative decimal string with at most 4 fraction digits (`isAmount`). A regex
 * rather than a refinement, so the OpenAPI document shows it as the schema's pattern.
 */
export const AmountString = z
  .string()
  .max(20)
  .regex(AMOUNT_PATTERN, 'must be a decimal string with at most 4 fraction digits, e.g. "12.5"');

/**
 * Text from outside (names, idempotency keys), at most `max` long: no control characters (Postgres
 * refuses NUL outright) and no lone UTF-16 surrogates (Postgres would store one as U+FFFD, so two
 * different keys could become one). `\p{Cs}` in a `u` regex matches only unpaired surrogates.
 */
export const PrintableText = (max: number) =>
  z
    .string()
    .max(max)
    .regex(/^[^\p{Cc}\p{Cs}]*$/u, 'must be printable text (no control characters or lone surrogates)');

/** `{ chatId }`, the payload of every chat-scoped client event. */
export const ChatRefSchema = z.object({ chatId: Id });

/** Turns a zod error into one readable line. */
export function describeIssues(err: z.ZodError): string {
  return err.issues.map((i) => (i.path.length ? `${i.path.join('.')}: ${i.message}` : i.message)).join('; ');
}
