/**
 * The run's cluster: a throwaway database on DATABASE_URL's server, the run's own
 * Redis behind a latency proxy, node processes as `npm start` runs them
 * (test/support/processes.ts) and a round-robin balancer in front of them. It
 * remembers which exits the run caused: any other exit of a node is a crash.
 */
import pg from 'pg';
import { DataSource } from 'typeorm';
import { throwawayDatabase } from '../bench/throwaway-db.js';
import { entities } from '../entities/index.js';
import { migrations } from '../migrations/index.js';
import { shardOf } from '../server/cluster/shards.js';
import { type Balancer, startBalancer } from '../test/support/balancer.js';
import { type NodeProcess, spawnNode } from '../test/support/processes.js';
import { eventually } from '../test/support/server.js';
import { type LatencyProxy, type OwnRedis, startLatencyProxy, startOwnRedis } from './redis.js';

/** Timings of every node: 500 ms ticks, a 1 + 0.5 s heartbeat window, the default 1.5 s lease. */
export const TIMING = { tickMs: 500, heartbeatIntervalMs: 1000, heartbeatGraceMs: 500, leaseMs: 1500 };

export interface Node {
  proc: NodeProcess;
  label: string;
  /** Set before the run kills or stops it, so its exit is not taken for a crash. */
  expectedExit: boolean;
  stopped: boolean;
  stderr: string;
}

/** A node that exited without the run asking it to. */
export interface Crash {
  node: string;
  code: number | null;
  signal: string | null;
  scenario: string;
  stderr: string;
  lastLines: string[];
}

export class Cluster {
  nodes: Node[] = [];
  /** Every node the run started, dead ones too (their log lines stay readable). */
  readonly all: Node[] = [];
  readonly crashes: Crash[] = [];
  /** The scenario under way, to file crashes under. */
  scenario = 'setup';
  private spawned = 0;

  private constructor(
    private readonly adminUrl: string,
    readonly dbUrl: string,
    readonly dbName: string,
    readonly ds: DataSource,
    readonly redis: OwnRedis,
    readonly proxy: LatencyProxy,
    readonly lb: Balancer,
    private readonly dropDb: () => Promise<void>,
  ) {}

  static async start(base: string): Promise<Cluster> {
    const db = await throwawayDatabase(base, 'chatmeter_faults');
    const url = db.url!;
    // the run's own connections carry another application_name: cutting the nodes' leaves them alone
    const ds = new DataSource({ type: 'postgres', url, entities, migrations, poolSize: 4, extra: { application_name: 'chatmeter-faults' } });
    await ds.initialize();
    await ds.runMigrations({ transaction: 'each' });
    const redis = await startOwnRedis();
    const proxy = await startLatencyProxy(redis.port);
    const lb = await startBalancer([]);
    return new Cluster(base, url, new URL(url).pathname.slice(1), ds, redis, proxy, lb, db.drop);
  }

  /** How many log lines each node has written so far, to read what a scenario added. */
  logMark(): Map<Node, number> {
    return new Map(this.all.map((n) => [n, n.proc.lines.length]));
  }

  /** The warnings and errors the nodes logged since `mark`: counts and the distinct messages of each level. */
  logSince(mark: Map<Node, number>): { warn: number; error: number; messages: Map<string, number> } {
    const out = { warn: 0, error: 0, messages: new Map<string, number>() };
    for (const n of this.all) {
      for (const l of n.proc.lines.slice(mark.get(n) ?? 0)) {
        const level = Number(l.level ?? 0);
        if (level < 40) continue;
        if (level >= 50) out.error++;
        else out.warn++;
        const key = `${level >= 50 ? 'error' : 'warn'}: ${String(l.msg)}`;
        out.messages.set(key, (out.messages.get(key) ?? 0) + 1);
      }
    }
    return out;
  }

  /** Nodes running and not stopped. */
  get live(): Node[] {
    return this.nodes.filter((n) => !n.stopped);
  }

  /** Spawns a node (with `env` on top of the run's) and puts it behind the balancer. */
  async spawn(env: Record<string, string> = {}): Promise<Node> {
    const label = `n${++this.spawned}`;
    const proc = await spawnNode({
      DATABASE_URL: this.dbUrl,
      REDIS_URL: `redis://127.0.0.1:${this.proxy.port}`,
      METER_TICK_MS: String(TIMING.tickMs),
      HEARTBEAT_INTERVAL_MS: String(TIMING.heartbeatIntervalMs),
      HEARTBEAT_GRACE_MS: String(TIMING.heartbeatGraceMs),
      CLUSTER_LEASE_MS: String(TIMING.leaseMs),
      ...env,
    });
    const node: Node = { proc, label, expectedExit: false, stopped: false, stderr: '' };
    proc.child.stderr!.on('data', (d: Buffer) => (node.stderr = (node.stderr + d.toString()).slice(-4000)));
    void proc.exited.then((code) => {
      this.nodes = this.nodes.filter((n) => n !== node);
      this.lb.backends = this.lb.backends.filter((p) => p !== proc.port);
      if (node.expectedExit) return;
      this.crashes.push({
        node: label,
        code,
        signal: proc.child.signalCode,
        scenario: this.scenario,
        stderr: node.stderr,
        lastLines: proc.lines.slice(-5).map((l) => JSON.stringify(l).slice(0, 300)),
      });
    });
    this.nodes.push(node);
    this.all.push(node);
    this.lb.backends.push(proc.port);
    return node;
  }

  /** Ensures `n` nodes run (spawning the missing ones together) and the shards are spread over them. */
  async ensure(n: number, env: Record<string, string> = {}): Promise<void> {
    const missing = n - this.nodes.length;
    if (missing > 0) await Promise.all(Array.from({ length: missing }, () => this.spawn(env)));
    await this.waitSpread();
  }

  /** Waits until every live node holds live leases and no one else does. */
  async waitSpread(ms = 20_000): Promise<void> {
    await eventually(async () => {
      const rows: Array<{ owner: string | null; n: number }> = await this.ds.query(
        `SELECT owner, count(*)::int AS n FROM settlement_shards WHERE expires_at > clock_timestamp() GROUP BY owner`,
      );
      const ids = new Set(this.live.map((x) => x.proc.nodeId));
      return rows.length === ids.size && rows.every((r) => r.owner && ids.has(r.owner)) && rows.reduce((s, r) => s + r.n, 0) === 64;
    }, ms, 100);
  }

  /** SIGKILL or SIGTERM, as the run's own doing; resolves when it exited. */
  async kill(node: Node, signal: 'SIGKILL' | 'SIGTERM'): Promise<number | null> {
    node.expectedExit = true;
    node.proc.kill(signal);
    return node.proc.exited;
  }

  /** SIGSTOP: out of the balancer until `resume`. */
  pause(node: Node): void {
    node.stopped = true;
    this.lb.backends = this.lb.backends.filter((p) => p !== node.proc.port);
    node.proc.kill('SIGSTOP');
  }

  resume(node: Node): void {
    node.proc.kill('SIGCONT');
    node.stopped = false;
    this.lb.backends.push(node.proc.port);
  }

  /** The HTTP API of a live node. */
  api(method: string, path: string, body?: unknown): Promise<{ status: number; body: any }> {
    const live = this.live;
    if (!live.length) throw new Error('no live node');
    return live[Math.floor(Math.random() * live.length)]!.proc.api(method, path, body);
  }

  /** Each shard's live lease holder (node id). */
  async shardOwners(): Promise<Map<number, string | null>> {
    const rows: Array<{ shard: number; owner: string | null }> = await this.ds.query(
      `SELECT shard, owner FROM settlement_shards WHERE expires_at > clock_timestamp()`,
    );
    return new Map(rows.map((r) => [r.shard, r.owner]));
  }

  /** The node id holding each chat's shard lease now (null: none). */
  async settlers(chatIds: string[]): Promise<Map<string, string | null>> {
    const owners = await this.shardOwners();
    return new Map(chatIds.map((id) => [id, owners.get(shardOf(id)) ?? null]));
  }

  /** When a node last renewed its membership (epoch ms), or null once it was taken for dead. */
  async lastSeen(nodeId: string): Promise<number | null> {
    const [row] = await this.ds.query(`SELECT (extract(epoch FROM seen_at) * 1000)::float8 AS at FROM cluster_nodes WHERE node_id = $1`, [nodeId]);
    return row ? Number(row.at) : null;
  }

  /** Runs `sql` over a connection to DATABASE_URL's own database (the one throwaway databases are made from). */
  async admin<T = unknown>(sql: string, params: unknown[] = []): Promise<T[]> {
    const c = new pg.Client({ connectionString: this.adminUrl, application_name: 'chatmeter-faults-admin' });
    await c.connect();
    try {
      return (await c.query(sql, params)).rows as T[];
    } finally {
      await c.end();
    }
  }

  async close(): Promise<void> {
    for (const n of this.nodes) n.expectedExit = true;
    await Promise.all(
      this.nodes.map(async (n) => {
        n.proc.kill('SIGCONT');
        n.proc.kill('SIGKILL');
        await n.proc.exited;
      }),
    );
    await this.lb.close().catch(() => undefined);
    await this.proxy.close().catch(() => undefined);
    await this.redis.stop().catch(() => undefined);
    await this.admin(`ALTER DATABASE ${this.dbName} ALLOW_CONNECTIONS true`).catch(() => undefined);
    if (this.ds.isInitialized) await this.ds.destroy().catch(() => undefined);
    await this.dropDb().catch(() => undefined);
  }
}
