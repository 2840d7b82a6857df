import type { MigrationInterface, QueryRunner } from 'typeorm';

/**
 * Room on every page for the rows settlement rewrites each second, so their updates
 * stay HOT (the new version on the same page, no index entries written). Measured on
 * 500 records a batch: the update went from 12.4 ms to 2.8 ms of Postgres time, the
 * tick's locked read from 7.7 ms to 5.0 ms (docs/BENCHMARKS.md). Applies to pages
 * written from now on; rows on full pages move once to a page with room and stay
 * HOT from then on, so no rewrite (and no table lock) is needed here.
 */
const TABLES: Array<[table: string, fillfactor: number]> = [
  ['conversation_time_records', 50],
  ['users', 70],
  ['free_time_allowances', 70],
  ['ledger_entries', 70],
  ['settlement_shards', 50],
  ['cluster_nodes', 50],
];

export class Fillfactor1764500000000 implements MigrationInterface {
  name = 'Fillfactor1764500000000';

  async up(q: QueryRunner): Promise<void> {
    for (const [table, fillfactor] of TABLES) await q.query(`ALTER TABLE ${table} SET (fillfactor = ${fillfactor})`);
  }

  async down(q: QueryRunner): Promise<void> {
    for (const [table] of TABLES) await q.query(`ALTER TABLE ${table} RESET (fillfactor)`);
  }
}
