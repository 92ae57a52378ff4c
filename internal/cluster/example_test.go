package cluster_test

import (
	"context"
	"log"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/fanout/fanout/internal/cluster"
	"github.com/fanout/fanout/internal/jobstore"
)

// How the server and the engine use a Node: follow Changes to start and
// stop partitions, Wakeups to scan them, and present the token on writes.
func Example() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, "host=/run/postgresql dbname=fanout")
	if err != nil {
		log.Fatal(err)
	}
	node, err := cluster.Join(ctx, cluster.Options{Pool: pool, NodeName: "fanout-1"})
	if err != nil {
		log.Fatal(err)
	}
	defer node.Leave(ctx)

	go func() {
		for c := range node.Changes() {
			if c.Owned {
				// start the partition's queues: scan their jobs, deliver
			} else {
				// stop the partition's queues at once
			}
		}
	}()
	go func() {
		for p := range node.Wakeups() {
			_ = p // scan partition p's queues for new jobs
		}
	}()

	// In the store, when appending: wake the owner of each job's queue,
	// with the notification sent inside the appending transaction, then
	// let the node check the commit's addressing.
	q := jobstore.Queue{Source: "web", Destination: "hooks"}
	var notice cluster.Notice
	if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		// ... COPY the jobs ...
		b := &pgx.Batch{}
		notice = node.QueueNotify(b, []int{node.PartitionOf(q)})
		return tx.SendBatch(ctx, b).Close()
	}); err == nil {
		node.Committed(ctx, notice)
	}

	// In the engine, before recording outcomes of q's jobs.
	p := node.PartitionOf(q)
	if token, ok := node.Owns(p); ok {
		_ = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			if err := cluster.Fence(ctx, tx, p, token); err != nil {
				return err // lost the lease: roll back, drop the partition
			}
			// ... the store's Apply statements ...
			return nil
		})
	}
}
