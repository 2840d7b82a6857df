/**
 * Demo data for `npm start` on a fresh machine: a user, an advisor and an open chat
 * between them, with tokens for the demo pages (a user tab, an advisor dashboard).
 * Loaded only on the embedded database, never into a real deployment's Postgres.
 */
import type { App } from './app.js';

/** The demo pages' URLs, with their tokens. */
export interface DemoLinks {
  userPage: string;
  advisorPage: string;
  chatId: string;
}

/** Creates the demo rows (idempotently) and returns the pages to open. */
export async function loadDemo(app: App, baseUrl: string, now: number): Promise<DemoLinks> {
  const { accounts, tokens } = app.services;
  const { created } = await accounts.putUser('demo-user', { name: 'Demo User', balance: '10' });
  if (!created) {
    const user = await accounts.getUser('demo-user');
    if (user.balance === '0.0000') await app.services.engine.topUp('demo-user', '10', `demo-refill-${now}`);
  }
  await accounts.putAdvisor('demo-advisor', { name: 'Demo Advisor', ratePerMinute: '6', freeSeconds: 30 });
  // a chat that has not ended yet, or a new one
  let chatId = 'demo-chat';
  for (let n = 2; ; n++) {
    const { chat } = await accounts.createChat({ id: chatId, userId: 'demo-user', advisorId: 'demo-advisor' });
    if (chat.status !== 'ended') break;
    chatId = `demo-chat-${n}`;
  }
  const ttl = 24 * 3600;
  const user = await tokens.sign({ sub: 'demo-user', role: 'user' }, ttl, now);
  const advisor = await tokens.sign({ sub: 'demo-advisor', role: 'advisor' }, ttl, now);
  return {
    chatId,
    userPage: `${baseUrl}/demo/user.html?chat=${chatId}&token=${user.token}`,
    advisorPage: `${baseUrl}/demo/advisor.html?token=${advisor.token}`,
  };
}
