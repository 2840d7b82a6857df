/**
 * The deterministic simulation (issue 10, item 1): several logical nodes, each the
 * real engine parts (SettlementService, Ticker, MeterService, PostgresCluster,
 * MirroredPresence) on a clock of its own, over one Postgres database and one
 * simulated shared presence store, driven by a scheduler that runs one thing at a
 * time: a scripted event (a tab joins, heartbeats, leaves; a command; a top-up; a
 * node crashes, stalls, comes back; Redis goes away; a query fails) or one timer
 * of one node, and waits until that node is quiet before the next. Real Postgres
 * concurrency is not deterministic, so operations never overlap: interleavings come
 * from the order and the instants of events, not from racing transactions.
 *
 * What the nodes did is checked against what the users did (`checkRun`): every
 * invariant of SPEC 1 (`verifyInvariants`), no second billed twice, none billed
 * while the user was not present or the chat not running, and no more lost than
 * the design allows.
 */
import { type Span, normalize, total } from '../../faults/intervals.js';
import { pino } from 'pino';
import type { DataSource, EntityManager } from 'typeorm';
import { Accounts } from '../../server/accounts.js';
import { PostgresCluster } from '../../server/cluster/postgres-cluster.js';
import type { Clock } from '../../server/clock.js';
import { MeterService } from '../../server/metering/meter-service.js';
import { MirroredPresence } from '../../server/metering/mirrored-presence.js';
import { LocalPresence, type PresenceTiming } from '../../server/metering/presence.js';
import { TimeRecords } from '../../server/metering/records.js';
import type { Command, Policy } from '../../server/metering/rules.js';
import { SettlementService } from '../../server/metering/settlement.js';
import { Ticker } from '../../server/metering/ticker.js';
import { verifyInvariants } from '../../server/verify.js';
import { SimPresenceStore } from './sim-presence.js';

/** The settings of every run: short, so a run of 20 simulated seconds sees leases lapse and presence lapse. */
export const SIM = {
  tickMs: 1000,
  leaseMs: 1500,
  timing: { heartbeatIntervalMs: 2000, heartbeatGraceMs: 1000 } satisfies PresenceTiming,
  policy: { abandonTimeoutMs: 8000, lowBalanceSeconds: 5 } satisfies Policy,
  rescanMs: 5000,
  /** Simulated time the scripted events span. */
  durationMs: 16_000,
  /** After the script: every tab leaves, faults stop, and the nodes run this long to settle everything. */
  tailMs: 7000,
};
const TTL = SIM.timing.heartbeatIntervalMs + SIM.timing.heartbeatGraceMs;
const T0 = Date.parse('2031-01-01T00:00:00.000Z');

/** A scripted event; indexes are taken modulo what exists when it happens. */
export type SimEvent =
  | { k: 'join'; chat: number; node: number; late: boolean }
  | { k: 'leave'; tab: number }
  | { k: 'silence'; tab: number }
  | { k: 'command'; chat: number; node: number; cmd: 'start' | 'pause' | 'resume' | 'end' }
  | { k: 'topup'; user: number; node: number; amount: string; key: number }
  | { k: 'crash'; node: number }
  | { k: 'restart' }
  | { k: 'stall'; node: number; ms: number }
  | { k: 'redisDown'; ms: number; wiped: boolean }
  | { k: 'pgFault'; node: number; when: 'before' | 'after'; nth: number };

/** One run: the cluster, the accounts, and what happens when. */
export interface Scenario {
  nodes: number;
  /** Each node's clock error after syncing with the database's (ms). */
  skews: number[];
  users: string[];
  advisors: Array<{ rate: string; freeSeconds: number }>;
  chats: Array<{ user: number; advisor: number }>;
  events: Array<{ at: number; e: SimEvent }>;
}

const quiet = pino({ level: 'silent' });
const noTickerMetrics = { observeSlot: () => {}, settlementError: () => {}, activeChatsCount: () => {} };
const noClusterMetrics = { leasesAcquired: () => {}, leasesLost: () => {}, reconcileFailed: () => {} };
const immediate = () => new Promise<void>((r) => setImmediate(r));

/** A node's clock: time moves only when the scheduler moves it, and timers fire one at a time. */
class SimClock implements Clock {
  private seq = 0;
  private readonly timers = new Map<number, { at: number; fn: () => void }>();

  constructor(private t: number) {}

  now(): number {
    return this.t;
  }

  setTimeout(fn: () => void, ms: number): unknown {
    const id = ++this.seq;
    this.timers.set(id, { at: this.t + Math.max(0, ms), fn });
    return id;
  }

  clearTimeout(handle: unknown): void {
    this.timers.delete(handle as number);
  }

  /** Moves the clock to `t`; never back (a stalled node's clock jumps forward when it resumes). */
  moveTo(t: number): void {
    this.t = Math.max(this.t, t);
  }

  /** The earliest timer (by due time, then creation), or null. */
  next(): { id: number; at: number } | null {
    let best: { id: number; at: number } | null = null;
    for (const [id, { at }] of this.timers) if (!best || at < best.at || (at === best.at && id < best.id)) best = { id, at };
    return best;
  }

  fire(id: number): void {
    const timer = this.timers.get(id);
    this.timers.delete(id);
    timer?.fn();
  }
}

/** A failure the scheduler injects into a node's next database calls. */
interface PgFault {
  /** The node's database call (query or transaction) that fails. */
  call: number;
  /** Before: nothing is committed. After: committed, but the answer is lost (the connection dropped). */
  when: 'before' | 'after';
}

const injected = (when: string) => Object.assign(new Error(`Connection terminated unexpectedly (simulated, ${when} commit)`), { simulated: true });

/** A user's tab: one socket on one node in one chat. */
interface Tab {
  id: string;
  chat: number;
  node: SimNode;
  /** Heartbeats every this many ms; past the presence window, presence lapses between them. */
  everyMs: number;
  open: boolean;
  silent: boolean;
}

/** One logical node: the engine parts of server/app.ts, without sockets. */
class SimNode {
  readonly clock: SimClock;
  readonly engine: SettlementService;
  readonly accounts: Accounts;
  readonly meters: MeterService;
  readonly ticker: Ticker;
  readonly cluster: PostgresCluster;
  readonly presence: MirroredPresence;
  state: 'up' | 'stalled' | 'crashed' = 'up';
  stalledUntil = 0;
  private inflight = 0;
  calls = 0;
  private idle: Array<() => void> = [];
  faults: PgFault[] = [];

  constructor(
    readonly id: string,
    readonly skew: number,
    base: DataSource,
    private readonly sim: Simulation,
  ) {
    this.clock = new SimClock(sim.now + skew);
    const ds = this.instrument(base);
    const leaseClock = () => sim.now;
    this.engine = new SettlementService(ds, SIM.policy, null, leaseClock);
    this.accounts = new Accounts(ds, { freeTimeSeconds: 180 });
    const local = new LocalPresence(SIM.timing);
    this.presence = new MirroredPresence(local, sim.store.view(id), () => sim.store.up, quiet);
    this.cluster = new PostgresCluster(ds, {
      nodeId: id,
      leaseMs: SIM.leaseMs,
      log: quiet,
      metrics: noClusterMetrics,
      monotonic: () => this.clock.now(),
      leaseClock,
      timers: this.clock,
    });
    this.ticker = new Ticker({
      clock: this.clock,
      engine: this.engine,
      presence: this.presence,
      log: quiet,
      metrics: { ...noTickerMetrics, fenced: (chats) => (sim.seen.fenced += chats) },
      // the run's story tells what each settlement did
      publish: (outcomes) => {
        for (const o of outcomes) {
          if (o.ok) {
            if (o.push) sim.trace(`${id} settles ${o.chatId}: ${o.meter.state}, ${o.meter.durationSeconds} s${o.ended ? `, ended ${o.ended}` : ''}`);
          } else if (o.error.code !== 'conflict') sim.trace(`${id} settles ${o.chatId}: ${o.error.name} ${o.error.message}`);
        }
      },
      tickMs: SIM.tickMs,
      buckets: 1,
      cluster: this.cluster,
      loadActiveChatIds: async () => (await ds.query(`SELECT id FROM chats WHERE status = 'active' ORDER BY id`)).map((r: { id: string }) => r.id),
      localOnly: () => this.presence.degraded,
      settlesUnowned: (chatId) => this.presence.degraded && this.presence.presentHere(chatId, this.clock.now()),
      // serverSideEmit: nodes that are up hear of it at once, a stalled one never (its rescan finds the chats)
      onTracked: (chatIds) => {
        for (const n of sim.nodes) if (n !== this && n.state === 'up') n.ticker.wake(chatIds);
      },
      rescanMs: SIM.rescanMs,
      sharedPresence: true,
    });
    this.meters = new MeterService(this.accounts, this.engine, new TimeRecords(ds), this.presence, this.ticker, this.clock);
    this.cluster.onAcquired(() => void this.ticker.rescan());
    this.cluster.onRejoined(() => {
      sim.trace(`${id} rejoins: it had been taken for dead`);
      void this.presence.resync(() => this.clock.now());
    });
    this.cluster.onDeparted((departed, lastSeen) => {
      sim.departed(departed, lastSeen, this);
      this.presence
        .releaseNode(departed, lastSeen)
        .then((chatIds) => Promise.all(chatIds.map((chatId) => this.meters.presenceChanged(chatId))))
        .catch(() => undefined);
    });
  }

  /** The database as this node sees it: every call counted (to know when the node is quiet), and faults injected. */
  private instrument(base: DataSource): DataSource {
    const run = <T>(op: (fault: PgFault | null) => Promise<T>): Promise<T> => {
      const call = this.calls++;
      const i = this.faults.findIndex((f) => f.call === call);
      const fault = i >= 0 ? this.faults.splice(i, 1)[0]! : null;
      if (fault) {
        this.sim.seen.pgFaults++;
        this.sim.trace(`${this.id}: database call ${call} fails ${fault.when} commit`);
      }
      this.inflight++;
      return (async () => {
        try {
          const result = await op(fault);
          if (fault?.when === 'after') throw injected('after');
          return result;
        } finally {
          if (--this.inflight === 0) for (const fn of this.idle.splice(0)) fn();
        }
      })();
    };
    return new Proxy(base, {
      get: (target, prop) => {
        if (prop === 'query') {
          return (sql: string, params?: unknown[]) =>
            run((fault) => (fault?.when === 'before' ? Promise.reject(injected('before')) : target.query(sql, params)));
        }
        if (prop === 'transaction') {
          return (...args: unknown[]) => {
            const fn = args.pop() as (em: EntityManager) => Promise<unknown>;
            return run((fault) =>
              (target.transaction as (...a: unknown[]) => Promise<unknown>)(...args, async (em: EntityManager) => {
                // a statement inside fails: the transaction rolls back
                if (fault?.when === 'before') {
                  await em.query('SELECT 1');
                  throw injected('before');
                }
                return fn(em);
              }),
            );
          };
        }
        const v: unknown = Reflect.get(target, prop, target);
        return typeof v === 'function' ? v.bind(target) : v;
      },
    });
  }

  /** Fails the `nth` database call from now. */
  failCall(nth: number, when: 'before' | 'after'): void {
    this.faults.push({ call: this.calls + nth, when });
  }

  /**
   * Runs this node until it is quiet: no database call in flight, nothing left for
   * microtasks or setImmediate (DataLoader batches), and no timer due. Due timers fire
   * one at a time, each once the node is quiet, so nothing of a node ever overlaps.
   */
  async runUntilQuiet(): Promise<void> {
    this.clock.moveTo(this.sim.now + this.skew);
    for (let calm = 0; ; ) {
      await immediate();
      if (this.inflight > 0) {
        await new Promise<void>((r) => this.idle.push(r));
        calm = 0;
        continue;
      }
      if (++calm < 3) continue;
      const next = this.clock.next();
      if (!next || next.at > this.clock.now()) return;
      this.clock.fire(next.id);
      calm = 0;
    }
  }
}

/** What the model knows of one chat's presence and state, in the instants the nodes stamped. */
interface ChatTruth {
  /** [from, to) stretches the user was present per rule 5 at most (a tab counts until its heartbeat lapses or it leaves). */
  upper: Span[];
  /** Stretches the design must bill: as above, but a tab of a node taken for dead stops at the node's last renewal. */
  lower: Span[];
  /** [from, to) stretches the chat was active and unpaused (to = Infinity while it still is). */
  running: Span[];
}

/** One tab's presence stamps, to build the truth at the end. */
interface TabLog {
  chat: number;
  node: string;
  stamps: number[];
  leftAt: number | null;
}

/** A run of the simulation. */
export class Simulation {
  now = T0;
  readonly store = new SimPresenceStore(SIM.timing);
  readonly nodes: SimNode[] = [];
  private readonly tabs: Tab[] = [];
  private readonly tabLogs = new Map<string, TabLog>();
  private readonly queue: Array<{ at: number; seq: number; run: () => Promise<void> }> = [];
  private seq = 0;
  private readonly departures: Array<{ node: string; lastSeen: number; at: number }> = [];
  /** Each chat's state changes, by the instant the node that applied them stamped. */
  private readonly transitions: Array<Array<{ at: number; running: boolean }>>;
  private readonly log: string[] = [];
  private tabSeq = 0;
  private outages = 0;
  private wrappedUp = false;
  /** [from, to) of each Redis outage. */
  private readonly downs: Array<[number, number]> = [];
  /** What the run left in the database, to compare two runs of one scenario. */
  digest = '';
  /** What the run exercised, for the campaign's summary. */
  readonly seen = { billed: 0, fenced: 0, departed: 0, pgFaults: 0, outages: 0, stalls: 0, crashes: 0 };
  private nodeSeq = 0;
  readonly chatIds: string[];
  readonly userIds: string[];

  constructor(
    private readonly ds: DataSource,
    readonly sc: Scenario,
  ) {
    this.chatIds = sc.chats.map((_, i) => `c${i}`);
    this.userIds = sc.users.map((_, i) => `u${i}`);
    this.transitions = sc.chats.map(() => []);
  }

  trace(line: string): void {
    this.log.push(`${String(this.now - T0).padStart(6)} ${line}`);
  }

  /** The run's story, for a failure message. */
  story(): string {
    return this.log.join('\n');
  }

  departed(node: string, lastSeen: number, by: SimNode): void {
    this.trace(`${by.id} finds ${node} dead, last seen at ${lastSeen - T0}`);
    this.seen.departed++;
    this.departures.push({ node, lastSeen, at: this.now });
  }

  private at(at: number, run: () => Promise<void>): void {
    this.queue.push({ at, seq: this.seq++, run });
  }

  /** Sets up the accounts and nodes, runs the script and the tail, and returns the run's problems (none: it passed). */
  async run(): Promise<string[]> {
    const { ds, sc } = this;
    await clearDatabase(ds);
    const accounts = new Accounts(ds, { freeTimeSeconds: 180 });
    for (const [i, balance] of sc.users.entries()) await accounts.putUser(`u${i}`, { balance });
    for (const [i, a] of sc.advisors.entries()) await accounts.putAdvisor(`a${i}`, { ratePerMinute: a.rate, freeSeconds: a.freeSeconds });
    for (const [i, c] of sc.chats.entries()) await accounts.createChat({ id: `c${i}`, userId: `u${c.user}`, advisorId: `a${c.advisor}` });

    for (let i = 0; i < sc.nodes; i++) await this.startNode();
    for (const { at, e } of sc.events) this.at(T0 + at, () => this.event(e));
    const end = T0 + SIM.durationMs;
    this.at(end, () => this.wrapUp());

    while (this.now <= end + SIM.tailMs) {
      // the next thing to happen: a scripted event, or a timer of a node that is up
      const q = this.queue.reduce<(typeof this.queue)[number] | null>((b, x) => (!b || x.at < b.at || (x.at === b.at && x.seq < b.seq) ? x : b), null);
      let node: SimNode | null = null;
      let nodeAt = Infinity;
      for (const n of this.nodes) {
        if (n.state === 'stalled' && n.stalledUntil <= this.now) await this.resume(n);
        if (n.state !== 'up') continue;
        const t = n.clock.next();
        if (t && t.at - n.skew < nodeAt) [node, nodeAt] = [n, Math.max(this.now, t.at - n.skew)];
      }
      const stallEnd = Math.min(...this.nodes.filter((n) => n.state === 'stalled').map((n) => n.stalledUntil));
      const next = Math.min(q?.at ?? Infinity, nodeAt, stallEnd);
      if (next > end + SIM.tailMs) break;
      this.now = Math.max(this.now, next);
      // a node's timer before an event due at the same instant: the event then finds the node quiet
      if (q && q.at < nodeAt && q.at <= stallEnd) {
        this.queue.splice(this.queue.indexOf(q), 1);
        await q.run();
      } else if (node && nodeAt <= stallEnd) await node.runUntilQuiet();
    }
    this.now = end + SIM.tailMs;
    for (const n of this.nodes) if (n.state === 'up') await n.runUntilQuiet();
    return this.check();
  }

  private async startNode(): Promise<SimNode> {
    const id = `n${this.nodeSeq++}`;
    const n = new SimNode(id, this.sc.skews[this.nodes.length % this.sc.skews.length] ?? 0, this.ds, this);
    this.nodes.push(n);
    this.trace(`${id} starts (clock ${n.skew >= 0 ? '+' : ''}${n.skew} ms)`);
    // as server/app.ts: the shared presence first, then the cluster, then the ticker
    const starting = (async () => {
      if (this.store.up) await n.presence.resync(() => n.clock.now());
      else n.presence.lost();
      await n.cluster.start();
      await n.ticker.start();
    })();
    await n.runUntilQuiet();
    await starting.catch((err: unknown) => this.trace(`${id} failed to start: ${String(err)}`));
    return n;
  }

  private up(index: number): SimNode | null {
    const up = this.nodes.filter((n) => n.state === 'up');
    return up.length ? up[index % up.length]! : null;
  }

  /** Runs `op` on node `n` as its socket or HTTP layer would, and waits until the node is quiet. */
  private async on(n: SimNode, what: string, op: () => Promise<unknown>): Promise<void> {
    let failure: unknown = null;
    let done = false;
    n.clock.moveTo(this.now + n.skew);
    void op().then(
      () => (done = true),
      (err: unknown) => {
        done = true;
        failure = err;
      },
    );
    await n.runUntilQuiet();
    if (!done) throw new Error(`${what} on ${n.id} never finished: it waits for something the scheduler doesn't run`);
    this.trace(`${n.id}: ${what}${failure ? ` failed (${(failure as Error).message})` : ''}`);
  }

  private async event(e: SimEvent): Promise<void> {
    switch (e.k) {
      case 'join': {
        const n = this.up(e.node);
        if (n) await this.join(e.chat % this.chatIds.length, n, e.late ? TTL + 400 : SIM.timing.heartbeatIntervalMs);
        break;
      }
      case 'leave': {
        const tab = this.openTab(e.tab);
        if (tab) await this.leave(tab);
        break;
      }
      case 'silence': {
        const tab = this.openTab(e.tab);
        if (tab) {
          tab.silent = true;
          this.trace(`${tab.id} stops heartbeating`);
        }
        break;
      }
      case 'command': {
        const n = this.up(e.node);
        if (n) await this.command(e.chat % this.chatIds.length, n, e.cmd);
        break;
      }
      case 'topup': {
        const n = this.up(e.node);
        if (!n) break;
        const userId = this.userIds[e.user % this.userIds.length]!;
        // the HTTP route: the top-up, then fresh meters for the user's chats (a retry of the same key adds nothing)
        await this.on(n, `top-up ${userId} +${e.amount} (key ${e.key})`, async () => {
          await n.engine.topUp(userId, e.amount, `k${e.key}`);
          await n.meters.balanceChanged(userId);
        });
        break;
      }
      case 'crash': {
        const n = this.up(e.node);
        if (!n || this.nodes.filter((x) => x.state === 'up').length < 2) break;
        await this.crash(n);
        break;
      }
      case 'restart':
        if (this.nodes.filter((x) => x.state !== 'crashed').length < 3) await this.startNode();
        break;
      case 'stall': {
        const n = this.up(e.node);
        if (!n || this.nodes.filter((x) => x.state === 'up').length < 2) break;
        n.state = 'stalled';
        n.stalledUntil = this.now + e.ms;
        this.seen.stalls++;
        this.trace(`${n.id} stalls for ${e.ms} ms`);
        break;
      }
      case 'redisDown': {
        if (!this.store.up || this.now >= T0 + SIM.durationMs) break;
        this.store.lose();
        this.outages++;
        this.downs.push([this.now, Infinity]);
        // every node's client sees the connection go ('reconnecting')
        for (const n of this.nodes) if (n.state !== 'crashed') n.presence.lost();
        this.trace(`Redis goes away for ${e.ms} ms${e.wiped ? ', and comes back empty' : ''}`);
        const outage = this.outages;
        this.at(Math.min(this.now + e.ms, T0 + SIM.durationMs), async () => {
          // unless the script's end brought it back already
          if (!this.store.up && this.outages === outage) await this.redisBack(e.wiped);
        });
        break;
      }
      case 'pgFault': {
        const n = this.up(e.node);
        if (n) n.failCall(e.nth, e.when);
        break;
      }
      default: {
        const _exhaustive: never = e;
        throw new Error(`unknown event ${JSON.stringify(_exhaustive)}`);
      }
    }
  }

  private openTab(i: number): Tab | null {
    const open = this.tabs.filter((t) => t.open && t.node.state === 'up');
    return open.length ? open[i % open.length]! : null;
  }

  /** A tab of the chat's user joins on node `n`, and heartbeats every `everyMs` from then on. */
  private async join(chat: number, n: SimNode, everyMs: number): Promise<void> {
    // after the script no tab joins (a reconnect or a retry due then is dropped): the tail only settles
    if (this.wrappedUp) return;
    const tab: Tab = { id: `t${this.tabSeq++}`, chat, node: n, everyMs, open: true, silent: false };
    this.tabs.push(tab);
    const chatId = this.chatIds[chat]!;
    const logged: TabLog = { chat, node: n.id, stamps: [], leftAt: null };
    this.tabLogs.set(tab.id, logged);
    let ended = false;
    // server/realtime/socket-server.ts, chat:join from the chat's user
    await this.on(n, `${tab.id} joins ${chatId}`, async () => {
      const c = await n.meters.open(chatId);
      if ((ended = c.status === 'ended')) return;
      await n.meters.settleLapsedPresence(chatId);
      const now = n.clock.now();
      const started = await n.presence.join(chatId, tab.id, now);
      logged.stamps.push(now);
      if (started) await n.meters.presenceChanged(chatId);
    });
    if (ended) tab.open = false;
    else if (!logged.stamps.length) {
      // the join failed before presence counted it: the client tries again, as the SDK does
      tab.open = false;
      this.at(this.now + 500, async () => {
        if (n.state === 'up') await this.join(chat, n, everyMs);
      });
      return;
    }
    this.heartbeatLater(tab);
  }

  private heartbeatLater(tab: Tab): void {
    this.at(this.now + tab.everyMs, async () => {
      if (!tab.open || tab.silent || tab.node.state === 'crashed') return;
      // a stalled node reads nothing from its sockets: this heartbeat is lost, the next one may land
      if (tab.node.state === 'up') await this.heartbeat(tab);
      this.heartbeatLater(tab);
    });
  }

  private async heartbeat(tab: Tab): Promise<void> {
    const n = tab.node;
    const chatId = this.chatIds[tab.chat]!;
    const logged = this.tabLogs.get(tab.id)!;
    await this.on(n, `${tab.id} heartbeats`, async () => {
      await n.meters.settleLapsedPresence(chatId);
      const now = n.clock.now();
      const restarted = await n.presence.heartbeat(chatId, tab.id, now);
      if (restarted !== null) logged.stamps.push(now);
      if (restarted) await n.meters.presenceChanged(chatId);
    });
  }

  private async leave(tab: Tab): Promise<void> {
    tab.open = false;
    const n = tab.node;
    const chatId = this.chatIds[tab.chat]!;
    await this.on(n, `${tab.id} leaves`, async () => {
      const now = n.clock.now();
      this.tabLogs.get(tab.id)!.leftAt = now;
      if (await n.presence.leave(chatId, tab.id, now)) await n.meters.presenceChanged(chatId);
    });
  }

  private async command(chat: number, n: SimNode, cmd: 'start' | 'pause' | 'resume' | 'end'): Promise<void> {
    const chatId = this.chatIds[chat]!;
    const command: Command = cmd === 'end' ? { kind: 'end', reason: 'ended_by_advisor' } : { kind: cmd };
    const at = this.now + n.skew;
    await this.on(n, `${cmd} ${chatId}`, () => n.meters.command(chatId, command));
    // what the command did, whatever its caller heard (an answer lost after the commit)
    const [row] = await this.ds.query(`SELECT status, paused FROM chats WHERE id = $1`, [chatId]);
    const running = row.status === 'active' && !row.paused;
    const t = this.transitions[chat]!;
    if ((t.at(-1)?.running ?? false) !== running) t.push({ at, running });
  }

  /** The node is gone: no leave, no hand-over; its users' tabs reconnect to another node a second later. */
  private async crash(n: SimNode): Promise<void> {
    n.state = 'crashed';
    this.seen.crashes++;
    this.trace(`${n.id} crashes`);
    for (const tab of this.tabs.filter((t) => t.node === n && t.open)) {
      tab.open = false;
      this.at(this.now + 1000, async () => {
        const to = this.up(tab.chat);
        if (to) await this.join(tab.chat, to, tab.everyMs);
      });
    }
  }

  private async resume(n: SimNode): Promise<void> {
    n.state = 'up';
    this.now = Math.max(this.now, n.stalledUntil);
    this.trace(`${n.id} resumes`);
    // its Redis client reconnects if Redis came back meanwhile
    if (this.store.up && n.presence.degraded) void n.presence.resync(() => n.clock.now());
    await n.runUntilQuiet();
  }

  private async redisBack(wiped: boolean): Promise<void> {
    this.store.restore(wiped);
    this.downs.at(-1)![1] = this.now;
    this.trace(`Redis is back${wiped ? ', empty' : ''}`);
    // each node's client reconnects ('ready'): its sockets are copied back before it trusts the store again
    for (const n of this.nodes) {
      if (n.state !== 'up') continue;
      void n.presence.resync(() => n.clock.now());
      await n.runUntilQuiet();
    }
  }

  /** The script is over: faults stop, stalled nodes resume, every open tab leaves. */
  private async wrapUp(): Promise<void> {
    this.trace('the script ends: faults stop, every tab leaves');
    this.wrappedUp = true;
    for (const n of this.nodes) n.faults = [];
    if (!this.store.up) await this.redisBack(false);
    for (const n of this.nodes) if (n.state === 'stalled') await this.resume(n);
    for (const tab of this.tabs) if (tab.open && tab.node.state === 'up') await this.leave(tab);
  }

  /** What the run must hold; each problem is a line. */
  private async check(): Promise<string[]> {
    const problems: string[] = [];
    for (const v of await verifyInvariants(this.ds)) problems.push(`verify: ${v.message}`);
    const chats: Array<{ id: string; duration: number; status: string; end_reason: string | null; ended_ms: number | null }> = await this.ds.query(
      `SELECT c.id, coalesce(r.duration, 0) AS duration, c.status, c.end_reason, (extract(epoch FROM c.ended_at) * 1000)::float8 AS ended_ms
         FROM chats c LEFT JOIN conversation_time_records r ON r.chat_id = c.id ORDER BY c.id`,
    );
    const billed: Array<{ chat_id: string; from_ms: number; to_ms: number }> = await this.ds.query(
      `SELECT chat_id, from_ms, to_ms FROM sim_billed ORDER BY chat_id, from_ms`,
    );
    const users: Array<{ id: string; balance: string }> = await this.ds.query(`SELECT id, balance::text FROM users ORDER BY id`);
    for (const u of users) if (u.balance.startsWith('-')) problems.push(`user ${u.id}: negative balance ${u.balance}`);

    this.digest = JSON.stringify({ chats, billed, users });
    this.seen.outages = this.outages;
    this.seen.billed = billed.length ? 1 : 0;
    for (const c of chats) {
      const i = this.chatIds.indexOf(c.id);
      const truth = this.truth(i, c.ended_ms);
      const mine = billed.filter((b) => b.chat_id === c.id).map((b) => [b.from_ms, b.to_ms] as [number, number]);
      const sum = mine.reduce((s, [a, b]) => s + (b - a), 0);
      if (sum !== c.duration * 1000) problems.push(`${c.id}: billed stretches sum to ${sum / 1000} s, the record says ${c.duration} s`);
      for (let k = 1; k < mine.length; k++) {
        if (mine[k]![0] < mine[k - 1]![1]) problems.push(`${c.id}: seconds billed twice, [${span(mine[k - 1]!)}] and [${span(mine[k]!)}]`);
      }
      // billed only while present and running, in the instants the nodes stamped; their clocks differ by up to
      // twice the largest skew, so each stretch may start or end that much off
      const allowed = intersect(truth.upper, truth.running);
      const slack = 2 * Math.max(0, ...this.sc.skews.map(Math.abs));
      for (const b of mine) {
        const outside = total([b]) - total(intersect([b], allowed));
        if (outside > 2 * slack) problems.push(`${c.id}: billed [${span(b)}] but ${outside} ms of it the user was absent or the chat not running`);
      }
      // and nothing lost: each stretch the design must bill, in whole seconds, give or take a second per stretch.
      // Not for a chat that ran out of credits: it was billed what its user could pay, and its end came at
      // the first settlement after the money ran out, which may be seconds later (a lease changing hands)
      if (c.end_reason === 'out_of_credits') continue;
      const must = intersect(truth.lower, truth.running);
      const owed = must.reduce((s, w) => s + Math.floor((w[1] - w[0]) / 1000), 0);
      // a Redis outage hands the chat's presence over twice (to each node's own sockets, and back), and each
      // may cost up to a second: a node that sees only its own tab starts the span there, and what the tabs
      // of other nodes were present since the last settlement is a gap to it (docs/RELIABILITY.md)
      const handovers = 2 * this.downs.filter((d) => intersect([d], must).length > 0).length;
      if (c.duration < owed - must.length - handovers) {
        problems.push(
          `${c.id}: billed ${c.duration} s, but the user was present ${owed} s in ${must.length} stretches [${must.map(span).join(' ')}]` +
            ` (billed [${mine.map(span).join(' ')}], present at most [${truth.upper.map(span).join(' ')}], running [${truth.running.map(span).join(' ')}])`,
        );
      }
    }
    return problems;
  }

  /**
   * When the design can know a tab left at `leftAt`: then, unless it left during a Redis
   * outage on a node that went silent before Redis came back and was taken for dead. That
   * leave lived only in the node's memory and went with it; the other nodes end its sockets
   * at its last renewal (and its heartbeats' window caps them), so the design may bill up to
   * there. Money at stake: at most a heartbeat window, as for a lost connection.
   */
  private leaveSeenAt(node: string, leftAt: number): number {
    const outage = this.downs.find(([from, to]) => from <= leftAt && leftAt < to);
    if (!outage) return leftAt;
    const silent = this.departures.filter((d) => d.node === node && d.lastSeen >= leftAt && d.lastSeen <= outage[1]).map((d) => d.lastSeen);
    return silent.length ? Math.min(...silent) : leftAt;
  }

  /** The chat's truth from the tabs' stamps, the departures and the state changes. */
  private truth(chat: number, endedMs: number | null): ChatTruth {
    const upper: Array<[number, number]> = [];
    const lower: Array<[number, number]> = [];
    for (const [, t] of this.tabLogs) {
      if (t.chat !== chat) continue;
      const deaths = this.departures.filter((d) => d.node === t.node).map((d) => d.lastSeen);
      // what may be billed runs until the design can know the tab left; what must be, until it did
      const seenLeft = t.leftAt === null ? Infinity : this.leaveSeenAt(t.node, t.leftAt);
      for (const s of t.stamps) {
        const upTo = Math.min(s + TTL, seenLeft);
        if (upTo > s) upper.push([s, upTo]);
        const to = Math.min(s + TTL, t.leftAt ?? Infinity);
        const cut = Math.min(to, ...deaths.filter((d) => d >= s));
        if (cut > s) lower.push([s, cut]);
      }
    }
    const running: Array<[number, number]> = [];
    let from: number | null = null;
    for (const tr of this.transitions[chat]!) {
      if (tr.running && from === null) from = tr.at;
      else if (!tr.running && from !== null) {
        running.push([from, tr.at]);
        from = null;
      }
    }
    if (from !== null) running.push([from, Infinity]);
    // an end the ticks decided (out of credits, abandoned) is in the chat's row
    const cutAt = endedMs ?? Infinity;
    return { upper: normalize(upper), lower: normalize(lower), running: intersect(running, [[-Infinity, cutAt]]) };
  }
}

const span = ([a, b]: Span) => `${a - T0}, ${b === Infinity ? '∞' : b - T0})`;

/** The parts of `xs` inside some stretch of `ys`. */
function intersect(xs: readonly Span[], ys: readonly Span[]): Span[] {
  const out: Span[] = [];
  for (const [a, b] of normalize(xs)) for (const [c, d] of normalize(ys)) if (Math.max(a, c) < Math.min(b, d)) out.push([Math.max(a, c), Math.min(b, d)]);
  return out;
}


/**
 * Every billed stretch of every settlement, written by a trigger on the time records:
 * [settled_until - billed seconds, settled_until). Created once in the simulation's database.
 */
export async function installBilledLog(ds: DataSource): Promise<void> {
  await ds.query(`CREATE TABLE IF NOT EXISTS sim_billed (chat_id text NOT NULL, from_ms float8 NOT NULL, to_ms float8 NOT NULL)`);
  await ds.query(`
    CREATE OR REPLACE FUNCTION sim_log_billed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      IF NEW.duration > OLD.duration THEN
        INSERT INTO sim_billed VALUES (NEW.chat_id,
          extract(epoch FROM NEW.settled_until) * 1000 - (NEW.duration - OLD.duration) * 1000,
          extract(epoch FROM NEW.settled_until) * 1000);
      END IF;
      RETURN NEW;
    END $$`);
  await ds.query(`DROP TRIGGER IF EXISTS sim_billed ON conversation_time_records`);
  await ds.query(`CREATE TRIGGER sim_billed AFTER UPDATE ON conversation_time_records FOR EACH ROW EXECUTE FUNCTION sim_log_billed()`);
}

/** Empties what a run wrote (a few rows: DELETE is cheaper than TRUNCATE), and frees every lease. */
async function clearDatabase(ds: DataSource): Promise<void> {
  // one round trip (no parameters: the simple protocol takes several statements)
  await ds.query(`
    DELETE FROM sim_billed; DELETE FROM webhook_events; DELETE FROM ledger_entries; DELETE FROM conversation_time_records;
    DELETE FROM free_time_allowances; DELETE FROM chats; DELETE FROM advisors; DELETE FROM users; DELETE FROM cluster_nodes;
    UPDATE settlement_shards SET owner = NULL, epoch = 0, expires_at = '-infinity'`);
}
