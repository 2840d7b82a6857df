import { Column, Entity, PrimaryColumn } from 'typeorm';

/**
 * One of the 64 shards active chats are hashed into, with its settlement lease: the
 * owner settles the shard's chats until `expires_at` (the database's clock), and every
 * new owner bumps `epoch`, which fences the settlement transaction.
 */
@Entity({ name: 'settlement_shards' })
export class SettlementShard {
  @PrimaryColumn({ type: 'integer' })
  shard!: number;

  @Column({ type: 'text', nullable: true })
  owner!: string | null;

  @Column({ type: 'bigint' })
  epoch!: string;

  @Column({ name: 'expires_at', type: 'timestamptz' })
  expiresAt!: Date;
}
