import type { MigrationInterface, QueryRunner } from 'typeorm';

/**
 * The webhook outbox (SPEC 8): an event is inserted in the transaction of the change it
 * reports, its body fixed then, and delivered from here by whichever node claims it
 * (`claimed_until`: one node at a time, and another once that node is gone). `seq`
 * orders the deliveries list; the partial index finds due events without scanning
 * delivered ones.
 */
export class Webhooks1764700000000 implements MigrationInterface {
  name = 'Webhooks1764700000000';

  async up(q: QueryRunner): Promise<void> {
    await q.query(`
      CREATE TABLE webhook_events (
        id                    uuid          NOT NULL,
        seq                   bigint        GENERATED ALWAYS AS IDENTITY,
        type                  text          NOT NULL,
        created_at            timestamptz   NOT NULL,
        body                  text          NOT NULL,
        status                text          NOT NULL DEFAULT 'pending',
        attempts              integer       NOT NULL DEFAULT 0,
        last_attempt_at       timestamptz   NULL,
        last_response_status  integer       NULL,
        next_attempt_at       timestamptz   NULL,
        claimed_until         timestamptz   NULL,
        delivered_at          timestamptz   NULL,
        CONSTRAINT webhook_events_pkey PRIMARY KEY (id),
        CONSTRAINT webhook_events_seq_key UNIQUE (seq),
        CONSTRAINT webhook_events_status_valid CHECK (status IN ('pending', 'delivered', 'failed')),
        CONSTRAINT webhook_events_pending_due CHECK ((status = 'pending') = (next_attempt_at IS NOT NULL))
      ) WITH (fillfactor = 70)`);
    await q.query(`CREATE INDEX webhook_events_due ON webhook_events (next_attempt_at) WHERE status = 'pending'`);
    await q.query(`CREATE INDEX webhook_events_status_seq ON webhook_events (status, seq)`);
  }

  async down(q: QueryRunner): Promise<void> {
    await q.query(`DROP TABLE webhook_events`);
  }
}
