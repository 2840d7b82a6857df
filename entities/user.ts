import { Column, Entity, PrimaryColumn } from 'typeorm';

/** A paying client of the integrator, with a prepaid credit balance. */
@Entity({ name: 'users' })
export class User {
  @PrimaryColumn({ type: 'varchar', length: 64 })
  id!: string;

  @Column({ type: 'text', default: '' })
  name!: string;

  /** Decimal string with 4 fraction digits; never negative (CHECK in the schema). */
  @Column({ type: 'numeric', precision: 20, scale: 4, default: 0 })
  balance!: string;

  /** Set when `balance:low` went out for this balance; a top-up clears it (SPEC 1 rule 4, once per user). */
  @Column({ name: 'low_balance_warned', type: 'boolean', default: false })
  lowBalanceWarned!: boolean;

  /** The key of the user's latest ledger entry when it is a charge (it may still grow); null otherwise. */
  @Column({ name: 'ledger_head', type: 'varchar', length: 200, nullable: true })
  ledgerHead!: string | null;

  @Column({ name: 'created_at', type: 'timestamptz', default: () => 'now()' })
  createdAt!: Date;

  @Column({ name: 'updated_at', type: 'timestamptz', default: () => 'now()' })
  updatedAt!: Date;
}
