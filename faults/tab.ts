/**
 * A user's browser tab as the fault run plays it: a socket.io client that joins its
 * chat on every (re)connect and heartbeats while joined, and that writes down when
 * it was joined (each session from the join sent and acknowledged to the
 * disconnect) and the meters it received. After its first connection it
 * reconnects through the balancer, as a tab behind a load balancer would.
 */
import { type Socket, io as connectClient } from 'socket.io-client';
import type { MeterSnapshot } from '../client-sdk/src/protocol.js';

/** One joined stretch: join sent, join acknowledged (ok or not), disconnected. */
export interface Session {
  sent: number;
  ack: number | null;
  ok: boolean | null;
  end: number | null;
}

/**
 * A window a fault put on this tab: `uncertain` when the rules allow the meter to run or
 * not (a dead node's last renewal to its heartbeat window's lapse), `absent` when no
 * heartbeat could reach a live node (the tab's node was stopped), so nothing may be billed.
 */
export interface Override {
  from: number;
  to: number;
  kind: 'uncertain' | 'absent';
}

export class Tab {
  readonly sessions: Session[] = [];
  readonly overrides: Override[] = [];
  /** The node label it is on, while known (its first connection); null after it reconnected. */
  node: string | null;
  /** The meters received lately (the last 200), with when they arrived. */
  readonly meters: Array<{ state: string; duration: number; serverTime: number; at: number }> = [];
  heartbeatErrors = 0;
  private readonly timer: NodeJS.Timeout;

  private constructor(
    readonly chatId: string,
    readonly userId: string,
    private readonly socket: Socket,
    node: string | null,
    heartbeatEveryMs: number,
  ) {
    this.node = node;
    this.timer = setInterval(() => this.heartbeat(), heartbeatEveryMs);
  }

  /** Connects to `url`, joins the chat, and from then on reconnects through `via`. */
  static open(o: { url: string; via: string; token: string; chatId: string; userId: string; node: string | null; heartbeatEveryMs: number }): Promise<Tab> {
    const socket = connectClient(o.url, {
      auth: { token: o.token },
      transports: ['websocket'],
      forceNew: true,
      reconnection: true,
      reconnectionDelay: 200,
      reconnectionDelayMax: 1000,
      randomizationFactor: 0.5,
    });
    const tab = new Tab(o.chatId, o.userId, socket, o.node, o.heartbeatEveryMs);
    socket.on('connect', () => tab.join());
    socket.on('disconnect', () => {
      const s = tab.sessions.at(-1);
      if (s && s.end === null) s.end = Date.now();
      tab.node = null;
    });
    socket.on('meter', (m: MeterSnapshot) => tab.onMeter(m));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        tab.close();
        reject(new Error(`tab of ${o.chatId} could not join within 15 s`));
      }, 15_000);
      const check = setInterval(() => {
        const s = tab.sessions.at(-1);
        if (s?.ok === true) {
          clearTimeout(timer);
          clearInterval(check);
          // from now on it reconnects through the balancer
          (socket.io as unknown as { uri: string }).uri = o.via;
          resolve(tab);
        }
      }, 20);
    });
  }

  private join(): void {
    const session: Session = { sent: Date.now(), ack: null, ok: null, end: null };
    this.sessions.push(session);
    this.socket
      .timeout(10_000)
      .emitWithAck('chat:join', { chatId: this.chatId })
      .then((ack: { ok: boolean }) => {
        session.ack = Date.now();
        session.ok = ack.ok === true;
      })
      .catch(() => undefined); // no answer: unknown, counted only as possible presence
  }

  private heartbeat(): void {
    if (!this.socket.connected || this.sessions.at(-1)?.ok !== true) return;
    this.socket.emit('heartbeat', { chatId: this.chatId }, (ack: { ok: boolean }) => {
      if (!ack?.ok) this.heartbeatErrors++;
    });
  }

  private onMeter(m: MeterSnapshot): void {
    if (m.chatId !== this.chatId) return;
    this.meters.push({ state: m.state, duration: m.durationSeconds, serverTime: Date.parse(m.serverTime), at: Date.now() });
    if (this.meters.length > 200) this.meters.shift();
  }

  get last(): Tab['meters'][number] | undefined {
    return this.meters.at(-1);
  }

  /** When the first running meter settled at or after `since`, beyond `d0` billed seconds, arrived (null: none yet). */
  resumedAt(since: number, d0: number): number | null {
    const m = this.meters.find((x) => x.at >= since && x.serverTime >= since && x.state === 'running' && x.duration > d0);
    return m?.at ?? null;
  }

  get connected(): boolean {
    return this.socket.connected;
  }

  /** Drops its transport, as a proxy restart would: it reconnects (through the balancer) and joins again. */
  drop(): void {
    (this.socket.io as unknown as { engine?: { close(): void } }).engine?.close();
  }

  close(): void {
    clearInterval(this.timer);
    this.socket.disconnect();
  }
}
