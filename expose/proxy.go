package expose

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
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/http2"

	"beam.dev/beam/internal/copybuf"
	"beam.dev/beam/internal/proxyproto"
	"beam.dev/beam/localapi/apitype"
)

// Upstream is where the device forwards a route: a TCP address, spoken
// to over TLS when tls is set. raw marks a tcp route's upstream, whose
// bytes are copied as they are rather than relayed as HTTP.
type Upstream struct {
	addr string // host:port
	tls  bool
	raw  bool
	// spliced: a tcp route, or a tls route passed through to the app,
	// with the PROXY protocol to the device's own port; every connection
	// is copied as it comes (the edge's header first), and a peer's gets
	// a header of its own (peerProxyHeader).
	spliced bool
	app     AppDialer // if not nil, the app is in this process (Route.App)
}

// AppAddr returns the upstream of a route of port with wire upstream up
// (see wire.ExposeRequest.Upstream).
func AppAddr(port uint16, up string) Upstream {
	if up == "" {
		return Upstream{addr: "127.0.0.1:" + strconv.Itoa(int(port))}
	}
	if a, ok := strings.CutPrefix(up, "https://"); ok {
		return Upstream{addr: a, tls: true}
	}
	return Upstream{addr: up}
}

func (u Upstream) String() string {
	if u.app != nil {
		return "the program's listener"
	}
	if u.tls {
		return "https://" + u.addr
	}
	return u.addr
}

// Listening reports whether something accepts TCP at u (for the device's
// own port: on 127.0.0.1 or [::1]).
func (u Upstream) Listening(ctx context.Context) bool {
	if u.app != nil {
		return true
	}
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
func (u Upstream) dial(ctx context.Context, d *net.Dialer, alpn ...string) (net.Conn, error) {
	if u.app != nil {
		return u.app.DialApp(ctx)
	}
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

// syncProxiesLocked runs one device-side HTTP proxy per exposed HTTP
// port: it listens on the device's overlay addresses inside the netstack,
// logs each request and answers 502 with a helpful page while nothing
// listens on the local port. Other protocols use plain forwarding, or the
// TLS terminator (tls.go). Server.mu held.
func (s *Server) syncProxiesLocked(cfg Config) {
	want := map[uint16]Upstream{}
	peerHdr := map[uint16]int{} // the PROXY protocol version the app of a port expects
	if cfg.Net != nil {
		for _, r := range cfg.Routes {
			if r.ProxyProtocol != 0 && r.Upstream == "" && (r.Proto == "tcp" || r.Proto == "tls") {
				peerHdr[r.Port] = r.ProxyProtocol
			}
			switch {
			case r.Proto == "http":
				up := AppAddr(r.Port, r.Upstream)
				if r.Upstream == "" {
					up.app = r.App
				}
				want[r.Port] = up
			case r.Proto == "tcp" && r.Upstream != "":
				// Another host than this device's 127.0.0.1:PORT, which
				// plain forwarding would reach.
				if cur, ok := want[r.Port]; !ok || cur.spliced {
					up := AppAddr(r.Port, r.Upstream)
					up.raw = true
					want[r.Port] = up
				}
			case (r.Proto == "tcp" || r.Proto == "tls" && s.opts.ACMEDirectoryURL == "") && r.ProxyProtocol != 0:
				// The device's own port, which the engine's host
				// forwarding would reach raw: listen in front of it so
				// a peer cannot send a PROXY header of its own first.
				// (A tls route whose TLS the device terminates, with
				// ACME, has the terminator there: tls.go.)
				if _, ok := want[r.Port]; !ok {
					up := AppAddr(r.Port, "")
					up.spliced = true
					want[r.Port] = up
				}
			}
		}
	}
	for port, p := range s.proxies {
		if up, ok := want[port]; !ok || p.net != cfg.Net || p.upstream != up {
			p.close()
			delete(s.proxies, port)
		}
	}
	edges := slices.Clone(cfg.Edges)
	admit := func(p *exposeProxy, port uint16) {
		p.relay.edges.Store(&edges)
		p.peerToHost.Store(cfg.PeerReachesHost != nil && p.upstream.local(port) && cfg.PeerReachesHost(port))
		p.peerProxy.Store(int32(peerHdr[port]))
	}
	for port, p := range s.proxies {
		admit(p, port)
	}
	for port, up := range want {
		if _, ok := s.proxies[port]; ok {
			continue
		}
		p, err := s.startProxy(cfg.Net, cfg.Addrs, port, up, admit)
		if err != nil {
			s.logger.Warn("expose proxy", "port", port, "err", err)
			continue
		}
		s.proxies[port] = p
	}
}

// local reports whether u is the device's own 127.0.0.1:port, which the
// engine's host forwarding reaches too.
func (u Upstream) local(port uint16) bool {
	return u.app == nil && !u.tls && !u.raw && u.addr == "127.0.0.1:"+strconv.Itoa(int(port))
}

// exposeProxy is the device side of one exposed HTTP port: it accepts
// connections on the node's overlay addresses and relays each to the app
// (relay.go).
//
// Goroutines: one accept loop per listener and one per connection (two
// while a connection has an app side), all counted in wg; close ends them
// and waits.
type exposeProxy struct {
	net      Network
	upstream Upstream
	relay    *exposeRelay
	h1       *http.Transport // the HTTP/2 path's transport to the app
	ctx      context.Context
	cancel   context.CancelFunc
	lns      []net.Listener
	wg       sync.WaitGroup
	// peerToHost: a connection from a peer that is not an edge is
	// spliced to the app as the engine's host forwarding would; false
	// refuses it (Config.PeerReachesHost).
	peerToHost atomic.Bool
	// peerProxy, 1 or 2, is the version of the PROXY protocol header a
	// spliced peer's connection starts with, naming the peer: a tcp or
	// tls route of the port has the edge send the app one. 0 sends none.
	peerProxy atomic.Int32

	mu     sync.Mutex // guards the following fields
	conns  map[*relayConn]struct{}
	closed bool
}

// startProxy starts the proxy of port, with admit setting whom it admits
// before it accepts anyone.
func (s *Server) startProxy(e Network, addrs []netip.Prefix, port uint16, up Upstream, admit func(*exposeProxy, uint16)) (*exposeProxy, error) {
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
		App:      up.app,
		Watching: s.watching,
		Publish:  s.publish,
		Capture:  s.captureFor(port),
		Record:   s.record,
		Logger:   s.logger,
	})
	p.net, p.upstream = e, up
	admit(p, port)
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
	// App, if not nil, is the app itself, in this process (Route.App);
	// Target and TLS are then ignored.
	App AppDialer
	// Watching reports whether anyone reads the request log; nil means
	// nobody does.
	Watching func() bool
	// Publish sends a request log line; nil drops them.
	Publish func(apitype.RequestLog)
	// Capture returns the inspector's body limit, 0 while nobody
	// inspects; nil means nobody does. Record keeps a captured exchange;
	// nil drops them.
	Capture func() int
	Record  func(*Exchange)

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
	if o.Capture == nil || o.Record == nil {
		o.Capture = func() int { return 0 }
	}
	dialer := &net.Dialer{Timeout: 10 * time.Second}
	up := Upstream{addr: o.Target, tls: o.TLS, raw: o.Raw, app: o.App}
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
		capture:   o.Capture,
		record:    o.Record,
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
			if sw, ok := w.(*statusWriter); ok {
				sw.local = true
			}
			if errors.Is(err, syscall.ECONNREFUSED) {
				writeNothingListening(w, o.Port)
				return
			}
			http.Error(w, appUnreachable(err), http.StatusBadGateway)
		},
	}
	capture := o.Capture
	if capture == nil || o.Record == nil {
		capture = func() int { return 0 }
	}
	dialer := &net.Dialer{Timeout: 10 * time.Second}
	up := Upstream{addr: o.Target, tls: o.TLS}
	dial := func(ctx context.Context) (net.Conn, error) { return up.dial(ctx, dialer, "http/1.1") }
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
		var x *Exchange
		var reqBody, respBody *capBuf
		if limit := capture(); limit > 0 {
			x = &Exchange{Kind: "http", Start: start, Method: r.Method, Host: r.Host, Path: r.URL.RequestURI(),
				Client: firstForwardedFor(r), Port: o.Port, AnsweredBy: ByApp, dial: dial}
			hdr := r.Header.Clone()
			hdr.Set("Host", r.Host)
			x.Request = &Message{Proto: r.Proto, Header: hdr}
			reqBody, respBody = &capBuf{limit: limit}, &capBuf{limit: limit}
			r.Body = teeBody{r.Body, reqBody}
			sw.tap, sw.firstByte, sw.start = respBody, &x.FirstByte, start
		}
		rp.ServeHTTP(sw, r)
		l := apitype.RequestLog{
			Time: start, Host: r.Host, Method: r.Method, Path: r.URL.RequestURI(), Status: sw.status,
			Duration: time.Since(start), Port: o.Port, Client: firstForwardedFor(r),
		}
		o.Publish(l)
		if x != nil {
			x.Status, x.Duration = l.Status, l.Duration
			x.Request.Body, x.Request.BodySize = reqBody.snapshot()
			x.Request.Truncated = x.Request.BodySize > int64(len(x.Request.Body))
			b, n := respBody.snapshot()
			x.Response = &Message{Proto: r.Proto, Header: w.Header().Clone(), Body: b, BodySize: n, Truncated: n > int64(len(b))}
			x.Size = n
			if sw.local {
				x.AnsweredBy = ByBeam
			}
			o.Record(x)
		}
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
			peer := !rc.fromEdge()
			if peer && !p.peerToHost.Load() {
				p.relay.logger.Debug("expose proxy: refused a peer that is not an edge", "port", p.relay.port, "client", c.RemoteAddr())
				c.Close()
				continue
			}
			p.mu.Lock()
			if p.closed {
				p.mu.Unlock()
				c.Close()
				return
			}
			p.conns[rc] = struct{}{}
			p.wg.Go(func() {
				switch {
				case peer:
					rc.spliceRaw(p.ctx, peerProxyHeader(int(p.peerProxy.Load()), c))
				case p.upstream.raw || p.upstream.spliced:
					rc.spliceRaw(p.ctx, nil)
				default:
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

// peerProxyHeader returns the PROXY protocol header of the given
// version (0: none) that names peer c as the client, the way the edge
// names its own: the app of a route with the PROXY protocol believes the
// first header on a connection, so a peer's must be the device's.
func peerProxyHeader(version int, c net.Conn) []byte {
	if version == 0 {
		return nil
	}
	return proxyproto.AppendHeader(nil, version, "tcp", addrPortOf(c.RemoteAddr()), addrPortOf(c.LocalAddr()))
}

// addrPortOf returns a's address and port; zero if a is nil, as the
// netstack's connections' addresses are once they are reset or closed.
func addrPortOf(a net.Addr) netip.AddrPort {
	if a == nil {
		return netip.AddrPort{}
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

// addrString is ap as text, "" if it is zero.
func addrString(ap netip.AddrPort) string {
	if !ap.IsValid() {
		return ""
	}
	return ap.String()
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

	// With the inspector: tap gets a copy of the body, firstByte the
	// time to the response head, and local says the device answered
	// itself (the app could not be reached).
	tap       *capBuf
	firstByte *time.Duration
	start     time.Time
	local     bool
}

// teeBody copies what is read of a request body to a capture.
type teeBody struct {
	io.ReadCloser
	tap *capBuf
}

func (t teeBody) Read(p []byte) (int, error) {
	n, err := t.ReadCloser.Read(p)
	t.tap.write(p[:n])
	return n, err
}

func (w *statusWriter) WriteHeader(code int) {
	if w.firstByte != nil && *w.firstByte == 0 {
		*w.firstByte = time.Since(w.start)
	}
	if !w.wrote && code >= 200 {
		w.status, w.wrote = code, true
	}
	if code == http.StatusSwitchingProtocols {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if !w.wrote && w.firstByte != nil && *w.firstByte == 0 {
		*w.firstByte = time.Since(w.start)
	}
	w.wrote = true
	if w.tap != nil {
		w.tap.write(b)
	}
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

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
		return
	}
	c.Close()
}
