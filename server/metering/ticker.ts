/**
 * The clock-driven loop. Every tick settles each metered chat once, spread over
 * the tick in phase buckets (`hash(chatId) % buckets`, each due at its own offset)
 * so database work and pushes flow evenly instead of bursting. Slots are computed
 * from the clock, never by chaining `setTimeout(tick, period)` after work, so ticks
 * don't drift; a slow slot delays the next one instead of overlapping it, and the
 * buckets that fell due meanwhile are settled together right after it.
 */
import type { Clock } from '../clock.js';
import type { Logger } from '../log.js';
import type { PresenceStore } from './presence.js';
import type { SettleItem, SettleOutcome, SettlementService } from './settlement.js';

/** What the ticker reports to metrics. */
export interface TickerMetrics {
  observeSlot(seconds: number, chats: number): void;
  settlementError(): void;
  activeChatsCount(n: number): void;
}

/** The ticker's collaborators. */
export interface TickerDeps {
  clock: Clock;
  engine: SettlementService;
  presence: PresenceStore;
  log: Logger;
  metrics: TickerMetrics;
  /** Sends the outcomes' meters and events to sockets. */
  publish: (outcomes: SettleOutcome[]) => void;
  /** Ids of every chat to meter when the ticker starts (active chats after a restart). */
  loadActiveChatIds: () => Promise<string[]>;
  tickMs: number;
  /** Phase buckets per tick. */
  buckets?: number;
}

/** Settles chats on the clock's schedule and on demand. */
export class Ticker {
  private readonly chats = new Map<string, number>();
  private readonly buckets: number;
  private readonly sliceMs: number;
  private origin = 0;
  /** The next slot to run; slot k is due at origin + k × slice and settles bucket k % buckets. */
  private nextSlot = 1;
  private timer: unknown = null;
  private running: Promise<void> | null = null;
  private soon = new Map<string, Array<{ resolve: (o: SettleOutcome | undefined) => void; reject: (e: unknown) => void }>>();
  private soonTimer: unknown = null;
  private soonFlush: Promise<void> | null = null;
  private stopped = true;
  /** Absence before this instant doesn't count towards abandonment. */
  readonly startedAt: number;

  constructor(private readonly d: TickerDeps) {
    this.buckets = Math.max(1, Math.min(d.buckets ?? 10, d.tickMs));
    this.sliceMs = d.tickMs / this.buckets;
    this.startedAt = d.clock.now();
  }

  /** Loads the chats to meter and starts the schedule. */
  async start(): Promise<void> {
    for (const id of await this.d.loadActiveChatIds()) this.track(id);
    this.stopped = false;
    this.origin = this.d.clock.now();
    this.nextSlot = 1;
    this.schedule();
  }

  /** Stops the schedule and waits for a slot in progress. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer !== null) this.d.clock.clearTimeout(this.timer);
    this.timer = null;
    await this.running;
    if (this.soonTimer !== null) this.d.clock.clearTimeout(this.soonTimer);
    this.soonTimer = null;
    // what was asked for before the stop is settled before it returns
    while (this.soonFlush || this.soon.size) await (this.soonFlush ?? this.flushSoon());
  }

  /** Meters this chat from the next tick on. */
  track(chatId: string): void {
    if (!this.chats.has(chatId)) this.chats.set(chatId, bucketOf(chatId, this.buckets));
    this.d.metrics.activeChatsCount(this.chats.size);
  }

  /** Stops metering this chat. */
  untrack(chatId: string): void {
    this.chats.delete(chatId);
    this.d.metrics.activeChatsCount(this.chats.size);
  }

  /** True while this node meters the chat. */
  tracks(chatId: string): boolean {
    return this.chats.has(chatId);
  }

  /** Chats being metered. */
  get size(): number {
    return this.chats.size;
  }

  /**
   * Settles these chats now (a command, a presence change) and publishes the
   * outcomes. Errors propagate to the caller.
   */
  async settleNow(items: Array<Omit<SettleItem, 'presence'>>): Promise<SettleOutcome[]> {
    const now = this.d.clock.now();
    const spans = await this.d.presence.spans(items.map((i) => i.chatId), now);
    const outcomes = await this.d.engine.settleBatch(
      items.map((i) => ({ ...i, presence: spans.get(i.chatId) ?? null })),
      now,
      { observedSince: this.startedAt },
    );
    this.absorb(outcomes);
    return outcomes;
  }

  /**
   * Settles a chat as soon as possible, together with every other chat asked for
   * meanwhile: a proxy restart that drops thousands of tabs costs a few batches,
   * not one transaction per chat. Resolves with the chat's outcome.
   */
  settleSoon(chatId: string): Promise<SettleOutcome | undefined> {
    // once stopped, nothing waits for a batch: settle at once
    if (this.stopped) return this.settleNow([{ chatId }]).then((o) => o[0]);
    return new Promise((resolve, reject) => {
      const waiters = this.soon.get(chatId) ?? [];
      waiters.push({ resolve, reject });
      this.soon.set(chatId, waiters);
      if (this.soonTimer === null && !this.soonFlush) this.soonTimer = this.d.clock.setTimeout(() => void this.flushSoon(), 0);
    });
  }

  private flushSoon(): Promise<void> {
    this.soonTimer = null;
    const batch = this.soon;
    this.soon = new Map();
    this.soonFlush = (async () => {
      const { outcomes, failures } = await this.settleMany([...batch.keys()]);
      for (const [id, waiters] of batch) {
        const err = failures.get(id);
        for (const w of waiters) if (err === undefined) w.resolve(outcomes.get(id));
        else w.reject(err);
      }
    })().finally(() => {
      this.soonFlush = null;
      // what arrived while this batch ran goes out as the next one
      if (this.soon.size && !this.stopped) this.soonTimer = this.d.clock.setTimeout(() => void this.flushSoon(), 0);
    });
    return this.soonFlush;
  }

  /** Settles every metered chat once (at shutdown), carrying on past a failed batch. */
  async settleAll(): Promise<void> {
    await this.settleMany([...this.chats.keys()]);
  }

  private absorb(outcomes: SettleOutcome[]): void {
    for (const o of outcomes) {
      if (!o.ok) continue;
      if (o.meter.state === 'ended') {
        this.untrack(o.chatId);
        this.d.presence.forget(o.chatId);
      }
      else if (o.meter.state !== 'pending') this.track(o.chatId);
    }
    this.d.publish(outcomes);
  }

  /**
   * Waits for the next slot due after the last one run. When a slot overran and
   * later slots fell due meanwhile, their buckets are settled together in one
   * batch: no bucket is ever skipped, so every chat is settled at least once a tick.
   */
  private schedule(): void {
    if (this.stopped) return;
    const now = this.d.clock.now();
    const due = this.origin + this.nextSlot * this.sliceMs;
    this.timer = this.d.clock.setTimeout(() => {
      this.timer = null;
      const current = Math.floor((this.d.clock.now() - this.origin) / this.sliceMs);
      // at most one whole tick of buckets at once: every bucket once
      const first = Math.max(this.nextSlot, current - this.buckets + 1);
      const buckets = new Set<number>();
      for (let slot = first; slot <= current; slot++) buckets.add(slot % this.buckets);
      this.nextSlot = current + 1;
      this.running = this.runSlot(buckets).finally(() => {
        this.running = null;
        this.schedule();
      });
    }, Math.max(0, due - now));
  }

  private async runSlot(buckets: Set<number>): Promise<void> {
    const ids: string[] = [];
    for (const [id, b] of this.chats) if (buckets.has(b)) ids.push(id);
    if (ids.length === 0) return;
    const started = performance.now();
    try {
      await this.settleMany(ids);
    } finally {
      this.d.metrics.observeSlot((performance.now() - started) / 1000, ids.length);
    }
  }

  /**
   * Settles chats in batches of 500. A batch the database refuses for its data (not
   * for being down) is halved and retried, so one bad chat can't stop the others
   * and the log names it. Never throws: returns each chat's outcome or error.
   */
  private async settleMany(ids: string[]): Promise<{ outcomes: Map<string, SettleOutcome>; failures: Map<string, unknown> }> {
    const outcomes = new Map<string, SettleOutcome>();
    const failures = new Map<string, unknown>();
    const run = async (part: string[]): Promise<void> => {
      try {
        for (const o of await this.settleNow(part.map((chatId) => ({ chatId })))) outcomes.set(o.chatId, o);
      } catch (err) {
        if (part.length > 1 && refusedForData(err)) {
          const half = Math.ceil(part.length / 2);
          await run(part.slice(0, half));
          await run(part.slice(half));
          return;
        }
        for (const id of part) failures.set(id, err);
        this.d.metrics.settlementError();
        this.d.log.error({ err, chats: part.length, chatIds: part.slice(0, 20), ...(part.length === 1 ? { chatId: part[0] } : {}) }, 'settlement failed');
      }
    };
    for (let i = 0; i < ids.length; i += 500) await run(ids.slice(i, i + 500));
    return { outcomes, failures };
  }
}

/** True when Postgres refused the statement for its data (SQLSTATE class 22 or 23), not its availability. */
function refusedForData(err: unknown): boolean {
  const code = (err as { driverError?: { code?: unknown }; code?: unknown } | null)?.driverError?.code ?? (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' && (code.startsWith('22') || code.startsWith('23'));
}

/** A stable bucket for a chat id (FNV-1a). */
export function bucketOf(chatId: string, buckets: number): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < chatId.length; i++) {
    h ^= chatId.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return (h >>> 0) % buckets;
}
