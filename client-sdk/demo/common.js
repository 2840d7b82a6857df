// Shared by the demo pages: the token and chats come from the page's query string.
const params = new URLSearchParams(location.search);
const token = params.get('token');
const fmtSeconds = (s) => (s === null || s === undefined ? '∞' : `${Math.floor(s / 60)}:${String(s % 60).padStart(2, '0')}`);
const $ = (id) => document.getElementById(id);
function connect() {
  // websocket only: no sticky sessions needed behind several nodes
  return io({ auth: { token }, transports: ['websocket'] });
}
