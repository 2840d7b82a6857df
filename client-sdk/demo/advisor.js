const socket = connect();
const rows = new Map();

function row(chatId) {
  let tr = rows.get(chatId);
  if (tr) return tr;
  tr = document.createElement('tr');
  tr.innerHTML = '<td class="id"></td><td class="user"></td><td class="state"></td><td class="duration"></td>' +
    '<td class="free"></td><td class="credits"></td><td class="balance"></td><td class="actions"></td>';
  for (const cmd of ['start', 'pause', 'resume', 'end']) {
    const b = document.createElement('button');
    b.textContent = cmd;
    b.addEventListener('click', () => socket.emit(`chat:${cmd}`, { chatId }, (ack) => ack.ok || alert(ack.error.message)));
    tr.querySelector('.actions').append(b);
  }
  tr.querySelector('.id').textContent = chatId;
  $('chats').append(tr);
  rows.set(chatId, tr);
  return tr;
}

function show(m) {
  const tr = row(m.chatId);
  if (Number(tr.dataset.seq ?? -1) > m.seq) return;
  tr.dataset.seq = m.seq;
  tr.querySelector('.user').textContent = m.userId;
  tr.querySelector('.state').textContent = m.state;
  tr.querySelector('.duration').textContent = fmtSeconds(m.durationSeconds);
  tr.querySelector('.free').textContent = fmtSeconds(m.freeSecondsRemaining);
  tr.querySelector('.credits').textContent = m.creditsUsed;
  tr.querySelector('.balance').textContent = m.balance;
}

socket.on('connect', () => {
  $('conn').textContent = 'live';
  // chats named in the URL show up at once, even before their first push
  for (const chatId of (params.get('chats') ?? '').split(',').filter(Boolean)) {
    socket.emit('chat:join', { chatId }, (ack) => ack.ok && show(ack.meter));
  }
});
socket.on('connect_error', (err) => ($('conn').textContent = `not connected: ${err.message}`));
socket.on('disconnect', () => ($('conn').textContent = 'disconnected'));
socket.on('meter', show);
socket.on('chat:ended', (e) => show(e.meter));
$('me').textContent = JSON.parse(atob(token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/'))).sub;
