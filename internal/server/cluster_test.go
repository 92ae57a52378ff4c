package server_test

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"

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
