/**
 * The chatmeter wire protocol, written once: imported by the server and the SDK.
 * Types never replace runtime validation: the server parses every payload with a schema.
 */

/** Error codes of acks (`{ ok: false, error: { code } }`) and of the HTTP API. */
export const ErrorCode = {
  BadRequest: 'bad_request',
  Unauthorized: 'unauthorized',
  Forbidden: 'forbidden',
  NotFound: 'not_found',
  Conflict: 'conflict',
  RateLimited: 'rate_limited',
  PayloadTooLarge: 'payload_too_large',
  Unprocessable: 'unprocessable',
  Internal: 'internal',
} as const;
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

/** A chat's lifecycle. */
export const ChatStatus = { Pending: 'pending', Active: 'active', Ended: 'ended' } as const;
export type ChatStatus = (typeof ChatStatus)[keyof typeof ChatStatus];

/** Why a chat ended. */
export const EndReason = {
  EndedByUser: 'ended_by_user',
  EndedByAdvisor: 'ended_by_advisor',
  EndedByPlatform: 'ended_by_platform',
  OutOfCredits: 'out_of_credits',
  Abandoned: 'abandoned',
} as const;
export type EndReason = (typeof EndReason)[keyof typeof EndReason];

/** What a meter shows: `running` while metered, `away` while active but the user is not present. */
export const MeterState = {
  Pending: 'pending',
  Running: 'running',
  Paused: 'paused',
  Away: 'away',
  Ended: 'ended',
} as const;
export type MeterState = (typeof MeterState)[keyof typeof MeterState];

/** Kinds of ledger entries. */
export const LedgerEntryType = { Topup: 'topup', Charge: 'charge', Refund: 'refund' } as const;
export type LedgerEntryType = (typeof LedgerEntryType)[keyof typeof LedgerEntryType];

/** Who a client token speaks for. */
export const Role = { User: 'user', Advisor: 'advisor' } as const;
export type Role = (typeof Role)[keyof typeof Role];

/** A decimal string with up to 4 fraction digits, e.g. `"12.5000"`. */
export type Amount = string;

/** The live numbers of one chat, pushed as `meter`. */
export interface MeterSnapshot {
  chatId: string;
  recordId: string;
  userId: string;
  advisorId: string;
  state: MeterState;
  /** Metered (billed) seconds of this chat, free and paid; not wall time. */
  durationSeconds: number;
  freeSecondsUsed: number;
  /** The pair's free seconds left, shared by all its chats. */
  freeSecondsRemaining: number;
  freeSecondsAllocation: number;
  creditsUsed: Amount;
  /** The user's balance. */
  balance: Amount;
  ratePerMinute: Amount;
  /** Remaining free seconds + the seconds the balance pays for; null when the rate is 0 (unlimited). */
  secondsAffordable: number | null;
  /** Increases by one per snapshot of this chat. */
  seq: number;
  /** ISO 8601. */
  serverTime: string;
}

/** A chat as the API shows it. */
export interface ChatView {
  id: string;
  userId: string;
  advisorId: string;
  status: ChatStatus;
  endReason: EndReason | null;
  createdAt: string;
  startedAt: string | null;
  endedAt: string | null;
}

/** The one time record of a chat as the API shows it. */
export interface TimeRecordView {
  id: string;
  chatId: string;
  userId: string;
  advisorId: string;
  isActive: boolean;
  durationSeconds: number;
  freeSecondsUsed: number;
  creditsUsed: Amount;
  freeSecondsAllocation: number;
  startedAt: string;
  lastHeartbeatAt: string | null;
  endedAt: string | null;
  endReason: EndReason | null;
}

/** The error half of every ack. */
export interface AckError {
  ok: false;
  error: { code: ErrorCode; message: string };
}
export type Ack<T extends object = object> = ({ ok: true } & T) | AckError;

/** Payload of every chat-scoped client event. */
export interface ChatRef {
  chatId: string;
}

/** Events a client sends; each takes an ack callback. */
export interface ClientToServerEvents {
  /** Join the chat's rooms and initialize its time tracking; for the user, also a heartbeat. */
  'chat:join': (p: ChatRef, ack?: (a: Ack<{ chat: ChatView; meter: MeterSnapshot; heartbeatIntervalMs: number }>) => void) => void;
  /** Leave the chat; the meter stops when the user's last socket in it leaves. */
  'chat:leave': (p: ChatRef, ack?: (a: Ack) => void) => void;
  /** The user is still here (rule 5). */
  heartbeat: (p: ChatRef, ack?: (a: Ack<{ serverTime: string }>) => void) => void;
  /** Advisor: pending → active; metering starts. */
  'chat:start': (p: ChatRef, ack?: (a: Ack<{ chat: ChatView; meter: MeterSnapshot }>) => void) => void;
  /** Advisor: stop the meter without ending the chat. */
  'chat:pause': (p: ChatRef, ack?: (a: Ack<{ chat: ChatView; meter: MeterSnapshot }>) => void) => void;
  /** Advisor: restart a paused meter. */
  'chat:resume': (p: ChatRef, ack?: (a: Ack<{ chat: ChatView; meter: MeterSnapshot }>) => void) => void;
  /** User or advisor: end the chat. */
  'chat:end': (p: ChatRef, ack?: (a: Ack<{ chat: ChatView; meter: MeterSnapshot }>) => void) => void;
  /** Advisor: every pending and active chat of this advisor, oldest first; `meter` is null before a chat's time record exists. */
  'advisor:chats': (p: Record<string, never>, ack?: (a: Ack<{ chats: ChatWithMeter[] }>) => void) => void;
}

/** A chat with its meter (null while the chat has no time record). */
export interface ChatWithMeter {
  chat: ChatView;
  meter: MeterSnapshot | null;
}

/** Events the server pushes. */
export interface ServerToClientEvents {
  /** A meter snapshot of a chat of this user-advisor pair. */
  meter: (m: MeterSnapshot) => void;
  /** The chat ended. */
  'chat:ended': (p: { chatId: string; reason: EndReason; meter: MeterSnapshot }) => void;
  /** The affordable time dropped below the low-balance threshold. */
  'balance:low': (p: { userId: string; balance: Amount; secondsAffordable: number | null }) => void;
  /** The balance changed for a reason other than a meter tick (top-up, refund). */
  balance: (p: { userId: string; balance: Amount }) => void;
  /** To the advisor's sockets: a chat with this advisor was created (once, not on a repeated no-op create). */
  'chat:created': (p: { chat: ChatView }) => void;
}
