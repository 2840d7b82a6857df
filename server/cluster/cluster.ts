/**
 * Who settles which chat on the clock. Any node may settle any chat for a command
 * or a presence change (settlement is row-locked and moves a forward-only billing
 * instant, so that never bills twice); the ticks of each active chat come from
 * one node at a time, the holder of its shard's lease. Behind this interface: a
 * single node holds everything (`LocalCluster`), many nodes share leases in
 * Postgres (`PostgresCluster`); one contract suite runs over both.
 */
import { SHARDS } from './shards.js';

/**
 * The leases a settlement runs under. The settlement transaction checks them
 * against `settlement_shards` and settles nothing of a shard whose lease this
 * node no longer holds at that epoch: a node that paused past its lease commits nothing.
 */
export interface Fence {
  owner: string;
  /** Shard → epoch (a bigint, as Postgres returns it: a decimal string). */
  epochs: ReadonlyMap<number, string>;
}

/**
 * The clock leases are measured with, in epoch ms. In production there is none: the
 * database's `clock_timestamp()` is the one clock every node agrees on. A test that
 * runs several nodes on a fake clock injects one, so a run replays exactly.
 */
export type LeaseClock = () => number;

/**
 * The lease clock's now as SQL: `clock_timestamp()` without an injected clock; with
 * one, its instant as the next parameter (pushed onto `params`).
 */
export function leaseNow(clock: LeaseClock | undefined, params: unknown[]): string {
  if (!clock) return 'clock_timestamp()';
  params.push(new Date(clock()).toISOString());
  return `$${params.length}::timestamptz`;
}

/** What the cluster reports to /metrics and /readyz. */
export interface ClusterStatus {
  /** Shards this node holds a lease on. */
  shards: number;
  /** Live nodes this node sees, itself included. */
  nodes: number;
}

/** Membership and settlement leases of one node. */
export interface Cluster {
  readonly nodeId: string;
  /**
   * Joins the cluster and takes what shards are free before resolving (alone: all of them);
   * a node joining others gets its share as they hand it over, within a renewal.
   */
  start(): Promise<void>;
  /**
   * Of these chats, the ones this node settles on its schedule, and the fence to
   * settle them under (null when there is nothing to fence: a single node).
   */
  claim(chatIds: string[]): { chatIds: string[]; fence: Fence | null };
  /** The fence refused these shards (this node paused past their leases): stop settling them. */
  lost(shards: number[]): void;
  /** Look at the cluster again now: another node joined or left. */
  poke(): void;
  /** Hands every lease over at once (not at expiry) and leaves; claims nothing afterwards. */
  leave(): Promise<void>;
  /** Calls `fn` with the shards this node newly holds (to look for their active chats). */
  onAcquired(fn: (shards: number[]) => void): void;
  /**
   * Calls `fn` when this node finds that another died without leaving (exactly one node
   * is told of each), with the last instant it was seen alive (the database's clock, epoch ms).
   */
  onDeparted(fn: (nodeId: string, lastSeen: number) => void): void;
  /** Calls `fn` when another node had taken this one for dead (ending its presence) and it is back. */
  onRejoined(fn: () => void): void;
  status(): ClusterStatus;
}

/** One node: it settles every chat, and nothing needs fencing. */
export class LocalCluster implements Cluster {
  private member = false;

  constructor(readonly nodeId: string) {}

  async start(): Promise<void> {
    this.member = true;
  }

  claim(chatIds: string[]): { chatIds: string[]; fence: Fence | null } {
    return { chatIds: this.member ? chatIds : [], fence: null };
  }

  lost(): void {
    // nothing is fenced on one node
  }

  poke(): void {
    // nobody else to look at
  }

  async leave(): Promise<void> {
    this.member = false;
  }

  onAcquired(): void {
    // a single node holds everything from the start
  }

  onDeparted(): void {
    // no other node to outlive
  }

  onRejoined(): void {
    // no other node to take this one for dead
  }

  status(): ClusterStatus {
    return { shards: this.member ? SHARDS : 0, nodes: this.member ? 1 : 0 };
  }
}
