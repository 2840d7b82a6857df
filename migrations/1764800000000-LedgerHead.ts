import type { MigrationInterface, QueryRunner } from 'typeorm';

/**
 * A user's ledger reads line by line: each entry's balance_after is the one before it minus
 * (or plus) its amount. A chat's open charge entry grows in place only while it is the user's
 * latest entry (`users.ledger_head`, its key); once another entry follows it (a top-up, another
 * chat's charge), the chat's next charge opens a new entry.
 */
export class LedgerHead1764800000000 implements MigrationInterface {
  name = 'LedgerHead1764800000000';

  async up(q: QueryRunner): Promise<void> {
    await q.query(`ALTER TABLE users ADD COLUMN ledger_head varchar(200) NULL`);
    await q.query(
      `UPDATE users u SET ledger_head = l.idempotency_key
         FROM (SELECT DISTINCT ON (user_id) user_id, type, idempotency_key FROM ledger_entries ORDER BY user_id, id DESC) l
        WHERE l.user_id = u.id AND l.type = 'charge'`,
    );
  }

  async down(q: QueryRunner): Promise<void> {
    await q.query(`ALTER TABLE users DROP COLUMN ledger_head`);
  }
}
