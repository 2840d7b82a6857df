const chatId = params.get('chat');
const socket = connect();
let heartbeat;
let lastSeq = -1;

function show(m) {
  if (m.chatId !== chatId || m.seq < lastSeq) return;
  lastSeq = m.seq;
  $('advisor').textContent = m.advisorId;
  $('state').textContent = m.state;
  $('duration').textContent = fmtSeconds(m.durationSeconds);
  $('free').textContent = `${fmtSeconds(m.freeSecondsRemaining)} of ${fmtSeconds(m.freeSecondsAllocation)}`;
  $('credits').textContent = m.creditsUsed;
  $('balance').textContent = m.balance;
  $('affordable').textContent = fmtSeconds(m.secondsAffordable);
}

socket.on('connect', () => {
  socket.emit('chat:join', { chatId }, (ack) => {
    if (!ack.ok) {
      $('state').textContent = `${ack.error.code}: ${ack.error.message}`;
      return;
    }
    show(ack.meter);
    clearInterval(heartbeat);
    heartbeat = setInterval(() => socket.emit('heartbeat', { chatId }), ack.heartbeatIntervalMs / 2);
  });
});
socket.on('connect_error', (err) => ($('state').textContent = `not connected: ${err.message}`));
socket.on('disconnect', () => ($('state').textContent = 'disconnected'));
socket.on('meter', show);
socket.on('chat:ended', (e) => {
  if (e.chatId !== chatId) return;
  show(e.meter);
  clearInterval(heartbeat);
  $('notice').hidden = false;
  $('notice').textContent = `The chat ended (${e.reason.replaceAll('_', ' ')}).`;
});
socket.on('balance:low', (b) => {
  $('notice').hidden = false;
  $('notice').textContent = `Low balance: ${fmtSeconds(b.secondsAffordable)} left. Top up to keep chatting.`;
});
socket.on('balance', (b) => ($('balance').textContent = b.balance));
$('end').addEventListener('click', () => socket.emit('chat:end', { chatId }, () => {}));
