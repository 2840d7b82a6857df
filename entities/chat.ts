import { Column, Entity, PrimaryColumn } from 'typeorm';
import type { ChatStatus, EndReason } from '../client-sdk/src/protocol.js';

/** One conversation between one user and one advisor: pending → active → ended. */
@Entity({ name: 'chats' })
export class Chat {
  @PrimaryColumn({ type: 'varchar', length: 64 })
  id!: string;

  @Column({ name: 'user_id', type: 'varchar', length: 64 })
  userId!: string;

  @Column({ name: 'advisor_id', type: 'varchar', length: 64 })
  advisorId!: string;

  @Column({ type: 'text', default: 'pending' })
  status!: ChatStatus;

  /** Set by the advisor; the chat stays `active` but its meter stops. */
  @Column({ type: 'boolean', default: false })
  paused!: boolean;

  @Column({ name: 'end_reason', type: 'text', nullable: true })
  endReason!: EndReason | null;

  @Column({ name: 'created_at', type: 'timestamptz', default: () => 'now()' })
  createdAt!: Date;

  @Column({ name: 'started_at', type: 'timestamptz', nullable: true })
  startedAt!: Date | null;

  @Column({ name: 'ended_at', type: 'timestamptz', nullable: true })
  endedAt!: Date | null;
}
