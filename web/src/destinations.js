// Destinations: each configured destination, its settings (secrets
// redacted by the server) and the live state of its queues.
import { html } from 'htm/preact';
import { get } from './api.js';
import { count, duration, timestamp, until } from './format.js';
import { Status, usePoll } from './poll.js';

export function Destinations() {
  const poll = usePoll((signal) => get('/destinations', { signal }), [], 2000);
  const list = poll.data;
  return html`<main class="page destinations">
    <div class="page-head">
      <h1>Destinations</h1>
      <${Status} poll=${poll} />
    </div>
    ${list && list.length === 0 && html`<p class="empty">No destinations are configured.</p>`}
    ${list && list.map((d) => html`<${Destination} d=${d} />`)}
  </main>`;
}

function Destination({ d }) {
  const st = d.state;
  const paused = st?.queues.some((q) => q.paused_until && Date.parse(q.paused_until) > Date.now());
  return html`<section class="card destination" data-testid="destination" data-name=${d.name}>
    <div class="dest-head">
      <h2>${d.name}</h2>
      <span class="badge type">${d.type}</span>
      ${st
        ? html`<span class=${'badge ' + (st.circuit_open ? 'failed' : 'delivered')} data-field="circuit">
            circuit ${st.circuit_open ? 'open' : 'closed'}</span>`
        : html`<span class="badge pending">no scheduler state</span>`}
      ${paused && html`<span class="badge retrying" data-field="paused">rate limited</span>`}
    </div>
    <div class="dest-body">
      <dl class="facts">
        <dt>Sources</dt><dd data-field="sources">${d.sources.join(', ') || '–'}</dd>
        <dt>In flight</dt><dd>${st ? `${st.in_flight} of ${st.concurrency}` : '–'}</dd>
        <dt>Rate limit</dt><dd>${d.delivery.rate_limit ? `${d.delivery.rate_limit}/s` : 'none'}</dd>
        <dt>Retry window</dt><dd>${d.delivery.retry_window}</dd>
        <dt>Timeout</dt><dd>${d.delivery.timeout}</dd>
        ${st?.circuit_open && st.probe_at && html`<dt>Next probe</dt><dd>${until(st.probe_at)}</dd>`}
      </dl>
      <div class="settings">
        <h3>Settings</h3>
        <${Settings} settings=${d.settings} />
      </div>
    </div>
    <h3>Queues</h3>
    ${!st || st.queues.length === 0
      ? html`<p class="empty">No queue has work.</p>`
      : html`<table class="grid" data-testid="queues">
      <thead><tr>
        <th>Source</th><th class="num" title="Jobs not ended yet: loaded, in flight, on disk or waiting for a retry">Depth</th>
        <th class="num" title="Loaded in memory, waiting to be sent">Loaded</th><th class="num">Oldest job</th>
        <th class="num">Pending retry</th><th class="num">In flight</th>
        <th class="num">Concurrency limit</th><th>State</th><th class="num">429s</th>
      </tr></thead>
      <tbody>${st.queues.map((q) => html`<${Queue} q=${q} />`)}</tbody>
    </table>`}
  </section>`;
}

function Queue({ q }) {
  const now = Date.now();
  const pausedUntil = q.paused_until && Date.parse(q.paused_until) > now ? q.paused_until : null;
  let state = html`<span class="badge delivered">sending</span>`;
  if (pausedUntil) {
    state = html`<span class="badge retrying" data-field="state" title=${'until ' + timestamp(pausedUntil)}>paused (429) · resumes ${until(pausedUntil)}</span>`;
  } else if (q.retry_next) {
    state = html`<span class="badge pending" data-field="state" title=${timestamp(q.retry_next)}>next retry ${until(q.retry_next)}</span>`;
  } else if (!q.buffered && !q.in_flight && !q.backlog) {
    state = html`<span class="badge pending" data-field="state">idle</span>`;
  }
  return html`<tr data-testid="queue" data-source=${q.source} data-paused=${pausedUntil ? 'true' : 'false'}>
    <td>${q.source}</td>
    <td class="num" data-field="depth">${count(q.depth)}</td>
    <td class="num" data-field="buffered">${count(q.buffered)}${q.backlog ? ' + more on disk' : ''}</td>
    <td class="num" data-field="oldest">${q.oldest_age_seconds ? duration(q.oldest_age_seconds) : '–'}</td>
    <td class="num" data-field="pending_retry">${count(q.pending_retry)}</td>
    <td class="num">${count(q.in_flight)}</td>
    <td class="num">${q.limit ? Math.round(q.limit * 10) / 10 : '–'}</td>
    <td>${state}</td>
    <td class="num">${count(q.throttled)}</td>
  </tr>`;
}

function Settings({ settings }) {
  const entries = Object.entries(settings || {});
  if (entries.length === 0) return html`<p class="empty">None.</p>`;
  return html`<dl class="facts" data-testid="settings">
    ${entries.map(([k, v]) => html`<dt>${k}</dt><dd data-setting=${k}>${show(v)}</dd>`)}
  </dl>`;
}

function show(v) {
  if (v === null || v === undefined) return '–';
  if (typeof v === 'object') {
    return html`<dl class="facts nested">${Object.entries(v).map(([k, x]) => html`<dt>${k}</dt><dd>${show(x)}</dd>`)}</dl>`;
  }
  return String(v);
}
