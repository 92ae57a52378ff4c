package server_test

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"

	"github.com/fanout/fanout/internal/config"
	"github.com/fanout/fanout/internal/pgtest"
	"github.com/fanout/fanout/internal/server"
	"github.com/fanout/fanout/test/fanouttest"
)

// With storage.postgres the node joins the cluster under cluster.node_name:
// GET /api/v1/cluster shows it with every partition (it is alone), /metrics
// has its cluster gauges, and after shutdown it has left (its row is gone).
func TestPostgresClusterView(t *testing.T) {
	dsn := pgtest.Start(t)
	view := func(r *running) (v fanouttest.ClusterView) {
		t.Helper()
		resp := r.fetch(t, "/api/v1/cluster")
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET /api/v1/cluster: %d", resp.StatusCode)
		}
		if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	start := func(name string) *running {
		cfg := pgConfig(t, dsn)
		cfg.Cluster.NodeName = name
		return runWith(t, server.Options{Config: cfg, Registry: testRegistry(), Logger: slog.New(slog.DiscardHandler)})
	}

	a := start("node-a")
	v := view(a)
	if len(v.Nodes) != 1 || v.Nodes[0].Name != "node-a" || v.Nodes[0].ID != v.Self || !v.Nodes[0].Live || len(v.Nodes[0].Partitions) != 64 {
		t.Fatalf("cluster view of a node alone: %+v", v)
	}
	resp := a.fetch(t, "/metrics")
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{"fanout_cluster_owned_partitions 64", "fanout_cluster_lease_age_seconds "} {
		if !strings.Contains(string(b), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	a.stop()

	// node-a left on shutdown: a second node sees itself alone.
	bn := start("node-b")
	v = view(bn)
	if len(v.Nodes) != 1 || v.Nodes[0].Name != "node-b" || len(v.Nodes[0].Partitions) != 64 {
		t.Fatalf("cluster view after node-a left: %+v", v)
	}
}

// With two servers a node alone holds every partition, half on each: the
// cluster view and /metrics count them together.
func TestPostgresClusterViewTwoServers(t *testing.T) {
	cfg := pgConfig(t, pgtest.Start(t), pgtest.Start(t))
	cfg.Cluster.NodeName = "node-a"
	r := runWith(t, server.Options{Config: cfg, Registry: testRegistry(), Logger: slog.New(slog.DiscardHandler)})
	resp := r.fetch(t, "/api/v1/cluster")
	var v fanouttest.ClusterView
	err := json.NewDecoder(resp.Body).Decode(&v)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /api/v1/cluster: %d, %v", resp.StatusCode, err)
	}
	if len(v.Nodes) != 1 || v.Nodes[0].Name != "node-a" || v.Nodes[0].ID != v.Self || !v.Nodes[0].Live || len(v.Nodes[0].Partitions) != 64 {
		t.Fatalf("cluster view of a node alone on two servers: %+v", v)
	}
	resp = r.fetch(t, "/metrics")
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(b), "fanout_cluster_owned_partitions 64") {
		t.Errorf("/metrics lacks fanout_cluster_owned_partitions 64")
	}
}

// The nodes' pipelines: two nodes whose files differ only in the order of
// their keys and lists, and in a default written out, run one pipeline; a
// node restarted from its file keeps its digest; a node with a
// destination more is listed with another digest, the view says the
// pipelines differ and every node's fanout_cluster_pipeline_mismatch is 1,
// until it leaves.
func TestPostgresClusterPipelines(t *testing.T) {
	dsn := pgtest.Start(t)
	const (
		sources = `
sources:
  - name: web
    write_key: wk_web_pipeline
  - name: app
    write_key: wk_app_pipeline
`
		destinations = `
destinations:
  - name: hooks
    type: webhook
    sources: [web, app]
    settings:
      url: http://127.0.0.1:1/hook
      secret: whsec_pipeline
      headers: {X-One: "1", X-Two: "2"}
    delivery: {concurrency: 8, timeout: 5s}
  - name: other
    type: webhook
    sources: [app]
    settings: {url: http://127.0.0.1:1/other}
`
		// The same, in another order, with retry_window written out at
		// its default.
		reordered = `
destinations:
  - name: other
    settings: {url: http://127.0.0.1:1/other}
    sources: [app]
    type: webhook
  - name: hooks
    delivery: {timeout: 5s, retry_window: 4h, concurrency: 8}
    settings:
      headers: {X-Two: "2", X-One: "1"}
      secret: whsec_pipeline
      url: http://127.0.0.1:1/hook
    type: webhook
    sources: [app, web]
sources:
  - write_key: wk_app_pipeline
    name: app
  - name: web
    write_key: wk_web_pipeline
`
		extra = `
  - name: extra
    type: webhook
    sources: [web]
    settings: {url: http://127.0.0.1:1/extra}
`
	)
	start := func(name, yaml string) *running {
		t.Helper()
		cfg, err := config.Load(configFile(t, t.TempDir(), yaml), testRegistry())
		if err != nil {
			t.Fatal(err)
		}
		cfg.Storage.Postgres, cfg.Cluster.NodeName = []string{dsn}, name
		return runWith(t, server.Options{Config: cfg, Registry: testRegistry(), Logger: quietLogger()})
	}
	type view struct {
		Nodes []struct {
			Name     string `json:"name"`
			Pipeline string `json:"pipeline_digest"`
		} `json:"nodes"`
		PipelinesDiffer bool `json:"pipelines_differ"`
	}
	get := func(r *running) (v view, digests map[string]string) {
		t.Helper()
		if code := r.get(t, "/api/v1/cluster", &v); code != http.StatusOK {
			t.Fatalf("GET /api/v1/cluster: %d", code)
		}
		digests = map[string]string{}
		for _, n := range v.Nodes {
			digests[n.Name] = n.Pipeline
		}
		return v, digests
	}
	mismatch := func(r *running, want float64) func() string {
		return func() string {
			if got := scrape(t, r)["fanout_cluster_pipeline_mismatch"]; got != want {
				return fmt.Sprintf("fanout_cluster_pipeline_mismatch %v, want %v", got, want)
			}
			return ""
		}
	}

	a := start("node-a", sources+destinations)
	b := start("node-b", reordered)
	v, digests := get(a)
	first := digests["node-a"]
	if len(first) != 64 || strings.Trim(first, "0123456789abcdef") != "" {
		t.Fatalf("node-a's digest %q is not hex SHA-256", first)
	}
	if digests["node-b"] != first || v.PipelinesDiffer {
		t.Fatalf("the same pipeline in another order: digests %v, pipelines_differ %v", digests, v.PipelinesDiffer)
	}
	waitFor(t, "node-a finds no node differing", mismatch(a, 0))

	// Restarted from its file, node-a runs the same pipeline.
	a.stop()
	a = start("node-a", sources+destinations)
	if _, digests = get(b); digests["node-a"] != first {
		t.Fatalf("node-a restarted: digest %s, before %s", digests["node-a"], first)
	}

	c := start("node-c", sources+destinations+extra)
	v, digests = get(a)
	if digests["node-c"] == "" || digests["node-c"] == first || !v.PipelinesDiffer {
		t.Fatalf("node-c has a destination more: digests %v, pipelines_differ %v", digests, v.PipelinesDiffer)
	}
	for _, r := range []*running{a, b, c} {
		waitFor(t, "a node sees node-c's pipeline differ", mismatch(r, 1))
	}
	c.stop()
	for _, r := range []*running{a, b} {
		waitFor(t, "node-c left: the pipelines agree", mismatch(r, 0))
	}
	if v, _ = get(b); v.PipelinesDiffer {
		t.Error("node-c left: pipelines_differ still")
	}
}
