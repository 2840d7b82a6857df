/**
 * Wires one node: database, services, express, socket.io, ticker. Building is
 * apart from listening, so tests build apps on port 0 and `server/main.ts` only
 * reads config, calls this and handles signals.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { createServer, type Server as HttpServer } from 'node:http';
import { hostname } from 'node:os';
import { createAdapter } from '@socket.io/redis-adapter';
import express from 'express';
import helmet from 'helmet';
import { createClient, type RedisClientType } from 'redis';
import { Server } from 'socket.io';
import type { DataSource } from 'typeorm';
import { Accounts } from './accounts.js';
import { type Cluster, LocalCluster } from './cluster/cluster.js';
import { DatabaseClock, skewedClock } from './cluster/database-clock.js';
import { PostgresCluster } from './cluster/postgres-cluster.js';
import { type Clock, systemClock } from './clock.js';
import type { Config } from './config.js';
import { createDataSource } from './db.js';
import { apiRouter, errorHandler } from './http/api.js';
import { assetsRouter } from './http/assets.js';
import { bearerMatches } from './http/bearer.js';
import { InFlight } from './http/in-flight.js';
import { openApiRouter } from './http/openapi.js';
import { type Logger, createLogger } from './log.js';
import { MeterService } from './metering/meter-service.js';
import { MirroredPresence } from './metering/mirrored-presence.js';
import { LocalPresence, type PresenceStore } from './metering/presence.js';
import { TimeRecords } from './metering/records.js';
import { RedisPresence } from './metering/redis-presence.js';
import { SettlementService } from './metering/settlement.js';
import { Ticker } from './metering/ticker.js';
import { Metrics } from './metrics.js';
import { localFanout, redisFanout } from './realtime/fanout.js';
import { type ChatServer, attachRealtime, createPublisher } from './realtime/socket-server.js';
import { Tokens } from './tokens.js';
import { WebhookDeliveries } from './webhooks/deliveries.js';
import { WebhookDispatcher } from './webhooks/dispatcher.js';
import { builtInReceiver } from './webhooks/receiver.js';

/** Things a caller may supply instead of the defaults (tests, benchmarks). */
export interface AppDeps {
  /** An initialized data source to use (not destroyed by `close`). */
  dataSource?: DataSource;
  /** The clock, used as it is; by default the system clock corrected to the database's. */
  clock?: Clock;
  logger?: Logger;
  nodeId?: string;
  /**
   * Prefix of every Redis key and channel; by default `chatmeter:{cluster id}`, the id kept in
   * the database, so clusters on different databases can share one Redis.
   */
  redisKeyPrefix?: string;
  rateLimit?: { perSocket: number; perPrincipal: number };
  /** Phase buckets per tick. */
  tickBuckets?: number;
  /** Called when another kind of node took this database over (after a lost connection): `main` exits. */
  onLostSingleNode?: () => void;
}

/** A built node. */
export interface App {
  nodeId: string;
  http: HttpServer;
  io: ChatServer;
  ds: DataSource;
  log: Logger;
  metrics: Metrics;
  ticker: Ticker;
  cluster: Cluster;
  services: { accounts: Accounts; engine: SettlementService; meters: MeterService; records: TimeRecords; presence: PresenceStore; tokens: Tokens };
  /** Starts the ticker and listens on `port` (0 for an ephemeral one); resolves to the bound port. */
  listen(port: number): Promise<number>;
  /**
   * Ordered shutdown (a drain): unready, stop accepting, end this node's presence,
   * settle every meter it settles, hand its leases over at once, close the sockets'
   * transports so clients reconnect elsewhere, then Redis and the database. With
   * `exit`, ends the process afterwards.
   */
  close(opts?: { exit?: boolean }): Promise<void>;
}

/** Builds a node from its configuration; runs migrations before anything else. */
export async function createApp(config: Config, deps: AppDeps = {}): Promise<App> {
  const nodeId = deps.nodeId ?? `${hostname()}-${process.pid}-${randomBytes(3).toString('hex')}`;
  const log = deps.logger ?? createLogger(config.logLevel, nodeId);
  const metrics = new Metrics();

  const ownsDs = !deps.dataSource;
  const ds = deps.dataSource ?? (await createDataSource(config));
  if (!ds.isInitialized) await ds.initialize();
  const applied = await migrate(ds, Boolean(config.databaseUrl));
  if (applied.length) log.info({ migrations: applied.map((m) => m.name) }, 'migrations applied');

  // one clock for billing: the database's (tests that drive time inject theirs)
  const dbClock = deps.clock ? null : new DatabaseClock(skewedClock(systemClock, config.test.clockSkewMs), ds, log, (ms) => metrics.clockOffset.set(ms / 1000));
  await dbClock?.start();
  const clock: Clock = deps.clock ?? dbClock!;

  const policy = { abandonTimeoutMs: config.abandonTimeoutMs, lowBalanceSeconds: config.lowBalanceSeconds };
  const accounts = new Accounts(ds, { freeTimeSeconds: config.freeTimeSeconds });
  // webhooks (SPEC 8): events recorded with their changes, delivered by this node's dispatcher (and any other's)
  const dispatcher = config.webhook
    ? new WebhookDispatcher(ds, log, metrics, { url: config.webhook.url, secret: config.webhook.secret, timeoutMs: config.webhook.timeoutMs, retryBaseMs: config.webhook.retryBaseMs })
    : null;
  const engine = new SettlementService(ds, policy, dispatcher ? { newId: randomUUID, recorded: () => dispatcher.poke() } : null);
  const deliveries = new WebhookDeliveries(ds, () => dispatcher?.poke());
  const records = new TimeRecords(ds);
  const tokens = new Tokens(config.jwtSecret);

  const redis = config.redisUrl ? await connectRedis(config.redisUrl, log, metrics) : null;
  const keyPrefix = deps.redisKeyPrefix ?? `chatmeter:${await clusterId(ds)}`;
  const local = new LocalPresence(config);
  const mirrored = redis
    ? new MirroredPresence(local, new RedisPresence(redis.pub, config, keyPrefix, undefined, nodeId), () => redis.pub.isReady, log, (d) =>
        metrics.presenceDegraded.set(d ? 1 : 0),
      )
    : null;
  const presence: PresenceStore = mirrored ?? local;
  if (redis && mirrored) {
    await mirrored.resync(() => clock.now());
    redis.pub.on('ready', () => void mirrored.resync(() => clock.now()));
    redis.pub.on('reconnecting', () => mirrored.lost());
    redis.pub.on('end', () => mirrored.lost());
  }
  // with Redis, many nodes share the database: leases in Postgres say who settles what on the clock
  const cluster: Cluster = redis
    ? new PostgresCluster(ds, { nodeId, leaseMs: config.clusterLeaseMs, log, metrics })
    : new LocalCluster(nodeId);
  // taken for dead while it stalled, this node's sockets were ended in Redis: put them back
  if (mirrored) cluster.onRejoined(() => void mirrored.resync(() => clock.now()));

  let ready = false;
  let closing = false;
  let nodeLock: { release(): Promise<void> } | null = null;
  const app = express();
  app.disable('x-powered-by');
  // requests in flight, so a shutdown lets them finish (bounded) before it closes the pool
  const requests = new InFlight();
  app.use((_req, res, next) => {
    requests.add(res);
    // while draining, a kept-alive connection gets no next request here: the client goes elsewhere
    if (closing) res.setHeader('Connection', 'close');
    next();
  });
  // plain-http deployments (and ws://) must keep working: no upgrade-insecure-requests
  app.use(helmet({ contentSecurityPolicy: { directives: { upgradeInsecureRequests: null } } }));
  // before the JSON parser: it verifies signatures over the raw body
  if (config.webhook?.builtInReceiver) app.use(builtInReceiver(config.webhook.secret, log));
  app.use(express.json({ limit: '16kb' }));
  app.get('/healthz', (_req, res) => {
    res.json({ ok: true, node: nodeId });
  });
  app.get('/readyz', async (_req, res) => {
    const checks: Record<string, boolean> = { database: false };
    try {
      await ds.query('SELECT 1');
      checks.database = true;
    } catch (err) {
      log.warn({ err }, 'readiness: database unreachable');
    }
    if (redis) checks.redis = redis.pub.isReady && redis.sub.isReady;
    // without Redis a node still meters the users present on it: ready, but degraded (SPEC 6)
    const degraded = [...(redis && !checks.redis ? ['redis'] : []), ...(mirrored?.degraded ? ['presence'] : [])];
    const ok = ready && !closing && checks.database;
    res.status(ok ? 200 : 503).json({ ok, checks, degraded, node: nodeId, cluster: cluster.status() });
  });
  app.use(assetsRouter());
  app.use(openApiRouter());
  app.get('/metrics', async (req, res) => {
    if (config.metricsToken && !bearerMatches(req.get('authorization'), config.metricsToken)) {
      return void res.status(401).set('WWW-Authenticate', 'Bearer').json({ error: { code: 'unauthorized', message: 'metrics need Authorization: Bearer <METRICS_TOKEN>' } });
    }
    const status = cluster.status();
    metrics.leaseShards.set(status.shards);
    metrics.clusterNodes.set(status.nodes);
    if (redis) metrics.redisUp.set(redis.pub.isReady && redis.sub.isReady ? 1 : 0);
    if (dispatcher) {
      const counts = await deliveries.counts().catch(() => null);
      if (counts) for (const [status, n] of Object.entries(counts)) metrics.webhookEvents.set({ status }, n);
    }
    res.type(metrics.registry.contentType).send(await metrics.registry.metrics());
  });

  const http = createServer(app);
  const io: ChatServer = new Server(http, {
    maxHttpBufferSize: 16 * 1024,
    cors: config.corsOrigins.length ? { origin: config.corsOrigins, credentials: false } : undefined,
    // CORS alone doesn't protect websockets: refuse handshakes from foreign browser origins
    allowRequest: (req, cb) => cb(null, originAllowed(req.headers.origin, req.headers.host, config.corsOrigins)),
  });
  if (redis) io.adapter(createAdapter(redis.pub, redis.sub, { key: keyPrefix }));

  // settlement pushes go to other nodes one message a batch, not through the adapter one publish a push
  const fanout = redis
    ? await redisFanout(io, { pub: redis.pub, sub: redis.sub, channel: `${keyPrefix}:fanout`, nodeId, log, metrics })
    : localFanout(io, { log, metrics });
  const publish = createPublisher(fanout, log);
  const ticker = new Ticker({
    clock,
    engine,
    presence,
    log,
    metrics,
    publish,
    tickMs: config.meterTickMs,
    buckets: deps.tickBuckets,
    cluster,
    loadActiveChatIds: async () => (await ds.query(`SELECT id FROM chats WHERE status = 'active' ORDER BY id`)).map((r: { id: string }) => r.id),
    // while Redis is down, each node meters the users present on it (the fence keeps money exact)
    localOnly: () => mirrored?.degraded ?? false,
    settlesUnowned: (chatId) => config.test.settleUnowned || (mirrored !== null && mirrored.degraded && mirrored.presentHere(chatId, clock.now())),
    // the node that leases a chat started elsewhere hears of it at once, or at the next rescan
    onTracked: redis ? (chatIds) => io.serverSideEmit('chats:tracked', chatIds) : undefined,
    rescanMs: redis ? 5000 : undefined,
    sharedPresence: Boolean(redis),
  });
  cluster.onAcquired(() => void ticker.rescan());
  if (redis) {
    io.on('chats:tracked', (chatIds: unknown) => {
      if (Array.isArray(chatIds)) ticker.wake(chatIds.filter((id): id is string => typeof id === 'string'));
    });
    io.on('cluster:changed', () => cluster.poke());
  }
  const meters = new MeterService(accounts, engine, records, presence, ticker, clock);
  // a node that died took its sockets with it: their presence ends when it was last seen, not at their heartbeats' lapse
  cluster.onDeparted((departed, lastSeen) => {
    if (!mirrored) return;
    mirrored
      .releaseNode(departed, lastSeen)
      .then((chatIds) => Promise.all(chatIds.map((chatId) => meters.presenceChanged(chatId))))
      .catch((err: unknown) => {
        metrics.backgroundErrors.inc({ where: 'departed_node' });
        log.error({ err, departedNode: departed }, 'ending a departed node\'s presence failed');
      });
  });
  attachRealtime(io, {
    tokens,
    accounts,
    engine,
    meters,
    presence,
    metrics,
    log,
    clock,
    heartbeatIntervalMs: config.heartbeatIntervalMs,
    rateLimit: deps.rateLimit,
    caps: { chatsPerSocket: config.maxChatsPerSocket, socketsPerPrincipal: config.maxSocketsPerPrincipal },
    sharedLimits: redis ? { redis: redis.pub, keyPrefix } : undefined,
    isClosing: () => closing,
  });

  app.use(
    '/v1',
    apiRouter({
      apiKey: config.apiKey,
      accounts,
      engine,
      meters,
      records,
      tokens,
      clock,
      log,
      notifyBalance: (userId, balance) => io.to(`user:${userId}`).emit('balance', { userId, balance }),
      notifyChatCreated: (chat) => io.to(`advisor:${chat.advisorId}`).emit('chat:created', { chat }),
      deliveries,
    }),
  );
  app.use((_req, res) => {
    res.status(404).json({ error: { code: 'not_found', message: 'no such route' } });
  });
  app.use(errorHandler(log));

  /** Tells the other nodes to look at the cluster now (best effort: they look every lease/3 anyway). */
  const announce = () => {
    if (!redis) return;
    try {
      io.serverSideEmit('cluster:changed');
    } catch (err) {
      log.warn({ err }, 'announcing a cluster change failed');
    }
  };

  return {
    nodeId,
    http,
    io,
    ds,
    log,
    metrics,
    ticker,
    cluster,
    services: { accounts, engine, meters, records, presence, tokens },
    async listen(port) {
      // without Redis, nodes can't share presence: one node per database; with it, any number,
      // but never beside a node without it (or of a version before clusters)
      nodeLock = await claimNodeLock(ds, Boolean(config.databaseUrl), redis ? 'shared' : 'exclusive', nodeId, () => {
        // another kind of node runs on this database now: this one stops metering and says so
        ready = false;
        log.fatal({}, 'lost the node lock to another node; metering stopped here');
        metrics.backgroundErrors.inc({ where: 'single_node_lock' });
        ticker.stop().catch(() => undefined);
        deps.onLostSingleNode?.();
      });
      await cluster.start();
      await ticker.start();
      dispatcher?.start();
      await new Promise<void>((resolve, reject) => {
        http.once('error', reject);
        // a connect storm outruns node's default backlog of 511: dropped SYNs come back 1, 3, 7 s
        // later (the load bench saw connects of 30 s); the kernel caps it at net.core.somaxconn
        http.listen({ port, backlog: LISTEN_BACKLOG }, () => resolve());
      });
      ready = true;
      announce();
      const bound = (http.address() as { port: number }).port;
      log.info({ port: bound, chats: ticker.size, shards: cluster.status().shards, clockOffsetMs: dbClock?.offset ?? 0 }, 'listening');
      return bound;
    },
    async close(opts = {}) {
      if (closing) return;
      closing = true;
      ready = false;
      log.info({ chats: ticker.size }, 'shutting down');
      const stopped = new Promise<void>((resolve) => http.close(() => resolve()));
      // no new connections; requests already in (a top-up, a start) finish, within a bound
      if (!(await withTimeout(requests.drained(), DRAIN_MS))) log.warn({ requests: requests.size }, 'requests still running at shutdown were cut');
      await ticker.stop();
      dbClock?.stop();
      // this node's sockets stop counting now: their users are away until they reconnect elsewhere
      if (mirrored) await withTimeout(mirrored.releaseAll(clock.now()), 2000);
      try {
        await ticker.settleAll();
      } catch (err) {
        log.error({ err }, 'final settlement failed; the next node to take these chats over settles them');
      }
      try {
        await cluster.leave();
        announce();
      } catch (err) {
        log.error({ err }, 'handing leases over failed; they expire by themselves');
      }
      // closing the transports (not a DISCONNECT packet) lets clients reconnect to another or restarted node;
      // with Redis gone the adapter's unsubscribe never answers: don't let it hold the shutdown
      await withTimeout(new Promise<void>((resolve) => io.close(() => resolve())), 2000);
      http.closeAllConnections();
      await stopped;
      // settlements a request started after the ticker stopped (a top-up's refresh) finish before the pool closes
      await withTimeout(ticker.settled(), 5000);
      // a delivery in flight ends within its timeout; one cut short is claimed again by another node later
      if (dispatcher) await withTimeout(dispatcher.stop(), config.webhook!.timeoutMs);
      if (redis) {
        // a deliberate close, not an outage
        for (const c of [redis.pub, redis.sub]) c.removeAllListeners('end').removeAllListeners('reconnecting');
        const closed = await withTimeout(Promise.allSettled([redis.pub.close(), redis.sub.close()]), 2000);
        if (!closed) for (const c of [redis.pub, redis.sub]) if (c.isOpen) c.destroy();
      }
      await nodeLock?.release();
      if (ownsDs && ds.isInitialized) await ds.destroy();
      log.info('shut down');
      if (opts.exit) process.exit(0);
    },
  };
}

const MIGRATION_LOCK = 0x63686d67; // "chmg"

/** Pending connections the kernel may hold for this node (capped by net.core.somaxconn). */
const LISTEN_BACKLOG = 4096;

/**
 * Runs pending migrations; on Postgres under an advisory lock, so nodes of a cluster
 * starting at once apply each migration once (the others wait, then find nothing to run).
 */
async function migrate(ds: DataSource, postgres: boolean): Promise<Array<{ name: string }>> {
  if (!postgres) return ds.runMigrations({ transaction: 'each' });
  const runner = ds.createQueryRunner();
  await runner.connect();
  try {
    await runner.query(`SELECT pg_advisory_lock($1)`, [MIGRATION_LOCK]);
    return await ds.runMigrations({ transaction: 'each' });
  } finally {
    await runner.query(`SELECT pg_advisory_unlock($1)`, [MIGRATION_LOCK]).catch(() => undefined);
    await runner.release();
  }
}

/** The cluster's id, kept in the database: every node of one database shares it. */
async function clusterId(ds: DataSource): Promise<string> {
  const rows: Array<{ value: string }> = await ds.query(`SELECT value FROM cluster_settings WHERE key = 'cluster_id'`);
  if (!rows[0]) throw new Error('cluster_settings has no cluster_id: run the migrations');
  return rows[0].value;
}

/** Thrown when another node already meters this database. */
export class NodeConflictError extends Error {
  override name = 'NodeConflictError';
}

const SINGLE_NODE_LOCK = 0x63686d74; // "chmt"

/**
 * Without Redis, one node per database: two nodes could not see each other's sockets
 * and would flip meters between running and away. A session advisory lock on a
 * connection of its own says which nodes run: a node without Redis holds it alone
 * (exclusive), nodes of a cluster share it, so neither kind starts beside the other.
 * PGlite needs none (its directory lock admits one process).
 */
async function claimNodeLock(
  ds: DataSource,
  postgres: boolean,
  mode: 'exclusive' | 'shared',
  nodeId: string,
  onLost: () => void,
): Promise<{ release(): Promise<void> } | null> {
  if (!postgres) return null;
  const lock = async () => {
    const runner = ds.createQueryRunner();
    await runner.connect();
    const fn = mode === 'shared' ? 'pg_try_advisory_lock_shared' : 'pg_try_advisory_lock';
    const [{ locked }] = await runner.query(`SELECT ${fn}($1) AS locked`, [SINGLE_NODE_LOCK]);
    if (locked) return runner;
    await runner.release();
    return null;
  };
  let runner = await lock();
  if (!runner) {
    throw new NodeConflictError(
      mode === 'exclusive'
        ? `another chatmeter node already runs on this database; without REDIS_URL only one node may run per database: set REDIS_URL on every node to run several (node ${nodeId} refused to start)`
        : `a chatmeter node without REDIS_URL (or of a version before clusters) runs on this database; every node of a cluster needs REDIS_URL (node ${nodeId} refused to start)`,
    );
  }
  // the lock lives as long as its session: when the session dies (a database restart, a proxy)
  // take it again, and if another node has it meanwhile, stop metering here
  let checking = false;
  const watch = setInterval(() => {
    if (checking) return;
    checking = true;
    (async () => {
      try {
        await runner!.query('SELECT 1');
      } catch {
        await runner!.release().catch(() => undefined);
        const again = await lock().catch(() => undefined);
        if (again) runner = again;
        else if (again === null) {
          clearInterval(watch);
          onLost();
        }
        // undefined: the database is still unreachable; try again on the next check
      }
    })().finally(() => (checking = false));
  }, 5000);
  watch.unref();
  return {
    async release() {
      clearInterval(watch);
      try {
        await runner!.query(`SELECT pg_advisory_unlock_all()`);
      } catch {
        // the connection died with the lock
      }
      await runner!.release().catch(() => undefined);
    },
  };
}

/** Same-origin or listed origins; requests without an Origin (not from a browser) pass. */
export function originAllowed(origin: string | undefined, host: string | undefined, allowed: string[]): boolean {
  if (!origin) return true;
  if (allowed.includes(origin) || allowed.includes('*')) return true;
  try {
    return new URL(origin).host === host;
  } catch {
    return false;
  }
}

/** Resolves true when `p` settles within `ms`, false otherwise (never rejects). */
async function withTimeout(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<boolean>((resolve) => {
    timer = setTimeout(() => resolve(false), ms);
  });
  try {
    return await Promise.race([p.then(() => true, () => true), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

interface RedisPair {
  pub: RedisClientType;
  sub: RedisClientType;
}

/**
 * Publisher and subscriber for the socket.io adapter. Every client has an error
 * listener (without one a dropped connection kills the process), and a failed
 * publish is logged, counted and dropped instead of left unhandled: nodes survive
 * a Redis restart and resubscribe by themselves.
 */
async function connectRedis(url: string, log: Logger, metrics: Metrics): Promise<RedisPair> {
  // no offline queue: a command or publish made while Redis is down fails at once instead of
  // waiting to go out as a stale burst when it returns
  const pub: RedisClientType = createClient({ url, disableOfflineQueue: true });
  const sub: RedisClientType = pub.duplicate();
  for (const [name, c] of [['pub', pub], ['sub', sub]] as const) {
    c.on('error', (err: unknown) => {
      metrics.backgroundErrors.inc({ where: 'redis' });
      log.warn({ err, client: name }, 'redis error');
    });
  }
  await Promise.all([pub.connect(), sub.connect()]);
  const publish = pub.publish.bind(pub);
  // every meter is a publish: an outage at 5,000 chats would log 5,000 lines a second. Once per
  // outage, then a summary when Redis is back (the metric still counts each)
  let dropped = 0;
  let since = 0;
  (pub as { publish: unknown }).publish = ((...args: Parameters<typeof publish>) =>
    publish(...args).catch((err: unknown) => {
      metrics.backgroundErrors.inc({ where: 'redis_publish' });
      if (dropped++ === 0) {
        since = Date.now();
        log.warn({ err }, 'redis publish failed; packets are dropped until Redis is back');
      }
      return 0;
    })) as typeof pub.publish;
  pub.on('ready', () => {
    if (dropped) log.info({ dropped, forMs: Date.now() - since }, 'redis is back; publishing again');
    dropped = 0;
  });
  return { pub, sub };
}

/** How long a shutdown waits for HTTP requests in flight. */
const DRAIN_MS = 5000;

