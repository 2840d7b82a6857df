/**
 * Presence for many nodes that survives losing Redis. Every change goes to this
 * node's own `LocalPresence` and to the shared `RedisPresence`; reads come from
 * the shared store, which sees every node's sockets. While Redis is down (or not
 * yet caught up after it returns) the store is *degraded*: reads come from the
 * local copy, which knows only this node's sockets, and the ticker settles only
 * the chats those sockets keep present (SPEC 6: each node keeps metering the
 * users present on it). When Redis returns, the sockets that left meanwhile are
 * ended there at the instant they left, and this node's sockets are copied back,
 * before the shared store is trusted again.
 */
import type { Logger } from '../log.js';
import type { LocalPresence, PresenceStore, SharedPresence } from './presence.js';
import type { PresenceSpan } from './rules.js';

/** Local presence mirrored into Redis, falling back to the local copy while Redis is away. */
export class MirroredPresence implements PresenceStore {
  private synced = false;
  private resyncing: Promise<void> | null = null;
  /** Leaves Redis has not heard of (it was down), in the order they happened. */
  private unsentLeaves: Array<{ chatId: string; socketId: string; at: number }> = [];

  constructor(
    private readonly local: LocalPresence,
    private readonly shared: SharedPresence,
    /** True while the Redis client is connected. */
    private readonly redisReady: () => boolean,
    private readonly log: Logger,
    private readonly onDegraded: (degraded: boolean) => void = () => {},
  ) {}

  /** True while reads come from this node's sockets only. */
  get degraded(): boolean {
    return !(this.synced && this.redisReady());
  }

  /** Redis (re)connected: copy this node's sockets into it, then trust it again. */
  resync(now: () => number): Promise<void> {
    this.resyncing ??= (async () => {
      try {
        const at = now();
        // a socket that left while Redis was down would otherwise stay present there until its heartbeat
        // lapsed, and its chat be billed for the seconds after the user left (the simulation found it)
        const leaves = this.unsentLeaves;
        this.unsentLeaves = [];
        try {
          // each ends its socket where it left (a socket's leave is its own): pipelined like the copy below
          await Promise.all(leaves.map((l) => this.shared.leave(l.chatId, l.socketId, l.at)));
        } catch (err) {
          this.unsentLeaves = [...leaves, ...this.unsentLeaves];
          throw err;
        }
        // concurrent commands are pipelined by the client: thousands of sockets take a few round trips
        await Promise.all([...this.local.joined()].map(({ chatId, socketId, heartbeatAt }) => this.shared.join(chatId, socketId, Math.min(heartbeatAt, at))));
        this.synced = true;
        this.onDegraded(false);
        this.log.info({}, 'presence shared through Redis again');
      } catch (err) {
        this.log.warn({ err }, 'copying presence back into Redis failed; still local only');
      }
    })().finally(() => {
      this.resyncing = null;
    });
    return this.resyncing;
  }

  /** Redis went away: reads fall back to this node's sockets until the next resync. */
  lost(): void {
    if (this.synced) this.log.warn({}, 'presence degraded to this node\'s sockets while Redis is down');
    this.synced = false;
    this.onDegraded(true);
  }

  /**
   * This node is going away: every socket of it stops counting at `now` in the shared
   * store, so the chats' settlers stop those meters there instead of at the heartbeats' lapse.
   */
  async releaseAll(now: number): Promise<void> {
    await Promise.all(
      [...this.local.joined()].map(async ({ chatId, socketId }) => {
        await this.local.leave(chatId, socketId, now);
        await this.tryShared(() => this.shared.leave(chatId, socketId, now));
      }),
    );
  }

  /**
   * Another node died at `at` without leaving: its sockets stop counting then. Returns
   * the chats whose presence that ended (nothing while Redis is down: its sockets lapse).
   */
  async releaseNode(nodeId: string, at: number): Promise<string[]> {
    return (await this.tryShared(() => this.shared.releaseNode(nodeId, at))) ?? [];
  }

  /** True while this node's own sockets keep the user present in the chat. */
  presentHere(chatId: string, now: number): boolean {
    return this.local.presentAt(chatId, now);
  }

  /** Runs `op` on the shared store unless degraded; null when it did not (or failed). */
  private async tryShared<T>(op: () => Promise<T>): Promise<T | null> {
    if (this.degraded) return null;
    try {
      return await op();
    } catch (err) {
      this.log.warn({ err }, 'shared presence failed; using this node\'s');
      this.lost();
      return null;
    }
  }

  async join(chatId: string, socketId: string, now: number): Promise<boolean> {
    const local = await this.local.join(chatId, socketId, now);
    return (await this.tryShared(() => this.shared.join(chatId, socketId, now))) ?? local;
  }

  async heartbeat(chatId: string, socketId: string, now: number): Promise<boolean | null> {
    // which sockets joined is this node's knowledge: a socket that joined while Redis was away joins it now
    const local = await this.local.heartbeat(chatId, socketId, now);
    if (local === null) return null;
    return (await this.tryShared(() => this.shared.join(chatId, socketId, now))) ?? local;
  }

  async leave(chatId: string, socketId: string, now: number): Promise<boolean> {
    const local = await this.local.leave(chatId, socketId, now);
    const shared = await this.tryShared(() => this.shared.leave(chatId, socketId, now));
    if (shared === null) this.unsentLeaves.push({ chatId, socketId, at: now });
    return shared ?? local;
  }

  async span(chatId: string, now: number): Promise<PresenceSpan | null> {
    return (await this.spans([chatId], now)).get(chatId) ?? null;
  }

  async spans(chatIds: string[], now: number): Promise<Map<string, PresenceSpan | null>> {
    return (await this.tryShared(() => this.shared.spans(chatIds, now))) ?? this.local.spans(chatIds);
  }

  forget(chatId: string): void {
    this.local.forget(chatId);
    if (!this.degraded) this.shared.forget(chatId);
  }

  async release(chatId: string, asOf: number): Promise<void> {
    await this.local.release(chatId, asOf);
    if (!this.degraded) await this.shared.release(chatId, asOf);
  }
}
