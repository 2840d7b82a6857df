import type { MigrationInterface, QueryRunner } from 'typeorm';

/**
 * What many nodes on one database share: the cluster's identity (which namespaces
 * its Redis keys), its live nodes, and the settlement shards with their leases.
 * Every active chat belongs to one shard (a hash of its id); the node holding a
 * shard's lease settles its chats on the clock, and the lease's epoch fences the
 * settlement transaction (SPEC section 6).
 */
export class Cluster1764400000000 implements MigrationInterface {
  name = 'Cluster1764400000000';

  async up(q: QueryRunner): Promise<void> {
    await q.query(`
      CREATE TABLE cluster_settings (
        key    text  NOT NULL,
        value  text  NOT NULL,
        CONSTRAINT cluster_settings_pkey PRIMARY KEY (key)
      )`);
    // nodes on one database share this id, so clusters on different databases can share one Redis
    await q.query(`INSERT INTO cluster_settings (key, value) VALUES ('cluster_id', replace(gen_random_uuid()::text, '-', ''))`);
    await q.query(`
      CREATE TABLE cluster_nodes (
        node_id     text         NOT NULL,
        started_at  timestamptz  NOT NULL DEFAULT clock_timestamp(),
        seen_at     timestamptz  NOT NULL DEFAULT clock_timestamp(),
        CONSTRAINT cluster_nodes_pkey PRIMARY KEY (node_id)
      )`);
    await q.query(`
      CREATE TABLE settlement_shards (
        shard       integer      NOT NULL,
        owner       text         NULL,
        epoch       bigint       NOT NULL DEFAULT 0,
        expires_at  timestamptz  NOT NULL DEFAULT '-infinity',
        CONSTRAINT settlement_shards_pkey PRIMARY KEY (shard),
        CONSTRAINT settlement_shards_epoch_nonnegative CHECK (epoch >= 0)
      )`);
    await q.query(`INSERT INTO settlement_shards (shard) SELECT generate_series(0, 63)`);
  }

  async down(q: QueryRunner): Promise<void> {
    await q.query(`DROP TABLE settlement_shards`);
    await q.query(`DROP TABLE cluster_nodes`);
    await q.query(`DROP TABLE cluster_settings`);
  }
}
