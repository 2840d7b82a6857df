import { expect } from 'chai';
import { QueryFailedError } from 'typeorm';
import { freshDatabase, type TestDb } from './support/db.js';

const TABLES = ['users', 'advisors', 'chats', 'free_time_allowances', 'conversation_time_records', 'ledger_entries'];
const CLUSTER_TABLES = ['cluster_settings', 'cluster_nodes', 'settlement_shards'];
const ALL = ['Initial1764300000000', 'Cluster1764400000000', 'Fillfactor1764500000000', 'UserLowBalance1764600000000', 'Webhooks1764700000000', 'LedgerHead1764800000000', 'AdvisorOpenChats1764900000000'];
const INDEXES = ['chats_open_idx', 'chats_user_advisor_idx', 'conversation_time_records_pair_idx', 'ledger_entries_user_idx', 'ledger_entries_chat_idx'];

describe('migrations (hand-written SQL, with a real down)', () => {
  let db: TestDb;

  before(async () => {
    db = await freshDatabase({ migrate: false });
  });
  after(() => db.close());

  /** Which of these relations exist, in the order given. */
  async function existing(names: string[]): Promise<string[]> {
    const rows: Array<{ name: string }> = await db.ds.query(
      `SELECT n AS name FROM unnest($1::text[]) WITH ORDINALITY AS x(n, i) WHERE to_regclass(n) IS NOT NULL ORDER BY i`,
      [names],
    );
    return rows.map((r) => r.name);
  }

  async function applied(): Promise<string[]> {
    if (!(await existing(['migrations'])).length) return [];
    return ((await db.ds.query(`SELECT name FROM migrations ORDER BY id`)) as Array<{ name: string }>).map((r) => r.name);
  }

  it('goes up, down and up again, leaving a working schema', async () => {
    expect(await existing(TABLES)).to.deep.equal([]);

    const up = await db.ds.runMigrations({ transaction: 'each' });
    expect(up.map((m) => m.name)).to.deep.equal(ALL);
    expect(await existing([...TABLES, ...CLUSTER_TABLES])).to.deep.equal([...TABLES, ...CLUSTER_TABLES]);
    expect(await existing(INDEXES)).to.deep.equal(INDEXES);
    expect(await applied()).to.deep.equal(ALL);
    expect(await db.ds.runMigrations({ transaction: 'each' }), 'nothing left to run').to.deep.equal([]);
    // the cluster's id and its 64 free shards
    const [{ id }] = await db.ds.query(`SELECT value AS id FROM cluster_settings WHERE key = 'cluster_id'`);
    expect(id).to.match(/^[0-9a-f]{32}$/);
    const [{ n, free }] = await db.ds.query(`SELECT count(*)::int AS n, count(*) FILTER (WHERE owner IS NULL)::int AS free FROM settlement_shards`);
    expect({ n, free }).to.deep.equal({ n: 64, free: 64 });

    // the advisors' open-chats index goes with its migration, and the dashboard's read uses it
    // one connection for the setting and the plan (an empty table would be scanned otherwise)
    const runner = db.ds.createQueryRunner();
    let plan: string;
    try {
      await runner.query(`SET enable_seqscan = off`);
      plan = JSON.stringify(await runner.query(`EXPLAIN SELECT * FROM chats WHERE advisor_id = 'a1' AND status <> 'ended' ORDER BY created_at, id`));
      await runner.query(`RESET enable_seqscan`);
    } finally {
      await runner.release();
    }
    expect(plan).to.include('chats_advisor_open_idx');
    await db.ds.undoLastMigration({ transaction: 'each' });
    expect(await existing(['chats_advisor_open_idx'])).to.deep.equal([]);

    // the ledger's head goes with its migration
    const headColumn = async () =>
      ((await db.ds.query(`SELECT 1 FROM information_schema.columns WHERE table_name = 'users' AND column_name = 'ledger_head'`)) as unknown[]).length;
    expect(await headColumn()).to.equal(1);
    await db.ds.undoLastMigration({ transaction: 'each' });
    expect(await headColumn()).to.equal(0);

    // the webhook outbox goes with its migration
    expect(await existing(['webhook_events'])).to.deep.equal(['webhook_events']);
    await db.ds.undoLastMigration({ transaction: 'each' });
    expect(await existing(['webhook_events'])).to.deep.equal([]);
    expect(await applied()).to.deep.equal(ALL.slice(0, 4));

    // the user's low-balance flag goes with its migration
    const userColumns = async () =>
      ((await db.ds.query(`SELECT column_name FROM information_schema.columns WHERE table_name = 'users' AND column_name = 'low_balance_warned'`)) as unknown[]).length;
    expect(await userColumns()).to.equal(1);
    await db.ds.undoLastMigration({ transaction: 'each' });
    expect(await userColumns()).to.equal(0);
    expect(await applied()).to.deep.equal(ALL.slice(0, 3));

    // the settlement tables keep room on their pages for HOT updates, and lose it going down
    const fillfactor = async (table: string) =>
      (await db.ds.query(`SELECT reloptions FROM pg_class WHERE relname = $1`, [table]))[0].reloptions as string[] | null;
    expect(await fillfactor('conversation_time_records')).to.deep.equal(['fillfactor=50']);
    await db.ds.undoLastMigration({ transaction: 'each' });
    expect(await fillfactor('conversation_time_records')).to.equal(null);
    expect(await applied()).to.deep.equal(['Initial1764300000000', 'Cluster1764400000000']);

    await db.ds.undoLastMigration({ transaction: 'each' });
    expect(await existing(CLUSTER_TABLES)).to.deep.equal([]);
    expect(await existing(TABLES)).to.deep.equal(TABLES);
    expect(await applied()).to.deep.equal(['Initial1764300000000']);
    await db.ds.undoLastMigration({ transaction: 'each' });
    expect(await existing(TABLES)).to.deep.equal([]);
    expect(await existing(INDEXES)).to.deep.equal([]);
    expect(await applied()).to.deep.equal([]);

    await db.ds.runMigrations({ transaction: 'each' });
    expect(await existing(TABLES)).to.deep.equal(TABLES);
    await db.ds.query(`INSERT INTO users (id, balance) VALUES ('u1', 10)`);
    await db.ds.query(`INSERT INTO advisors (id, rate_per_minute, free_seconds) VALUES ('a1', 1.5, 180)`);
    await db.ds.query(`INSERT INTO chats (id, user_id, advisor_id) VALUES ('c1', 'u1', 'a1')`);
    await db.ds.query(`INSERT INTO free_time_allowances (user_id, advisor_id, allocation_seconds) VALUES ('u1', 'a1', 180)`);
    await db.ds.query(
      `INSERT INTO conversation_time_records (chat_id, user_id, advisor_id, rate_per_minute, total_free_time_allocation)
       VALUES ('c1', 'u1', 'a1', 1.5, 180)`,
    );
    await db.ds.query(
      `INSERT INTO ledger_entries (user_id, type, amount, balance_after, idempotency_key) VALUES ('u1', 'topup', 10, 10, 'k')`,
    );
    const [row] = await db.ds.query(
      `SELECT r.id, r.is_active, r.duration, r.credits_used, r.meter_state, u.balance, l.id AS entry_id
         FROM conversation_time_records r JOIN users u ON u.id = r.user_id JOIN ledger_entries l ON l.user_id = u.id`,
    );
    expect(row).to.include({ is_active: true, duration: 0, credits_used: '0.0000', meter_state: 'pending', balance: '10.0000' });
    expect(row.id).to.match(/^[0-9a-f]{8}-[0-9a-f]{4}-/);
    expect(String(row.entry_id)).to.equal('1');
  });

  describe('constraints refuse what must never happen, by name', () => {
    before(async () => {
      await db.ds.runMigrations({ transaction: 'each' });
    });
    beforeEach(async () => {
      await db.reset();
      await db.ds.query(`INSERT INTO users (id, balance) VALUES ('u1', 10), ('u2', 0)`);
      await db.ds.query(`INSERT INTO advisors (id, rate_per_minute, free_seconds) VALUES ('a1', 1, 180)`);
      await db.ds.query(`INSERT INTO chats (id, user_id, advisor_id) VALUES ('c1', 'u1', 'a1'), ('c2', 'u1', 'a1')`);
      await db.ds.query(
        `INSERT INTO free_time_allowances (user_id, advisor_id, allocation_seconds) VALUES ('u1', 'a1', 180), ('u2', 'a1', 180)`,
      );
      await db.ds.query(
        `INSERT INTO conversation_time_records (chat_id, user_id, advisor_id, rate_per_minute, total_free_time_allocation)
         VALUES ('c1', 'u1', 'a1', 1, 180)`,
      );
    });

    /** The SQLSTATE and constraint name of the error that refused the statement. */
    async function refusal(sql: string): Promise<{ code: string; constraint: string }> {
      const err: unknown = await db.ds.query(sql).then(
        () => null,
        (e: unknown) => e,
      );
      expect(err, `expected to be refused: ${sql}`).to.be.instanceOf(QueryFailedError);
      const { code, constraint } = (err as QueryFailedError<Error & { code: string; constraint: string }>).driverError;
      return { code, constraint };
    }

    it('a negative balance: users_balance_nonnegative', async () => {
      expect(await refusal(`UPDATE users SET balance = -0.0001 WHERE id = 'u1'`)).to.deep.equal({
        code: '23514',
        constraint: 'users_balance_nonnegative',
      });
    });

    it('more free seconds used than allocated: free_time_allowances_used_within_allocation', async () => {
      expect(await refusal(`UPDATE free_time_allowances SET used_seconds = 181 WHERE user_id = 'u1'`)).to.deep.equal({
        code: '23514',
        constraint: 'free_time_allowances_used_within_allocation',
      });
      // the allocation itself is fine to use up exactly
      await db.ds.query(`UPDATE free_time_allowances SET used_seconds = 180 WHERE user_id = 'u1'`);
    });

    it('a second record for a chat: conversation_time_records_chat_id_key', async () => {
      expect(
        await refusal(
          `INSERT INTO conversation_time_records (chat_id, user_id, advisor_id, rate_per_minute, total_free_time_allocation)
           VALUES ('c1', 'u1', 'a1', 1, 180)`,
        ),
      ).to.deep.equal({ code: '23505', constraint: 'conversation_time_records_chat_id_key' });
    });

    it("a record whose user is not its chat's: conversation_time_records_chat_fkey", async () => {
      // u2 has an allowance with a1, so only the chat's (id, user, advisor) can refuse it
      expect(
        await refusal(
          `INSERT INTO conversation_time_records (chat_id, user_id, advisor_id, rate_per_minute, total_free_time_allocation)
           VALUES ('c2', 'u2', 'a1', 1, 180)`,
        ),
      ).to.deep.equal({ code: '23503', constraint: 'conversation_time_records_chat_fkey' });
      await db.ds.query(
        `INSERT INTO conversation_time_records (chat_id, user_id, advisor_id, rate_per_minute, total_free_time_allocation)
         VALUES ('c2', 'u1', 'a1', 1, 180)`,
      );
    });

    it('a record without its allowance: conversation_time_records_allowance_fkey', async () => {
      await db.ds.query(`INSERT INTO advisors (id, rate_per_minute, free_seconds) VALUES ('a2', 1, 0)`);
      await db.ds.query(`INSERT INTO chats (id, user_id, advisor_id) VALUES ('c3', 'u1', 'a2')`);
      expect(
        await refusal(
          `INSERT INTO conversation_time_records (chat_id, user_id, advisor_id, rate_per_minute, total_free_time_allocation)
           VALUES ('c3', 'u1', 'a2', 1, 0)`,
        ),
      ).to.deep.equal({ code: '23503', constraint: 'conversation_time_records_allowance_fkey' });
    });

    it('a duration that is not free + paid seconds: conversation_time_records_duration_sum', async () => {
      expect(await refusal(`UPDATE conversation_time_records SET duration = 5, free_time_used = 2, paid_seconds = 2`)).to.deep.equal({
        code: '23514',
        constraint: 'conversation_time_records_duration_sum',
      });
    });

    it('a ledger amount that is not positive, or a charge without a chat', async () => {
      expect(
        await refusal(`INSERT INTO ledger_entries (user_id, type, amount, balance_after, idempotency_key) VALUES ('u1', 'topup', 0, 10, 'k')`),
      ).to.deep.equal({ code: '23514', constraint: 'ledger_entries_amount_positive' });
      expect(
        await refusal(`INSERT INTO ledger_entries (user_id, type, amount, balance_after, idempotency_key) VALUES ('u1', 'charge', 1, 9, 'k')`),
      ).to.deep.equal({ code: '23514', constraint: 'ledger_entries_charge_has_chat' });
    });

    it('an ended chat without its reason: chats_ended_consistent', async () => {
      expect(await refusal(`UPDATE chats SET status = 'ended', ended_at = now() WHERE id = 'c2'`)).to.deep.equal({
        code: '23514',
        constraint: 'chats_ended_consistent',
      });
    });
  });
});

describe('migrations when a cluster starts at once (real Postgres)', () => {
  it('are applied once while three nodes start together on an empty database', async function () {
    this.timeout(30_000);
    const db = await freshDatabase({ migrate: false });
    try {
      // several nodes on one database are a cluster: Redis is needed
      if (db.embedded || !process.env.REDIS_URL) this.skip();
      const { startNode } = await import('./support/server.js');
      const nodes = await Promise.all([0, 1, 2].map(() => startNode(db)));
      try {
        const names: Array<{ name: string }> = await db.ds.query(`SELECT name FROM migrations ORDER BY id`);
        expect(names.map((n) => n.name)).to.deep.equal(ALL);
        for (const n of nodes) expect((await n.api('GET', '/readyz')).status).to.equal(200);
      } finally {
        for (const n of nodes) await n.close();
      }
    } finally {
      await db.close();
    }
  });
});
