import { expect } from 'chai';
import { type ChatRow, type LockedRows, type RecordRow, decideBatch } from '../server/metering/decide.js';
import { at, T0, present } from './support/fixtures.js';

const policy = { abandonTimeoutMs: 120_000, lowBalanceSeconds: 60 };

/** A running chat of user u1 with advisor a1 at 6 credits a minute, billed up to T0. */
function chat(id: string, over: Partial<RecordRow> = {}): { chat: ChatRow; record: RecordRow } {
  return {
    chat: { id, user_id: 'u1', advisor_id: 'a1', status: 'active', paused: false, started_at: new Date(T0), ended_at: null, end_reason: null, created_at: new Date(T0) },
    record: {
      id: `rec-${id}`,
      chat_id: id,
      user_id: 'u1',
      advisor_id: 'a1',
      duration: 0,
      free_time_used: 0,
      paid_seconds: 0,
      credits_used: '0.0000',
      rate_per_minute: '6.0000',
      total_free_time_allocation: 0,
      is_active: true,
      timestamp: new Date(T0),
      last_heartbeat_time: null,
      settled_until: new Date(T0),
      last_present_at: null,
      ended_at: null,
      end_reason: null,
      charge_segment: 0,
      meter_seq: '7',
      low_balance_warned: false,
      meter_state: 'running',
      ...over,
    },
  };
}

/** The rows a settlement would have read under lock. */
function given(balance: string, ...chats: Array<ReturnType<typeof chat>>): LockedRows {
  return {
    users: [{ id: 'u1', balance, low_balance_warned: false, ledger_head: null }],
    allowances: [{ user_id: 'u1', advisor_id: 'a1', allocation_seconds: 0, used_seconds: 0 }],
    chats: chats.map((c) => c.chat),
    records: chats.map((c) => c.record),
  };
}

describe('decideBatch (the decide step of a settlement, no database)', () => {
  it('warns balance:low once per user balance, not once per chat, and not again until a top-up clears it', () => {
    // 5 credits at 0.1 a second: 50 s affordable, below the 60 s threshold in both chats
    const low = (warned: boolean) => {
      const rows = given('5', chat('c1'), chat('c2'));
      rows.users[0]!.low_balance_warned = warned;
      return decideBatch(rows, [{ chatId: 'c1', presence: present(T0) }, { chatId: 'c2', presence: present(T0) }], at(1), policy);
    };
    const first = low(false);
    expect(first.outcomes.map((o) => o.ok && o.lowBalance)).to.deep.equal([true, false]);
    expect(first.users).to.deep.equal([{ id: 'u1', balance: '4.8000', low_balance_warned: true, ledger_head: 'charge:c2:1' }]);
    const later = low(true);
    expect(later.outcomes.map((o) => o.ok && o.lowBalance)).to.deep.equal([false, false]);
    expect(later.users[0]).to.include({ low_balance_warned: true });
  });

  it('bills two chats of one user from one balance, and writes each table once', () => {
    const d = decideBatch(given('10', chat('c1'), chat('c2')), [
      { chatId: 'c1', presence: present(T0) },
      { chatId: 'c2', presence: present(T0) },
    ], at(10), policy);
    expect(d.outcomes.map((o) => o.ok && o.meter.durationSeconds)).to.deep.equal([10, 10]);
    // 20 paid seconds at 0.1 a second
    expect(d.users).to.deep.equal([{ id: 'u1', balance: '8.0000', low_balance_warned: false, ledger_head: 'charge:c2:1' }]);
    expect(d.charges.map((c) => [c.chat_id, c.amount])).to.deep.equal([['c1', 10_000n], ['c2', 10_000n]]);
    expect(d.records).to.have.length(2);
    expect(d.chats, 'no status changed').to.deep.equal([]);
    // each snapshot takes the next seq of its chat
    expect(d.outcomes.map((o) => o.ok && o.meter.seq)).to.deep.equal([8, 8]);
  });

  it('folds a chat named twice in a batch into one record update and one charge row', () => {
    const d = decideBatch(given('10', chat('c1')), [
      { chatId: 'c1', presence: present(T0) },
      { chatId: 'c1', presence: present(T0) },
    ], at(5), policy);
    expect(d.records).to.have.length(1);
    expect(d.charges).to.deep.equal([{ user_id: 'u1', chat_id: 'c1', amount: 5000n, balance_after: '9.5000', idempotency_key: 'charge:c1:1' }]);
    expect(d.outcomes).to.have.length(1);
  });

  it('grows a chat\'s charge entry only while it is the user\'s latest, so each entry\'s balance follows from the one before', () => {
    // c1's entry of segment 0 is the ledger's head: it grows in place
    const head = given('10', chat('c1'));
    head.users[0]!.ledger_head = 'charge:c1:0';
    const grown = decideBatch(head, [{ chatId: 'c1', presence: present(T0) }], at(5), policy);
    expect(grown.charges.map((c) => c.idempotency_key)).to.deep.equal(['charge:c1:0']);
    expect(grown.records[0]).to.include({ charge_segment: 0 });
    expect(grown.users).to.deep.equal([{ id: 'u1', balance: '9.5000', low_balance_warned: false, ledger_head: 'charge:c1:0' }]);

    // c1, c2, then c1 again in one batch: each charge follows another chat's, so each is a new entry,
    // in the order they chain: 10 → 9.5 (c1) → 9.0 (c2) → 8.5 (c1 again)
    const rows = given('10', chat('c1'), chat('c2'));
    rows.users[0]!.ledger_head = 'charge:c1:0';
    const interleaved = decideBatch(
      rows,
      [{ chatId: 'c1', presence: present(T0) }, { chatId: 'c2', presence: present(T0) }, { chatId: 'c1', presence: present(T0) }],
      at(5),
      policy,
    );
    expect(interleaved.charges.map((c) => [c.idempotency_key, c.amount, c.balance_after])).to.deep.equal([
      ['charge:c1:0', 5000n, '9.5000'],
      ['charge:c2:1', 5000n, '9.0000'],
    ]);
    // c1's second settlement at the same instant bills nothing more: no third entry
    expect(interleaved.users[0]).to.include({ ledger_head: 'charge:c2:1' });
    const c1 = interleaved.records.find((r) => (r as { id: string }).id === 'rec-c1');
    expect(c1).to.include({ charge_segment: 0 });

    // the next tick: c2's entry is the head now, so c1's next charge opens its segment 1
    const next = given('9', chat('c1'));
    next.users[0]!.ledger_head = 'charge:c2:1';
    const reopened = decideBatch(next, [{ chatId: 'c1', presence: present(T0) }], at(5), policy);
    expect(reopened.charges.map((c) => [c.idempotency_key, c.balance_after])).to.deep.equal([['charge:c1:1', '8.5000']]);
    expect(reopened.records[0]).to.include({ charge_segment: 1 });
  });

  it('writes nothing and pushes nothing for an away chat that did not change', () => {
    const away = chat('c1', { meter_state: 'away' });
    const d = decideBatch(given('10', away), [{ chatId: 'c1', presence: null }], at(5), policy);
    expect(d.records).to.deep.equal([]);
    expect(d.users).to.deep.equal([]);
    expect(d.outcomes[0]).to.deep.include({ ok: true, push: false });
  });

  it('refuses a command that makes no sense, yet reports an end this settlement caused instead', () => {
    const pending = chat('c1');
    pending.chat.status = 'ended';
    pending.chat.end_reason = 'ended_by_user';
    pending.chat.ended_at = new Date(T0);
    const refused = decideBatch(given('10', pending), [{ chatId: 'c1', presence: null, command: { kind: 'pause' } }], at(1), policy);
    expect(refused.outcomes[0]!.ok).to.equal(false);
    // 1 credit pays 10 s: the pause at 12 s finds the chat ended out of credits, and says so
    const broke = decideBatch(given('1', chat('c1')), [{ chatId: 'c1', presence: present(T0), command: { kind: 'pause' } }], at(12), policy);
    expect(broke.outcomes[0]).to.deep.include({ ok: true, ended: 'out_of_credits' });
    expect(broke.chats).to.have.length(1);
  });

  it('fails only the chat whose row it cannot read, and bills the rest of the batch', () => {
    const bad = chat('c1', { rate_per_minute: 'not-an-amount' });
    bad.chat.user_id = 'u2';
    bad.record.user_id = 'u2';
    const rows = given('10', bad, chat('c2'));
    rows.users.push({ id: 'u2', balance: '10', low_balance_warned: false, ledger_head: null });
    rows.allowances.push({ user_id: 'u2', advisor_id: 'a1', allocation_seconds: 0, used_seconds: 0 });
    const d = decideBatch(rows, [{ chatId: 'c1', presence: present(T0) }, { chatId: 'c2', presence: present(T0) }], at(3), policy);
    const byChat = Object.fromEntries(d.outcomes.map((o) => [o.chatId, o.ok ? o.meter.durationSeconds : o.error.code]));
    expect(byChat).to.deep.equal({ c1: 'internal', c2: 3 });
    expect(d.users).to.deep.equal([{ id: 'u1', balance: '9.7000', low_balance_warned: false, ledger_head: 'charge:c2:1' }]);
    expect(d.records).to.have.length(1);
  });

  it('skips a chat without a record unless a command needs one, and reports an unknown chat', () => {
    const d = decideBatch(given('10'), [
      { chatId: 'ghost', presence: null },
      { chatId: 'ghost', presence: null, command: { kind: 'start' } },
    ], at(1), policy);
    expect(d.outcomes.map((o) => !o.ok && o.error.code)).to.deep.equal(['not_found', 'not_found']);
    const noRecord = given('10');
    noRecord.chats.push(chat('c1').chat);
    const e = decideBatch(noRecord, [{ chatId: 'c1', presence: null }, { chatId: 'c1', presence: null, command: { kind: 'start' } }], at(1), policy);
    expect(e.outcomes.map((o) => !o.ok && o.error.code)).to.deep.equal(['conflict']);
  });
});
