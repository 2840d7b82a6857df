import type { ErrorCode } from './protocol.js';

/** Why a call failed: a code of the server's acks, or one of the client's own. */
export type ChatmeterErrorCode = ErrorCode | 'timeout' | 'disconnected';

/**
 * Every failed call rejects with this error.
 *
 * @example
 * try { await session.start(); } catch (err) {
 *   if (err instanceof ChatmeterError && err.code === 'conflict') showAlreadyStarted();
 * }
 */
export class ChatmeterError extends Error {
  override name = 'ChatmeterError';
  constructor(
    readonly code: ChatmeterErrorCode,
    message: string,
  ) {
    super(message);
  }
}
