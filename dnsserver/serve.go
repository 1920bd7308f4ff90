package dnsserver

import (
	"context"
	"errors"
	"fmt"
	"net"
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
// error otherwise. ln is closed when ServeStream returns.
func (r *Resolver) ServeStream(ctx context.Context, ln net.Listener) error {
	defer r.serving(ln.Addr())()
	return serve(ctx, &dns.Server{Listener: newLimitListener(ln, maxStreamConns), Handler: r})
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

// limitListener lets at most n accepted connections be open at once.
type limitListener struct {
	net.Listener
	sem       chan struct{}
	done      chan struct{} // closed by Close
	closeOnce sync.Once
}

func newLimitListener(ln net.Listener, n int) *limitListener {
	return &limitListener{Listener: ln, sem: make(chan struct{}, n), done: make(chan struct{})}
}

// Accept waits for a free slot, then accepts. Closing the listener unblocks it.
func (l *limitListener) Accept() (net.Conn, error) {
	select {
	case l.sem <- struct{}{}:
	case <-l.done:
		return nil, net.ErrClosed
	}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.sem
		return nil, err
	}
	return &limitConn{Conn: c, release: func() { <-l.sem }}, nil
}

// Close closes the listener and unblocks Accept.
func (l *limitListener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return l.Listener.Close()
}

type limitConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}
