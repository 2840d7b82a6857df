import FakeTimers from '@sinonjs/fake-timers';
import { expect } from 'chai';
import { pino } from 'pino';
import type { Clock } from '../server/clock.js';
import { LocalCluster } from '../server/cluster/cluster.js';
import { LocalPresence } from '../server/metering/presence.js';
import type { SettleItem, SettleOutcome, SettlementService } from '../server/metering/settlement.js';
import { Ticker, bucketOf } from '../server/metering/ticker.js';

type FakeClock = ReturnType<typeof FakeTimers.createClock>;

/**
 * A settlement engine stand-in that records each call and can take (fake) time.
 * `fail` fails every batch as a database that is down would; a batch holding a
 * chat named `poison` is refused for its data (SQLSTATE 23514), as a bad row would be.
 */
function fakeEngine(clock: FakeClock, workMs = 0, fail = false) {
  const calls: Array<{ at: number; ids: string[] }> = [];
  let inFlight = 0;
  let maxInFlight = 0;
  const engine = {
    async settleBatch(items: SettleItem[], now: number): Promise<SettleOutcome[]> {
      inFlight++;
      maxInFlight = Math.max(maxInFlight, inFlight);
      const ids = items.map((i) => i.chatId);
      if (ids.includes('poison')) {
        inFlight--;
        throw Object.assign(new Error('check violation'), { code: '23514' });
      }
      calls.push({ at: now, ids });
      if (workMs) await new Promise((r) => clock.setTimeout(r, workMs));
      inFlight--;
      if (fail) throw new Error('database down');
      // refusals publish and track nothing: enough for the ticker to hand each caller its chat
      return ids.map((chatId) => ({ chatId, ok: false, error: new Error('stub') }) as unknown as SettleOutcome);
    },
  };
  return { engine: engine as unknown as SettlementService, calls, maxInFlight: () => maxInFlight };
}

function build(opts: { workMs?: number; fail?: boolean; chats: string[]; tickMs?: number; buckets?: number }) {
  const clock = FakeTimers.createClock(1_000_000);
  const asClock: Clock = { now: () => clock.now, setTimeout: (fn, ms) => clock.setTimeout(fn, ms), clearTimeout: (h) => clock.clearTimeout(h as never) };
  const fake = fakeEngine(clock, opts.workMs, opts.fail);
  const counts = { errors: 0, slots: 0 };
  const ticker = new Ticker({
    clock: asClock,
    engine: fake.engine,
    presence: new LocalPresence({ heartbeatIntervalMs: 10_000, heartbeatGraceMs: 5000 }),
    log: pino({ level: 'silent' }),
    metrics: { observeSlot: () => counts.slots++, settlementError: () => counts.errors++, activeChatsCount: () => {} },
    publish: () => {},
    loadActiveChatIds: async () => opts.chats,
    tickMs: opts.tickMs ?? 1000,
    buckets: opts.buckets ?? 10,
  });
  /** Stops the ticker while the fake clock lets an in-flight slot finish. */
  const stop = async () => {
    const stopping = ticker.stop();
    await clock.tickAsync(1000);
    await stopping;
  };
  return { clock, ticker, stop, ...fake, counts };
}

describe('ticker (fake clock)', () => {
  const chats = Array.from({ length: 1000 }, (_, i) => `chat-${i}`);

  it('settles every chat once per tick, spread over the tick in phase buckets', async () => {
    const { clock, ticker, calls, stop } = build({ chats });
    await ticker.start();
    await clock.tickAsync(1000);
    const seen = calls.flatMap((c) => c.ids).sort();
    expect(seen).to.deep.equal([...chats].sort());
    // ten slots, 100 ms apart, each with roughly a tenth of the chats
    expect(calls.map((c) => c.at - 1_000_000)).to.deep.equal([100, 200, 300, 400, 500, 600, 700, 800, 900, 1000]);
    for (const c of calls) expect(c.ids.length).to.be.within(50, 150);
    await stop();
  });

  it('does not drift when each slot takes time', async () => {
    const { clock, ticker, calls, stop } = build({ chats, workMs: 37 });
    await ticker.start();
    await clock.tickAsync(10_000);
    // slots stay on the 100 ms grid from the start, whatever the work takes
    expect(calls.length).to.equal(100);
    for (const c of calls) expect((c.at - 1_000_000) % 100).to.equal(0);
    await stop();
  });

  it('never overlaps a slow slot with the next one, and skips no bucket when slots overrun', async () => {
    const { clock, ticker, calls, maxInFlight, stop } = build({ chats, workMs: 250 });
    await ticker.start();
    await clock.tickAsync(5000);
    expect(maxInFlight()).to.equal(1);
    for (let i = 1; i < calls.length; i++) expect(calls[i]!.at - calls[i - 1]!.at).to.be.at.least(250);
    // every chat is settled again within a tick plus one slot's overrun, whatever its bucket
    const last = new Map<string, number>();
    for (const c of calls) {
      for (const id of c.ids) {
        const prev = last.get(id) ?? 1_000_000;
        expect(c.at - prev, id).to.be.at.most(1000 + 250);
        last.set(id, c.at);
      }
    }
    expect(last.size).to.equal(chats.length);
    for (const at of last.values()) expect(1_005_000 - at).to.be.at.most(1250);
    await stop();
  });

  it('runs two batches of a large slot at once (one in the rules while the other waits on Postgres), never more', async () => {
    const many = Array.from({ length: 4000 }, (_, i) => `chat-${i}`);
    const { clock, ticker, calls, maxInFlight, stop } = build({ chats: many, workMs: 40, buckets: 2 });
    await ticker.start();
    // the first slot: about 2,000 chats, four batches of at most 500, two at a time: done in 80 ms, not 160
    await clock.tickAsync(500 + 80);
    expect(maxInFlight()).to.equal(2);
    const first = calls.filter((c) => c.at === calls[0]!.at);
    expect(first.length, 'two batches started together').to.equal(2);
    const slot = calls.filter((c) => c.at - calls[0]!.at < 80).flatMap((c) => c.ids);
    expect(new Set(slot).size, 'no chat twice in a slot').to.equal(slot.length);
    expect(slot.every((id) => bucketOf(id, 2) === bucketOf(slot[0]!, 2)), 'one bucket').to.equal(true);
    expect(slot.length, 'the whole bucket within 80 ms').to.equal(many.filter((id) => bucketOf(id, 2) === bucketOf(slot[0]!, 2)).length);
    await clock.tickAsync(2000);
    expect(new Set(calls.flatMap((c) => c.ids)).size).to.equal(many.length);
    await stop();
  });

  it('catches a failing settlement, counts it and keeps ticking', async () => {
    const { clock, ticker, calls, counts, stop } = build({ chats: ['a', 'b', 'c'], fail: true, buckets: 1 });
    await ticker.start();
    await clock.tickAsync(3000);
    expect(calls.length).to.equal(3);
    expect(counts.errors).to.equal(3);
    await stop();
  });

  it('isolates a chat the database refuses, so the rest of its bucket is still settled', async () => {
    const { clock, ticker, calls, counts, stop } = build({ chats: ['a', 'b', 'poison', 'c', 'd', 'e'], buckets: 1 });
    await ticker.start();
    await clock.tickAsync(1000);
    expect(calls.flatMap((c) => c.ids).sort()).to.deep.equal(['a', 'b', 'c', 'd', 'e']);
    expect(counts.errors).to.equal(1);
    await stop();
  });

  it('backs a chat that keeps failing off (2, 4, 8 ... ticks) while the rest of its bucket ticks on', async () => {
    const { clock, ticker, calls, counts, stop } = build({ chats: ['a', 'poison'], buckets: 1 });
    await ticker.start();
    await clock.tickAsync(20_000);
    // 'a' every tick; 'poison' tried at ticks 1, 3, 7 and 15 instead of all 20
    expect(calls.filter((c) => c.ids.includes('a'))).to.have.length(20);
    expect(counts.errors).to.equal(4);
    await stop();
  });

  it('stops scheduling after stop()', async () => {
    const { clock, ticker, calls, stop } = build({ chats: ['a'], buckets: 1 });
    await ticker.start();
    await clock.tickAsync(2000);
    await ticker.stop();
    const n = calls.length;
    await clock.tickAsync(5000);
    expect(calls.length).to.equal(n);
  });

  it('settles chats asked for at once in one batch, and what comes meanwhile in the next', async () => {
    const { clock, ticker, calls, stop } = build({ chats: [], workMs: 50 });
    await ticker.start();
    const first = Array.from({ length: 100 }, (_, i) => ticker.settleSoon(`gone-${i}`));
    await clock.tickAsync(10);
    const second = Array.from({ length: 30 }, (_, i) => ticker.settleSoon(`later-${i}`));
    await clock.tickAsync(200);
    await Promise.all([...first, ...second]);
    expect(calls.map((c) => c.ids.length)).to.deep.equal([100, 30]);
    await stop();
  });

  it('answers each settleSoon caller for its own chat when the database refuses another in the batch', async () => {
    const { clock, ticker, stop } = build({ chats: [] });
    await ticker.start();
    const results = ['a', 'b', 'poison', 'c'].map((id) => ticker.settleSoon(id).then((o) => o?.chatId, (e: Error) => `refused: ${e.message}`));
    await clock.tickAsync(10);
    expect(await Promise.all(results)).to.deep.equal(['a', 'b', 'refused: check violation', 'c']);
    await stop();
  });

  it('settles commands asked for at once in one batch, one per chat a batch, in the order asked', async () => {
    const { clock, ticker, calls, stop } = build({ chats: [], workMs: 20 });
    await ticker.start();
    const asked = [
      ticker.settleCommand('a', { kind: 'start' }),
      ticker.settleCommand('b', { kind: 'start' }),
      ticker.settleCommand('a', { kind: 'end', reason: 'ended_by_platform' }),
      ticker.settleCommand('c', { kind: 'pause' }),
    ];
    await clock.tickAsync(100);
    expect((await Promise.all(asked)).map((o) => o?.chatId)).to.deep.equal(['a', 'b', 'a', 'c']);
    // a's second command waits for the batch after its first
    expect(calls.map((c) => c.ids)).to.deep.equal([['a', 'b', 'c'], ['a']]);
    await stop();
  });

  it('answers each command alone when the database refuses another in its batch', async () => {
    const { clock, ticker, stop } = build({ chats: [] });
    await ticker.start();
    const results = ['a', 'poison', 'b'].map((id) =>
      ticker.settleCommand(id, { kind: 'start' }).then((o) => o?.chatId, (e: Error) => `refused: ${e.message}`),
    );
    await clock.tickAsync(10);
    expect(await Promise.all(results)).to.deep.equal(['a', 'refused: check violation', 'b']);
    await stop();
  });

  it('waits on stop() for presence settlements in flight and queued, and settles at once after', async () => {
    const { clock, ticker, calls } = build({ chats: [], workMs: 50 });
    await ticker.start();
    const first = ticker.settleSoon('x');
    await clock.tickAsync(1);
    const queued = ticker.settleSoon('y');
    let stopped = false;
    const stopping = ticker.stop().then(() => (stopped = true));
    await clock.tickAsync(20);
    expect(stopped).to.equal(false);
    await clock.tickAsync(200);
    await stopping;
    await Promise.all([first, queued]);
    expect(calls.map((c) => c.ids)).to.deep.equal([['x'], ['y']]);
    const after = ticker.settleSoon('z');
    await clock.tickAsync(100);
    await after;
    expect(calls.map((c) => c.ids).at(-1)).to.deep.equal(['z']);
  });

  it('puts a chat in the same bucket every time', () => {
    for (const id of chats.slice(0, 50)) expect(bucketOf(id, 10)).to.equal(bucketOf(id, 10)).and.to.be.within(0, 9);
  });
});

describe('ticker: idle chats (fake clock)', () => {
  /**
   * An engine whose every chat comes back away, due again `wakeAfterMs` later, unless present: then
   * running. A batch of more than one chat (a tick's) takes `batchMs` in the database.
   */
  function awayEngine(clock: FakeClock, opts: { wakeAfterMs?: number; batchMs?: number } = {}) {
    const settled: Array<{ at: number; id: string; state: string }> = [];
    const engine = {
      async settleBatch(items: SettleItem[], now: number): Promise<SettleOutcome[]> {
        if (opts.batchMs && items.length > 1) await new Promise((r) => clock.setTimeout(r, opts.batchMs));
        return items.map(({ chatId, presence: span }) => {
          const running = span !== null && span.since <= now && now < span.until;
          settled.push({ at: now - 1_000_000, id: chatId, state: running ? 'running' : 'away' });
          return {
            chatId,
            ok: true,
            meter: { chatId, state: running ? 'running' : 'away' },
            push: running,
            ended: null,
            lowBalance: false,
            charge: 0n,
            wakeAt: running ? null : now + (opts.wakeAfterMs ?? 5000),
          } as unknown as SettleOutcome;
        });
      },
    };
    return { engine: engine as unknown as SettlementService, settled };
  }

  /** A ticker over chats a and b (one bucket, 1 s ticks) on the away engine and a fresh fake clock. */
  function idleTicker(sharedPresence: boolean, engineOpts: Parameters<typeof awayEngine>[1] = {}) {
    const clock = FakeTimers.createClock(1_000_000);
    const asClock: Clock = { now: () => clock.now, setTimeout: (fn, ms) => clock.setTimeout(fn, ms), clearTimeout: (h) => clock.clearTimeout(h as never) };
    const presence = new LocalPresence({ heartbeatIntervalMs: 10_000, heartbeatGraceMs: 5000 });
    const { engine, settled } = awayEngine(clock, engineOpts);
    const ticker = new Ticker({
      sharedPresence,
      clock: asClock,
      engine,
      presence,
      log: pino({ level: 'silent' }),
      metrics: { observeSlot: () => {}, settlementError: () => {}, activeChatsCount: () => {} },
      publish: () => {},
      loadActiveChatIds: async () => ['a', 'b'],
      tickMs: 1000,
      buckets: 1,
    });
    /** Stops the ticker while the fake clock lets a slot in flight finish. */
    const stop = async () => {
      const stopping = ticker.stop();
      await clock.tickAsync(1000);
      await stopping;
    };
    return { clock, presence, settled, ticker, stop };
  }

  it('with presence shared by nodes, settles an away chat at its deadline or when another node wakes it, not on every tick', async () => {
    const { clock, presence, settled, ticker, stop } = idleTicker(true);
    await ticker.start();
    await clock.tickAsync(9_000);
    // settled at the first tick, then only at the 5 s deadline: not nine times each
    expect(settled.filter((s) => s.id === 'a').map((s) => s.at)).to.deep.equal([1000, 6000]);
    // b's user comes back to another node at 9.5 s, which wakes b here: settled at the next tick, and every tick while running
    await clock.tickAsync(500);
    await presence.join('b', 'tab', clock.now);
    ticker.wake(['b']);
    await clock.tickAsync(2500);
    expect(settled.filter((s) => s.id === 'b').map((s) => s.at)).to.deep.equal([1000, 6000, 10_000, 11_000, 12_000]);
    // a command elsewhere wakes a at once
    ticker.wake(['a']);
    await clock.tickAsync(1000);
    expect(settled.filter((s) => s.id === 'a').map((s) => s.at)).to.deep.equal([1000, 6000, 11_000, 13_000]);
    await stop();
  });

  it('with presence shared by nodes, looks an away chat up every 5 s, not every tick, so a lost wake delays its meter by 5 s at most', async () => {
    const { clock, presence, settled, ticker, stop } = idleTicker(true, { wakeAfterMs: 120_000 });
    const looked: Array<{ at: number; ids: string[] }> = [];
    const spans = presence.spans.bind(presence);
    presence.spans = (ids: string[]) => {
      looked.push({ at: clock.now - 1_000_000, ids: [...ids] });
      return spans(ids);
    };
    await ticker.start();
    await clock.tickAsync(2_500);
    // b's user is back on another node whose wake never arrives
    await presence.join('b', 'tab', clock.now);
    await clock.tickAsync(6_000);
    // the settlement at 1 s read both; then one lookup 5 s later finds b back, and b runs from that tick on
    expect(looked.map((l) => l.at)).to.deep.equal([1000, 6000, 6000, 7000, 8000]);
    expect(looked[1]!.ids).to.deep.equal(['a', 'b']);
    expect(settled.filter((s) => s.id === 'b').map((s) => `${s.at} ${s.state}`)).to.deep.equal(['1000 away', '6000 running', '7000 running', '8000 running']);
    expect(settled.filter((s) => s.id === 'a').map((s) => s.at)).to.deep.equal([1000]);
    await stop();
  });

  it('wakes the node that settles a chat when its user comes back here, and only then', async () => {
    const clock = FakeTimers.createClock(1_000_000);
    const asClock: Clock = { now: () => clock.now, setTimeout: (fn, ms) => clock.setTimeout(fn, ms), clearTimeout: (h) => clock.clearTimeout(h as never) };
    const presence = new LocalPresence({ heartbeatIntervalMs: 10_000, heartbeatGraceMs: 5000 });
    const woken: string[][] = [];
    const make = (sharedPresence: boolean, owns: boolean) => {
      // another node holds every lease (or this one does)
      const cluster = Object.assign(new LocalCluster('here'), { claim: (ids: string[]) => ({ chatIds: owns ? ids : [], fence: null }) });
      return new Ticker({
        sharedPresence,
        cluster,
        clock: asClock,
        engine: awayEngine(clock).engine,
        presence,
        log: pino({ level: 'silent' }),
        metrics: { observeSlot: () => {}, settlementError: () => {}, activeChatsCount: () => {} },
        publish: () => {},
        onTracked: (ids) => woken.push(ids),
        loadActiveChatIds: async () => ['a', 'b'],
        tickMs: 1000,
        buckets: 1,
      });
    };
    await presence.join('b', 'tab', clock.now);
    for (const [shared, owns, expected] of [[true, false, [['b']]], [true, true, []], [false, false, []]] as const) {
      woken.length = 0;
      const ticker = make(shared, owns);
      await ticker.start();
      // b's user is here (running), a's is not (away): only b's settler is told
      const soon = Promise.all([ticker.settleSoon('a'), ticker.settleSoon('b')]);
      await clock.tickAsync(1);
      await soon;
      expect(woken, `shared ${shared}, owned here ${owns}`).to.deep.equal(expected);
      const stopping = ticker.stop();
      await clock.tickAsync(1000);
      await stopping;
    }
  });

  it('with presence on this node alone, looks nothing up for an away chat: a return settles it at once', async () => {
    const { clock, presence, settled, ticker, stop } = idleTicker(false);
    let lookups = 0;
    const spans = presence.spans.bind(presence);
    presence.spans = (ids: string[]) => {
      lookups += ids.length;
      return spans(ids);
    };
    await ticker.start();
    await clock.tickAsync(4_000);
    expect(settled.map((s) => s.at)).to.deep.equal([1000, 1000]);
    // each settlement reads its chats' spans; the idle ticks between read none
    expect(lookups).to.equal(2);
    // b's user comes back at 4.5 s: the join settles it then (the socket layer asks), and every tick after
    await clock.tickAsync(500);
    await presence.join('b', 'tab', clock.now);
    const soon = ticker.settleSoon('b');
    await clock.tickAsync(1);
    await soon;
    await clock.tickAsync(2000);
    expect(settled.filter((s) => s.id === 'b').map((s) => s.at)).to.deep.equal([1000, 4500, 5000, 6000]);
    await stop();
  });

  it('does not idle a chat on a tick that read presence before a return settled it meanwhile', async () => {
    // found by review: on one node an away chat is woken only by its user's return, so a stale
    // "away" from a slow tick must not put it back to sleep (deadlines far away: only a return wakes b)
    const { clock, presence, settled, ticker, stop } = idleTicker(false, { wakeAfterMs: 120_000, batchMs: 50 });
    await ticker.start();
    await clock.tickAsync(1010); // the tick of 1 s has read b's presence (absent) and waits on the database
    await presence.join('b', 'tab', clock.now);
    const soon = ticker.settleSoon('b');
    await clock.tickAsync(5);
    expect((await soon)?.ok).to.equal(true);
    await clock.tickAsync(9000);
    await presence.heartbeat('b', 'tab', clock.now);
    await clock.tickAsync(5000);
    // b runs and is settled on every tick from the one after the stale "away"
    const b = settled.filter((s) => s.id === 'b' && s.at > 1010);
    expect(b.length, b.map((s) => `${s.at}:${s.state}`).join(' ')).to.be.at.least(14);
    expect(b.slice(2).every((s) => s.state === 'running')).to.equal(true);
    await stop();
  });
});
