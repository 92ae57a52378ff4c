package delivery_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fanout/fanout/destinations"
	"github.com/fanout/fanout/internal/admin"
	"github.com/fanout/fanout/internal/archive"
	"github.com/fanout/fanout/internal/clock"
	"github.com/fanout/fanout/internal/config"
	"github.com/fanout/fanout/internal/delivery"
	"github.com/fanout/fanout/internal/event"
	"github.com/fanout/fanout/internal/jobstore"
	"github.com/fanout/fanout/internal/jobstore/pebble"
	"github.com/fanout/fanout/internal/stats"
)

// heldDest is the job store with the calls of one destination's scheduler,
// its outcome writes (Apply) and its reads of pending jobs (Pending), held
// up by its gate: a database that stops answering that scheduler.
type heldDest struct {
	jobstore.Store
	*gate
	dest string
}

func (s *heldDest) Apply(ctx context.Context, u jobstore.Update) error {
	if len(u.Finish) > 0 && u.Finish[0].Queue.Destination == s.dest {
		if err := s.pass(ctx); err != nil {
			return err
		}
	}
	return s.Store.Apply(ctx, u)
}

func (s *heldDest) Pending(ctx context.Context, q jobstore.Queue, after uint64, limit int) ([]jobstore.Job, error) {
	if q.Destination == s.dest {
		if err := s.pass(ctx); err != nil {
			return nil, err
		}
	}
	return s.Store.Pending(ctx, q, after, limit)
}

// Engine.State answers at once for every destination, also for one whose
// scheduler waits on the store (an outcome write or a read held up, as by
// a database cut off), and says so; one whose scheduler does not answer
// before the caller's deadline is given as its last snapshot, marked
// stale, never left out.
func TestStateWhileSchedulerStuck(t *testing.T) {
	for _, tc := range []struct {
		name string
		// stored is how many events of "stuck" wait in the store before
		// the engine starts; sent how many are sent to it once it runs.
		stored, sent int
		// arm arms the store's gate before the engine starts, or once
		// it runs; turn holds the scheduler of "stuck" in its turn
		// instead (its Observe hook blocks), outside any store call.
		armAtStart, turn bool
	}{
		{name: "outcome write held", sent: 1},
		{name: "read held", stored: 3, armAtStart: true},
		{name: "turn held past the deadline", sent: 1, turn: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			clk := clock.NewFake(start)
			var eng *delivery.Engine
			inner, err := pebble.Open(filepath.Join(dir, "jobs"), pebble.Options{Now: clk.Now, Logger: quiet,
				Applied: func(a jobstore.Appended) { eng.Notify(a) }})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { inner.Close() })
			store := &heldDest{Store: inner, gate: newGate(), dest: "stuck"}
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
			t.Cleanup(srv.Close)
			var targets []delivery.Target
			for _, name := range []string{"free", "stuck"} {
				s := &scripted{url: srv.URL, tries: map[string]int{}}
				targets = append(targets, delivery.Target{Name: name, Type: "test", Destination: decider{s}, Client: srv.Client()})
			}
			reports := make(chan delivery.Report, 64)
			inTurn, leaveTurn := make(chan struct{}, 1), make(chan struct{})
			var holdTurn atomic.Bool
			eng, err = delivery.New(delivery.Options{Store: store, Targets: targets, Clock: clk, Seed: 1, Logger: quiet,
				Archive: archive.NewWriter(filepath.Join(dir, "archive")),
				Observe: func(r delivery.Report) {
					if holdTurn.Load() && r.Queue.Destination == "stuck" {
						inTurn <- struct{}{}
						<-leaveTurn
					}
					reports <- r
				}})
			if err != nil {
				t.Fatal(err)
			}
			send := func(dest string, n int) {
				var es []jobstore.Entry
				for i := range n {
					id := fmt.Sprintf("%s-%d", dest, i)
					es = append(es, jobstore.Entry{Destinations: []string{dest}, Event: event.Event{Source: "web",
						MessageID: id, Type: event.Track, ReceivedAt: clk.Now(), Payload: []byte(`{}`)}})
				}
				if _, err := inner.Append(context.Background(), es); err != nil {
					t.Fatal(err)
				}
			}
			send("stuck", tc.stored)
			store.armed.Store(tc.armAtStart)
			t.Cleanup(run(eng))
			// Let the held scheduler go before the engine stops (cleanups
			// run last first).
			t.Cleanup(func() { close(store.release); close(leaveTurn) })

			// The last snapshot of each before it is held: what a stale
			// answer gives.
			before := eng.State(t.Context())
			clk.Advance(time.Minute)
			store.armed.Store(!tc.turn)
			holdTurn.Store(tc.turn)
			send("stuck", tc.sent)
			select {
			case <-store.held:
			case <-inTurn:
			case <-time.After(10 * time.Second):
				t.Fatal("the scheduler of stuck was never held")
			}

			// The free destination goes on delivering meanwhile.
			send("free", 1)
			for delivered := false; !delivered; {
				select {
				case r := <-reports:
					delivered = r.Queue.Destination == "free" && r.End == delivery.EndDelivered
				case <-time.After(10 * time.Second):
					t.Fatal("free delivered nothing while stuck was held")
				}
			}

			// Within this deadline the held scheduler never comes back; the
			// schedulers answer well within it. With a turn held, the
			// deadline is what lets State return.
			wait := 5 * time.Second
			if tc.turn {
				wait = 300 * time.Millisecond
			}
			ctx, cancel := context.WithTimeout(t.Context(), wait)
			defer cancel()
			got := eng.State(ctx)
			if !tc.turn && ctx.Err() != nil {
				t.Errorf("State waited for its deadline (%s) with a scheduler held in a store call", wait)
			}
			if len(got) != 2 || got[0].Name != "free" || got[1].Name != "stuck" {
				var names []string
				for _, d := range got {
					names = append(names, d.Name)
				}
				t.Fatalf("State gave destinations %v, want [free stuck]", names)
			}
			now := clk.Now()
			free, stuck := got[0], got[1]
			if free.Stale || !free.At.Equal(now) {
				t.Errorf("free: stale %v, taken at %s; want fresh, at %s", free.Stale, free.At, now)
			}
			switch {
			case tc.turn:
				// The last snapshot, as it was taken: its time says how old.
				if !stuck.Stale || !stuck.At.Equal(before[1].At) || !stuck.At.Before(now) {
					t.Errorf("stuck: stale %v, taken at %s; want stale, taken at %s", stuck.Stale, stuck.At, before[1].At)
				}
			default:
				// Its state as it is, and since when it waits.
				if stuck.Stale || !stuck.At.Equal(now) || stuck.StoreWaitSince.IsZero() || stuck.StoreWaitSince.After(now) {
					t.Errorf("stuck: stale %v, taken at %s, waiting on the store since %s; want fresh, at %s, waiting",
						stuck.Stale, stuck.At, stuck.StoreWaitSince, now)
				}
			}
			if tc.name == "outcome write held" && stuck.Unwritten != 1 {
				t.Errorf("stuck: %d outcomes unwritten, want the 1 being written", stuck.Unwritten)
			}
			if tc.name == "read held" && (len(stuck.Queues) != 1 || !stuck.Queues[0].Backlog) {
				t.Errorf("stuck: queues %+v, want web with a backlog to read", stuck.Queues)
			}

			// The metrics say as much: every destination's gauges, with how
			// long stuck has waited on the store, or how old its figures are.
			clk.Advance(30 * time.Second)
			m := admin.NewMetrics(admin.MetricsOptions{Destinations: []string{"free", "stuck"}, State: eng.State, Now: clk.Now})
			rec := httptest.NewRecorder()
			m.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
			body := rec.Body.String()
			want := []string{
				`fanout_concurrency_limit{destination="free"} 64`, `fanout_concurrency_limit{destination="stuck"} 64`,
				`fanout_delivery_state_stale_seconds{destination="free"} 0`,
			}
			if tc.turn {
				// Stale since before the minute and the 30 s.
				want = append(want, `fanout_delivery_store_wait_seconds{destination="stuck"} 0`,
					`fanout_delivery_state_stale_seconds{destination="stuck"} 90`)
			} else {
				want = append(want, `fanout_delivery_state_stale_seconds{destination="stuck"} 0`)
				wait := clk.Now().Sub(stuck.StoreWaitSince).Seconds()
				want = append(want, fmt.Sprintf(`fanout_delivery_store_wait_seconds{destination="stuck"} %g`, wait))
			}
			for _, w := range want {
				if !strings.Contains(body, w+"\n") {
					t.Errorf("/metrics lacks %s", w)
				}
			}
			if t.Failed() {
				t.Logf("/metrics:\n%s", body)
			}

			// So does the admin API, within the deadline of the request.
			st, err := stats.Open(stats.Options{Dir: filepath.Join(dir, "stats")})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { st.Close() })
			api := admin.New(admin.Options{Config: &config.Config{}, Registry: destinations.Registry{}, State: eng.State,
				Stats: st, Clock: clk, Token: "tok"})
			ctx, cancel = context.WithTimeout(t.Context(), wait)
			defer cancel()
			req := httptest.NewRequestWithContext(ctx, http.MethodGet, "/api/v1/queues", nil)
			req.Header.Set("Authorization", "Bearer tok")
			rec = httptest.NewRecorder()
			api.ServeHTTP(rec, req)
			var states []admin.State
			if err := json.Unmarshal(rec.Body.Bytes(), &states); err != nil || len(states) != 2 {
				t.Fatalf("GET /api/v1/queues: %d %s (%v), want both destinations", rec.Code, rec.Body, err)
			}
			as := states[1]
			if tc.turn && (!as.Stale || as.TakenAt == nil || !as.TakenAt.Equal(before[1].At) || as.StoreWaitSince != nil) ||
				!tc.turn && (as.Stale || as.TakenAt != nil || as.StoreWaitSince == nil || !as.StoreWaitSince.Equal(stuck.StoreWaitSince)) {
				t.Errorf("GET /api/v1/queues gave stuck as %s", rec.Body)
			}
		})
	}
}
