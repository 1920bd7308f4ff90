// Package edge is Beam's public ingress: it puts ports of overlay devices on
// public names and ports.
//
// An Edge serves four kinds of routes:
//
//   - "http": a Host-routed reverse proxy (HTTP/1.1, HTTP/2 over TLS, h2c,
//     WebSocket, SSE, gRPC) reached through ServeHTTPListener (plain) or
//     ServeTLSListener (TLS terminated at the edge).
//   - "tls": SNI passthrough; ServeTLSListener peeks the ClientHello and
//     splices the raw TLS stream to the device, which holds the certificate.
//   - "tcp": a public port spliced to a device port, optionally preceded by a
//     PROXY protocol v1 or v2 header.
//   - "udp": datagrams relayed per client flow.
//
// The edge never opens listeners and never reaches the network by itself: the
// caller hands it listeners, and every connection toward a device goes through
// Options.Dial, which dials the overlay. Routes arrive as an immutable snapshot
// through SetRoutes, which validates them and swaps them in atomically; the
// edge dials only targets of the current snapshot.
//
// Every route carries a Policy (basic auth, CIDR allow/deny, per-client rate
// limit, header rewriting, CORS) enforced at the edge before anything reaches
// the device. Several targets make a pool, balanced round-robin or by least
// connections, with passive and active health checks.
package edge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"beam.dev/beam/internal/connlimit"
)

// Defaults for the zero values of Options fields.
const (
	DefaultMaxHeaderBytes    = 64 << 10
	DefaultReadHeaderTimeout = 10 * time.Second
	DefaultIdleTimeout       = 2 * time.Minute
	DefaultMaxConnsPerClient = 512
	DefaultMaxConns          = 10000
	DefaultMaxAuthFailures   = 10
	DefaultAuthLockout       = time.Minute
	DefaultBodyTimeout       = 30 * time.Second
	DefaultBodyMinRate       = 1024
	DefaultDialTimeout       = 10 * time.Second
	DefaultHealthInterval    = 2 * time.Second
	DefaultDownFor           = 5 * time.Second
	DefaultUDPIdleTimeout    = 60 * time.Second
	DefaultMaxUDPFlows       = 8192
)

// ErrClosed is returned by the Serve methods and SetRoutes once the Edge is
// closed.
var ErrClosed = errors.New("edge: closed")

// Options configures an Edge. Only Dial is required.
type Options struct {
	// Dial dials the overlay: network is "tcp" or "udp" and addr is an
	// overlay "ip:port" of a route target. It must honour ctx. When the
	// device is reachable but nothing listens on the port, the returned error
	// should match syscall.ECONNREFUSED (errors.Is) so the edge can say so.
	// Required.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)

	// Logger receives the edge's logs. If nil, logs are discarded.
	Logger *slog.Logger

	// Domain is the public domain, e.g. "example.test". Routes that are not
	// marked CustomDomain must be exactly one label under it
	// ("alpha.example.test"). Required.
	Domain string

	// OverlayPrefixes are the prefixes route targets must lie in. If nil,
	// 100.64.0.0/10 and the ULA range fd00::/8. Whatever this says, loopback,
	// link-local (including 169.254.169.254), unspecified, multicast and the
	// overlay service address 100.100.100.100 are refused.
	OverlayPrefixes []netip.Prefix

	// MaxHeaderBytes caps the size of a request's header. If zero,
	// DefaultMaxHeaderBytes (64 KiB).
	MaxHeaderBytes int

	// ReadHeaderTimeout bounds the time a client may take to send a request
	// header, a TLS ClientHello and a TLS handshake (slowloris). If zero,
	// DefaultReadHeaderTimeout (10 s). Request bodies are bounded by
	// BodyTimeout; responses have no time limit.
	ReadHeaderTimeout time.Duration

	// IdleTimeout closes idle keep-alive client connections. If zero,
	// DefaultIdleTimeout (2 min).
	IdleTimeout time.Duration

	// MaxConnsPerClient caps the concurrent connections (all listeners
	// together) of one client IP (IPv6: one /64). If zero,
	// DefaultMaxConnsPerClient (512); negative means no cap.
	MaxConnsPerClient int

	// MaxConns caps the concurrent client TCP connections of all
	// listeners together, so that clients from many addresses cannot take
	// every file descriptor of the process. Once it is reached, a new
	// connection pushes out the oldest one of the client (IPv4 address,
	// IPv6 /48) holding the most, unless its own client would then hold
	// as many, when it is closed as soon as it is accepted: clients that
	// fill the cap push out their own connections, not other people's.
	// If zero, DefaultMaxConns (10000); negative means no cap.
	MaxConns int

	// BodyTimeout and BodyMinRate bound how slowly a client may send a
	// request body: a body read fails once BodyTimeout passes without a
	// byte, or once the body is slower than BodyMinRate bytes a second
	// after a first BodyTimeout of grace (it gains a second per
	// BodyMinRate bytes received). gRPC requests, whose bodies are
	// streams, are exempt. If zero, DefaultBodyTimeout (30 s) and
	// DefaultBodyMinRate (1 KiB/s); a negative BodyTimeout means no limit.
	BodyTimeout time.Duration
	BodyMinRate int

	// MaxAuthFailures and AuthLockout throttle password guessing on
	// basic-auth routes, rate limit or not: a client (IPv4 address, IPv6
	// /64) whose credentials fail MaxAuthFailures times within
	// AuthLockout gets 429 Too Many Requests, with Retry-After, until
	// AuthLockout has passed since its first failure. If zero,
	// DefaultMaxAuthFailures (10) and DefaultAuthLockout (1 min); a
	// negative MaxAuthFailures turns the throttle off.
	MaxAuthFailures int
	AuthLockout     time.Duration

	// DialTimeout bounds one dial toward a device. If zero,
	// DefaultDialTimeout (10 s).
	DialTimeout time.Duration

	// SignIn checks the people who reach routes whose Policy.SignIn is
	// set (see SignIn). Nil refuses every request to such routes (503):
	// a route never runs without the sign-in its owner asked for.
	SignIn SignIn

	// HealthInterval is the period of active health checks (a TCP dial) of
	// the members of pools (routes with several targets). If zero,
	// DefaultHealthInterval (2 s).
	HealthInterval time.Duration

	// DownFor is how long a target whose dial failed is skipped, unless an
	// active health check succeeds earlier. If zero, DefaultDownFor (5 s).
	DownFor time.Duration

	// UDPIdleTimeout expires a UDP client flow after that long without a
	// datagram from the client; what the device sends does not keep a flow
	// alive, so a client that streams from a device must send keepalives
	// within it. If zero, DefaultUDPIdleTimeout (60 s).
	UDPIdleTimeout time.Duration

	// MaxUDPFlows caps the concurrent client flows of one ServeUDP. If zero,
	// DefaultMaxUDPFlows (8192).
	MaxUDPFlows int

	// OnRequest, if not nil, is called once per proxied HTTP request after
	// the response has been written (also for requests the edge refused). It
	// must not block for long.
	OnRequest func(RequestLog)
}

// RequestLog describes one HTTP request handled by the edge.
type RequestLog struct {
	Time     time.Time      // when the request arrived
	Host     string         // normalised Host of the request
	Method   string         // request method
	Path     string         // request path (without the query)
	Proto    string         // client protocol, e.g. "HTTP/2.0"
	Status   int            // status sent to the client
	Duration time.Duration  // time to the end of the response
	Bytes    int64          // response body bytes sent to the client
	ClientIP netip.Addr     // the TCP peer's address, never a header's
	Target   netip.AddrPort // the device target, zero if none was dialed
}

// Edge is the public ingress. Create it with New; it is safe for concurrent
// use. Its Serve methods may run any number of times, concurrently.
//
// Goroutines: New starts the health-check loop and a janitor; every Serve
// method owns the goroutines of its connections and waits for them before it
// returns. Close cancels the Edge's context, which stops every Serve method,
// and waits for the loops.
type Edge struct {
	opts    Options
	log     *slog.Logger
	overlay []netip.Prefix
	ctx     context.Context // canceled by Close
	cancel  context.CancelFunc
	loops   sync.WaitGroup // health and janitor loops
	routes  atomic.Pointer[table]
	proxy   *httputil.ReverseProxy
	h1      *http.Transport
	h2c     *http.Transport
	clients *connLimiter
	// conns counts the client TCP connections open against MaxConns,
	// and pushes out those of the biggest holder to make room.
	conns *connlimit.Counter
	// bodyTimeout is Options.BodyTimeout as SetLimits last set it
	// (limits.go).
	bodyTimeout atomic.Int64
	authFails   *authThrottle
	reqCount    atomic.Uint64
	met         *edgeMetrics // metrics.go
	// httpsPort, when not zero, sends plain-HTTP requests of http routes
	// to HTTPS on that port (SetHTTPSRedirect).
	httpsPort atomic.Uint32

	mu        sync.Mutex // guards the following fields
	targets   map[netip.AddrPort]*target
	limiters  map[string]*clientLimiter
	closed    bool
	closeOnce sync.Once
}

// SetHTTPSRedirect makes the edge answer every plain-HTTP request for an
// http route with 308 Permanent Redirect to the same URL over HTTPS on
// port (443 leaves the port out of the URL), before any route policy, so
// a password or cookie is never asked for over plain HTTP. Port 0 turns
// it off (the default: the edge then serves http routes over both). Set
// it once the edge has certificates to serve HTTPS with.
func (e *Edge) SetHTTPSRedirect(port uint16) { e.httpsPort.Store(uint32(port)) }

// New returns an Edge with no routes. It starts background loops; call Close
// to stop them.
func New(opts Options) (*Edge, error) {
	if opts.Dial == nil {
		return nil, errors.New("edge: Options.Dial is required")
	}
	dom, ok := normalizeHost(opts.Domain)
	if !ok || dom != opts.Domain {
		return nil, fmt.Errorf("edge: invalid Options.Domain %q (want a lower-case name without trailing dot)", opts.Domain)
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&opts.ReadHeaderTimeout, DefaultReadHeaderTimeout)
	def(&opts.IdleTimeout, DefaultIdleTimeout)
	def(&opts.DialTimeout, DefaultDialTimeout)
	def(&opts.HealthInterval, DefaultHealthInterval)
	def(&opts.DownFor, DefaultDownFor)
	def(&opts.UDPIdleTimeout, DefaultUDPIdleTimeout)
	if opts.MaxHeaderBytes == 0 {
		opts.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	if opts.MaxConns == 0 {
		opts.MaxConns = DefaultMaxConns
	}
	def(&opts.BodyTimeout, DefaultBodyTimeout)
	def(&opts.AuthLockout, DefaultAuthLockout)
	if opts.MaxAuthFailures == 0 {
		opts.MaxAuthFailures = DefaultMaxAuthFailures
	}
	if opts.BodyMinRate <= 0 {
		opts.BodyMinRate = DefaultBodyMinRate
	}
	if opts.MaxConnsPerClient == 0 {
		opts.MaxConnsPerClient = DefaultMaxConnsPerClient
	}
	if opts.MaxUDPFlows == 0 {
		opts.MaxUDPFlows = DefaultMaxUDPFlows
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	overlay := opts.OverlayPrefixes
	if overlay == nil {
		overlay = []netip.Prefix{netip.MustParsePrefix("100.64.0.0/10"), netip.MustParsePrefix("fd00::/8")}
	}
	ctx, cancel := context.WithCancel(context.Background())
	e := &Edge{
		opts:      opts,
		log:       log.With("component", "edge"),
		overlay:   overlay,
		ctx:       ctx,
		cancel:    cancel,
		clients:   newConnLimiter(opts.MaxConnsPerClient),
		authFails: newAuthThrottle(opts.MaxAuthFailures, opts.AuthLockout),
		targets:   make(map[netip.AddrPort]*target),
		limiters:  make(map[string]*clientLimiter),
		met:       newEdgeMetrics(),
	}
	e.conns = connlimit.NewCounter(connlimit.Limits{Max: opts.MaxConns})
	e.bodyTimeout.Store(int64(opts.BodyTimeout))
	e.routes.Store(&table{hosts: map[string]*route{}, tcp: map[uint16]*route{}, udp: map[uint16]*route{}, targets: map[netip.AddrPort]*target{}})
	e.initProxy()
	e.loops.Go(e.healthLoop)
	e.loops.Go(e.janitorLoop)
	return e, nil
}

// Close stops every Serve method, closes their listeners and connections and
// the background loops, and waits for the loops. It is idempotent.
func (e *Edge) Close() error {
	e.closeOnce.Do(func() {
		e.mu.Lock()
		e.closed = true
		targets := make([]*target, 0, len(e.targets))
		for _, t := range e.targets {
			targets = append(targets, t)
		}
		e.mu.Unlock()
		e.cancel()
		e.loops.Wait()
		for _, t := range targets {
			t.pruneIdle(time.Now().Add(idleConnTimeout)) // every one
		}
		e.h1.CloseIdleConnections()
		e.h2c.CloseIdleConnections()
	})
	return nil
}

// serveContext returns a context canceled when either ctx or the Edge is
// done.
func (e *Edge) serveContext(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(e.ctx, cancel)
	return ctx, func() { stop(); cancel() }
}

// dialTarget dials a target of the current routes, marking it down on
// failure.
func (e *Edge) dialTarget(ctx context.Context, network string, t *target) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, e.opts.DialTimeout)
	defer cancel()
	c, err := e.opts.Dial(ctx, network, t.addr.String())
	if err != nil {
		if ctx.Err() == nil || errors.Is(ctx.Err(), context.DeadlineExceeded) {
			t.markDown(time.Now().Add(e.opts.DownFor))
		}
		return nil, &dialError{target: t.addr, err: err}
	}
	tc := t.track(c)
	// A route withdrawn while the dial was under way closed the
	// connections it knew of: this one was not among them.
	if t.removed.Load() {
		tc.Close()
		return nil, &dialError{target: t.addr, err: errTargetRemoved}
	}
	return tc, nil
}

// errTargetRemoved is the error of a dial to a target whose route was
// withdrawn meanwhile.
var errTargetRemoved = errors.New("edge: the route to this target was withdrawn")

// dialError is a failed dial toward a device target.
type dialError struct {
	target netip.AddrPort
	err    error
}

func (d *dialError) Error() string {
	return fmt.Sprintf("edge: dial %v: %v", d.target, d.err)
}

func (d *dialError) Unwrap() error { return d.err }
