import { pino, type Logger } from 'pino';

export type { Logger };

/**
 * Structured JSON logs. Every line carries the node id; callers add the ids that
 * matter (chatId, recordId, userId, advisorId) as fields, never inside the message.
 */
export function createLogger(level: string, nodeId: string): Logger {
  return pino({ level, base: { node: nodeId }, timestamp: pino.stdTimeFunctions.isoTime });
}
