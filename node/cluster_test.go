package node_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"beam.dev/beam/beamtest/harness"
	"beam.dev/beam/localapi/apitype"
)

// hostEcho serves TCP and UDP echo on host loopback, on the same port
// number, and returns it. Nodes forward inbound overlay traffic there.
func hostEcho(t *testing.T) int {
	t.Helper()
	for range 20 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		pc, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			ln.Close()
			continue
		}
		ln6, err6 := net.Listen("tcp", fmt.Sprintf("[::1]:%d", port))
		pc6, err6b := net.ListenPacket("udp", fmt.Sprintf("[::1]:%d", port))
		if err6 != nil || err6b != nil {
			ln.Close()
			pc.Close()
			if ln6 != nil {
				ln6.Close()
			}
			if pc6 != nil {
				pc6.Close()
			}
			continue
		}
		t.Cleanup(func() { ln.Close(); pc.Close(); ln6.Close(); pc6.Close() })
		for _, l := range []net.Listener{ln, ln6} {
			go func() {
				for {
					c, err := l.Accept()
					if err != nil {
						return
					}
					go func() { defer c.Close(); io.Copy(c, c) }()
				}
			}()
		}
		for _, p := range []net.PacketConn{pc, pc6} {
			go func() {
				buf := make([]byte, 2048)
				for {
					n, from, err := p.ReadFrom(buf)
					if err != nil {
						return
					}
					p.WriteTo(buf[:n], from)
				}
			}()
		}
		return port
	}
	t.Fatal("no free TCP+UDP port pair on loopback")
	return 0
}

func TestClusterEcho(t *testing.T) {
	c := harness.NewCluster(t, harness.Options{})
	key := c.AuthKey(coordinatorReusable())
	nodes := []*harness.Node{c.AddNode("alpha", key), c.AddNode("beta", key), c.AddNode("gamma", key)}
	c.WaitPeers(nodes...)
	port := hostEcho(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for i, from := range nodes {
		to := nodes[(i+1)%len(nodes)]
		for _, v6 := range []bool{false, true} {
			ip := from.PeerIP(to.Name, v6)
			addr := net.JoinHostPort(ip, fmt.Sprint(port))
			t.Run(fmt.Sprintf("%s-%s-v6=%v", from.Name, to.Name, v6), func(t *testing.T) {
				conn, err := from.DialContext(ctx, "tcp", addr)
				if err != nil {
					t.Fatalf("dial tcp %s: %v", addr, err)
				}
				defer conn.Close()
				msg := []byte("ping over tcp " + addr)
				conn.Write(msg)
				got := make([]byte, len(msg))
				conn.SetDeadline(time.Now().Add(10 * time.Second))
				if _, err := io.ReadFull(conn, got); err != nil || !bytes.Equal(got, msg) {
					t.Fatalf("tcp echo = %q, %v", got, err)
				}
				uc, err := from.DialContext(ctx, "udp", addr)
				if err != nil {
					t.Fatalf("dial udp %s: %v", addr, err)
				}
				defer uc.Close()
				umsg := []byte("ping over udp " + addr)
				buf := make([]byte, 2048)
				var n int
				for attempt := 0; ; attempt++ {
					uc.Write(umsg)
					uc.SetReadDeadline(time.Now().Add(time.Second))
					n, err = uc.Read(buf)
					if err == nil || attempt == 5 {
						break
					}
				}
				if err != nil || !bytes.Equal(buf[:n], umsg) {
					t.Fatalf("udp echo = %q, %v", buf[:n], err)
				}
			})
		}
	}

	// A bulk transfer by MagicDNS name, with a checksum.
	const size = 16 << 20
	conn, err := nodes[0].DialContext(ctx, "tcp", fmt.Sprintf("beta:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	data := bytes.Repeat([]byte("0123456789abcdef"), size/16)
	go func() {
		conn.Write(data)
	}()
	h := sha256.New()
	conn.SetDeadline(time.Now().Add(60 * time.Second))
	if _, err := io.CopyN(h, conn, size); err != nil {
		t.Fatalf("read back: %v", err)
	}
	if got, want := h.Sum(nil), sha256.Sum256(data); !bytes.Equal(got, want[:]) {
		t.Fatal("checksum mismatch")
	}
}

func TestMagicDNS(t *testing.T) {
	c := harness.NewCluster(t, harness.Options{})
	key := c.AuthKey(coordinatorReusable())
	a, b, g := c.AddNode("alpha", key), c.AddNode("beta", key), c.AddNode("gamma", key)
	c.WaitPeers(a, b, g)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	betaIP := a.PeerIP("beta", false)
	domain := a.Status().DNSDomain

	// The miekg/dns client over the overlay to 100.100.100.100.
	query := func(name string, qtype uint16) *dns.Msg {
		t.Helper()
		conn, err := a.DialContext(ctx, "udp", "100.100.100.100:53")
		if err != nil {
			t.Fatalf("dial MagicDNS: %v", err)
		}
		defer conn.Close()
		co := &dns.Conn{Conn: conn}
		m := new(dns.Msg)
		m.SetQuestion(dns.Fqdn(name), qtype)
		co.SetDeadline(time.Now().Add(5 * time.Second))
		if err := co.WriteMsg(m); err != nil {
			t.Fatal(err)
		}
		r, err := co.ReadMsg()
		if err != nil {
			t.Fatalf("query %s: %v", name, err)
		}
		return r
	}
	for _, name := range []string{"beta", "beta." + domain, "BETA." + domain} {
		r := query(name, dns.TypeA)
		if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != betaIP {
			t.Fatalf("A %s = %v", name, r)
		}
	}
	rev, _ := dns.ReverseAddr(betaIP)
	if r := query(rev, dns.TypePTR); len(r.Answer) != 1 || !strings.HasPrefix(r.Answer[0].(*dns.PTR).Ptr, "beta.") {
		t.Fatalf("PTR %s = %v", rev, r)
	}
	if r := query("nosuch."+domain, dns.TypeA); r.Rcode != dns.RcodeNameError {
		t.Fatalf("unknown name rcode = %s, want NXDOMAIN", dns.RcodeToString[r.Rcode])
	}

	// dig against a loopback listener of the node's resolver.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go a.Resolver().ServePacket(ctx, pc)
	out, err := exec.CommandContext(ctx, "dig", "+short", "+time=2", "+tries=2", "-p", fmt.Sprint(pc.LocalAddr().(*net.UDPAddr).Port), "@127.0.0.1", "gamma."+domain).Output()
	if err != nil {
		t.Fatalf("dig (install dnsutils): %v", err)
	}
	if got := strings.TrimSpace(string(out)); got != a.PeerIP("gamma", false) {
		t.Fatalf("dig gamma = %q, want %s", got, a.PeerIP("gamma", false))
	}

	// Remove gamma: within a second its name is NXDOMAIN on alpha.
	start := time.Now()
	if err := c.Coord.RemoveNode(ctx, "gamma"); err != nil {
		t.Fatal(err)
	}
	harness.WaitFor(t, time.Second, "gamma NXDOMAIN", func() bool {
		return query("gamma."+domain, dns.TypeA).Rcode == dns.RcodeNameError
	})
	t.Logf("removed node became NXDOMAIN after %v", time.Since(start))
	harness.WaitFor(t, 5*time.Second, "gamma needs login", func() bool {
		return g.Status().State == apitype.StateNeedsLogin
	})
}

func TestShieldsUpAndRemoval(t *testing.T) {
	c := harness.NewCluster(t, harness.Options{})
	key := c.AuthKey(coordinatorReusable())
	a, b := c.AddNode("alpha", key), c.AddNode("beta", key)
	c.WaitPeers(a, b)
	port := hostEcho(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	shields := true
	if _, err := b.Up(ctx, apitype.UpRequest{ShieldsUp: &shields}); err != nil {
		t.Fatal(err)
	}
	dctx, dcancel := context.WithTimeout(ctx, 3*time.Second)
	conn, err := a.DialContext(dctx, "tcp", fmt.Sprintf("beta:%d", port))
	dcancel()
	if err == nil {
		conn.Close()
		t.Fatal("dial to a shields-up node succeeded")
	}
	shields = false
	if _, err := b.Up(ctx, apitype.UpRequest{ShieldsUp: &shields}); err != nil {
		t.Fatal(err)
	}
	conn, err = a.DialContext(ctx, "tcp", fmt.Sprintf("beta:%d", port))
	if err != nil {
		t.Fatalf("dial after shields down: %v", err)
	}
	conn.Close()

	// Removing beta: alpha drops it, and beta loses access to alpha.
	if err := c.Coord.RemoveNode(ctx, "beta"); err != nil {
		t.Fatal(err)
	}
	harness.WaitFor(t, 5*time.Second, "alpha drops beta", func() bool { return len(a.Status().Peers) == 0 })
	alphaIP := b.PeerIPOr("alpha")
	if alphaIP == "" {
		alphaIP = "100.64.0.1"
	}
	dctx, dcancel = context.WithTimeout(ctx, 2*time.Second)
	defer dcancel()
	if conn, err := b.DialContext(dctx, "tcp", fmt.Sprintf("%s:%d", alphaIP, port)); err == nil {
		conn.Close()
		t.Fatal("removed node still reaches alpha")
	}
}
