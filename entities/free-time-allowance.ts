import { Column, Entity, PrimaryColumn } from 'typeorm';

/** The free seconds one user has with one advisor, shared by every chat of the pair. */
@Entity({ name: 'free_time_allowances' })
export class FreeTimeAllowance {
  @PrimaryColumn({ name: 'user_id', type: 'varchar', length: 64 })
  userId!: string;

  @PrimaryColumn({ name: 'advisor_id', type: 'varchar', length: 64 })
  advisorId!: string;

  @Column({ name: 'allocation_seconds', type: 'integer' })
  allocationSeconds!: number;

  /** Never above `allocationSeconds` (CHECK in the schema). */
  @Column({ name: 'used_seconds', type: 'integer', default: 0 })
  usedSeconds!: number;

  @Column({ name: 'created_at', type: 'timestamptz', default: () => 'now()' })
  createdAt!: Date;

  @Column({ name: 'updated_at', type: 'timestamptz', default: () => 'now()' })
  updatedAt!: Date;
}
