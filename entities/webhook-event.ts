import { Column, Entity, PrimaryColumn } from 'typeorm';

/** Where a webhook event is in its delivery. */
export type WebhookStatus = 'pending' | 'delivered' | 'failed';

/** One event of the webhook outbox (SPEC 8), recorded with the change it reports. */
@Entity({ name: 'webhook_events' })
export class WebhookEvent {
  /** The event's id, as receivers deduplicate by it. */
  @PrimaryColumn({ type: 'uuid' })
  id!: string;

  /** Orders the deliveries list (newest first). */
  @Column({ type: 'bigint', generated: 'identity', generatedIdentity: 'ALWAYS', unique: true })
  seq!: string;

  @Column({ type: 'text' })
  type!: string;

  /** The change's time. */
  @Column({ name: 'created_at', type: 'timestamptz' })
  createdAt!: Date;

  /** The exact JSON sent at every attempt: `{ id, type, createdAt, data }`. */
  @Column({ type: 'text' })
  body!: string;

  @Column({ type: 'text', default: 'pending' })
  status!: WebhookStatus;

  @Column({ type: 'integer', default: 0 })
  attempts!: number;

  @Column({ name: 'last_attempt_at', type: 'timestamptz', nullable: true })
  lastAttemptAt!: Date | null;

  @Column({ name: 'last_response_status', type: 'integer', nullable: true })
  lastResponseStatus!: number | null;

  /** When the next attempt is due; null once delivered or failed. */
  @Column({ name: 'next_attempt_at', type: 'timestamptz', nullable: true })
  nextAttemptAt!: Date | null;

  /** A node is delivering it until then; another may claim it after (the first died). */
  @Column({ name: 'claimed_until', type: 'timestamptz', nullable: true })
  claimedUntil!: Date | null;

  @Column({ name: 'delivered_at', type: 'timestamptz', nullable: true })
  deliveredAt!: Date | null;
}
