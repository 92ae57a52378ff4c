package server_test

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fanout/fanout/destinations/registry"
	"github.com/fanout/fanout/internal/server"
)

const timeoutWriteKey = "wk_timeout_test"

// timeoutBundle is a running server with short HTTP timeouts.
type timeoutBundle struct {
	srv *server.Server
}

// timeoutSetup runs a server with one source and one webhook destination
// (an httptest server answering 200), with opts' timeouts. It is stopped in
// t.Cleanup.
func timeoutSetup(t *testing.T, opts server.Options) *timeoutBundle {
	t.Helper()
	sink := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, `{"ok":true}`)
	}))
	t.Cleanup(sink.Close)
	path := configFile(t, t.TempDir(), fmt.Sprintf(`sources:
  - {name: web, write_key: %s}
destinations:
  - name: hook
    type: webhook
    sources: [web]
    settings: {url: %s}
`, timeoutWriteKey, sink.URL))
	opts.Logger = slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	r := run(t, path, registry.All(), opts)
	t.Cleanup(func() {
		r.stop()
		if r.err != nil {
			t.Errorf("Run: %v", r.err)
		}
	})
	return &timeoutBundle{srv: r.srv}
}

// slowloris opens a connection to addr and sends a request's headers a
// byte every 20 ms, never ending them, until the server closes the
// connection or stop is closed. It calls connected once the dial is done
// (failed or not), and cut as soon as it sees the server close the
// connection. It returns when that was, measured from the dial, or an
// error.
func slowloris(addr string, connected, cut func(), stop <-chan struct{}) (time.Duration, error) {
	start := time.Now()
	conn, err := net.Dial("tcp", addr)
	connected()
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	closed := make(chan time.Duration, 1)
	go func() {
		// The server sends nothing before the headers end; a read
		// returns when it closes the connection.
		io.Copy(io.Discard, conn)
		cut()
		closed <- time.Since(start)
	}()
	headers := "POST /v1/track HTTP/1.1\r\nHost: fanout\r\nX-Slow: " + strings.Repeat("a", 1<<20)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for i := 0; ; i++ {
		select {
		case d := <-closed:
			return d, nil
		case <-stop:
			return 0, errors.New("still open when the test gave up")
		case <-tick.C:
		}
		if i >= len(headers) {
			return 0, errors.New("the server read 1 MB of headers")
		}
		// A failed write means the server is gone; the reader sees it too.
		conn.Write([]byte{headers[i]})
	}
}

// TestSlowClientsAreCut checks ReadHeaderTimeout on both listeners: a client
// that sends its headers a byte at a time is disconnected once the timeout
// passes, well before the default's, and meanwhile the listener keeps
// answering other clients.
func TestSlowClientsAreCut(t *testing.T) {
	const (
		readHeaderTimeout = 1500 * time.Millisecond
		// bound is how long a slow client may hold its connection: the
		// timeout plus slack for a busy machine, and less than
		// server.DefaultReadHeaderTimeout, so that a server ignoring the
		// option fails.
		bound = 4 * time.Second
		slow  = 8 // slow clients at once
	)
	if bound >= server.DefaultReadHeaderTimeout {
		t.Fatalf("bound %v does not tell the option from the default %v", bound, server.DefaultReadHeaderTimeout)
	}
	b := timeoutSetup(t, server.Options{ReadHeaderTimeout: readHeaderTimeout})

	for _, tc := range []struct {
		name string
		addr string
		// request is an ordinary request that must be answered 200 while
		// the slow clients hold their connections.
		request func(n int) (*http.Request, error)
	}{
		{"tracking", b.srv.TrackingAddr(), func(n int) (*http.Request, error) {
			req, err := http.NewRequest(http.MethodPost, "http://"+b.srv.TrackingAddr()+"/v1/track",
				strings.NewReader(fmt.Sprintf(`{"userId":"u1","event":"Timeout Checked","messageId":"to-%d"}`, n)))
			if err == nil {
				req.SetBasicAuth(timeoutWriteKey, "")
				req.Header.Set("Content-Type", "application/json")
			}
			return req, err
		}},
		{"admin", b.srv.AdminAddr(), func(int) (*http.Request, error) {
			return http.NewRequest(http.MethodGet, "http://"+b.srv.AdminAddr()+"/healthz", nil)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stop := make(chan struct{})
			giveUp := time.AfterFunc(2*bound, func() { close(stop) })
			defer giveUp.Stop()

			type cut struct {
				after time.Duration
				err   error
			}
			var (
				cuts      = make(chan cut, slow)
				wg        sync.WaitGroup
				connected sync.WaitGroup
				nCut      atomic.Int32
			)
			connected.Add(slow)
			for range slow {
				wg.Go(func() {
					d, err := slowloris(tc.addr, connected.Done, func() { nCut.Add(1) }, stop)
					cuts <- cut{d, err}
				})
			}
			allCut := make(chan struct{})
			go func() { wg.Wait(); close(allCut) }()
			connected.Wait()

			// Ordinary requests, one after the other, until the slow
			// clients are cut off: each must be answered, and at least
			// one while all of them were still connected.
			client := &http.Client{Timeout: bound}
			served, servedEarly := 0, 0
			pace := time.NewTicker(10 * time.Millisecond)
			defer pace.Stop()
		ordinary:
			for n := 0; ; n++ {
				select {
				case <-allCut:
					break ordinary
				case <-pace.C:
					req, err := tc.request(n)
					if err != nil {
						t.Fatal(err)
					}
					res, err := client.Do(req)
					if err != nil {
						t.Fatalf("ordinary request %d while slow clients are connected: %v", n, err)
					}
					io.Copy(io.Discard, res.Body)
					res.Body.Close()
					if res.StatusCode != http.StatusOK {
						t.Fatalf("ordinary request %d while slow clients are connected: status %d, want 200", n, res.StatusCode)
					}
					served++
					if nCut.Load() == 0 {
						servedEarly++
					}
				}
			}
			close(cuts)
			var first, last time.Duration
			for c := range cuts {
				switch {
				case c.err != nil:
					t.Errorf("slow client: %v", c.err)
				case c.after > bound:
					t.Errorf("slow client cut after %v, want within %v (ReadHeaderTimeout %v)", c.after, bound, readHeaderTimeout)
				case c.after < readHeaderTimeout/2:
					t.Errorf("slow client cut after %v, before ReadHeaderTimeout %v: not by the timeout", c.after, readHeaderTimeout)
				default:
					if first == 0 || c.after < first {
						first = c.after
					}
					last = max(last, c.after)
				}
			}
			t.Logf("%d slow clients cut after %v to %v", slow, first.Round(time.Millisecond), last.Round(time.Millisecond))
			if servedEarly == 0 {
				t.Errorf("no ordinary request answered while all %d slow clients were connected (%d answered in all)", slow, served)
			}
			t.Logf("%d ordinary requests answered, %d of them before any slow client was cut", served, servedEarly)
		})
	}
}

// TestTimeoutOptionsValidation checks that a negative timeout, which
// net/http would take for none at all, is refused by name.
func TestTimeoutOptionsValidation(t *testing.T) {
	_, err := server.New(server.Options{ReadHeaderTimeout: -time.Second})
	if err == nil || !strings.Contains(err.Error(), "ReadHeaderTimeout cannot be negative") {
		t.Errorf("New with a negative ReadHeaderTimeout = %v, want an error naming ReadHeaderTimeout", err)
	}
}
