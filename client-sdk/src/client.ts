import { io, type Socket } from 'socket.io-client';
import { Dashboard } from './dashboard.js';
import { Emitter } from './emitter.js';
import { ChatmeterError } from './errors.js';
import type {
  Amount,
  ChatView,
  ChatWithMeter,
  ClientToServerEvents,
  EndReason,
  MeterSnapshot,
  ServerToClientEvents,
} from './protocol.js';
import { ChatSession } from './session.js';
import { Backoff, ServerClock } from './timing.js';

/** `connecting` → `connected` → `reconnecting` → `connected` …; `closed` after `close()`; `failed` when the token is refused for good. */
export type ClientState = 'connecting' | 'connected' | 'reconnecting' | 'closed' | 'failed';

/** A token, or nothing; `getToken` may answer either at once or as a promise. */
export type TokenSource = () => string | null | undefined | Promise<string | null | undefined>;

export interface ConnectOptions {
  /** The chatmeter node (or the load balancer in front of several), e.g. `https://meter.example.com`. */
  url: string;
  /** A fixed client token (JWT). */
  token?: string;
  /** Called before every connect and reconnect; its token wins over `token`. */
  getToken?: TokenSource;
  /** Bounds every call, including the wait for a connection. Default 10000. */
  timeoutMs?: number;
  /** Our clock in ms since the epoch; for tests (default `Date.now`). */
  now?: () => number;
  /** Backoff between reconnects: the first window and the cap, in ms (default 500 and 20000); `random` for tests. */
  backoff?: { baseMs?: number; capMs?: number; random?: () => number };
}

/** The user's balance, pushed after a top-up or a refund. */
export interface BalanceEvent {
  userId: string;
  balance: Amount;
}

/** The affordable time dropped below the server's low-balance threshold. */
export interface BalanceLowEvent extends BalanceEvent {
  secondsAffordable: number | null;
}

type ClientEvents = {
  state: (state: ClientState) => void;
  balance: (event: BalanceEvent) => void;
  balanceLow: (event: BalanceLowEvent) => void;
};

type WireSocket = Socket<ServerToClientEvents, ClientToServerEvents>;
type Acked<E extends keyof ClientToServerEvents> =
  Parameters<ClientToServerEvents[E]>[1] extends ((a: infer A) => void) | undefined ? Extract<A, { ok: true }> : never;

type HeartbeatAck = Parameters<NonNullable<Parameters<ClientToServerEvents['heartbeat']>[1]>>[0];

/** With no message for this long, a connection found on waking up is taken for dead (engine.io pings every 25 s). */
const LIVENESS_MS = 45_000;

/** Returns a client at once and connects it. */
export function connect(options: ConnectOptions): Client {
  return new Client(options);
}

/**
 * One connection to chatmeter, kept up by itself: it reconnects with jittered backoff,
 * asks `getToken()` before every attempt, and rejoins every chat session after a reconnect.
 */
export class Client extends Emitter<ClientEvents> {
  readonly timeoutMs: number;
  #state: ClientState = 'connecting';
  readonly #socket: WireSocket;
  readonly #options: ConnectOptions;
  readonly #now: () => number;
  readonly #backoff: Backoff;
  readonly #clock: ServerClock;
  readonly #sessions = new Map<string, ChatSession>();
  readonly #joins = new Map<string, Promise<ChatSession>>();
  /** chatId → pushes received while the join of that chat awaits its answer (one join per chat at a time). */
  readonly #overtaking = new Map<string, Array<{ meter: MeterSnapshot; reason?: EndReason }>>();
  #dashboard: Dashboard | null = null;
  #token: string | undefined;
  #retryTimer: ReturnType<typeof setTimeout> | undefined;
  #attempt = 0;
  #lastMessageAt: number;
  readonly #waiters = new Set<{ resolve(): void; reject(err: ChatmeterError): void }>();
  readonly #unhook: () => void;

  constructor(options: ConnectOptions) {
    super();
    this.#options = options;
    this.#now = options.now ?? Date.now;
    this.timeoutMs = options.timeoutMs ?? 10_000;
    this.#backoff = new Backoff(options.backoff?.baseMs, options.backoff?.capMs, options.backoff?.random);
    this.#clock = new ServerClock(this.#now);
    this.#token = options.token;
    this.#lastMessageAt = this.#now();
    // reconnects are ours (full jitter, getToken first, a refusal is terminal); websocket only,
    // so several nodes need no sticky sessions; a new Manager per client, never a shared one
    this.#socket = io(options.url, {
      autoConnect: false,
      reconnection: false,
      forceNew: true,
      transports: ['websocket'],
      timeout: this.timeoutMs,
      auth: (cb) => cb({ token: this.#token }),
    });
    this.#listen();
    this.#unhook = hookPage(() => this.#wake());
    void this.#open();
  }

  get state(): ClientState {
    return this.#state;
  }

  /** The id and role of the current token's principal, read from its claims (unverified: the server verifies). */
  get principal(): Principal {
    return readClaims(this.#token);
  }

  /**
   * Joins a chat: a session with the chat, its latest meter, and its pushes. A user's session
   * heartbeats by itself until `leave()`. Joining a chat already joined returns its session.
   */
  joinChat(chatId: string): Promise<ChatSession> {
    // two joins of one chat at once share one answer and one session
    let join = this.#joins.get(chatId);
    if (!join) {
      join = this.#join(chatId).finally(() => this.#joins.delete(chatId));
      this.#joins.set(chatId, join);
    }
    return join;
  }

  async #join(chatId: string): Promise<ChatSession> {
    const existing = this.#sessions.get(chatId);
    // pushes that overtake the join's answer (a meter sent right after it, in the same read) are kept for the session
    const early: Array<{ meter: MeterSnapshot; reason?: EndReason }> = [];
    this.#overtaking.set(chatId, early);
    try {
      const ack = await this.call('chat:join', { chatId });
      const session = existing ?? new ChatSession(this, chatId, ack.chat, ack.meter, this.#clock);
      this.#sessions.set(chatId, session);
      session.joined(ack.chat, ack.meter, ack.heartbeatIntervalMs, !existing);
      for (const { meter, reason } of early) session.overtaken(meter, reason);
      return session;
    } finally {
      this.#overtaking.delete(chatId);
    }
  }

  /** Advisor only: a live map of the advisor's pending and active chats, kept current by pushes. */
  async watchDashboard(): Promise<Dashboard> {
    // listening before the first read: a chat created or ended meanwhile is not lost
    const dashboard = (this.#dashboard ??= new Dashboard(async () => (await this.call('advisor:chats', {})).chats));
    try {
      await dashboard.refresh();
    } catch (err) {
      if (!dashboard.loaded) {
        dashboard.stop();
        if (this.#dashboard === dashboard) this.#dashboard = null;
      }
      throw err;
    }
    return dashboard;
  }

  /** Leaves every chat and disconnects; no timer is left running. Final. */
  close(): void {
    if (this.#state === 'closed') return;
    const connected = this.#socket.connected;
    for (const session of this.#sessions.values()) {
      if (connected) this.#socket.emit('chat:leave', { chatId: session.chatId });
      session.stop();
    }
    this.#sessions.clear();
    this.#dashboard?.stop();
    this.#setState('closed');
    this.#socket.disconnect();
  }

  /**
   * Sends a client event once connected, within `timeoutMs` in all; resolves with the ack,
   * rejects with a `ChatmeterError`. Used by sessions and dashboards; integrators call those.
   */
  async call<E extends keyof ClientToServerEvents>(event: E, payload: Parameters<ClientToServerEvents[E]>[0]): Promise<Acked<E>> {
    const deadline = this.#now() + this.timeoutMs;
    await this.#connected(deadline);
    const socket = this.#socket.timeout(Math.max(1, deadline - this.#now()));
    let ack: { ok: boolean; error?: { code: ChatmeterError['code']; message: string }; meter?: { serverTime?: string } };
    // the round trip starts at the send, not at the wait for a connection: the clock's sample depends on it
    const sentAt = this.#now();
    try {
      ack = await (socket.emitWithAck as (e: string, p: unknown) => Promise<typeof ack>)(event, payload);
      if (ack.ok && ack.meter?.serverTime) this.#clock.sample(sentAt, this.#now(), ack.meter.serverTime);
    } catch (err) {
      throw (err as Error).message.includes('timed out')
        ? new ChatmeterError('timeout', `${event}: no answer within ${this.timeoutMs} ms`)
        : new ChatmeterError('disconnected', `${event}: the connection dropped before the answer`);
    }
    if (!ack.ok) throw new ChatmeterError(ack.error!.code, ack.error!.message);
    return ack as Acked<E>;
  }

  /** A heartbeat, volatile (dropped rather than buffered when the transport can't take it now). */
  heartbeat(chatId: string, timeoutMs: number, done: (ack: Acked<'heartbeat'> | ChatmeterError) => void): void {
    if (!this.#socket.connected) return done(new ChatmeterError('disconnected', 'heartbeat: not connected'));
    const sentAt = this.#now();
    const socket = this.#socket.volatile.timeout(timeoutMs) as unknown as {
      emit(e: 'heartbeat', p: { chatId: string }, cb: (err: Error | null, ack: HeartbeatAck) => void): void;
    };
    socket.emit('heartbeat', { chatId }, (err, ack) => {
      if (err) return done(new ChatmeterError(this.#socket.connected ? 'timeout' : 'disconnected', `heartbeat: ${err.message}`));
      if (!ack.ok) return done(new ChatmeterError(ack.error.code, ack.error.message));
      this.#clock.sample(sentAt, this.#now(), ack.serverTime);
      done(ack);
    });
  }

  /** Our clock, for sessions (injected in tests). */
  now(): number {
    return this.#now();
  }

  /** A session forgets itself after `leave()` or the end of its chat. */
  forget(session: ChatSession): void {
    if (this.#sessions.get(session.chatId) === session) this.#sessions.delete(session.chatId);
  }

  #listen(): void {
    const socket = this.#socket;
    socket.on('connect', () => this.#onConnect());
    socket.on('connect_error', (err) => void this.#onConnectError(err));
    socket.on('disconnect', (reason) => this.#onDisconnect(reason));
    // every packet, pings included, proves the connection alive (judged by wall time on waking)
    socket.io.on('packet', () => (this.#lastMessageAt = this.#now()));
    socket.io.on('ping', () => (this.#lastMessageAt = this.#now()));
    socket.on('meter', (m) => {
      this.#overtaking.get(m.chatId)?.push({ meter: m });
      this.#sessions.get(m.chatId)?.push(m);
      this.#dashboard?.meter(m);
    });
    socket.on('chat:ended', (e) => {
      this.#overtaking.get(e.chatId)?.push({ meter: e.meter, reason: e.reason });
      this.#sessions.get(e.chatId)?.ended(e.reason, e.meter);
      this.#dashboard?.ended(e.chatId);
    });
    socket.on('chat:created', ({ chat }) => this.#dashboard?.created(chat));
    socket.on('balance', (b) => this.emit('balance', { userId: b.userId, balance: b.balance }));
    socket.on('balance:low', (b) => this.emit('balanceLow', { userId: b.userId, balance: b.balance, secondsAffordable: b.secondsAffordable }));
  }

  /**
   * One connection attempt: a token from `getToken` (or `fresh`, one it just gave), then the socket.
   * A getToken that throws, gives nothing or doesn't answer within timeoutMs here is taken for a
   * passing failure (the token endpoint is down with the network): the last token is tried, and
   * only the server's refusal of it ends the client.
   */
  async #open(fresh?: string): Promise<void> {
    const attempt = ++this.#attempt;
    const token = fresh ?? (this.#options.getToken ? await this.#askToken() : undefined);
    if (attempt !== this.#attempt || this.#final()) return;
    if (token) this.#token = token;
    this.#socket.connect();
  }

  #onConnect(): void {
    this.#backoff.reset();
    this.#lastMessageAt = this.#now();
    this.#setState('connected');
    for (const waiter of this.#waiters) waiter.resolve();
    this.#waiters.clear();
    // rejoin every session: each emits meters again only from the fresh snapshot of its join
    for (const session of this.#sessions.values()) void session.rejoin();
    this.#dashboard?.reload();
  }

  async #onConnectError(err: Error): Promise<void> {
    if (this.#final()) return;
    if (err.message !== 'unauthorized') return this.#retryLater();
    // a refusal is terminal unless getToken gives another token, which the next attempt uses
    const refused = this.#token;
    const fresh = this.#options.getToken ? await this.#askToken() : undefined;
    if (this.#final()) return;
    if (!fresh || fresh === refused) return this.#fail();
    this.#retryLater(fresh);
  }

  /** getToken's answer within timeoutMs; undefined when it gave nothing, threw or took longer. */
  async #askToken(): Promise<string | undefined> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    try {
      const late = new Promise<undefined>((resolve) => {
        timer = setTimeout(() => resolve(undefined), this.timeoutMs);
      });
      return (await Promise.race([Promise.resolve(this.#options.getToken!()), late])) || undefined;
    } catch {
      return undefined;
    } finally {
      clearTimeout(timer);
    }
  }

  #onDisconnect(reason: string): void {
    for (const session of this.#sessions.values()) session.suspend();
    if (this.#final() || reason === 'io client disconnect') return;
    this.#setState(this.#state === 'connecting' ? 'connecting' : 'reconnecting');
    this.#retryLater();
  }

  #retryLater(fresh?: string): void {
    clearTimeout(this.#retryTimer);
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = undefined;
      void this.#open(fresh);
    }, this.#backoff.next());
  }

  /** The page came back (visible, restored from the back-forward cache, online): check and catch up now. */
  #wake(): void {
    if (this.#final()) return;
    if (this.#socket.connected) {
      // timers slept with the page: judge the connection by wall time, not by a timer that didn't run
      if (this.#now() - this.#lastMessageAt > LIVENESS_MS) return void this.#socket.io.engine?.close();
      for (const session of this.#sessions.values()) session.wake();
      return;
    }
    if (this.#retryTimer !== undefined) {
      this.#backoff.reset();
      clearTimeout(this.#retryTimer);
      this.#retryTimer = undefined;
      void this.#open();
    }
  }

  #connected(deadline: number): Promise<void> {
    if (this.#state === 'connected' && this.#socket.connected) return Promise.resolve();
    if (this.#state === 'closed') return Promise.reject(new ChatmeterError('disconnected', 'the client is closed'));
    if (this.#state === 'failed') return Promise.reject(new ChatmeterError('unauthorized', 'the server refused the token'));
    return new Promise((resolve, reject) => {
      const waiter = {
        resolve: () => {
          clearTimeout(timer);
          resolve();
        },
        reject: (err: ChatmeterError) => {
          clearTimeout(timer);
          reject(err);
        },
      };
      const timer = setTimeout(() => {
        this.#waiters.delete(waiter);
        reject(new ChatmeterError('timeout', `not connected within ${this.timeoutMs} ms`));
      }, Math.max(0, deadline - this.#now()));
      this.#waiters.add(waiter);
    });
  }

  #fail(): void {
    this.#setState('failed');
    this.#socket.disconnect();
  }

  #final(): boolean {
    return this.#state === 'closed' || this.#state === 'failed';
  }

  #setState(state: ClientState): void {
    if (state === this.#state) return;
    this.#state = state;
    if (this.#final()) {
      clearTimeout(this.#retryTimer);
      this.#retryTimer = undefined;
      this.#attempt++;
      this.#unhook();
      for (const session of this.#sessions.values()) session.stop();
      const err =
        state === 'failed'
          ? new ChatmeterError('unauthorized', 'the server refused the token')
          : new ChatmeterError('disconnected', 'the client is closed');
      for (const waiter of this.#waiters) waiter.reject(err);
      this.#waiters.clear();
    }
    this.emit('state', state);
  }
}

/** Who a token speaks for; nulls when it isn't a JWT with these claims. */
export interface Principal {
  id: string | null;
  role: 'user' | 'advisor' | null;
}

/** The claims of a JWT, unverified; nulls for anything else. */
function readClaims(token: string | undefined): Principal {
  try {
    const payload = token!.split('.')[1]!.replace(/-/g, '+').replace(/_/g, '/');
    const claims = JSON.parse(atob(payload)) as { sub?: unknown; role?: unknown };
    return {
      id: typeof claims.sub === 'string' ? claims.sub : null,
      role: claims.role === 'user' || claims.role === 'advisor' ? claims.role : null,
    };
  } catch {
    return { id: null, role: null };
  }
}

/** Calls `wake` when a browser page becomes visible, is restored, or goes online; nothing outside a browser. */
function hookPage(wake: () => void): () => void {
  const page = globalThis as { addEventListener?: Window['addEventListener']; removeEventListener?: Window['removeEventListener']; document?: Document };
  if (typeof page.addEventListener !== 'function' || typeof page.removeEventListener !== 'function') return () => undefined;
  const add = page.addEventListener.bind(page);
  const remove = page.removeEventListener.bind(page);
  const doc = page.document;
  const onVisibility = () => {
    if (doc?.visibilityState === 'visible') wake();
  };
  add('online', wake);
  add('pageshow', wake);
  doc?.addEventListener('visibilitychange', onVisibility);
  return () => {
    remove('online', wake);
    remove('pageshow', wake);
    doc?.removeEventListener('visibilitychange', onVisibility);
  };
}

export type { ChatView, ChatWithMeter, MeterSnapshot };
