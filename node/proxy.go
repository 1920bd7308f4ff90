package node

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"beam.dev/beam/internal/streamcopy"
)

// SOCKS5 (RFC 1928) constants used by the proxy.
const (
	socks5Version     = 0x05
	socksNoAuth       = 0x00
	socksNoAcceptable = 0xff
	socksCmdConnect   = 0x01
	socksAtypIPv4     = 0x01
	socksAtypDomain   = 0x03
	socksAtypIPv6     = 0x04

	socksSucceeded          = 0x00
	socksGeneralFailure     = 0x01
	socksHostUnreachable    = 0x04
	socksConnRefused        = 0x05
	socksCmdNotSupported    = 0x07
	socksAddrTypeNotSupport = 0x08
)

// dialer is what the proxies dial through; Node implements it.
type dialer interface {
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
}

// ServeSOCKS5 serves a SOCKS5 proxy (CONNECT, no authentication) on ln,
// dialing through the node so MagicDNS names and overlay addresses work.
// ln should be on loopback. Peers never reach it: the engine does not
// forward their connections to ln's address, and ln refuses any that is
// the engine's forwarder. It returns when ctx is done or ln fails.
func (n *Node) ServeSOCKS5(ctx context.Context, ln net.Listener) error {
	defer n.ownListener(ln.Addr())()
	ln = refuseOverlay{Listener: ln, n: n}
	return serveConns(ctx, ln, func(c net.Conn) { n.met.socks5Conns.Add(1); socks5Handle(ctx, n, c) })
}

// ServeHTTPProxy serves an HTTP proxy (CONNECT and absolute-URI requests)
// on ln, dialing through the node. Like ServeSOCKS5's, it serves the host
// only, never peers.
func (n *Node) ServeHTTPProxy(ctx context.Context, ln net.Listener) error {
	defer n.ownListener(ln.Addr())()
	ln = refuseOverlay{Listener: ln, n: n}
	tr := &http.Transport{DialContext: n.DialContext, ForceAttemptHTTP2: false, MaxIdleConnsPerHost: 16}
	defer tr.CloseIdleConnections()
	srv := &http.Server{
		Handler:           &httpProxy{d: n, tr: tr, isMesh: n.isMeshHost},
		ReadHeaderTimeout: 30 * time.Second,
		ConnState:         n.met.httpProxyConnState,
	}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	err := srv.Serve(ln)
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// serveConns accepts on ln and runs handle per connection until ctx ends,
// then waits for the handlers.
func serveConns(ctx context.Context, ln net.Listener, handle func(net.Conn)) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			handle(c)
		}()
	}
}

func socks5Handle(ctx context.Context, d dialer, c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	br := bufio.NewReader(c)
	target, err := socks5Handshake(br, c)
	if err != nil {
		return
	}
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	out, err := d.DialContext(dctx, "tcp", target)
	cancel()
	if err != nil {
		code := byte(socksHostUnreachable)
		if errors.Is(err, syscall.ECONNREFUSED) || isRefused(err) {
			code = socksConnRefused
		}
		c.Write([]byte{socks5Version, code, 0, socksAtypIPv4, 0, 0, 0, 0, 0, 0})
		return
	}
	defer out.Close()
	reply := []byte{socks5Version, socksSucceeded, 0}
	reply = appendSocksAddr(reply, out.LocalAddr())
	if _, err := c.Write(reply); err != nil {
		return
	}
	c.SetDeadline(time.Time{})
	pipe(c, br, out)
}

func isRefused(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Err != nil && (errors.Is(op.Err, syscall.ECONNREFUSED) || op.Err.Error() == "connection was refused")
}

// socks5Handshake reads the greeting and request and returns host:port.
// Every malformed message gets an error reply where the protocol has one.
func socks5Handshake(br *bufio.Reader, w io.Writer) (string, error) {
	var hdr [2]byte
	if _, err := io.ReadFull(br, hdr[:]); err != nil {
		return "", err
	}
	if hdr[0] != socks5Version {
		return "", fmt.Errorf("socks: version %d not supported", hdr[0])
	}
	methods := make([]byte, hdr[1])
	if _, err := io.ReadFull(br, methods); err != nil {
		return "", err
	}
	ok := false
	for _, m := range methods {
		if m == socksNoAuth {
			ok = true
		}
	}
	if !ok {
		w.Write([]byte{socks5Version, socksNoAcceptable})
		return "", errors.New("socks: client offers no acceptable auth method")
	}
	if _, err := w.Write([]byte{socks5Version, socksNoAuth}); err != nil {
		return "", err
	}
	var req [4]byte
	if _, err := io.ReadFull(br, req[:]); err != nil {
		return "", err
	}
	if req[0] != socks5Version {
		return "", errors.New("socks: bad request version")
	}
	fail := func(code byte, err error) (string, error) {
		w.Write([]byte{socks5Version, code, 0, socksAtypIPv4, 0, 0, 0, 0, 0, 0})
		return "", err
	}
	if req[1] != socksCmdConnect {
		return fail(socksCmdNotSupported, fmt.Errorf("socks: command %d not supported", req[1]))
	}
	var host string
	switch req[3] {
	case socksAtypIPv4:
		var a [4]byte
		if _, err := io.ReadFull(br, a[:]); err != nil {
			return "", err
		}
		host = netip.AddrFrom4(a).String()
	case socksAtypIPv6:
		var a [16]byte
		if _, err := io.ReadFull(br, a[:]); err != nil {
			return "", err
		}
		host = netip.AddrFrom16(a).String()
	case socksAtypDomain:
		l, err := br.ReadByte()
		if err != nil {
			return "", err
		}
		name := make([]byte, l)
		if _, err := io.ReadFull(br, name); err != nil {
			return "", err
		}
		host = string(name)
	default:
		return fail(socksAddrTypeNotSupport, fmt.Errorf("socks: address type %d not supported", req[3]))
	}
	var port [2]byte
	if _, err := io.ReadFull(br, port[:]); err != nil {
		return "", err
	}
	return net.JoinHostPort(host, strconv.Itoa(int(binary.BigEndian.Uint16(port[:])))), nil
}

func appendSocksAddr(b []byte, a net.Addr) []byte {
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return append(b, socksAtypIPv4, 0, 0, 0, 0, 0, 0)
	}
	if ap.Addr().Is4() {
		a4 := ap.Addr().As4()
		b = append(b, socksAtypIPv4)
		b = append(b, a4[:]...)
	} else {
		a16 := ap.Addr().As16()
		b = append(b, socksAtypIPv6)
		b = append(b, a16[:]...)
	}
	return binary.BigEndian.AppendUint16(b, ap.Port())
}

// pipe copies both ways between a client (with the reader that buffered
// its handshake) and out until either side finishes, half-closing where
// possible.
func pipe(c net.Conn, cr *bufio.Reader, out net.Conn) {
	done := make(chan struct{}, 2)
	go func() {
		// What the client sent after its request is in cr; the rest
		// comes from c itself, so the copy sees the socket (and two host
		// sockets splice).
		if n := cr.Buffered(); n > 0 {
			b, _ := cr.Peek(n)
			if _, err := out.Write(b); err != nil {
				out.Close()
				done <- struct{}{}
				return
			}
			cr.Discard(n)
		}
		streamcopy.Copy(out, c)
		closeWrite(out)
		done <- struct{}{}
	}()
	go func() {
		streamcopy.Copy(c, out)
		closeWrite(c)
		done <- struct{}{}
	}()
	<-done
	<-done
}

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
		return
	}
	c.Close()
}

// httpProxy is an HTTP proxy handler: CONNECT tunnels and plain requests.
type httpProxy struct {
	d  dialer
	tr *http.Transport
	// isMesh reports whether host (a name or an address) is in the mesh.
	// Nil means nothing is.
	isMesh func(ctx context.Context, host string) bool
}

func (p *httpProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodConnect && !r.URL.IsAbs() {
		// Origin form: a browser page (CSRF) or a rebound DNS name
		// talking to the proxy as if it were a web server.
		http.Error(w, "this is a proxy: send absolute-URI requests or CONNECT", http.StatusBadRequest)
		return
	}
	if !sameSiteOrLoopback(r) {
		http.Error(w, "beam proxy: refused a request from a web page of another site", http.StatusForbidden)
		return
	}
	if fromOtherSite(r) && p.isMesh != nil && p.isMesh(r.Context(), r.URL.Hostname()) {
		// A page's request with neither Origin nor Referer (an image or a
		// navigation under no-referrer) still says where it comes from.
		http.Error(w, "beam proxy: refused a request into the mesh from a web page of another site", http.StatusForbidden)
		return
	}
	if r.Method == http.MethodConnect {
		p.connect(w, r)
		return
	}
	out := r.Clone(r.Context())
	out.RequestURI = ""
	for _, h := range []string{"Proxy-Connection", "Proxy-Authorization", "Connection", "Keep-Alive", "Te", "Trailer", "Upgrade"} {
		out.Header.Del(h)
	}
	resp, err := p.tr.RoundTrip(out)
	if err != nil {
		http.Error(w, "beam proxy: "+err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	for k, vs := range resp.Header {
		for _, v := range vs {
			w.Header().Add(k, v)
		}
	}
	w.WriteHeader(resp.StatusCode)
	io.Copy(w, resp.Body)
}

// sameSiteOrLoopback reports whether r's Origin and Referer, if any, are a
// page on loopback or on the host r goes to. A browser configured to use
// the proxy sends them on requests a page makes; a page of another site
// must not reach into the mesh through the proxy.
func sameSiteOrLoopback(r *http.Request) bool {
	target := r.URL.Hostname()
	if r.Method == http.MethodConnect {
		target, _, _ = net.SplitHostPort(r.Host)
	}
	for _, h := range []string{"Origin", "Referer"} {
		for _, v := range r.Header.Values(h) {
			u, err := url.Parse(v)
			if err != nil || u.Host == "" {
				return false // "null" and other opaque origins
			}
			host := u.Hostname()
			if strings.EqualFold(host, target) || strings.EqualFold(host, "localhost") {
				continue
			}
			if a, err := netip.ParseAddr(host); err == nil && a.Unmap().IsLoopback() {
				continue
			}
			return false
		}
	}
	return true
}

// fromOtherSite reports whether r is a browser's request made by a page of
// another site than its target, by the Fetch Metadata header browsers send
// on every request (cross-site or same-site; same-site is another host of
// the same registrable domain, which the page's origin does not own).
func fromOtherSite(r *http.Request) bool {
	switch strings.ToLower(r.Header.Get("Sec-Fetch-Site")) {
	case "cross-site", "same-site":
		return true
	}
	return false
}

func (p *httpProxy) connect(w http.ResponseWriter, r *http.Request) {
	out, err := p.d.DialContext(r.Context(), "tcp", r.Host)
	if err != nil {
		http.Error(w, "beam proxy: "+err.Error(), http.StatusBadGateway)
		return
	}
	defer out.Close()
	hj, ok := w.(http.Hijacker)
	if !ok {
		http.Error(w, "hijack not supported", http.StatusInternalServerError)
		return
	}
	c, brw, err := hj.Hijack()
	if err != nil {
		return
	}
	defer c.Close()
	if _, err := c.Write([]byte("HTTP/1.1 200 Connection established\r\n\r\n")); err != nil {
		return
	}
	pipe(c, brw.Reader, out)
}
