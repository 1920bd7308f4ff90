package beamnet_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"beam.dev/beam/beamnet"
	"beam.dev/beam/beamtest/harness"
	"beam.dev/beam/coordinator"
	"beam.dev/beam/wire"
)

// up starts a Server named name on url with key, closed at the end of
// the test.
func up(t *testing.T, url, key, name string) *beamnet.Server {
	t.Helper()
	s := &beamnet.Server{Hostname: name, ControlURL: url, AuthKey: key, Dir: t.TempDir(), Ephemeral: true}
	t.Cleanup(func() { s.Close() })
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	st, err := s.Up(ctx)
	if err != nil {
		t.Fatalf("up %s: %v", name, err)
	}
	if st.Name != name || len(st.IPs) == 0 {
		t.Fatalf("up %s: status %+v, want name %s and addresses", name, st, name)
	}
	return s
}

// waitPeers waits until a and b see each other.
func waitPeers(t *testing.T, a, b *beamnet.Server, an, bn string) {
	t.Helper()
	sees := func(s *beamnet.Server, name string) bool {
		return slices.ContainsFunc(s.Peers(), func(p beamnet.Status) bool { return p.Name == name })
	}
	harness.WaitFor(t, 15*time.Second, an+" and "+bn+" see each other", func() bool {
		return sees(a, bn) && sees(b, an)
	})
}

// echoTCP serves ln: each connection gets back what it sends, with
// prefix before each line.
func echoTCP(ln net.Listener, prefix string) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			sc := bufio.NewScanner(c)
			for sc.Scan() {
				if _, err := io.WriteString(c, prefix+sc.Text()+"\n"); err != nil {
					return
				}
			}
		}()
	}
}

// echoUDP answers each datagram on pc with prefix and the datagram.
func echoUDP(pc net.PacketConn, prefix string) {
	buf := make([]byte, 1500)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		pc.WriteTo(append([]byte(prefix), buf[:n]...), from)
	}
}

// roundTripTCP dials addr from s, sends a line and returns the answer.
func roundTripTCP(ctx context.Context, s *beamnet.Server, addr, line string) (string, error) {
	c, err := s.Dial(ctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	if d, ok := ctx.Deadline(); ok {
		c.SetDeadline(d)
	}
	if _, err := io.WriteString(c, line+"\n"); err != nil {
		return "", err
	}
	got, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSuffix(got, "\n"), err
}

// roundTripUDP dials addr from s and sends msg until an answer comes back
// (datagrams sent before the WireGuard handshake may be lost).
func roundTripUDP(ctx context.Context, s *beamnet.Server, addr, msg string) (string, error) {
	c, err := s.Dial(ctx, "udp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	buf := make([]byte, 1500)
	for ctx.Err() == nil {
		if _, err := c.Write([]byte(msg)); err != nil {
			return "", err
		}
		c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		n, err := c.Read(buf)
		if err == nil {
			return string(buf[:n]), nil
		}
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			return "", err
		}
	}
	return "", ctx.Err()
}

// Two Servers in one process reach each other by MagicDNS name and by
// overlay IP, over TCP and UDP, each way.
func TestTwoServers(t *testing.T) {
	a := up(t, controlURL, authKey, "alpha")
	b := up(t, controlURL, authKey, "bravo")
	waitPeers(t, a, b, "alpha", "bravo")

	for _, s := range []struct {
		srv  *beamnet.Server
		name string
	}{{a, "alpha"}, {b, "bravo"}} {
		ln, err := s.srv.Listen("tcp", ":8000")
		if err != nil {
			t.Fatalf("%s listen: %v", s.name, err)
		}
		go echoTCP(ln, s.name+" says ")
		pc, err := s.srv.ListenPacket("udp", ":8001")
		if err != nil {
			t.Fatalf("%s listen udp: %v", s.name, err)
		}
		go echoUDP(pc, s.name+" echoes ")
	}
	bIP := ""
	for _, p := range a.Peers() {
		if p.Name == "bravo" {
			bIP = p.IPs[0].String()
		}
	}
	tests := []struct {
		name     string
		from     *beamnet.Server
		udp      bool
		addr     string
		send     string
		want     string
		fromName string
	}{
		{name: "tcp a to b by name", from: a, addr: "bravo:8000", send: "hi", want: "bravo says hi"},
		{name: "tcp b to a by name", from: b, addr: "alpha:8000", send: "yo", want: "alpha says yo"},
		{name: "tcp a to b by FQDN", from: a, addr: "bravo." + mustDomain(t, a) + ":8000", send: "fq", want: "bravo says fq"},
		{name: "tcp a to b by IP", from: a, addr: net.JoinHostPort(bIP, "8000"), send: "ip", want: "bravo says ip"},
		{name: "udp a to b by name", from: a, udp: true, addr: "bravo:8001", send: "ping", want: "bravo echoes ping"},
		{name: "udp b to a by name", from: b, udp: true, addr: "alpha:8001", send: "pong", want: "alpha echoes pong"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
			defer cancel()
			var got string
			var err error
			if tt.udp {
				got, err = roundTripUDP(ctx, tt.from, tt.addr, tt.send)
			} else {
				got, err = roundTripTCP(ctx, tt.from, tt.addr, tt.send)
			}
			if err != nil {
				t.Fatalf("round trip to %s: %v", tt.addr, err)
			}
			if got != tt.want {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}

	// A port the program listens on is the program's; a port it does not
	// listen on is refused, even where the host listens on its loopback
	// (where a daemon would forward the connection).
	host, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	hostAccepted := make(chan struct{}, 1)
	go func() {
		if c, err := host.Accept(); err == nil {
			hostAccepted <- struct{}{}
			c.Close()
		}
	}()
	_, port, _ := net.SplitHostPort(host.Addr().String())
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	if c, err := a.Dial(ctx, "tcp", "bravo:"+port); !errors.Is(err, syscall.ECONNREFUSED) {
		if c != nil {
			c.Close()
		}
		t.Fatalf("dial bravo:%s, where only the host listens: %v, want ECONNREFUSED", port, err)
	}
	pln, err := b.Listen("tcp", ":"+port)
	if err != nil {
		t.Fatal(err)
	}
	go echoTCP(pln, "the program says ")
	if got, err := roundTripTCP(ctx, a, "bravo:"+port, "who"); err != nil || got != "the program says who" {
		t.Errorf("with bravo listening on %s: got %q, %v; want the program's listener", port, got, err)
	}
	select {
	case <-hostAccepted:
		t.Error("a peer's connection reached the host's loopback listener")
	default:
	}

	// HTTPClient reaches a peer's listener by name.
	ln, err := b.Listen("tcp", ":80")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "bravo's page") })}
	go hs.Serve(ln)
	defer hs.Close()
	body, status, err := get(a.HTTPClient(), "http://bravo/")
	if err != nil || status != http.StatusOK || body != "bravo's page" {
		t.Errorf("GET http://bravo/ = %d %q, %v; want 200 %q", status, body, err, "bravo's page")
	}
}

// mustDomain returns the network's MagicDNS domain as s sees it.
func mustDomain(t *testing.T, s *beamnet.Server) string {
	t.Helper()
	for _, p := range s.Peers() {
		if _, d, ok := strings.Cut(p.DNSName, "."); ok {
			return strings.TrimSuffix(d, ".")
		}
	}
	t.Fatal("no peer with a DNS name")
	return ""
}

// The network's policy applies to a port a program listens on exactly as
// to a forwarded one: a peer it does not allow never connects.
func TestPolicyRefusesListenedPort(t *testing.T) {
	// Every node may reach every other on TCP port 80 only.
	pol := func(self *wire.Node, all []*wire.Node) ([]wire.FilterRule, []*wire.Node) {
		rule := wire.FilterRule{
			SrcIPs:   []netip.Prefix{netip.MustParsePrefix("100.64.0.0/10")},
			DstPorts: []wire.NetPortRange{{First: 80, Last: 80}},
			Protos:   []int{6},
		}
		return []wire.FilterRule{rule}, all
	}
	c := harness.NewCluster(t, harness.Options{Policy: pol})
	key := c.AuthKey(coordinator.AuthKeyOptions{Reusable: true})
	a := up(t, c.URL, key, "client")
	b := up(t, c.URL, key, "server")
	waitPeers(t, a, b, "client", "server")

	accepted := make(chan string, 10)
	for _, port := range []string{"80", "81"} {
		ln, err := b.Listen("tcp", ":"+port)
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				accepted <- port
				io.WriteString(c, "welcome\n")
				c.Close()
			}
		}()
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	if c, err := a.Dial(ctx, "tcp", "server:80"); err != nil {
		t.Fatalf("dial the allowed port 80: %v", err)
	} else {
		c.Close()
	}
	if got := <-accepted; got != "80" {
		t.Fatalf("accepted on port %s, want 80", got)
	}
	// The path works; port 81 is refused. The filter drops the SYN, so
	// the dial ends with its context.
	dctx, dcancel := context.WithTimeout(t.Context(), 3*time.Second)
	defer dcancel()
	c81, err := a.Dial(dctx, "tcp", "server:81")
	if err == nil {
		c81.Close()
		t.Fatal("dial of port 81, which the policy does not allow: connected, want refused")
	}
	select {
	case p := <-accepted:
		t.Fatalf("the listener on port %s accepted a connection the policy refuses", p)
	default:
	}
}

// ListenPublic answers HTTP requests through the edge, and closing the
// listener withdraws the route.
func TestListenPublic(t *testing.T) {
	s := up(t, controlURL, authKey, "pubtest")
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	ln, err := s.ListenPublic(ctx, "pubtest")
	if err != nil {
		t.Fatalf("ListenPublic: %v", err)
	}
	if got, want := ln.URL(), "http://pubtest."+edgeDomain; got != want {
		t.Errorf("URL = %q, want %q", got, want)
	}
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.Method+" "+r.URL.Path+" host="+r.Host+" xff="+r.Header.Get("X-Forwarded-For"))
	})}
	go hs.Serve(ln)
	defer hs.Close()
	body, err := getPublic(ln.URL() + "/path")
	if err != nil {
		t.Fatal(err)
	}
	if want := "GET /path host=pubtest." + edgeDomain + " xff=127.0.0.1"; body != want {
		t.Errorf("body %q, want %q", body, want)
	}

	if err := ln.Close(); err != nil {
		t.Fatalf("close the public listener: %v", err)
	}
	// A request that reaches the edge before the news waits for its dial
	// to the device (which no longer admits the edge on that port) to
	// time out: ask with a short timeout.
	harness.WaitFor(t, 20*time.Second, "the edge forgets the withdrawn route", func() bool {
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, ln.URL()+"/path", nil)
		resp, err := edgeClient.Do(req)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusNotFound
	})
}

// A bad auth key makes Up fail with an error that says so.
func TestBadAuthKey(t *testing.T) {
	s := &beamnet.Server{Hostname: "badkey", ControlURL: controlURL, AuthKey: "beam-authkey-bogus", Dir: t.TempDir()}
	defer s.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	_, err := s.Up(ctx)
	if !errors.Is(err, beamnet.ErrAuthKeyInvalid) {
		t.Fatalf("Up with a bogus key: %v, want ErrAuthKeyInvalid", err)
	}
	if msg := err.Error(); !strings.Contains(msg, "auth key") || !strings.Contains(msg, controlURL) {
		t.Errorf("error %q should name the auth key and the coordinator", msg)
	}
	if _, err := s.Listen("tcp", ":80"); !errors.Is(err, beamnet.ErrNotUp) {
		t.Errorf("Listen after a failed Up: %v, want ErrNotUp", err)
	}
}

// Dir holds the state in 0600 files, and a Server on the same Dir
// rejoins as the same node without an auth key.
func TestStateDir(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	s := &beamnet.Server{Hostname: "keeper", ControlURL: controlURL, AuthKey: authKey, Dir: dir}
	st1, err := s.Up(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	files := 0
	filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		files++
		if info, err := d.Info(); err == nil && info.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s has mode %v, want no access for group and others", path, info.Mode().Perm())
		}
		return nil
	})
	if files == 0 {
		t.Fatal("Dir holds no state after Close")
	}
	s2 := &beamnet.Server{Hostname: "keeper", ControlURL: controlURL, Dir: dir}
	defer s2.Close()
	st2, err := s2.Up(ctx)
	if err != nil {
		t.Fatalf("rejoin without an auth key: %v", err)
	}
	if st2.Name != st1.Name || st2.IPs[0] != st1.IPs[0] {
		t.Errorf("rejoined as %s %v, want %s %v", st2.Name, st2.IPs, st1.Name, st1.IPs)
	}
}

// Close releases everything the Server started: no goroutine outlives
// it, and its listeners return net.ErrClosed.
func TestCloseReleasesEverything(t *testing.T) {
	// The cluster's goroutines (and those of other peers' reactions to
	// this node) are not the Server's.
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	peer := &beamnet.Server{Hostname: "leakpeer", ControlURL: controlURL, AuthKey: authKey, Dir: t.TempDir(), Ephemeral: true}
	s := &beamnet.Server{Hostname: "leaktest", ControlURL: controlURL, AuthKey: authKey, Dir: t.TempDir(), Ephemeral: true}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	for _, x := range []*beamnet.Server{peer, s} {
		if _, err := x.Up(ctx); err != nil {
			peer.Close()
			s.Close()
			t.Fatal(err)
		}
	}
	ln, err := s.Listen("tcp", ":80")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })}
	served := make(chan error, 1)
	go func() { served <- hs.Serve(ln) }()
	pc, err := s.ListenPacket("udp", ":9")
	if err != nil {
		t.Fatal(err)
	}
	pub, err := s.ListenPublic(ctx, "leaktest")
	if err != nil {
		t.Fatal(err)
	}
	pubServed := make(chan error, 1)
	go func() { pubServed <- hs.Serve(pub) }()
	if body, err := getPublic(pub.URL()); err != nil || body != "ok" {
		t.Fatalf("public GET: %q, %v", body, err)
	}
	waitPeers(t, peer, s, "leakpeer", "leaktest")
	if body, _, err := get(peer.HTTPClient(), "http://leaktest/"); err != nil || body != "ok" {
		t.Fatalf("GET http://leaktest/ from a peer: %q, %v", body, err)
	}
	edgeClient.CloseIdleConnections()

	if err := s.Close(); err != nil {
		t.Errorf("close: %v", err)
	}
	if err := peer.Close(); err != nil {
		t.Errorf("close peer: %v", err)
	}
	for _, ch := range []chan error{served, pubServed} {
		select {
		case err := <-ch:
			if !errors.Is(err, net.ErrClosed) {
				t.Errorf("Serve returned %v, want net.ErrClosed", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Serve still running 10s after Close")
		}
	}
	buf := make([]byte, 10)
	if _, _, err := pc.ReadFrom(buf); err == nil {
		t.Error("ReadFrom after Close succeeded")
	}
	if err := s.Close(); err != nil {
		t.Errorf("second close: %v", err)
	}
	hs.Close()
	// The test's own client of the edge is not the Server's.
	edgeClient.CloseIdleConnections()
}

// An Ephemeral Server leaves the network on Close: its peers stop seeing
// it. Up is idempotent, and refused after Close.
func TestEphemeralLeavesOnClose(t *testing.T) {
	watcher := up(t, controlURL, authKey, "watcher")
	s := up(t, controlURL, authKey, "passerby")
	waitPeers(t, watcher, s, "watcher", "passerby")
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	st1, _ := s.Up(ctx)
	st2, err := s.Up(ctx)
	if err != nil || st2 != st1 {
		t.Errorf("second Up: %+v, %v; want the first's status %+v", st2, err, st1)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	harness.WaitFor(t, 15*time.Second, "watcher stops seeing passerby", func() bool {
		return !slices.ContainsFunc(watcher.Peers(), func(p beamnet.Status) bool { return p.Name == "passerby" })
	})
	if _, err := s.Up(ctx); err == nil {
		t.Error("Up after Close succeeded, want an error")
	}
	if _, err := s.Dial(ctx, "tcp", "watcher:80"); !errors.Is(err, beamnet.ErrNotUp) {
		t.Errorf("Dial after Close: %v, want ErrNotUp", err)
	}
}

// Close ends an Up that is still waiting for the coordinator.
func TestCloseEndsPendingUp(t *testing.T) {
	arrived := make(chan struct{}, 1)
	hang := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case arrived <- struct{}{}:
		default:
		}
		<-r.Context().Done()
	}))
	defer hang.Close()
	s := &beamnet.Server{Hostname: "stuck", ControlURL: hang.URL, AuthKey: "k", Dir: t.TempDir()}
	done := make(chan error, 1)
	go func() {
		_, err := s.Up(t.Context())
		done <- err
	}()
	select {
	case <-arrived:
	case <-time.After(20 * time.Second):
		t.Fatal("Up never asked the coordinator")
	}
	start := time.Now()
	if err := s.Close(); err != nil {
		t.Errorf("close: %v", err)
	}
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("Up succeeded against a coordinator that never answers")
		}
		t.Logf("Up returned %v, %v after Close", err, time.Since(start).Round(time.Millisecond))
	case <-time.After(10 * time.Second):
		t.Fatal("Up still waiting 10s after Close")
	}
}
