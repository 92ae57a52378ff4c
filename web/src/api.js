// The admin API client: JSON requests and the debugger's event stream,
// both with the admin token as a bearer token when the user gave one.
//
// The token lives in sessionStorage: it survives a reload but not the
// closing of the tab, and it is never written to the URL.

const TOKEN_KEY = 'fanout.admin_token';

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || '';
}

export function setToken(t) {
  if (t) sessionStorage.setItem(TOKEN_KEY, t);
  else sessionStorage.removeItem(TOKEN_KEY);
}

// Unauthorized is thrown when the API answers 401: a token is configured
// and the page has none, or a wrong one.
export class Unauthorized extends Error {
  constructor() {
    super('the admin API wants a token');
  }
}

const authListeners = new Set();

// onUnauthorized calls fn whenever a request is refused for want of a
// token; it returns a function that stops it.
export function onUnauthorized(fn) {
  authListeners.add(fn);
  return () => authListeners.delete(fn);
}

function headers(extra) {
  const h = { ...extra };
  const t = token();
  if (t) h.Authorization = 'Bearer ' + t;
  return h;
}

async function refused(res) {
  if (res.status === 401) {
    for (const fn of authListeners) fn();
    throw new Unauthorized();
  }
  let msg = res.statusText;
  try {
    msg = (await res.json()).error || msg;
  } catch {
    // not JSON: keep the status text
  }
  throw new Error(`${res.status} ${msg}`);
}

// get fetches /api/v1 + path and returns the decoded JSON.
export async function get(path, { signal } = {}) {
  const res = await fetch('/api/v1' + path, { headers: headers({ Accept: 'application/json' }), signal });
  if (!res.ok) await refused(res);
  return res.json();
}

// getWithNodes is get for the routes that answer an array in a cluster:
// it returns { body, nodes }, nodes from the Fanout-Nodes header (which of
// the cluster's nodes answered; null outside a cluster).
export async function getWithNodes(path, { signal } = {}) {
  const res = await fetch('/api/v1' + path, { headers: headers({ Accept: 'application/json' }), signal });
  if (!res.ok) await refused(res);
  const h = res.headers.get('Fanout-Nodes');
  let nodes = null;
  try {
    nodes = h ? JSON.parse(h) : null;
  } catch {
    // an unreadable header only loses the node list
  }
  return { body: await res.json(), nodes };
}

// query builds a query string from the defined, non-empty values of params.
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== '') q.set(k, v);
  }
  const s = q.toString();
  return s ? '?' + s : '';
}

// stream follows a server-sent events route. EventSource cannot send an
// Authorization header, so the stream is read with fetch and parsed here
// (https://html.spec.whatwg.org/multipage/server-sent-events.html). It
// reconnects after a second when the connection drops, until signal
// aborts. onMessage gets (eventName, data); onState gets 'open', 'retrying'
// or 'closed'.
export async function stream(path, { signal, onMessage, onState = () => {} }) {
  while (!signal.aborted) {
    try {
      const res = await fetch('/api/v1' + path, {
        headers: headers({ Accept: 'text/event-stream' }),
        signal,
        cache: 'no-store',
      });
      if (!res.ok) await refused(res);
      onState('open');
      await readEvents(res.body, onMessage);
    } catch (err) {
      if (signal.aborted || err instanceof Unauthorized) break;
    }
    if (signal.aborted) break;
    onState('retrying');
    await new Promise((r) => setTimeout(r, 1000));
  }
  onState('closed');
}

async function readEvents(body, onMessage) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  let event = 'message';
  let data = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value;
    let nl;
    while ((nl = buf.search(/\r\n|\r|\n/)) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + (buf.startsWith('\r\n', nl) ? 2 : 1));
      if (line === '') {
        if (data.length) onMessage(event, data.join('\n'));
        event = 'message';
        data = [];
        continue;
      }
      if (line.startsWith(':')) continue; // a comment: heartbeats
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      let val = colon < 0 ? '' : line.slice(colon + 1);
      if (val.startsWith(' ')) val = val.slice(1);
      if (field === 'event') event = val;
      else if (field === 'data') data.push(val);
    }
  }
}
