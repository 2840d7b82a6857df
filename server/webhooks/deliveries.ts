/** The operator's view of the webhook outbox: list deliveries, send one again. */
import type { DataSource } from 'typeorm';
import type { WebhookStatus } from '../../entities/webhook-event.js';
import { updateReturning } from '../db.js';
import { ConflictError, NotFoundError } from '../errors.js';
import type { WebhookEventType } from './events.js';

/** One item of `GET /v1/webhook-deliveries` (SPEC 8). */
export interface DeliveryView {
  id: string;
  type: WebhookEventType;
  createdAt: string;
  status: WebhookStatus;
  attempts: number;
  lastAttemptAt: string | null;
  lastResponseStatus: number | null;
  nextAttemptAt: string | null;
}

interface Row {
  id: string;
  seq: string;
  type: WebhookEventType;
  created_at: Date;
  status: WebhookStatus;
  attempts: number;
  last_attempt_at: Date | null;
  last_response_status: number | null;
  next_attempt_at: Date | null;
}

export class WebhookDeliveries {
  /** @param sendSoon asks this node's dispatcher to look at once (none without webhooks). */
  constructor(
    private readonly ds: DataSource,
    private readonly sendSoon: () => void = () => undefined,
  ) {}

  /** Newest first, one page; `cursor` is the `nextCursor` of the previous page. */
  async page(status: WebhookStatus | null, limit: number, cursor: string | null): Promise<{ items: DeliveryView[]; nextCursor: string | null }> {
    const rows: Row[] = await this.ds.query(
      `SELECT id, seq, type, created_at, status, attempts, last_attempt_at, last_response_status, next_attempt_at
         FROM webhook_events
        WHERE ($1::text IS NULL OR status = $1) AND ($2::bigint IS NULL OR seq < $2::bigint)
        ORDER BY seq DESC LIMIT $3`,
      [status, cursor, limit + 1],
    );
    const page = rows.slice(0, limit);
    return { items: page.map(toView), nextCursor: rows.length > limit ? page.at(-1)!.seq : null };
  }

  /** Sends a pending or failed event at once (pending again, due now); a delivered one is a conflict. */
  async retry(id: string): Promise<DeliveryView> {
    const rows: Row[] = await updateReturning(
      this.ds,
      `UPDATE webhook_events SET status = 'pending', next_attempt_at = clock_timestamp()
        WHERE id = $1 AND status <> 'delivered'
        RETURNING id, seq, type, created_at, status, attempts, last_attempt_at, last_response_status, next_attempt_at`,
      [id],
    );
    if (!rows[0]) {
      const found: Array<{ status: string }> = await this.ds.query(`SELECT status FROM webhook_events WHERE id = $1`, [id]);
      if (found[0]) throw new ConflictError(`event ${id} was delivered already`);
      throw new NotFoundError(`no webhook event ${id}`);
    }
    this.sendSoon();
    return toView(rows[0]);
  }

  /** Events by status across the cluster, for `/metrics`. */
  async counts(): Promise<{ pending: number; failed: number }> {
    const rows: Array<{ status: string; n: number }> = await this.ds.query(
      `SELECT status, count(*)::int AS n FROM webhook_events WHERE status IN ('pending', 'failed') GROUP BY status`,
    );
    const of = (s: string) => rows.find((r) => r.status === s)?.n ?? 0;
    return { pending: of('pending'), failed: of('failed') };
  }
}

const iso = (d: Date | null) => (d ? d.toISOString() : null);

function toView(r: Row): DeliveryView {
  return {
    id: r.id,
    type: r.type,
    createdAt: r.created_at.toISOString(),
    status: r.status,
    attempts: r.attempts,
    lastAttemptAt: iso(r.last_attempt_at),
    lastResponseStatus: r.last_response_status,
    nextAttemptAt: iso(r.next_attempt_at),
  };
}
