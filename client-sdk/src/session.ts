import type { Client } from './client.js';
import { Emitter } from './emitter.js';
import { ChatmeterError } from './errors.js';
import type { ChatView, EndReason, MeterSnapshot } from './protocol.js';
import type { ServerClock } from './timing.js';

/** Why and how a chat ended: its last meter. */
export interface EndedEvent {
  reason: EndReason;
  meter: MeterSnapshot;
}

type SessionEvents = {
  meter: (meter: MeterSnapshot) => void;
  ended: (event: EndedEvent) => void;
};

/** A wait before retrying a heartbeat or a rejoin that failed for a passing reason. */
const RETRY_MS = 1000;

/**
 * One joined chat: its resource, its latest meter, and its pushes. A user's session heartbeats
 * by itself until `leave()`; each next heartbeat is scheduled from the previous one's answer, a
 * network event, so browsers don't throttle it as a chain of timers in a hidden tab.
 */
export class ChatSession extends Emitter<SessionEvents> {
  #chat: ChatView;
  #meter: MeterSnapshot;
  #intervalMs = 10_000;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #lastBeatAt = 0;
  #endedFired: boolean;
  #stopped = false;
  /** The server time the countdown froze at while disconnected; null while live. */
  #frozenAt: number | null = null;

  constructor(
    private readonly client: Client,
    readonly chatId: string,
    chat: ChatView,
    meter: MeterSnapshot,
    private readonly clock: ServerClock,
  ) {
    super();
    this.#chat = chat;
    this.#meter = meter;
    // joined after it ended: the snapshot says so, and no `ended` fires
    this.#endedFired = meter.state === 'ended';
  }

  /** The chat resource, as of the latest answer. */
  get chat(): ChatView {
    return this.#chat;
  }

  /** The latest snapshot. */
  get meter(): MeterSnapshot {
    return this.#meter;
  }

  /**
   * The affordable time now, whole seconds rounded down and never below 0: counted down from the
   * last snapshot on the server's clock while `running`, the snapshot's value otherwise; null when unlimited.
   */
  secondsLeft(): number | null {
    const m = this.#meter;
    if (m.secondsAffordable === null) return null;
    if (m.state !== 'running') return Math.max(0, Math.floor(m.secondsAffordable));
    const at = this.#frozenAt ?? this.clock.serverNow();
    const elapsedSeconds = Math.max(0, at - Date.parse(m.serverTime)) / 1000;
    return Math.max(0, Math.floor(m.secondsAffordable - elapsedSeconds));
  }

  /** Advisor: `pending` → `active`; resolves with the new meter. */
  start(): Promise<MeterSnapshot> {
    return this.#command('chat:start');
  }

  /** Advisor: stop the meter without ending the chat. */
  pause(): Promise<MeterSnapshot> {
    return this.#command('chat:pause');
  }

  /** Advisor: restart a paused meter. */
  resume(): Promise<MeterSnapshot> {
    return this.#command('chat:resume');
  }

  /** User or advisor: end the chat. */
  end(): Promise<MeterSnapshot> {
    return this.#command('chat:end');
  }

  /** Stops heartbeats and leaves the chat; the meter stops when the user's last tab in it leaves. */
  async leave(): Promise<void> {
    this.stop();
    this.client.forget(this);
    // not connected: the server already dropped this socket's presence, and a reconnect won't rejoin
    if (this.client.state !== 'connected') return;
    try {
      await this.client.call('chat:leave', { chatId: this.chatId });
    } catch (err) {
      // not connected: the server already dropped this socket's presence
      if (!(err instanceof ChatmeterError) || (err.code !== 'disconnected' && err.code !== 'timeout')) throw err;
    }
  }

  /** @internal A join's answer (the first or a rejoin): take the snapshot, start heartbeating. */
  joined(chat: ChatView, meter: MeterSnapshot, intervalMs: number, first: boolean): void {
    this.#chat = chat;
    this.#intervalMs = intervalMs;
    this.#stopped = false;
    this.#frozenAt = null;
    if (!first) this.push(meter);
    if (meter.state === 'ended') return this.ended(chat.endReason ?? 'ended_by_platform', meter);
    // from the join's answer, a network event: the first link of a chain browsers don't throttle
    this.#beatIn(intervalMs);
  }

  /** @internal After a reconnect: join again; meters resume from this fresh snapshot. */
  async rejoin(): Promise<void> {
    if (this.#stopped) return;
    try {
      const ack = await this.client.call('chat:join', { chatId: this.chatId });
      if (!this.#stopped) this.joined(ack.chat, ack.meter, ack.heartbeatIntervalMs, false);
    } catch (err) {
      const code = err instanceof ChatmeterError ? err.code : 'internal';
      if (code === 'not_found' || code === 'forbidden' || code === 'unauthorized') {
        this.stop();
        this.client.forget(this);
      } else if (code !== 'disconnected' && this.client.state === 'connected') {
        // rate limited, a node busy or restarting: try again (a reconnect rejoins anyway)
        this.#timer = setTimeout(() => void this.rejoin(), RETRY_MS);
      }
    }
  }

  /** @internal A pushed snapshot: dropped unless its seq is above the last one seen. */
  push(meter: MeterSnapshot): void {
    if (meter.seq <= this.#meter.seq) return;
    this.#meter = meter;
    this.#frozenAt = null;
    this.#chat = chatAsOf(this.#chat, meter);
    this.emit('meter', meter);
  }

  /**
   * @internal A push that overtook the join's answer: taken in silence (the caller reads `meter`
   * when the join resolves), and an end announced once the caller could attach its listeners.
   */
  overtaken(meter: MeterSnapshot, reason?: EndReason): void {
    if (meter.seq > this.#meter.seq) {
      this.#meter = meter;
      this.#chat = chatAsOf(this.#chat, meter);
    }
    if (reason) setTimeout(() => this.ended(reason, meter), 0);
  }

  /** @internal The chat ended: once, with its last meter. */
  ended(reason: EndReason, meter: MeterSnapshot): void {
    this.push(meter);
    this.#chat = chatAsOf(this.#chat, meter, reason);
    this.stop();
    this.client.forget(this);
    if (this.#endedFired) return;
    this.#endedFired = true;
    this.emit('ended', { reason, meter: this.#meter.seq >= meter.seq ? this.#meter : meter });
  }

  /** @internal The connection dropped: no heartbeats, and the countdown holds still. */
  suspend(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    if (this.#meter.state === 'running' && this.#frozenAt === null) this.#frozenAt = this.clock.serverNow();
  }

  /** @internal The page woke up: a heartbeat now if one is due (timers may not have run while hidden). */
  wake(): void {
    if (!this.#stopped && this.client.now() - this.#lastBeatAt >= this.#intervalMs) this.#beat();
  }

  /** @internal No more heartbeats or retries. */
  stop(): void {
    this.#stopped = true;
    clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  async #command(event: 'chat:start' | 'chat:pause' | 'chat:resume' | 'chat:end'): Promise<MeterSnapshot> {
    const ack = await this.client.call(event, { chatId: this.chatId });
    this.#chat = ack.chat;
    if (ack.meter.state === 'ended') this.ended(ack.chat.endReason ?? 'ended_by_platform', ack.meter);
    else this.push(ack.meter);
    return ack.meter;
  }

  #beatIn(delayMs: number): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    // advisors don't heartbeat: only the user's presence runs the meter
    if (this.#stopped || this.client.principal.role === 'advisor') return;
    this.#timer = setTimeout(() => this.#beat(), delayMs);
  }

  #beat(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#lastBeatAt = this.client.now();
    this.client.heartbeat(this.chatId, this.#intervalMs, (answer) => {
      if (this.#stopped) return;
      if (!(answer instanceof ChatmeterError)) return this.#beatIn(this.#intervalMs); // from the answer: not a chained timer
      switch (answer.code) {
        case 'disconnected':
          return; // the reconnect rejoins and restarts heartbeats
        case 'conflict':
          return void this.rejoin(); // the server no longer has this socket in the chat
        case 'forbidden':
        case 'not_found':
          return this.stop();
        default:
          return this.#beatIn(RETRY_MS);
      }
    });
  }
}

/**
 * The chat as a newer meter shows it: started once its meter left `pending`, ended with its meter.
 * A change learned from a push is stamped with the push's `serverTime` (the settlement's instant);
 * the next join or command answers the stored chat.
 */
export function chatAsOf(chat: ChatView, meter: MeterSnapshot, reason?: EndReason): ChatView {
  if (meter.state === 'ended' && chat.status !== 'ended') {
    return { ...chat, status: 'ended', startedAt: chat.startedAt ?? meter.serverTime, endedAt: meter.serverTime, endReason: reason ?? chat.endReason };
  }
  if (meter.state !== 'pending' && chat.status === 'pending') return { ...chat, status: 'active', startedAt: meter.serverTime };
  if (reason && chat.status === 'ended' && !chat.endReason) return { ...chat, endReason: reason };
  return chat;
}
