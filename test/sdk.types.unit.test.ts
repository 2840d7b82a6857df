import { expect } from 'chai';
import { type ChatSession, type Client, type Dashboard, ChatmeterError, type ChatmeterErrorCode, type MeterSnapshot, connect } from '../client-sdk/src/index.js';
import { ErrorCode } from '../client-sdk/src/protocol.js';

/**
 * Type-level tests of the SDK: each `@ts-expect-error` line must fail to compile
 * (`npm run typecheck`, part of CI), so a change that loosens the SDK's types breaks the build.
 * The functions are never called: only their compilation is the test.
 */
describe('client SDK types', () => {
  it('types calls, events, payloads and errors', () => {
    const calls = async (client: Client, session: ChatSession, dashboard: Dashboard) => {
      // @ts-expect-error an event the protocol does not have
      await client.call('chat:jion', { chatId: 'c1' });
      // @ts-expect-error a payload of the wrong shape
      await client.call('chat:join', { chat: 'c1' });
      // @ts-expect-error a chat id is a string
      await client.joinChat(42);
      const joined = await client.call('chat:join', { chatId: 'c1' });
      const interval: number = joined.heartbeatIntervalMs;
      // @ts-expect-error an ack's error half is not a success
      void joined.error;

      session.on('meter', (m) => {
        const seq: number = m.seq;
        // @ts-expect-error a meter snapshot has no such field
        void m.secondsLeft;
        void seq;
      });
      // @ts-expect-error a session has no such event
      session.on('metre', () => undefined);
      session.on('ended', ({ reason }) => {
        // @ts-expect-error a reason is one of the protocol's
        const wrong: 'finished' = reason;
        void wrong;
      });
      const left: number | null = session.secondsLeft();
      const after: MeterSnapshot = await session.pause();
      // @ts-expect-error leave() resolves with nothing
      const nothing: MeterSnapshot = await session.leave();

      dashboard.on('change', (chatId, entry) => {
        const id: string = chatId;
        // @ts-expect-error an entry is null when the chat left the dashboard
        const state = entry.chat.status;
        void [id, state];
      });
      // @ts-expect-error a client has no such event
      client.on('balanceLOW', () => undefined);
      const off: () => void = client.on('state', (state) => {
        // @ts-expect-error states are the five of SPEC 7
        const wrong: 'open' = state;
        void wrong;
      });
      void [interval, left, after, nothing, off];
    };
    // @ts-expect-error url is required
    const noUrl = () => connect({ token: 't' });
    void [calls, noUrl];

    const codes = [
      'bad_request', 'unauthorized', 'forbidden', 'not_found', 'conflict', 'rate_limited', 'payload_too_large', 'unprocessable', 'internal',
      'timeout', 'disconnected',
    ] as const satisfies readonly ChatmeterErrorCode[];
    // the list holds every code of the union: a code the type gains without the list fails to compile
    const complete: [Exclude<ChatmeterErrorCode, (typeof codes)[number]>] extends [never] ? true : false = true;
    const partial = ['timeout', 'disconnected'] as const;
    // @ts-expect-error the check above bites: a list without the server's codes is incomplete
    const incomplete: [Exclude<ChatmeterErrorCode, (typeof partial)[number]>] extends [never] ? true : false = true;
    // @ts-expect-error not a code of SPEC 2 or the client's own
    const wrong: ChatmeterErrorCode = 'teapot';
    void [complete, incomplete, wrong];

    // at run time: the union is the protocol's codes, as the server sends them, and the client's own two
    expect([...codes].sort()).to.deep.equal([...Object.values(ErrorCode), 'timeout', 'disconnected'].sort());
    const err = new ChatmeterError('timeout', 'late');
    expect(err).to.be.instanceOf(Error).and.include({ code: 'timeout', name: 'ChatmeterError', message: 'late' });
  });
});
