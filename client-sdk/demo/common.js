// Shared by the demo pages: the token and chat come from the page's query string.
export const params = new URLSearchParams(location.search);
export const $ = (id) => document.getElementById(id);
export const fmtSeconds = (s) => (s === null || s === undefined ? '∞' : `${Math.floor(s / 60)}:${String(s % 60).padStart(2, '0')}`);

const CONNECTION = {
  connecting: 'connecting…',
  connected: 'live',
  reconnecting: 'reconnecting…',
  closed: 'closed',
  failed: 'not allowed: the token was refused',
};

/** Shows the client's connection state in #conn. */
export function showConnection(client) {
  const show = (state) => {
    $('conn').textContent = CONNECTION[state] ?? state;
    $('conn').dataset.state = state;
  };
  show(client.state);
  client.on('state', show);
}
