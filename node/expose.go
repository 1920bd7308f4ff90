package node

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"html"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/net/http2"

	"beam.dev/beam/internal/copybuf"
	"beam.dev/beam/localapi/apitype"
	"beam.dev/beam/netstack"
	"beam.dev/beam/wire"
)

// exposer is the part of the control client that publishes routes.
// *coordclient.Client implements it.
type exposer interface {
	Expose(ctx context.Context, req wire.ExposeRequest) (*wire.ExposeResponse, error)
}

// ErrNoSuchRoute is returned by Unexpose for a route this node does not serve.
var ErrNoSuchRoute = errors.New("no such published route")

// Expose publishes a local port of this device on the public edge.
func (n *Node) Expose(ctx context.Context, req apitype.ExposeRequest) (*apitype.ExposeResponse, error) {
	if req.Port == 0 {
		return nil, errors.New("expose: port must be between 1 and 65535")
	}
	if req.Proto == "" {
		req.Proto = "http"
	}
	switch req.Proto {
	case "http", "tls", "tcp", "udp":
	default:
		return nil, fmt.Errorf("expose: unknown protocol %q (want http, tls, tcp or udp)", req.Proto)
	}
	if req.Upstream != "" && req.Proto != "http" && (req.Proto != "tcp" || strings.HasPrefix(req.Upstream, "https://")) {
		return nil, fmt.Errorf("expose: %s routes forward to a port of this device or, for tcp, another host:port; not %s", req.Proto, req.Upstream)
	}
	n.mu.Lock()
	s, nm := n.sess, n.netmap
	n.mu.Unlock()
	if s == nil || nm == nil || nm.Self == nil {
		return nil, ErrNotRunning
	}
	ex, ok := any(s.client).(exposer)
	if !ok {
		return nil, errors.New("expose: this build's control client cannot publish routes")
	}
	resp, err := ex.Expose(ctx, wire.ExposeRequest{
		Name:         req.Name,
		CustomDomain: req.Domain,
		Proto:        req.Proto,
		Port:         req.Port,
		Options:      req.Options,
		Pool:         req.Pool,
		Upstream:     req.Upstream,
	})
	if err != nil {
		return nil, fmt.Errorf("expose: %w", err)
	}
	if resp.Error != "" {
		return nil, fmt.Errorf("expose: %s", resp.Error)
	}
	up := appAddr(req.Port, req.Upstream)
	out := &apitype.ExposeResponse{URL: resp.URL, Proto: req.Proto, Port: req.Port, Upstream: up.String(), ACMEChallengeCNAME: resp.ACMEChallengeCNAME}
	if resp.Route != nil {
		out.Host, out.PublicPort = resp.Route.Host, resp.Route.PublicPort
		// Apply the route locally at once rather than waiting for the stream.
		n.mu.Lock()
		if n.netmap != nil && !slices.ContainsFunc(n.netmap.EdgeRoutes, func(r wire.EdgeRoute) bool { return sameRoute(r, *resp.Route) }) {
			nm := n.netmap.Clone()
			nm.EdgeRoutes = append(nm.EdgeRoutes, *resp.Route)
			n.netmap = nm
			n.applyLocked()
		}
		n.mu.Unlock()
	}
	if resp.Route != nil {
		// The coordinator fans the route out to edges and to this node in
		// the same round: once this node's stream carries it, the edges
		// have it too (give up waiting after a few seconds).
		wctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		route := *resp.Route
		n.waitStreamNetMap(wctx, func(nm *wire.NetMap) bool {
			return slices.ContainsFunc(nm.EdgeRoutes, func(r wire.EdgeRoute) bool { return sameRoute(r, route) })
		})
		cancel()
	}
	if req.Proto != "udp" && !up.listening(ctx) {
		out.Warning = fmt.Sprintf("nothing is listening on %s yet; the route stays up and works once your app starts", up)
		if req.Upstream == "" {
			out.Warning = fmt.Sprintf("nothing is listening on port %d of this device yet; the route stays up and works once your app starts", req.Port)
		}
	}
	return out, nil
}

func sameRoute(a, b wire.EdgeRoute) bool {
	return a.Host == b.Host && a.Proto == b.Proto && a.PublicPort == b.PublicPort && a.Node == b.Node && a.Target == b.Target
}

// upstream is where the device forwards a route: a TCP address, spoken
// to over TLS when tls is set. raw marks a tcp route's upstream, whose
// bytes are copied as they are rather than relayed as HTTP.
type upstream struct {
	addr string // host:port
	tls  bool
	raw  bool
}

// appAddr returns the upstream of a route of port with wire upstream up
// (see wire.ExposeRequest.Upstream).
func appAddr(port uint16, up string) upstream {
	if up == "" {
		return upstream{addr: "127.0.0.1:" + strconv.Itoa(int(port))}
	}
	if a, ok := strings.CutPrefix(up, "https://"); ok {
		return upstream{addr: a, tls: true}
	}
	return upstream{addr: up}
}

func (u upstream) String() string {
	if u.tls {
		return "https://" + u.addr
	}
	return u.addr
}

// listening reports whether something accepts TCP at u (for the device's
// own port: on 127.0.0.1 or [::1]).
func (u upstream) listening(ctx context.Context) bool {
	addrs := []string{u.addr}
	if h, p, _ := net.SplitHostPort(u.addr); h == "127.0.0.1" {
		addrs = append(addrs, net.JoinHostPort("::1", p))
	}
	for _, a := range addrs {
		d := net.Dialer{Timeout: 500 * time.Millisecond}
		c, err := d.DialContext(ctx, "tcp", a)
		if err == nil {
			c.Close()
			return true
		}
	}
	return false
}

// dial connects to u; over TLS it offers alpn and does not verify the
// app's certificate: the app is the device's own (or on its network), and
// self-signed certificates are the rule there, as ngrok assumes too.
func (u upstream) dial(ctx context.Context, d *net.Dialer, alpn ...string) (net.Conn, error) {
	c, err := d.DialContext(ctx, "tcp", u.addr)
	if err != nil || !u.tls {
		return c, err
	}
	host, _, _ := net.SplitHostPort(u.addr)
	tc := tls.Client(c, &tls.Config{ServerName: host, InsecureSkipVerify: true, NextProtos: alpn})
	if err := tc.HandshakeContext(ctx); err != nil {
		c.Close()
		return nil, fmt.Errorf("TLS to %s: %w", u, err)
	}
	return tc, nil
}

// Unexpose withdraws one of this device's routes. name is the route's
// host, its first label, or "tcp:PORT"/"udp:PORT" (public port); a
// non-empty proto limits it to the route of that protocol.
func (n *Node) Unexpose(ctx context.Context, name, proto string) error {
	n.mu.Lock()
	s := n.sess
	routes := n.ownRoutesLocked()
	n.mu.Unlock()
	if s == nil {
		return ErrNotRunning
	}
	var match []wire.EdgeRoute
	for _, r := range routes {
		label, _, _ := strings.Cut(r.Host, ".")
		pp := r.Proto + ":" + strconv.Itoa(int(r.PublicPort))
		if proto != "" && r.Proto != proto {
			continue
		}
		if strings.EqualFold(name, r.Host) || strings.EqualFold(name, label) || name == pp {
			match = append(match, r)
		}
	}
	if len(match) == 0 {
		return fmt.Errorf("%w: %s", ErrNoSuchRoute, name)
	}
	ex, ok := any(s.client).(exposer)
	if !ok {
		return errors.New("expose: this build's control client cannot publish routes")
	}
	for _, r := range match {
		req := wire.ExposeRequest{Proto: r.Proto, Port: r.Target.Port(), Remove: true}
		if r.CustomDomain {
			req.CustomDomain = r.Host
		} else {
			req.Name, _, _ = strings.Cut(r.Host, ".")
		}
		resp, err := ex.Expose(ctx, req)
		if err != nil {
			return fmt.Errorf("unexpose %s: %w", r.Host, err)
		}
		if resp.Error != "" {
			return fmt.Errorf("unexpose %s: %s", r.Host, resp.Error)
		}
	}
	n.mu.Lock()
	if n.netmap != nil {
		nm := n.netmap.Clone()
		nm.EdgeRoutes = slices.DeleteFunc(nm.EdgeRoutes, func(r wire.EdgeRoute) bool {
			return slices.ContainsFunc(match, func(m wire.EdgeRoute) bool { return sameRoute(r, m) })
		})
		n.netmap = nm
		n.applyLocked()
	}
	n.mu.Unlock()
	return nil
}

// routeGonePoll is how often WaitRouteGone looks again when no netmap
// arrives: leaving the network (down, logout, removal) sends none.
const routeGonePoll = time.Second

// WaitRouteGone waits until route r of this device (matched by host,
// protocol and public port) is no longer published, and says why. It
// returns "" when ctx ends first. A route not yet in the coordinator's
// map counts as gone only once it has been seen there.
func (n *Node) WaitRouteGone(ctx context.Context, r apitype.Route) string {
	t := time.NewTicker(routeGonePoll)
	defer t.Stop()
	seen := false
	for {
		n.mu.Lock()
		running := n.sess != nil && n.netmap != nil
		var in bool
		if nm := n.streamNM; nm != nil && nm.Self != nil {
			in = slices.ContainsFunc(nm.EdgeRoutes, func(w wire.EdgeRoute) bool {
				return w.Node == nm.Self.Key && strings.EqualFold(w.Host, r.Host) && w.Proto == r.Proto && w.PublicPort == r.PublicPort
			})
		}
		if n.nmChanged == nil {
			n.nmChanged = make(chan struct{})
		}
		ch := n.nmChanged
		n.mu.Unlock()
		switch {
		case !running:
			return "this device left the network (beam down, logout, or its removal by an admin)"
		case in:
			seen = true
		case seen:
			return "the route was withdrawn (beam expose stop, an admin, or the removal of this device)"
		}
		select {
		case <-ctx.Done():
			return ""
		case <-ch:
		case <-t.C:
		}
	}
}

// ExposedRoutes lists the routes this device serves.
func (n *Node) ExposedRoutes() []apitype.Route {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := []apitype.Route{}
	for _, r := range n.ownRoutesLocked() {
		out = append(out, apitype.Route{Host: r.Host, Proto: r.Proto, PublicPort: r.PublicPort, Port: r.Target.Port(), Upstream: r.Upstream, Options: r.Options.Clone()})
	}
	return out
}

// ownRoutesLocked returns the netmap's routes served by this node.
func (n *Node) ownRoutesLocked() []wire.EdgeRoute {
	if n.netmap == nil || n.netmap.Self == nil {
		return nil
	}
	var out []wire.EdgeRoute
	for _, r := range n.netmap.EdgeRoutes {
		if r.Node == n.netmap.Self.Key {
			out = append(out, r)
		}
	}
	return out
}

// exposedPortsLocked returns the local ports of this node's routes, which
// stay open to peers even with shields up.
func (n *Node) exposedPortsLocked() []uint16 {
	var ports []uint16
	for _, r := range n.ownRoutesLocked() {
		if p := r.Target.Port(); !slices.Contains(ports, p) {
			ports = append(ports, p)
		}
	}
	slices.Sort(ports)
	return ports
}

// WatchRequests returns a channel of requests served through this
// device's HTTP routes until ctx ends. Slow readers miss lines rather than
// slowing requests down.
func (n *Node) WatchRequests(ctx context.Context) <-chan apitype.RequestLog {
	ch := make(chan apitype.RequestLog, 256)
	n.watchMu.Lock()
	if n.watchers == nil {
		n.watchers = map[chan apitype.RequestLog]struct{}{}
	}
	n.watchers[ch] = struct{}{}
	n.watchMu.Unlock()
	context.AfterFunc(ctx, func() {
		n.watchMu.Lock()
		delete(n.watchers, ch)
		n.watchMu.Unlock()
	})
	return ch
}

// edgeAddrsLocked returns the overlay addresses of the edge nodes of the
// current netmap.
func (n *Node) edgeAddrsLocked() []netip.Addr {
	var out []netip.Addr
	if n.netmap == nil {
		return nil
	}
	for _, p := range n.netmap.Peers {
		if p.Edge {
			for _, pfx := range p.Addresses {
				out = append(out, pfx.Addr())
			}
		}
	}
	return out
}

// watchingRequests reports whether anyone watches the request log.
func (n *Node) watchingRequests() bool {
	n.watchMu.Lock()
	defer n.watchMu.Unlock()
	return len(n.watchers) > 0
}

func (n *Node) publishRequest(l apitype.RequestLog) {
	n.watchMu.Lock()
	defer n.watchMu.Unlock()
	for ch := range n.watchers {
		select {
		case ch <- l:
		default:
		}
	}
}

// syncExposeProxiesLocked runs one device-side HTTP proxy per exposed HTTP
// port: it listens on the node's overlay addresses inside the netstack,
// logs each request and answers 502 with a helpful page while nothing
// listens on the local port. Other protocols use plain forwarding.
func (n *Node) syncExposeProxiesLocked(cfg netstack.Config) {
	want := map[uint16]upstream{}
	if n.engine != nil {
		for _, r := range n.ownRoutesLocked() {
			switch {
			case r.Proto == "http":
				want[r.Target.Port()] = appAddr(r.Target.Port(), r.Upstream)
			case r.Proto == "tcp" && r.Upstream != "":
				// Another host than this device's 127.0.0.1:PORT, which
				// plain forwarding would reach.
				if _, ok := want[r.Target.Port()]; !ok {
					up := appAddr(r.Target.Port(), r.Upstream)
					up.raw = true
					want[r.Target.Port()] = up
				}
			}
		}
	}
	for port, p := range n.proxies {
		if up, ok := want[port]; !ok || p.engine != n.engine || p.upstream != up {
			p.close()
			delete(n.proxies, port)
		}
	}
	for port, up := range want {
		if _, ok := n.proxies[port]; ok {
			continue
		}
		p, err := startExposeProxy(n, n.engine, cfg.Addresses, port, up)
		if err != nil {
			n.logger.Warn("expose proxy", "port", port, "err", err)
			continue
		}
		if n.proxies == nil {
			n.proxies = map[uint16]*exposeProxy{}
		}
		n.proxies[port] = p
	}
	edges := n.edgeAddrsLocked()
	for _, p := range n.proxies {
		p.relay.edges.Store(&edges)
	}
	n.syncTLSRoutesLocked(cfg)
}

// exposeProxy is the device side of one exposed HTTP port: it accepts
// connections on the node's overlay addresses and relays each to the app
// (expose_relay.go).
//
// Goroutines: one accept loop per listener and one per connection (two
// while a connection has an app side), all counted in wg; close ends them
// and waits.
type exposeProxy struct {
	engine   *netstack.Engine
	upstream upstream
	relay    *exposeRelay
	h1       *http.Transport // the HTTP/2 path's transport to the app
	ctx      context.Context
	cancel   context.CancelFunc
	lns      []net.Listener
	wg       sync.WaitGroup

	mu     sync.Mutex // guards the following fields
	conns  map[*relayConn]struct{}
	closed bool
}

func startExposeProxy(n *Node, e *netstack.Engine, addrs []netip.Prefix, port uint16, up upstream) (*exposeProxy, error) {
	var lns []net.Listener
	for _, a := range addrs {
		ln, err := e.Listen("tcp", netip.AddrPortFrom(a.Addr(), port).String())
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			return nil, err
		}
		lns = append(lns, ln)
	}
	p := newExposeProxy(exposeProxyOptions{
		Port:     port,
		Target:   up.addr,
		TLS:      up.tls,
		Raw:      up.raw,
		Watching: n.watchingRequests,
		Publish:  n.publishRequest,
		Logger:   n.logger,
	})
	p.engine, p.upstream = e, up
	for _, ln := range lns {
		p.serve(ln)
	}
	return p, nil
}

// exposeProxyOptions configures an exposeProxy.
type exposeProxyOptions struct {
	Port   uint16 // the exposed port, for logs and the 502 page
	Target string // the app's address, host:port
	TLS    bool   // speak TLS to the app (its certificate is not verified)
	Raw    bool   // copy bytes as they are (a tcp route), no HTTP relay
	// Watching reports whether anyone reads the request log; nil means
	// nobody does.
	Watching func() bool
	// Publish sends a request log line; nil drops them.
	Publish func(apitype.RequestLog)

	// Logger receives debug logs; nil discards them.
	Logger *slog.Logger
}

func newExposeProxy(o exposeProxyOptions) *exposeProxy {
	logger := o.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if o.Watching == nil {
		o.Watching = func() bool { return false }
	}
	if o.Publish == nil {
		o.Publish = func(apitype.RequestLog) {}
	}
	dialer := &net.Dialer{Timeout: 10 * time.Second}
	up := upstream{addr: o.Target, tls: o.TLS, raw: o.Raw}
	p := &exposeProxy{conns: map[*relayConn]struct{}{}}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	p.h1 = &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return up.dial(ctx, dialer, "http/1.1")
		},
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
		// Pass Accept-Encoding and compressed bodies through untouched
		// rather than asking the app for gzip and inflating it here.
		DisableCompression: true,
	}
	h2 := &http2.Transport{
		AllowHTTP: true,
		DialTLSContext: func(ctx context.Context, _, _ string, _ *tls.Config) (net.Conn, error) {
			return up.dial(ctx, dialer, "h2")
		},
	}
	p.relay = &exposeRelay{
		port: o.Port,
		dial: func(ctx context.Context) (net.Conn, error) {
			return up.dial(ctx, dialer, "http/1.1")
		},
		h2:        &http2.Server{},
		h2Handler: h2Handler(o, logger, transportSwitch{h1: p.h1, h2: h2}),
		watching:  o.Watching,
		publish:   o.Publish,
		logger:    logger,
	}
	return p
}

// h2Handler is the HTTP/2 path: a reverse proxy to the app that logs each
// request and answers 502 with a helpful page while nothing listens.
func h2Handler(o exposeProxyOptions, logger *slog.Logger, tr http.RoundTripper) http.Handler {
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme = "http"
			pr.Out.URL.Host = o.Target
			pr.Out.Host = pr.In.Host
			// The edge set X-Forwarded-*; keep them as they are.
			pr.Out.Header["X-Forwarded-For"] = pr.In.Header["X-Forwarded-For"]
		},
		Transport: tr,
		// Without a pool ReverseProxy allocates a 32 KiB copy buffer
		// for every response (every gRPC call).
		BufferPool: copybuf.Pool,
		ErrorLog:   slog.NewLogLogger(logger.Handler(), slog.LevelDebug),
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if errors.Is(err, syscall.ECONNREFUSED) {
				writeNothingListening(w, o.Port)
				return
			}
			http.Error(w, appUnreachable(err), http.StatusBadGateway)
		},
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
		rp.ServeHTTP(sw, r)
		o.Publish(apitype.RequestLog{
			Time: start, Host: r.Host, Method: r.Method, Path: r.URL.RequestURI(), Status: sw.status,
			Duration: time.Since(start), Port: o.Port, Client: firstForwardedFor(r),
		})
	})
}

// serve accepts connections on ln and relays each until the proxy closes.
func (p *exposeProxy) serve(ln net.Listener) {
	p.mu.Lock()
	p.lns = append(p.lns, ln)
	p.mu.Unlock()
	p.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			rc := newRelayConn(p.relay, c)
			p.mu.Lock()
			if p.closed {
				p.mu.Unlock()
				c.Close()
				return
			}
			p.conns[rc] = struct{}{}
			p.wg.Go(func() {
				if p.upstream.raw {
					rc.spliceRaw(p.ctx)
				} else {
					rc.run(p.ctx)
				}
				p.mu.Lock()
				delete(p.conns, rc)
				p.mu.Unlock()
			})
			p.mu.Unlock()
		}
	})
}

func (p *exposeProxy) close() {
	p.cancel()
	p.mu.Lock()
	p.closed = true
	for _, ln := range p.lns {
		ln.Close()
	}
	for rc := range p.conns {
		rc.end()
	}
	p.mu.Unlock()
	p.wg.Wait()
	p.h1.CloseIdleConnections()
}

// transportSwitch sends gRPC (and other HTTP/2-only requests) to the app
// over h2c and everything else over HTTP/1.1.
type transportSwitch struct {
	h1 *http.Transport
	h2 *http2.Transport
}

func (t transportSwitch) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.ProtoMajor == 2 && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
		return t.h2.RoundTrip(r)
	}
	return t.h1.RoundTrip(r)
}

// statusWriter records the status code; Unwrap lets http.ResponseController
// reach Flush and Hijack (WebSocket upgrades) of the real writer.
type statusWriter struct {
	http.ResponseWriter
	status int
	wrote  bool
}

func (w *statusWriter) WriteHeader(code int) {
	if !w.wrote && code >= 200 {
		w.status, w.wrote = code, true
	}
	if code == http.StatusSwitchingProtocols {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	w.wrote = true
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func firstForwardedFor(r *http.Request) string {
	return string(firstAddr([]byte(r.Header.Get("X-Forwarded-For"))))
}

func writeNothingListening(w http.ResponseWriter, port uint16) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusBadGateway)
	io.WriteString(w, nothingListeningHTML(port))
}

// nothingListeningHTML is the page of a 502 while nothing listens on the
// exposed port.
func nothingListeningHTML(port uint16) string {
	p := html.EscapeString(strconv.Itoa(int(port)))
	return `<!doctype html><title>502: nothing listening yet</title>
<h1>Almost there</h1>
<p>This address is published by Beam and the device is connected, but nothing is listening on its port ` + p + ` yet.</p>
<p>Start your app on port ` + p + ` on the device and reload this page.</p>`
}

// txtSetter is the part of the control client an edge uses to publish
// ACME DNS-01 records in the coordinator's public zone.
type txtSetter interface {
	SetTXT(ctx context.Context, name string, values []string) error
}

// SetTXT asks the coordinator to publish (or, with no values, delete) a
// TXT record in its public zone. Edge nodes may set the _acme-challenge
// names of their domains; other nodes only those of their own tls routes.
func (n *Node) SetTXT(ctx context.Context, name string, values []string) error {
	n.mu.Lock()
	s := n.sess
	n.mu.Unlock()
	if s == nil {
		return ErrNotRunning
	}
	ts, ok := any(s.client).(txtSetter)
	if !ok {
		return errors.New("this build's control client cannot set TXT records")
	}
	return ts.SetTXT(ctx, name, values)
}
