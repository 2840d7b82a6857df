/**
 * @chatmeter/client: the typed client of chatmeter for browsers, bundlers and Node >= 20.
 *
 * @example
 * import { connect } from '@chatmeter/client';
 * const client = connect({ url: 'https://meter.example.com', getToken: () => fetchToken() });
 * const session = await client.joinChat('chat-42');
 * session.on('meter', (m) => render(m, session.secondsLeft()));
 */
export { connect, Client } from './client.js';
export type { ClientState, ConnectOptions, TokenSource, BalanceEvent, BalanceLowEvent, Principal } from './client.js';
export { ChatSession } from './session.js';
export type { EndedEvent } from './session.js';
export { Dashboard } from './dashboard.js';
export type { DashboardEntry } from './dashboard.js';
export { ChatmeterError } from './errors.js';
export type { ChatmeterErrorCode } from './errors.js';
export * from './protocol.js';
