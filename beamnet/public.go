package beamnet

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"sync"
	"syscall"
	"time"

	"beam.dev/beam/localapi/apitype"
)

// publicBacklog is how many connections from the edge wait for Accept
// before the next one waits for a slot.
const publicBacklog = 16

// ListenPublic publishes an HTTP route named name on the network's public
// edge (https://NAME.<edge domain>, as `beam expose --name NAME` does) and
// returns the listener its requests arrive on. The edge terminates TLS
// and sends plain HTTP/1.1 (with X-Forwarded-For and X-Forwarded-Proto),
// so serve the listener with an http.Server. Requests never touch a port
// of the host. Closing the listener withdraws the route; so does Close.
func (s *Server) ListenPublic(ctx context.Context, name string) (*PublicListener, error) {
	n, err := s.upNode()
	if err != nil {
		return nil, err
	}
	// The route needs a port of the node for the edge to connect to; the
	// device side of the route listens there and relays to l.
	probe, err := n.Listen("tcp", ":0")
	if err != nil {
		return nil, fmt.Errorf("beamnet: public listener port: %w", err)
	}
	_, ps, _ := net.SplitHostPort(probe.Addr().String())
	probe.Close()
	p, _ := strconv.ParseUint(ps, 10, 16)
	port := uint16(p)
	if port == 0 {
		return nil, fmt.Errorf("beamnet: public listener port: no port in %s", probe.Addr())
	}
	l := &PublicListener{s: s, port: port, conns: make(chan net.Conn, publicBacklog), done: make(chan struct{})}
	l.app = &publicApp{l: l}
	n.SetRouteApp(port, l.app)
	resp, err := n.Expose(ctx, apitype.ExposeRequest{Port: port, Name: name, Proto: "http"})
	if err != nil {
		n.SetRouteApp(port, nil)
		return nil, fmt.Errorf("beamnet: publish %s: %w", name, err)
	}
	l.url, l.host = resp.URL, resp.Host
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		l.close()
		return nil, ErrNotUp
	}
	if s.publics == nil {
		s.publics = map[*PublicListener]struct{}{}
	}
	s.publics[l] = struct{}{}
	s.mu.Unlock()
	return l, nil
}

// PublicListener is a listener for the requests of a public route (see
// Server.ListenPublic).
type PublicListener struct {
	s     *Server
	port  uint16 // the node's port the route is published on
	app   *publicApp
	url   string
	host  string
	conns chan net.Conn // handed over by publicApp.DialApp
	done  chan struct{} // closed by close

	// sendMu is held for reading while DialApp may send on conns, and
	// for writing by close once done is closed, so that close drains
	// every connection sent.
	sendMu sync.RWMutex
	closed bool // guarded by sendMu

	closeOnce sync.Once
	closeErr  error
}

var _ net.Listener = (*PublicListener)(nil)

// URL returns the route's public URL ("https://hello.example.com").
func (l *PublicListener) URL() string { return l.url }

// Host returns the route's public host name.
func (l *PublicListener) Host() string { return l.host }

// Accept waits for the next connection from the edge.
func (l *PublicListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Addr returns the route's address: its host and the node's port the
// edge reaches it on.
func (l *PublicListener) Addr() net.Addr { return publicAddr(l.host + ":" + strconv.Itoa(int(l.port))) }

// Close withdraws the route and stops the listener; connections already
// accepted stay open.
func (l *PublicListener) Close() error {
	l.s.mu.Lock()
	delete(l.s.publics, l)
	l.s.mu.Unlock()
	return l.close()
}

// close stops the listener and withdraws the route.
func (l *PublicListener) close() error {
	l.closeOnce.Do(func() {
		close(l.done)
		l.s.mu.Lock()
		n := l.s.node
		l.s.mu.Unlock()
		if l.host != "" {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			if err := n.Unexpose(ctx, l.host, "http"); err != nil {
				l.closeErr = fmt.Errorf("beamnet: withdraw %s: %w", l.host, err)
			}
			cancel()
		}
		n.SetRouteApp(l.port, nil)
		l.sendMu.Lock()
		l.closed = true
		l.sendMu.Unlock()
		for {
			select {
			case c := <-l.conns:
				c.Close()
			default:
				return
			}
		}
	})
	return l.closeErr
}

// publicApp is the route's app as the device side of the route sees it:
// each dial is one connection the program accepts.
type publicApp struct{ l *PublicListener }

// DialApp returns one end of an in-memory connection whose other end
// Accept returns.
func (a *publicApp) DialApp(ctx context.Context) (net.Conn, error) {
	l := a.l
	l.sendMu.RLock()
	defer l.sendMu.RUnlock()
	if l.closed {
		return nil, fmt.Errorf("beamnet: public listener closed: %w", syscall.ECONNREFUSED)
	}
	relay, app := net.Pipe()
	select {
	case l.conns <- app:
		return relay, nil
	case <-l.done:
	case <-ctx.Done():
		relay.Close()
		app.Close()
		return nil, ctx.Err()
	}
	relay.Close()
	app.Close()
	return nil, fmt.Errorf("beamnet: public listener closed: %w", syscall.ECONNREFUSED)
}

// publicAddr is a PublicListener's address.
type publicAddr string

func (a publicAddr) Network() string { return "tcp" }
func (a publicAddr) String() string  { return string(a) }
