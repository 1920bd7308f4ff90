package edge

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
)

var bigSize = flag.Int64("edge.bigsize", 64<<20, "bytes for the large upload/download test")

func TestHostRouting(t *testing.T) {
	ov := newOverlay()
	e := newTestEdge(t, ov, Options{})
	a, _ := origin(t, ov, nameHandler("alpha"))
	b, _ := origin(t, ov, nameHandler("beta"))
	setRoutes(t, e, httpRoute("alpha", a), httpRoute("beta", b))
	c := clientTo(serveHTTP(t, e))

	tests := []struct {
		name, host string
		status     int
		body       string
	}{
		{"alpha", "alpha.example.test", 200, "alpha GET /x"},
		{"beta", "beta.example.test", 200, "beta GET /x"},
		{"upper case", "ALPHA.Example.TEST", 200, "alpha GET /x"},
		{"trailing dot", "beta.example.test.", 200, "beta GET /x"},
		{"with port", "alpha.example.test:80", 200, "alpha GET /x"},
		{"two trailing dots", "alpha.example.test..", 404, ""},
		{"unknown", "gamma.example.test", 404, ""},
		{"parent", "example.test", 404, ""},
		{"suffix trick", "alpha.example.test.evil.test", 404, ""},
		{"ip literal", "127.0.0.1", 404, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, body, _ := get(t, c, "http://x/x", "Host", tt.host)
			if status != tt.status {
				t.Fatalf("status = %d, want %d (body %q)", status, tt.status, body)
			}
			if tt.status == 200 && body != tt.body {
				t.Errorf("body = %q, want %q", body, tt.body)
			}
			if tt.status == 404 && !strings.Contains(body, "No Beam service") {
				t.Errorf("404 body = %q, want the edge's page", body)
			}
		})
	}
}

func TestSetRoutesValidation(t *testing.T) {
	ov := newOverlay()
	e := newTestEdge(t, ov, Options{})
	good := netip4(100, 64, 1, 2, 80)
	tests := []struct {
		name  string
		route []Route
		ok    bool
	}{
		{"good", []Route{httpRoute("a", good)}, true},
		{"ula target", []Route{httpRoute("a", mustAP("[fd7a:115c:a1e0::1]:80"))}, true},
		{"custom verified", []Route{{Host: "shop.customer.test", CustomDomain: true, Proto: ProtoHTTP, Targets: []netip.AddrPort{good}}}, true},
		{"custom unverified", []Route{{Host: "shop.customer.test", Proto: ProtoHTTP, Targets: []netip.AddrPort{good}}}, false},
		{"custom under domain", []Route{{Host: "a.example.test", CustomDomain: true, Proto: ProtoHTTP, Targets: []netip.AddrPort{good}}}, false},
		{"two labels", []Route{httpRoute("a.b", good)}, false},
		{"bare domain", []Route{{Host: testDomain, Proto: ProtoHTTP, Targets: []netip.AddrPort{good}}}, false},
		{"shadow by case and dot", []Route{httpRoute("a", good), {Host: "A.Example.Test.", Proto: ProtoTLS, Targets: []netip.AddrPort{good}}}, false},
		{"loopback", []Route{httpRoute("a", mustAP("127.0.0.1:80"))}, false},
		{"loopback6", []Route{httpRoute("a", mustAP("[::1]:80"))}, false},
		{"metadata", []Route{httpRoute("a", mustAP("169.254.169.254:80"))}, false},
		{"link-local6", []Route{httpRoute("a", mustAP("[fe80::1]:80"))}, false},
		{"unspecified", []Route{httpRoute("a", mustAP("0.0.0.0:80"))}, false},
		{"public", []Route{httpRoute("a", mustAP("192.0.2.1:80"))}, false},
		{"mapped", []Route{httpRoute("a", mustAP("[::ffff:100.64.1.2]:80"))}, false},
		{"service ip", []Route{httpRoute("a", mustAP("100.100.100.100:53"))}, false},
		{"port zero", []Route{httpRoute("a", netip4(100, 64, 1, 2, 0))}, false},
		{"no targets", []Route{httpRoute("a")}, false},
		{"dup tcp port", []Route{{Proto: ProtoTCP, PublicPort: 9000, Targets: []netip.AddrPort{good}}, {Proto: ProtoTCP, PublicPort: 9000, Targets: []netip.AddrPort{good}}}, true && false},
		{"tcp and udp same port", []Route{{Proto: ProtoTCP, PublicPort: 9000, Targets: []netip.AddrPort{good}}, {Proto: ProtoUDP, PublicPort: 9000, Targets: []netip.AddrPort{good}}}, true},
		{"tcp without port", []Route{{Proto: ProtoTCP, Targets: []netip.AddrPort{good}}}, false},
		{"bad proto", []Route{{Host: "a.example.test", Proto: "ftp", Targets: []netip.AddrPort{good}}}, false},
		{"bad secret", []Route{{Host: "a.example.test", Proto: ProtoHTTP, Targets: []netip.AddrPort{good}, Policy: Policy{BasicAuth: []BasicAuthUser{{User: "u", Secret: "hunter2"}}}}}, false},
		{"bad header", []Route{{Host: "a.example.test", Proto: ProtoHTTP, Targets: []netip.AddrPort{good}, Policy: Policy{RequestHeaderAdd: map[string]string{"X-A": "b\r\nEvil: 1"}}}}, false},
		{"proxy proto on http", []Route{{Host: "a.example.test", Proto: ProtoHTTP, Targets: []netip.AddrPort{good}, Policy: Policy{ProxyProtocol: 2}}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := e.SetRoutes(tt.route)
			if (err == nil) != tt.ok {
				t.Fatalf("SetRoutes err = %v, want ok=%v", err, tt.ok)
			}
		})
	}
	// A failed SetRoutes leaves the previous routes in place.
	setRoutes(t, e, httpRoute("keep", good))
	if err := e.SetRoutes([]Route{httpRoute("x", mustAP("127.0.0.1:1"))}); err == nil {
		t.Fatal("SetRoutes accepted a loopback target")
	}
	if e.routes.Load().hosts["keep.example.test"] == nil {
		t.Error("failed SetRoutes replaced the routes")
	}
}

func netip4(a, b, c, d byte, port uint16) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{a, b, c, d}), port)
}

func mustAP(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

func TestBadGateway(t *testing.T) {
	ov := newOverlay()
	e := newTestEdge(t, ov, Options{})
	refused := ov.add(closedPort(t))
	unreachable := netip4(100, 64, 200, 1, 80) // not in the overlay map
	setRoutes(t, e, httpRoute("down", refused), httpRoute("gone", unreachable))
	c := clientTo(serveHTTP(t, e))

	status, body, _ := get(t, c, "http://down.example.test/")
	if status != 502 {
		t.Fatalf("status = %d, want 502", status)
	}
	want := fmt.Sprintf("nothing listens on port %d yet", refused.Port())
	if !strings.Contains(body, want) {
		t.Errorf("body = %q, want it to contain %q", body, want)
	}
	status, body, _ = get(t, c, "http://gone.example.test/")
	if status != 502 || !strings.Contains(body, "cannot be reached") {
		t.Errorf("unreachable: status %d body %q, want 502 and an unreachable page", status, body)
	}
}

func TestForwardedHeaders(t *testing.T) {
	ov := newOverlay()
	e := newTestEdge(t, ov, Options{})
	type seen struct{ xff, xfp, xfh, real, fwd, host string }
	got := make(chan seen, 2)
	a, _ := origin(t, ov, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- seen{r.Header.Get("X-Forwarded-For"), r.Header.Get("X-Forwarded-Proto"),
			r.Header.Get("X-Forwarded-Host"), r.Header.Get("X-Real-Ip"), r.Header.Get("Forwarded"), r.Host}
	}))
	setRoutes(t, e, httpRoute("alpha", a))
	cert := selfSigned(t, "*.example.test")
	for _, proto := range []string{"http", "https"} {
		t.Run(proto, func(t *testing.T) {
			var c *http.Client
			if proto == "http" {
				c = clientTo(serveHTTP(t, e))
			} else {
				c = tlsClientTo(serveTLS(t, e, cert), "", false)
			}
			status, _, _ := get(t, c, proto+"://alpha.example.test/",
				"X-Forwarded-For", "203.0.113.9", "X-Forwarded-Proto", "gopher",
				"X-Forwarded-Host", "evil.test", "X-Real-Ip", "203.0.113.9", "Forwarded", "for=203.0.113.9")
			if status != 200 {
				t.Fatalf("status %d", status)
			}
			s := <-got
			want := seen{"127.0.0.1", proto, "alpha.example.test", "127.0.0.1", "", "alpha.example.test"}
			if s != want {
				t.Errorf("origin saw %+v, want %+v", s, want)
			}
		})
	}
}

func TestSSEStreams(t *testing.T) {
	ov := newOverlay()
	e := newTestEdge(t, ov, Options{})
	release := make(chan struct{})
	a, _ := origin(t, ov, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "data: first\n\n")
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		fmt.Fprint(w, "data: second\n\n")
	}))
	setRoutes(t, e, httpRoute("sse", a))
	c := clientTo(serveHTTP(t, e))
	resp, err := c.Get("http://sse.example.test/events")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	line, err := br.ReadString('\n')
	if err != nil || line != "data: first\n" {
		t.Fatalf("first line = %q, %v; want the first event before the origin finished", line, err)
	}
	close(release)
	rest, err := io.ReadAll(br)
	if err != nil || string(rest) != "\ndata: second\n\n" {
		t.Fatalf("rest = %q, %v", rest, err)
	}
}

func TestWebSocketEcho(t *testing.T) {
	ov := newOverlay()
	e := newTestEdge(t, ov, Options{})
	a, _ := origin(t, ov, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
		if err != nil {
			return
		}
		defer ws.CloseNow()
		for {
			typ, msg, err := ws.Read(r.Context())
			if err != nil {
				return
			}
			if err := ws.Write(r.Context(), typ, append([]byte("echo:"), msg...)); err != nil {
				return
			}
		}
	}))
	setRoutes(t, e, httpRoute("ws", a))
	c := clientTo(serveHTTP(t, e))
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	ws, resp, err := websocket.Dial(ctx, "ws://ws.example.test/socket", &websocket.DialOptions{HTTPClient: c})
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer ws.CloseNow()
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("status %d", resp.StatusCode)
	}
	for i := range 3 {
		msg := fmt.Sprintf("hello %d", i)
		if err := ws.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
			t.Fatal(err)
		}
		_, got, err := ws.Read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != "echo:"+msg {
			t.Errorf("got %q, want %q", got, "echo:"+msg)
		}
	}
	ws.Close(websocket.StatusNormalClosure, "")
}

func TestH2C(t *testing.T) {
	ov := newOverlay()
	e := newTestEdge(t, ov, Options{})
	a, _ := origin(t, ov, nameHandler("alpha"))
	setRoutes(t, e, httpRoute("alpha", a))
	addr := serveHTTP(t, e)
	tr := &http.Transport{
		Protocols: new(http.Protocols),
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		},
	}
	tr.Protocols.SetUnencryptedHTTP2(true)
	resp, err := (&http.Client{Transport: tr}).Get("http://alpha.example.test/h2c")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.ProtoMajor != 2 || string(body) != "alpha GET /h2c" {
		t.Errorf("got %s %q, want HTTP/2 and the origin's answer", resp.Proto, body)
	}
}

// TestLargeStream moves *bigSize bytes up and down through the edge and
// compares SHA-256 digests.
func TestLargeStream(t *testing.T) {
	ov := newOverlay()
	e := newTestEdge(t, ov, Options{})
	size := *bigSize
	a, _ := origin(t, ov, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.Method {
		case "POST":
			h := sha256.New()
			n, err := io.Copy(h, r.Body)
			if err != nil {
				http.Error(w, err.Error(), 500)
				return
			}
			fmt.Fprintf(w, "%d %x", n, h.Sum(nil))
		case "GET":
			io.Copy(w, io.LimitReader(rand.NewChaCha8([32]byte{1}), size))
		}
	}))
	setRoutes(t, e, httpRoute("big", a))
	c := clientTo(serveHTTP(t, e))

	want := sha256.New()
	io.Copy(want, io.LimitReader(rand.NewChaCha8([32]byte{1}), size))
	wantSum := hex.EncodeToString(want.Sum(nil))

	t.Run("upload", func(t *testing.T) {
		pr, pw := io.Pipe()
		go func() {
			_, err := io.Copy(pw, io.LimitReader(rand.NewChaCha8([32]byte{1}), size))
			pw.CloseWithError(err)
		}()
		resp, err := c.Post("http://big.example.test/up", "application/octet-stream", pr)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if got, want := string(body), fmt.Sprintf("%d %s", size, wantSum); got != want {
			t.Errorf("origin got %q, want %q", got, want)
		}
	})
	t.Run("download", func(t *testing.T) {
		resp, err := c.Get("http://big.example.test/down")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		h := sha256.New()
		n, err := io.Copy(h, resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		if got := hex.EncodeToString(h.Sum(nil)); n != size || got != wantSum {
			t.Errorf("downloaded %d bytes with sha256 %s, want %d %s", n, got, size, wantSum)
		}
	})
}

// rawRequest writes req on a fresh connection to addr and returns the
// status line of the answer ("" if the connection closed first).
func rawRequest(t *testing.T, addr, req string) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	line, _ := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line)
}

func TestSmugglingRefused(t *testing.T) {
	ov := newOverlay()
	e := newTestEdge(t, ov, Options{})
	var hits sync.Map
	a, _ := origin(t, ov, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		hits.Store(r.URL.Path, true)
	}))
	setRoutes(t, e, httpRoute("alpha", a))
	addr := serveHTTP(t, e)
	tests := []struct {
		name, req, status string
	}{
		{"CL then TE", "POST /cl-te HTTP/1.1\r\nHost: alpha.example.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "HTTP/1.1 400 Bad Request"},
		{"TE then CL", "POST /te-cl HTTP/1.1\r\nHost: alpha.example.test\r\ntransfer-encoding: chunked\r\ncontent-length: 40\r\n\r\n0\r\n\r\n", "HTTP/1.1 400 Bad Request"},
		{"TE list", "POST /te-list HTTP/1.1\r\nHost: alpha.example.test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", "HTTP/1.1 501 Not Implemented"},
		{"two CLs", "POST /two-cl HTTP/1.1\r\nHost: alpha.example.test\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", "HTTP/1.1 400 Bad Request"},
		{"header too large", "GET /big HTTP/1.1\r\nHost: alpha.example.test\r\nX-Big: " + strings.Repeat("a", 100<<10) + "\r\n\r\n", "HTTP/1.1 431 Request Header Fields Too Large"},
		{"chunked alone is fine", "POST /chunked HTTP/1.1\r\nHost: alpha.example.test\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n\r\n", "HTTP/1.1 200 OK"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := rawRequest(t, addr, tt.req)
			if got != tt.status {
				t.Errorf("status line = %q, want %q", got, tt.status)
			}
			path := strings.Fields(tt.req)[1]
			_, hit := hits.Load(path)
			if hit != strings.HasSuffix(tt.status, "200 OK") {
				t.Errorf("origin hit = %v for %s", hit, tt.status)
			}
		})
	}
}

func TestSlowlorisCutOff(t *testing.T) {
	ov := newOverlay()
	e := newTestEdge(t, ov, Options{ReadHeaderTimeout: 300 * time.Millisecond})
	a, _ := origin(t, ov, nameHandler("alpha"))
	setRoutes(t, e, httpRoute("alpha", a))
	cert := selfSigned(t, "*.example.test")
	for name, addr := range map[string]string{"http": serveHTTP(t, e), "tls": serveTLS(t, e, cert)} {
		t.Run(name, func(t *testing.T) {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			start := time.Now()
			if name == "http" {
				io.WriteString(c, "GET / HTTP/1.1\r\nHost: alpha.example.test\r\nX-Slow: ")
			} else {
				c.Write([]byte{22, 3, 1}) // a ClientHello that never completes
			}
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, err = io.ReadAll(c)
			if elapsed := time.Since(start); err != nil || elapsed > 3*time.Second {
				t.Fatalf("connection not closed by the edge: err %v after %v", err, elapsed)
			}
		})
	}
}

func TestConnCapPerClient(t *testing.T) {
	ov := newOverlay()
	e := newTestEdge(t, ov, Options{MaxConnsPerClient: 2})
	a, _ := origin(t, ov, nameHandler("alpha"))
	setRoutes(t, e, httpRoute("alpha", a))
	addr := serveHTTP(t, e)

	// alive reports whether a connection is served, by sending a request.
	alive := func(c net.Conn) bool {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: alpha.example.test\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	}
	var conns []net.Conn
	for range 3 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns = append(conns, c)
	}
	if !alive(conns[0]) || !alive(conns[1]) {
		t.Fatal("first two connections not served")
	}
	if alive(conns[2]) {
		t.Fatal("third connection served, want it cut by MaxConnsPerClient=2")
	}
	conns[0].Close()
	waitFor(t, 5*time.Second, "a slot after closing a connection", func() bool {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return false
		}
		defer c.Close()
		return alive(c)
	})
}

func TestOnRequest(t *testing.T) {
	ov := newOverlay()
	logs := make(chan RequestLog, 10)
	e := newTestEdge(t, ov, Options{OnRequest: func(l RequestLog) { logs <- l }})
	a, _ := origin(t, ov, nameHandler("alpha"))
	setRoutes(t, e, httpRoute("alpha", a))
	c := clientTo(serveHTTP(t, e))
	get(t, c, "http://alpha.example.test/p?q=1")
	get(t, c, "http://nope.example.test/")
	// OnRequest runs after the response is sent, so the two may come in
	// either order.
	got := map[string]RequestLog{}
	for range 2 {
		l := <-logs
		got[l.Host] = l
	}
	l := got["alpha.example.test"]
	if l.Method != "GET" || l.Path != "/p" || l.Status != 200 ||
		l.Bytes != int64(len("alpha GET /p")) || l.ClientIP.String() != "127.0.0.1" || l.Target != a || l.Duration <= 0 {
		t.Errorf("log = %+v", l)
	}
	if l := got["nope.example.test"]; l.Status != 404 {
		t.Errorf("log of unknown host = %+v, want status 404", l)
	}
}

func TestCloseStopsServing(t *testing.T) {
	ov := newOverlay()
	e, err := New(Options{Dial: ov.dial, Domain: testDomain})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- e.ServeHTTPListener(context.Background(), ln) }()
	e.Close()
	if err := <-done; !errors.Is(err, ErrClosed) {
		t.Errorf("ServeHTTPListener after Close = %v, want ErrClosed", err)
	}
	if err := e.SetRoutes(nil); !errors.Is(err, ErrClosed) {
		t.Errorf("SetRoutes after Close = %v, want ErrClosed", err)
	}
	if _, err := net.Dial("tcp", ln.Addr().String()); err == nil {
		t.Error("listener still open after Close")
	}
	e.Close() // idempotent
}

// TestHTTPSRedirect: with SetHTTPSRedirect, a plain-HTTP request for an
// http route gets 308 to the same URL over HTTPS (method and body kept by
// the client), before basic auth asks for a password; the route still
// serves over TLS, unknown hosts still get 404, and port 0 turns it off.
func TestHTTPSRedirect(t *testing.T) {
	ov := newOverlay()
	app, _ := origin(t, ov, nameHandler("alpha"))
	e := newTestEdge(t, ov, Options{})
	rt := httpRoute("alpha", app)
	rt.Policy.BasicAuth = []BasicAuthUser{{User: "u", Secret: "plain:p"}}
	setRoutes(t, e, rt)
	plain := clientTo(serveHTTP(t, e))
	plain.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	cert := selfSigned(t, "alpha."+testDomain)
	tlsAddr := serveTLS(t, e, cert)

	e.SetHTTPSRedirect(443)
	for _, tc := range []struct{ url, host, want string }{
		{"http://alpha." + testDomain + "/a/b?x=1&y=%20", "", "https://alpha." + testDomain + "/a/b?x=1&y=%20"},
		{"http://alpha." + testDomain + "/", "ALPHA." + testDomain + ":80", "https://alpha." + testDomain + "/"},
	} {
		var hdr []string
		if tc.host != "" {
			hdr = []string{"Host", tc.host}
		}
		code, _, h := get(t, plain, tc.url, hdr...)
		if code != http.StatusPermanentRedirect || h.Get("Location") != tc.want {
			t.Errorf("GET %s: %d Location %q, want 308 %q", tc.url, code, h.Get("Location"), tc.want)
		}
	}
	if code, _, _ := get(t, plain, "http://nope."+testDomain+"/"); code != http.StatusNotFound {
		t.Errorf("unknown host: %d, want 404", code)
	}

	e.SetHTTPSRedirect(8443)
	if _, _, h := get(t, plain, "http://alpha."+testDomain+"/p"); h.Get("Location") != "https://alpha."+testDomain+":8443/p" {
		t.Errorf("Location %q, want the HTTPS port in it", h.Get("Location"))
	}

	// Over TLS the route serves as before (401: basic auth).
	roots := x509.NewCertPool()
	roots.AddCert(cert.Leaf)
	tc := clientTo(tlsAddr)
	tc.Transport.(*http.Transport).TLSClientConfig = &tls.Config{RootCAs: roots}
	if code, _, _ := get(t, tc, "https://alpha."+testDomain+"/"); code != http.StatusUnauthorized {
		t.Errorf("over TLS: %d, want 401", code)
	}

	e.SetHTTPSRedirect(0)
	if code, _, _ := get(t, plain, "http://alpha."+testDomain+"/"); code != http.StatusUnauthorized {
		t.Errorf("redirect off: %d, want 401", code)
	}
}

// TestBasicAuthStaysAtEdge checks that the credentials a route's basic auth
// checked never reach the app, while a route without basic auth passes an
// Authorization header through (it is the app's own).
func TestBasicAuthStaysAtEdge(t *testing.T) {
	ov := newOverlay()
	e := newTestEdge(t, ov, Options{})
	seen := make(chan string, 4)
	a, _ := origin(t, ov, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen <- r.Header.Get("Authorization")
		io.WriteString(w, "ok")
	}))
	locked := httpRoute("locked", a)
	locked.Policy.BasicAuth = []BasicAuthUser{{User: "u", Secret: "plain:p"}}
	setRoutes(t, e, locked, httpRoute("open", a))
	c := clientTo(serveHTTP(t, e))
	r, _ := http.NewRequest("GET", "/", nil)
	r.SetBasicAuth("u", "p")
	creds := r.Header.Get("Authorization")

	tests := []struct {
		host, want string
	}{
		{"locked." + testDomain, ""},
		{"open." + testDomain, creds},
	}
	for _, tt := range tests {
		t.Run(tt.host, func(t *testing.T) {
			code, body, _ := get(t, c, "http://"+tt.host+"/", "Authorization", creds)
			if code != http.StatusOK || body != "ok" {
				t.Fatalf("GET = %d %q, want 200 ok", code, body)
			}
			if got := <-seen; got != tt.want {
				t.Errorf("app saw Authorization %q, want %q", got, tt.want)
			}
		})
	}
}
