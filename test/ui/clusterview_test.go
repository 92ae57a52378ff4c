package ui_test

import (
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fanout/fanout/internal/cluster"
	"github.com/fanout/fanout/internal/pgtest"
	"github.com/fanout/fanout/test/fanouttest"
)

// TestClusterViewUI runs three fanout nodes on one PostgreSQL database and
// checks, in chromium, that the UI of one node shows the whole cluster
// (clusterview.mjs): an event another node took in, delivered by the
// third, in the debugger; which node delivers each destination; and, once
// a node is killed, that node named as not answering.
func TestClusterViewUI(t *testing.T) {
	browser := fanouttest.NewBrowser(t, "ui", "playwright-core")
	dsn := pgtest.Start(t)
	recv := fanouttest.NewReceiver(t, fanouttest.ReceiverOptions{})
	var yaml strings.Builder
	fmt.Fprintf(&yaml, "admin_token: %s\nsources:\n", token)
	const pairs = 6
	for i := range pairs {
		fmt.Fprintf(&yaml, "  - name: s%d\n    write_key: wk_s%d\n", i, i)
	}
	yaml.WriteString("destinations:\n")
	for i := range pairs {
		fmt.Fprintf(&yaml, "  - name: d%d\n    type: webhook\n    sources: [s%d]\n    settings:\n      url: %q\n", i, i, recv.URL)
	}
	var nodes []*fanouttest.Server
	for range 3 {
		nodes = append(nodes, fanouttest.Start(t, bin, fanouttest.Config{Postgres: dsn, YAML: yaml.String()}))
	}
	type view struct {
		Self  int64  `json:"self"`
		Name  string `json:"name"`
		Nodes []struct {
			ID         int64 `json:"id"`
			Live       bool  `json:"live"`
			Partitions []int `json:"partitions"`
		} `json:"nodes"`
	}
	names := make([]string, 3)
	owner := map[int]int{} // pair -> index of the node delivering it
	balanced := func() bool {
		for i, n := range nodes {
			var v view
			if admin(t, n.AdminURL, "/api/v1/cluster", token, &v) != http.StatusOK || len(v.Nodes) != 3 {
				return false
			}
			names[i] = v.Name
			for _, ni := range v.Nodes {
				if !ni.Live || len(ni.Partitions) < 21 {
					return false
				}
				for p := range pairs {
					if ni.ID == v.Self && slices.Contains(ni.Partitions, cluster.PartitionOf(fmt.Sprintf("d%d", p), cluster.DefaultPartitions)) {
						owner[p] = i
					}
				}
			}
		}
		return len(owner) == pairs
	}
	if !fanouttest.Eventually(context.Background(), 30*time.Second, balanced) {
		t.Fatal("the three nodes did not share the partitions")
	}
	// The watcher is node 0; the pair whose destination another node
	// delivers, and the third node takes its event in.
	pair, taker := -1, -1
	for p := range pairs {
		if owner[p] != 0 {
			pair, taker = p, 3-owner[p]
			break
		}
	}
	if pair < 0 {
		t.Fatal("node 0 delivers every destination")
	}
	run := func(phase string) {
		t.Helper()
		_, err := browser.Run(t, "clusterview.mjs",
			"PHASE="+phase,
			"FANOUT_ADMIN_URL="+nodes[0].AdminURL,
			"FANOUT_ADMIN_TOKEN="+token,
			"FANOUT_TRACKING_URL="+nodes[taker].TrackingURL,
			fmt.Sprintf("FANOUT_SOURCE=s%d", pair),
			fmt.Sprintf("FANOUT_WRITE_KEY=wk_s%d", pair),
			fmt.Sprintf("FANOUT_DESTINATION=d%d", pair),
			"FANOUT_TAKER="+names[taker],
			"FANOUT_OWNER="+names[owner[pair]],
			"FANOUT_DEAD="+names[2],
			"SCREENSHOTS="+filepath.Join(mustGetwd(t), "screenshots"),
		)
		if err != nil {
			t.Fatalf("the browser checks (%s) failed (%v); see the output above", phase, err)
		}
	}
	run("live")
	nodes[2].Kill()
	// Right after the kill its row is still live: the other nodes find
	// it does not answer.
	run("dead")
}
