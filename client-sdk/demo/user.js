// A user's tab on the SDK: the live meter, a countdown between pushes, warnings, the end.
import { connect } from '/sdk/chatmeter.js';
import { $, fmtSeconds, showConnection, params } from './common.js';

const REASONS = {
  ended_by_user: 'you ended it',
  ended_by_advisor: 'the advisor ended it',
  ended_by_platform: 'the platform ended it',
  out_of_credits: 'your balance ran out',
  abandoned: 'you were away too long',
};

const client = connect({ url: location.origin, token: params.get('token') });
showConnection(client);
client.on('balanceLow', (b) => {
  $('low').hidden = false;
  $('low').textContent = `Low balance: ${fmtSeconds(b.secondsAffordable)} left. Top up to keep chatting.`;
});
client.on('balance', (b) => {
  $('balance').textContent = b.balance;
  $('low').hidden = true; // a top-up: a new warning comes if it runs low again
});

function show(m) {
  $('advisor').textContent = m.advisorId;
  $('state').textContent = m.state;
  $('duration').textContent = fmtSeconds(m.durationSeconds);
  $('free').textContent = `${fmtSeconds(m.freeSecondsRemaining)} of ${fmtSeconds(m.freeSecondsAllocation)}`;
  $('credits').textContent = m.creditsUsed;
  $('balance').textContent = m.balance;
}

function ended({ reason }) {
  $('ended').hidden = false;
  $('ended').textContent = `The chat ended: ${REASONS[reason] ?? reason}.`;
  $('end').disabled = true;
}

try {
  const session = await client.joinChat(params.get('chat'));
  show(session.meter);
  session.on('meter', show);
  session.on('ended', ended);
  if (session.meter.state === 'ended') ended({ reason: session.chat.endReason });
  // between pushes the countdown ticks on the server's clock, four times a second
  const tick = () => ($('countdown').textContent = fmtSeconds(session.secondsLeft()));
  tick();
  setInterval(tick, 250);
  $('end').addEventListener('click', () => session.end().catch((err) => alert(err.message)));
} catch (err) {
  $('state').textContent = `${err.code}: ${err.message}`;
}
