import type { MigrationInterface, QueryRunner } from 'typeorm';

/**
 * `balance:low` goes out once per user balance, not once per chat of that user (SPEC 7):
 * the flag lives on the user, set when the warning goes out and cleared by a top-up.
 * Adding a column with a constant default rewrites nothing (Postgres >= 11).
 */
export class UserLowBalance1764600000000 implements MigrationInterface {
  name = 'UserLowBalance1764600000000';

  async up(q: QueryRunner): Promise<void> {
    await q.query(`ALTER TABLE users ADD COLUMN low_balance_warned boolean NOT NULL DEFAULT false`);
    // users already warned in a chat still low stay warned: no second warning at the first tick after the deploy
    await q.query(
      `UPDATE users u SET low_balance_warned = true
        WHERE EXISTS (SELECT 1 FROM conversation_time_records r WHERE r.user_id = u.id AND r.is_active AND r.low_balance_warned)`,
    );
  }

  async down(q: QueryRunner): Promise<void> {
    await q.query(`ALTER TABLE users DROP COLUMN low_balance_warned`);
  }
}
