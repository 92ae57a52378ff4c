package groupcommit

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"testing/synctest"

	"github.com/fanout/fanout/internal/event"
	"github.com/fanout/fanout/internal/jobstore"
)

// harness drives a Committer of named requests from a script. Its commit
// function records each group it is handed and holds it until the script
// answers it, so the script decides when a commit ends and sees which calls
// were waiting meanwhile. The tests run in a synctest bubble: after each
// step, synctest.Wait returns once every goroutine is blocked, so "a call
// is waiting to be taken" or "a commit has started" is a fact, not a guess,
// and nothing sleeps.
type harness struct {
	c *Committer[string]

	mu       sync.Mutex
	started  []*commitRun // every commit begun, in order
	checked  int          // how many of started the script has looked at
	results  map[string]error
	cancels  map[string]context.CancelFunc
	launched []string // the calls the script started, and "Close"
}

// commitRun is one commit in progress.
type commitRun struct {
	reqs   []string
	answer chan error
}

func (h *harness) commit(calls []*Call[string]) {
	run := &commitRun{answer: make(chan error)}
	for _, c := range calls {
		run.reqs = append(run.reqs, c.Req)
	}
	h.mu.Lock()
	h.started = append(h.started, run)
	h.mu.Unlock()
	AnswerAll(calls, <-run.answer)
}

// step is one line of a script; the harness waits for the bubble to settle
// after each.
type step func(t *testing.T, h *harness)

// call starts Commit of a request named name, of the given size, on a
// goroutine of its own.
func call(name string, size int) step {
	return func(t *testing.T, h *harness) {
		ctx, cancel := context.WithCancel(t.Context())
		h.mu.Lock()
		h.cancels[name] = cancel
		h.launched = append(h.launched, name)
		h.mu.Unlock()
		go func() {
			err := h.c.Commit(ctx, name, size)
			h.mu.Lock()
			h.results[name] = err
			h.mu.Unlock()
		}()
	}
}

// cancel ends the context of the call named.
func cancel(name string) step {
	return func(t *testing.T, h *harness) { h.cancels[name]() }
}

// closeCommitter calls Close on a goroutine of its own; returned("Close")
// checks that it has returned.
func closeCommitter() step {
	return func(t *testing.T, h *harness) {
		h.mu.Lock()
		h.launched = append(h.launched, "Close")
		h.mu.Unlock()
		go func() {
			h.c.Close()
			h.mu.Lock()
			h.results["Close"] = nil
			h.mu.Unlock()
		}()
	}
}

// commits checks that exactly one more commit has started since the last
// check, with the named requests in that order.
func commits(names ...string) step {
	return func(t *testing.T, h *harness) {
		h.mu.Lock()
		defer h.mu.Unlock()
		if len(h.started) != h.checked+1 {
			t.Fatalf("%d new commits started, want 1 of %v", len(h.started)-h.checked, names)
		}
		if got := h.started[h.checked].reqs; !slices.Equal(got, names) {
			t.Fatalf("commit %d got %v, want %v", h.checked, got, names)
		}
		h.checked++
	}
}

// noCommit checks that no commit has started since the last check.
func noCommit() step {
	return func(t *testing.T, h *harness) {
		h.mu.Lock()
		defer h.mu.Unlock()
		if n := len(h.started) - h.checked; n > 0 {
			t.Fatalf("a commit of %v started, want none", h.started[h.checked].reqs)
		}
	}
}

// answer ends commit n (in the order they started) with err.
func answer(n int, err error) step {
	return func(t *testing.T, h *harness) {
		h.mu.Lock()
		run := h.started[n]
		h.mu.Unlock()
		run.answer <- err
	}
}

// returned checks that each call named has returned err.
func returned(err error, names ...string) step {
	return func(t *testing.T, h *harness) {
		h.mu.Lock()
		defer h.mu.Unlock()
		for _, name := range names {
			got, ok := h.results[name]
			if !ok {
				t.Fatalf("%s has not returned, want %v", name, err)
			}
			if !errors.Is(got, err) {
				t.Fatalf("%s returned %v, want %v", name, got, err)
			}
		}
	}
}

// waiting checks that none of the calls named has returned.
func waiting(names ...string) step {
	return func(t *testing.T, h *harness) {
		h.mu.Lock()
		defer h.mu.Unlock()
		for _, name := range names {
			if err, ok := h.results[name]; ok {
				t.Fatalf("%s returned %v, want it still waiting", name, err)
			}
		}
	}
}

var (
	errDisk        = errors.New("disk on fire")
	errStoreClosed = errors.New("the store is closed")
)

func TestCommitter(t *testing.T) {
	tests := []struct {
		name  string
		opts  Options
		steps []step
	}{
		{
			name: "one call alone is a group, answered by its commit",
			steps: []step{
				call("a", 1), commits("a"), waiting("a"),
				answer(0, nil), returned(nil, "a"),
			},
		},
		{
			name: "calls that arrive while a group commits form the next group",
			steps: []step{
				call("a", 1), commits("a"),
				call("b", 1), call("c", 1), call("d", 1), noCommit(),
				answer(0, nil), returned(nil, "a"), commits("b", "c", "d"), waiting("b", "c", "d"),
				answer(1, nil), returned(nil, "b", "c", "d"),
			},
		},
		{
			name: "the commit's error is the answer of every call of its group",
			steps: []step{
				call("a", 1), commits("a"),
				call("b", 1), call("c", 1),
				answer(0, nil), commits("b", "c"),
				answer(1, errDisk), returned(errDisk, "b", "c"), returned(nil, "a"),
			},
		},
		{
			name: "MaxBytes ends a group at the call that reaches it",
			opts: Options{MaxBytes: 10},
			steps: []step{
				call("a", 4), commits("a"),
				call("b", 4), call("c", 4), call("d", 4), call("e", 4),
				answer(0, nil), commits("b", "c", "d"),
				answer(1, nil), commits("e"),
				answer(2, nil), returned(nil, "a", "b", "c", "d", "e"),
			},
		},
		{
			name: "a call larger than MaxBytes is a group of its own",
			opts: Options{MaxBytes: 10},
			steps: []step{
				call("a", 1), commits("a"),
				call("big", 50), call("c", 1),
				answer(0, nil), commits("big"),
				answer(1, nil), commits("c"),
				answer(2, nil), returned(nil, "a", "big", "c"),
			},
		},
		{
			name: "InFlight 2: a second group commits beside the first, the third waits for a slot and grows meanwhile",
			opts: Options{InFlight: 2},
			steps: []step{
				call("a", 1), commits("a"),
				call("b", 1), commits("b"),
				call("c", 1), call("d", 1), call("e", 1), noCommit(),
				// The second group ends first: its slot is the one freed.
				answer(1, nil), returned(nil, "b"), waiting("a"), commits("c", "d", "e"),
				answer(0, nil), answer(2, nil), returned(nil, "a", "c", "d", "e"),
			},
		},
		{
			name: "a caller that gives up before it is taken returns at once and is never committed",
			steps: []step{
				call("a", 1), commits("a"),
				call("b", 1), cancel("b"), returned(context.Canceled, "b"),
				answer(0, nil), returned(nil, "a"), noCommit(),
			},
		},
		{
			name: "a caller that gives up after it is taken is left out of its group",
			opts: Options{InFlight: 2},
			steps: []step{
				call("a", 1), commits("a"),
				call("b", 1), commits("b"),
				// c is taken and waits with the committer for a slot.
				call("c", 1), call("d", 1), cancel("c"), returned(context.Canceled, "c"),
				answer(0, nil), commits("d"),
				answer(1, nil), answer(2, nil), returned(nil, "a", "b", "d"),
			},
		},
		{
			name: "a group whose callers have all gone is not committed",
			opts: Options{InFlight: 2},
			steps: []step{
				call("a", 1), commits("a"),
				call("b", 1), commits("b"),
				call("c", 1), cancel("c"), returned(context.Canceled, "c"),
				answer(0, nil), noCommit(),
				call("d", 1), commits("d"),
				answer(1, nil), answer(2, nil), returned(nil, "a", "b", "d"),
			},
		},
		{
			name: "a caller that gives up while its group commits returns at once, and the commit goes on",
			steps: []step{
				call("a", 1), call("b", 1), commits("a"),
				cancel("a"), returned(context.Canceled, "a"),
				answer(0, nil), commits("b"),
				answer(1, nil), returned(nil, "b"),
			},
		},
		{
			name: "Close answers waiting calls with ErrClosed and returns once the commit in flight has",
			opts: Options{ErrClosed: errStoreClosed},
			steps: []step{
				call("a", 1), commits("a"),
				call("b", 1), closeCommitter(), returned(errStoreClosed, "b"), waiting("a", "Close"),
				answer(0, nil), returned(nil, "a", "Close"), noCommit(),
				call("c", 1), returned(errStoreClosed, "c"),
			},
		},
		{
			name: "Close with InFlight 2 waits for both groups in flight",
			opts: Options{InFlight: 2},
			steps: []step{
				call("a", 1), commits("a"),
				call("b", 1), commits("b"),
				closeCommitter(), waiting("Close"),
				answer(1, nil), waiting("Close", "a"),
				answer(0, nil), returned(nil, "a", "b", "Close"),
			},
		},
		{
			name: "after Close, calls return ErrClosed; Close again returns too",
			steps: []step{
				closeCommitter(), returned(nil, "Close"),
				call("a", 1), returned(ErrClosed, "a"), noCommit(),
				closeCommitter(), returned(nil, "Close"),
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				h := &harness{results: map[string]error{}, cancels: map[string]context.CancelFunc{}}
				c, err := Start(tt.opts, h.commit)
				if err != nil {
					t.Fatal(err)
				}
				h.c = c
				for _, s := range tt.steps {
					s(t, h)
					synctest.Wait()
				}
				// The script has seen every commit, and every call
				// has returned: no answer is missing.
				noCommit()(t, h)
				h.mu.Lock()
				for _, name := range h.launched {
					if _, done := h.results[name]; !done {
						t.Errorf("%s never returned", name)
					}
				}
				h.mu.Unlock()
				c.Close()
			})
		})
	}
}

func TestOptionsValidation(t *testing.T) {
	tests := []struct {
		opts Options
		want string // "" when valid
	}{
		{Options{}, ""},
		{Options{MaxBytes: 1, InFlight: 4}, ""},
		{Options{MaxBytes: -1}, "MaxBytes cannot be negative, got -1"},
		{Options{InFlight: -2}, "InFlight cannot be negative, got -2"},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%+v", tt.opts), func(t *testing.T) {
			c, err := Start(tt.opts, func(calls []*Call[int]) { AnswerAll(calls, nil) })
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Start = %v, want no error", err)
				}
				c.Close()
				return
			}
			if err == nil || err.Error() != "groupcommit: "+tt.want {
				t.Fatalf("Start = %v, want %q", err, "groupcommit: "+tt.want)
			}
		})
	}
}

func TestAnnounce(t *testing.T) {
	es := make([]jobstore.Entry, 3)
	for i := range es {
		es[i] = jobstore.Entry{Event: event.Event{Source: "web", MessageID: fmt.Sprint("m", i)}, Destinations: []string{"hook"}}
	}
	tests := []struct {
		name string
		dup  []bool
		want []string // messageIds announced; nil: no announcement
	}{
		{"none a duplicate", []bool{false, false, false}, []string{"m0", "m1", "m2"}},
		{"duplicates left out", []bool{true, false, true}, []string{"m1"}},
		{"all duplicates: nothing to announce", []bool{true, true, true}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []jobstore.Appended
			Announce(func(a jobstore.Appended) { got = append(got, a) }, es, tt.dup, 42)
			if tt.want == nil {
				if len(got) != 0 {
					t.Fatalf("announced %+v, want nothing", got)
				}
				return
			}
			if len(got) != 1 || got[0].First != 42 {
				t.Fatalf("announced %+v, want one announcement from Seq 42", got)
			}
			var ids []string
			for _, e := range got[0].Entries {
				ids = append(ids, e.Event.MessageID)
			}
			if !slices.Equal(ids, tt.want) {
				t.Errorf("announced %v, want %v", ids, tt.want)
			}
		})
	}
	// Without an Applied function there is nobody to tell.
	Announce(nil, es, make([]bool, len(es)), 1)
}
