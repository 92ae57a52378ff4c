// Overview: what became of each source's events at each destination over
// a time range, the trends, and the delivery issues with their samples.
import { html } from 'htm/preact';
import { useMemo, useState } from 'preact/hooks';
import { get, query } from './api.js';
import { Chart, stepped } from './chart.js';
import { ago, count, latency, prettyJSON, timestamp } from './format.js';
import { NodeCount, Unreachable } from './nodes.js';
import { Status, usePoll } from './poll.js';
import { setParams } from './router.js';

// Each range's step keeps a chart between 10 and 170 points.
const ranges = [
  { range: '10m', label: '10 minutes', step: '1m' },
  { range: '1h', label: '1 hour', step: '1m' },
  { range: '24h', label: '24 hours', step: '10m' },
  { range: '7d', label: '7 days', step: '1h' },
];

// The figures of the overview, in the order of the table, named as the
// admin API names them.
const figures = [
  { field: 'delivered_first_attempt', label: 'Delivered on first try', kind: 'good' },
  { field: 'delivered_after_retries', label: 'Delivered on retry', kind: 'good' },
  { field: 'failed', label: 'Failed', kind: 'bad' },
  { field: 'unsupported', label: 'Unsupported', kind: 'muted' },
  { field: 'pending_retry', label: 'Pending retry', kind: 'warn' },
  { field: 'archived', label: 'Archived', kind: 'bad' },
  {
    field: 'retried_duplicate_risk', label: 'Retried, duplicate risk', kind: 'warn',
    title: 'Retries after an ambiguous failure (a timeout or 5xx on a batch) to an API that does not deduplicate: ' +
      'the destination may have taken those events already and may count them twice. Counts attempts, not events.',
  },
];

export function Overview({ params }) {
  const r = ranges.find((x) => x.range === params.range) || ranges[1];
  const sel = { source: params.source || '', destination: params.destination || '' };
  const select = (s) => setParams({ range: params.range, ...s });

  const poll = usePoll(
    async (signal) => {
      const f = { range: r.range, ...sel };
      const [sources, all, selected, series, issues] = await Promise.all([
        get('/sources', { signal }),
        get('/overview' + query({ range: r.range }), { signal }),
        sel.source || sel.destination ? get('/overview' + query(f), { signal }) : null,
        get('/series' + query({ ...f, step: r.step }), { signal }),
        get('/issues' + query(f), { signal }),
      ]);
      return { sources, all, selected: selected || all, series, issues: issues.issues };
    },
    [r.range, sel.source, sel.destination],
    5000,
  );
  const d = poll.data;

  return html`<main class="page overview">
    <div class="page-head">
      <h1>Overview</h1>
      <div class="segmented" role="group" aria-label="Time range">
        ${ranges.map((x) => html`<button data-range=${x.range} aria-pressed=${x === r}
          onClick=${() => setParams({ ...params, range: x.range })}>${x.label}</button>`)}
      </div>
      ${d && html`<${NodeCount} nodes=${d.all.nodes} />`}
      <${Status} poll=${poll} />
    </div>
    ${d && html`
      <${Unreachable} nodes=${d.all.nodes} />
      <${Selection} sel=${sel} onClear=${() => select({})} />
      <${Figures} o=${d.selected} />
      <${Trends} series=${d.series} />
      <section class="card">
        <h2>Sources and destinations</h2>
        ${d.sources.length === 0 && html`<p class="empty">No sources are configured.</p>`}
        ${d.sources.map((s) => html`<${SourceTable} source=${s} pairs=${d.all.pairs} sel=${sel} select=${select} />`)}
      </section>
      <${Issues} issues=${d.issues} />
    `}
  </main>`;
}

function Selection({ sel, onClear }) {
  const label = sel.destination ? `${sel.source} → ${sel.destination}` : sel.source || 'All sources and destinations';
  return html`<p class="selection">
    Showing <strong data-testid="selection">${label}</strong>
    ${(sel.source || sel.destination) && html` · <button class="link" onClick=${onClear}>show all</button>`}
  </p>`;
}

function Figures({ o }) {
  return html`<section class="figures" data-testid="figures">
    <div class="group">
      <h3>Events delivered</h3>
      <div class="row">
        <${Figure} o=${o} f=${figures[0]} />
        <${Figure} o=${o} f=${figures[1]} />
      </div>
    </div>
    <div class="group">
      <h3>Events not delivered</h3>
      <div class="row">
        <${Figure} o=${o} f=${figures[2]} />
        <${Figure} o=${o} f=${figures[3]} />
        <${Figure} o=${o} f=${figures[5]} />
      </div>
    </div>
    <div class="group">
      <h3>In progress</h3>
      <div class="row"><${Figure} o=${o} f=${figures[4]} /></div>
    </div>
    <div class="group">
      <h3>Attempts</h3>
      <div class="row"><${Figure} o=${o} f=${figures[6]} /></div>
    </div>
    <div class="group">
      <h3>Latency</h3>
      <div class="row">
        <div class="figure"><b data-field="p95">${latency(o.latency.p95_ms, o.latency.count > 0)}</b><span>P95 latency</span></div>
      </div>
    </div>
  </section>`;
}

function Figure({ o, f }) {
  return html`<div class=${'figure ' + f.kind} title=${f.title}>
    <b data-field=${f.field}>${count(o[f.field])}</b><span>${f.label}</span>
  </div>`;
}

function Trends({ series }) {
  const data = useMemo(() => {
    const p = series.points;
    const xs = p.map((x) => Date.parse(x.at) / 1000);
    return {
      counts: [
        xs,
        p.map((x) => x.delivered_first_attempt),
        p.map((x) => x.delivered_after_retries),
        p.map((x) => x.failed + x.archived),
      ],
      latency: [xs, p.map((x) => (x.latency.count ? x.latency.p95_ms : null))],
    };
  }, [series]);
  const stepLabel = series.step_seconds >= 3600 ? `${series.step_seconds / 3600} h` : `${series.step_seconds / 60} min`;
  return html`<section class="card trends">
    <h2>Delivery trends <small>per ${stepLabel}, by when events were received</small></h2>
    <div class="charts">
      <${Chart} title="Event delivery" testid="chart-delivery" data=${data.counts}
        yFormat=${(v) => count(v)}
        series=${[
          { label: 'Delivered on first try', stroke: '#16a34a', fill: 'rgba(22,163,74,0.12)', paths: stepped, width: 2 },
          { label: 'Delivered on retry', stroke: '#0ea5e9', paths: stepped, width: 2 },
          { label: 'Failed or archived', stroke: '#dc2626', fill: 'rgba(220,38,38,0.10)', paths: stepped, width: 2 },
        ]} />
      <${Chart} title="P95 latency" testid="chart-latency" data=${data.latency}
        yFormat=${(v) => latency(v)} yScale=${logScale} ySplits=${latencySplits}
        series=${[{ label: 'P95 latency', stroke: '#7c3aed', width: 2, points: { show: true, size: 5 }, value: (u, v) => (v == null ? '–' : latency(v)) }]} />
    </div>
  </section>`;
}

// Latencies span milliseconds to hours (a retried event): a log scale
// keeps both readable.
const logScale = { distr: 3, log: 10 };
const latencySplits = [1, 10, 100, 1000, 10_000, 60_000, 600_000, 3_600_000, 36_000_000];

function SourceTable({ source, pairs, sel, select }) {
  const rows = source.destinations.map(
    (name) => pairs.find((p) => p.source === source.name && p.destination === name) || { source: source.name, destination: name, latency: { count: 0 } },
  );
  const active = (dest) => sel.source === source.name && (dest ? sel.destination === dest : !sel.destination);
  return html`<div class="source" data-testid="source" data-source=${source.name}>
    <h3>
      <button class=${'link' + (active('') ? ' active' : '')} onClick=${() => select({ source: source.name })}>${source.name}</button>
      <small>${source.destinations.length} destination${source.destinations.length === 1 ? '' : 's'}</small>
    </h3>
    ${rows.length === 0
      ? html`<p class="empty">Not connected to any destination.</p>`
      : html`<table class="grid">
      <thead><tr>
        <th>Destination</th>
        ${figures.map((f) => html`<th class=${'num' + (f.title ? ' hint' : '')} title=${f.title}>${f.label}</th>`)}
        <th class="num">P95 latency</th>
      </tr></thead>
      <tbody>
        ${rows.map((p) => html`<tr key=${p.destination} data-testid="pair" data-source=${p.source} data-destination=${p.destination}
            class=${'clickable' + (active(p.destination) ? ' active' : '')}
            onClick=${() => select({ source: p.source, destination: p.destination })}>
          <td>${p.destination}</td>
          ${figures.map((f) => html`<td class=${'num ' + (p[f.field] ? f.kind : '')} data-field=${f.field} title=${f.title}>${count(p[f.field])}</td>`)}
          <td class="num" data-field="p95">${latency(p.latency.p95_ms, p.latency.count > 0)}</td>
        </tr>`)}
      </tbody>
    </table>`}
  </div>`;
}

function Issues({ issues }) {
  const [open, setOpen] = useState(null);
  const key = (is) => `${is.source}/${is.destination}/${is.id}`;
  return html`<section class="card">
    <h2>Delivery issues <small>failed attempts grouped by reason; click one for its samples</small></h2>
    ${issues.length === 0
      ? html`<p class="empty" data-testid="no-issues">No delivery issues in this range.</p>`
      : html`<table class="grid issues">
      <thead><tr><th>Description</th><th>Destination</th><th class="num">Count</th><th>Last seen</th></tr></thead>
      <tbody>
        ${issues.map((is) => html`
          <tr key=${key(is)} class="clickable" data-testid="issue" data-issue=${key(is)} aria-expanded=${open === key(is)}
              onClick=${() => setOpen(open === key(is) ? null : key(is))}>
            <td><span class=${'badge ' + is.outcome}>${is.outcome}</span> ${is.reason}</td>
            <td>${is.source} → ${is.destination}</td>
            <td class="num" data-field="count">${count(is.count)}</td>
            <td title=${timestamp(is.last_seen)}>${ago(is.last_seen)}</td>
          </tr>
          ${open === key(is) && html`<tr class="expanded"><td colspan="4"><${Samples} issue=${is} /></td></tr>`}
        `)}
      </tbody>
    </table>`}
  </section>`;
}

function Samples({ issue }) {
  const [i, setI] = useState(0);
  const s = issue.samples[Math.min(i, issue.samples.length - 1)];
  if (!s) return html`<p class="empty">No samples were kept.</p>`;
  const headers = (h) =>
    Object.entries(h || {})
      .map(([k, vs]) => vs.map((v) => `${k}: ${v}`).join('\n'))
      .join('\n');
  return html`<div class="samples" data-testid="samples">
    <div class="sample-head">
      <span>Sample</span>
      ${issue.samples.map((_, k) => html`<button class=${'chip' + (k === i ? ' active' : '')} onClick=${() => setI(k)}>${k + 1}</button>`)}
      <span class="muted">${timestamp(s.at)} · attempt ${s.attempt} · messageId <code>${s.message_id}</code></span>
    </div>
    <p class="reason">${s.reason}</p>
    <div class="panes">
      <section data-testid="sample-event">
        <h4>Sent to fanout</h4>
        <pre>${prettyJSON(s.event)}</pre>
      </section>
      <section data-testid="sample-request">
        <h4>Request to ${issue.destination}</h4>
        ${s.request
          ? html`<pre>${`${s.request.method} ${s.request.url}\n${headers(s.request.header)}\n\n${prettyJSON(s.request.body)}`}</pre>`
          : html`<p class="empty">No request was sent.</p>`}
      </section>
      <section data-testid="sample-response">
        <h4>Response</h4>
        ${s.response
          ? html`<pre>${`HTTP ${s.response.status}\n${headers(s.response.header)}\n\n${prettyJSON(s.response.body)}`}</pre>`
          : html`<p class="empty">No response (${s.reason}).</p>`}
      </section>
    </div>
  </div>`;
}
