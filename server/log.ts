import { pino, type Logger } from 'pino';

export type { Logger };

/**
 * Structured JSON logs. Every line carries the node id; callers add the ids that
 * matter (chatId, recordId, userId, advisorId) as fields, never inside the message.
 */
export function createLogger(level: string, nodeId: string): Logger {
  return pino({ level, base: { node: nodeId }, timestamp: pino.stdTimeFunctions.isoTime, serializers: { err: serializeError } });
}

/** Fields of a failed query that carry its values (parameters, `Key (id)=(u1)`, `parameter $4 = '...'`). */
const VALUE_FIELDS = ['parameters', 'detail', 'where'];

/**
 * pino's error serializer, without the values TypeORM and pg attach to a failed query (user ids,
 * idempotency keys, amounts): the query text and the error code say what failed; its values stay
 * out of the logs.
 */
export function serializeError(err: unknown): unknown {
  const out = pino.stdSerializers.err(err as Error) as unknown as Record<string, unknown>;
  for (const field of VALUE_FIELDS) delete out[field];
  if (out.driverError && typeof out.driverError === 'object') {
    const driver = { ...(out.driverError as Record<string, unknown>) };
    for (const field of VALUE_FIELDS) delete driver[field];
    out.driverError = driver;
  }
  return out;
}
