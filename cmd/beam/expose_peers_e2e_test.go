package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestPeersDoNotSkipTheEdge connects to published ports from a peer, not
// through the edge. The device-side proxy of an http route is the edge's:
// a peer going through it would skip the edge's checks (basic auth here)
// and could send the X-Beam-* headers the edge vouches for. With shields
// up, a published port admits the edges alone; with shields down a peer
// reaches the device's own 127.0.0.1:PORT as it would had the port not
// been published, and never a route's upstream elsewhere (a LAN host).
func TestPeersDoNotSkipTheEdge(t *testing.T) {
	c, httpPort := startDevServer(t)
	app := func(host string) int {
		t.Helper()
		ln, err := net.Listen("tcp", host+":0")
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "secret page for %q", r.Header.Get("X-Beam-Email"))
		})}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
		return ln.Addr().(*net.TCPAddr).Port
	}
	shielded, open, beta := c.device("shielded"), c.device("open"), c.device("beta")
	shielded.mustUp("--shields-up")
	open.mustUp()
	beta.mustUp()

	guarded := app("127.0.0.1")
	c.mustBeam(shielded.args("expose", strconv.Itoa(guarded), "--name", "guarded", "--basic-auth", "u:p", "--bg")...)
	lan := app("127.0.0.2") // stands in for a host on the device's LAN
	c.mustBeam(open.args("expose", "127.0.0.2:"+strconv.Itoa(lan), "--name", "lan", "--basic-auth", "u:p", "--bg")...)
	local := app("127.0.0.1")
	c.mustBeam(open.args("expose", strconv.Itoa(local), "--name", "local", "--basic-auth", "u:p", "--bg")...)

	edge := func(name string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest("GET", fmt.Sprintf("http://127.0.0.1:%d/", httpPort), nil)
		req.Host = name + ".localhost"
		req.SetBasicAuth("u", "p")
		req.Header.Set("X-Beam-Email", "ceo@corp.example")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, name := range []string{"guarded", "lan", "local"} {
		waitFor(t, 15*time.Second, name+" answers through the edge", func() bool {
			code, _ := edge(name)
			return code == 200
		})
		// The edge deletes the client's X-Beam-Email.
		if _, body := edge(name); body != `secret page for ""` {
			t.Errorf("%s through the edge: %q", name, body)
		}
	}
	waitFor(t, 10*time.Second, "beta sees both devices", func() bool {
		st := beta.status()
		return peerByName(st, "shielded") != nil && peerByName(st, "open") != nil
	})

	// get sends a forged request from beta straight to host:port over the
	// overlay and returns what came back.
	get := func(host string, port int) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, c.bin, beta.args("nc", host, strconv.Itoa(port))...)
		cmd.Stdin = strings.NewReader("GET / HTTP/1.0\r\nHost: x\r\nX-Beam-Email: ceo@corp.example\r\n\r\n")
		out, _ := cmd.CombinedOutput()
		return string(out)
	}
	if out := get("shielded", guarded); strings.Contains(out, "secret page") {
		t.Errorf("beta reached the shielded device's published port without the edge: %q", out)
	}
	if out := get("open", lan); strings.Contains(out, "secret page") {
		t.Errorf("beta reached the route's LAN upstream through the device: %q", out)
	}
	// Shields down: the device's own port is open to peers, as it was
	// before it was published.
	if out := get("open", local); !strings.Contains(out, "secret page") {
		t.Errorf("beta -> open:%d (the device's own port, shields down): %q, want the app", local, out)
	}
	// And the edge still gets through to every route.
	for _, name := range []string{"guarded", "lan", "local"} {
		if code, body := edge(name); code != 200 {
			t.Errorf("%s through the edge after the peers' attempts: %d %q", name, code, body)
		}
	}
}

// TestPeerProxyHeaderOnTCPRoute exposes a tcp route with the PROXY
// protocol on a device with shields down, where peers reach its own
// ports: a peer that sends a PROXY header of its own, not through the
// edge, must not make the app believe it comes from another address. The
// app sees the device's header naming the peer's overlay address first.
func TestPeerProxyHeaderOnTCPRoute(t *testing.T) {
	c, _ := startDevServer(t)
	port := tcpServer(t, func(conn net.Conn) {
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		b := make([]byte, 256)
		n, _ := io.ReadAtLeast(conn, b, 1)
		line, _, _ := strings.Cut(string(b[:n]), "\r\n")
		fmt.Fprintf(conn, "first line %q\n", line)
	})
	open, beta := c.device("open"), c.device("beta")
	open.mustUp()
	beta.mustUp()
	out := strings.TrimSpace(c.mustBeam(open.args("expose", strconv.Itoa(port), "--tcp", "--proxy-protocol", "v1", "--bg")...))
	pub, ok := strings.CutPrefix(out, "tcp://")
	if !ok {
		t.Fatalf("beam expose --tcp printed %q, want tcp://HOST:PORT", out)
	}
	_, pubPort, _ := net.SplitHostPort(pub)
	waitFor(t, 15*time.Second, "the route answers through the edge", func() bool {
		conn, err := net.DialTimeout("tcp", "127.0.0.1:"+pubPort, 2*time.Second)
		if err != nil {
			return false
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(3 * time.Second))
		conn.Write([]byte("hello\r\n"))
		b, _ := io.ReadAll(conn)
		return strings.HasPrefix(string(b), `first line "PROXY TCP4 127.0.0.1 `)
	})
	waitFor(t, 10*time.Second, "beta sees open", func() bool {
		return peerByName(beta.status(), "open") != nil
	})
	betaIP := beta.status().Self.IPs[0].String()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.bin, beta.args("nc", "open", strconv.Itoa(port))...)
	cmd.Stdin = strings.NewReader("PROXY TCP4 6.6.6.6 127.0.0.1 1234 80\r\n")
	got, _ := cmd.CombinedOutput()
	if want := `first line "PROXY TCP4 ` + betaIP + ` `; !strings.HasPrefix(string(got), want) {
		t.Errorf("beta -> open:%d with a forged PROXY header: the app saw %q, want a header naming beta (%s) first", port, got, betaIP)
	}
}

// TestPeerProxyHeaderOnTLSRoute is TestPeerProxyHeaderOnTCPRoute for a
// tls route passed through to the app (it terminates TLS itself) with the
// PROXY protocol, on a port without an http route: a peer reaching the
// port directly, not through the edge, has the device's header naming
// it come first, so a header it sends itself is data to the app.
func TestPeerProxyHeaderOnTLSRoute(t *testing.T) {
	c, _ := startDevServer(t)
	port := tcpServer(t, func(conn net.Conn) {
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		b := make([]byte, 256)
		n, _ := io.ReadAtLeast(conn, b, 1)
		line, _, _ := strings.Cut(string(b[:n]), "\r\n")
		fmt.Fprintf(conn, "first line %q\n", line)
	})
	open, beta := c.device("open"), c.device("beta")
	open.mustUp()
	beta.mustUp()
	if out := strings.TrimSpace(c.mustBeam(open.args("expose", strconv.Itoa(port), "--tls-passthrough", "--proxy-protocol", "v1", "--bg")...)); !strings.HasPrefix(out, "https://") {
		t.Fatalf("beam expose --tls-passthrough printed %q, want https://HOST", out)
	}
	waitFor(t, 10*time.Second, "beta sees open", func() bool {
		return peerByName(beta.status(), "open") != nil
	})
	betaIP := beta.status().Self.IPs[0].String()
	want := `first line "PROXY TCP4 ` + betaIP + ` `
	send := func() string {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, c.bin, beta.args("nc", "open", strconv.Itoa(port))...)
		cmd.Stdin = strings.NewReader("PROXY TCP4 6.6.6.6 127.0.0.1 1234 80\r\n")
		got, _ := cmd.CombinedOutput()
		return string(got)
	}
	// Until the device has the route, beta reaches the app as it would
	// any port of a device with shields down.
	var got string
	waitFor(t, 15*time.Second, "the app to see a header naming beta before beta's own", func() bool {
		got = send()
		return strings.HasPrefix(got, want)
	})
	for range 3 {
		if got := send(); !strings.HasPrefix(got, want) {
			t.Errorf("beta -> open:%d with a forged PROXY header: the app saw %q, want a header naming beta (%s) first", port, got, betaIP)
		}
	}
}
