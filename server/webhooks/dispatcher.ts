/**
 * Delivers the webhook outbox (SPEC 8). Any number of nodes run one: each claims due events
 * with `FOR UPDATE SKIP LOCKED` and a claim that outlives one attempt (so an event is sent by
 * one node at a time, and by another once a node dies mid-attempt), POSTs them signed with a
 * timeout, and records the answer: delivered, or retried after 5 s, 10 s, 20 s ... (±20%,
 * at most an hour apart) until 24 hours after the change, then failed.
 * A slow or dead receiver holds no database connection and at most `concurrency` requests;
 * the tick and the sockets never wait for it.
 */
import type { DataSource } from 'typeorm';
import { updateReturning } from '../db.js';
import type { Logger } from '../log.js';
import type { Metrics } from '../metrics.js';
import { SIGNATURE_HEADER, sign } from './signature.js';

export interface DispatcherOptions {
  url: string;
  secret: string;
  timeoutMs: number;
  /** Requests in flight at most (default 8). */
  concurrency?: number;
  /** How often to look for due events when nothing announced any (default 1000 ms). */
  pollMs?: number;
  /** The first retry's delay (default 5000 ms; doubles each time). */
  retryBaseMs?: number;
  /** How long after the change an event is retried (default 24 h). */
  giveUpAfterMs?: number;
  /** For tests. */
  random?: () => number;
  fetch?: typeof fetch;
}

/** The wait before retry n (1-based): base × 2^(n-1), ±20%, never more than an hour. */
export function retryDelayMs(attempt: number, baseMs: number, random: () => number = Math.random): number {
  const nominal = baseMs * 2 ** Math.min(attempt - 1, 30);
  return Math.min(3_600_000, Math.round(nominal * (0.8 + 0.4 * random())));
}

interface Claimed {
  id: string;
  type: string;
  body: string;
  created_at: Date;
  /** Attempts before this one. */
  attempts: number;
}

export class WebhookDispatcher {
  readonly #o: Required<Omit<DispatcherOptions, 'fetch' | 'random'>> & Pick<DispatcherOptions, 'fetch' | 'random'>;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #running: Promise<void> | null = null;
  #again = false;
  #stopped = true;
  readonly #inflight = new Set<Promise<void>>();

  constructor(
    private readonly ds: DataSource,
    private readonly log: Logger,
    private readonly metrics: Metrics,
    options: DispatcherOptions,
  ) {
    this.#o = { concurrency: 8, pollMs: 1000, retryBaseMs: 5000, giveUpAfterMs: 24 * 3600_000, ...options };
  }

  start(): void {
    this.#stopped = false;
    this.#schedule(0);
  }

  /** Events were just recorded (or a retry asked for): look now rather than at the next poll. */
  poke(): void {
    if (this.#stopped) return;
    if (this.#running) this.#again = true;
    else this.#schedule(0);
  }

  /** Stops claiming and waits for the requests in flight (each bounded by the timeout). */
  async stop(): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#timer);
    await this.#running;
    await Promise.allSettled([...this.#inflight]);
  }

  #schedule(ms: number): void {
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => void this.#pass(), ms);
    this.#timer.unref?.();
  }

  /** One look at the outbox: claim what is due and room allows, send each without waiting. */
  async #pass(): Promise<void> {
    if (this.#stopped || this.#running) return;
    this.#running = (async () => {
      try {
        const room = this.#o.concurrency - this.#inflight.size;
        if (room <= 0) return;
        for (const event of await this.#claim(room)) {
          const sending = this.#deliver(event).finally(() => {
            this.#inflight.delete(sending);
            this.poke(); // room again: there may be more due
          });
          this.#inflight.add(sending);
        }
      } catch (err) {
        this.metrics.backgroundErrors.inc({ where: 'webhooks' });
        this.log.error({ err }, 'claiming webhook events failed');
      }
    })();
    await this.#running;
    this.#running = null;
    if (this.#stopped) return;
    if (this.#again) {
      this.#again = false;
      this.#schedule(0);
    } else this.#schedule(this.#o.pollMs);
  }

  /** Claims up to `limit` due events for one attempt plus a margin; another node skips them meanwhile. */
  async #claim(limit: number): Promise<Claimed[]> {
    return updateReturning(
      this.ds,
      `UPDATE webhook_events e SET claimed_until = clock_timestamp() + $2 * interval '1 millisecond'
        WHERE e.id IN (SELECT id FROM webhook_events
                        WHERE status = 'pending' AND next_attempt_at <= clock_timestamp()
                          AND (claimed_until IS NULL OR claimed_until < clock_timestamp())
                        ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED)
        RETURNING e.id, e.type, e.body, e.created_at, e.attempts`,
      [limit, this.#o.timeoutMs + 5000],
    );
  }

  async #deliver(event: Claimed): Promise<void> {
    const attemptAt = Date.now();
    let status: number | null = null;
    let failure: string | null = null;
    try {
      const res = await (this.#o.fetch ?? fetch)(this.#o.url, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'user-agent': 'chatmeter-webhooks', [SIGNATURE_HEADER]: sign(this.#o.secret, event.body, attemptAt) },
        body: event.body,
        signal: AbortSignal.timeout(this.#o.timeoutMs),
        redirect: 'manual',
      });
      status = res.status;
      await res.body?.cancel().catch(() => undefined);
      if (status < 200 || status > 299) failure = `answered ${status}`;
    } catch (err) {
      failure = (err as Error).name === 'TimeoutError' ? `no answer within ${this.#o.timeoutMs} ms` : (err as Error).message;
    }
    const ids = { eventId: event.id, type: event.type };
    try {
      if (!failure) {
        await this.ds.query(
          `UPDATE webhook_events SET status = 'delivered', attempts = attempts + 1, last_attempt_at = $2, last_response_status = $3,
                  next_attempt_at = NULL, claimed_until = NULL, delivered_at = clock_timestamp()
            WHERE id = $1 AND status = 'pending'`,
          [event.id, new Date(attemptAt), status],
        );
        this.metrics.webhookAttempts.inc({ outcome: 'delivered' });
        this.metrics.webhookLatency.observe((Date.now() - event.created_at.getTime()) / 1000);
        this.log.debug(ids, 'webhook delivered');
        return;
      }
      const rows: Array<{ status: string; attempts: number }> = await updateReturning(
        this.ds,
        `UPDATE webhook_events
            SET attempts = attempts + 1, last_attempt_at = $2, last_response_status = $3, claimed_until = NULL,
                status = CASE WHEN $4::timestamptz > created_at + $5 * interval '1 millisecond' THEN 'failed' ELSE 'pending' END,
                next_attempt_at = CASE WHEN $4::timestamptz > created_at + $5 * interval '1 millisecond' THEN NULL ELSE $4::timestamptz END
          WHERE id = $1 AND status = 'pending'
          RETURNING status, attempts`,
        [event.id, new Date(attemptAt), status, new Date(Date.now() + retryDelayMs(event.attempts + 1, this.#o.retryBaseMs, this.#o.random)), this.#o.giveUpAfterMs],
      );
      const gaveUp = rows[0]?.status === 'failed';
      this.metrics.webhookAttempts.inc({ outcome: gaveUp ? 'gave_up' : 'retry' });
      this.log.warn({ ...ids, attempts: rows[0]?.attempts, reason: failure, gaveUp }, gaveUp ? 'webhook failed for good' : 'webhook attempt failed; retrying');
    } catch (err) {
      // the claim lapses and the event is attempted again: at least once, never lost
      this.metrics.backgroundErrors.inc({ where: 'webhooks' });
      this.log.error({ ...ids, err }, 'recording a webhook attempt failed');
    }
  }
}
