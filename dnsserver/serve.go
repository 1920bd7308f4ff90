package dnsserver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// Server limits.
const (
	// maxQuerySize is the read buffer for UDP queries; larger datagrams are cut
	// and then fail to parse.
	maxQuerySize = 4096
	// maxStreamConns bounds concurrent TCP clients per ServeStream call; further
	// connections wait in the listener's backlog.
	maxStreamConns = 256
	// zoneStreamConnsPerSource bounds the concurrent TCP connections of one
	// source (an IPv4 address or an IPv6 /64) to a Zone; further ones are
	// closed at once. Resolvers fall back to TCP for truncated answers and
	// need few at a time; without it one address could hold every slot.
	zoneStreamConnsPerSource = 8
	// resolverStreamConnsPerSource is the same for a Resolver, whose
	// clients are the host (all of its programs on one address) and peers.
	resolverStreamConnsPerSource = 32
	// crowdedStreamIdle replaces the idle timeout between queries on a TCP
	// connection (miekg/dns's default is 8 s) while three quarters of
	// maxStreamConns are in use, so that held connections make way.
	crowdedStreamIdle = time.Second
	// shutdownGrace bounds how long a stopping server waits for queries in flight
	// (a forwarded query takes at most forwardTimeout).
	shutdownGrace = 3 * time.Second
)

// ServePacket answers DNS queries arriving on pc until ctx is done or pc is
// closed, then returns. It returns nil in both cases and the read error otherwise.
// pc is closed when ServePacket returns.
func (r *Resolver) ServePacket(ctx context.Context, pc net.PacketConn) error {
	defer r.serving(pc.LocalAddr())()
	return serve(ctx, &dns.Server{PacketConn: pc, Handler: r, UDPSize: maxQuerySize})
}

// ServeStream answers DNS queries over TCP connections accepted from ln until ctx
// is done or ln is closed, then returns. It returns nil in both cases and the accept
// error otherwise. ln is closed when ServeStream returns. At most
// maxStreamConns connections are served at once, and
// resolverStreamConnsPerSource from one source (Zone.ServeStream:
// zoneStreamConnsPerSource); a query the rate limit refuses closes its
// connection.
func (r *Resolver) ServeStream(ctx context.Context, ln net.Listener) error {
	defer r.serving(ln.Addr())()
	return serve(ctx, &dns.Server{Listener: newLimitListener(ln, maxStreamConns, resolverStreamConnsPerSource), Handler: r})
}

// serving tells ResolverOptions.OnServe that addr is being served, and
// returns the func that tells it addr no longer is.
func (r *Resolver) serving(addr net.Addr) func() {
	if r.onServe == nil {
		return func() {}
	}
	r.onServe(addr, true)
	return func() { r.onServe(addr, false) }
}

// serve runs srv until ctx is done or its conn fails. Shutdown is called only after
// the server has started (miekg/dns refuses, and races, otherwise).
func serve(ctx context.Context, srv *dns.Server) error {
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	errc := make(chan error, 1)
	go func() { errc <- srv.ActivateAndServe() }()

	select {
	case <-started:
	case err := <-errc:
		return serveErr(err)
	}
	select {
	case err := <-errc:
		return serveErr(err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	shutErr := srv.ShutdownContext(sctx)
	err := <-errc
	if err = serveErr(err); err != nil {
		return err
	}
	if shutErr != nil {
		return fmt.Errorf("dnsserver: shutdown: %w", shutErr)
	}
	return nil
}

// serveErr maps the end of a server to ServePacket/ServeStream's result.
func serveErr(err error) error {
	if err == nil || errors.Is(err, net.ErrClosed) {
		return nil
	}
	return fmt.Errorf("dnsserver: serve: %w", err)
}

// limitListener lets at most max accepted connections be open at once, and
// at most perSource from one source (see sourceKey): it closes the others
// as soon as it accepts them. While it is crowded, reads wait at most
// crowdedStreamIdle.
type limitListener struct {
	net.Listener
	sem       chan struct{}
	done      chan struct{} // closed by Close
	closeOnce sync.Once
	perSource int

	mu     sync.Mutex // guards perSrc
	perSrc map[netip.Addr]int
}

func newLimitListener(ln net.Listener, max, perSource int) *limitListener {
	return &limitListener{
		Listener:  ln,
		sem:       make(chan struct{}, max),
		done:      make(chan struct{}),
		perSource: perSource,
		perSrc:    map[netip.Addr]int{},
	}
}

// Accept waits for a free slot, then accepts. Closing the listener unblocks it.
func (l *limitListener) Accept() (net.Conn, error) {
	select {
	case l.sem <- struct{}{}:
	case <-l.done:
		return nil, net.ErrClosed
	}
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			<-l.sem
			return nil, err
		}
		src, _ := remoteInfo(c.RemoteAddr())
		key := sourceKey(src)
		l.mu.Lock()
		full := l.perSrc[key] >= l.perSource
		if !full {
			l.perSrc[key]++
		}
		l.mu.Unlock()
		if full {
			c.Close()
			continue
		}
		return &limitConn{Conn: c, l: l, key: key}, nil
	}
}

// release frees the slots of a connection from key.
func (l *limitListener) release(key netip.Addr) {
	l.mu.Lock()
	if l.perSrc[key] <= 1 {
		delete(l.perSrc, key)
	} else {
		l.perSrc[key]--
	}
	l.mu.Unlock()
	<-l.sem
}

// crowded reports whether three quarters of the slots are taken.
func (l *limitListener) crowded() bool { return len(l.sem) >= cap(l.sem)*3/4 }

// Close closes the listener and unblocks Accept.
func (l *limitListener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return l.Listener.Close()
}

// sourceKey is what per-source limits count by: an IPv4 address, or an
// IPv6 address's /64 (one host or site usually has a whole /64).
func sourceKey(a netip.Addr) netip.Addr {
	a = a.Unmap()
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.Addr()
	}
	return a
}

type limitConn struct {
	net.Conn
	l    *limitListener
	key  netip.Addr
	once sync.Once
}

// SetReadDeadline sets t, or sooner while the listener is crowded.
func (c *limitConn) SetReadDeadline(t time.Time) error {
	if c.l.crowded() {
		if soon := time.Now().Add(crowdedStreamIdle); t.IsZero() || t.After(soon) {
			t = soon
		}
	}
	return c.Conn.SetReadDeadline(t)
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.release(c.key) })
	return err
}
