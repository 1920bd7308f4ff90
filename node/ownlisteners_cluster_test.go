package node_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"beam.dev/beam/beamtest/harness"
)

// ownServices are a node's own loopback services, as `beam daemon`
// --socks5, --http-proxy and --dns-listen serve them.
type ownServices struct {
	socks, httpProxy, dns int // ports on 127.0.0.1
}

// serveOwn starts n's SOCKS5 and HTTP proxies and its DNS listener (TCP and
// UDP) on 127.0.0.1, each listener first passed through wrap (to make it
// report another address), and waits until each serves the host.
func serveOwn(t *testing.T, n *harness.Node, wrapLn func(net.Listener) net.Listener, wrapPC func(net.PacketConn) net.PacketConn) ownServices {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 4)
	var started int
	t.Cleanup(func() {
		cancel()
		for range started {
			if err := <-errc; err != nil {
				t.Errorf("serve: %v", err)
			}
		}
	})
	listen := func() net.Listener {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		return ln
	}
	var s ownServices
	socks, hp := listen(), listen()
	s.socks, s.httpProxy = socks.Addr().(*net.TCPAddr).Port, hp.Addr().(*net.TCPAddr).Port
	var dnsLn net.Listener
	var dnsPC net.PacketConn
	for range 20 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		if dnsLn, err = net.Listen("tcp", pc.LocalAddr().String()); err == nil {
			dnsPC = pc
			break
		}
		pc.Close()
	}
	if dnsPC == nil {
		t.Fatal("no free UDP+TCP port pair on loopback")
	}
	s.dns = dnsPC.LocalAddr().(*net.UDPAddr).Port
	if wrapLn != nil {
		socks, hp, dnsLn = wrapLn(socks), wrapLn(hp), wrapLn(dnsLn)
	}
	if wrapPC != nil {
		dnsPC = wrapPC(dnsPC)
	}
	started = 4
	go func() { errc <- n.ServeSOCKS5(ctx, socks) }()
	go func() { errc <- n.ServeHTTPProxy(ctx, hp) }()
	go func() { errc <- n.Resolver().ServeStream(ctx, dnsLn) }()
	go func() { errc <- n.Resolver().ServePacket(ctx, dnsPC) }()

	// Each service answers the host: it has started (and told the node).
	harness.WaitFor(t, 10*time.Second, "SOCKS5 answers on loopback", func() bool {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", s.socks))
		if err != nil {
			return false
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * time.Second))
		c.Write([]byte{5, 1, 0})
		var rep [2]byte
		_, err = io.ReadFull(c, rep[:])
		return err == nil && rep == [2]byte{5, 0}
	})
	harness.WaitFor(t, 10*time.Second, "HTTP proxy answers on loopback", func() bool {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", s.httpProxy))
		if err != nil {
			return false
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * time.Second))
		fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		buf := make([]byte, 12)
		_, err = io.ReadFull(c, buf)
		return err == nil && string(buf) == "HTTP/1.1 400"
	})
	for _, netw := range []string{"udp", "tcp"} {
		harness.WaitFor(t, 10*time.Second, "DNS answers on loopback over "+netw, func() bool {
			c := &dns.Client{Net: netw, Timeout: time.Second}
			m := new(dns.Msg)
			m.SetQuestion("alpha.", dns.TypeA)
			_, _, err := c.Exchange(m, fmt.Sprintf("127.0.0.1:%d", s.dns))
			return err == nil
		})
	}
	return s
}

// reportAddr is a listener that reports another address than its own, so
// the node does not learn where it really listens and only the second line
// of defence (refusing forwarded clients on accept) keeps peers out.
type reportAddr struct {
	net.Listener
	addr net.Addr
}

func (l reportAddr) Addr() net.Addr { return l.addr }

type reportAddrPC struct {
	net.PacketConn
	addr net.Addr
}

func (c reportAddrPC) LocalAddr() net.Addr { return c.addr }

// elsewhere returns a's port on 127.0.0.5, where nothing is served.
func elsewhere(a net.Addr) net.Addr {
	ap := netip.MustParseAddrPort(a.String())
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 5), Port: int(ap.Port())}
}

// peerSOCKS5 tries a SOCKS5 CONNECT to target through the proxy at proxy,
// from n over the overlay. It returns the proxy's reply code, or an error
// if the proxy could not be used at all.
func peerSOCKS5(ctx context.Context, n *harness.Node, proxy, target string) (byte, error) {
	c, err := n.DialContext(ctx, "tcp", proxy)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	host, port, _ := net.SplitHostPort(target)
	var p int
	fmt.Sscan(port, &p)
	req := []byte{5, 1, 0, 5, 1, 0, 3, byte(len(host))}
	req = append(req, host...)
	req = append(req, byte(p>>8), byte(p))
	if _, err := c.Write(req); err != nil {
		return 0, err
	}
	var rep [12]byte
	if _, err := io.ReadFull(c, rep[:]); err != nil {
		return 0, err
	}
	return rep[3], nil
}

// peerHTTPConnect tries an HTTP CONNECT to target through the proxy at
// proxy, from n over the overlay, and returns the status line.
func peerHTTPConnect(ctx context.Context, n *harness.Node, proxy, target string) (string, error) {
	c, err := n.DialContext(ctx, "tcp", proxy)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target); err != nil {
		return "", err
	}
	buf := make([]byte, 12)
	if _, err := io.ReadFull(c, buf); err != nil {
		return "", err
	}
	return string(buf), nil
}

// peerDNS asks the DNS server at server from n over the overlay.
func peerDNS(ctx context.Context, n *harness.Node, network, server, name string) (*dns.Msg, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	c, err := n.DialContext(ctx, network, server)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	co := &dns.Conn{Conn: c}
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), dns.TypeA)
	co.SetDeadline(time.Now().Add(3 * time.Second))
	if err := co.WriteMsg(m); err != nil {
		return nil, err
	}
	return co.ReadMsg()
}

// TestOwnListenersKeptFromPeers plays a peer that may reach every port of
// alpha and tries alpha's own proxies and DNS listener, which would dial
// and resolve for it as alpha. The engine refuses to forward to them.
func TestOwnListenersKeptFromPeers(t *testing.T) {
	c := harness.NewCluster(t, harness.Options{})
	key := c.AuthKey(coordinatorReusable())
	alpha, beta := c.AddNode("alpha", key), c.AddNode("beta", key)
	c.WaitPeers(alpha, beta)
	app := hostEcho(t)
	own := serveOwn(t, alpha, nil, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	alphaIP := beta.PeerIP("alpha", false)
	at := func(port int) string { return net.JoinHostPort(alphaIP, fmt.Sprint(port)) }

	// The ordinary app port is open to the peer.
	conn, err := beta.DialContext(ctx, "tcp", at(app))
	if err != nil {
		t.Fatalf("dial alpha's app port: %v", err)
	}
	conn.Close()

	for _, tc := range []struct {
		name string
		port int
	}{
		{"socks5", own.socks},
		{"http proxy", own.httpProxy},
		{"dns tcp", own.dns},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := beta.DialContext(ctx, "tcp", at(tc.port))
			if err == nil {
				c.Close()
				t.Fatalf("peer dial to alpha's %s: connected, want connection refused", tc.name)
			}
			if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Fatalf("peer dial to alpha's %s: got %v, want connection refused", tc.name, err)
			}
		})
	}
	t.Run("dns udp", func(t *testing.T) {
		if r, err := peerDNS(ctx, beta, "udp", at(own.dns), "beta."+alpha.Status().DNSDomain); err == nil {
			t.Fatalf("peer query to alpha's DNS listener: got an answer %v, want none", r)
		}
	})
	// The host still uses them: a SOCKS5 CONNECT from alpha's host works.
	t.Run("host socks5", func(t *testing.T) {
		lc, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", own.socks))
		if err != nil {
			t.Fatal(err)
		}
		defer lc.Close()
		lc.SetDeadline(time.Now().Add(10 * time.Second))
		req := append([]byte{5, 1, 0, 5, 1, 0, 3, byte(len("beta"))}, "beta"...)
		req = append(req, byte(app>>8), byte(app))
		lc.Write(req)
		var rep [12]byte
		if _, err := io.ReadFull(lc, rep[:]); err != nil || rep[3] != 0 {
			t.Fatalf("host SOCKS5 CONNECT beta:%d: reply %v, %v; want success", app, rep, err)
		}
	})
}

// TestOwnListenersRefuseForwardedClients checks the second line: listeners
// the engine does not know about (they report another address) still
// refuse a peer's connection, because its client is the engine's forwarder.
func TestOwnListenersRefuseForwardedClients(t *testing.T) {
	c := harness.NewCluster(t, harness.Options{})
	key := c.AuthKey(coordinatorReusable())
	alpha, beta := c.AddNode("alpha", key), c.AddNode("beta", key)
	c.WaitPeers(alpha, beta)
	app := hostEcho(t)
	own := serveOwn(t, alpha,
		func(ln net.Listener) net.Listener { return reportAddr{ln, elsewhere(ln.Addr())} },
		func(pc net.PacketConn) net.PacketConn {
			a := elsewhere(pc.LocalAddr()).(*net.TCPAddr)
			return reportAddrPC{pc, &net.UDPAddr{IP: a.IP, Port: a.Port}}
		})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	alphaIP := beta.PeerIP("alpha", false)
	at := func(port int) string { return net.JoinHostPort(alphaIP, fmt.Sprint(port)) }
	target := net.JoinHostPort(beta.PeerIP("alpha", false), fmt.Sprint(app))

	t.Run("socks5", func(t *testing.T) {
		if code, err := peerSOCKS5(ctx, beta, at(own.socks), target); err == nil {
			t.Fatalf("peer SOCKS5 CONNECT through alpha: reply code %d, want the connection closed", code)
		}
	})
	t.Run("http proxy", func(t *testing.T) {
		if status, err := peerHTTPConnect(ctx, beta, at(own.httpProxy), target); err == nil {
			t.Fatalf("peer HTTP CONNECT through alpha: %q, want the connection closed", status)
		}
	})
	domain := alpha.Status().DNSDomain
	for _, netw := range []string{"udp", "tcp"} {
		t.Run("dns "+netw, func(t *testing.T) {
			r, err := peerDNS(ctx, beta, netw, at(own.dns), "beta."+domain)
			if err != nil {
				t.Fatalf("peer query to alpha's DNS listener: %v (want REFUSED)", err)
			}
			if r.Rcode != dns.RcodeRefused || len(r.Answer) != 0 {
				t.Fatalf("peer query to alpha's DNS listener: %v, want REFUSED with no answer", r)
			}
		})
	}
	// The same services still serve the host.
	m := new(dns.Msg)
	m.SetQuestion("beta."+domain+".", dns.TypeA)
	r, _, err := new(dns.Client).Exchange(m, fmt.Sprintf("127.0.0.1:%d", own.dns))
	if err != nil {
		t.Fatalf("host query to alpha's DNS listener: %v", err)
	}
	if got, want := answerAddrs(r), alpha.PeerIP("beta", false); !slices.Equal(got, []string{want}) {
		t.Fatalf("host query for beta: got %v, want %s", got, want)
	}
}

// TestInspectorKeptFromPeers checks that a peer cannot reach alpha's
// request inspector through the overlay (it could read every captured
// request and replay them), while the host can.
func TestInspectorKeptFromPeers(t *testing.T) {
	c := harness.NewCluster(t, harness.Options{})
	key := c.AuthKey(coordinatorReusable())
	alpha, beta := c.AddNode("alpha", key), c.AddNode("beta", key)
	c.WaitPeers(alpha, beta)
	u, err := alpha.StartInspector()
	if err != nil {
		t.Fatal(err)
	}
	if again, err := alpha.StartInspector(); err != nil || again != u {
		t.Fatalf("second start: %q, %v; want the same inspector %q", again, err, u)
	}
	// The host opens the address it was given (with the access token).
	jar, _ := cookiejar.New(nil)
	resp, err := (&http.Client{Jar: jar}).Get(u)
	if err != nil {
		t.Fatalf("host GET of the inspector: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("host GET of the inspector: %s", resp.Status)
	}
	base, _, _ := strings.Cut(u, "/?")
	port := netip.MustParseAddrPort(strings.TrimPrefix(base, "http://")).Port()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := beta.DialContext(ctx, "tcp", net.JoinHostPort(beta.PeerIP("alpha", false), fmt.Sprint(port)))
	if err == nil {
		conn.Close()
		t.Fatal("a peer connected to alpha's inspector")
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("peer dial to alpha's inspector: %v, want connection refused", err)
	}
}
