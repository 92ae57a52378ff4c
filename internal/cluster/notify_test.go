package cluster

import (
	"context"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// settle waits until n's gains have been woken again (rewake) and drops
// every wake-up so far, so that a test sees only those it causes.
func settle(n *Node) {
	end := time.After(2*n.viewTTL() + 2*n.opts.Heartbeat)
	for {
		select {
		case <-n.Wakeups():
		case <-end:
			return
		}
	}
}

// wakeups returns the partitions n is woken for within d.
func wakeups(n *Node, d time.Duration) []int {
	var got []int
	end := time.After(d)
	for {
		select {
		case p := <-n.Wakeups():
			got = append(got, p)
		case <-end:
			slices.Sort(got)
			return slices.Compact(got)
		}
	}
}

// broadcasts LISTENs on the channel every node hears and returns the
// payloads received there, read by calling the returned function.
func broadcasts(t *testing.T, pool *pgxpool.Pool) func(d time.Duration) []string {
	t.Helper()
	conn, err := pool.Acquire(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hangUp(conn) })
	if _, err := conn.Exec(t.Context(), "LISTEN "+jobsChannel); err != nil {
		t.Fatal(err)
	}
	return func(d time.Duration) []string {
		var got []string
		ctx, cancel := context.WithTimeout(t.Context(), d)
		defer cancel()
		for {
			note, err := conn.Conn().WaitForNotification(ctx)
			if err != nil {
				return got
			}
			got = append(got, note.Payload)
		}
	}
}

// appendAs commits a transaction that notifies partitions the way a node's
// store does (QueueNotify, then Committed), and returns what it addressed.
func appendAs(t *testing.T, n *Node, partitions ...int) Notice {
	t.Helper()
	var nt Notice
	var queued int
	if err := pgx.BeginFunc(t.Context(), n.pool, func(tx pgx.Tx) error {
		b := &pgx.Batch{}
		nt = n.QueueNotify(b, partitions)
		queued = b.Len()
		if queued == 0 {
			return nil
		}
		return tx.SendBatch(t.Context(), b).Close()
	}); err != nil {
		t.Fatal(err)
	}
	n.Committed(t.Context(), nt)
	return nt
}

// TestAddressedNotify: a commit wakes the owners of its partitions and no
// other node, and nothing goes to the channel every node hears; a
// partition the appending node owns is announced by its own store, with no
// notification at all.
func TestAddressedNotify(t *testing.T) {
	b := setup(t)
	a := b.join("a", Options{})
	c := b.join("c", Options{})
	waitFor(t, 5*time.Second, "a and c not balanced", func() bool { return balanced(a, c) })
	settle(a)
	settle(c)
	heard := broadcasts(t, b.pool())
	ofC := c.Owned()
	ofA := a.Owned()

	nt := appendAs(t, a, ofC[0], ofC[1], ofA[0])
	committed := time.Now()
	if !slices.Equal(nt.self, []int{ofA[0]}) || !slices.Equal(nt.addressed, ofC[:2]) {
		t.Fatalf("QueueNotify: self %v, addressed %v; want %v and %v", nt.self, nt.addressed, ofA[:1], ofC[:2])
	}
	for range 2 {
		select {
		case <-c.Wakeups():
		case <-time.After(time.Second):
			t.Fatal("c not woken for its partitions")
		}
	}
	if took := time.Since(committed); took > 100*time.Millisecond {
		t.Errorf("c woken %s after the commit, want under 100ms", took)
	}
	if got := wakeups(c, 100*time.Millisecond); len(got) != 0 {
		t.Errorf("c woken again for %v", got)
	}
	if got := wakeups(a, 50*time.Millisecond); len(got) != 0 {
		t.Errorf("a woken for %v: its own partition is announced by its store, the others are c's", got)
	}
	if got := heard(50 * time.Millisecond); len(got) != 0 {
		t.Errorf("sent to every node: %q", got)
	}

	// A notification addressed to c of a partition c does not own (a view
	// out of date) is forwarded to every node, and a wakes.
	if _, err := b.pool().Exec(t.Context(), `SELECT pg_notify($1, $2)`,
		nodeChannel(c.ID()), strconv.Itoa(ofA[1])); err != nil {
		t.Fatal(err)
	}
	if got := wakeups(a, 300*time.Millisecond); !slices.Equal(got, []int{ofA[1]}) {
		t.Errorf("a woken for %v after c was notified of a's partition %d", got, ofA[1])
	}
	if got := heard(50 * time.Millisecond); !slices.Equal(got, []string{strconv.Itoa(ofA[1])}) {
		t.Errorf("forwarded %q, want %q", got, strconv.Itoa(ofA[1]))
	}
}

// TestNotifyWithoutFreshView: a node whose view of the owners is more than
// viewTTL old (its rounds fail) notifies every node; and one whose view
// was fresh when it queued the notification, but is old when its commit
// returns, notifies every node again after the commit.
func TestNotifyWithoutFreshView(t *testing.T) {
	b := setup(t)
	a := b.join("a", Options{})
	c := b.join("c", Options{})
	waitFor(t, 5*time.Second, "a and c not balanced", func() bool { return balanced(a, c) })
	settle(c)
	heard := broadcasts(t, b.pool())
	p := c.Owned()[0]

	a.mu.Lock()
	a.viewSent = a.viewSent.Add(-time.Minute)
	a.mu.Unlock()
	nt := appendAs(t, a, p)
	if len(nt.addressed) != 0 {
		t.Errorf("addressed %v with a view a minute old", nt.addressed)
	}
	if got := heard(200 * time.Millisecond); !slices.Equal(got, []string{strconv.Itoa(p)}) {
		t.Errorf("sent to every node: %q, want %q", got, strconv.Itoa(p))
	}
	if got := wakeups(c, 100*time.Millisecond); !slices.Equal(got, []int{p}) {
		t.Errorf("c woken for %v, want %d", got, p)
	}

	// Fresh when queued, old when committed: Committed sends it again.
	waitFor(t, 5*time.Second, "a's view not renewed", func() bool {
		a.mu.Lock()
		defer a.mu.Unlock()
		return time.Since(a.viewSent) < a.viewTTL()
	})
	var nt2 Notice
	if err := pgx.BeginFunc(t.Context(), a.pool, func(tx pgx.Tx) error {
		bt := &pgx.Batch{}
		nt2 = a.QueueNotify(bt, []int{p})
		return tx.SendBatch(t.Context(), bt).Close()
	}); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(nt2.addressed, []int{p}) {
		t.Fatalf("addressed %v with a fresh view, want [%d]", nt2.addressed, p)
	}
	nt2.viewSent = nt2.viewSent.Add(-time.Minute) // the commit took that long
	a.Committed(t.Context(), nt2)
	if got := heard(200 * time.Millisecond); !slices.Equal(got, []string{strconv.Itoa(p)}) {
		t.Errorf("after a late commit, sent to every node: %q, want %q", got, strconv.Itoa(p))
	}
}

// TestRewakeAfterGain: a partition gained is woken once more viewTTL after
// the gain, without any notification: jobs whose notification went to the
// previous owner, addressed by a view from before the move, are found
// then.
func TestRewakeAfterGain(t *testing.T) {
	b := setup(t)
	a := b.join("a", Options{})
	start := time.Now()
	got := map[int]time.Duration{}
	for len(got) < testPartitions {
		select {
		case p := <-a.Wakeups():
			if _, ok := got[p]; !ok {
				got[p] = time.Since(start)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("after 5s, woken for %d partitions of the %d gained", len(got), testPartitions)
		}
	}
	for p, at := range got {
		if at < a.viewTTL()/2 {
			t.Errorf("partition %d woken %s after Join, before its rewake (%s)", p, at, a.viewTTL())
		}
	}
	if more := wakeups(a, 3*a.viewTTL()); len(more) != 0 {
		t.Errorf("woken again for %v: a rewake is once", more)
	}
}
