/**
 * A client worker of the load run: many socket.io-client sockets in one process,
 * each a user's browser tab (connect, `chat:join`, heartbeat at the interval the
 * join ack gives) or an advisor's dashboard (connect, `advisor:chats`), and what
 * arrives measured. The orchestrator forks several (BENCH_CLIENTS) and drives them
 * phase by phase over IPC (`messages.ts`): the paced connect storm, the steady
 * window, a reconnect of every socket at once, and the close.
 *
 * Runs only as a child of `load.ts`; it exits when its parent goes.
 */
import { performance } from 'node:perf_hooks';
import { type Socket, io as connectClient } from 'socket.io-client';
import type { ClientToServerEvents, MeterSnapshot, ServerToClientEvents } from '../../client-sdk/src/protocol.js';
import type { FromWorker, ReconnectResult, SocketSpec, StormResult, ToWorker, WindowResult, WorkerSetup } from './messages.js';
import { countError } from './stats.js';

type ClientSocket = Socket<ServerToClientEvents, ClientToServerEvents>;

/** The meters of one chat as one socket sees them. */
interface Stream {
  lastAt: number;
  lastSeq: number;
  inWindow: number;
  lastInWindow: boolean;
}

interface Conn {
  spec: SocketSpec;
  s: ClientSocket | null;
  timers: NodeJS.Timeout[];
  /** A user tab's one chat, or a dashboard's chats by id. */
  streams: Map<string, Stream>;
  /** Meters this socket received in the window. */
  inWindow: number;
}

/** Meters are counted per slice of this many ms, to see how evenly pushes spread over the tick. */
const BIN_MS = 100;

/** Every `PAYLOAD_SAMPLE`th meter has its JSON measured: enough for a size, cheap enough for the loop. */
const PAYLOAD_SAMPLE = 97;

const send = (m: FromWorker) => process.send!(m);

async function main(): Promise<void> {
  process.on('disconnect', () => process.exit(0));
  const setup = await new Promise<WorkerSetup>((resolve) => {
    const onSetup = (m: ToWorker) => {
      if (m.type !== 'setup') return;
      process.off('message', onSetup);
      resolve(m.setup);
    };
    process.on('message', onSetup);
  });
  const conns: Conn[] = setup.sockets.map((spec) => ({ spec, s: null, timers: [], streams: new Map(), inWindow: 0 }));

  let win = { start: Infinity, end: -Infinity };
  let closing = false;
  const w = {
    received: 0,
    receivedPerNode: new Array<number>(setup.nodes).fill(0),
    jitter: [] as number[],
    lag: [] as number[],
    seqGaps: 0,
    seqRepeats: 0,
    notRunning: 0,
    payload: { sum: 0, n: 0, min: Infinity, max: 0 },
    hbSent: 0,
    hbErrors: 0,
    hbAck: [] as number[],
    disconnects: 0,
    bins: [] as number[],
  };
  let sampled = 0;

  const onMeter = (c: Conn, m: MeterSnapshot) => {
    const t = performance.now();
    const now = Date.now();
    const inWindow = now >= win.start && now < win.end;
    let st = c.streams.get(m.chatId);
    if (!st) {
      st = { lastAt: -Infinity, lastSeq: -1, inWindow: 0, lastInWindow: false };
      c.streams.set(m.chatId, st);
    }
    if (inWindow) {
      w.received++;
      w.receivedPerNode[c.spec.node]!++;
      c.inWindow++;
      st.inWindow++;
      if (m.state !== 'running') w.notRunning++;
      w.bins[Math.floor((now - win.start) / BIN_MS)]!++;
      w.lag.push(now - Date.parse(m.serverTime));
      if (st.lastInWindow) w.jitter.push(Math.abs(t - st.lastAt - setup.tickMs));
      if (st.lastSeq >= 0) {
        if (m.seq > st.lastSeq + 1) w.seqGaps += m.seq - st.lastSeq - 1;
        else if (m.seq <= st.lastSeq) w.seqRepeats++;
      }
      if (sampled++ % PAYLOAD_SAMPLE === 0) {
        const bytes = Buffer.byteLength(JSON.stringify(m));
        w.payload.sum += bytes;
        w.payload.n++;
        w.payload.min = Math.min(w.payload.min, bytes);
        w.payload.max = Math.max(w.payload.max, bytes);
      }
    }
    st.lastAt = t;
    st.lastInWindow = inWindow;
    st.lastSeq = Math.max(st.lastSeq, m.seq);
  };

  const heartbeat = (c: Conn, chatId: string) => {
    const s = c.s;
    if (!s || !s.connected || closing) return;
    const sentAt = performance.now();
    const now = Date.now();
    const inWindow = now >= win.start && now < win.end;
    if (inWindow) w.hbSent++;
    s.timeout(setup.ackTimeoutMs)
      .emitWithAck('heartbeat', { chatId })
      .then(
        (ack) => {
          if (!inWindow) return;
          if (ack.ok) w.hbAck.push(performance.now() - sentAt);
          else w.hbErrors++;
        },
        () => {
          if (inWindow && !closing) w.hbErrors++;
        },
      );
  };
  const stopHeartbeats = (c: Conn) => {
    for (const t of c.timers) clearTimeout(t);
    c.timers = [];
  };

  /** Joins after a connect: the tab's chat, or the dashboard's list; resolves with the ack's latency. */
  const join = async (c: Conn): Promise<number> => {
    const s = c.s!;
    const started = performance.now();
    if (c.spec.role === 'advisor') {
      const ack = await s.timeout(setup.ackTimeoutMs).emitWithAck('advisor:chats', {});
      if (!ack.ok) throw new Error(`advisor:chats ${ack.error.code}: ${ack.error.message}`);
      return performance.now() - started;
    }
    const chatId = c.spec.chatId!;
    const ack = await s.timeout(setup.ackTimeoutMs).emitWithAck('chat:join', { chatId });
    const ms = performance.now() - started;
    if (!ack.ok) throw new Error(`chat:join ${ack.error.code}: ${ack.error.message}`);
    const every = setup.heartbeatEveryMs ?? ack.heartbeatIntervalMs;
    stopHeartbeats(c);
    // a random phase per tab: heartbeats spread over the interval as real tabs' do
    c.timers.push(
      setTimeout(() => {
        heartbeat(c, chatId);
        c.timers.push(setInterval(() => heartbeat(c, chatId), every));
      }, Math.random() * every),
    );
    return ms;
  };

  // what a connect leads to depends on the phase: the storm's first connect, or a reconnect
  let onReconnected: ((c: Conn) => void) | null = null;

  const storm = async (startAt: number): Promise<StormResult> => {
    const r: StormResult = {
      attempted: 0,
      connected: 0,
      joined: 0,
      joinedPerNode: new Array<number>(setup.nodes).fill(0),
      firstAttemptAt: Infinity,
      firstConnectedAt: Infinity,
      lastConnectedAt: 0,
      lastJoinedAt: 0,
      connectMs: [],
      joinMs: [],
      dashboardMs: [],
      errors: {},
    };
    const open = (c: Conn) =>
      new Promise<void>((resolve) => {
        r.attempted++;
        const now = Date.now();
        r.firstAttemptAt = Math.min(r.firstAttemptAt, now);
        const t0 = performance.now();
        const s: ClientSocket = connectClient(c.spec.url, {
          auth: { token: c.spec.token },
          transports: ['websocket'],
          reconnection: false,
          forceNew: true,
          timeout: setup.ackTimeoutMs,
        });
        const failed = (err: Error) => {
          countError(r.errors, `connect: ${err.message}`);
          s.close();
          resolve();
        };
        s.once('connect_error', failed);
        s.once('connect', () => {
          // from now on a failed connect is a reconnect's, and socket.io-client retries it
          s.off('connect_error', failed);
          c.s = s;
          r.connected++;
          r.connectMs.push(performance.now() - t0);
          const at = Date.now();
          r.firstConnectedAt = Math.min(r.firstConnectedAt, at);
          r.lastConnectedAt = Math.max(r.lastConnectedAt, at);
          s.on('meter', (m) => onMeter(c, m));
          s.on('disconnect', () => {
            stopHeartbeats(c);
            if (!closing && !onReconnected) w.disconnects++;
          });
          // later connects are reconnects
          s.on('connect', () => onReconnected?.(c));
          join(c).then(
            (ms) => {
              (c.spec.role === 'user' ? r.joinMs : r.dashboardMs).push(ms);
              r.joined++;
              r.joinedPerNode[c.spec.node]!++;
              r.lastJoinedAt = Math.max(r.lastJoinedAt, Date.now());
              resolve();
            },
            (err: unknown) => {
              countError(r.errors, err);
              resolve();
            },
          );
        });
      });

    // paced: socket i opens at startAt + offset + i / rate, whatever the earlier ones are doing
    const pending: Array<Promise<void>> = [];
    const period = 1000 / setup.rate;
    let next = 0;
    await new Promise<void>((resolve) => {
      const pump = () => {
        const due = Math.floor((Date.now() - startAt - setup.offsetMs) / period) + 1;
        while (next < conns.length && next < due) pending.push(open(conns[next++]!));
        if (next >= conns.length) resolve();
        else setTimeout(pump, Math.min(20, Math.max(1, startAt + setup.offsetMs + next * period - Date.now())));
      };
      setTimeout(pump, Math.max(0, startAt + setup.offsetMs - Date.now()));
    });
    await Promise.all(pending);
    return r;
  };

  const windowResult = (cpuAtStart: NodeJS.CpuUsage): WindowResult => {
    const cpu = process.cpuUsage(cpuAtStart);
    return {
      tabMeters: conns.filter((c) => c.s && c.spec.role === 'user').map((c) => c.inWindow),
      dashboardMeters: conns.filter((c) => c.s && c.spec.role === 'advisor').map((c) => c.inWindow),
      received: w.received,
      receivedPerNode: w.receivedPerNode,
      per100ms: w.bins,
      jitterMs: w.jitter,
      lagMs: w.lag,
      seqGaps: w.seqGaps,
      seqRepeats: w.seqRepeats,
      notRunning: w.notRunning,
      payloadBytes: { ...w.payload, min: w.payload.n ? w.payload.min : 0 },
      heartbeats: { sent: w.hbSent, errors: w.hbErrors, ackMs: w.hbAck },
      unexpectedDisconnects: w.disconnects,
      cpuMs: (cpu.user + cpu.system) / 1000,
      rssMB: Math.round(process.memoryUsage.rss() / 2 ** 20),
    };
  };

  /** Drops every transport at `at` (as a network blip or a proxy restart would); sockets reconnect and join again. */
  const reconnect = (at: number, timeoutMs: number, delayMs: number): Promise<ReconnectResult> =>
    new Promise((resolve) => {
      const r: ReconnectResult = { dropped: 0, rejoined: 0, rejoinMs: [], lastRejoinedAt: 0, attempts: 0, errors: {} };
      let done = false;
      const finish = () => {
        if (done) return;
        done = true;
        onReconnected = null;
        resolve(r);
      };
      onReconnected = (c) => {
        join(c).then(
          () => {
            const now = Date.now();
            r.rejoinMs.push(now - at);
            r.lastRejoinedAt = Math.max(r.lastRejoinedAt, now);
            if (++r.rejoined === r.dropped) finish();
          },
          (err: unknown) => countError(r.errors, err),
        );
      };
      setTimeout(() => {
        for (const c of conns) {
          const s = c.s;
          if (!s?.connected) continue;
          r.dropped++;
          stopHeartbeats(c);
          // socket.io-client's own reconnection (by default 1 s ± 50%, doubling up to 5 s), as a browser tab has it
          s.io.reconnection(true);
          s.io.reconnectionDelay(delayMs);
          s.io.on('reconnect_attempt', () => r.attempts++);
          s.io.on('reconnect_error', (err) => countError(r.errors, `reconnect: ${err.message}`));
          s.io.engine.close();
        }
        if (r.dropped === 0) finish();
        setTimeout(finish, timeoutMs);
      }, Math.max(0, at - Date.now()));
    });

  let cpuAtWindow = process.cpuUsage();
  process.on('message', (m: ToWorker) => {
    const fail = (err: unknown) => send({ type: 'fatal', message: String((err as Error)?.stack ?? err) });
    switch (m.type) {
      case 'setup':
        break;
      case 'storm':
        storm(m.startAt).then((result) => send({ type: 'storm', result }), fail);
        break;
      case 'window':
        win = { start: m.start, end: m.end };
        w.bins = new Array<number>(Math.ceil((m.end - m.start) / BIN_MS)).fill(0);
        setTimeout(() => (cpuAtWindow = process.cpuUsage()), Math.max(0, m.start - Date.now()));
        break;
      case 'report':
        send({ type: 'window', result: windowResult(cpuAtWindow) });
        break;
      case 'drop':
        reconnect(m.at, m.timeoutMs, m.delayMs).then((result) => send({ type: 'reconnected', result }), fail);
        break;
      case 'close':
        closing = true;
        for (const c of conns) {
          stopHeartbeats(c);
          c.s?.io.reconnection(false);
          c.s?.disconnect();
        }
        // let the close frames go out before saying so
        setTimeout(() => send({ type: 'closed' }), 500);
        break;
      default: {
        const _exhaustive: never = m;
        throw new Error(`unknown message ${JSON.stringify(_exhaustive)}`);
      }
    }
  });
  send({ type: 'ready' });
}

main().catch((err: unknown) => {
  send({ type: 'fatal', message: String((err as Error)?.stack ?? err) });
  process.exit(1);
});
