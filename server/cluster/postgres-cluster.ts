/**
 * Membership and settlement leases in Postgres, the one store every node already
 * trusts with money: the database is both the lock service and the fence, and its
 * clock (`clock_timestamp()`) is the only one leases are measured with (a test may
 * inject another, `leaseClock`, to run nodes on a fake clock).
 *
 * Every `leaseMs / 3` a node renews its row in `cluster_nodes`, reads the live
 * nodes, works out by rendezvous hashing which shards should be its own, renews
 * those it holds, releases at once those that should move to another node, and
 * takes those that are free or expired (bumping their epoch). A shard nobody
 * wants (views that disagree for a moment) is adopted by anyone once it has been
 * expired for a whole lease. A node that dies stops renewing: within one lease
 * its shards expire and the nodes that should have them take them over.
 */
import type { DataSource } from 'typeorm';
import { updateReturning } from '../db.js';
import type { Logger } from '../log.js';
import type { Clock } from '../clock.js';
import { type Cluster, type ClusterStatus, type Fence, type LeaseClock, leaseNow } from './cluster.js';
import { SHARDS, ownerOf, shardOf } from './shards.js';

/** What the cluster reports to metrics. */
export interface ClusterMetrics {
  leasesAcquired(n: number): void;
  leasesLost(n: number): void;
  reconcileFailed(): void;
}

/** Options of a node's membership. */
export interface PostgresClusterOptions {
  nodeId: string;
  /** How long a lease (and a node's membership) lasts without renewal. */
  leaseMs: number;
  log: Logger;
  metrics: ClusterMetrics;
  /** A monotonic clock in ms (default `performance.now`), for tests. */
  monotonic?: () => number;
  /**
   * For tests only: leases measured with this clock instead of the database's
   * `clock_timestamp()` (the settlement fence must be given the same one).
   */
  leaseClock?: LeaseClock;
  /** For tests only: the timers renewals are scheduled on (default the process's). */
  timers?: Pick<Clock, 'setTimeout' | 'clearTimeout'>;
}

/** Membership and leases shared by every node on one database. */
export class PostgresCluster implements Cluster {
  readonly nodeId: string;
  private readonly held = new Map<number, string>();
  private readonly listeners: Array<(shards: number[]) => void> = [];
  private readonly departures: Array<(nodeId: string, lastSeen: number) => void> = [];
  private readonly rejoins: Array<() => void> = [];
  private joined = false;
  private nodes: string[] = [];
  private timer: unknown = null;
  private running: Promise<void> | null = null;
  private again = false;
  private member = false;
  /** When this node last renewed its membership (monotonic ms). */
  private lastRenewal = -Infinity;
  /** Before this (monotonic ms), this node takes no other for dead: it was cut off itself, and so were they. */
  private sweepFrom = -Infinity;

  constructor(
    private readonly ds: DataSource,
    private readonly opts: PostgresClusterOptions,
  ) {
    this.nodeId = opts.nodeId;
  }

  private get interval(): string {
    return `${this.opts.leaseMs} milliseconds`;
  }

  async start(): Promise<void> {
    this.member = true;
    await this.reconcile();
    this.schedule();
  }

  claim(chatIds: string[]): { chatIds: string[]; fence: Fence | null } {
    const mine = chatIds.filter((id) => this.held.has(shardOf(id)));
    return { chatIds: mine, fence: { owner: this.nodeId, epochs: new Map(this.held) } };
  }

  lost(shards: number[]): void {
    const gone = shards.filter((s) => this.held.delete(s));
    if (!gone.length) return;
    this.opts.metrics.leasesLost(gone.length);
    this.opts.log.warn({ shards: gone }, 'settlement leases lost; another node settles these chats now');
    this.poke();
  }

  poke(): void {
    if (!this.member) return;
    void this.reconcile();
  }

  async leave(): Promise<void> {
    this.member = false;
    if (this.timer !== null) this.clearTimer(this.timer);
    this.timer = null;
    await this.running;
    this.held.clear();
    // expired now, not in a lease's time: the nodes that should have these shards take them at their next look
    await this.handOver();
    await this.ds.query(`DELETE FROM cluster_nodes WHERE node_id = $1`, [this.nodeId]);
    this.opts.log.info({}, 'left the cluster; leases handed over');
  }

  onAcquired(fn: (shards: number[]) => void): void {
    this.listeners.push(fn);
  }

  onDeparted(fn: (nodeId: string, lastSeen: number) => void): void {
    this.departures.push(fn);
  }

  /** Calls `fn` when another node had taken this one for dead (its presence was ended) and it is back. */
  onRejoined(fn: () => void): void {
    this.rejoins.push(fn);
  }

  status(): ClusterStatus {
    return { shards: this.held.size, nodes: this.nodes.length };
  }

  private schedule(): void {
    if (!this.member) return;
    const renew = () => {
      this.timer = null;
      void this.reconcile().finally(() => this.schedule());
    };
    const ms = Math.max(50, Math.floor(this.opts.leaseMs / 3));
    if (this.opts.timers) this.timer = this.opts.timers.setTimeout(renew, ms);
    else this.timer = setTimeout(renew, ms).unref();
  }

  private clearTimer(handle: unknown): void {
    if (this.opts.timers) this.opts.timers.clearTimeout(handle);
    else clearTimeout(handle as NodeJS.Timeout);
  }

  /** `sql` with every `NOW` replaced by the lease clock's now (the database's, unless a test injected one). */
  private leaseSql(sql: string, params: unknown[]): [string, unknown[]] {
    const all = [...params];
    const now = sql.includes('NOW') ? leaseNow(this.opts.leaseClock, all) : '';
    return [sql.replaceAll('NOW', now), all];
  }

  /** These leases of this node (default all) expire now, unowned: whoever should have them takes them at its next look. */
  private async handOver(shards?: number[]): Promise<void> {
    await this.ds.query(
      ...this.leaseSql(
        `UPDATE settlement_shards SET owner = NULL, expires_at = NOW WHERE owner = $1${shards ? ' AND shard = ANY($2::int[])' : ''}`,
        shards ? [this.nodeId, shards] : [this.nodeId],
      ),
    );
  }

  /** One look at the cluster; concurrent calls run it once more after the current one. */
  private reconcile(): Promise<void> {
    if (this.running) {
      this.again = true;
      return this.running;
    }
    this.running = (async () => {
      do {
        this.again = false;
        try {
          await this.reconcileOnce();
        } catch (err) {
          // the database is unreachable: leases lapse by themselves, and the fence keeps money exact
          this.opts.metrics.reconcileFailed();
          this.opts.log.warn({ err }, 'cluster reconcile failed');
        }
      } while (this.again && this.member);
    })().finally(() => {
      this.running = null;
    });
    return this.running;
  }

  private async reconcileOnce(): Promise<void> {
    if (!this.member) return;
    const { nodeId } = this;
    const [{ inserted }]: Array<{ inserted: boolean }> = await this.ds.query(
      ...this.leaseSql(
        `INSERT INTO cluster_nodes (node_id, started_at, seen_at) VALUES ($1, NOW, NOW)
       ON CONFLICT (node_id) DO UPDATE SET seen_at = NOW
       RETURNING (xmax = 0) AS inserted`,
        [nodeId],
      ),
    );
    if (inserted && this.joined) {
      // another node took this one for dead (it stalled) and ended its sockets' presence: say so, to put it back
      this.opts.log.warn({}, 'this node was taken for dead by another and rejoins the cluster');
      this.emit(this.rejoins);
    }
    const now = (this.opts.monotonic ?? performance.now.bind(performance))();
    // this node couldn't renew for as long as it takes to call a node dead (the database was away, or
    // this node stalled): the others likely couldn't either. Taking them for dead now would end their
    // users' presence at their last renewal and the outage would go unbilled (the fault run found it,
    // docs/RELIABILITY.md): give them as long to come back first
    if (this.joined && now - this.lastRenewal > 3 * this.opts.leaseMs) {
      this.sweepFrom = now + 3 * this.opts.leaseMs;
      this.opts.log.warn({ unrenewedMs: Math.round(now - this.lastRenewal) }, 'renewed after an outage; no node is taken for dead until the others had time to renew');
    }
    this.lastRenewal = now;
    this.joined = true;
    const live: Array<{ node_id: string }> = await this.ds.query(
      ...this.leaseSql(`SELECT node_id FROM cluster_nodes WHERE seen_at > NOW - $1::interval ORDER BY node_id`, [this.interval]),
    );
    // a node unseen for three leases died without leaving (or stalled as long): whoever deletes its
    // row (one node) tells the app, which ends that node's presence. Its leases went after one lease;
    // this waits longer so a node merely slowed by load keeps its sockets' presence
    const gone: Array<{ node_id: string; seen_ms: number }> =
      now < this.sweepFrom
        ? []
        : await updateReturning(
            this.ds,
            ...this.leaseSql(
              `DELETE FROM cluster_nodes WHERE seen_at <= NOW - 3 * $1::interval
          RETURNING node_id, (extract(epoch FROM seen_at) * 1000)::float8 AS seen_ms`,
              [this.interval],
            ),
          );
    for (const g of gone) {
      this.opts.log.warn({ departedNode: g.node_id, lastSeen: new Date(Number(g.seen_ms)).toISOString() }, 'a node died without leaving');
      this.emit(this.departures, g.node_id, Number(g.seen_ms));
    }
    const nodes = live.map((r) => r.node_id);
    if (!nodes.includes(nodeId)) nodes.push(nodeId);
    this.nodes = nodes;
    const mine: number[] = [];
    for (let s = 0; s < SHARDS; s++) if (ownerOf(s, nodes) === nodeId) mine.push(s);
    const mineSet = new Set(mine);
    const keep = [...this.held.keys()].filter((s) => mineSet.has(s));
    const release = [...this.held.keys()].filter((s) => !mineSet.has(s));

    // renew what stays; a lease that expired meanwhile is not renewed but taken again below, with a new epoch
    const renewed: Array<{ shard: number; epoch: string }> = keep.length
      ? await updateReturning(
          this.ds,
          ...this.leaseSql(
            `UPDATE settlement_shards SET expires_at = NOW + $3::interval
            WHERE owner = $1 AND shard = ANY($2::int[]) AND expires_at > NOW
        RETURNING shard, epoch`,
            [nodeId, keep, this.interval],
          ),
        )
      : [];
    const stillHeld = new Set(renewed.map((r) => r.shard));
    const lapsed = keep.filter((s) => !stillHeld.has(s));
    for (const s of lapsed) this.held.delete(s);
    if (lapsed.length) {
      this.opts.metrics.leasesLost(lapsed.length);
      this.opts.log.warn({ shards: lapsed }, 'settlement leases expired before renewal');
    }
    if (release.length) {
      for (const s of release) this.held.delete(s);
      await this.handOver(release);
      this.opts.log.info({ shards: release.length, nodes: nodes.length }, 'settlement leases handed over');
    }

    const want = mine.filter((s) => !this.held.has(s));
    // FOR UPDATE first: a takeover waits for the settlements in flight under the old lease (their
    // fence holds the rows FOR KEY SHARE), and the epoch it bumps refuses the later ones
    const acquired: Array<{ shard: number; epoch: string }> = await updateReturning(
      this.ds,
      ...this.leaseSql(
        `UPDATE settlement_shards s SET owner = $1, epoch = s.epoch + 1, expires_at = NOW + $3::interval
        WHERE s.shard IN (
          SELECT shard FROM settlement_shards
           WHERE (shard = ANY($2::int[]) AND (owner IS NULL OR expires_at <= NOW))
              OR expires_at <= NOW - $3::interval
           ORDER BY shard FOR UPDATE)
          AND ((s.shard = ANY($2::int[]) AND (s.owner IS NULL OR s.expires_at <= NOW))
              OR s.expires_at <= NOW - $3::interval)
    RETURNING s.shard, s.epoch`,
        [nodeId, want, this.interval],
      ),
    );
    if (!this.member) {
      // left while this ran: give back at once what was just taken
      if (acquired.length) await this.handOver();
      return;
    }
    if (acquired.length) {
      for (const r of acquired) this.held.set(r.shard, String(r.epoch));
      this.opts.metrics.leasesAcquired(acquired.length);
      this.opts.log.info({ shards: acquired.map((r) => r.shard), held: this.held.size, nodes: nodes.length }, 'settlement leases acquired');
      this.emit(this.listeners, acquired.map((r) => r.shard));
    }
  }

  private emit<A extends unknown[]>(listeners: Array<(...args: A) => void>, ...args: A): void {
    for (const fn of listeners) {
      try {
        fn(...args);
      } catch (err) {
        this.opts.log.error({ err }, 'cluster listener failed');
      }
    }
  }
}
