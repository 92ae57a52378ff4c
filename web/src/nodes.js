// Nodes: in a cluster, each view is the whole cluster's, gathered by the
// node serving the page from every other node. A node that did not answer
// is named here, so that figures missing its part are not taken for the
// whole.
import { html } from 'htm/preact';

// Unreachable lists the nodes of a cluster-wide answer that did not
// answer, with why; nothing outside a cluster or when all answered.
export function Unreachable({ nodes }) {
  const down = (nodes || []).filter((n) => !n.reachable);
  if (down.length === 0) return null;
  return html`<div class="card nodes-down" role="status" data-testid="nodes-down">
    <strong>${down.length === 1 ? '1 node' : `${down.length} nodes`} of ${nodes.length} not answering;</strong>
    <span> what it holds in memory (in-flight deliveries, live events) is missing below.</span>
    <ul>
      ${down.map((n) => html`<li data-node=${n.name}><b>${n.name}</b>: ${n.error || 'unreachable'}</li>`)}
    </ul>
  </div>`;
}

// NodeCount says how many nodes a cluster-wide answer covers.
export function NodeCount({ nodes }) {
  if (!nodes || nodes.length === 0) return null;
  const up = nodes.filter((n) => n.reachable).length;
  return html`<span class="muted" data-testid="node-count" title=${nodes.map((n) => `${n.name}: ${n.reachable ? 'answered' : n.error}`).join('\n')}>
    ${up} of ${nodes.length} node${nodes.length === 1 ? '' : 's'}</span>`;
}
