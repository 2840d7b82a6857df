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

function join() {
  socket.emit('chat:join', { chatId }, (ack) => {
    if (!ack.ok) {
      $('state').textContent = `${ack.error.code}: ${ack.error.message}`;
      // a refused join is retried while connected (rate limits, a node restarting)
      if (ack.error.code !== 'forbidden' && ack.error.code !== 'not_found') setTimeout(() => socket.connected && join(), 2000);
      return;
    }
    show(ack.meter);
    clearInterval(heartbeat);
    // volatile: a heartbeat that can't go out now is dropped, not queued for the reconnect
    heartbeat = setInterval(() => socket.volatile.emit('heartbeat', { chatId }), ack.heartbeatIntervalMs / 2);
  });
}

socket.on('connect', join);
socket.on('connect_error', (err) => ($('state').textContent = `not connected: ${err.message}`));
socket.on('disconnect', () => {
  clearInterval(heartbeat);
  $('state').textContent = 'disconnected';
});
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
