import { ErrorCode } from '../client-sdk/src/protocol.js';

/** An error a caller can act on: it carries a protocol error code. */
export class DomainError extends Error {
  override name = 'DomainError';
  constructor(
    readonly code: ErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** The payload was malformed. */
export class BadRequestError extends DomainError {
  override name = 'BadRequestError';
  constructor(message: string, options?: { cause?: unknown }) {
    super(ErrorCode.BadRequest, message, options);
  }
}

/** The thing asked for does not exist. */
export class NotFoundError extends DomainError {
  override name = 'NotFoundError';
  constructor(message: string) {
    super(ErrorCode.NotFound, message);
  }
}

/** The caller may not touch this (someone else's chat, or ids that don't match it). */
export class ForbiddenError extends DomainError {
  override name = 'ForbiddenError';
  constructor(message: string) {
    super(ErrorCode.Forbidden, message);
  }
}

/** The request contradicts the current state (a reused key, an ended chat). */
export class ConflictError extends DomainError {
  override name = 'ConflictError';
  constructor(message: string) {
    super(ErrorCode.Conflict, message);
  }
}

/** A settlement on the clock whose lease this node no longer holds: another node settles the chat now. */
export class LeaseLostError extends ConflictError {
  override name = 'LeaseLostError';
  constructor(
    readonly shard: number,
    message: string,
  ) {
    super(message);
  }
}

/** A chat whose rows another transaction holds: a scheduled tick skips it and settles it at the next. */
export class BusyError extends ConflictError {
  override name = 'BusyError';
}
