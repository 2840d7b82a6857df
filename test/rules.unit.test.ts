import { expect } from 'chai';
import fc from 'fast-check';
import { ChatStatus, MeterState } from '../client-sdk/src/protocol.js';
import { creditsFor, formatAmount, parseAmount } from '../server/money.js';
import {
  type Allowance,
  type ChatMeter,
  type Command,
  type PresenceSpan,
  type SettleInput,
  type SettleResult,
  abandonDeadline,
  applyCommand,
  meterState,
  settle,
} from '../server/metering/rules.js';

// Time is plain epoch ms: s(90) is 90 s after the origin.
const T0 = 1_767_225_600_000;
const s = (seconds: number) => T0 + seconds * 1000;
const GRACE = 15_000;
const policy = { abandonTimeoutMs: 120_000, lowBalanceSeconds: 60 };

/** An active, unpaused chat started at s(0), nothing billed yet. */
function activeChat(over: Partial<ChatMeter> = {}): ChatMeter {
  return {
    chatId: 'c1',
    userId: 'u1',
    advisorId: 'a1',
    status: 'active',
    paused: false,
    startedAt: s(0),
    endedAt: null,
    endReason: null,
    durationSeconds: 0,
    freeSecondsUsed: 0,
    paidSeconds: 0,
    creditsUsed: 0n,
    settledUntil: s(0),
    lastPresentAt: null,
    lastHeartbeatAt: null,
    lowBalanceWarned: false,
    meterState: 'running',
    ...over,
  };
}

/** Present since `since`, heartbeating until `heartbeat` (so metered up to heartbeat + grace). */
const present = (since: number, heartbeat = since): PresenceSpan => ({ since, until: heartbeat + GRACE, lastHeartbeatAt: heartbeat });
/** The user's last socket left at `leftAt`. */
const left = (since: number, leftAt: number): PresenceSpan => ({ since, until: leftAt, lastHeartbeatAt: since });

interface Given {
  chat?: ChatMeter;
  allowance?: Allowance;
  balance?: string;
  rate?: string;
  presence?: PresenceSpan | null;
  observedSince?: number;
}

/** Settles `given` at `now`: the unit under test. */
function when(given: Given, now: number): SettleResult {
  const input: SettleInput = {
    chat: given.chat ?? activeChat(),
    allowance: given.allowance ?? { allocationSeconds: 0, usedSeconds: 0 },
    balance: parseAmount(given.balance ?? '1000'),
    ratePerMinute: parseAmount(given.rate ?? '6'),
    presence: given.presence === undefined ? present(s(0), now) : given.presence,
    now,
    observedSince: given.observedSince ?? -Infinity,
    policy,
  };
  return settle(input);
}

/** Settles the result of a previous settlement again, keeping its allowance and balance. */
function thenAgain(prev: SettleResult, given: Omit<Given, 'chat' | 'allowance' | 'balance'>, now: number): SettleResult {
  return settle({
    chat: prev.chat,
    allowance: prev.allowance,
    balance: prev.balance,
    ratePerMinute: parseAmount(given.rate ?? '6'),
    presence: given.presence === undefined ? present(s(0), now) : given.presence,
    now,
    observedSince: given.observedSince ?? -Infinity,
    policy,
  });
}

function isRefusal(x: ChatMeter | { refused: string }): x is { refused: string } {
  return 'refused' in x;
}

describe('billing rules (pure)', () => {
  describe('whole seconds, exactly once', () => {
    it('bills nothing when settled twice at the same instant', () => {
      const first = when({ presence: present(s(0)) }, s(7.4));
      const again = thenAgain(first, { presence: present(s(0)) }, s(7.4));
      expect(first.chat.durationSeconds).to.equal(7);
      expect(again.charge).to.equal(0n);
      expect(again.paidSecondsBilled + again.freeSecondsBilled).to.equal(0);
      expect(again.chat).to.deep.equal(first.chat);
      expect(again.balance).to.equal(first.balance);
    });

    it('carries the fraction of a second to the next settlement instead of losing or rounding it', () => {
      const a = when({ presence: present(s(0)) }, s(1.6));
      expect(a.chat).to.include({ durationSeconds: 1, settledUntil: s(1) });
      const b = thenAgain(a, { presence: present(s(0)) }, s(2.2));
      expect(b.chat).to.include({ durationSeconds: 2, settledUntil: s(2) });
    });

    it('bills the same whole seconds however a metered stretch is cut into settlements', () => {
      fc.assert(
        fc.property(fc.uniqueArray(fc.integer({ min: 1, max: 40_000 }), { maxLength: 12 }), fc.integer({ min: 1, max: 40_000 }), (cuts, end) => {
          const instants = [...cuts.filter((c) => c < end).sort((x, y) => x - y), end].map((ms) => T0 + ms);
          const presence = present(s(0), s(40));
          let r = when({ presence, allowance: { allocationSeconds: 7, usedSeconds: 0 }, rate: '2.5' }, instants[0]!);
          let charged = r.charge;
          for (const now of instants.slice(1)) {
            r = thenAgain(r, { presence, rate: '2.5' }, now);
            charged += r.charge;
          }
          const seconds = Math.floor(end / 1000);
          expect(r.chat.durationSeconds).to.equal(seconds);
          expect(r.chat.freeSecondsUsed).to.equal(Math.min(7, seconds));
          expect(r.allowance.usedSeconds).to.equal(Math.min(7, seconds));
          // rule 3: from cumulative paid seconds, never summed rounded increments
          expect(r.chat.creditsUsed).to.equal(creditsFor(Math.max(0, seconds - 7), parseAmount('2.5')));
          expect(charged).to.equal(r.chat.creditsUsed);
          expect(parseAmount('1000') - r.balance).to.equal(charged);
        }),
      );
    });

    it('takes free seconds first, then paid ones, and never more free time than remains', () => {
      const r = when({ allowance: { allocationSeconds: 180, usedSeconds: 170 }, rate: '6', presence: present(s(0)) }, s(14));
      expect(r.freeSecondsBilled).to.equal(10);
      expect(r.paidSecondsBilled).to.equal(4);
      expect(r.allowance).to.deep.equal({ allocationSeconds: 180, usedSeconds: 180 });
      expect(r.chat).to.include({ durationSeconds: 14, freeSecondsUsed: 10, paidSeconds: 4 });
      expect(formatAmount(r.chat.creditsUsed)).to.equal('0.4000');
      expect(formatAmount(r.charge)).to.equal('0.4000');
    });
  });

  describe('presence (rule 5)', () => {
    it('does not bill the gap before presence returned after the last settlement', () => {
      const a = when({ presence: left(s(0), s(10)) }, s(30));
      expect(a.chat.durationSeconds).to.equal(10);
      expect(a.chat.meterState).to.equal('away');
      const b = thenAgain(a, { presence: present(s(50)) }, s(60));
      expect(b.chat.durationSeconds).to.equal(20);
      expect(b.chat.settledUntil).to.equal(s(60));
      expect(b.chat.meterState).to.equal('running');
    });

    it('never runs the meter past the latest heartbeat plus interval and grace', () => {
      const r = when({ presence: present(s(0), s(20)) }, s(100));
      expect(r.chat.durationSeconds).to.equal(20 + GRACE / 1000);
      expect(r.chat.meterState).to.equal('away');
      // and a later settlement with the same span adds nothing
      expect(thenAgain(r, { presence: present(s(0), s(20)) }, s(110)).chat.durationSeconds).to.equal(35);
    });

    it('does not bill the gap when presence began after the settlement instant (a join racing the tick, or another node\'s clock)', () => {
      const a = when({ presence: left(s(0), s(10)) }, s(10));
      expect(a.chat.durationSeconds).to.equal(10);
      // the tick read its clock at s(30.5); the user rejoined, stamped s(31), before it read presence
      const b = thenAgain(a, { presence: present(s(31)) }, s(30.5));
      expect(b.chat.durationSeconds).to.equal(10);
      expect(b.charge).to.equal(0n);
      // and the next tick bills from the rejoin only
      expect(thenAgain(b, { presence: present(s(31)) }, s(33.5)).chat.durationSeconds).to.equal(12);
    });

    it('does not move billing past a span that covers nothing yet, so a span replacing it bills from its own start', () => {
      // a join stamped at s(0.001) by a clock ahead of the tick's, then left before the tick: an empty span
      const a = when({ presence: { since: s(0.001), until: s(0), lastHeartbeatAt: s(0.001) } }, s(0));
      expect(a.chat.settledUntil).to.equal(s(0));
      // the user rejoins at s(0) and stays three whole seconds: all three are billed (found by the property test)
      expect(thenAgain(a, { presence: present(s(0)) }, s(3)).chat.durationSeconds).to.equal(3);
    });

    it('stops the meter the moment the last socket left', () => {
      const r = when({ presence: left(s(0), s(12.5)) }, s(40));
      expect(r.chat.durationSeconds).to.equal(12);
      expect(r.chat.lastPresentAt).to.equal(s(12.5));
    });

    it('bills nothing without presence, and keeps the billing point', () => {
      const r = when({ presence: null }, s(60));
      expect(r.chat.durationSeconds).to.equal(0);
      expect(r.chat.settledUntil).to.equal(s(0));
      expect(r.chat.meterState).to.equal('away');
    });

    it('records the billing point of an active chat nobody has joined yet at its start', () => {
      const r = when({ chat: activeChat({ settledUntil: null }), presence: null }, s(60));
      expect(r.chat.settledUntil).to.equal(s(0));
    });

    it('never moves the last presence back, as a node whose clock lags would', () => {
      const a = when({ presence: left(s(0), s(50)) }, s(60));
      expect(a.chat.lastPresentAt).to.equal(s(50));
      // a node 30 s behind settles with a span it saw at its s(40)
      const b = thenAgain(a, { presence: present(s(0), s(40)) }, s(40));
      expect(b.chat.lastPresentAt).to.equal(s(50));
    });

    it('keeps the latest heartbeat of the chat, whichever of the record and the span has it', () => {
      const first = when({ presence: present(s(0), s(20)) }, s(21));
      expect(first.chat.lastHeartbeatAt).to.equal(s(20));
      // a later span without a heartbeat (a join that has not beaten yet) keeps the recorded one
      const noBeat = thenAgain(first, { presence: { since: s(22), until: s(30), lastHeartbeatAt: null } }, s(23));
      expect(noBeat.chat.lastHeartbeatAt).to.equal(s(20));
      // an older heartbeat (a lagging node's span) never replaces a newer one
      expect(thenAgain(first, { presence: present(s(0), s(5)) }, s(21)).chat.lastHeartbeatAt).to.equal(s(20));
      expect(thenAgain(first, { presence: present(s(0), s(21)) }, s(21)).chat.lastHeartbeatAt).to.equal(s(21));
      // nothing recorded yet: the span's, or none
      expect(when({ presence: { since: s(0), until: s(10), lastHeartbeatAt: null } }, s(5)).chat.lastHeartbeatAt).to.equal(null);
    });

    it('ends a chat abandoned exactly at the timeout, not a millisecond before', () => {
      const presence = left(s(0), s(10));
      const before = when({ presence, rate: '0' }, s(10) + policy.abandonTimeoutMs - 1);
      expect(before.ended).to.equal(null);
      expect(before.chat.status).to.equal('active');
      const at = when({ presence, rate: '0' }, s(10) + policy.abandonTimeoutMs);
      expect(at.ended).to.equal('abandoned');
      expect(at.chat).to.include({ status: 'ended', endReason: 'abandoned', endedAt: s(130), meterState: 'ended' });
      // billed only the 10 present seconds
      expect(at.chat.durationSeconds).to.equal(10);
    });

    it('counts absence from the start when the user never came, and not before observedSince', () => {
      expect(when({ presence: null }, s(119.999)).ended).to.equal(null);
      expect(when({ presence: null }, s(120)).ended).to.equal('abandoned');
      // a node that started at s(100) cannot know the user was away before it
      expect(when({ presence: null, observedSince: s(100) }, s(200)).ended).to.equal(null);
      expect(when({ presence: null, observedSince: s(100) }, s(220)).ended).to.equal('abandoned');
    });

    it('remembers the last presence across settlements for the abandon timeout', () => {
      const a = when({ presence: left(s(0), s(50)) }, s(60));
      // presence info lost (say, after a restart): the recorded last presence still counts
      const b = thenAgain(a, { presence: null }, s(169));
      expect(b.ended).to.equal(null);
      expect(thenAgain(a, { presence: null }, s(170)).ended).to.equal('abandoned');
    });

    it('counts absence from when the user was last seen, not from the end of the heartbeat window', () => {
      // settled at s(10) while the heartbeat window runs to s(25): the user was present up to s(10), no further
      const a = when({ presence: present(s(0), s(10)) }, s(10));
      expect(a.chat.lastPresentAt).to.equal(s(10));
      // the last socket left at s(10.5): abandoned two minutes after that, not after s(25)
      const b = thenAgain(a, { presence: left(s(0), s(10.5)) }, s(130.5));
      expect(b.ended).to.equal('abandoned');
      expect(b.chat.lastPresentAt).to.equal(s(10.5));
    });

    it('gives only an active chat an abandon deadline', () => {
      expect(abandonDeadline(activeChat({ lastPresentAt: s(10) }), -Infinity, policy)).to.equal(s(130));
      for (const status of ['pending', 'ended'] as const) {
        expect(abandonDeadline(activeChat({ status, lastPresentAt: s(10) }), -Infinity, policy), status).to.equal(null);
      }
    });

    it('never abandons a present user, however long the chat', () => {
      const r = when({ presence: present(s(0), s(995)), rate: '0' }, s(1000));
      expect(r.ended).to.equal(null);
      expect(r.chat.durationSeconds).to.equal(1000);
    });
  });

  describe('pause', () => {
    it('bills nothing while paused, and not the paused time after resume', () => {
      const running = when({ presence: present(s(0)) }, s(10));
      const paused = applyCommand(running.chat, { kind: 'pause' }, s(10));
      if (isRefusal(paused)) throw new Error(paused.refused);
      const during = settle({
        chat: paused,
        allowance: running.allowance,
        balance: running.balance,
        ratePerMinute: parseAmount('6'),
        presence: present(s(0), s(40)),
        now: s(50),
        observedSince: -Infinity,
        policy,
      });
      expect(during.chat.durationSeconds).to.equal(10);
      expect(during.charge).to.equal(0n);
      expect(during.chat.meterState).to.equal('paused');
      const resumed = applyCommand(during.chat, { kind: 'resume' }, s(50));
      if (isRefusal(resumed)) throw new Error(resumed.refused);
      expect(resumed.settledUntil).to.equal(s(50));
      const after = settle({
        chat: resumed,
        allowance: during.allowance,
        balance: during.balance,
        ratePerMinute: parseAmount('6'),
        presence: present(s(0), s(55)),
        now: s(57),
        observedSince: -Infinity,
        policy,
      });
      expect(after.chat.durationSeconds).to.equal(17);
    });

    it('never bills a second twice when a node whose clock lags resumes the chat', () => {
      const running = when({ presence: present(s(0), s(10)) }, s(10));
      const paused = applyCommand(running.chat, { kind: 'pause' }, s(10));
      if (isRefusal(paused)) throw new Error(paused.refused);
      // another node, 1 s behind, resumes: its now is before what is already billed
      const resumed = applyCommand(paused, { kind: 'resume' }, s(9));
      if (isRefusal(resumed)) throw new Error(resumed.refused);
      expect(resumed.settledUntil).to.equal(s(10));
      const after = settle({
        chat: resumed,
        allowance: running.allowance,
        balance: running.balance,
        ratePerMinute: parseAmount('6'),
        presence: present(s(0), s(20)),
        now: s(20),
        observedSince: -Infinity,
        policy,
      });
      // 20 s of wall time since the start, so never more than 20 s billed
      expect(after.chat.durationSeconds).to.equal(20);
    });
  });

  describe('out of credits (rule 4)', () => {
    it('bills only what the balance pays and ends the chat, never going below zero', () => {
      // 0.1 per second; 0.35 pays 3 seconds
      const r = when({ balance: '0.35', rate: '6', presence: present(s(0)) }, s(10));
      expect(r.ended).to.equal('out_of_credits');
      expect(r.paidSecondsBilled).to.equal(3);
      expect(formatAmount(r.balance)).to.equal('0.0500');
      expect(r.chat).to.include({ status: 'ended', endReason: 'out_of_credits', durationSeconds: 3 });
    });

    it('ends at once when free time is gone and the balance cannot pay the next second, even while away', () => {
      const r = when({ balance: '0.0999', rate: '6', presence: null }, s(1));
      expect(r.ended).to.equal('out_of_credits');
      expect(r.charge).to.equal(0n);
    });

    it('keeps a chat that still has free time, or can pay exactly the next second', () => {
      expect(when({ balance: '0', allowance: { allocationSeconds: 10, usedSeconds: 9 }, presence: null }, s(1)).ended).to.equal(null);
      expect(when({ balance: '0.1', rate: '6', presence: null }, s(1)).ended).to.equal(null);
      const exact = when({ balance: '1', rate: '6', presence: present(s(0)) }, s(10));
      // the 10th second took the balance to exactly 0: nothing pays the 11th
      expect(exact.balance).to.equal(0n);
      expect(exact.chat.durationSeconds).to.equal(10);
      expect(exact.ended).to.equal('out_of_credits');
    });

    it('never runs out at rate 0', () => {
      const r = when({ balance: '0', rate: '0', presence: present(s(0), s(500)) }, s(500));
      expect(r.ended).to.equal(null);
      expect(r.chat.durationSeconds).to.equal(500);
      expect(r.secondsAffordable).to.equal(null);
    });

    it('lets seconds that round to nothing run at a zero balance (rate 0.0001)', () => {
      const r = when({ balance: '0', rate: '0.0001', presence: present(s(0), s(40)) }, s(40));
      // creditsFor(29) = 0, creditsFor(30) = 0.0001
      expect(r.chat.durationSeconds).to.equal(29);
      expect(r.ended).to.equal('out_of_credits');
      expect(r.balance).to.equal(0n);
    });

    it('never charges more than the balance, for any balance, rate and duration', () => {
      fc.assert(
        fc.property(
          fc.bigInt({ min: 0n, max: 200_000n }),
          fc.constantFrom('0.0001', '1', '2.5', '6', '13.3333'),
          fc.integer({ min: 0, max: 600_000 }),
          fc.nat({ max: 30 }),
          (balance, rate, ms, free) => {
            const r = when({ balance: formatAmount(balance), rate, allowance: { allocationSeconds: free, usedSeconds: 0 }, presence: present(s(0), s(600)) }, T0 + ms);
            expect(r.balance >= 0n).to.equal(true);
            expect(r.charge).to.equal(balance - r.balance);
            expect(r.chat.creditsUsed).to.equal(creditsFor(r.chat.paidSeconds, parseAmount(rate)));
            const wanted = Math.floor(ms / 1000);
            if (r.chat.durationSeconds < wanted) expect(r.ended).to.equal('out_of_credits');
            else expect(r.chat.durationSeconds).to.equal(wanted);
          },
        ),
      );
    });
  });

  describe('low balance warning (rule 4)', () => {
    it('warns once when affordable time drops below the threshold, and again after a top-up falls back below it', () => {
      // 10 credits at 0.1/s: 100 s affordable
      const a = when({ balance: '10', presence: present(s(0), s(30)) }, s(30));
      expect([a.lowBalance, a.secondsAffordable]).to.deep.equal([false, 70]);
      const b = thenAgain(a, { presence: present(s(0), s(41)) }, s(41));
      expect([b.lowBalance, b.secondsAffordable]).to.deep.equal([true, 59]);
      const c = thenAgain(b, { presence: present(s(0), s(45)) }, s(45));
      expect(c.lowBalance).to.equal(false);
      // a top-up of 5 credits: 105 s affordable, the warning re-arms
      const toppedUp = settle({ chat: c.chat, allowance: c.allowance, balance: c.balance + parseAmount('5'), ratePerMinute: parseAmount('6'), presence: present(s(0), s(46)), now: s(46), observedSince: -Infinity, policy });
      expect(toppedUp.lowBalance).to.equal(false);
      expect(toppedUp.chat.lowBalanceWarned).to.equal(false);
      const d = thenAgain(toppedUp, { presence: present(s(0), s(100)) }, s(100));
      expect(d.lowBalance).to.equal(true);
      expect(thenAgain(d, { presence: present(s(0), s(101)) }, s(101)).lowBalance).to.equal(false);
    });

    it('warns only below the threshold, not at it', () => {
      // 10 credits at 0.1/s: 60 s affordable after 40 s, 59 after 41
      const at60 = when({ balance: '10', presence: present(s(0), s(40)) }, s(40));
      expect([at60.lowBalance, at60.secondsAffordable]).to.deep.equal([false, 60]);
      expect(thenAgain(at60, { presence: present(s(0), s(41)) }, s(41)).lowBalance).to.equal(true);
    });

    it('never warns at rate 0 or for a chat that is not active', () => {
      expect(when({ balance: '0', rate: '0' }, s(10)).lowBalance).to.equal(false);
      expect(when({ chat: activeChat({ status: 'pending', startedAt: null, settledUntil: null }), balance: '0' }, s(10)).lowBalance).to.equal(false);
    });
  });

  describe('chats not running', () => {
    it('bills nothing for a pending chat and never abandons it', () => {
      const r = when({ chat: activeChat({ status: 'pending', startedAt: null, settledUntil: null, meterState: 'pending' }), presence: present(s(0)) }, s(500));
      expect(r.chat.durationSeconds).to.equal(0);
      expect(r.ended).to.equal(null);
      expect(r.chat.meterState).to.equal('pending');
    });

    it('leaves an ended chat as it is', () => {
      const chat = activeChat({ status: 'ended', endedAt: s(5), endReason: 'ended_by_user', meterState: 'ended', durationSeconds: 5, paidSeconds: 5, creditsUsed: 5000n });
      const r = when({ chat, presence: present(s(0)) }, s(500));
      expect(r.chat).to.deep.equal(chat);
      expect(r.charge).to.equal(0n);
      expect(r.ended).to.equal(null);
    });
  });

  describe('commands', () => {
    const commands: Command[] = [{ kind: 'start' }, { kind: 'pause' }, { kind: 'resume' }, { kind: 'end', reason: 'ended_by_advisor' }];
    const chats: Record<string, ChatMeter> = {
      pending: activeChat({ status: 'pending', startedAt: null, settledUntil: null, meterState: 'pending' }),
      running: activeChat(),
      paused: activeChat({ paused: true, meterState: 'paused' }),
      ended: activeChat({ status: 'ended', endedAt: s(5), endReason: 'ended_by_user', meterState: 'ended' }),
    };
    // what each command does in each state: 'refused', 'same' (a safe no-op retry) or the new status/paused
    const table: Record<string, Record<Command['kind'], string>> = {
      pending: { start: 'active', pause: 'refused', resume: 'refused', end: 'ended' },
      running: { start: 'same', pause: 'active+paused', resume: 'same', end: 'ended' },
      paused: { start: 'same', pause: 'active+paused', resume: 'active', end: 'ended' },
      ended: { start: 'refused', pause: 'refused', resume: 'refused', end: 'same' },
    };

    for (const [name, chat] of Object.entries(chats)) {
      for (const cmd of commands) {
        const expected = table[name]![cmd.kind];
        it(`${cmd.kind} on a ${name} chat: ${expected}`, () => {
          const out = applyCommand(chat, cmd, s(60));
          if (expected === 'refused') {
            if (!isRefusal(out)) throw new Error(`not refused: ${JSON.stringify(out)}`);
            // the refusal goes to the client as the conflict's message: it names the state that refused
            expect(out.refused).to.include(chat.status);
            return;
          }
          if (isRefusal(out)) throw new Error(`refused: ${out.refused}`);
          if (expected === 'same') expect(out).to.deep.equal(chat);
          else expect(`${out.status}${out.paused ? '+paused' : ''}`).to.equal(expected);
        });
      }
    }

    it('starts the meter at the start instant, not before', () => {
      const out = applyCommand(chats.pending!, { kind: 'start' }, s(60));
      if (isRefusal(out)) throw new Error(out.refused);
      expect(out).to.include({ startedAt: s(60), settledUntil: s(60) });
      const r = when({ chat: out, presence: present(s(0), s(65)) }, s(70));
      expect(r.chat.durationSeconds).to.equal(10);
    });

    it('ends with the reason given and keeps what was billed', () => {
      const billed = when({ presence: present(s(0)) }, s(9)).chat;
      const out = applyCommand(billed, { kind: 'end', reason: 'ended_by_platform' }, s(9));
      if (isRefusal(out)) throw new Error(out.refused);
      expect(out).to.include({ status: 'ended', endReason: 'ended_by_platform', endedAt: s(9), durationSeconds: 9, paused: false, meterState: 'ended' });
      // a second end (a retry) changes nothing, not even the reason
      expect(applyCommand(out, { kind: 'end', reason: 'ended_by_user' }, s(20))).to.deep.equal(out);
    });
  });

  describe('meterState', () => {
    const presence = present(s(10), s(20)); // present over [s(10), s(35))

    it('is running exactly while active, unpaused and present', () => {
      const chat = activeChat();
      expect(meterState(chat, presence, s(9.999))).to.equal('away');
      expect(meterState(chat, presence, s(10))).to.equal('running');
      expect(meterState(chat, presence, s(34.999))).to.equal('running');
      expect(meterState(chat, presence, s(35))).to.equal('away');
      expect(meterState(chat, null, s(20))).to.equal('away');
    });

    it('maps every status, pause and presence to exactly one state, and reaches every state', () => {
      const reached = new Set<string>();
      const expected: Record<ChatStatus, (paused: boolean, here: boolean) => MeterState> = {
        pending: () => 'pending',
        active: (paused, here) => (paused ? 'paused' : here ? 'running' : 'away'),
        ended: () => 'ended',
      };
      for (const status of Object.values(ChatStatus)) {
        for (const paused of [false, true]) {
          for (const here of [false, true]) {
            const state = meterState(activeChat({ status, paused }), here ? presence : null, s(20));
            expect(state, `${status} paused=${paused} present=${here}`).to.equal(expected[status](paused, here));
            reached.add(state);
          }
        }
      }
      expect([...reached].sort()).to.deep.equal(Object.values(MeterState).sort());
    });

    it('is what a settlement leaves on the chat', () => {
      for (const [p, want] of [
        [present(s(0), s(20)), 'running'],
        [left(s(0), s(5)), 'away'],
        [null, 'away'],
      ] as const) {
        const r = when({ presence: p }, s(20));
        expect(r.ended).to.equal(null);
        expect(r.chat.meterState).to.equal(want);
      }
      const paused = when({ chat: activeChat({ paused: true }), presence: present(s(0), s(20)) }, s(20));
      expect(paused.chat.meterState).to.equal('paused');
    });
  });
});
