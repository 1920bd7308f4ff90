package expose

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"beam.dev/beam/internal/proxyproto"
)

// tlsRouteHost is the name of the test's tls route.
const tlsRouteHost = "secure.example.test"

// selfSigned returns a certificate for name and a pool that trusts it.
func selfSigned(t *testing.T, name string) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: name},
		DNSNames:     []string{name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: k, Leaf: leaf}, pool
}

// tlsTermLab is a tlsTerminator holding a certificate for tlsRouteHost,
// listening on 127.0.0.2:PORT in front of an HTTP/1.1 app on
// 127.0.0.1:PORT (the host's loopback stands in for the netstack). The
// app checks that each connection starts with wantHdr (if set) and echoes
// what it saw.
type tlsTermLab struct {
	addr    string // where the terminator listens
	term    *tlsTerminator
	pool    *x509.CertPool
	wantHdr atomic.Pointer[[]byte]
	badHdr  atomic.Int32 // app connections that did not start with wantHdr
}

func newTLSTermLab(t *testing.T) *tlsTermLab {
	t.Helper()
	lab := &tlsTermLab{}
	// The app's port must also be free on 127.0.0.2 (a socket of another
	// test on 0.0.0.0 or 127.0.0.2 can hold it): try a few.
	var appLn, ln net.Listener
	for try := 0; ; try++ {
		var err error
		if appLn, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		port := appLn.Addr().(*net.TCPAddr).Port
		if ln, err = net.Listen("tcp", net.JoinHostPort("127.0.0.2", strconv.Itoa(port))); err == nil {
			break
		}
		appLn.Close()
		if try == 20 {
			t.Fatalf("no port free on both 127.0.0.1 and 127.0.0.2: %v", err)
		}
	}
	port := appLn.Addr().(*net.TCPAddr).Port
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "proto=%s xff=%s", r.Proto, r.Header.Get("X-Forwarded-For"))
	})}
	srv.Protocols = new(http.Protocols)
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	served := make(chan struct{})
	go func() {
		defer close(served)
		srv.Serve(hdrCheckListener{appLn, lab})
	}()
	t.Cleanup(func() {
		srv.Close()
		<-served
	})

	cert, pool := selfSigned(t, tlsRouteHost)
	lab.pool = pool
	term, err := newTLSTerminator(New(Options{CertDir: t.TempDir()}))
	if err != nil {
		t.Fatal(err)
	}
	if err := term.acme.CacheUnmanaged(t.Context(), cert); err != nil {
		t.Fatal(err)
	}
	ready := make(chan struct{})
	close(ready)
	term.hosts[tlsRouteHost] = &tlsHost{cancel: func() {}, ready: ready}
	// Connections from 127.0.0.1 come from "the edge"; from 127.0.0.3,
	// from another peer.
	edges := []netip.Addr{netip.MustParseAddr("127.0.0.1")}
	term.edges.Store(&edges)
	lab.addr, lab.term = ln.Addr().String(), term
	term.wg.Add(1)
	go term.acceptLoop(ln, uint16(port))
	t.Cleanup(func() {
		ln.Close()
		term.close()
	})
	return lab
}

// hdrCheckListener is the app's listener: it reads and checks the PROXY
// header the lab expects on each connection.
type hdrCheckListener struct {
	net.Listener
	lab *tlsTermLab
}

func (l hdrCheckListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		want := l.lab.wantHdr.Load()
		if want == nil || len(*want) == 0 {
			return c, nil
		}
		got := make([]byte, len(*want))
		c.SetReadDeadline(time.Now().Add(30 * time.Second))
		_, err = io.ReadFull(c, got)
		c.SetReadDeadline(time.Time{})
		if err == nil && bytes.Equal(got, *want) {
			return c, nil
		}
		l.lab.badHdr.Add(1)
		c.Close()
	}
}

// client returns an HTTP client (HTTP/2 when the device agrees) that
// connects from local, sends hdr before TLS and offers alpn.
func (lab *tlsTermLab) client(local string, hdr []byte, alpn []string) *http.Client {
	d := &net.Dialer{Timeout: 30 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
	tr := &http.Transport{
		ForceAttemptHTTP2: true,
		DialTLSContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			c, err := d.DialContext(ctx, "tcp", lab.addr)
			if err != nil {
				return nil, err
			}
			if _, err := c.Write(hdr); err != nil {
				c.Close()
				return nil, err
			}
			tc := tls.Client(c, &tls.Config{ServerName: tlsRouteHost, RootCAs: lab.pool, NextProtos: alpn})
			if err := tc.HandshakeContext(ctx); err != nil {
				c.Close()
				return nil, err
			}
			return tc, nil
		},
	}
	return &http.Client{Transport: tr, Timeout: 60 * time.Second}
}

// proxyV2 builds a PROXY v2 header from src to dst.
func proxyV2(src, dst netip.AddrPort) []byte {
	b := []byte(proxyV2Sig)
	if src.Addr().Is4() {
		b = append(b, 0x21, 0x11, 0, 12)
	} else {
		b = append(b, 0x21, 0x21, 0, 36)
	}
	b = append(b, src.Addr().AsSlice()...)
	b = append(b, dst.Addr().AsSlice()...)
	b = binary.BigEndian.AppendUint16(b, src.Port())
	return binary.BigEndian.AppendUint16(b, dst.Port())
}

// TestTLSRouteALPNAndProxyHeader: a device terminating TLS for its tls
// route offers h2 and http/1.1 to HTTP clients and serves HTTP/2 itself
// in front of an HTTP/1.1 app; clients offering no ALPN or another
// protocol still get the byte stream. A PROXY header from an edge node is
// read before the ClientHello, passed to the app at the start of every
// connection, and names the client in X-Forwarded-For on the HTTP/2 path.
func TestTLSRouteALPNAndProxyHeader(t *testing.T) {
	lab := newTLSTermLab(t)
	v1 := []byte("PROXY TCP4 203.0.113.7 198.51.100.1 40000 443\r\n")
	v2 := proxyV2(netip.MustParseAddrPort("203.0.113.8:40001"), netip.MustParseAddrPort("198.51.100.1:443"))
	v2six := proxyV2(netip.MustParseAddrPort("[2001:db8::9]:40002"), netip.MustParseAddrPort("[2001:db8::1]:443"))
	tests := []struct {
		name      string
		local     string // the client's address; 127.0.0.1 is an edge node
		hdr       []byte
		alpn      []string
		wantALPN  string
		wantProto string // what the client speaks
		wantBody  string
	}{
		{"h2 from a peer", "127.0.0.3", nil, []string{"h2", "http/1.1"}, "h2", "HTTP/2.0", "proto=HTTP/1.1 xff=127.0.0.3"},
		{"http1 from a peer", "127.0.0.3", nil, []string{"http/1.1"}, "http/1.1", "HTTP/1.1", "proto=HTTP/1.1 xff=192.0.2.66"},
		{"no ALPN", "127.0.0.3", nil, nil, "", "HTTP/1.1", "proto=HTTP/1.1 xff=192.0.2.66"},
		{"other ALPN", "127.0.0.3", nil, []string{"imap"}, "", "HTTP/1.1", "proto=HTTP/1.1 xff=192.0.2.66"},
		{"h2 from the edge without PROXY", "127.0.0.1", nil, []string{"h2", "http/1.1"}, "h2", "HTTP/2.0", "proto=HTTP/1.1 xff="},
		{"h2 PROXY v1", "127.0.0.1", v1, []string{"h2", "http/1.1"}, "h2", "HTTP/2.0", "proto=HTTP/1.1 xff=203.0.113.7"},
		{"h2 PROXY v2", "127.0.0.1", v2, []string{"h2", "http/1.1"}, "h2", "HTTP/2.0", "proto=HTTP/1.1 xff=203.0.113.8"},
		{"h2 PROXY v2 IPv6", "127.0.0.1", v2six, []string{"h2", "http/1.1"}, "h2", "HTTP/2.0", "proto=HTTP/1.1 xff=2001:db8::9"},
		{"http1 PROXY v1", "127.0.0.1", v1, []string{"http/1.1"}, "http/1.1", "HTTP/1.1", "proto=HTTP/1.1 xff=192.0.2.66"},
		{"no ALPN PROXY v2", "127.0.0.1", v2, nil, "", "HTTP/1.1", "proto=HTTP/1.1 xff=192.0.2.66"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hdr := tt.hdr
			lab.wantHdr.Store(&hdr)
			bad := lab.badHdr.Load()
			c := lab.client(tt.local, tt.hdr, tt.alpn)
			defer c.CloseIdleConnections()
			for i := range 3 {
				req, _ := http.NewRequest("GET", "https://"+tlsRouteHost+"/", nil)
				req.Header.Set("X-Forwarded-For", "192.0.2.66")
				resp, err := c.Do(req)
				if err != nil {
					t.Fatalf("request %d: %v", i, err)
				}
				body, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil {
					t.Fatalf("request %d body: %v", i, err)
				}
				if got := resp.TLS.NegotiatedProtocol; got != tt.wantALPN {
					t.Errorf("request %d: negotiated %q, want %q", i, got, tt.wantALPN)
				}
				if resp.Proto != tt.wantProto {
					t.Errorf("request %d: client spoke %s, want %s", i, resp.Proto, tt.wantProto)
				}
				if string(body) != tt.wantBody {
					t.Errorf("request %d: status %d body %q, want %q", i, resp.StatusCode, body, tt.wantBody)
				}
			}
			if n := lab.badHdr.Load() - bad; n != 0 {
				t.Errorf("%d app connections did not start with the PROXY header %q", n, tt.hdr)
			}
		})
	}
}

// TestReadProxyHeader checks the PROXY header parser on what the edge
// sends and on what it must refuse.
func TestReadProxyHeader(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		wantHdr string
		wantSrc string // "" for no valid address
		wantErr bool
	}{
		{"TLS record", "\x16\x03\x01\x00\x05hello", "", "", false},
		{"v1 TCP4", "PROXY TCP4 203.0.113.7 198.51.100.1 40000 443\r\n\x16", "PROXY TCP4 203.0.113.7 198.51.100.1 40000 443\r\n", "203.0.113.7:40000", false},
		{"v1 TCP6", "PROXY TCP6 2001:db8::7 2001:db8::1 40000 443\r\n\x16", "PROXY TCP6 2001:db8::7 2001:db8::1 40000 443\r\n", "[2001:db8::7]:40000", false},
		{"v1 UNKNOWN", "PROXY UNKNOWN\r\n\x16", "PROXY UNKNOWN\r\n", "", false},
		{"v1 family mismatch", "PROXY TCP4 2001:db8::7 2001:db8::1 40000 443\r\n", "", "", true},
		{"v1 bad port", "PROXY TCP4 203.0.113.7 198.51.100.1 70000 443\r\n", "", "", true},
		{"v1 no CRLF", "PROXY TCP4 203.0.113.7 198.51.100.1 40000 443" + string(bytes.Repeat([]byte(" "), 100)), "", "", true},
		{"v1 truncated", "PROXY TCP4 203.0", "", "", true},
		{"not PROXY", "PUT / HTTP/1.1\r\n", "", "", true},
		{"v2 TCP4", string(proxyV2(netip.MustParseAddrPort("203.0.113.8:1"), netip.MustParseAddrPort("198.51.100.1:443"))) + "\x16", string(proxyV2(netip.MustParseAddrPort("203.0.113.8:1"), netip.MustParseAddrPort("198.51.100.1:443"))), "203.0.113.8:1", false},
		{"v2 LOCAL", proxyV2Sig + "\x20\x00\x00\x00\x16", proxyV2Sig + "\x20\x00\x00\x00", "", false},
		{"v2 bad signature", "\r\n\r\n\x00\r\nQUIX\n\x21\x11\x00\x0c", "", "", true},
		{"v2 too long", proxyV2Sig + "\x21\x11\xff\xff", "", "", true},
		{"v2 truncated", proxyV2Sig + "\x21\x11\x00\x0c\x01\x02", "", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			br := bufioReader(tt.in)
			hdr, src, err := readProxyHeader(br)
			if (err != nil) != tt.wantErr {
				t.Fatalf("got err %v, want error %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			if string(hdr) != tt.wantHdr {
				t.Errorf("got header %q, want %q", hdr, tt.wantHdr)
			}
			gotSrc := ""
			if src.IsValid() {
				gotSrc = src.String()
			}
			if gotSrc != tt.wantSrc {
				t.Errorf("got client %q, want %q", gotSrc, tt.wantSrc)
			}
			rest, _ := io.ReadAll(br)
			if want := tt.in[len(tt.wantHdr):]; string(rest) != want {
				t.Errorf("left %q unread, want %q", rest, want)
			}
		})
	}
}

func bufioReader(s string) *bufio.Reader { return bufio.NewReader(strings.NewReader(s)) }

// TestTLSRoutePeerProxyHeader: on a tls route whose app gets a PROXY
// protocol header, a peer that is not an edge has its plaintext reach the
// app behind a header naming the peer (on the HTTP/2 path, every
// connection to the app), so a header it sends itself inside TLS is data
// to the app, not a client address it believes.
func TestTLSRoutePeerProxyHeader(t *testing.T) {
	lab := newTLSTermLab(t)
	addr := netip.MustParseAddrPort(lab.addr)
	for _, v := range []int{1, 2} {
		lab.term.peerHdr.Store(&map[uint16]int{addr.Port(): v})
		for _, alpn := range [][]string{{"h2", "http/1.1"}, {"http/1.1"}} {
			t.Run(fmt.Sprintf("v%d %s", v, alpn[0]), func(t *testing.T) {
				// The peer's source port is its own, so that the header
				// naming it is known.
				pl, err := net.Listen("tcp", "127.0.0.3:0")
				if err != nil {
					t.Fatal(err)
				}
				peer := netip.MustParseAddrPort(pl.Addr().String())
				pl.Close()
				hdr := proxyproto.AppendHeader(nil, v, "tcp", peer, addr)
				lab.wantHdr.Store(&hdr)
				bad := lab.badHdr.Load()
				d := &net.Dialer{Timeout: 30 * time.Second, LocalAddr: net.TCPAddrFromAddrPort(peer)}
				c := &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{
					ForceAttemptHTTP2: true,
					DialTLSContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
						c, err := d.DialContext(ctx, "tcp", lab.addr)
						if err != nil {
							return nil, err
						}
						tc := tls.Client(c, &tls.Config{ServerName: tlsRouteHost, RootCAs: lab.pool, NextProtos: alpn})
						if err := tc.HandshakeContext(ctx); err != nil {
							c.Close()
							return nil, err
						}
						return tc, nil
					},
				}}
				defer c.CloseIdleConnections()
				resp, err := c.Get("https://" + tlsRouteHost + "/")
				if err != nil {
					t.Fatal(err)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK || !strings.HasPrefix(string(body), "proto=HTTP/1.1") {
					t.Errorf("status %d body %q, want the app's answer", resp.StatusCode, body)
				}
				if n := lab.badHdr.Load() - bad; n != 0 {
					t.Errorf("%d app connections did not start with the header naming the peer %q", n, hdr)
				}
			})
		}
	}
}
