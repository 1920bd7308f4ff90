package edge

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const testDomain = "example.test"

// overlay stands in for the real overlay in tests: it maps fake overlay
// addresses (100.64.0.0/10) to loopback listeners. Edge validation still
// sees only overlay addresses.
type overlay struct {
	mu    sync.Mutex
	m     map[netip.AddrPort]string
	next  uint32
	dials atomic.Int64
}

func newOverlay() *overlay { return &overlay{m: map[netip.AddrPort]string{}} }

// add maps a new overlay address to the loopback address real.
func (o *overlay) add(real string) netip.AddrPort {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.next++
	ip := netip.AddrFrom4([4]byte{100, 64, byte(o.next >> 8), byte(o.next)})
	ap := netip.AddrPortFrom(ip, 8000+uint16(o.next))
	o.m[ap] = real
	return ap
}

// set remaps an overlay address.
func (o *overlay) set(ap netip.AddrPort, real string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.m[ap] = real
}

func (o *overlay) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	o.dials.Add(1)
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, err
	}
	o.mu.Lock()
	real, ok := o.m[ap]
	o.mu.Unlock()
	if !ok {
		return nil, &net.OpError{Op: "dial", Net: network, Err: errors.New("no route to overlay host")}
	}
	var d net.Dialer
	return d.DialContext(ctx, network, real)
}

// closedPort returns a loopback address where nothing listens.
func closedPort(t testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// newTestEdge returns an Edge dialing through ov, closed at cleanup.
func newTestEdge(t testing.TB, ov *overlay, opts Options) *Edge {
	t.Helper()
	opts.Dial = ov.dial
	if opts.Domain == "" {
		opts.Domain = testDomain
	}
	e, err := New(opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

// serve runs fn on a fresh loopback listener and stops it at cleanup,
// checking that it returned. It returns the listener's address.
func serve(t testing.TB, network string, fn func(ctx context.Context, ln net.Listener) error) string {
	t.Helper()
	ln, err := net.Listen(network, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- fn(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if !errors.Is(err, context.Canceled) && !errors.Is(err, ErrClosed) {
				t.Errorf("serve returned %v, want context.Canceled", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("serve did not return after cancel")
		}
	})
	return ln.Addr().String()
}

// serveHTTP runs e.ServeHTTPListener and returns its address.
func serveHTTP(t testing.TB, e *Edge) string {
	return serve(t, "tcp", e.ServeHTTPListener)
}

// serveTLS runs e.ServeTLSListener with cert and returns its address.
func serveTLS(t testing.TB, e *Edge, cert *tls.Certificate) string {
	return serve(t, "tcp", func(ctx context.Context, ln net.Listener) error {
		return e.ServeTLSListener(ctx, ln, func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return cert, nil })
	})
}

// clientTo returns an HTTP client that sends every request to addr, so
// URLs can carry the public host names.
func clientTo(addr string) *http.Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		},
		DisableCompression: true,
	}
	return &http.Client{Transport: tr, Timeout: 60 * time.Second}
}

// origin starts an HTTP origin server on loopback and registers it in ov.
func origin(t testing.TB, ov *overlay, h http.Handler) (netip.AddrPort, *httptest.Server) {
	t.Helper()
	srv := httptest.NewUnstartedServer(h)
	srv.Config.Protocols = new(http.Protocols)
	srv.Config.Protocols.SetHTTP1(true)
	srv.Config.Protocols.SetUnencryptedHTTP2(true)
	srv.Start()
	t.Cleanup(srv.Close)
	return ov.add(srv.Listener.Addr().String()), srv
}

// selfSigned makes a certificate for names.
func selfSigned(t testing.TB, names ...string) *tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: names[0]},
		DNSNames:     names,
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

// setRoutes calls SetRoutes and fails the test on error.
func setRoutes(t testing.TB, e *Edge, routes ...Route) {
	t.Helper()
	if err := e.SetRoutes(routes); err != nil {
		t.Fatalf("SetRoutes: %v", err)
	}
}

func httpRoute(host string, targets ...netip.AddrPort) Route {
	return Route{Host: host + "." + testDomain, Proto: ProtoHTTP, Targets: targets}
}

// get fetches url with c and returns status and body.
func get(t testing.TB, c *http.Client, url string, hdr ...string) (int, string, http.Header) {
	t.Helper()
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		if hdr[i] == "Host" {
			req.Host = hdr[i+1]
			continue
		}
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: read body: %v", url, err)
	}
	return resp.StatusCode, string(b), resp.Header
}

// waitFor polls cond every 20 ms until it holds or d passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		<-tick.C
	}
}

// nameHandler answers with name and the request's headers of interest.
func nameHandler(name string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Origin", name)
		fmt.Fprintf(w, "%s %s %s", name, r.Method, r.URL.Path)
	})
}
