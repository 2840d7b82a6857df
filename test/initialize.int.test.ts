import { expect } from 'chai';
import type { DataSource } from 'typeorm';
import { createDataSource } from '../server/db.js';
import { SettlementService } from '../server/metering/settlement.js';
import { verifyInvariants } from '../server/verify.js';
import { freshDatabase, type TestDb } from './support/db.js';
import { services, testPolicy } from './support/fixtures.js';

const NODES = 20;

/**
 * Rule 7: initializeTimeTrackingForChat, called any number of times, concurrently, on
 * any nodes, yields the one record of the chat. On real Postgres each "node" is its own
 * data source with a single connection, so the calls truly race; on PGlite they share
 * one connection and run one after another, which only shows idempotence.
 */
describe('initializeTimeTrackingForChat under concurrency (rule 7)', () => {
  let db: TestDb;
  let s: ReturnType<typeof services>;
  let nodes: SettlementService[];
  const sources: DataSource[] = [];

  before(async () => {
    db = await freshDatabase();
    s = services(db.ds);
    if (db.url) {
      for (let i = 0; i < NODES; i++) {
        const ds = (await createDataSource({ databaseUrl: db.url, dataDir: '' })).setOptions({ poolSize: 1 });
        sources.push(ds);
      }
      await Promise.all(sources.map((ds) => ds.initialize()));
      nodes = sources.map((ds) => new SettlementService(ds, testPolicy));
    } else {
      nodes = Array.from({ length: NODES }, () => new SettlementService(db.ds, testPolicy));
    }
  });
  beforeEach(async () => {
    await db.reset();
    await s.accounts.putUser('u1', { balance: '10' });
    await s.accounts.putAdvisor('a1', { ratePerMinute: '2', freeSeconds: 120 });
  });
  after(async () => {
    await Promise.all(sources.map((ds) => ds.destroy()));
    await db.close();
  });

  async function count(sql: string): Promise<number> {
    const [row] = await db.ds.query(sql);
    return Number(row.n);
  }

  it('gives 20 simultaneous callers of one new chat the same single record, round after round', async () => {
    for (const chatId of ['c1', 'c2', 'c3', 'c4', 'c5']) {
      await s.accounts.createChat({ id: chatId, userId: 'u1', advisorId: 'a1' });
      const got = await Promise.all(nodes.map((n) => n.initializeTimeTrackingForChat('u1', 'a1', chatId)));
      const ids = new Set(got.map((r) => r.id));
      expect(ids.size, `one record id for ${chatId}`).to.equal(1);
      const rows: Array<{ id: string }> = await db.ds.query(`SELECT id FROM conversation_time_records WHERE chat_id = $1`, [chatId]);
      expect(rows.map((r) => r.id)).to.deep.equal([...ids]);
      for (const r of got) expect(r).to.include({ chat_id: chatId, user_id: 'u1', advisor_id: 'a1', total_free_time_allocation: 120 });
    }
    expect(await count(`SELECT count(*) AS n FROM conversation_time_records`)).to.equal(5);
    const allowances = await db.ds.query(`SELECT user_id, advisor_id, allocation_seconds, used_seconds FROM free_time_allowances`);
    expect(allowances).to.deep.equal([{ user_id: 'u1', advisor_id: 'a1', allocation_seconds: 120, used_seconds: 0 }]);
    expect(await verifyInvariants(db.ds)).to.deep.equal([]);
  });

  it("creates one allowance and 20 records for 20 simultaneous new chats of one pair, each chat asked twice", async () => {
    const chatIds = Array.from({ length: NODES }, (_, i) => `d${i}`);
    for (const id of chatIds) await s.accounts.createChat({ id, userId: 'u1', advisorId: 'a1' });
    // node i initializes chat i and chat i+1: every chat is raced by two nodes, and the allowance by all
    const calls = nodes.flatMap((n, i) => [chatIds[i]!, chatIds[(i + 1) % NODES]!].map((id) => n.initializeTimeTrackingForChat('u1', 'a1', id)));
    const got = await Promise.all(calls);
    const byChat = new Map<string, Set<string>>();
    for (const r of got) byChat.set(r.chat_id, (byChat.get(r.chat_id) ?? new Set()).add(r.id));
    expect([...byChat.keys()].sort()).to.deep.equal([...chatIds].sort());
    for (const [chatId, ids] of byChat) expect(ids.size, `one record id for ${chatId}`).to.equal(1);
    expect(new Set(got.map((r) => r.id)).size).to.equal(NODES);
    expect(await count(`SELECT count(*) AS n FROM conversation_time_records`)).to.equal(NODES);
    expect(await count(`SELECT count(DISTINCT chat_id) AS n FROM conversation_time_records`)).to.equal(NODES);
    expect(await count(`SELECT count(*) AS n FROM free_time_allowances WHERE user_id = 'u1' AND advisor_id = 'a1'`)).to.equal(1);
    expect(await verifyInvariants(db.ds)).to.deep.equal([]);
  });

  it('creates the records of chats first asked for in one turn with one statement, each with its pair\'s allowance', async () => {
    await s.accounts.putAdvisor('a2', { ratePerMinute: '3', freeSeconds: 60 });
    const chatIds = Array.from({ length: 12 }, (_, i) => `b${i}`);
    for (const [i, id] of chatIds.entries()) await s.accounts.createChat({ id, userId: 'u1', advisorId: i % 2 ? 'a2' : 'a1' });
    // one ended before its record exists: its record is created ended
    await db.ds.query(`UPDATE chats SET status = 'ended', ended_at = now(), end_reason = 'ended_by_platform' WHERE id = 'b0'`);
    const engine = new SettlementService(db.ds, testPolicy);
    const statements: string[] = [];
    const query = db.ds.query.bind(db.ds);
    (db.ds as { query: unknown }).query = (sql: string, ...rest: unknown[]) => {
      statements.push(sql);
      return (query as (sql: string, ...r: unknown[]) => Promise<unknown>)(sql, ...rest);
    };
    let got: Awaited<ReturnType<SettlementService['initializeTimeTrackingForChat']>>[];
    try {
      got = await Promise.all(chatIds.map((id, i) => engine.createRecord('u1', i % 2 ? 'a2' : 'a1', id)));
    } finally {
      (db.ds as { query: unknown }).query = query;
    }
    expect(statements, statements.join('\n---\n')).to.have.length(1);
    expect(got.map((r) => r.chat_id)).to.deep.equal(chatIds);
    for (const [i, r] of got.entries()) {
      expect(r).to.include({ user_id: 'u1', advisor_id: i % 2 ? 'a2' : 'a1', total_free_time_allocation: i % 2 ? 60 : 120 });
      expect(r.rate_per_minute).to.equal(i % 2 ? '3.0000' : '2.0000');
    }
    expect(got[0]).to.include({ is_active: false, meter_state: 'ended', end_reason: 'ended_by_platform' });
    expect(got[1]).to.include({ is_active: true, meter_state: 'pending' });
    expect(await count(`SELECT count(*) AS n FROM free_time_allowances WHERE user_id = 'u1'`)).to.equal(2);
    // asked again: the existing rows, nothing new
    const again = await Promise.all(chatIds.map((id, i) => engine.createRecord('u1', i % 2 ? 'a2' : 'a1', id)));
    expect(again.map((r) => r.id)).to.deep.equal(got.map((r) => r.id));
    expect(await count(`SELECT count(*) AS n FROM conversation_time_records`)).to.equal(12);
    expect(await verifyInvariants(db.ds)).to.deep.equal([]);
  });

  it('creates each chat\'s record alone when the statement for all of them fails', async () => {
    const chatIds = ['f1', 'f2', 'f3'];
    for (const id of chatIds) await s.accounts.createChat({ id, userId: 'u1', advisorId: 'a1' });
    const engine = new SettlementService(db.ds, testPolicy);
    const query = db.ds.query.bind(db.ds);
    let refused = 0;
    (db.ds as { query: unknown }).query = (sql: string, ...rest: unknown[]) => {
      if (sql.startsWith('WITH c AS')) {
        refused++;
        return Promise.reject(new Error('injected: the batch statement fails'));
      }
      return (query as (sql: string, ...r: unknown[]) => Promise<unknown>)(sql, ...rest);
    };
    try {
      const got = await Promise.all(chatIds.map((id) => engine.createRecord('u1', 'a1', id)));
      expect(got.map((r) => r.chat_id)).to.deep.equal(chatIds);
    } finally {
      (db.ds as { query: unknown }).query = query;
    }
    expect(refused).to.equal(1);
    expect(await count(`SELECT count(*) AS n FROM conversation_time_records WHERE chat_id LIKE 'f%'`)).to.equal(3);
  });

  it('returns the existing record when going back to an ended chat, from any node', async () => {
    await s.accounts.createChat({ id: 'A', userId: 'u1', advisorId: 'a1' });
    const first = await nodes[0]!.initializeTimeTrackingForChat('u1', 'a1', 'A');
    await s.engine.settleBatch([{ chatId: 'A', presence: null, command: { kind: 'end', reason: 'ended_by_platform' } }], Date.now());
    const again = await Promise.all(nodes.map((n) => n.initializeTimeTrackingForChat('u1', 'a1', 'A')));
    expect(new Set(again.map((r) => r.id))).to.deep.equal(new Set([first.id]));
    expect(again[0]).to.include({ is_active: false, end_reason: 'ended_by_platform' });
    expect(await count(`SELECT count(*) AS n FROM conversation_time_records WHERE chat_id = 'A'`)).to.equal(1);
  });
});
