package pebble

import (
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	pebbledb "github.com/cockroachdb/pebble/v2"

	"github.com/fanout/fanout/internal/clock"
	"github.com/fanout/fanout/internal/jobstore"
)

// TestExpiredDedupeDroppedAfterFailedGroup: the range deletion of expired
// dedupe buckets rides in the first group built after they expire. When
// that group stores nothing, every request of it having failed its dedupe
// lookup, the deletion goes with the next group that stores something; it
// was thrown away with the empty batch yet noted as done, and the expired
// records stayed until the next bucket expired.
//
// A request's dedupe lookup fails in the committer only when the request
// waited for more groups than recentIDs remembers (so its lookups are
// redone there) and the lookup then meets a damaged record. The test's
// clock holds the request in its first reading of the time while those
// groups commit, then holds the committer in its own while the record is
// damaged.
func TestExpiredDedupeDroppedAfterFailedGroup(t *testing.T) {
	clk := clock.NewFake(time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC))
	// hold, when set, stops the next reading of the time until it is
	// closed; held hears that the reading has begun.
	var hold atomic.Pointer[chan struct{}]
	held := make(chan struct{})
	holdNext := func() chan struct{} {
		release := make(chan struct{})
		hold.Store(&release)
		return release
	}
	now := func() time.Time {
		if h := hold.Swap(nil); h != nil {
			held <- struct{}{}
			<-*h
		}
		return clk.Now()
	}
	s, err := Open(t.TempDir(), Options{Now: now, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	<-s.filterDone
	ctx := t.Context()

	// The late request notes the groups applied so far, then waits in its
	// reading of the time.
	releaseLate := holdNext()
	lateErr := make(chan error, 1)
	go func() {
		_, err := s.Append(ctx, []jobstore.Entry{entry("late")})
		lateErr <- err
	}()
	<-held
	// More groups than recentIDs remembers, each storing a dedupe record in
	// today's bucket.
	for i := range recentGroups + 10 {
		if _, err := s.Append(ctx, []jobstore.Entry{entry(fmt.Sprint("old-", i))}); err != nil {
			t.Fatal(err)
		}
	}
	today := dedupeBucket(clk.Now())
	// Two days on, today's bucket has left the window: the next group
	// built is to delete it.
	clk.Advance(48 * time.Hour)
	expired := dedupeBucket(clk.Now().Add(-s.opts.DedupeWindow))
	if expired <= today {
		t.Fatalf("bucket %d not expired at bucket %d", today, expired)
	}

	// The late request goes on; the committer, building its group, waits
	// in its reading of the time while the late messageId's record is
	// damaged. Its lookups, redone there, fail, and the group is empty.
	releaseBuild := holdNext()
	close(releaseLate)
	<-held
	late := dedupeKey(dedupeBucket(clk.Now()), q.Source, "late")
	if err := s.db.Set(late, []byte("damaged"), pebbledb.Sync); err != nil {
		t.Fatal(err)
	}
	s.filter.add(dedupeBucket(clk.Now()), [][]byte{filterKey(late)})
	close(releaseBuild)
	if err := <-lateErr; !errors.Is(err, errCorrupt) {
		t.Fatalf("Append of the late request = %v, want its dedupe lookup to fail on the damaged record", err)
	}
	if err := s.db.Delete(late, pebbledb.Sync); err != nil {
		t.Fatal(err)
	}

	// The next group stores an event, and the expired bucket with it.
	if _, err := s.Append(ctx, []jobstore.Entry{entry("next")}); err != nil {
		t.Fatal(err)
	}
	it, err := s.db.NewIter(&pebbledb.IterOptions{LowerBound: dedupeBucketStart(0), UpperBound: dedupeBucketStart(expired)})
	if err != nil {
		t.Fatal(err)
	}
	left := 0
	for it.First(); it.Valid(); it.Next() {
		left++
	}
	if err := it.Close(); err != nil {
		t.Fatal(err)
	}
	if left != 0 {
		t.Errorf("%d expired dedupe records left after the next group, want none", left)
	}
}
