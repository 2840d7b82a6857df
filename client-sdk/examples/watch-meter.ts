/**
 * Joins a chat with a client token and prints its live meter: what a browser tab
 * does, from a terminal, on the SDK. A user's token also heartbeats, so the meter runs.
 *
 * @example npm run watch -- --url http://localhost:3000 --token "$TOKEN" --chat c1
 */
import { parseArgs } from 'node:util';
import { ChatmeterError, type MeterSnapshot, connect } from '../src/index.js';

const { values } = parseArgs({
  options: {
    url: { type: 'string', default: 'http://localhost:3000' },
    token: { type: 'string' },
    chat: { type: 'string' },
  },
});
if (!values.token || !values.chat) {
  process.stderr.write('usage: npm run watch -- --url http://localhost:3000 --token <token> --chat <chatId>\n');
  process.exit(2);
}

const line = (m: MeterSnapshot) =>
  `${m.serverTime}  ${m.state.padEnd(7)} seq=${m.seq} duration=${m.durationSeconds}s free=${m.freeSecondsUsed}s ` +
  `(left ${m.freeSecondsRemaining}/${m.freeSecondsAllocation}) credits=${m.creditsUsed} balance=${m.balance} affordable=${m.secondsAffordable ?? '∞'}s`;

const client = connect({ url: values.url, token: values.token });
client.on('state', (state) => console.log(`connection   ${state}`));
client.on('balanceLow', (b) => console.log(`balance:low  balance=${b.balance} affordable=${b.secondsAffordable}s`));
client.on('balance', (b) => console.log(`balance      balance=${b.balance}`));
process.on('SIGINT', () => client.close());

try {
  const session = await client.joinChat(values.chat);
  console.log(`joined ${session.chatId} (record ${session.meter.recordId}); chat is ${session.chat.status}`);
  console.log(line(session.meter));
  session.on('meter', (m) => console.log(line(m)));
  session.on('ended', ({ reason, meter }) => {
    console.log(`chat:ended   reason=${reason}`);
    console.log(line(meter));
    client.close();
  });
} catch (err) {
  process.stderr.write(`chat:join refused: ${err instanceof ChatmeterError ? err.code : ''} ${(err as Error).message}\n`);
  client.close();
  process.exitCode = 1;
}
