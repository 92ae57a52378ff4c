// Debugger: a source's events as they arrive, with the call reconstructed,
// the raw JSON, and what became of the event at each destination.
import { html } from 'htm/preact';
import { useEffect, useMemo, useRef, useState } from 'preact/hooks';
import { get, stream } from './api.js';
import { ago, timestamp } from './format.js';
import { call, title, who } from './pretty.js';
import { Unreachable } from './nodes.js';
import { setParams } from './router.js';

// keep matches the server's debugger.Size: the last 500 events a source.
const keep = 500;

export function Debugger({ params }) {
  const [sources, setSources] = useState(null);
  const [error, setError] = useState(null);
  useEffect(() => {
    const ctl = new AbortController();
    get('/sources', { signal: ctl.signal }).then(setSources, (e) => ctl.signal.aborted || setError(e));
    return () => ctl.abort();
  }, []);
  const source = params.source || sources?.[0]?.name;

  return html`<main class="page debugger">
    <div class="page-head">
      <h1>Debugger</h1>
      ${sources && html`<label class="inline">Source
        <select data-testid="source" value=${source} onChange=${(e) => setParams({ source: e.target.value })}>
          ${sources.map((s) => html`<option value=${s.name}>${s.name}</option>`)}
        </select>
      </label>`}
    </div>
    ${error && html`<p class="error" role="alert">${String(error.message || error)}</p>`}
    ${sources && sources.length === 0 && html`<p class="empty">No sources are configured.</p>`}
    ${source && html`<${Live} key=${source} source=${source} />`}
  </main>`;
}

// byNewest orders events newest first: by the time received, since in a
// cluster each node numbers (seq) the events it took in on its own.
const byNewest = (a, b) =>
  Date.parse(b.received_at) - Date.parse(a.received_at) || (b.node || '').localeCompare(a.node || '') || b.seq - a.seq;

function Live({ source }) {
  // events holds what is shown; held, what arrived while paused. Both
  // are keyed by messageId: an outcome update replaces the event it
  // belongs to.
  const events = useRef(new Map());
  const held = useRef(new Map());
  const paused = useRef(false);
  const [, setTick] = useState(0);
  const [isPaused, setPaused] = useState(false);
  const [conn, setConn] = useState('connecting');
  const [search, setSearch] = useState('');
  const [selected, setSelected] = useState(null);
  const [view, setView] = useState('pretty');
  // nodes, in a cluster, are the nodes the stream follows.
  const [nodes, setNodes] = useState(null);

  const redraw = () => setTick((n) => n + 1);
  const put = (m, ev) => {
    m.set(ev.message_id, ev);
    if (m.size > keep) {
      const oldest = [...m.values()].sort(byNewest).slice(keep);
      for (const o of oldest) m.delete(o.message_id);
    }
  };

  useEffect(() => {
    const ctl = new AbortController();
    const path = `/sources/${encodeURIComponent(source)}`;
    let loaded = false;
    // The stream is opened first and the kept events read once it is
    // open, so that no event falls between the two; an event seen in both
    // keeps its streamed, newer version.
    stream(path + '/events/stream', {
      signal: ctl.signal,
      onState: async (s) => {
        setConn(s);
        if (s !== 'open' || loaded) return;
        loaded = true;
        try {
          const r = await get(path + '/events', { signal: ctl.signal });
          for (const ev of r.events) if (!events.current.has(ev.message_id)) put(events.current, ev);
          redraw();
        } catch {
          // the stream still shows new events
        }
      },
      onMessage: (kind, data) => {
        if (kind === 'nodes') {
          setNodes(JSON.parse(data));
          return;
        }
        if (kind !== 'event' && kind !== 'outcome') return;
        const ev = JSON.parse(data);
        // While paused nothing shown changes, outcomes included.
        put(paused.current ? held.current : events.current, ev);
        redraw();
      },
    });
    return () => ctl.abort();
  }, [source]);

  function toggle(p) {
    paused.current = p;
    setPaused(p);
    if (!p) {
      for (const ev of held.current.values()) put(events.current, ev);
      held.current.clear();
      redraw();
    }
  }

  const all = [...events.current.values()].sort(byNewest);
  const q = search.trim().toLowerCase();
  const shown = q ? all.filter((ev) => matches(ev, q)) : all;
  const current = selected && events.current.get(selected);
  const newHeld = [...held.current.values()].filter((ev) => !events.current.has(ev.message_id)).length;

  return html`<div class="live">
    <${Unreachable} nodes=${nodes} />
    <div class="toolbar">
      <div class="segmented" role="group" aria-label="Live or paused">
        <button data-testid="live" aria-pressed=${!isPaused} onClick=${() => toggle(false)}>Live</button>
        <button data-testid="pause" aria-pressed=${isPaused} onClick=${() => toggle(true)}>Pause</button>
      </div>
      <input type="search" placeholder="Search events" data-testid="search" value=${search}
        onInput=${(e) => setSearch(e.target.value)} />
      <span class=${'conn ' + conn} data-testid="conn">${connLabel(conn, isPaused, newHeld)}</span>
    </div>
    <div class="split">
      <ul class="events" data-testid="events">
        ${shown.length === 0 && html`<li key="empty" class="empty">${q ? 'No event matches.' : 'Waiting for events…'}</li>`}
        ${shown.map((ev) => html`<li key=${ev.message_id} data-testid="event" data-message-id=${ev.message_id}
            class=${ev.message_id === selected ? 'active' : ''} onClick=${() => setSelected(ev.message_id)}>
          <span class="type">${ev.type}</span>
          <span class="name">${title(ev.payload || {})}</span>
          <${Dots} outcomes=${ev.destinations} />
          <time title=${timestamp(ev.received_at)}>${timestamp(ev.received_at)}</time>
        </li>`)}
      </ul>
      <div class="detail">
        ${current ? html`<${Detail} ev=${current} view=${view} setView=${setView} />` : html`<p class="empty">Select an event to see it.</p>`}
      </div>
    </div>
  </div>`;
}

function connLabel(conn, paused, held) {
  if (paused) return held ? `Paused · ${held} new event${held === 1 ? '' : 's'} held` : 'Paused';
  return { open: 'Live', connecting: 'Connecting…', retrying: 'Reconnecting…', closed: 'Disconnected' }[conn] || conn;
}

function matches(ev, q) {
  return (
    ev.type.includes(q) ||
    ev.message_id.toLowerCase().includes(q) ||
    JSON.stringify(ev.payload).toLowerCase().includes(q)
  );
}

function Dots({ outcomes }) {
  return html`<span class="dots">${outcomes.map((o) => html`<i class=${'dot ' + o.status} title=${`${o.destination}: ${o.status}`}></i>`)}</span>`;
}

function Detail({ ev, view, setView }) {
  const p = ev.payload || {};
  const user = who(p);
  const text = useMemo(() => (view === 'pretty' ? call(p) : JSON.stringify(p, null, 2)), [ev, view]);
  return html`<div data-testid="detail">
    <div class="detail-head">
      <h2>${title(p)}</h2>
      <span class="muted">${ev.type} · received ${timestamp(ev.received_at)}${ev.node ? ` by ${ev.node}` : ''}${user ? ` · ${user.label} ${user.value}` : ''}</span>
    </div>
    <div class="tabs" role="tablist">
      <button role="tab" data-testid="view-pretty" aria-selected=${view === 'pretty'} onClick=${() => setView('pretty')}>Pretty</button>
      <button role="tab" data-testid="view-raw" aria-selected=${view === 'raw'} onClick=${() => setView('raw')}>Raw</button>
    </div>
    <pre class="code" data-testid="code">${text}</pre>
    <h3>Destinations</h3>
    ${ev.destinations.length === 0
      ? html`<p class="empty">The source is connected to no destination.</p>`
      : html`<table class="grid" data-testid="outcomes">
      <thead><tr><th>Destination</th><th>Outcome</th><th class="num">Attempts</th><th>Reason</th><th>When</th></tr></thead>
      <tbody>
        ${ev.destinations.map((o) => html`<tr data-destination=${o.destination}>
          <td>${o.destination}</td>
          <td><span class=${'badge ' + o.status} data-field="status">${o.status}</span></td>
          <td class="num">${o.attempts || ''}</td>
          <td class="reason">${o.reason || ''}</td>
          <td title=${timestamp(o.at)}>${o.at ? ago(o.at) : ''}</td>
        </tr>`)}
      </tbody>
    </table>`}
  </div>`;
}
