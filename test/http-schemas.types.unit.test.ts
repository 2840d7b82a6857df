import { expect } from 'chai';
import type { z } from 'zod';
import type { AckError, ChatView, MeterSnapshot, TimeRecordView } from '../client-sdk/src/protocol.js';
import type { Accounts, AdvisorView, UserView } from '../server/accounts.js';
import {
  AdvisorSchema,
  ChatDetailsSchema,
  ChatMeterSchema,
  ChatSchema,
  ClientTokenSchema,
  ErrorSchema,
  LedgerEntrySchema,
  LedgerPageSchema,
  MeterSnapshotSchema,
  PairTimeRecordsSchema,
  TimeRecordSchema,
  TopUpSchema,
  UserSchema,
  AllowanceSchema,
  DeliveryPageSchema,
  DeliverySchema,
} from '../server/http/schemas.js';
import type { DeliveryView, WebhookDeliveries } from '../server/webhooks/deliveries.js';
import type { ChatWithMeter, MeterService } from '../server/metering/meter-service.js';
import type { AllowanceView, TimeRecords } from '../server/metering/records.js';
import type { LedgerEntryView, TopUpResult } from '../server/metering/settlement.js';
import type { Tokens } from '../server/tokens.js';

/** True when each of A and B is assignable to the other. */
type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;
/** Compiles only when the schema's type and the wire type agree. */
const agree = <S extends z.ZodType, T>(_schema: S, ok: Same<z.infer<S>, T>): boolean => ok;
type Resolved<F extends (...args: never[]) => Promise<unknown>> = Awaited<ReturnType<F>>;

/**
 * Type-level tests: the response schemas of the OpenAPI document (server/http/schemas.ts)
 * say what the wire types say (client-sdk/src/protocol.ts and the server's views). A field
 * added, dropped, renamed or retyped on either side fails `npm run typecheck`.
 */
describe('HTTP response schemas', () => {
  it('agree with the wire types', () => {
    const checks = [
      agree<typeof UserSchema, UserView>(UserSchema, true),
      agree<typeof DeliverySchema, DeliveryView>(DeliverySchema, true),
      agree<typeof DeliveryPageSchema, Resolved<WebhookDeliveries['page']>>(DeliveryPageSchema, true),
      agree<typeof AdvisorSchema, AdvisorView>(AdvisorSchema, true),
      agree<typeof ChatSchema, ChatView>(ChatSchema, true),
      agree<typeof TimeRecordSchema, TimeRecordView>(TimeRecordSchema, true),
      agree<typeof AllowanceSchema, AllowanceView>(AllowanceSchema, true),
      agree<typeof MeterSnapshotSchema, MeterSnapshot>(MeterSnapshotSchema, true),
      agree<typeof LedgerEntrySchema, LedgerEntryView>(LedgerEntrySchema, true),
      agree<typeof LedgerPageSchema, Resolved<Accounts['ledgerPage']>>(LedgerPageSchema, true),
      agree<typeof TopUpSchema, Omit<TopUpResult, 'replayed'>>(TopUpSchema, true),
      agree<typeof ChatMeterSchema, ChatWithMeter>(ChatMeterSchema, true),
      agree<typeof ChatDetailsSchema, Resolved<MeterService['chatDetails']>>(ChatDetailsSchema, true),
      agree<typeof PairTimeRecordsSchema, Resolved<TimeRecords['ofPair']>>(PairTimeRecordsSchema, true),
      agree<typeof ClientTokenSchema, Resolved<Tokens['sign']>>(ClientTokenSchema, true),
      agree<typeof ErrorSchema, { error: AckError['error'] }>(ErrorSchema, true),
    ];
    expect(checks.every(Boolean)).to.equal(true);
  });

  it('tell a disagreement', () => {
    // @ts-expect-error: a wire type with a field the schema lacks
    agree<typeof ChatSchema, ChatView & { extra: string }>(ChatSchema, true);
    // @ts-expect-error: a wire type where the schema's field is nullable and the type's is not
    agree<typeof ChatSchema, Omit<ChatView, 'endedAt'> & { endedAt: string }>(ChatSchema, true);
    // @ts-expect-error: amounts are strings, not numbers
    agree<typeof UserSchema, Omit<UserView, 'balance'> & { balance: number }>(UserSchema, true);
  });
});
