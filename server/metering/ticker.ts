/**
 * The clock-driven loop. Every tick settles each metered chat once, spread over
 * the tick in phase buckets (`hash(chatId) % buckets`, each due at its own offset)
 * so database work and pushes flow evenly instead of bursting. Slots are computed
 * from the clock, never by chaining `setTimeout(tick, period)` after work, so ticks
 * don't drift; a slow slot delays the next one instead of overlapping it, and the
 * buckets that fell due meanwhile are settled together right after it.
 */
import { type Cluster, type Fence, LocalCluster } from '../cluster/cluster.js';
import { bucketOf } from '../cluster/shards.js';
import type { Clock } from '../clock.js';
import { BusyError, LeaseLostError } from '../errors.js';
import type { Logger } from '../log.js';
import type { PresenceStore } from './presence.js';
import { type Command, isPresent } from './rules.js';
import type { SettleItem, SettleOutcome, SettlementService } from './settlement.js';

export { bucketOf };

/** What the ticker reports to metrics. */
export interface TickerMetrics {
  observeSlot(seconds: number, chats: number): void;
  settlementError(): void;
  activeChatsCount(n: number): void;
  /** How late a slot started after it was due. */
  observeLag?(seconds: number): void;
  /** Chats a settlement refused because this node's lease was gone. */
  fenced?(chats: number): void;
  /** Chats a scheduled settlement skipped because another transaction held their rows. */
  busy?(chats: number): void;
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
  /** Ids of every active chat (at start, after taking leases, and every `rescanMs`). */
  loadActiveChatIds: () => Promise<string[]>;
  tickMs: number;
  /** Phase buckets per tick. */
  buckets?: number;
  /** Which chats this node settles on its schedule, under which fence (default: one node, every chat). */
  cluster?: Cluster;
  /**
   * Chats settled on the schedule even though another node holds their lease: those
   * of this node's own sockets while shared presence is down (the other nodes can't
   * see them), or every chat in a test that forces two settlers.
   */
  settlesUnowned?: (chatId: string) => boolean;
  /**
   * While true (shared presence is down), chats are settled on the schedule only where
   * `settlesUnowned` says so: a node that can't see other nodes' sockets would flip their meters to away.
   */
  localOnly?: () => boolean;
  /**
   * Called with chats that started (or woke up) here: newly tracked, changed by a
   * command or a balance refresh, or running again because their user came back to a
   * socket of this node while another node settles them, so that node wakes them too.
   */
  onTracked?: (chatIds: string[]) => void;
  /** How often to reload the active chats (chats started on another node while the news was lost). */
  rescanMs?: number;
  /**
   * True when a user can come back to an away chat on another node (shared presence). That
   * node wakes the chat here (`onTracked` there, `wake` here); in case its message is lost,
   * the ticks also look up whether an away chat's user is back, every `AWAY_LOOKUP_MS`.
   * Without it a return is seen here (its join or heartbeat settles the chat at once), and
   * an away chat costs nothing a tick.
   */
  sharedPresence?: boolean;
}

/** Settles chats on the clock's schedule and on demand. */
export class Ticker {
  private readonly chats = new Map<string, number>();
  /** The same chats by bucket, so a slot finds its own without walking them all. */
  private readonly byBucket: Array<Set<string>>;
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
  private commands: QueuedCommand[] = [];
  private readonly inflight = new Set<Promise<SettleOutcome[]>>();
  private commandTimer: unknown = null;
  private commandFlush: Promise<void> | null = null;
  /** Chats whose command waits for rows held elsewhere, outside the queue. */
  private readonly waitingCommands = new Set<string>();
  private stopped = true;
  private readonly cluster: Cluster;
  /** Chats that failed on their own (bad data), and when the schedule tries them again. */
  private readonly failing = new Map<string, { failures: number; retryAt: number }>();
  /**
   * Away and paused chats, which cost nothing per tick: the schedule settles them at
   * their abandonment deadline, when presence returns (away), when woken by a command,
   * or every IDLE_RESETTLE_MS as a safety net.
   */
  private readonly idle = new Map<string, { state: 'away' | 'paused'; wakeAt: number; settledAt: number; lookedAt: number }>();
  /** The `now` of each tracked chat's latest absorbed settlement: an older one arriving later is stale. */
  private readonly absorbedAt = new Map<string, number>();
  private rescanTimer: unknown = null;
  private rescanning: Promise<void> | null = null;
  /** Chats tracked while a rescan was reading: kept whatever the rescan read. */
  private trackedDuringRescan: Set<string> | null = null;
  /** Absence before this instant doesn't count towards abandonment. */
  readonly startedAt: number;

  constructor(private readonly d: TickerDeps) {
    this.buckets = Math.max(1, Math.min(d.buckets ?? 10, d.tickMs));
    this.byBucket = Array.from({ length: this.buckets }, () => new Set<string>());
    this.sliceMs = d.tickMs / this.buckets;
    this.startedAt = d.clock.now();
    this.cluster = d.cluster ?? alone();
  }

  /** Loads the chats to meter and starts the schedule. */
  async start(): Promise<void> {
    for (const id of await this.d.loadActiveChatIds()) this.track(id);
    this.stopped = false;
    this.origin = this.d.clock.now();
    this.nextSlot = 1;
    this.schedule();
    if (this.d.rescanMs) this.scheduleRescan(this.d.rescanMs);
  }

  /**
   * Reloads the active chats: those started on another node whose news was lost, and
   * those that ended elsewhere stop being tracked here. Never throws.
   */
  rescan(): Promise<void> {
    if (this.rescanning) return this.rescanning;
    this.trackedDuringRescan = new Set();
    this.rescanning = (async () => {
      try {
        const ids = await this.d.loadActiveChatIds();
        const keep = new Set([...ids, ...this.trackedDuringRescan!]);
        for (const id of [...this.chats.keys()]) if (!keep.has(id)) this.removeChat(id);
        for (const id of keep) this.addChat(id);
        this.d.metrics.activeChatsCount(this.chats.size);
      } catch (err) {
        this.d.log.warn({ err }, 'reloading the active chats failed');
      }
    })().finally(() => {
      this.rescanning = null;
      this.trackedDuringRescan = null;
    });
    return this.rescanning;
  }

  private scheduleRescan(ms: number): void {
    if (this.stopped) return;
    this.rescanTimer = this.d.clock.setTimeout(() => {
      this.rescanTimer = null;
      void this.rescan().finally(() => this.scheduleRescan(ms));
    }, ms);
  }

  /** Stops the schedule and waits for a slot in progress. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer !== null) this.d.clock.clearTimeout(this.timer);
    this.timer = null;
    if (this.rescanTimer !== null) this.d.clock.clearTimeout(this.rescanTimer);
    this.rescanTimer = null;
    await this.running;
    if (this.soonTimer !== null) this.d.clock.clearTimeout(this.soonTimer);
    this.soonTimer = null;
    // what was asked for before the stop is settled before it returns
    while (this.soonFlush || this.soon.size) await (this.soonFlush ?? this.flushSoon());
    if (this.commandTimer !== null) this.d.clock.clearTimeout(this.commandTimer);
    this.commandTimer = null;
    for (;;) {
      if (this.commandFlush) await this.commandFlush;
      else if (this.commands.some((c) => !this.waitingCommands.has(c.chatId))) await this.flushCommands();
      else if (this.commands.length) await Promise.allSettled([...this.inflight]); // behind a command waiting for rows
      else break;
    }
    await this.settled();
  }

  /** Waits for every settlement under way, whoever asked for it. */
  async settled(): Promise<void> {
    while (this.inflight.size) await Promise.allSettled([...this.inflight]);
  }

  private addChat(chatId: string): void {
    if (this.chats.has(chatId)) return;
    const bucket = bucketOf(chatId, this.buckets);
    this.chats.set(chatId, bucket);
    this.byBucket[bucket]!.add(chatId);
  }

  private removeChat(chatId: string): void {
    const bucket = this.chats.get(chatId);
    if (bucket === undefined) return;
    this.chats.delete(chatId);
    this.byBucket[bucket]!.delete(chatId);
  }

  /** Meters this chat from the next tick on (where this node holds its lease). */
  track(chatId: string): void {
    this.trackedDuringRescan?.add(chatId);
    this.addChat(chatId);
    this.d.metrics.activeChatsCount(this.chats.size);
  }

  /** Settles these chats at their next tick, however idle they were (a command changed them elsewhere). */
  wake(chatIds: string[]): void {
    for (const id of chatIds) {
      this.idle.delete(id);
      this.track(id);
    }
  }

  /** Stops metering this chat. */
  untrack(chatId: string): void {
    this.removeChat(chatId);
    this.absorbedAt.delete(chatId);
    this.failing.delete(chatId);
    this.idle.delete(chatId);
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
  settleNow(items: Array<Omit<SettleItem, 'presence'>>, fence: Fence | null = null, skipLocked = false, lockTimeoutMs?: number): Promise<SettleOutcome[]> {
    const settling = this.settleAndPublish(items, fence, skipLocked, lockTimeoutMs);
    // stop() waits for it, whoever asked (a top-up's refresh runs after its response)
    this.inflight.add(settling);
    void settling.catch(() => undefined).finally(() => this.inflight.delete(settling));
    return settling;
  }

  private async settleAndPublish(
    items: Array<Omit<SettleItem, 'presence'>>,
    fence: Fence | null,
    skipLocked: boolean,
    lockTimeoutMs: number | undefined,
  ): Promise<SettleOutcome[]> {
    const now = this.d.clock.now();
    const spans = await this.d.presence.spans(items.map((i) => i.chatId), now);
    const outcomes = await this.d.engine.settleBatch(
      items.map((i) => ({ ...i, presence: spans.get(i.chatId) ?? null })),
      now,
      { observedSince: this.startedAt, fence, skipLocked, lockTimeoutMs },
    );
    const tracked = this.absorb(outcomes, now);
    // the node that settles these chats on the clock hears of new and changed ones, in one message
    for (const i of items) if (i.command || i.refresh) tracked.add(i.chatId);
    if (tracked.size) this.d.onTracked?.([...tracked]);
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

  /**
   * Applies a command, in one transaction with the other commands asked for meanwhile
   * (one per chat a batch: a chat's next command waits for the next). A batch that
   * fails is retried one command at a time, so one chat's failure stays its own; a
   * command whose rows are held elsewhere waits for them alone. Resolves with the
   * chat's outcome.
   */
  settleCommand(chatId: string, command: Command): Promise<SettleOutcome | undefined> {
    if (this.stopped) return this.settleNow([{ chatId, command }]).then((o) => o[0]);
    return new Promise((resolve, reject) => {
      this.commands.push({ chatId, command, resolve, reject });
      if (this.commandTimer === null && !this.commandFlush) this.commandTimer = this.d.clock.setTimeout(() => void this.flushCommands(), 0);
    });
  }

  private flushCommands(): Promise<void> {
    this.commandTimer = null;
    const batch: QueuedCommand[] = [];
    const rest: QueuedCommand[] = [];
    const chats = new Set<string>();
    for (const c of this.commands) {
      // a chat's next command also waits while its previous one waits for rows held elsewhere
      if (chats.has(c.chatId) || this.waitingCommands.has(c.chatId)) rest.push(c);
      else {
        chats.add(c.chatId);
        batch.push(c);
      }
    }
    this.commands = rest;
    // every chat asked for waits behind a command of its own: the one waiting reschedules the queue
    if (!batch.length) return Promise.resolve();
    const settle = async (part: QueuedCommand[]) => {
      // rows held elsewhere (a tick, a stuck transaction) must not hold up the other commands of the node:
      // those commands wait for their rows on their own, outside this queue
      const items = part.map(({ chatId, command }) => ({ chatId, command }));
      const outcomes = new Map((await this.settleNow(items, null, true)).map((o) => [o.chatId, o]));
      for (const c of part) {
        const o = outcomes.get(c.chatId);
        if (o && !o.ok && o.error instanceof BusyError) {
          this.waitingCommands.add(c.chatId);
          this.settleNow([{ chatId: c.chatId, command: c.command }])
            .then((again) => c.resolve(again[0]), c.reject)
            .finally(() => {
              this.waitingCommands.delete(c.chatId);
              if (this.commands.length && this.commandTimer === null && !this.commandFlush && !this.stopped) {
                this.commandTimer = this.d.clock.setTimeout(() => void this.flushCommands(), 0);
              }
            });
        } else c.resolve(o);
      }
    };
    this.commandFlush = (async () => {
      try {
        await settle(batch);
      } catch (err) {
        if (batch.length === 1) return batch[0]!.reject(err);
        for (const c of batch) await settle([c]).catch(c.reject);
      }
    })().finally(() => {
      this.commandFlush = null;
      if (this.commands.length && !this.stopped) this.commandTimer = this.d.clock.setTimeout(() => void this.flushCommands(), 0);
    });
    return this.commandFlush;
  }

  private flushSoon(): Promise<void> {
    this.soonTimer = null;
    const batch = this.soon;
    this.soon = new Map();
    this.soonFlush = (async () => {
      // the tick's one-statement read first; the few chats whose rows are held elsewhere wait for them
      const { outcomes, failures } = await this.settleMany([...batch.keys()], null, { waitForBusy: true });
      this.wakeSettlers([...outcomes.values()]);
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

  /**
   * Chats a presence change here set running while another node settles them on the clock:
   * that node may hold them idle (away) and is told to wake them at once.
   */
  private wakeSettlers(outcomes: SettleOutcome[]): void {
    if (!this.d.sharedPresence || !this.d.onTracked) return;
    const running = outcomes.filter((o) => o.ok && o.meter.state === 'running').map((o) => o.chatId);
    if (!running.length) return;
    const own = new Set(this.cluster.claim(running).chatIds);
    const elsewhere = running.filter((id) => !own.has(id));
    if (elsewhere.length) this.d.onTracked(elsewhere);
  }

  /** Settles every chat this node settles on its schedule once (at shutdown), carrying on past a failed batch. */
  async settleAll(): Promise<void> {
    await this.settleDue([...this.chats.keys()], true);
  }

  /** Tracks, untracks and idles chats by their outcomes, and publishes them; returns the newly tracked. */
  private absorb(outcomes: SettleOutcome[], now: number): Set<string> {
    const fenced: number[] = [];
    const tracked = new Set<string>();
    let busy = 0;
    for (const o of outcomes) {
      if (!o.ok) {
        if (o.error instanceof LeaseLostError) fenced.push(o.error.shard);
        else if (o.error instanceof BusyError) busy++;
        continue;
      }
      if (o.meter.state === 'ended') {
        this.untrack(o.chatId);
        this.d.presence.forget(o.chatId);
        continue;
      }
      // a settlement that took its time (and presence) before another one of this chat was absorbed decided
      // from an older view: it must not idle the chat, or a user who came back meanwhile waits for the resettle
      const stale = now < (this.absorbedAt.get(o.chatId) ?? -Infinity);
      if (o.meter.state === 'pending') {
        // a pending chat everyone left holds no presence (best effort: a failure leaves it until the chat ends)
        if (!stale) this.d.presence.release(o.chatId, now).catch(() => undefined);
        continue;
      }
      if (!stale) this.absorbedAt.set(o.chatId, now);
      if (!this.chats.has(o.chatId)) {
        this.track(o.chatId);
        tracked.add(o.chatId);
      }
      if (!stale && (o.meter.state === 'away' || o.meter.state === 'paused') && o.wakeAt !== null) {
        this.idle.set(o.chatId, { state: o.meter.state, wakeAt: o.wakeAt, settledAt: now, lookedAt: now });
      } else this.idle.delete(o.chatId);
    }
    if (busy) this.d.metrics.busy?.(busy);
    if (fenced.length) {
      this.d.metrics.fenced?.(fenced.length);
      this.cluster.lost([...new Set(fenced)]);
    }
    this.d.publish(outcomes);
    return tracked;
  }

  /**
   * Waits for the next slot due after the last one run. When a slot overran and
   * later slots fell due meanwhile, their buckets are settled together in one
   * batch: no bucket is ever skipped, so every chat is settled at least once a tick.
   * (Two slots at once were tried: a third more CPU a meter, as interleaved
   * transactions kept finding each other's rows busy; docs/BENCHMARKS.md.)
   */
  private schedule(): void {
    if (this.stopped) return;
    const now = this.d.clock.now();
    const due = this.origin + this.nextSlot * this.sliceMs;
    this.timer = this.d.clock.setTimeout(() => {
      this.timer = null;
      const woke = this.d.clock.now();
      this.d.metrics.observeLag?.(Math.max(0, woke - due) / 1000);
      const current = Math.floor((woke - this.origin) / this.sliceMs);
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
    for (const b of buckets) for (const id of this.byBucket[b]!) ids.push(id);
    if (ids.length === 0) return;
    const started = performance.now();
    let settled = 0;
    try {
      settled = await this.settleDue(ids);
    } finally {
      this.d.metrics.observeSlot((performance.now() - started) / 1000, settled);
    }
  }

  /**
   * Settles those of `ids` this node settles on its schedule: the chats of its leased
   * shards under their fence, and unowned ones `settlesUnowned` names, without one.
   * Returns how many it settled.
   */
  private async settleDue(ids: string[], all = false): Promise<number> {
    const now = this.d.clock.now();
    // a chat that keeps failing on its own waits longer each time, so it can't cost every tick
    ids = ids.filter((id) => (this.failing.get(id)?.retryAt ?? 0) <= now);
    const localOnly = this.d.localOnly?.() ?? false;
    const unowned = this.d.settlesUnowned ?? (() => false);
    const claimed = this.cluster.claim(ids);
    let owned = claimed.chatIds;
    if (localOnly) owned = owned.filter(unowned);
    const ownedSet = new Set(claimed.chatIds);
    let others = ids.filter((id) => !ownedSet.has(id) && unowned(id));
    if (!all) {
      owned = await this.notIdle(owned, now);
      others = await this.notIdle(others, now);
    }
    // on the schedule no chat waits for another's locked rows: those are settled at their next tick
    for (const [part, fence] of [[owned, claimed.fence], [others, null]] as const) {
      if (!part.length) continue;
      // rows held by a transaction that commits soon (a command, a presence change) are waited for once,
      // at most a slice for each lock; a row held longer is tried again next tick
      const { outcomes, failures } = await this.settleMany(part, fence, { waitForBusy: true, lockTimeoutMs: this.sliceMs });
      for (const id of part) {
        const o = outcomes.get(id);
        const failedAlone = o ? !o.ok && o.error.code === 'internal' : failures.has(id) && refusedForData(failures.get(id));
        if (failedAlone) this.backOff(id, now);
        else if (o?.ok) this.failing.delete(id);
      }
    }
    return owned.length + others.length;
  }

  /**
   * Of these chats, those a tick must settle: all but the idle ones (away or paused)
   * whose deadline has not come, whose safety resettle is not due, and (away, with
   * shared presence) whose user is still absent: a presence lookup every `AWAY_LOOKUP_MS`
   * replaces a settlement every tick.
   */
  private async notIdle(ids: string[], now: number): Promise<string[]> {
    const due: string[] = [];
    const away: string[] = [];
    for (const id of ids) {
      const i = this.idle.get(id);
      if (!i || now >= i.wakeAt || now - i.settledAt >= IDLE_RESETTLE_MS) due.push(id);
      else if (i.state === 'away' && this.d.sharedPresence && now - i.lookedAt >= AWAY_LOOKUP_MS) {
        i.lookedAt = now;
        away.push(id);
      }
    }
    if (away.length) {
      const spans = await this.d.presence.spans(away, now);
      for (const id of away) if (isPresent(spans.get(id) ?? null, now)) due.push(id);
    }
    return due;
  }

  /** The chat failed on its own again: skip it for 2, 4, 8 ... ticks (at most 64). */
  private backOff(chatId: string, now: number): void {
    const failures = (this.failing.get(chatId)?.failures ?? 0) + 1;
    const ticks = 2 ** Math.min(failures, 6);
    this.failing.set(chatId, { failures, retryAt: now + ticks * this.d.tickMs });
    this.d.log.warn({ chatId, failures, retryInTicks: ticks }, 'chat keeps failing to settle; backing off');
  }

  /**
   * Settles chats in batches of 500. A batch the database refuses for its data (not
   * for being down) is halved and retried, so one bad chat can't stop the others
   * and the log names it. With `busy`, rows held elsewhere are skipped (their chats
   * come back busy) and, with `waitForBusy`, those chats are settled once more
   * waiting for the rows (at most `lockTimeoutMs` a lock; still held, they stay
   * busy). Skipping locked rows, two batches are in flight at once (a node behind
   * its slots catches up). Never throws: returns each chat's outcome or error.
   */
  private async settleMany(
    ids: string[],
    fence: Fence | null = null,
    busy: { waitForBusy: boolean; lockTimeoutMs?: number } | null = null,
  ): Promise<{ outcomes: Map<string, SettleOutcome>; failures: Map<string, unknown> }> {
    const outcomes = new Map<string, SettleOutcome>();
    const failures = new Map<string, unknown>();
    const run = async (part: string[], skipLocked: boolean, lockTimeoutMs?: number): Promise<void> => {
      try {
        for (const o of await this.settleNow(part.map((chatId) => ({ chatId })), fence, skipLocked, lockTimeoutMs)) outcomes.set(o.chatId, o);
      } catch (err) {
        if (lockTimedOut(err)) {
          // still held: as busy as a skipped row, and tried again next tick
          this.d.metrics.busy?.(part.length);
          return;
        }
        if (part.length > 1 && refusedForData(err)) {
          const half = Math.ceil(part.length / 2);
          await run(part.slice(0, half), skipLocked, lockTimeoutMs);
          await run(part.slice(half), skipLocked, lockTimeoutMs);
          return;
        }
        for (const id of part) failures.set(id, err);
        this.d.metrics.settlementError();
        this.d.log.error({ err, chats: part.length, chatIds: part.slice(0, 20), ...(part.length === 1 ? { chatId: part[0] } : {}) }, 'settlement failed');
      }
    };
    const skipLocked = busy !== null;
    const parts: string[][] = [];
    for (let i = 0; i < ids.length; i += 500) parts.push(ids.slice(i, i + 500));
    // skipping locked rows, no batch waits for another's: two in flight, so one's rules and pushes run
    // here while the other's statements run in Postgres
    let next = 0;
    const worker = async () => {
      while (next < parts.length) await run(parts[next++]!, skipLocked);
    };
    await Promise.all(Array.from({ length: Math.min(skipLocked ? 2 : 1, parts.length) }, worker));
    if (busy?.waitForBusy) {
      // the chats skipped for rows held elsewhere, once more, waiting for those rows in the fixed lock order
      const held = ids.filter((id) => {
        const o = outcomes.get(id);
        return o && !o.ok && o.error instanceof BusyError;
      });
      for (let i = 0; i < held.length; i += 500) await run(held.slice(i, i + 500), false, busy.lockTimeoutMs);
    }
    return { outcomes, failures };
  }
}

/** A command waiting for its batch. */
interface QueuedCommand {
  chatId: string;
  command: Command;
  resolve: (o: SettleOutcome | undefined) => void;
  reject: (e: unknown) => void;
}

/** However idle a chat, the schedule settles it at least this often (balances moved by other chats, other nodes). */
const IDLE_RESETTLE_MS = 30_000;

/**
 * With shared presence, how often an away chat's presence is looked up on the schedule: a
 * return on another node wakes the chat by message, so this only bounds how late a meter
 * resumes here when that message is lost (the seconds are billed from the presence span
 * whenever it is settled).
 */
const AWAY_LOOKUP_MS = 5_000;

/** A cluster of one that holds every chat from the start. */
function alone(): Cluster {
  const cluster = new LocalCluster('local');
  void cluster.start();
  return cluster;
}

/** True when a lock wait ran past `lock_timeout` (SQLSTATE 55P03). */
function lockTimedOut(err: unknown): boolean {
  return sqlState(err) === '55P03';
}

function sqlState(err: unknown): unknown {
  return (err as { driverError?: { code?: unknown }; code?: unknown } | null)?.driverError?.code ?? (err as { code?: unknown } | null)?.code;
}

/** True when Postgres refused the statement for its data (SQLSTATE class 22 or 23), not its availability. */
function refusedForData(err: unknown): boolean {
  const code = sqlState(err);
  return typeof code === 'string' && (code.startsWith('22') || code.startsWith('23'));
}
