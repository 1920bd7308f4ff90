package edge

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"golang.org/x/net/http2"
)

// wsFrame builds a masked client frame (RFC 6455 section 5.2) with a
// payload under 126 bytes.
func wsFrame(opcode byte, payload []byte) []byte {
	mask := [4]byte{0x12, 0x34, 0x56, 0x78}
	b := []byte{0x80 | opcode, 0x80 | byte(len(payload))}
	b = append(b, mask[:]...)
	for i, c := range payload {
		b = append(b, c^mask[i%4])
	}
	return b
}

// readWSFrame reads an unmasked server frame with a payload under 126
// bytes.
func readWSFrame(br *bufio.Reader) (opcode byte, payload []byte, err error) {
	var h [2]byte
	if _, err := io.ReadFull(br, h[:]); err != nil {
		return 0, nil, err
	}
	if h[1]&0x80 != 0 || h[1]&0x7f >= 126 {
		return 0, nil, fmt.Errorf("unexpected frame header % x", h)
	}
	payload = make([]byte, h[1]&0x7f)
	_, err = io.ReadFull(br, payload)
	return h[0] & 0x0f, payload, err
}

// TestWebSocketOverHTTP2: an HTTP/2 client opens a WebSocket with an
// extended CONNECT (RFC 8441) to the edge, which forwards it to the
// device as an HTTP/1.1 upgrade; frames flow both ways, the subprotocol
// the app chose comes back, and the close handshake ends the stream. A
// device that does not upgrade has its answer passed on.
func TestWebSocketOverHTTP2(t *testing.T) {
	ov := newOverlay()
	e := newTestEdge(t, ov, Options{})
	seen := make(chan string, 1)
	a, _ := origin(t, ov, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case seen <- r.Proto + " " + r.Header.Get("X-Forwarded-For") + " " + r.URL.Path:
		default:
		}
		ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{Subprotocols: []string{"chat"}})
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
	plain, _ := origin(t, ov, nameHandler("plain"))
	forbidden, _ := origin(t, ov, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "no", http.StatusForbidden)
	}))
	setRoutes(t, e, httpRoute("ws", a), httpRoute("plain", plain), httpRoute("forbidden", forbidden))
	cert := selfSigned(t, "ws."+testDomain, "plain."+testDomain, "forbidden."+testDomain, "nobody."+testDomain)
	addr := serveTLS(t, e, cert)
	pool := x509.NewCertPool()
	pool.AddCert(cert.Leaf)
	tr := &http2.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool},
		DialTLSContext: func(ctx context.Context, network, _ string, cfg *tls.Config) (net.Conn, error) {
			d := tls.Dialer{Config: cfg}
			return d.DialContext(ctx, network, addr)
		},
	}
	defer tr.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	open := func(host string) (*http.Response, *io.PipeWriter, error) {
		pr, pw := io.Pipe()
		req, _ := http.NewRequestWithContext(ctx, http.MethodConnect, "https://"+host+"/socket", pr)
		req.Header.Set(":protocol", "websocket")
		req.Header.Set("Sec-WebSocket-Version", "13")
		req.Header.Set("Sec-WebSocket-Protocol", "chat")
		resp, err := tr.RoundTrip(req)
		return resp, pw, err
	}

	resp, pw, err := open("ws." + testDomain)
	if err != nil {
		t.Fatalf("extended CONNECT: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Proto != "HTTP/2.0" {
		t.Fatalf("extended CONNECT: %s %d, want HTTP/2.0 200", resp.Proto, resp.StatusCode)
	}
	if got := resp.Header.Get("Sec-WebSocket-Protocol"); got != "chat" {
		t.Errorf("subprotocol %q, want chat", got)
	}
	if got, want := <-seen, "HTTP/1.1 127.0.0.1 /socket"; got != want {
		t.Errorf("the app saw %q, want %q", got, want)
	}
	br := bufio.NewReader(resp.Body)
	for i := range 5 {
		msg := fmt.Sprintf("hello %d", i)
		if _, err := pw.Write(wsFrame(0x1, []byte(msg))); err != nil {
			t.Fatal(err)
		}
		op, got, err := readWSFrame(br)
		if err != nil || op != 0x1 || string(got) != "echo:"+msg {
			t.Fatalf("frame %d: opcode %d %q %v, want text %q", i, op, got, err, "echo:"+msg)
		}
	}
	// The close handshake: the app answers with its close frame and
	// closes the connection, which ends the stream.
	if _, err := pw.Write(wsFrame(0x8, binary.BigEndian.AppendUint16(nil, 1000))); err != nil {
		t.Fatal(err)
	}
	op, payload, err := readWSFrame(br)
	if err != nil || op != 0x8 || len(payload) < 2 || binary.BigEndian.Uint16(payload) != 1000 {
		t.Fatalf("close: opcode %d % x %v, want close 1000", op, payload, err)
	}
	if rest, err := io.ReadAll(br); err != nil || len(rest) != 0 {
		t.Errorf("after the close: %q, %v; want the stream to end", rest, err)
	}
	pw.Close()

	// Apps that do not switch: a refusal reaches the client as it is; a
	// 200 (an app that ignored the upgrade) becomes a 502, since over
	// HTTP/2 a 2xx would open the tunnel.
	for _, tc := range []struct {
		host string
		want int
	}{
		{"plain." + testDomain, http.StatusBadGateway},
		{"forbidden." + testDomain, http.StatusForbidden},
		{"nobody." + testDomain, http.StatusNotFound},
	} {
		resp, pw, err := open(tc.host)
		if err != nil {
			t.Fatalf("extended CONNECT to %s: %v", tc.host, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		pw.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("extended CONNECT to %s: %d %q, want %d", tc.host, resp.StatusCode, body, tc.want)
		}
	}
}

// TestClientHeadersDropped sends forwarding fields of the client's own
// and fields whose names hold an underscore (which CGI-style apps read
// as their dashed twins) on every path to the device: the lean path (a
// GET), the reverse proxy (a POST) and a WebSocket over HTTP/2. The app
// sees only the edge's forwarding fields and no underscored name.
func TestClientHeadersDropped(t *testing.T) {
	ov := newOverlay()
	e := newTestEdge(t, ov, Options{})
	type seenReq struct {
		xff, fwd, proto string
		underscored     []string
	}
	seen := make(chan seenReq, 4)
	a, _ := origin(t, ov, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s := seenReq{xff: strings.Join(r.Header.Values("X-Forwarded-For"), ","), fwd: strings.Join(r.Header.Values("Forwarded"), ","), proto: r.Method}
		for k := range r.Header {
			if strings.Contains(k, "_") {
				s.underscored = append(s.underscored, k)
			}
		}
		seen <- s
		if r.Header.Get("Upgrade") != "" {
			ws, err := websocket.Accept(w, r, nil)
			if err != nil {
				return
			}
			ws.Close(websocket.StatusNormalClosure, "")
			return
		}
		io.Copy(io.Discard, r.Body)
		w.Write([]byte("ok"))
	}))
	setRoutes(t, e, httpRoute("app", a))
	forged := []string{"X-Forwarded-For", "203.0.113.66", "Forwarded", "for=203.0.113.66", "X_Beam_User", "root", "X_Forwarded_For", "203.0.113.66"}
	check := func(what string) {
		t.Helper()
		select {
		case s := <-seen:
			if s.xff != "127.0.0.1" || s.fwd != "" || len(s.underscored) > 0 {
				t.Errorf("%s: the app saw X-Forwarded-For %q, Forwarded %q, underscored fields %q; want 127.0.0.1 and none", what, s.xff, s.fwd, s.underscored)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: the app saw no request", what)
		}
	}

	hc := clientTo(serveHTTP(t, e))
	if status, body, _ := get(t, hc, "http://app."+testDomain+"/", forged...); status != 200 {
		t.Fatalf("GET: %d %q", status, body)
	}
	check("GET (lean path)")
	req, _ := http.NewRequest("POST", "http://app."+testDomain+"/", strings.NewReader("body"))
	for i := 0; i < len(forged); i += 2 {
		req.Header.Add(forged[i], forged[i+1])
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	check("POST (reverse proxy)")

	cert := selfSigned(t, "app."+testDomain)
	addr := serveTLS(t, e, cert)
	pool := x509.NewCertPool()
	pool.AddCert(cert.Leaf)
	tr := &http2.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool},
		DialTLSContext: func(ctx context.Context, network, _ string, cfg *tls.Config) (net.Conn, error) {
			d := tls.Dialer{Config: cfg}
			return d.DialContext(ctx, network, addr)
		},
	}
	defer tr.CloseIdleConnections()
	pr, pw := io.Pipe()
	defer pw.Close()
	creq, _ := http.NewRequestWithContext(t.Context(), http.MethodConnect, "https://app."+testDomain+"/socket", pr)
	creq.Header.Set(":protocol", "websocket")
	creq.Header.Set("Sec-WebSocket-Version", "13")
	for i := 0; i < len(forged); i += 2 {
		creq.Header.Add(forged[i], forged[i+1])
	}
	cresp, err := tr.RoundTrip(creq)
	if err != nil {
		t.Fatalf("extended CONNECT: %v", err)
	}
	defer cresp.Body.Close()
	if cresp.StatusCode != http.StatusOK {
		t.Fatalf("extended CONNECT: %d, want 200", cresp.StatusCode)
	}
	check("WebSocket over HTTP/2")
}
