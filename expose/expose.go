// Package expose is the device side of publishing a local port on the
// edge: for each of the device's own routes it listens on the device's
// overlay addresses (inside the netstack) and relays what the edge sends
// to the app. HTTP routes go through a byte-for-byte HTTP/1 relay (with
// an HTTP/2 server for h2c), tls routes through a TLS terminator when the
// device holds its certificates (ACME by DNS-01), and tcp routes to
// another host through a plain splice. It also keeps the request log that
// beam expose prints.
//
// The daemon (package node) owns a Server, hands it the routes of each
// netmap with Sync, and closes it when the engine stops. Nothing here
// knows the daemon.
package expose

import (
	"context"
	"crypto/x509"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"beam.dev/beam/localapi/apitype"
)

// Network is where the device listens for the edge's connections: the
// node's netstack engine (*netstack.Engine) implements it.
type Network interface {
	Listen(network, address string) (net.Listener, error)
}

// Options configures a Server.
type Options struct {
	// Logger receives the server's logs; nil discards them.
	Logger *slog.Logger

	// ACMEDirectoryURL, if set, makes the device terminate TLS itself for
	// its tls routes, with certificates it obtains (and renews) from this
	// ACME directory by DNS-01 through SetTXT. Empty: tls routes pass
	// through to the app, which terminates TLS.
	ACMEDirectoryURL string
	// ACMETrustedRoots, if not nil, are the roots trusted for the ACME
	// directory's HTTPS; nil means the system roots.
	ACMETrustedRoots *x509.CertPool
	// ACMEEmail is the ACME account's contact; may be empty.
	ACMEEmail string
	// CertDir holds the ACME account and certificates. Required with
	// ACMEDirectoryURL.
	CertDir string
	// SetTXT publishes (or, with no values, deletes) a TXT record in the
	// coordinator's public zone, for DNS-01 challenges. Required with
	// ACMEDirectoryURL.
	SetTXT func(ctx context.Context, name string, values []string) error
}

// Route is one of the device's own published routes.
type Route struct {
	Proto    string // "http", "tls", "tcp" or "udp"
	Host     string // the public host name
	Port     uint16 // the local port the route forwards to
	Upstream string // wire.EdgeRoute.Upstream; empty for 127.0.0.1:Port
	// ProxyProtocol, 1 or 2 on a tcp or tls route, is the version of the
	// PROXY protocol header the edge sends the app first
	// (wire.RouteOptions.ProxyProtocol).
	ProxyProtocol int
	// NoInspect keeps the route's exchanges out of the inspector (beam
	// expose --inspect=false); it applies to every route of Port.
	NoInspect bool
	// App, if not nil, is where an http route's requests go instead of
	// 127.0.0.1:Port: a listener of the program the device runs in (an
	// embedding program, package beamnet). Ignored with Upstream set and
	// for other protocols.
	App AppDialer
}

// AppDialer connects to an app that lives in the device's own process.
// Its dynamic type must be comparable (a pointer): Sync compares it to
// keep a route's proxy when nothing changed. beamnet's public listener
// implements it.
type AppDialer interface {
	// DialApp returns a new connection to the app; an error that wraps
	// syscall.ECONNREFUSED makes the device answer the "nothing is
	// listening" page.
	DialApp(ctx context.Context) (net.Conn, error)
}

// Config is what the Server serves: the device's routes on one network.
type Config struct {
	// Net is where to listen; nil serves nothing (the engine is down).
	Net Network
	// Addrs are the device's overlay addresses, listened on at each
	// route's port.
	Addrs []netip.Prefix
	// Routes are the device's own routes.
	Routes []Route
	// Edges are the overlay addresses of the edge nodes: only their
	// PROXY protocol headers and refusal reports are believed, and only
	// their connections go through an http route's proxy.
	Edges []netip.Addr
	// PeerReachesHost reports whether the engine forwards a peer's
	// connection to the device's own port (shields down, host
	// forwarding on, not one of the daemon's own listeners). A peer that
	// is not an edge and connects to an http route's port is then
	// spliced to 127.0.0.1:PORT, which is what it would reach had the
	// port not been published; otherwise, or when the route's app is
	// elsewhere (an upstream, the program's own listener), it is
	// refused. Nil refuses every such peer. The proxy is the edge's:
	// a peer going through it would skip the edge's checks (basic auth,
	// allowed addresses, sign-in) and could send the X-Beam-* headers
	// the edge vouches for. When a tcp or tls route sends the app on
	// that port a PROXY protocol header, the spliced peer's bytes come
	// after a header naming the peer's own overlay address, as the edge's
	// names its client: a header the peer sends is then data, not a
	// client address the app believes.
	PeerReachesHost func(port uint16) bool
}

// Server is the device side of all of the device's routes.
//
// Lock order: the caller's locks, then mu, then the proxies' and the
// terminator's own.
type Server struct {
	opts   Options
	logger *slog.Logger

	mu      sync.Mutex // guards the following fields
	proxies map[uint16]*exposeProxy
	tlsTerm *tlsTerminator // nil until a tls route needs it

	watchMu  sync.Mutex // guards watchers
	watchers map[chan apitype.RequestLog]struct{}

	rec    *store                          // the inspector's exchanges
	limit  atomic.Int64                    // the inspector's body limit; 0 while nobody inspects
	routes atomic.Pointer[[]Route]         // the routes of the last Sync
	hidden atomic.Pointer[map[uint16]bool] // local ports kept out of the inspector (Route.NoInspect)

	flowMu sync.Mutex         // guards flows
	flows  map[flowKey]string // open flows shown in the inspector -> their exchange IDs
}

// New returns a Server serving nothing until Sync.
func New(o Options) *Server {
	logger := o.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Server{opts: o, logger: logger, proxies: map[uint16]*exposeProxy{}, rec: newStore()}
}

// Sync starts and stops listeners and proxies to serve cfg. Connections
// of routes that remain are kept.
func (s *Server) Sync(cfg Config) {
	routes := slices.Clone(cfg.Routes)
	s.routes.Store(&routes)
	hidden := map[uint16]bool{}
	for _, r := range routes {
		if r.NoInspect {
			hidden[r.Port] = true
		}
	}
	s.hidden.Store(&hidden)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.syncProxiesLocked(cfg)
	s.syncTLSLocked(cfg)
}

// Close stops serving every route and waits for the goroutines of its
// connections. The Server may be synced again afterwards.
func (s *Server) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tlsTerm != nil {
		s.tlsTerm.close()
		s.tlsTerm = nil
	}
	for port, p := range s.proxies {
		p.close()
		delete(s.proxies, port)
	}
}

// Watch returns a channel of requests served through the device's HTTP
// routes until ctx ends. Slow readers miss lines rather than slowing
// requests down.
func (s *Server) Watch(ctx context.Context) <-chan apitype.RequestLog {
	ch := make(chan apitype.RequestLog, 256)
	s.watchMu.Lock()
	if s.watchers == nil {
		s.watchers = map[chan apitype.RequestLog]struct{}{}
	}
	s.watchers[ch] = struct{}{}
	s.watchMu.Unlock()
	context.AfterFunc(ctx, func() {
		s.watchMu.Lock()
		delete(s.watchers, ch)
		s.watchMu.Unlock()
	})
	return ch
}

// watching reports whether anyone watches the request log.
func (s *Server) watching() bool {
	s.watchMu.Lock()
	defer s.watchMu.Unlock()
	return len(s.watchers) > 0
}

func (s *Server) publish(l apitype.RequestLog) {
	s.watchMu.Lock()
	defer s.watchMu.Unlock()
	for ch := range s.watchers {
		select {
		case ch <- l:
		default:
		}
	}
}

// captureLimit returns the inspector's body limit, 0 while nobody
// inspects.
func (s *Server) captureLimit() int { return int(s.limit.Load()) }

// captureFor returns the capture func of the routes of a local port: the
// inspector's body limit, or 0 while nobody inspects or the port's routes
// are kept out of the inspector.
func (s *Server) captureFor(port uint16) func() int {
	return func() int {
		if h := s.hidden.Load(); h != nil && (*h)[port] {
			return 0
		}
		return s.captureLimit()
	}
}

// record keeps a captured exchange for the inspector.
func (s *Server) record(x *Exchange) { s.rec.add(x) }

// Flow is a connection (Proto "tcp") or flow ("udp") that the engine
// forwarded to a local port, as it starts (End zero) or ends.
type Flow struct {
	Proto      string
	Client     netip.AddrPort
	Port       uint16
	Start, End time.Time
	// FromClient and ToClient are the bytes each way, once it ended.
	FromClient, ToClient int64
}

// flowKey names a flow between its start and its end.
type flowKey struct {
	proto  string
	client netip.AddrPort
	port   uint16
	start  time.Time
}

// RecordFlow shows f in the inspector, while it runs, if its port is the
// local port of one of the device's tcp, udp or tls routes: its start
// adds it, its end completes it.
func (s *Server) RecordFlow(f Flow) {
	if s.captureFor(f.Port)() == 0 {
		return
	}
	rp := s.routes.Load()
	if rp == nil {
		return
	}
	k := flowKey{f.Proto, f.Client, f.Port, f.Start}
	for _, r := range *rp {
		if r.Port != f.Port || r.Upstream != "" || !(r.Proto == f.Proto || r.Proto == "tls" && f.Proto == "tcp") {
			continue
		}
		x := &Exchange{Kind: r.Proto, Start: f.Start, Host: r.Host, Client: f.Client.String(), Port: f.Port, AnsweredBy: ByApp}
		s.flowMu.Lock()
		defer s.flowMu.Unlock()
		if f.End.IsZero() {
			if s.flows == nil {
				s.flows = map[flowKey]string{}
			}
			s.rec.add(x)
			s.flows[k] = x.ID
			return
		}
		x.Duration, x.Size, x.BytesIn = f.End.Sub(f.Start), f.ToClient, f.FromClient
		if id, ok := s.flows[k]; ok {
			delete(s.flows, k)
			s.rec.replace(id, x)
			return
		}
		s.rec.add(x)
		return
	}
}
