// Storage: the disk space state of GET /api/v1/storage. The shell polls
// it and shows a banner on every page while ingest refuses events; the
// Destinations page shows the free space of each directory.
import { html } from 'htm/preact';
import { get } from './api.js';
import { bytes, ago, timestamp } from './format.js';
import { usePoll } from './poll.js';

// useStorage polls the storage state; data stays null on a server
// without the route (404), which then shows neither banner nor panel.
// It stops while the page asks for the token (locked).
export function useStorage(session, locked) {
  return usePoll((signal) => (locked ? null : get('/storage', { signal })), [session, locked], 5000);
}

// StorageBanner warns that the tracking API refuses events (503): a
// directory is short of space, or a write met a full disk (degraded).
export function StorageBanner({ s }) {
  if (!s || (s.accepting && !s.degraded)) return null;
  const short = (s.dirs || []).filter((d) => d.free_bytes >= 0 && d.free_bytes < s.min_free_bytes);
  return html`<div class="banner" role="alert" data-testid="storage-banner">
    <strong>${s.accepting ? 'Storage degraded' : 'Ingest is refusing events'}</strong>
    ${!s.accepting && ' (the tracking API answers 503)'}${s.reason ? ': ' + s.reason : ''}.
    ${short.length > 0 && html` Short of the ${bytes(s.min_free_bytes)} reserve: ${short.map((d, i) => `${i ? ', ' : ''}${d.name} ${bytes(d.free_bytes)} free`)}.`}
    ${s.degraded && ' A write met a full disk; the ballast is released until there is room again.'}
    <span class="muted" title=${timestamp(s.since)}> Since ${ago(s.since)}.</span>
  </div>`;
}

// StoragePanel lists the free space of each watched directory.
export function StoragePanel({ s }) {
  if (!s) return null;
  const state = !s.accepting ? ['failed', 'refusing events'] : s.degraded ? ['retrying', 'degraded'] : ['delivered', 'accepting events'];
  return html`<section class="card storage" data-testid="storage">
    <div class="dest-head">
      <h2>Storage</h2>
      <span class=${'badge ' + state[0]} data-field="accepting">${state[1]}</span>
    </div>
    <table class="grid">
      <thead><tr><th>Directory</th><th>Path</th><th class="num">Free</th></tr></thead>
      <tbody>${(s.dirs || []).map((d) => html`<tr data-testid="storage-dir" data-name=${d.name}>
        <td>${d.name}</td><td><code>${d.path}</code></td>
        <td class=${'num' + (d.free_bytes >= 0 && d.free_bytes < s.min_free_bytes ? ' bad' : '')} data-field="free"
          data-bytes=${d.free_bytes}>${d.free_bytes < 0 ? 'unknown' : bytes(d.free_bytes)}</td>
      </tr>`)}</tbody>
    </table>
    <p class="muted" data-field="reserve">
      Events are refused below <span data-field="min_free" data-bytes=${s.min_free_bytes}>${bytes(s.min_free_bytes)}</span>${' '}
      free (storage.min_free); ballast held: ${bytes(s.ballast_bytes)}${s.disk_full ? `; writes that met a full disk: ${s.disk_full}` : ''}.
    </p>
  </section>`;
}
