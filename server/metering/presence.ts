/**
 * Who is present in which chat (rule 5). Only the chat's user counts: an advisor's
 * sockets never keep a meter running. Behind an interface so a Redis-backed store
 * can share presence across nodes; every method is async for that reason.
 */
import type { PresenceSpan } from './rules.js';

/** Presence of users in chats, as sockets join, heartbeat, leave and disconnect. */
export interface PresenceStore {
  /** A socket of the chat's user joined the chat; counts as a heartbeat. True when presence (re)started. */
  join(chatId: string, socketId: string, now: number): Promise<boolean>;
  /** A heartbeat of a joined socket. Returns null when the socket has not joined; else whether presence (re)started. */
  heartbeat(chatId: string, socketId: string, now: number): Promise<boolean | null>;
  /** The socket left the chat (or disconnected). True when it was the user's last present socket there. */
  leave(chatId: string, socketId: string, now: number): Promise<boolean>;
  /** The current (or latest) span of presence in the chat; null when never seen. */
  span(chatId: string, now: number): Promise<PresenceSpan | null>;
  /** Spans of many chats at once (one round trip on a shared store). */
  spans(chatIds: string[], now: number): Promise<Map<string, PresenceSpan | null>>;
  /** Drops everything known of an ended chat. */
  forget(chatId: string): void;
  /**
   * Drops a chat's presence if no socket of it is joined and nobody joined or
   * heartbeat after `asOf` (the instant a settlement found the chat pending): a
   * pending chat everyone left has nothing to bill, and would otherwise be
   * remembered until it ends. Presence newer than `asOf` is kept, in case the chat
   * started meanwhile.
   */
  release(chatId: string, asOf: number): Promise<void>;
}

/**
 * Presence every node shares (Redis in production): it also knows each node's sockets,
 * so a node can end those of another that died.
 */
export interface SharedPresence extends PresenceStore {
  /**
   * Another node died at `at` without leaving: its sockets stop counting then. Returns
   * the chats whose presence that ended.
   */
  releaseNode(nodeId: string, at: number): Promise<string[]>;
}

/** How long a heartbeat keeps a socket present: interval plus grace. */
export interface PresenceTiming {
  heartbeatIntervalMs: number;
  heartbeatGraceMs: number;
}

interface ChatPresence {
  /** Joined sockets and their latest heartbeat. */
  sockets: Map<string, number>;
  since: number;
  /** The end of presence contributed by sockets that already left. */
  closedUntil: number;
  lastHeartbeatAt: number;
}

/** Presence in this process's memory: one node. */
export class LocalPresence implements PresenceStore {
  private readonly chats = new Map<string, ChatPresence>();

  constructor(private readonly timing: PresenceTiming) {}

  private get ttl(): number {
    return this.timing.heartbeatIntervalMs + this.timing.heartbeatGraceMs;
  }

  private until(p: ChatPresence): number {
    let until = p.closedUntil;
    for (const hb of p.sockets.values()) until = Math.max(until, hb + this.ttl);
    return until;
  }

  private touch(chatId: string, socketId: string, now: number): boolean {
    let p = this.chats.get(chatId);
    const restarted = !p || this.until(p) <= now;
    if (!p) {
      p = { sockets: new Map(), since: now, closedUntil: -Infinity, lastHeartbeatAt: now };
      this.chats.set(chatId, p);
    } else if (restarted) {
      // a new span: what came before it is a gap, never billed
      p.since = now;
      p.closedUntil = -Infinity;
      for (const id of p.sockets.keys()) p.sockets.set(id, -Infinity);
    }
    p.sockets.set(socketId, now);
    p.lastHeartbeatAt = now;
    return restarted;
  }

  async join(chatId: string, socketId: string, now: number): Promise<boolean> {
    return this.touch(chatId, socketId, now);
  }

  async heartbeat(chatId: string, socketId: string, now: number): Promise<boolean | null> {
    if (!this.chats.get(chatId)?.sockets.has(socketId)) return null;
    return this.touch(chatId, socketId, now);
  }

  async leave(chatId: string, socketId: string, now: number): Promise<boolean> {
    const p = this.chats.get(chatId);
    const hb = p?.sockets.get(socketId);
    if (!p || hb === undefined) return false;
    const wasPresent = this.until(p) > now;
    p.sockets.delete(socketId);
    // the socket stops counting now, or earlier if its heartbeats had already lapsed
    p.closedUntil = Math.max(p.closedUntil, Math.min(now, hb + this.ttl));
    return wasPresent && this.until(p) <= now;
  }

  async span(chatId: string): Promise<PresenceSpan | null> {
    const p = this.chats.get(chatId);
    if (!p) return null;
    return { since: p.since, until: this.until(p), lastHeartbeatAt: p.lastHeartbeatAt };
  }

  async spans(chatIds: string[]): Promise<Map<string, PresenceSpan | null>> {
    const out = new Map<string, PresenceSpan | null>();
    for (const id of chatIds) out.set(id, await this.span(id));
    return out;
  }

  forget(chatId: string): void {
    this.chats.delete(chatId);
  }

  async release(chatId: string, asOf: number): Promise<void> {
    const p = this.chats.get(chatId);
    if (p && p.sockets.size === 0 && p.lastHeartbeatAt <= asOf) this.chats.delete(chatId);
  }

  /** True while a socket of this store keeps the user present in the chat at `now`. */
  presentAt(chatId: string, now: number): boolean {
    const p = this.chats.get(chatId);
    return p !== undefined && p.since <= now && now < this.until(p);
  }

  /** Every joined socket with its latest heartbeat (to copy them into a shared store). */
  *joined(): Iterable<{ chatId: string; socketId: string; heartbeatAt: number }> {
    for (const [chatId, p] of this.chats) {
      for (const [socketId, heartbeatAt] of p.sockets) if (Number.isFinite(heartbeatAt)) yield { chatId, socketId, heartbeatAt };
    }
  }
}
