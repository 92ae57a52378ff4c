package fanouttest

import (
	"errors"
	"io"
	"net"
	"sync"
	"testing"
)

// Partition is a TCP proxy on loopback that a test puts between a node and
// a server (PostgreSQL) to cut the link between them as a network
// partition would, not as a closed port would: during a Cut, the
// connections stay open and nothing is closed or reset, but no byte moves
// in either direction, and a new connection is accepted but not forwarded.
// Heal resumes every connection where it stopped: the bytes held back flow,
// as TCP retransmission would deliver them once the network is back, and
// the connections accepted meanwhile are dialed.
//
// A close seen on one side during a Cut is held back like the bytes: it
// reaches the other side only after Heal, behind what was sent before it.
type Partition struct {
	// Addr is the proxy's loopback address, host:port, to connect to in
	// place of the target's.
	Addr string

	network, target string
	ln              net.Listener
	done            chan struct{} // closed by Close

	mu    sync.Mutex
	open  chan struct{} // closed while the link is up; a new one at each Cut
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

// NewPartition starts a proxy on a free loopback TCP port that forwards to
// address on network ("tcp", or "unix" for a server on a Unix socket, as
// pgtest's PostgreSQL is). It is closed in t.Cleanup.
func NewPartition(t testing.TB, network, address string) *Partition {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Partition{
		Addr:    ln.Addr().String(),
		network: network,
		target:  address,
		ln:      ln,
		done:    make(chan struct{}),
		open:    make(chan struct{}),
		conns:   make(map[net.Conn]struct{}),
	}
	close(p.open)
	p.wg.Go(p.accept)
	t.Cleanup(p.Close)
	return p
}

// Cut stops every byte between the two sides until Heal. Cutting a cut link
// does nothing.
func (p *Partition) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.open:
		p.open = make(chan struct{})
	default:
	}
}

// Heal lets the bytes flow again, those held back first. Healing a link
// that is up does nothing.
func (p *Partition) Heal() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.open:
	default:
		close(p.open)
	}
}

// Close stops the proxy: the listener and every connection, on both sides,
// are closed, and Close waits for its goroutines.
func (p *Partition) Close() {
	p.mu.Lock()
	select {
	case <-p.done:
		p.mu.Unlock()
		return
	default:
	}
	close(p.done)
	p.ln.Close()
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// wait blocks until the link is up; false when the proxy is closed.
func (p *Partition) wait() bool {
	p.mu.Lock()
	open := p.open
	p.mu.Unlock()
	select {
	case <-open:
		return true
	case <-p.done:
		return false
	}
}

// track registers c to be closed by Close; false (and c closed) if the
// proxy is closed already.
func (p *Partition) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.done:
		c.Close()
		return false
	default:
		p.conns[c] = struct{}{}
		return true
	}
}

func (p *Partition) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	c.Close()
}

func (p *Partition) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return // closed
		}
		if !p.track(c) {
			return
		}
		p.wg.Go(func() { p.forward(c) })
	}
}

// forward dials the target for the accepted connection c, once the link is
// up, and copies both ways until both sides are done.
func (p *Partition) forward(c net.Conn) {
	defer p.untrack(c)
	if !p.wait() {
		return
	}
	up, err := net.Dial(p.network, p.target)
	if err != nil {
		return // the target is down: the client sees its connection closed
	}
	if !p.track(up) {
		return
	}
	defer p.untrack(up)
	var both sync.WaitGroup
	both.Go(func() { p.copy(up, c) })
	both.Go(func() { p.copy(c, up) })
	both.Wait()
}

// copy moves bytes from src to dst while the link is up: each chunk read is
// written only once the link is up, so a Cut holds it (and everything after
// it) back until Heal. The end of src is passed on the same way, as a
// half-close, so that a side that stops writing may still read.
func (p *Partition) copy(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if !p.wait() {
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				src.Close() // the other side is gone: so is this one
				return
			}
		}
		if err != nil {
			if !p.wait() {
				return
			}
			if hc, ok := dst.(interface{ CloseWrite() error }); ok && errors.Is(err, io.EOF) {
				hc.CloseWrite()
				return
			}
			// Reset or closed: end both sides.
			dst.Close()
			return
		}
	}
}
