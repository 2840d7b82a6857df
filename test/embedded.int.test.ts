import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import { migrations } from '../migrations/index.js';
import { createDataSource } from '../server/db.js';
import { type Violation, verifyInvariants } from '../server/verify.js';
import { freshDatabase, type TestDb } from './support/db.js';
import { T0, at, present, services } from './support/fixtures.js';
import { runVerifyCli } from './support/verify-cli.js';


/** `npm start` on a fresh machine runs on PGlite: this file always does, DATABASE_URL or not. */
describe('embedded database (PGlite), whatever DATABASE_URL says', () => {
  let db: TestDb;

  before(async () => {
    db = await freshDatabase({ embedded: true, migrate: false });
  });
  after(() => db.close());

  it('applies the migrations, meters a chat and stays sound', async () => {
    expect(db).to.include({ embedded: true, url: null });
    const ran = await db.ds.runMigrations({ transaction: 'each' });
    expect(ran.map((m) => m.name)).to.deep.equal(migrations.map((m) => new m().name));

    const s = services(db.ds);
    await s.accounts.putUser('u1', { balance: '10' });
    await s.accounts.putAdvisor('a1', { ratePerMinute: '6', freeSeconds: 60 });
    await s.accounts.createChat({ id: 'c1', userId: 'u1', advisorId: 'a1' });
    const record = await s.engine.initializeTimeTrackingForChat('u1', 'a1', 'c1');
    const [started] = await s.engine.settleBatch([{ chatId: 'c1', presence: present(T0), command: { kind: 'start' } }], T0);
    expect(started).to.include({ ok: true });

    // 100 s present: 60 free, then 40 paid at 0.1 per second
    const [out] = await s.engine.settleBatch([{ chatId: 'c1', presence: present(T0, at(95)) }], at(100));
    if (!out?.ok) throw new Error('settling failed');
    expect(out.meter).to.include({
      recordId: record.id,
      state: 'running',
      durationSeconds: 100,
      freeSecondsUsed: 60,
      freeSecondsRemaining: 0,
      creditsUsed: '4.0000',
      balance: '6.0000',
    });
    const [row] = await db.ds.query(`SELECT duration, free_time_used, paid_seconds, credits_used FROM conversation_time_records`);
    expect(row).to.deep.equal({ duration: 100, free_time_used: 60, paid_seconds: 40, credits_used: '4.0000' });
    expect((await s.accounts.getUser('u1')).balance).to.equal('6.0000');
    expect(await verifyInvariants(db.ds)).to.deep.equal([]);
  });

  it('keeps its data in a directory across close and reopen, where `npm run verify` finds it', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'chatmeter-pglite-'));
    try {
      const first = await createDataSource({ databaseUrl: null, dataDir: dir });
      await first.initialize();
      await first.runMigrations({ transaction: 'each' });
      await services(first).accounts.putUser('u1', { name: 'Kept', balance: '12.3456' });
      await first.destroy();

      const second = await createDataSource({ databaseUrl: null, dataDir: dir });
      await second.initialize();
      expect(await second.runMigrations({ transaction: 'each' }), 'already applied').to.deep.equal([]);
      expect(await services(second).accounts.getUser('u1')).to.deep.equal({ id: 'u1', name: 'Kept', balance: '12.3456' });
      const entries = await second.query(`SELECT type, amount FROM ledger_entries`);
      expect(entries).to.deep.equal([{ type: 'topup', amount: '12.3456' }]);
      // break one invariant for the CLI to find, then leave the directory to it (one process at a time)
      await second.query(`UPDATE users SET balance = balance + 1 WHERE id = 'u1'`);
      await second.destroy();

      const cli = await runVerifyCli({ DATABASE_URL: '', DATA_DIR: dir });
      expect(cli, cli.stderr).to.include({ code: 1 });
      const lines = cli.stdout.trim().split('\n');
      expect(lines).to.have.length(2);
      const v = JSON.parse(lines[0]!) as Violation;
      expect(v).to.deep.include({ invariant: 'balance_matches_ledger', ids: { user: 'u1' } });
      expect(v.message).to.include('13.3456');
      expect(lines[1]).to.equal('verify: 1 violation');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('refuses to verify a data directory that does not exist, instead of creating an empty one', async () => {
    const dir = join(tmpdir(), `chatmeter-missing-${process.pid}-${Date.now()}`);
    const cli = await runVerifyCli({ DATABASE_URL: '', DATA_DIR: dir });
    expect(cli.code).to.equal(2);
    expect(cli.stderr).to.include(`no embedded database in ${dir}`);
  });
});
