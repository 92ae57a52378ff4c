package destinations

import (
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestNonPublic(t *testing.T) {
	tests := []struct {
		addr string
		want string
	}{
		{"127.0.0.1", "loopback"},
		{"127.8.9.10", "loopback"},
		{"::1", "loopback"},
		{"::ffff:127.0.0.1", "loopback"},
		{"10.1.2.3", "private"},
		{"172.16.0.1", "private"},
		{"172.31.255.255", "private"},
		{"192.168.1.1", "private"},
		{"fd00::1", "private"},
		{"fc00::1", "private"},
		{"::ffff:192.168.0.1", "private"},
		{"169.254.169.254", "link-local"}, // cloud metadata endpoints
		{"fe80::1", "link-local"},
		{"0.0.0.0", "unspecified"},
		{"0.1.2.3", "unspecified"},
		{"::", "unspecified"},
		{"224.0.0.1", "multicast"},
		{"ff02::1", "multicast"},
		{"255.255.255.255", "multicast"},
		{"100.64.0.1", "CGNAT"},
		{"100.127.255.254", "CGNAT"},
		{"8.8.8.8", ""},
		{"100.128.0.1", ""},
		{"172.32.0.1", ""},
		{"2606:4700::1111", ""},
	}
	for _, tt := range tests {
		t.Run(tt.addr, func(t *testing.T) {
			if got := nonPublic(netip.MustParseAddr(tt.addr)); got != tt.want {
				t.Errorf("nonPublic(%s) = %q, want %q", tt.addr, got, tt.want)
			}
		})
	}
}

func TestNewClientAddressGuard(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok")
	}))
	t.Cleanup(srv.Close)
	port := srv.Listener.Addr().(*net.TCPAddr).Port

	tests := []struct {
		name         string
		host         string
		allowPrivate bool
		wantRefused  bool
	}{
		// "localhost" is a name: the guard must judge the address it
		// resolves to, not the URL string.
		{"name resolving to loopback refused", "localhost", false, true},
		{"name resolving to loopback allowed", "localhost", true, false},
		{"loopback IP refused", "127.0.0.1", false, true},
		{"loopback IP allowed", "127.0.0.1", true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := NewClient(5*time.Second, tt.allowPrivate)
			u := "http://" + tt.host + ":" + strconv.Itoa(port) + "/"
			resp, err := c.Get(u)
			if !tt.wantRefused {
				if err != nil {
					t.Fatalf("GET %s: %v", u, err)
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					t.Fatalf("GET %s: status %d", u, resp.StatusCode)
				}
				return
			}
			if err == nil {
				resp.Body.Close()
				t.Fatalf("GET %s: connected, want refused", u)
			}
			var addrErr *AddressError
			if !errors.As(err, &addrErr) {
				t.Fatalf("GET %s: error %v is not an *AddressError", u, err)
			}
			if addrErr.Kind != "loopback" {
				t.Errorf("Kind = %q, want loopback", addrErr.Kind)
			}
			if !strings.Contains(err.Error(), "network.allow_private") {
				t.Errorf("error %q does not name network.allow_private", err)
			}
		})
	}
}

func TestNewClientDoesNotFollowRedirects(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/moved" {
			http.Redirect(w, r, "/new", http.StatusPermanentRedirect)
			return
		}
		t.Errorf("redirect followed to %s", r.URL.Path)
	}))
	t.Cleanup(srv.Close)
	resp, err := NewClient(5*time.Second, true).Post(srv.URL+"/moved", "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusPermanentRedirect {
		t.Fatalf("status %d, want 308", resp.StatusCode)
	}
}
