package cluster

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
)

// Pipeline is what a node runs: its sources and destinations as its
// configuration gives them, with their defaults filled in, so that a value
// written out and the same value left to its default are one pipeline.
//
// The nodes of a cluster must run the same pipeline: any node takes in any
// event and stores a job for each destination its own configuration
// connects the source to, and the owner of the destination's partition
// delivers it. A destination that node A has and node B lacks gets jobs
// from A's ingest that nobody delivers while B owns its partition. During
// a rolling upgrade this lasts until B is updated; by mistake, it lasts.
// Nothing in the database can refuse it, so the nodes show it: each stores
// the digest of its pipeline in its cluster_nodes row (Options.Pipeline),
// the cluster view lists them (NodeInfo.Pipeline, PipelinesDiffer), and
// every node compares its own with the live nodes' at each Heartbeat,
// logging a warning when the set of nodes that differ changes
// (Node.PipelineDiffers). A digest rather than the configuration itself:
// the configuration holds secrets (write keys, API keys), the digest only
// a hash over them and everything else.
type Pipeline struct {
	Sources      []PipelineSource
	Destinations []PipelineDestination
}

// PipelineSource is one source of a Pipeline.
type PipelineSource struct {
	Name     string `json:"name"`
	WriteKey string `json:"write_key"`
}

// PipelineDestination is one destination of a Pipeline.
type PipelineDestination struct {
	Name string `json:"name"`
	Type string `json:"type"`
	// Sources are the names of the sources connected to it.
	Sources []string `json:"sources"`
	// Settings are the integration's settings, normalized by its schema.
	Settings map[string]any `json:"settings"`
	// Delivery is its delivery options with their defaults
	// (delivery.Limits, which this package cannot name: the engine
	// imports it), hashed as encoding/json writes it.
	Delivery any `json:"delivery"`
}

// Digest returns the pipeline's digest: the hex SHA-256 of its canonical
// JSON form. Canonical: sources and destinations sorted by name, and a
// destination's sources sorted, since their order means nothing (the
// configuration's order of either list changes no delivery); the keys of
// every map in order (encoding/json writes them sorted); the lists inside
// settings as configured, since an integration may read meaning into
// their order. Two nodes whose files differ only in the order of their
// keys, of their sources or of their destinations have the same digest;
// any other difference, a secret's value included, changes it. The
// canonical form is hashed, never stored or logged.
func (p Pipeline) Digest() (string, error) {
	srcs := slices.Clone(p.Sources)
	slices.SortFunc(srcs, func(a, b PipelineSource) int { return strings.Compare(a.Name, b.Name) })
	dsts := make([]PipelineDestination, len(p.Destinations))
	for i, d := range p.Destinations {
		d.Sources = slices.Sorted(slices.Values(d.Sources))
		dsts[i] = d
	}
	slices.SortFunc(dsts, func(a, b PipelineDestination) int { return strings.Compare(a.Name, b.Name) })
	b, err := json.Marshal(struct {
		Sources      []PipelineSource      `json:"sources"`
		Destinations []PipelineDestination `json:"destinations"`
	}{srcs, dsts})
	if err != nil {
		return "", fmt.Errorf("cluster: pipeline digest: %w", err)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:]), nil
}

// ShortDigest is the prefix of a digest that the log lines and the UI
// show: 12 hex digits, 48 bits, enough to tell a few pipelines apart.
func ShortDigest(digest string) string {
	if len(digest) > 12 {
		return digest[:12]
	}
	return digest
}

// PipelinesDiffer reports whether the live nodes among nodes run different
// pipelines. Nodes without a digest (a version of fanout from before
// digests, during a rolling upgrade) are left out: their pipeline is not
// known.
func PipelinesDiffer(nodes []NodeInfo) bool {
	seen := ""
	for _, n := range nodes {
		if !n.Live || n.Pipeline == "" {
			continue
		}
		if seen != "" && n.Pipeline != seen {
			return true
		}
		seen = n.Pipeline
	}
	return false
}

// PipelineDiffers returns the live nodes whose pipeline differs from this
// node's, each as "name (digest prefix)", ordered by name, as the last
// comparison found them: none when they all agree, before the first
// comparison, and when the node has no Options.Pipeline. A node joined on
// a server other than the first (Options.Server) compares nothing: every
// node registers on the first, where its Group's first Node compares.
func (n *Node) PipelineDiffers() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.differ)
}

// PipelineDiffers returns the live nodes whose pipeline differs from this
// node's, as the membership on the first server last found them: every
// node registers there (see Node.PipelineDiffers).
func (g *Group) PipelineDiffers() []string { return g.nodes[0].PipelineDiffers() }

// comparePipelines logs when the set of live nodes whose digest differs
// from this node's (peers, each as "name (digest prefix)") changes: one
// warning naming them, not one per heartbeat; one line when they agree
// again.
func (n *Node) comparePipelines(live []peer) {
	if n.opts.Pipeline == "" {
		return
	}
	var differ []string
	for _, p := range live {
		if p.pipeline != "" && p.pipeline != n.opts.Pipeline {
			differ = append(differ, fmt.Sprintf("%s (%s)", p.name, ShortDigest(p.pipeline)))
		}
	}
	slices.Sort(differ)
	differ = slices.Compact(differ)
	n.mu.Lock()
	changed := !slices.Equal(differ, n.differ)
	n.differ = differ
	n.mu.Unlock()
	switch {
	case !changed:
	case len(differ) > 0:
		n.log.Warn("live nodes run another pipeline (sources, destinations) than this node: jobs for a destination that the owner of its partition lacks wait undelivered until the pipelines agree",
			"nodes", differ, "pipeline", ShortDigest(n.opts.Pipeline))
	default:
		n.log.Info("every live node runs this node's pipeline again", "pipeline", ShortDigest(n.opts.Pipeline))
	}
}
