import type { MigrationInterface, QueryRunner } from 'typeorm';

/**
 * An advisor's dashboard lists its pending and active chats, oldest first (`advisor:chats`).
 * Without this index that read walks every open chat of the cluster (chats_open_idx) and
 * filters them by advisor: 5,000 rows for each dashboard that connects at 5,000 active chats.
 */
export class AdvisorOpenChats1764900000000 implements MigrationInterface {
  name = 'AdvisorOpenChats1764900000000';

  async up(q: QueryRunner): Promise<void> {
    await q.query(`CREATE INDEX chats_advisor_open_idx ON chats (advisor_id, created_at, id) WHERE status <> 'ended'`);
  }

  async down(q: QueryRunner): Promise<void> {
    await q.query(`DROP INDEX chats_advisor_open_idx`);
  }
}
