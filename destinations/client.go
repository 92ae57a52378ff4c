package destinations

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"syscall"
	"time"
)

// NewClient returns the HTTP client that delivers to destinations. Every
// request is bounded by timeout (0 means none; fanout always sets one, by
// default delivery.DefaultTimeout). Connecting, and the TLS handshake, are
// bounded by connectTimeout as well.
//
// Unless allowPrivate is set, the client refuses to connect to loopback,
// private (RFC 1918, RFC 4193), link-local, unspecified, multicast and CGNAT
// addresses, so that a destination URL cannot reach the machine fanout runs
// on or its internal network (SSRF). The check runs on the address being
// dialled, after DNS resolution, so a public name that resolves to 127.0.0.1
// is refused just as "http://127.0.0.1/" is, and a DNS answer cannot change
// between the check and the connection (DNS rebinding). The error is an
// *AddressError.
//
// The client does not follow redirects (a 3xx is the destination's answer,
// classified as Rejected: re-POSTing an event to another place is the
// user's decision) and ignores HTTP_PROXY and friends, since a proxy would
// dial the destination on our behalf, beyond the address guard.
//
// The transport is tuned for many concurrent requests to few hosts: up to
// 256 idle keep-alive connections per host, and HTTP/2 where the server
// offers it.
func NewClient(timeout time.Duration, allowPrivate bool) *http.Client {
	dialer := &net.Dialer{
		Timeout:   connectTimeout,
		KeepAlive: 30 * time.Second,
	}
	if timeout > 0 && timeout < dialer.Timeout {
		dialer.Timeout = timeout
	}
	if !allowPrivate {
		dialer.Control = guardDial
	}
	transport := &http.Transport{
		Proxy:                 nil,
		DialContext:           dialer.DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          4096,
		MaxIdleConnsPerHost:   256,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   connectTimeout,
		ExpectContinueTimeout: time.Second,
	}
	return &http.Client{
		Transport: transport,
		Timeout:   timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
}

// connectTimeout bounds dialing and the TLS handshake when the request
// timeout is longer, or none. It is the client's own, not the default
// request timeout (delivery.DefaultTimeout), though both are 10s.
const connectTimeout = 10 * time.Second

// AddressError is the error of a connection the client refused because its
// address is not public.
type AddressError struct {
	// Addr is the refused address, after DNS resolution.
	Addr netip.Addr
	// Kind says what the address is: "loopback", "private", ...
	Kind string
}

func (e *AddressError) Error() string {
	return fmt.Sprintf("refused to connect to %s, a %s address: set network.allow_private: true to deliver to loopback, private or link-local addresses",
		e.Addr, e.Kind)
}

// guardDial is a net.Dialer.Control function: it runs once per address
// tried, after resolution and before connecting.
func guardDial(network, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("refused to connect to %q: not an IP address and port", address)
	}
	if kind := nonPublic(ap.Addr()); kind != "" {
		return &AddressError{Addr: ap.Addr().Unmap(), Kind: kind}
	}
	return nil
}

var (
	// cgnat is the shared address space of carrier-grade NAT (RFC 6598),
	// which also reaches internal networks of some clouds.
	cgnat = netip.MustParsePrefix("100.64.0.0/10")
	// thisNetwork is 0.0.0.0/8 (RFC 1122): Linux treats 0.x.y.z as local.
	thisNetwork = netip.MustParsePrefix("0.0.0.0/8")
	broadcast   = netip.MustParseAddr("255.255.255.255")
)

// nonPublic returns what kind of non-public address a is, or "" when a is
// public. IPv4-mapped IPv6 addresses are judged as the IPv4 address they
// carry, so ::ffff:127.0.0.1 does not slip through.
func nonPublic(a netip.Addr) string {
	a = a.Unmap()
	switch {
	case a.IsLoopback():
		return "loopback"
	case a.IsPrivate():
		return "private"
	case a.IsLinkLocalUnicast():
		return "link-local"
	case a.IsUnspecified(), thisNetwork.Contains(a):
		return "unspecified"
	case a.IsMulticast(), a == broadcast:
		return "multicast"
	case cgnat.Contains(a):
		return "CGNAT"
	}
	return ""
}
