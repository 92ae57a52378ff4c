package cluster

import (
	"context"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/logtest"
	"github.com/fanout/fanout/internal/pgtest"
)

// testPipeline is a pipeline of two sources and two destinations, built
// afresh at each call, so that its maps are filled in another order.
func testPipeline() Pipeline {
	return Pipeline{
		Sources: []PipelineSource{{Name: "web", WriteKey: "wk_web"}, {Name: "app", WriteKey: "wk_app"}},
		Destinations: []PipelineDestination{
			{Name: "hooks", Type: "webhook", Sources: []string{"web", "app"},
				Settings: map[string]any{"url": "https://example.com/hook", "secret": "s3cret", "headers": map[string]string{"A": "1", "B": "2"}},
				Delivery: map[string]any{"concurrency": 64, "timeout": "10s"}},
			{Name: "crm", Type: "hubspot", Sources: []string{"app"},
				Settings: map[string]any{"token": "pat-1", "fields": []string{"email", "name"}}},
		},
	}
}

func digest(t *testing.T, p Pipeline) string {
	t.Helper()
	d, err := p.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// The digest is the same for pipelines that differ only where order means
// nothing, and differs for every other change, a secret's value included.
func TestPipelineDigest(t *testing.T) {
	base := digest(t, testPipeline())
	// Pinned: the digest is compared across nodes that may run different
	// versions of fanout. A change of the canonical form makes every node
	// of the previous version look different during a rolling upgrade, so
	// it must be deliberate (and this value updated).
	const pinned = "f5698253a8fa2613134ae58d596e8031cef85a05202a1e23aaf7fb964f28ec60"
	if base != pinned {
		t.Errorf("digest of the test pipeline = %s, pinned %s: the canonical form changed", base, pinned)
	}
	if len(base) != 64 || strings.Trim(base, "0123456789abcdef") != "" {
		t.Fatalf("digest %q is not hex SHA-256", base)
	}
	for i := range 20 { // Go's map order changes from one iteration to the next
		if d := digest(t, testPipeline()); d != base {
			t.Fatalf("build %d of the same pipeline: digest %s, first %s", i, d, base)
		}
	}
	tests := []struct {
		name   string
		change func(p *Pipeline)
		same   bool
	}{
		{"sources reordered", func(p *Pipeline) { slices.Reverse(p.Sources) }, true},
		{"destinations reordered", func(p *Pipeline) { slices.Reverse(p.Destinations) }, true},
		{"a destination's sources reordered", func(p *Pipeline) { slices.Reverse(p.Destinations[0].Sources) }, true},
		{"a destination added", func(p *Pipeline) {
			p.Destinations = append(p.Destinations, PipelineDestination{Name: "extra", Type: "webhook", Sources: []string{"web"}})
		}, false},
		{"a source's write key", func(p *Pipeline) { p.Sources[0].WriteKey = "wk_other" }, false},
		{"a secret setting's value", func(p *Pipeline) { p.Destinations[0].Settings["secret"] = "other" }, false},
		{"a list setting reordered", func(p *Pipeline) {
			p.Destinations[1].Settings["fields"] = []string{"name", "email"}
		}, false},
		{"a destination's source dropped", func(p *Pipeline) { p.Destinations[0].Sources = []string{"web"} }, false},
		{"a delivery option", func(p *Pipeline) {
			p.Destinations[0].Delivery = map[string]any{"concurrency": 8, "timeout": "10s"}
		}, false},
		{"a destination's type", func(p *Pipeline) { p.Destinations[1].Type = "webhook" }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := testPipeline()
			tt.change(&p)
			if d := digest(t, p); (d == base) != tt.same {
				t.Errorf("digest %s, unchanged %s: same = %v, want %v", d, base, d == base, tt.same)
			}
		})
	}
	// Digest sorts copies: the caller's lists keep their order.
	p := testPipeline()
	digest(t, p)
	if p.Sources[0].Name != "web" || p.Destinations[0].Sources[0] != "web" {
		t.Errorf("Digest reordered its argument: %+v", p)
	}
	if strings.Contains(base, "s3cret") {
		t.Error("the digest holds a secret") // it cannot, but say so
	}
}

func TestPipelinesDiffer(t *testing.T) {
	tests := []struct {
		name  string
		nodes []NodeInfo
		want  bool
	}{
		{"none", nil, false},
		{"one", []NodeInfo{{Live: true, Pipeline: "a"}}, false},
		{"same", []NodeInfo{{Live: true, Pipeline: "a"}, {Live: true, Pipeline: "a"}}, false},
		{"different", []NodeInfo{{Live: true, Pipeline: "a"}, {Live: true, Pipeline: "b"}}, true},
		{"a dead node differs", []NodeInfo{{Live: true, Pipeline: "a"}, {Live: false, Pipeline: "b"}}, false},
		{"an unknown pipeline", []NodeInfo{{Live: true, Pipeline: ""}, {Live: true, Pipeline: "a"}}, false},
		{"different after an unknown", []NodeInfo{{Live: true}, {Live: true, Pipeline: "a"}, {Live: true, Pipeline: "b"}}, true},
	}
	for _, tt := range tests {
		if got := PipelinesDiffer(tt.nodes); got != tt.want {
			t.Errorf("%s: PipelinesDiffer = %v, want %v", tt.name, got, tt.want)
		}
	}
}

// Two nodes of one pipeline agree; a third with a destination more is
// listed with its digest, the cluster flagged, and each node names the
// nodes that differ from it in one warning, not one per heartbeat. When
// the third leaves, they agree again. A node without a digest (an older
// fanout) is compared with nobody.
func TestPipelineMismatch(t *testing.T) {
	b := setup(t)
	same := digest(t, testPipeline())
	more := testPipeline()
	more.Destinations = append(more.Destinations, PipelineDestination{Name: "extra", Type: "webhook", Sources: []string{"web"}})
	other := digest(t, more)

	var logA logtest.Buffer
	a := b.join("a", Options{Pipeline: same, Logger: logA.Logger(slog.LevelInfo)})
	b.join("b", Options{Pipeline: same})
	b.join("old", Options{}) // a fanout from before the digests

	view := func(n *Node) []NodeInfo {
		t.Helper()
		nodes, err := n.Nodes(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		return nodes
	}
	pipelines := func(nodes []NodeInfo) map[string]string {
		m := map[string]string{}
		for _, n := range nodes {
			m[n.Name] = n.Pipeline
		}
		return m
	}
	nodes := view(a)
	if got, want := pipelines(nodes), map[string]string{"a": same, "b": same, "old": ""}; !maps.Equal(got, want) {
		t.Fatalf("pipelines listed %v, want %v", got, want)
	}
	if PipelinesDiffer(nodes) {
		t.Error("two nodes of one pipeline: PipelinesDiffer")
	}
	// A few comparisons later, a still finds none.
	time.Sleep(3 * testHeartbeat)
	if d := a.PipelineDiffers(); len(d) != 0 {
		t.Fatalf("a finds %v differing from it", d)
	}

	var logC logtest.Buffer
	c := b.join("c", Options{Pipeline: other, Logger: logC.Logger(slog.LevelInfo)})
	nodes = view(a)
	if got := pipelines(nodes)["c"]; got != other {
		t.Fatalf("c's pipeline listed as %q, want %q", got, other)
	}
	if !PipelinesDiffer(nodes) {
		t.Error("c has a destination more: not PipelinesDiffer")
	}
	wantA := []string{"c (" + ShortDigest(other) + ")"}
	waitFor(t, 5*time.Second, "a names c as differing", func() bool { return slices.Equal(a.PipelineDiffers(), wantA) })
	wantC := []string{"a (" + ShortDigest(same) + ")", "b (" + ShortDigest(same) + ")"}
	waitFor(t, 5*time.Second, "c names a and b as differing", func() bool { return slices.Equal(c.PipelineDiffers(), wantC) })
	// Many heartbeats, one warning on each.
	time.Sleep(5 * testHeartbeat)
	const warned = "live nodes run another pipeline"
	if got := logA.Lines("level=WARN", warned); len(got) != 1 || !strings.Contains(got[0], `nodes="[c (`+ShortDigest(other)+`)]"`) {
		t.Errorf("a's warnings: %q, want one naming c", got)
	}
	if got := logC.Lines("level=WARN", warned); len(got) != 1 || !strings.Contains(got[0], "a ("+ShortDigest(same)+") b ("+ShortDigest(same)+")") {
		t.Errorf("c's warnings: %q, want one naming a and b", got)
	}

	if err := c.Leave(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "a agrees with the others again", func() bool { return len(a.PipelineDiffers()) == 0 })
	if got := logA.Lines("level=INFO", "every live node runs this node's pipeline again"); len(got) != 1 {
		t.Errorf("a's lines on agreeing again: %q, want one", got)
	}
	if PipelinesDiffer(view(a)) {
		t.Error("c left: still PipelinesDiffer")
	}
}

// A database whose cluster_nodes table an older fanout created, without
// the digest column, gets it at the next Join, its rows kept with no
// digest; the node stores its own.
func TestPipelineColumnMigrated(t *testing.T) {
	b := setup(t)
	pool := b.pool()
	ctx := context.Background()
	// The table as the versions before the digest created it, and a node
	// of theirs, still live.
	if _, err := pool.Exec(ctx, `
		CREATE TABLE cluster_nodes (
			id           bigserial PRIMARY KEY,
			name         text NOT NULL,
			started_at   timestamptz NOT NULL DEFAULT now(),
			heartbeat_at timestamptz NOT NULL DEFAULT now(),
			admin_url    text NOT NULL DEFAULT ''
		);
		INSERT INTO cluster_nodes (name) VALUES ('older')`); err != nil {
		t.Fatal(err)
	}
	d := digest(t, testPipeline())
	n := b.join("newer", Options{Pipeline: d})
	nodes, err := n.Nodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, ni := range nodes {
		got[ni.Name] = ni.Pipeline
	}
	if want := map[string]string{"older": "", "newer": d}; !maps.Equal(got, want) {
		t.Fatalf("pipelines after the migration: %v, want %v", got, want)
	}
}

// With several servers the node stores its digest on each, and its
// Group compares on the first.
func TestPipelineOnEveryServer(t *testing.T) {
	s := setupServers(t, 2)
	join := func(name, pipeline string) *Group {
		var nodes []*Node
		for i, dsn := range s.dsns {
			n, err := Join(t.Context(), Options{Pool: pgtest.Pool(t, dsn), NodeName: name, Pipeline: pipeline,
				Partitions: testPartitions, Server: i, Servers: len(s.dsns),
				Heartbeat: testHeartbeat, Lease: testLease, Logger: testLogger})
			if err != nil {
				t.Fatalf("Join %s on server %d: %v", name, i, err)
			}
			nodes = append(nodes, n)
		}
		g, err := NewGroup(nodes)
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			for range g.Changes() {
			}
		}()
		t.Cleanup(func() { g.Leave(context.Background()) })
		return g
	}
	same := digest(t, testPipeline())
	more := testPipeline()
	more.Sources = more.Sources[:1]
	other := digest(t, more)
	a := join("a", same)
	join("b", other)
	for i, dsn := range s.dsns {
		var got []string
		err := pgtest.Pool(t, dsn).QueryRow(context.Background(),
			`SELECT array_agg(name || '=' || pipeline_digest ORDER BY name) FROM cluster_nodes`).Scan(&got)
		if err != nil {
			t.Fatal(err)
		}
		if want := []string{"a=" + same, "b=" + other}; !slices.Equal(got, want) {
			t.Errorf("server %d stores %v, want %v", i, got, want)
		}
	}
	waitFor(t, 5*time.Second, "a names b as differing", func() bool {
		return slices.Equal(a.PipelineDiffers(), []string{"b (" + ShortDigest(other) + ")"})
	})
	if d := a.Node(1).PipelineDiffers(); d != nil {
		t.Errorf("the membership on the second server compares too: %v", d)
	}
	nodes, err := a.Nodes(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !PipelinesDiffer(nodes) {
		t.Errorf("the group's view does not differ: %+v", nodes)
	}
}
