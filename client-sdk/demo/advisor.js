// An advisor's dashboard on the SDK: every pending and active chat, live, with its commands.
import { connect } from '/sdk/chatmeter.js';
import { $, fmtSeconds, showConnection, params } from './common.js';

const client = connect({ url: location.origin, token: params.get('token') });
showConnection(client);
$('me').textContent = client.principal.id ?? '…';
const rows = new Map();
const sessions = new Map();

/** A command joins the chat first (once): commands belong to sessions. */
async function command(chatId, name) {
  let session = sessions.get(chatId);
  if (!session) sessions.set(chatId, (session = client.joinChat(chatId)));
  try {
    await (await session)[name]();
  } catch (err) {
    sessions.delete(chatId);
    alert(`${name}: ${err.message}`);
  }
}

function row(chatId) {
  let tr = rows.get(chatId);
  if (tr) return tr;
  tr = document.createElement('tr');
  tr.dataset.chat = chatId;
  for (const cls of ['id', 'user', 'state', 'duration', 'free', 'credits', 'balance', 'actions']) {
    tr.append(Object.assign(document.createElement('td'), { className: cls }));
  }
  for (const name of ['start', 'pause', 'resume', 'end']) {
    const b = Object.assign(document.createElement('button'), { textContent: name, className: name });
    b.addEventListener('click', () => command(chatId, name));
    tr.querySelector('.actions').append(b);
  }
  tr.querySelector('.id').textContent = chatId;
  $('chats').append(tr);
  rows.set(chatId, tr);
  return tr;
}

function show(chatId, entry) {
  if (!entry) {
    rows.get(chatId)?.remove();
    rows.delete(chatId);
    sessions.delete(chatId);
  } else {
    const tr = row(chatId);
    const m = entry.meter;
    tr.querySelector('.user').textContent = entry.chat.userId;
    tr.querySelector('.state').textContent = m?.state ?? entry.chat.status;
    tr.querySelector('.duration').textContent = m ? fmtSeconds(m.durationSeconds) : '–';
    tr.querySelector('.free').textContent = m ? fmtSeconds(m.freeSecondsRemaining) : '–';
    tr.querySelector('.credits').textContent = m?.creditsUsed ?? '–';
    tr.querySelector('.balance').textContent = m?.balance ?? '–';
  }
  $('empty').hidden = rows.size > 0;
}

try {
  const dashboard = await client.watchDashboard();
  for (const [chatId, entry] of dashboard.chats) show(chatId, entry);
  dashboard.on('change', show);
} catch (err) {
  $('conn').textContent = `${err.code}: ${err.message}`;
}
