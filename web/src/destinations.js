// Destinations: each configured destination, its settings (secrets
// redacted by the server) and the live state of its queues.
import { html } from 'htm/preact';
import { getWithNodes } from './api.js';
import { clock, count, duration, timestamp, until } from './format.js';
import { Status, usePoll } from './poll.js';
import { NodeCount, Unreachable } from './nodes.js';
import { StoragePanel } from './storage.js';

export function Destinations({ storage }) {
  const poll = usePoll((signal) => getWithNodes('/destinations', { signal }), [], 2000);
  const list = poll.data?.body;
  const nodes = poll.data?.nodes;
  return html`<main class="page destinations">
    <div class="page-head">
      <h1>Destinations</h1>
      <${NodeCount} nodes=${nodes} />
      <${Status} poll=${poll} />
    </div>
    <${Unreachable} nodes=${nodes} />
    ${list && list.length === 0 && html`<p class="empty">No destinations are configured.</p>`}
    ${list && list.map((d) => html`<${Destination} d=${d} />`)}
    <${StoragePanel} s=${storage} />
  </main>`;
}

function Destination({ d }) {
  const st = d.state;
  const reasons = new Set((st?.queues || []).filter((q) => pausedUntil(q)).map((q) => q.pause_reason || ''));
  return html`<section class="card destination" data-testid="destination" data-name=${d.name}>
    <div class="dest-head">
      <h2>${d.name}</h2>
      <span class="badge type">${d.type}</span>
      ${st
        ? html`<span class=${'badge ' + (st.circuit_open ? 'failed' : 'delivered')} data-field="circuit">
            circuit ${st.circuit_open ? 'open' : 'closed'}</span>`
        : html`<span class="badge pending">no scheduler state</span>`}
      ${st?.store_wait_since && html`<span class="badge failed" data-field="store_wait"
        title=${'The scheduler has waited on the job store since ' + timestamp(st.store_wait_since) + ': it sends nothing more until the database answers'}>
        waiting on the database for ${duration((Date.now() - new Date(st.store_wait_since).getTime()) / 1000)}</span>`}
      ${st?.stale && html`<span class="badge pending" data-field="stale"
        title="The scheduler did not answer in time: the figures below are its last snapshot, not its state now">
        ${st.taken_at ? `state as of ${timestamp(st.taken_at)}` : 'state unknown'}: the scheduler is not answering</span>`}
      ${reasons.size > 0 && html`<span class="badge retrying" data-field="paused">${[...reasons].map((r) => headline[r] || 'paused').join(', ')}</span>`}
    </div>
    <div class="dest-body">
      <dl class="facts">
        <dt>Sources</dt><dd data-field="sources">${d.sources.join(', ') || '–'}</dd>
        <dt>In flight</dt><dd>${st ? `${st.in_flight} of ${st.concurrency}` : '–'}</dd>
        <dt>Rate limit</dt><dd>${d.delivery.rate_limit ? `${d.delivery.rate_limit}/s` : 'none'}</dd>
        <dt>Retry window</dt><dd>${d.delivery.retry_window}</dd>
        <dt>Timeout</dt><dd>${d.delivery.timeout}</dd>
        ${st?.circuit_open && st.probe_at && html`<dt>Next probe</dt><dd>${until(st.probe_at)}</dd>`}
        ${st?.nodes?.length > 0 && html`<dt>Delivered by</dt><dd data-field="nodes">${st.nodes
          .map((n) => `${n.node}${n.owner ? '' : ' (handing over)'}: ${n.in_flight} in flight of ${n.concurrency}${n.circuit_open ? ', circuit open' : ''}`)
          .join('; ')}</dd>`}
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

// headline names a pause reason in the destination's heading.
const headline = { quota: 'quota spent', 'retry-after': 'rate limited', throttled: 'rate limited', 'holds-full': 'too many users held' };

function pausedUntil(q) {
  return q.paused_until && Date.parse(q.paused_until) > Date.now() ? q.paused_until : null;
}

// pauseLabel says why a queue is paused and until when: a spent quota
// until its reset (midnight UTC unless the destination said), a wait the
// destination asked for (Retry-After), a 429 without one (backoff), or
// too many users held at once.
function pauseLabel(reason, t) {
  switch (reason) {
    case 'quota': {
      const d = new Date(t);
      const midnight = d.getUTCHours() === 0 && d.getUTCMinutes() === 0 && d.getUTCSeconds() === 0;
      return `paused until ${clock(t, true)} (${midnight ? 'daily quota' : 'quota spent'})`;
    }
    case 'retry-after':
      return `waiting for Retry-After until ${clock(t)}`;
    case 'throttled':
      return `throttled (429) until ${clock(t)}`;
    case 'holds-full':
      return `too many users held: paused until ${clock(t)}`;
    default:
      return `paused until ${clock(t)}`;
  }
}

function Queue({ q }) {
  const paused = pausedUntil(q);
  let state = html`<span class="badge delivered">sending</span>`;
  if (paused) {
    state = html`<span class="badge retrying" data-field="state" data-reason=${q.pause_reason || ''}
      title=${'until ' + timestamp(paused)}>${pauseLabel(q.pause_reason, paused)} · resumes ${until(paused)}</span>`;
  } else if (q.retry_next) {
    state = html`<span class="badge pending" data-field="state" title=${timestamp(q.retry_next)}>next retry ${until(q.retry_next)}</span>`;
  } else if (!q.buffered && !q.in_flight && !q.backlog && !q.held) {
    state = html`<span class="badge pending" data-field="state">idle</span>`;
  }
  const holds = q.holds > 0 &&
    html`<span class="badge retrying" data-field="holds" title="Jobs waiting behind users the destination throttles one by one; the rest of the queue goes on">
      per-user holds: ${count(q.holds)} user${q.holds === 1 ? '' : 's'}, ${count(q.held)} job${q.held === 1 ? '' : 's'}</span>`;
  return html`<tr data-testid="queue" data-source=${q.source} data-paused=${paused ? 'true' : 'false'}>
    <td>${q.source}${q.nodes?.length > 0 && html` <span class="muted" data-field="queue-nodes">on ${q.nodes.join(', ')}</span>`}</td>
    <td class="num" data-field="depth">${count(q.depth)}</td>
    <td class="num" data-field="buffered">${count(q.buffered)}${q.backlog ? ' + more on disk' : ''}</td>
    <td class="num" data-field="oldest">${q.oldest_age_seconds ? duration(q.oldest_age_seconds) : '–'}</td>
    <td class="num" data-field="pending_retry">${count(q.pending_retry)}</td>
    <td class="num">${count(q.in_flight)}</td>
    <td class="num">${q.limit ? Math.round(q.limit * 10) / 10 : '–'}</td>
    <td><div class="queue-state">${state}${holds}</div></td>
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
