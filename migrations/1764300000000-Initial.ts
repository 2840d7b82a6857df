import type { MigrationInterface, QueryRunner } from 'typeorm';

/**
 * The whole first schema, written by hand. The database itself refuses what
 * must never happen (negative balances, overdrawn allowances, a second record
 * for a chat, a record whose user or advisor differ from its chat's), so a bug
 * in the engine surfaces as an error instead of as lost money.
 */
export class Initial1764300000000 implements MigrationInterface {
  name = 'Initial1764300000000';

  async up(q: QueryRunner): Promise<void> {
    await q.query(`
      CREATE TABLE users (
        id          varchar(64)    NOT NULL,
        name        text           NOT NULL DEFAULT '',
        balance     numeric(20,4)  NOT NULL DEFAULT 0,
        created_at  timestamptz    NOT NULL DEFAULT now(),
        updated_at  timestamptz    NOT NULL DEFAULT now(),
        CONSTRAINT users_pkey PRIMARY KEY (id),
        CONSTRAINT users_id_format CHECK (id ~ '^[A-Za-z0-9_.:-]{1,64}$'),
        CONSTRAINT users_balance_nonnegative CHECK (balance >= 0)
      )`);
    await q.query(`
      CREATE TABLE advisors (
        id               varchar(64)    NOT NULL,
        name             text           NOT NULL DEFAULT '',
        rate_per_minute  numeric(20,4)  NOT NULL,
        free_seconds     integer        NOT NULL,
        created_at       timestamptz    NOT NULL DEFAULT now(),
        updated_at       timestamptz    NOT NULL DEFAULT now(),
        CONSTRAINT advisors_pkey PRIMARY KEY (id),
        CONSTRAINT advisors_id_format CHECK (id ~ '^[A-Za-z0-9_.:-]{1,64}$'),
        CONSTRAINT advisors_rate_nonnegative CHECK (rate_per_minute >= 0),
        CONSTRAINT advisors_free_seconds_nonnegative CHECK (free_seconds >= 0)
      )`);
    await q.query(`
      CREATE TABLE chats (
        id          varchar(64)  NOT NULL,
        user_id     varchar(64)  NOT NULL,
        advisor_id  varchar(64)  NOT NULL,
        status      text         NOT NULL DEFAULT 'pending',
        paused      boolean      NOT NULL DEFAULT false,
        end_reason  text         NULL,
        created_at  timestamptz  NOT NULL DEFAULT now(),
        started_at  timestamptz  NULL,
        ended_at    timestamptz  NULL,
        CONSTRAINT chats_pkey PRIMARY KEY (id),
        CONSTRAINT chats_id_format CHECK (id ~ '^[A-Za-z0-9_.:-]{1,64}$'),
        CONSTRAINT chats_user_fkey FOREIGN KEY (user_id) REFERENCES users (id),
        CONSTRAINT chats_advisor_fkey FOREIGN KEY (advisor_id) REFERENCES advisors (id),
        CONSTRAINT chats_status_valid CHECK (status IN ('pending', 'active', 'ended')),
        CONSTRAINT chats_end_reason_valid CHECK (end_reason IN
          ('ended_by_user', 'ended_by_advisor', 'ended_by_platform', 'out_of_credits', 'abandoned')),
        CONSTRAINT chats_ended_consistent CHECK ((status = 'ended') = (end_reason IS NOT NULL AND ended_at IS NOT NULL)),
        CONSTRAINT chats_started_consistent CHECK (status <> 'active' OR started_at IS NOT NULL),
        -- lets a time record point at (chat, user, advisor) at once, so they can never disagree
        CONSTRAINT chats_id_user_advisor_key UNIQUE (id, user_id, advisor_id)
      )`);
    await q.query(`CREATE INDEX chats_open_idx ON chats (status) WHERE status <> 'ended'`);
    await q.query(`CREATE INDEX chats_user_advisor_idx ON chats (user_id, advisor_id)`);
    await q.query(`
      CREATE TABLE free_time_allowances (
        user_id             varchar(64)  NOT NULL,
        advisor_id          varchar(64)  NOT NULL,
        allocation_seconds  integer      NOT NULL,
        used_seconds        integer      NOT NULL DEFAULT 0,
        created_at          timestamptz  NOT NULL DEFAULT now(),
        updated_at          timestamptz  NOT NULL DEFAULT now(),
        CONSTRAINT free_time_allowances_pkey PRIMARY KEY (user_id, advisor_id),
        CONSTRAINT free_time_allowances_user_fkey FOREIGN KEY (user_id) REFERENCES users (id),
        CONSTRAINT free_time_allowances_advisor_fkey FOREIGN KEY (advisor_id) REFERENCES advisors (id),
        CONSTRAINT free_time_allowances_allocation_nonnegative CHECK (allocation_seconds >= 0),
        CONSTRAINT free_time_allowances_used_nonnegative CHECK (used_seconds >= 0),
        CONSTRAINT free_time_allowances_used_within_allocation CHECK (used_seconds <= allocation_seconds)
      )`);
    await q.query(`
      CREATE TABLE conversation_time_records (
        id                          uuid           NOT NULL DEFAULT gen_random_uuid(),
        chat_id                     varchar(64)    NOT NULL,
        user_id                     varchar(64)    NOT NULL,
        advisor_id                  varchar(64)    NOT NULL,
        duration                    integer        NOT NULL DEFAULT 0,
        free_time_used              integer        NOT NULL DEFAULT 0,
        paid_seconds                integer        NOT NULL DEFAULT 0,
        credits_used                numeric(20,4)  NOT NULL DEFAULT 0,
        rate_per_minute             numeric(20,4)  NOT NULL,
        total_free_time_allocation  integer        NOT NULL,
        is_active                   boolean        NOT NULL DEFAULT true,
        "timestamp"                 timestamptz    NOT NULL DEFAULT now(),
        last_heartbeat_time         timestamptz    NULL,
        settled_until               timestamptz    NULL,
        last_present_at             timestamptz    NULL,
        ended_at                    timestamptz    NULL,
        end_reason                  text           NULL,
        charge_segment              integer        NOT NULL DEFAULT 0,
        meter_seq                   bigint         NOT NULL DEFAULT 0,
        low_balance_warned          boolean        NOT NULL DEFAULT false,
        meter_state                 text           NOT NULL DEFAULT 'pending',
        CONSTRAINT conversation_time_records_pkey PRIMARY KEY (id),
        CONSTRAINT conversation_time_records_chat_id_key UNIQUE (chat_id),
        CONSTRAINT conversation_time_records_chat_fkey FOREIGN KEY (chat_id, user_id, advisor_id)
          REFERENCES chats (id, user_id, advisor_id),
        CONSTRAINT conversation_time_records_allowance_fkey FOREIGN KEY (user_id, advisor_id)
          REFERENCES free_time_allowances (user_id, advisor_id),
        CONSTRAINT conversation_time_records_counts_nonnegative
          CHECK (free_time_used >= 0 AND paid_seconds >= 0 AND credits_used >= 0 AND rate_per_minute >= 0),
        CONSTRAINT conversation_time_records_duration_sum CHECK (duration = free_time_used + paid_seconds),
        CONSTRAINT conversation_time_records_active_consistent CHECK (is_active = (ended_at IS NULL)),
        CONSTRAINT conversation_time_records_meter_state_valid
          CHECK (meter_state IN ('pending', 'running', 'paused', 'away', 'ended')),
        CONSTRAINT conversation_time_records_end_reason_consistent CHECK ((end_reason IS NULL) = (ended_at IS NULL))
      )`);
    await q.query(`CREATE INDEX conversation_time_records_pair_idx
      ON conversation_time_records (user_id, advisor_id, "timestamp" DESC)`);
    await q.query(`
      CREATE TABLE ledger_entries (
        id               bigint         GENERATED ALWAYS AS IDENTITY,
        user_id          varchar(64)    NOT NULL,
        type             text           NOT NULL,
        amount           numeric(20,4)  NOT NULL,
        balance_after    numeric(20,4)  NOT NULL,
        chat_id          varchar(64)    NULL,
        idempotency_key  varchar(200)   NOT NULL,
        created_at       timestamptz    NOT NULL DEFAULT now(),
        updated_at       timestamptz    NOT NULL DEFAULT now(),
        CONSTRAINT ledger_entries_pkey PRIMARY KEY (id),
        CONSTRAINT ledger_entries_user_fkey FOREIGN KEY (user_id) REFERENCES users (id),
        CONSTRAINT ledger_entries_chat_fkey FOREIGN KEY (chat_id) REFERENCES chats (id),
        CONSTRAINT ledger_entries_type_valid CHECK (type IN ('topup', 'charge', 'refund')),
        CONSTRAINT ledger_entries_amount_positive CHECK (amount > 0),
        CONSTRAINT ledger_entries_balance_after_nonnegative CHECK (balance_after >= 0),
        CONSTRAINT ledger_entries_charge_has_chat CHECK (type <> 'charge' OR chat_id IS NOT NULL),
        -- keys are the integrator's per user and type: a top-up key can never collide with a charge's
        CONSTRAINT ledger_entries_idempotency_key UNIQUE (user_id, type, idempotency_key)
      )`);
    await q.query(`CREATE INDEX ledger_entries_user_idx ON ledger_entries (user_id, id DESC)`);
    await q.query(`CREATE INDEX ledger_entries_chat_idx ON ledger_entries (chat_id) WHERE chat_id IS NOT NULL`);
  }

  async down(q: QueryRunner): Promise<void> {
    await q.query(`DROP TABLE ledger_entries`);
    await q.query(`DROP TABLE conversation_time_records`);
    await q.query(`DROP TABLE free_time_allowances`);
    await q.query(`DROP TABLE chats`);
    await q.query(`DROP TABLE advisors`);
    await q.query(`DROP TABLE users`);
  }
}
