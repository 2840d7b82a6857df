/**
 * The events of SPEC 8, pure: built from what a settlement decided or a top-up did, as the
 * rows the outbox stores. An event's body is serialized once, here, and never changes.
 */
import type { ChatView, MeterSnapshot, TimeRecordView } from '../../client-sdk/src/protocol.js';
import type { SettleOutcome } from '../metering/decide.js';
import type { LedgerEntryView } from '../metering/settlement.js';

export type WebhookEventType = 'chat.started' | 'chat.paused' | 'chat.resumed' | 'chat.ended' | 'balance.low' | 'credits.added';

/** What a receiver gets: `{ id, type, createdAt, data }`. */
export interface WebhookEventBody<T = unknown> {
  id: string;
  type: WebhookEventType;
  createdAt: string;
  data: T;
}

/** What `chat.ended` tells the integrator to pay the advisor and show the user. */
export interface Receipt {
  durationSeconds: number;
  freeSeconds: number;
  paidSeconds: number;
  creditsUsed: string;
  ratePerMinute: string;
}

/** An outbox row to insert with the change. */
export interface OutboxRow {
  id: string;
  type: WebhookEventType;
  created_at: string;
  body: string;
}

const COMMAND_EVENT = { start: 'chat.started', pause: 'chat.paused', resume: 'chat.resumed' } as const;

/** The events of one settlement batch at `now`: each state change a command made, each end, each low-balance warning. */
export function settlementEvents(outcomes: SettleOutcome[], now: number, newId: () => string): OutboxRow[] {
  const createdAt = new Date(now).toISOString();
  const rows: OutboxRow[] = [];
  for (const o of outcomes) {
    if (!o.ok) continue;
    for (const kind of o.applied) rows.push(row(newId(), COMMAND_EVENT[kind], createdAt, { chat: chatView(o), meter: o.meter }));
    if (o.ended && o.record) rows.push(row(newId(), 'chat.ended', createdAt, { chat: chatView(o), record: o.record, receipt: receipt(o.record, o.meter) }));
    if (o.lowBalance) {
      rows.push(row(newId(), 'balance.low', createdAt, { userId: o.meter.userId, balance: o.meter.balance, secondsAffordable: o.meter.secondsAffordable }));
    }
  }
  return rows;
}

/** The chat as the settlement left it, as the API shows it. */
function chatView(o: Extract<SettleOutcome, { ok: true }>): ChatView {
  return { id: o.chatId, userId: o.meter.userId, advisorId: o.meter.advisorId, ...o.chat, createdAt: o.createdAt.toISOString() };
}

/** `credits.added`, for a top-up that added (a replay adds nothing and emits nothing). */
export function creditsAdded(userId: string, entry: LedgerEntryView, balance: string, newId: () => string): OutboxRow {
  return row(newId(), 'credits.added', entry.createdAt, { userId, entry, balance });
}

/** The receipt of an ended chat: the record's seconds and credits, the chat's rate. */
export function receipt(record: TimeRecordView, meter: MeterSnapshot): Receipt {
  return {
    durationSeconds: record.durationSeconds,
    freeSeconds: record.freeSecondsUsed,
    paidSeconds: record.durationSeconds - record.freeSecondsUsed,
    creditsUsed: record.creditsUsed,
    ratePerMinute: meter.ratePerMinute,
  };
}

function row(id: string, type: WebhookEventType, createdAt: string, data: unknown): OutboxRow {
  const body: WebhookEventBody = { id, type, createdAt, data };
  return { id, type, created_at: createdAt, body: JSON.stringify(body) };
}

