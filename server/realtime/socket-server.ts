/**
 * socket.io: handshake auth, the client events of SPEC section 2 (validate → act →
 * ack), rooms, and the pushes of settlement outcomes.
 *
 * Rooms: `chat:{chatId}` every socket that joined the chat; `pair:{userId}/{advisorId}`
 * every tab of a user that joined any chat with that advisor (meters of all the
 * pair's chats go there); `user:{userId}` all of a user's sockets (balance events);
 * `advisor:{advisorId}` all of an advisor's sockets (the dashboard).
 */
import { type RateLimiterAbstract, RateLimiterMemory, RateLimiterRedis, RateLimiterRes } from 'rate-limiter-flexible';
import type { RedisClientType } from 'redis';
import type { Server, Socket } from 'socket.io';
import { z } from 'zod';
import {
  type ChatView,
  type ClientToServerEvents,
  ErrorCode,
  type ServerToClientEvents,
} from '../../client-sdk/src/protocol.js';
import type { Accounts } from '../accounts.js';
import type { Clock } from '../clock.js';
import { BadRequestError, ConflictError, DomainError, ForbiddenError } from '../errors.js';
import type { Logger } from '../log.js';
import type { MeterService } from '../metering/meter-service.js';
import type { PresenceStore } from '../metering/presence.js';
import type { Command } from '../metering/rules.js';
import type { SettleOutcome, SettlementService } from '../metering/settlement.js';
import type { Metrics } from '../metrics.js';
import type { Fanout, Push } from './fanout.js';
import type { Principal, Tokens } from '../tokens.js';
import { ChatRefSchema, describeIssues } from '../validation.js';

/** What a socket carries after the handshake. */
export interface SocketData {
  principal: Principal;
  /** When the handshake's token expires (epoch ms): events after it are refused `unauthorized`. */
  expiresAt: number;
  /** Chats this socket joined (or is joining: the pair room is then JOINING), with their pair room. */
  chats: Map<string, string>;
  /** The timer that closes the transport at the token's expiry. */
  expiry: unknown;
}

export type ChatServer = Server<ClientToServerEvents, ServerToClientEvents, Record<string, never>, SocketData>;
type ChatSocket = Socket<ClientToServerEvents, ServerToClientEvents, Record<string, never>, SocketData>;

/** The collaborators of the socket layer. */
export interface RealtimeDeps {
  tokens: Tokens;
  accounts: Accounts;
  engine: SettlementService;
  meters: MeterService;
  presence: PresenceStore;
  metrics: Metrics;
  log: Logger;
  clock: Clock;
  heartbeatIntervalMs: number;
  /** Events per second allowed per socket and per principal. */
  rateLimit?: { perSocket: number; perPrincipal: number };
  /** Chats one socket may have joined at once, and sockets one principal may hold on this node. */
  caps: { chatsPerSocket: number; socketsPerPrincipal: number };
  /**
   * Where the per-principal limit is counted across nodes (a user's tabs on several
   * nodes share one budget), with its key prefix; falls back to this node's memory
   * while Redis is down.
   */
  sharedLimits?: { redis: RedisClientType; keyPrefix: string };
  /** True while the node shuts down: disconnects then settle nothing (the node settled already). */
  isClosing: () => boolean;
}

/** Refuses a heartbeat from an advisor's socket. */
function heartbeatsOnlyFromUsers(socket: ChatSocket): void {
  if (socket.data.principal.role !== 'user') throw new ForbiddenError('only the chat\'s user sends heartbeats');
}

/** An event without a payload: `{}`, or nothing (null, as a missing argument arrives). */
const NoPayload = z.object({}).strict().nullish();

// ids may contain ':' but never '/': `pair:a:b/c` can't be two pairs
const pairRoom = (userId: string, advisorId: string) => `pair:${userId}/${advisorId}`;

/** Room names a chat's pushes go to. */
function meterRooms(userId: string, advisorId: string): string[] {
  return [pairRoom(userId, advisorId), `advisor:${advisorId}`];
}

/** Sends settlement outcomes to the sockets that must see them: one batch for the fan-out. */
export function createPublisher(fanout: Fanout, log: Logger): (outcomes: SettleOutcome[]) => void {
  return (outcomes) => {
    const pushes: Push[] = [];
    for (const o of outcomes) {
      if (!o.ok) continue;
      const m = o.meter;
      const rooms = meterRooms(m.userId, m.advisorId);
      if (o.lowBalance) {
        pushes.push({ rooms: [`user:${m.userId}`], event: 'balance:low', data: { userId: m.userId, balance: m.balance, secondsAffordable: m.secondsAffordable } });
      }
      if (o.push) pushes.push({ rooms, event: 'meter', data: m });
      if (o.ended) {
        pushes.push({ rooms, event: 'chat:ended', data: { chatId: m.chatId, reason: o.ended, meter: m } });
        log.info({ chatId: m.chatId, recordId: m.recordId, userId: m.userId, advisorId: m.advisorId, reason: o.ended }, 'chat ended');
      }
    }
    fanout.send(pushes);
  };
}

/** The pair room of a chat whose join is under way (in `socket.data.chats`). */
const JOINING = '';

/** Installs the handshake check and every client event handler on `io`. */
export function attachRealtime(io: ChatServer, d: RealtimeDeps): void {
  const limits = d.rateLimit ?? { perSocket: 20, perPrincipal: 60 };
  const perSocket = new RateLimiterMemory({ points: limits.perSocket, duration: 1 });
  const localPerPrincipal = new RateLimiterMemory({ points: limits.perPrincipal, duration: 1 });
  // rate-limiter-flexible's Redis store: one atomic script per event, and its insurance limiter
  // counts in memory while Redis is away instead of failing every event
  const perPrincipal: RateLimiterAbstract = d.sharedLimits
    ? new RateLimiterRedis({
        storeClient: d.sharedLimits.redis,
        useRedisPackage: true,
        rejectIfRedisNotReady: true,
        keyPrefix: `${d.sharedLimits.keyPrefix}:rl`,
        points: limits.perPrincipal,
        duration: 1,
        insuranceLimiter: localPerPrincipal,
      })
    : localPerPrincipal;

  /** Sockets of each principal on this node (`user:u1`, `advisor:a1`). */
  const socketsOf = new Map<string, number>();
  const principalKey = (p: { role: string; sub: string }) => `${p.role}:${p.sub}`;

  io.use((socket, next) => {
    const auth = socket.handshake.auth as { token?: unknown } | undefined;
    d.tokens
      .verify(auth?.token)
      .then((principal) => {
        if (!principal) {
          d.metrics.rejectedEvents.inc({ code: ErrorCode.Unauthorized });
          return next(new Error(ErrorCode.Unauthorized));
        }
        // one token can't open sockets without end: past the cap, refused as a rate limit (clients back off and retry)
        if ((socketsOf.get(principalKey(principal)) ?? 0) >= d.caps.socketsPerPrincipal) {
          d.metrics.rejectedEvents.inc({ code: ErrorCode.RateLimited });
          d.log.warn({ [principal.role === 'user' ? 'userId' : 'advisorId']: principal.sub, cap: d.caps.socketsPerPrincipal }, 'handshake refused: too many sockets');
          return next(new Error(ErrorCode.RateLimited));
        }
        socket.data.principal = { sub: principal.sub, role: principal.role };
        socket.data.expiresAt = principal.expiresAt;
        socket.data.chats = new Map();
        socket.data.expiry = null;
        next();
      })
      .catch((err: unknown) => {
        d.log.error({ err }, 'handshake check failed');
        next(new Error(ErrorCode.Unauthorized));
      });
  });

  /** The ids a socket's log lines carry. */
  const ids = (socket: ChatSocket) => {
    const { principal } = socket.data;
    return { socketId: socket.id, [principal.role === 'user' ? 'userId' : 'advisorId']: principal.sub };
  };

  /**
   * Builds a listener shared by every socket (`this` is the socket: no closures per
   * socket, which is most of a socket's memory at 10,000 of them): rate limit →
   * validate → act → ack, every failure answered with a code.
   */
  const handler = <S extends z.ZodType, R extends object>(event: keyof ClientToServerEvents, schema: S, act: (socket: ChatSocket, p: z.infer<S>) => Promise<R>) =>
    async function (this: ChatSocket, ...args: unknown[]): Promise<void> {
      const socket = this;
      const { principal } = socket.data;
      const ack = typeof args[args.length - 1] === 'function' ? (args.pop() as (a: unknown) => void) : undefined;
      try {
        // leaving is always allowed: it only stops a meter
        if (event !== 'chat:leave' && d.clock.now() >= socket.data.expiresAt) {
          throw new DomainError(ErrorCode.Unauthorized, 'the token has expired: reconnect with a fresh one');
        }
        await consume(perSocket, socket.id);
        await consume(perPrincipal, `${principal.role}:${principal.sub}`);
        const parsed = schema.safeParse(args[0]);
        if (!parsed.success) throw new BadRequestError(`${event}: ${describeIssues(parsed.error)}`);
        const result = await act(socket, parsed.data);
        ack?.({ ok: true, ...result });
      } catch (err) {
        const code = err instanceof DomainError ? err.code : ErrorCode.Internal;
        d.metrics.rejectedEvents.inc({ code });
        if (code === ErrorCode.Internal) d.log.error({ ...ids(socket), err, event }, 'event failed');
        else d.log.debug({ ...ids(socket), event, code, msg: (err as Error).message }, 'event refused');
        ack?.({ ok: false, error: { code, message: code === ErrorCode.Internal ? 'internal error' : (err as Error).message } });
      }
    };

  /** Refuses a chat that isn't the caller's. */
  const member = (socket: ChatSocket, chat: ChatView): void => {
    const { principal } = socket.data;
    const mine = principal.role === 'user' ? chat.userId === principal.sub : chat.advisorId === principal.sub;
    if (!mine) throw new ForbiddenError(`chat ${chat.id} is not yours`);
  };

  /**
   * Refuses an event about a chat this socket hasn't joined in SPEC 2's order: an
   * unknown chat is not_found, another's (or one `allowed` refuses) forbidden, and
   * only then the chat not joined a conflict. Reads the chat: only on this error path.
   */
  const refuseUnjoined = async (socket: ChatSocket, chatId: string, conflict: string, allowed?: (socket: ChatSocket) => void): Promise<never> => {
    const { chat } = await d.accounts.getChatTracking(chatId);
    member(socket, chat);
    allowed?.(socket);
    throw new ConflictError(conflict);
  };

  /** A command of the chat's advisor (`end`: of either member), refused in SPEC 2's order: not_found, forbidden, conflict. */
  const command = (socket: ChatSocket, chatId: string, cmd: Command, advisorOnly = true) =>
    d.meters.command(chatId, cmd, (chat) => {
      member(socket, chat);
      if (advisorOnly && socket.data.principal.role !== 'advisor') throw new ForbiddenError('only the chat\'s advisor may do this');
    });

  /** Leaves a chat's rooms; when the user's last present socket leaves, the meter stops now. */
  async function leaveChat(socket: ChatSocket, chatId: string): Promise<void> {
    const pair = socket.data.chats.get(chatId);
    socket.data.chats.delete(chatId);
    void socket.leave(`chat:${chatId}`);
    if (pair && pair !== JOINING && ![...socket.data.chats.values()].includes(pair)) void socket.leave(pair);
    if (socket.data.principal.role === 'user') {
      const last = await d.presence.leave(chatId, socket.id, d.clock.now());
      if (last) await d.meters.presenceChanged(chatId);
    }
  }

  const listeners: Array<[keyof ClientToServerEvents, (this: ChatSocket, ...args: unknown[]) => Promise<void>]> = [
    [
      'chat:join',
      handler('chat:join', ChatRefSchema, async (socket, { chatId }) => {
        const { principal } = socket.data;
        if (!socket.data.chats.has(chatId) && socket.data.chats.size >= d.caps.chatsPerSocket) {
          throw new ConflictError(`a socket may have joined ${d.caps.chatsPerSocket} chats at once; leave one first`);
        }
        // the chat counts as joined from now on, so a leave sent right behind this join (a client
        // leaving while its rejoin is on the way) cancels it instead of being refused and outlived
        if (!socket.data.chats.has(chatId)) socket.data.chats.set(chatId, JOINING);
        let chat;
        try {
          chat = await d.meters.open(chatId, (c) => member(socket, c));
        } catch (err) {
          if (socket.data.chats.get(chatId) === JOINING) socket.data.chats.delete(chatId);
          throw err;
        }
        if (!socket.connected) throw new ConflictError('the socket disconnected while joining');
        if (!socket.data.chats.has(chatId)) throw new ConflictError(`left chat ${chatId} while joining it`);
        const rooms = [`chat:${chatId}`];
        if (principal.role === 'user') rooms.push(pairRoom(chat.userId, chat.advisorId));
        await socket.join(rooms);
        if (!socket.data.chats.has(chatId)) {
          for (const room of rooms) void socket.leave(room);
          throw new ConflictError(`left chat ${chatId} while joining it`);
        }
        socket.data.chats.set(chatId, pairRoom(chat.userId, chat.advisorId));
        let meter = null;
        if (principal.role === 'user' && chat.status !== 'ended') {
          await d.meters.settleLapsedPresence(chatId);
          const started = await d.presence.join(chatId, socket.id, d.clock.now());
          // a leave or disconnect that ran while this join awaited found no presence to end: end it now
          if (!socket.connected || !socket.data.chats.has(chatId)) {
            if (await d.presence.leave(chatId, socket.id, d.clock.now())) await d.meters.presenceChanged(chatId);
            throw new ConflictError(`left chat ${chatId} while joining it`);
          }
          // settle whatever the status read above: a start racing this join is seen by one of the two
          if (started) meter = await d.meters.presenceChanged(chatId);
        }
        meter ??= await d.meters.meter(chatId);
        d.log.info({ ...ids(socket), chatId, recordId: meter?.recordId, event: 'chat:join' }, 'joined chat');
        return { chat: await d.meters.current(chat, meter), meter, heartbeatIntervalMs: d.heartbeatIntervalMs };
      }),
    ],
    [
      'heartbeat',
      handler('heartbeat', ChatRefSchema, async (socket, { chatId }) => {
        if (!socket.data.chats.has(chatId)) await refuseUnjoined(socket, chatId, `join chat ${chatId} before sending heartbeats`, heartbeatsOnlyFromUsers);
        heartbeatsOnlyFromUsers(socket);
        await d.meters.settleLapsedPresence(chatId);
        const now = d.clock.now();
        const restarted = await d.presence.heartbeat(chatId, socket.id, now);
        if (restarted) await d.meters.presenceChanged(chatId);
        return { serverTime: new Date(now).toISOString() };
      }),
    ],
    [
      'chat:leave',
      handler('chat:leave', ChatRefSchema, async (socket, { chatId }) => {
        if (!socket.data.chats.has(chatId)) await refuseUnjoined(socket, chatId, `chat ${chatId} was not joined`);
        await leaveChat(socket, chatId);
        return {};
      }),
    ],
    ['chat:start', handler('chat:start', ChatRefSchema, (socket, { chatId }) => command(socket, chatId, { kind: 'start' }))],
    ['chat:pause', handler('chat:pause', ChatRefSchema, (socket, { chatId }) => command(socket, chatId, { kind: 'pause' }))],
    ['chat:resume', handler('chat:resume', ChatRefSchema, (socket, { chatId }) => command(socket, chatId, { kind: 'resume' }))],
    [
      'chat:end',
      handler('chat:end', ChatRefSchema, (socket, { chatId }) =>
        command(socket, chatId, { kind: 'end', reason: socket.data.principal.role === 'user' ? 'ended_by_user' : 'ended_by_advisor' }, false),
      ),
    ],
    [
      'advisor:chats',
      handler('advisor:chats', NoPayload, async (socket) => {
        const { principal } = socket.data;
        if (principal.role !== 'advisor') throw new ForbiddenError('only an advisor lists their chats');
        return { chats: await d.meters.advisorChats(principal.sub) };
      }),
    ],
  ];
  const handled = new Set<string>(listeners.map(([event]) => event));

  function unknownEvent(this: ChatSocket, event: string, ...args: unknown[]): void {
    // events with a handler answer for themselves
    if (handled.has(event)) return;
    const ack = args[args.length - 1];
    // an unknown event counts against the socket's budget like any other
    consume(perSocket, this.id).then(
      () => {
        d.metrics.rejectedEvents.inc({ code: ErrorCode.BadRequest });
        if (typeof ack === 'function') ack({ ok: false, error: { code: ErrorCode.BadRequest, message: `unknown event ${String(event).slice(0, 64)}` } });
      },
      (err: unknown) => {
        const code = err instanceof DomainError ? err.code : ErrorCode.Internal;
        d.metrics.rejectedEvents.inc({ code });
        if (typeof ack === 'function') ack({ ok: false, error: { code, message: err instanceof DomainError ? err.message : 'internal error' } });
      },
    );
  }

  function disconnected(this: ChatSocket): void {
    const socket = this;
    if (socket.data.expiry !== null) d.clock.clearTimeout(socket.data.expiry);
    d.metrics.sockets.dec();
    const key = principalKey(socket.data.principal);
    const left = (socketsOf.get(key) ?? 1) - 1;
    if (left > 0) socketsOf.set(key, left);
    else socketsOf.delete(key);
    if (d.isClosing()) return;
    for (const chatId of [...socket.data.chats.keys()]) {
      leaveChat(socket, chatId).catch((err: unknown) => {
        d.metrics.backgroundErrors.inc({ where: 'disconnect' });
        d.log.error({ ...ids(socket), err, chatId }, 'leaving a chat on disconnect failed');
      });
    }
  }

  io.on('connection', (socket: ChatSocket) => {
    const { principal } = socket.data;
    d.metrics.sockets.inc();
    socketsOf.set(principalKey(principal), (socketsOf.get(principalKey(principal)) ?? 0) + 1);
    void socket.join(principal.role === 'user' ? `user:${principal.sub}` : `advisor:${principal.sub}`);
    // at the token's expiry the transport closes: the meter stops at once (disconnect) and the
    // client reconnects through the handshake with a fresh token; beyond setTimeout's range the
    // per-event check alone applies
    const untilExpiry = socket.data.expiresAt - d.clock.now();
    socket.data.expiry = untilExpiry < 2 ** 31 - 1 ? d.clock.setTimeout(() => socket.conn.close(), Math.max(0, untilExpiry)) : null;
    for (const [event, listener] of listeners) socket.on(event, listener as never);
    socket.onAny(unknownEvent);
    socket.on('disconnect', disconnected);
  });
}

async function consume(limiter: RateLimiterAbstract, key: string): Promise<void> {
  try {
    await limiter.consume(key);
  } catch (err) {
    if (err instanceof RateLimiterRes) throw new DomainError(ErrorCode.RateLimited, 'too many events; slow down');
    throw err;
  }
}
