/**
 * Joins a chat with a client token and prints its live meter: what a browser tab
 * does, from a terminal. A user's token also sends heartbeats, so the meter runs.
 *
 * @example npm run watch -- --url http://localhost:3000 --token "$TOKEN" --chat c1
 */
import { parseArgs } from 'node:util';
import { io, type Socket } from 'socket.io-client';
import type { ClientToServerEvents, MeterSnapshot, ServerToClientEvents } from '../src/protocol.js';

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
const chatId = values.chat;
const socket: Socket<ServerToClientEvents, ClientToServerEvents> = io(values.url, { auth: { token: values.token }, transports: ['websocket'] });

const line = (m: MeterSnapshot) =>
  `${m.serverTime}  ${m.state.padEnd(7)} seq=${m.seq} duration=${m.durationSeconds}s free=${m.freeSecondsUsed}s ` +
  `(left ${m.freeSecondsRemaining}/${m.freeSecondsAllocation}) credits=${m.creditsUsed} balance=${m.balance} affordable=${m.secondsAffordable ?? '∞'}s`;

let heartbeat: NodeJS.Timeout | undefined;
socket.on('connect_error', (err) => {
  process.stderr.write(`connect_error: ${err.message}\n`);
  process.exit(1);
});
socket.on('connect', () => {
  socket.emit('chat:join', { chatId }, (ack) => {
    if (!ack.ok) {
      process.stderr.write(`chat:join refused: ${ack.error.code}: ${ack.error.message}\n`);
      process.exit(1);
    }
    console.log(`joined ${chatId} (record ${ack.meter.recordId}); chat is ${ack.chat.status}`);
    console.log(line(ack.meter));
    clearInterval(heartbeat);
    heartbeat = setInterval(() => socket.volatile.emit('heartbeat', { chatId }), Math.max(1000, ack.heartbeatIntervalMs / 2));
  });
});
socket.on('disconnect', () => clearInterval(heartbeat));
socket.on('meter', (m) => {
  if (m.chatId === chatId) console.log(line(m));
});
socket.on('balance:low', (b) => console.log(`balance:low  balance=${b.balance} affordable=${b.secondsAffordable}s`));
socket.on('balance', (b) => console.log(`balance      balance=${b.balance}`));
socket.on('chat:ended', (e) => {
  if (e.chatId !== chatId) return;
  console.log(`chat:ended   reason=${e.reason}`);
  console.log(line(e.meter));
  socket.close();
  process.exit(0);
});
process.on('SIGINT', () => {
  socket.close();
  process.exit(0);
});
