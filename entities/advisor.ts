import { Column, Entity, PrimaryColumn } from 'typeorm';

/** Sells chat time at `ratePerMinute` and gives each user `freeSeconds` of free time. */
@Entity({ name: 'advisors' })
export class Advisor {
  @PrimaryColumn({ type: 'varchar', length: 64 })
  id!: string;

  @Column({ type: 'text', default: '' })
  name!: string;

  @Column({ name: 'rate_per_minute', type: 'numeric', precision: 20, scale: 4 })
  ratePerMinute!: string;

  /** The allocation given to a pair's allowance when it is first created. */
  @Column({ name: 'free_seconds', type: 'integer' })
  freeSeconds!: number;

  @Column({ name: 'created_at', type: 'timestamptz', default: () => 'now()' })
  createdAt!: Date;

  @Column({ name: 'updated_at', type: 'timestamptz', default: () => 'now()' })
  updatedAt!: Date;
}
