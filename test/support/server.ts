import { randomBytes } from 'node:crypto';
import { io as connectClient, type Socket } from 'socket.io-client';
import type { ClientToServerEvents, ServerToClientEvents } from '../../client-sdk/src/protocol.js';
import { type App, type AppDeps, createApp } from '../../server/app.js';
import { type Config, loadConfig } from '../../server/config.js';
import { createLogger } from '../../server/log.js';
import type { TestDb } from './db.js';

export type ClientSocket = Socket<ServerToClientEvents, ClientToServerEvents>;

/** The fields of a meter snapshot (SPEC section 2), sorted. */
export const SNAPSHOT_KEYS = [
  'advisorId', 'balance', 'chatId', 'creditsUsed', 'durationSeconds', 'freeSecondsAllocation', 'freeSecondsRemaining',
  'freeSecondsUsed', 'ratePerMinute', 'recordId', 'secondsAffordable', 'seq', 'serverTime', 'state', 'userId',
];

/** Short timings so the suite stays fast: 100 ms ticks, 300 + 200 ms heartbeat window. */
export const FAST_ENV = {
  METER_TICK_MS: '100',
  HEARTBEAT_INTERVAL_MS: '300',
  HEARTBEAT_GRACE_MS: '200',
  ABANDON_TIMEOUT_MS: '60000',
  CHATMETER_API_KEY: 'test-api-key-0123456789',
  CHATMETER_JWT_SECRET: 'test-jwt-secret-0123456789-0123456789',
  LOG_LEVEL: process.env.TEST_LOG_LEVEL ?? 'silent',
};

/** A running node on an ephemeral port, with helpers to talk to it. */
export interface TestNode {
  app: App;
  config: Config;
  url: string;
  /** Calls the HTTP API with the node's API key. */
  api(method: string, path: string, body?: unknown, headers?: Record<string, string>): Promise<{ status: number; body: any }>;
  /** A client token from the node's own token route. */
  token(sub: string, role: 'user' | 'advisor'): Promise<string>;
  /** A connected socket for `sub`; rejects with the connect_error. */
  connect(sub: string, role: 'user' | 'advisor'): Promise<ClientSocket>;
  close(): Promise<void>;
}

/**
 * Starts a node on `db` with fast timings (override any variable with `env`), on `port`
 * (0: an ephemeral one). Every socket it hands out is closed with it.
 */
export async function startNode(db: TestDb, env: Record<string, string> = {}, deps: AppDeps = {}, port = 0): Promise<TestNode> {
  const config = loadConfig({
    ...FAST_ENV,
    ...(db.url ? { DATABASE_URL: db.url } : {}),
    ...(process.env.REDIS_URL && env.REDIS_URL !== '' ? { REDIS_URL: process.env.REDIS_URL } : {}),
    ...env,
  });
  const app = await createApp(config, {
    dataSource: db.ds,
    logger: createLogger(config.logLevel, 'test'),
    redisKeyPrefix: `cm-test-${randomBytes(4).toString('hex')}`,
    ...deps,
  });
  const bound = await app.listen(port).catch(async (err: unknown) => {
    await app.close();
    throw err;
  });
  const url = `http://127.0.0.1:${bound}`;
  const sockets: ClientSocket[] = [];

  const api: TestNode['api'] = (method, path, body, headers = {}) => callApi(url, config.apiKey, method, path, body, headers);

  const token = async (sub: string, role: 'user' | 'advisor') => {
    const res = await api('POST', '/v1/tokens', { sub, role });
    if (res.status !== 201) throw new Error(`token: ${res.status} ${JSON.stringify(res.body)}`);
    return res.body.token as string;
  };

  return {
    app,
    config,
    url,
    api,
    token,
    async connect(sub, role) {
      const s = await connectWith(url, { token: await token(sub, role) });
      sockets.push(s);
      return s;
    },
    async close() {
      for (const s of sockets) s.disconnect();
      await app.close();
    },
  };
}

/** Calls a node's HTTP API with the API key; the body comes back parsed when it is JSON. */
export async function callApi(
  url: string,
  apiKey: string,
  method: string,
  path: string,
  body?: unknown,
  headers: Record<string, string> = {},
): Promise<{ status: number; body: any }> {
  const res = await fetch(url + path, {
    method,
    headers: { authorization: `Bearer ${apiKey}`, 'content-type': 'application/json', ...headers },
    body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
  });
  const text = await res.text();
  let parsed: unknown = text;
  try {
    parsed = JSON.parse(text);
  } catch {
    // not JSON: keep the text
  }
  return { status: res.status, body: parsed };
}

/** Connects with the given auth; resolves when connected, rejects with the connect_error. */
export function connectWith(url: string, auth: Record<string, unknown>, extra: Record<string, unknown> = {}): Promise<ClientSocket> {
  const s: ClientSocket = connectClient(url, { auth, transports: ['websocket'], reconnection: false, forceNew: true, ...extra });
  return new Promise((resolve, reject) => {
    s.once('connect', () => resolve(s));
    s.once('connect_error', (err) => {
      s.close();
      reject(err);
    });
  });
}

/** Emits an event and resolves with its ack (rejects after `ms`). */
export function call<T = any>(s: ClientSocket, event: string, payload?: unknown, ms = 5000): Promise<T> {
  return (s as unknown as Socket).timeout(ms).emitWithAck(event, payload) as Promise<T>;
}

/** Resolves with the first `event` whose payload satisfies `pred`, or rejects after `ms`. */
export function waitFor<T = any>(s: ClientSocket, event: string, pred: (p: T) => boolean = () => true, ms = 5000): Promise<T> {
  const sock = s as unknown as Socket;
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      sock.off(event, handler);
      reject(new Error(`no ${event} matching within ${ms} ms`));
    }, ms);
    const handler = (p: T) => {
      if (!pred(p)) return;
      clearTimeout(timer);
      sock.off(event, handler);
      resolve(p);
    };
    sock.on(event, handler);
  });
}

/** Polls `fn` until it returns a truthy value, or throws after `ms`. */
export async function eventually<T>(fn: () => Promise<T> | T, ms = 5000, every = 25): Promise<NonNullable<T>> {
  const deadline = Date.now() + ms;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v as NonNullable<T>;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`condition not met within ${ms} ms${last ? `: ${String(last)}` : ''}`);
    await new Promise((r) => setTimeout(r, every));
  }
}

/** Records every payload of `event` on a socket. */
export function collect<T = any>(s: ClientSocket, event: string): T[] {
  const seen: T[] = [];
  (s as unknown as Socket).on(event, (p: T) => seen.push(p));
  return seen;
}
