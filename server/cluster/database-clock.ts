/**
 * One clock for billing. Node clocks differ; a billing instant stamped by a fast
 * clock would make a slower node find "nothing to bill yet", and a presence span
 * stamped by a slow one would bill seconds twice or lose them. Every node reads
 * time as its own clock plus its measured offset to the database's
 * `clock_timestamp()`, so presence stamps, settlement instants and `serverTime`
 * all come from the database's clock, give or take half a round trip.
 */
import type { DataSource } from 'typeorm';
import type { Clock } from '../clock.js';
import type { Logger } from '../log.js';

/** The local clock corrected to the database's, re-measured every `resyncMs`. */
export class DatabaseClock implements Clock {
  private offsetMs = 0;
  private timer: NodeJS.Timeout | null = null;
  private stopped = false;

  constructor(
    private readonly base: Clock,
    private readonly ds: DataSource,
    private readonly log: Logger,
    private readonly onOffset: (ms: number) => void = () => {},
  ) {}

  /** The database's time now, in epoch ms. */
  now(): number {
    return this.base.now() + this.offsetMs;
  }

  setTimeout(fn: () => void, ms: number): unknown {
    return this.base.setTimeout(fn, ms);
  }

  clearTimeout(handle: unknown): void {
    this.base.clearTimeout(handle);
  }

  /** The database's clock minus this node's, as last measured (ms). */
  get offset(): number {
    return this.offsetMs;
  }

  /**
   * Measures the offset: the best of a few samples (the one with the shortest round
   * trip), taking the database's reading as made halfway through the round trip.
   */
  async sync(samples = 3): Promise<void> {
    let best: { rtt: number; offset: number } | null = null;
    for (let i = 0; i < samples; i++) {
      const sent = this.base.now();
      const [{ t }] = await this.ds.query(`SELECT (extract(epoch FROM clock_timestamp()) * 1000)::float8 AS t`);
      const received = this.base.now();
      const rtt = received - sent;
      if (!best || rtt < best.rtt) best = { rtt, offset: Number(t) - (sent + received) / 2 };
    }
    const next = Math.round(best!.offset);
    if (Math.abs(next - this.offsetMs) > 50) this.log.info({ offsetMs: next, rttMs: best!.rtt }, 'clock offset to the database');
    this.offsetMs = next;
    this.onOffset(next);
  }

  /** Measures now, then again every `resyncMs` (failures keep the last offset). */
  async start(resyncMs = 30_000): Promise<void> {
    this.stopped = false;
    await this.sync();
    const again = () => {
      if (this.stopped) return;
      this.timer = setTimeout(() => {
        this.sync()
          .catch((err: unknown) => this.log.warn({ err }, 'clock sync with the database failed; keeping the last offset'))
          .finally(again);
      }, resyncMs);
      this.timer.unref();
    };
    again();
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }
}

/** `base` shifted by `skewMs`: a node whose clock is wrong, for tests. */
export function skewedClock(base: Clock, skewMs: number): Clock {
  if (!skewMs) return base;
  return { now: () => base.now() + skewMs, setTimeout: base.setTimeout, clearTimeout: base.clearTimeout };
}
