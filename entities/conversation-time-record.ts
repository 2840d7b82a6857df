import { Column, Entity, PrimaryColumn } from 'typeorm';
import type { EndReason, MeterState } from '../client-sdk/src/protocol.js';

/** The one time record of a chat (unique on chat_id); it outlives the chat. */
@Entity({ name: 'conversation_time_records' })
export class ConversationTimeRecord {
  @PrimaryColumn({ type: 'uuid', default: () => 'gen_random_uuid()' })
  id!: string;

  @Column({ name: 'chat_id', type: 'varchar', length: 64, unique: true })
  chatId!: string;

  @Column({ name: 'user_id', type: 'varchar', length: 64 })
  userId!: string;

  @Column({ name: 'advisor_id', type: 'varchar', length: 64 })
  advisorId!: string;

  /** Metered (billed) seconds, free and paid: `freeTimeUsed + paidSeconds`. */
  @Column({ type: 'integer', default: 0 })
  duration!: number;

  @Column({ name: 'free_time_used', type: 'integer', default: 0 })
  freeTimeUsed!: number;

  @Column({ name: 'paid_seconds', type: 'integer', default: 0 })
  paidSeconds!: number;

  /** paidSeconds × rate / 60, rounded half-up to 4 decimals. */
  @Column({ name: 'credits_used', type: 'numeric', precision: 20, scale: 4, default: 0 })
  creditsUsed!: string;

  /** The advisor's rate when this record was created: a chat keeps its rate for life. */
  @Column({ name: 'rate_per_minute', type: 'numeric', precision: 20, scale: 4 })
  ratePerMinute!: string;

  /** The pair's allocation when this record was created. */
  @Column({ name: 'total_free_time_allocation', type: 'integer' })
  totalFreeTimeAllocation!: number;

  @Column({ name: 'is_active', type: 'boolean', default: true })
  isActive!: boolean;

  /** When the record was created. */
  @Column({ name: 'timestamp', type: 'timestamptz', default: () => 'now()' })
  timestamp!: Date;

  @Column({ name: 'last_heartbeat_time', type: 'timestamptz', nullable: true })
  lastHeartbeatTime!: Date | null;

  /** The instant billing has reached: a settlement bills only whole seconds after it. */
  @Column({ name: 'settled_until', type: 'timestamptz', nullable: true })
  settledUntil!: Date | null;

  /** The latest instant the user was known present (drives abandonment). */
  @Column({ name: 'last_present_at', type: 'timestamptz', nullable: true })
  lastPresentAt!: Date | null;

  @Column({ name: 'ended_at', type: 'timestamptz', nullable: true })
  endedAt!: Date | null;

  @Column({ name: 'end_reason', type: 'text', nullable: true })
  endReason!: EndReason | null;

  /** Numbers the chat's open charge entry; a top-up closes it so later charges start a new one. */
  @Column({ name: 'charge_segment', type: 'integer', default: 0 })
  chargeSegment!: number;

  /** The `seq` of the latest meter snapshot of this chat. */
  @Column({ name: 'meter_seq', type: 'bigint', default: 0 })
  meterSeq!: string;

  /** Set once `balance:low` went out; cleared when the affordable time rises back above the threshold. */
  @Column({ name: 'low_balance_warned', type: 'boolean', default: false })
  lowBalanceWarned!: boolean;

  /** The state of the latest meter snapshot, to push at once when it changes. */
  @Column({ name: 'meter_state', type: 'text', default: 'pending' })
  meterState!: MeterState;
}
