import { randomBytes } from 'node:crypto';
import { z } from 'zod';

const positive = (def: number) => z.coerce.number().int().positive().default(def);
const ms = positive;
const seconds = (def: number) => z.coerce.number().int().nonnegative().default(def);
const emptyAsUnset = (v: unknown) => (v === '' ? undefined : v);

const schema = z.object({
  PORT: z.preprocess(emptyAsUnset, z.coerce.number().int().min(0).max(65535).default(3000)),
  DATABASE_URL: z.preprocess(emptyAsUnset, z.string().url().optional()),
  DATA_DIR: z.preprocess(emptyAsUnset, z.string().default('./.chatmeter-data')),
  REDIS_URL: z.preprocess(emptyAsUnset, z.string().url().optional()),
  CHATMETER_API_KEY: z.preprocess(emptyAsUnset, z.string().min(16).optional()),
  CHATMETER_JWT_SECRET: z.preprocess(emptyAsUnset, z.string().min(32).optional()),
  METER_TICK_MS: z.preprocess(emptyAsUnset, ms(1000)),
  HEARTBEAT_INTERVAL_MS: z.preprocess(emptyAsUnset, ms(10_000)),
  HEARTBEAT_GRACE_MS: z.preprocess(emptyAsUnset, seconds(5000)),
  ABANDON_TIMEOUT_MS: z.preprocess(emptyAsUnset, ms(120_000)),
  FREE_TIME_SECONDS: z.preprocess(emptyAsUnset, seconds(180)),
  LOW_BALANCE_SECONDS: z.preprocess(emptyAsUnset, seconds(60)),
  CORS_ORIGINS: z.preprocess(emptyAsUnset, z.string().optional()),
  LOG_LEVEL: z.preprocess(
    emptyAsUnset,
    z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  ),
  WEBHOOK_URL: z.preprocess(
    emptyAsUnset,
    z.string().refine((u) => URL.canParse(u) && /^https?:$/.test(new URL(u).protocol), 'must be an http(s) URL').optional(),
  ),
  WEBHOOK_SECRET: z.preprocess(emptyAsUnset, z.string().min(16).optional()),
  WEBHOOK_TIMEOUT_MS: z.preprocess(emptyAsUnset, ms(10_000)),
  METRICS_TOKEN: z.preprocess(emptyAsUnset, z.string().min(16).optional()),
  MAX_CHATS_PER_SOCKET: z.preprocess(emptyAsUnset, positive(50)),
  MAX_SOCKETS_PER_PRINCIPAL: z.preprocess(emptyAsUnset, positive(100)),
  CLUSTER_LEASE_MS: z.preprocess(emptyAsUnset, z.coerce.number().int().min(300).max(60_000).default(1500)),
  // test hooks: a node whose clock is wrong, and a node that settles chats it holds no lease on
  CHATMETER_TEST_CLOCK_SKEW_MS: z.preprocess(emptyAsUnset, z.coerce.number().int().default(0)),
  CHATMETER_TEST_SETTLE_UNOWNED: z.preprocess(emptyAsUnset, z.enum(['0', '1']).default('0')),
  // test hook: the first webhook retry's delay (SPEC: 5 s), so tests see a retry without waiting
  CHATMETER_TEST_WEBHOOK_RETRY_MS: z.preprocess(emptyAsUnset, ms(5000)),
});

/** The validated configuration of one node (SPEC section 4). */
export interface Config {
  port: number;
  /** Postgres connection string; null means the embedded PGlite in `dataDir`. */
  databaseUrl: string | null;
  dataDir: string;
  redisUrl: string | null;
  apiKey: string;
  jwtSecret: string;
  /** True when the key or secret was generated here and must be printed for the operator. */
  generatedSecrets: { apiKey: boolean; jwtSecret: boolean };
  meterTickMs: number;
  heartbeatIntervalMs: number;
  heartbeatGraceMs: number;
  abandonTimeoutMs: number;
  freeTimeSeconds: number;
  lowBalanceSeconds: number;
  corsOrigins: string[];
  logLevel: string;
  /** How long a settlement lease and a node's membership last without renewal (many nodes). */
  clusterLeaseMs: number;
  /** Chats one socket may have joined at once (a join past it is `conflict`). */
  maxChatsPerSocket: number;
  /** Sockets one user or advisor may hold on one node (a handshake past it is refused `rate_limited`). */
  maxSocketsPerPrincipal: number;
  /** With it, `/metrics` answers only `Authorization: Bearer <token>`; null: open to whoever reaches the port. */
  metricsToken: string | null;
  /** Webhooks (SPEC 8); null without WEBHOOK_URL. */
  webhook: WebhookConfig | null;
  /** Test hooks, never set in production. */
  test: {
    /** Added to this node's clock (the database clock sync must correct it). */
    clockSkewMs: number;
    /** Settle every chat on every tick, leased or not, without a fence (two settlers at once). */
    settleUnowned: boolean;
  };
}

/** Where and how events are delivered. */
export interface WebhookConfig {
  url: string;
  secret: string;
  timeoutMs: number;
  /** The first retry's delay; doubles each time. */
  retryBaseMs: number;
  /** True when the node itself receives them (`npm start` on the embedded database, for a newcomer to see events). */
  builtInReceiver: boolean;
}

/** Thrown with every bad variable listed, so the operator fixes them all at once. */
export class ConfigError extends Error {
  override name = 'ConfigError';
}

/**
 * Reads and validates the environment; nothing else in the server reads `process.env`.
 * With `node` (a server about to serve, not a CLI), a node on `DATABASE_URL` must be given
 * the cluster's shared API key and JWT secret instead of generating its own.
 */
export function loadConfig(env: NodeJS.ProcessEnv = process.env, opts: { node?: boolean } = {}): Config {
  const parsed = schema.safeParse(env);
  if (!parsed.success) {
    const lines = parsed.error.issues.map((i) => `  ${i.path.join('.')}: ${i.message} (got ${JSON.stringify(env[String(i.path[0])])})`);
    throw new ConfigError(`invalid configuration:\n${lines.join('\n')}`);
  }
  const e = parsed.data;
  // nodes of one database form one cluster: a token minted on one must be valid on all, so
  // random per-process secrets would break it; only the embedded single-node database generates them
  if (opts.node && e.DATABASE_URL) {
    const missing = (['CHATMETER_API_KEY', 'CHATMETER_JWT_SECRET'] as const).filter((k) => !e[k]);
    if (missing.length) {
      throw new ConfigError(
        `invalid configuration:\n${missing.map((k) => `  ${k}: required with DATABASE_URL (every node of the cluster must share it)`).join('\n')}`,
      );
    }
  }
  if (e.WEBHOOK_URL && !e.WEBHOOK_SECRET) {
    throw new ConfigError('invalid configuration:\n  WEBHOOK_SECRET: required with WEBHOOK_URL (16 characters at least; receivers verify signatures with it)');
  }
  return {
    port: e.PORT,
    databaseUrl: e.DATABASE_URL ?? null,
    dataDir: e.DATA_DIR,
    redisUrl: e.REDIS_URL ?? null,
    apiKey: e.CHATMETER_API_KEY ?? randomBytes(24).toString('base64url'),
    jwtSecret: e.CHATMETER_JWT_SECRET ?? randomBytes(32).toString('base64url'),
    generatedSecrets: { apiKey: !e.CHATMETER_API_KEY, jwtSecret: !e.CHATMETER_JWT_SECRET },
    meterTickMs: e.METER_TICK_MS,
    heartbeatIntervalMs: e.HEARTBEAT_INTERVAL_MS,
    heartbeatGraceMs: e.HEARTBEAT_GRACE_MS,
    abandonTimeoutMs: e.ABANDON_TIMEOUT_MS,
    freeTimeSeconds: e.FREE_TIME_SECONDS,
    lowBalanceSeconds: e.LOW_BALANCE_SECONDS,
    corsOrigins: (e.CORS_ORIGINS ?? '').split(',').map((s) => s.trim()).filter(Boolean),
    logLevel: e.LOG_LEVEL,
    clusterLeaseMs: e.CLUSTER_LEASE_MS,
    metricsToken: e.METRICS_TOKEN ?? null,
    maxChatsPerSocket: e.MAX_CHATS_PER_SOCKET,
    maxSocketsPerPrincipal: e.MAX_SOCKETS_PER_PRINCIPAL,
    webhook: e.WEBHOOK_URL
      ? { url: e.WEBHOOK_URL, secret: e.WEBHOOK_SECRET!, timeoutMs: e.WEBHOOK_TIMEOUT_MS, retryBaseMs: e.CHATMETER_TEST_WEBHOOK_RETRY_MS, builtInReceiver: false }
      : null,
    test: { clockSkewMs: e.CHATMETER_TEST_CLOCK_SKEW_MS, settleUnowned: e.CHATMETER_TEST_SETTLE_UNOWNED === '1' },
  };
}
