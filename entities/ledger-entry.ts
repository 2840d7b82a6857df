import { Column, Entity, PrimaryGeneratedColumn } from 'typeorm';
import type { LedgerEntryType } from '../client-sdk/src/protocol.js';

/** One change of a user's balance. */
@Entity({ name: 'ledger_entries' })
export class LedgerEntry {
  @PrimaryGeneratedColumn('identity', { type: 'bigint', generatedIdentity: 'ALWAYS' })
  id!: string;

  @Column({ name: 'user_id', type: 'varchar', length: 64 })
  userId!: string;

  @Column({ type: 'text' })
  type!: LedgerEntryType;

  /** Positive decimal string; the sign comes from `type`. */
  @Column({ type: 'numeric', precision: 20, scale: 4 })
  amount!: string;

  @Column({ name: 'balance_after', type: 'numeric', precision: 20, scale: 4 })
  balanceAfter!: string;

  @Column({ name: 'chat_id', type: 'varchar', length: 64, nullable: true })
  chatId!: string | null;

  @Column({ name: 'idempotency_key', type: 'varchar', length: 200 })
  idempotencyKey!: string;

  @Column({ name: 'created_at', type: 'timestamptz', default: () => 'now()' })
  createdAt!: Date;

  @Column({ name: 'updated_at', type: 'timestamptz', default: () => 'now()' })
  updatedAt!: Date;
}
