// Cluster: the nodes sharing this fanout's PostgreSQL database, from
// GET /api/v1/cluster: each node's last heartbeat, the age of its leases,
// the partitions it holds and the digest of its pipeline (sources and
// destinations), with a warning while the live nodes' digests differ, and
// the machine it runs on, with how many live nodes share its cores. A
// fanout on the embedded store is no cluster; the API answers 404 and the
// page says so.
import { html } from 'htm/preact';
import { get } from './api.js';
import { ago, duration, timestamp } from './format.js';
import { Status, usePoll } from './poll.js';

// loadCluster returns the cluster view, or { single: reason } when the
// API says this fanout is not in a cluster (404).
async function loadCluster(signal) {
  try {
    return await get('/cluster', { signal });
  } catch (err) {
    if (/^404 /.test(err.message)) return { single: err.message.slice(4) };
    throw err;
  }
}

export function Cluster() {
  const poll = usePoll(loadCluster, [], 2000);
  const v = poll.data;
  return html`<main class="page cluster">
    <div class="page-head">
      <h1>Cluster</h1>
      <${Status} poll=${poll} />
    </div>
    ${v && v.single && html`<section class="card" data-testid="not-cluster">
      <h2>Not a cluster</h2>
      <p>This fanout runs alone on its embedded store (${v.single}).</p>
      <p class="muted">Nodes whose <code>storage.postgres</code> names the same database form a cluster:
        each destination is delivered by one node, and a node that stops or dies hands its partitions to the others.</p>
    </section>`}
    ${v && v.nodes && v.pipelines_differ && html`<${PipelinesDiffer} v=${v} />`}
    ${v && v.nodes && html`<${Nodes} v=${v} at=${poll.updatedAt} />`}
  </main>`;
}

function Nodes({ v, at }) {
  const now = at ? at.getTime() : Date.now();
  const selfDigest = (v.nodes.find((n) => n.id === v.self) || {}).pipeline_digest;
  const live = v.nodes.filter((n) => n.live);
  const owned = live.reduce((s, n) => s + n.partitions.length, 0);
  const onMachine = new Map();
  for (const n of live) if (n.machine) onMachine.set(n.machine, (onMachine.get(n.machine) || 0) + 1);
  return html`<section class="card">
    <p data-testid="cluster-summary">
      <strong>${live.length}</strong> live node${live.length === 1 ? '' : 's'} holding <strong>${owned}</strong> partition${owned === 1 ? '' : 's'}${v.nodes.length > live.length && `; ${v.nodes.length - live.length} dead, listed for an hour`}.
      <span class="muted"> This page is served by node ${v.name} (#${v.self}).</span>
    </p>
    <table class="grid">
      <thead><tr>
        <th>Node</th><th>State</th><th>Started</th><th>Last heartbeat</th>
        <th class="num" title="Time since the node last renewed its leases (its heartbeat round)">Lease age</th>
        <th class="num">Partitions</th><th>Which</th>
        <th title="Digest of the node's sources and destinations (SHA-256, first 12 digits): every node should run the same">Pipeline</th>
        <th title="The cores the node runs on: its kernel's boot id (first 8 digits) and its CPUs. Nodes on one machine share its cores, each with GOMAXPROCS set to its share">Machine</th>
      </tr></thead>
      <tbody>${v.nodes.map((n) => html`<tr data-testid="node" data-id=${n.id} data-name=${n.name} data-live=${String(n.live)}>
        <td>${n.name} <span class="muted">#${n.id}</span>${n.id === v.self && html` <span class="badge type" data-field="self">this node</span>`}</td>
        <td><span class=${'badge ' + (n.live ? 'delivered' : 'failed')} data-field="state">${n.live ? 'live' : 'dead'}</span></td>
        <td title=${timestamp(n.started_at)}>${ago(n.started_at, now)}</td>
        <td data-field="heartbeat" title=${timestamp(n.last_heartbeat)}>${timestamp(n.last_heartbeat)}</td>
        <td class="num" data-field="lease_age">${leaseAge(n, now)}</td>
        <td class="num" data-field="partition_count">${n.partitions.length}</td>
        <td data-field="partitions"><code>${ranges(n.partitions) || '–'}</code></td>
        <td>${n.pipeline_digest
          ? html`<code data-field="pipeline" title=${n.pipeline_digest}>${short(n.pipeline_digest)}</code>${n.live && v.pipelines_differ && n.pipeline_digest !== selfDigest && html` <span class="badge retrying" data-field="pipeline_differs">differs</span>`}`
          : html`<span class="muted" data-field="pipeline" title="This node stores no digest: a fanout from before pipeline digests">unknown</span>`}</td>
        <td>${n.machine
          ? html`<code data-field="machine" title=${n.machine}>${n.machine.slice(0, 8)}</code>${n.live && onMachine.get(n.machine) > 1 && html` <span class="muted" data-field="machine_shared">shared by ${onMachine.get(n.machine)} nodes</span>`}`
          : html`<span class="muted" data-field="machine" title="This node stores no machine: a fanout from before it did, or not on Linux">unknown</span>`}</td>
      </tr>`)}</tbody>
    </table>
  </section>`;
}

// short is the prefix of a digest that the page and the logs show.
const short = (d) => d.slice(0, 12);

// PipelinesDiffer warns that the live nodes run different sources or
// destinations: a node stores jobs for every destination it has, and those
// of a destination the owner of its partition lacks wait undelivered. It
// lists the live nodes by pipeline.
function PipelinesDiffer({ v }) {
  const by = new Map();
  for (const n of v.nodes) {
    if (!n.live || !n.pipeline_digest) continue;
    if (!by.has(n.pipeline_digest)) by.set(n.pipeline_digest, []);
    by.get(n.pipeline_digest).push(n.name);
  }
  return html`<div class="card pipelines-differ" role="alert" data-testid="pipelines-differ">
    <strong>The live nodes run ${by.size} different pipelines.</strong>
    <span> Events for a destination that the node delivering it lacks wait undelivered until every node has the same sources and destinations.
      Expected for a moment during a rolling upgrade; otherwise, compare the nodes' configuration files.</span>
    <ul>
      ${[...by].map(([d, names]) => html`<li data-digest=${d}><code>${short(d)}</code>: ${names.join(', ')}</li>`)}
    </ul>
  </div>`;
}

// leaseAge is how long ago the node's leases were renewed: they are
// renewed in each heartbeat round, so a live node's is under a second or
// two. A dead node's leases have run out.
function leaseAge(n, now) {
  if (!n.live) return 'ran out';
  const s = Math.max(0, (now - new Date(n.last_heartbeat).getTime()) / 1000);
  return s < 60 ? `${s.toFixed(1)} s` : duration(s);
}

// ranges writes sorted partition numbers compactly: 0-20, 42, 60-63.
export function ranges(ps) {
  const out = [];
  for (let i = 0; i < ps.length; ) {
    let j = i;
    while (j + 1 < ps.length && ps[j + 1] === ps[j] + 1) j++;
    out.push(i === j ? `${ps[i]}` : `${ps[i]}-${ps[j]}`);
    i = j + 1;
  }
  return out.join(', ');
}
