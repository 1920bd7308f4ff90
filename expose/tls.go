package expose

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"

	"beam.dev/beam/acmecert"
)

// tlsHandshakeTimeout bounds a client's TLS handshake with the device,
// including the wait for a certificate still being obtained.
const tlsHandshakeTimeout = 30 * time.Second

// tlsTerminator is the device side of "tls" routes when the device holds
// the certificates itself (Options.ACMEDirectoryURL set). For each host of
// this node's own tls routes it obtains and renews a certificate from the
// ACME CA by DNS-01, publishing the challenge in the coordinator's public
// zone through the node's control client (the coordinator lets a node set
// only the _acme-challenge name of its own tls routes). It listens inside
// the netstack on the node's overlay addresses at each such route's port,
// terminates TLS there and copies the plaintext stream to
// 127.0.0.1:PORT, so any protocol over TLS reaches the app. The edge
// routes by SNI and never sees plaintext.
//
// A client that offers h2 or http/1.1 by ALPN is offered both; one that
// chooses h2 is served by an HTTP/2 server that proxies each request to
// the app over HTTP/1.1 (h2c for gRPC), as the http routes' device side
// does. Other clients get no ALPN and the byte stream, as before.
//
// A route with a PROXY protocol option gets the edge's header (v1 or v2)
// before the ClientHello. The terminator reads it, only on connections
// from edge nodes, and passes it on to the app in front of the plaintext
// (each connection to the app starts with it, on the HTTP/2 path too);
// the HTTP/2 path also sets X-Forwarded-For to the client it names.
// Another peer's plaintext gets a header naming the peer in front, so
// that a header it sends itself is data to the app.
//
// Without ACME the netstack's plain forwarding carries the TLS stream to
// the app, which terminates TLS itself; with a PROXY protocol option the
// device's spliced proxy (proxy.go) listens in front of the port instead,
// to give a peer's stream a header naming the peer.
//
// Goroutines: one per managed host (obtain, then load into the cache),
// one accept loop per listener and one per connection (plus one copier);
// all are counted in wg and waited for in close. The ACME manager runs
// its own renewal goroutine, stopped in close.
//
// Lock order: Server.mu, then tlsTerminator.mu. Nothing here takes
// Server.mu: the DNS-01 solver reaches the control client through
// Options.SetTXT.
type tlsTerminator struct {
	s      *Server
	log    *slog.Logger
	acme   *acmecert.Manager
	ctx    context.Context // canceled by close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	// listeners are the netstack listeners per local port; guarded by
	// Server.mu (only syncLocked and close touch them).
	listeners map[uint16]*tlsListener
	// edges are the overlay addresses of the edge nodes, the only
	// clients whose PROXY protocol header is read; stored on every sync.
	edges atomic.Pointer[[]netip.Addr]
	// peerHdr is the PROXY protocol version (1 or 2) of each port whose
	// route has the edge send one: a peer's plaintext there starts with
	// a header naming the peer. Stored on every sync.
	peerHdr atomic.Pointer[map[uint16]int]

	mu    sync.Mutex // guards the following fields
	hosts map[string]*tlsHost
	conns map[net.Conn]struct{}
}

// tlsHost is one route host whose certificate the terminator manages.
type tlsHost struct {
	cancel context.CancelFunc
	ready  chan struct{} // closed once the certificate is cached or obtaining gave up
	err    error         // set before ready is closed
}

// tlsListener listens on the overlay addresses of one engine at one port.
type tlsListener struct {
	net Network
	lns []net.Listener
}

// newTLSTerminator returns a terminator using the server's ACME options,
// with its certificates in Options.CertDir.
func newTLSTerminator(s *Server) (*tlsTerminator, error) {
	t := &tlsTerminator{
		s:         s,
		log:       s.logger.With("component", "tls-routes"),
		listeners: map[uint16]*tlsListener{},
		hosts:     map[string]*tlsHost{},
		conns:     map[net.Conn]struct{}{},
	}
	t.ctx, t.cancel = context.WithCancel(context.Background())
	setTXT := s.opts.SetTXT
	if setTXT == nil {
		setTXT = func(context.Context, string, []string) error {
			return errors.New("expose: no way to publish DNS-01 records")
		}
	}
	var err error
	t.acme, err = acmecert.New(acmecert.Options{
		DirectoryURL: s.opts.ACMEDirectoryURL,
		TrustedRoots: s.opts.ACMETrustedRoots,
		Email:        s.opts.ACMEEmail,
		StorageDir:   s.opts.CertDir,
		SetTXT:       setTXT,
		Logger:       t.log,
	})
	if err != nil {
		return nil, fmt.Errorf("expose: tls routes: %w", err)
	}
	return t, nil
}

// syncTLSLocked starts or stops the terminator's work to match the
// device's own tls routes. It does nothing without
// Options.ACMEDirectoryURL (tls routes then pass through to the app).
// Server.mu held.
func (s *Server) syncTLSLocked(cfg Config) {
	if s.opts.ACMEDirectoryURL == "" {
		return
	}
	want := map[uint16][]string{} // local port -> hosts
	peerHdr := map[uint16]int{}
	if cfg.Net != nil {
		for _, r := range cfg.Routes {
			if r.Proto != "tls" {
				continue
			}
			if r.ProxyProtocol != 0 {
				peerHdr[r.Port] = r.ProxyProtocol
			}
			if s.proxies[r.Port] == nil {
				want[r.Port] = append(want[r.Port], strings.ToLower(strings.TrimSuffix(r.Host, ".")))
			} else {
				s.logger.Warn("tls route shares its port with an http route; serving http", "host", r.Host, "port", r.Port)
			}
		}
	}
	if len(want) == 0 && s.tlsTerm == nil {
		return
	}
	if s.tlsTerm == nil {
		t, err := newTLSTerminator(s)
		if err != nil {
			s.logger.Warn("tls routes", "err", err)
			return
		}
		s.tlsTerm = t
	}
	edges := slices.Clone(cfg.Edges)
	s.tlsTerm.edges.Store(&edges)
	s.tlsTerm.peerHdr.Store(&peerHdr)
	s.tlsTerm.syncLocked(cfg.Net, cfg.Addrs, want)
}

// syncLocked makes the listeners and managed hosts match want. Server.mu
// held.
func (t *tlsTerminator) syncLocked(e Network, addrs []netip.Prefix, want map[uint16][]string) {
	for port, l := range t.listeners {
		if _, ok := want[port]; !ok || l.net != e {
			l.close()
			delete(t.listeners, port)
		}
	}
	for port := range want {
		if _, ok := t.listeners[port]; ok {
			continue
		}
		l, err := t.listen(e, addrs, port)
		if err != nil {
			t.log.Warn("tls route listen", "port", port, "err", err)
			continue
		}
		t.listeners[port] = l
	}

	hosts := map[string]bool{}
	for _, hs := range want {
		for _, h := range hs {
			hosts[h] = true
		}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for name, h := range t.hosts {
		if !hosts[name] {
			h.cancel()
			delete(t.hosts, name)
			t.acme.Forget(name)
		}
	}
	for name := range hosts {
		if _, ok := t.hosts[name]; ok {
			continue
		}
		ctx, cancel := context.WithCancel(t.ctx)
		h := &tlsHost{cancel: cancel, ready: make(chan struct{})}
		t.hosts[name] = h
		t.wg.Add(1)
		go t.manage(ctx, name, h)
	}
}

// manage obtains the certificate of name (or finds it in storage) and
// loads it into the cache, which renews it until close.
func (t *tlsTerminator) manage(ctx context.Context, name string, h *tlsHost) {
	defer t.wg.Done()
	start := time.Now()
	t.log.Info("obtaining certificate", "host", name)
	// Non-interactive: retries with backoff until ctx ends; a no-op when
	// storage already holds the certificate.
	err := t.acme.Obtain(ctx, name)
	if err == nil && ctx.Err() != nil {
		// The route went away while the certificate was being loaded.
		t.acme.Forget(name)
		err = ctx.Err()
	}
	h.err = err
	close(h.ready)
	if err != nil {
		if ctx.Err() == nil {
			t.log.Warn("certificate", "host", name, "err", err)
		}
		return
	}
	t.log.Info("certificate ready", "host", name, "took", time.Since(start).Round(time.Millisecond))
}

// listen opens the listeners of one port on every overlay address.
func (t *tlsTerminator) listen(e Network, addrs []netip.Prefix, port uint16) (*tlsListener, error) {
	l := &tlsListener{net: e}
	for _, a := range addrs {
		ln, err := e.Listen("tcp", netip.AddrPortFrom(a.Addr(), port).String())
		if err != nil {
			l.close()
			return nil, fmt.Errorf("listen %s port %d: %w", a.Addr(), port, err)
		}
		l.lns = append(l.lns, ln)
	}
	for _, ln := range l.lns {
		t.wg.Add(1)
		go t.acceptLoop(ln, port)
	}
	return l, nil
}

func (l *tlsListener) close() {
	for _, ln := range l.lns {
		ln.Close()
	}
}

func (t *tlsTerminator) acceptLoop(ln net.Listener, port uint16) {
	defer t.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		if !t.track(c) {
			c.Close()
			return
		}
		t.wg.Add(1)
		go t.serveConn(c, port)
	}
}

// track records an open connection so close can cut it; it reports false
// once the terminator is closing.
func (t *tlsTerminator) track(c net.Conn) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.ctx.Err() != nil {
		return false
	}
	t.conns[c] = struct{}{}
	return true
}

func (t *tlsTerminator) untrack(c net.Conn) {
	t.mu.Lock()
	delete(t.conns, c)
	t.mu.Unlock()
}

// serveConn terminates TLS on c and copies the plaintext to and from the
// app on 127.0.0.1:port, or serves HTTP/2 in front of it when the client
// chose h2.
func (t *tlsTerminator) serveConn(c net.Conn, port uint16) {
	defer t.wg.Done()
	defer t.untrack(c)
	defer c.Close()
	c.SetDeadline(time.Now().Add(tlsHandshakeTimeout))
	var proxyHdr []byte
	client := addrPortOf(c.RemoteAddr())
	fromEdge := t.fromEdge(client.Addr())
	var under net.Conn = c
	if fromEdge {
		br := bufio.NewReaderSize(c, 512)
		hdr, src, err := readProxyHeader(br)
		if err != nil {
			t.log.Debug("PROXY header", "port", port, "remote", c.RemoteAddr(), "err", err)
			return
		}
		proxyHdr = hdr
		client = src // the edge's own address says nothing about the client
		under = &bufferedConn{Conn: c, r: br}
	} else if m := t.peerHdr.Load(); m != nil {
		// A peer's plaintext would reach the app where the edge's
		// header goes: a header it sent there would name any client.
		proxyHdr = peerProxyHeader((*m)[port], c)
	}
	base := &tls.Config{GetCertificate: t.getCertificate, MinVersion: tls.VersionTLS12}
	base.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		// Offer ALPN only to HTTP clients: a server that names
		// protocols refuses a client whose list shares none, and the
		// app behind may speak anything over TLS.
		if !slices.Contains(hello.SupportedProtos, "h2") && !slices.Contains(hello.SupportedProtos, "http/1.1") {
			return nil, nil
		}
		cfg := base.Clone()
		cfg.GetConfigForClient = nil
		cfg.NextProtos = []string{"h2", "http/1.1"}
		return cfg, nil
	}
	tc := tls.Server(under, base)
	hctx, cancel := context.WithTimeout(t.ctx, tlsHandshakeTimeout)
	err := tc.HandshakeContext(hctx)
	cancel()
	if err != nil {
		t.log.Debug("tls handshake", "port", port, "remote", c.RemoteAddr(), "err", err)
		return
	}
	c.SetDeadline(time.Time{})
	app := net.JoinHostPort("127.0.0.1", strconv.Itoa(int(port)))
	if tc.ConnectionState().NegotiatedProtocol == "h2" {
		t.serveHTTP2(tc, port, app, proxyHdr, client.Addr())
		return
	}
	ac, err := dialApp(t.ctx, app, proxyHdr)
	if err != nil {
		t.log.Debug("dial app", "port", port, "err", err)
		return
	}
	defer ac.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		io.Copy(ac, tc)
		if cw, ok := ac.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		}
	}()
	io.Copy(tc, ac)
	tc.CloseWrite()
	<-done
}

// fromEdge reports whether a is an edge node's overlay address.
func (t *tlsTerminator) fromEdge(a netip.Addr) bool {
	edges := t.edges.Load()
	return edges != nil && slices.Contains(*edges, a.Unmap())
}

// dialApp connects to the app at addr and writes proxyHdr, if any, first.
func dialApp(ctx context.Context, addr string, proxyHdr []byte) (net.Conn, error) {
	d := net.Dialer{Timeout: 10 * time.Second}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil || proxyHdr == nil {
		return c, err
	}
	if _, err := c.Write(proxyHdr); err != nil {
		c.Close()
		return nil, fmt.Errorf("write PROXY header to %s: %w", addr, err)
	}
	return c, nil
}

// serveHTTP2 serves the HTTP/2 connection tc, proxying its requests to the
// app at addr on connections of its own (which each start with proxyHdr,
// if any, so an app that expects the PROXY protocol gets it on every
// connection). client, if valid, becomes X-Forwarded-For: this device is
// the first HTTP hop, so whatever the client sent there is dropped.
func (t *tlsTerminator) serveHTTP2(tc *tls.Conn, port uint16, addr string, proxyHdr []byte, client netip.Addr) {
	dial := func(ctx context.Context) (net.Conn, error) { return dialApp(ctx, addr, proxyHdr) }
	h1 := &http.Transport{
		DialContext:         func(ctx context.Context, _, _ string) (net.Conn, error) { return dial(ctx) },
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}
	defer h1.CloseIdleConnections()
	h2 := &http2.Transport{
		AllowHTTP:      true,
		DialTLSContext: func(ctx context.Context, _, _ string, _ *tls.Config) (net.Conn, error) { return dial(ctx) },
	}
	defer h2.CloseIdleConnections()
	o := exposeProxyOptions{Port: port, Target: addr, Watching: t.s.watching, Publish: t.s.publish, Capture: t.s.captureFor(port), Record: t.s.record, Logger: t.log}
	proxy := h2Handler(o, t.log, transportSwitch{h1: h1, h2: h2})
	var xff []string
	if client.IsValid() {
		xff = []string{client.Unmap().String()}
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if xff == nil {
			r.Header.Del("X-Forwarded-For")
		} else {
			r.Header["X-Forwarded-For"] = xff
		}
		proxy.ServeHTTP(w, r)
	})
	(&http2.Server{}).ServeConn(tc, &http2.ServeConnOpts{Context: t.ctx, Handler: h})
}

// getCertificate waits for the certificate of the ClientHello's name,
// which must be the host of one of this device's tls routes.
func (t *tlsTerminator) getCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	name := strings.ToLower(strings.TrimSuffix(hello.ServerName, "."))
	t.mu.Lock()
	h := t.hosts[name]
	t.mu.Unlock()
	if h == nil {
		return nil, fmt.Errorf("expose: no tls route for %q", hello.ServerName)
	}
	select {
	case <-h.ready:
	case <-hello.Context().Done():
		return nil, fmt.Errorf("expose: certificate for %s not ready: %w", name, hello.Context().Err())
	}
	if h.err != nil {
		return nil, fmt.Errorf("expose: certificate for %s: %w", name, h.err)
	}
	return t.acme.GetCertificate(hello)
}

// close stops listening, cuts open connections, stops obtaining and
// renewing, and waits for every goroutine.
func (t *tlsTerminator) close() {
	t.mu.Lock()
	t.cancel()
	for c := range t.conns {
		c.Close()
	}
	t.mu.Unlock()
	for port, l := range t.listeners {
		l.close()
		delete(t.listeners, port)
	}
	t.wg.Wait()
	t.acme.Close()
}
