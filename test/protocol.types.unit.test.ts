import { expect } from 'chai';
import type { Socket as ClientSocket } from 'socket.io-client';
import {
  type Ack,
  type ClientToServerEvents,
  EndReason,
  ErrorCode,
  type MeterSnapshot,
  MeterState,
  type ServerToClientEvents,
} from '../client-sdk/src/protocol.js';

/**
 * Type-level tests of the protocol: each `@ts-expect-error` line must fail to
 * compile (`npm run typecheck`, part of CI), so a protocol change that loosens a
 * type breaks the build. The runtime assertions keep mocha honest about the codes.
 */
describe('protocol types', () => {
  it('types client events, payloads and acks', () => {
    const check = (s: ClientSocket<ServerToClientEvents, ClientToServerEvents>) => {
      s.emit('chat:join', { chatId: 'c1' }, (ack) => {
        if (ack.ok) {
          const m: MeterSnapshot = ack.meter;
          const interval: number = ack.heartbeatIntervalMs;
          void [m, interval];
        } else {
          const code: ErrorCode = ack.error.code;
          void code;
        }
      });
      // @ts-expect-error: chatId is a string
      s.emit('chat:join', { chatId: 42 });
      // @ts-expect-error: no such client event
      s.emit('chat:delete', { chatId: 'c1' });
      // @ts-expect-error: the server never sends this
      s.on('chat:join', () => {});
      s.on('meter', (m) => {
        // @ts-expect-error: amounts are decimal strings, never numbers
        const credits: number = m.creditsUsed;
        void credits;
      });
    };
    void check;
  });

  it('narrows acks on ok', () => {
    const ack = { ok: false, error: { code: 'forbidden', message: 'not yours' } } as Ack<{ serverTime: string }>;
    if (!ack.ok) {
      // @ts-expect-error: a failed ack has no result fields
      void ack.serverTime;
    }
    expect(ack.ok).to.equal(false);
  });

  it('keeps codes as const objects with derived unions', () => {
    // @ts-expect-error: not an error code
    const bad: ErrorCode = 'teapot';
    void bad;
    expect(Object.values(ErrorCode)).to.include.members(['bad_request', 'unauthorized', 'forbidden', 'not_found', 'conflict', 'rate_limited', 'internal']);
    expect(Object.values(MeterState).sort()).to.deep.equal(['away', 'ended', 'paused', 'pending', 'running']);
    expect(Object.values(EndReason).sort()).to.deep.equal(['abandoned', 'ended_by_advisor', 'ended_by_platform', 'ended_by_user', 'out_of_credits']);
  });
});
