/**
 * The simulation's stand-in for Redis presence: one in-memory store every logical
 * node shares, which the scheduler can make unreachable (Redis down: every call
 * fails) or wipe (Redis restarted without persistence). Chat spans follow the same
 * rules as `LocalPresence`, and the presence contract suite runs against it
 * (test/presence.unit.test.ts), as it does against `RedisPresence`.
 */
import { LocalPresence, type PresenceTiming, type SharedPresence } from '../../server/metering/presence.js';
import type { PresenceSpan } from '../../server/metering/rules.js';

/** The shared store; each node talks to it through `view(nodeId)`. */
export class SimPresenceStore {
  private chats: LocalPresence;
  /** Each node's sockets, as `chatId \0 socketId`, so another node can end them if it dies. */
  private readonly nodes = new Map<string, Set<string>>();
  /** False while the store is unreachable. */
  up = true;

  constructor(private readonly timing: PresenceTiming) {
    this.chats = new LocalPresence(timing);
  }

  /** Every call fails from now on, until `restore`. */
  lose(): void {
    this.up = false;
  }

  /** Reachable again; with `wiped`, empty (a Redis restarted without persistence). */
  restore(wiped = false): void {
    this.up = true;
    if (wiped) {
      this.chats = new LocalPresence(this.timing);
      this.nodes.clear();
    }
  }

  /** The store as node `nodeId` sees it. */
  view(nodeId: string): SharedPresence {
    return new SimPresenceView(this, nodeId);
  }

  /** Runs `op` on the chats, or fails as an unreachable Redis does. */
  async call<T>(op: (chats: LocalPresence) => Promise<T>): Promise<T> {
    if (!this.up) throw new Error('shared presence unreachable (simulated Redis outage)');
    return op(this.chats);
  }

  socketsOf(nodeId: string): Set<string> {
    let s = this.nodes.get(nodeId);
    if (!s) this.nodes.set(nodeId, (s = new Set()));
    return s;
  }

  dropNode(nodeId: string): void {
    this.nodes.delete(nodeId);
  }
}

const member = (chatId: string, socketId: string) => `${chatId}\u0000${socketId}`;

/** One node's connection to the shared store. */
class SimPresenceView implements SharedPresence {
  constructor(
    private readonly store: SimPresenceStore,
    private readonly nodeId: string,
  ) {}

  join(chatId: string, socketId: string, now: number): Promise<boolean> {
    return this.store.call(async (chats) => {
      this.store.socketsOf(this.nodeId).add(member(chatId, socketId));
      return chats.join(chatId, socketId, now);
    });
  }

  heartbeat(chatId: string, socketId: string, now: number): Promise<boolean | null> {
    return this.store.call(async (chats) => {
      const r = await chats.heartbeat(chatId, socketId, now);
      if (r !== null) this.store.socketsOf(this.nodeId).add(member(chatId, socketId));
      return r;
    });
  }

  leave(chatId: string, socketId: string, now: number): Promise<boolean> {
    return this.store.call(async (chats) => {
      this.store.socketsOf(this.nodeId).delete(member(chatId, socketId));
      return chats.leave(chatId, socketId, now);
    });
  }

  span(chatId: string, now: number): Promise<PresenceSpan | null> {
    return this.store.call((chats) => chats.span(chatId));
  }

  spans(chatIds: string[], now: number): Promise<Map<string, PresenceSpan | null>> {
    return this.store.call((chats) => chats.spans(chatIds));
  }

  forget(chatId: string): void {
    // best effort, as Redis's: lost while the store is down
    this.store.call(async (chats) => chats.forget(chatId)).catch(() => undefined);
  }

  release(chatId: string, asOf: number): Promise<void> {
    return this.store.call((chats) => chats.release(chatId, asOf));
  }

  releaseNode(nodeId: string, at: number): Promise<string[]> {
    return this.store.call(async (chats) => {
      const ended = new Set<string>();
      for (const m of this.store.socketsOf(nodeId)) {
        const [chatId, socketId] = m.split('\u0000') as [string, string];
        if (await chats.leave(chatId, socketId, at)) ended.add(chatId);
      }
      this.store.dropNode(nodeId);
      return [...ended];
    });
  }
}
