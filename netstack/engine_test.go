package netstack

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"beam.dev/beam/types/key"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// node is one engine under test with its overlay addresses.
type node struct {
	e    *Engine
	key  key.NodePrivate
	v4   netip.Addr
	v6   netip.Addr
	cfg  Config
	opts Options
}

func (n *node) peer() Peer {
	port := n.e.LocalPort()
	return Peer{
		Key:        n.key.Public(),
		DiscoKey:   n.e.DiscoPublic(),
		AllowedIPs: []netip.Prefix{netip.PrefixFrom(n.v4, 32), netip.PrefixFrom(n.v6, 128)},
		Endpoints: []netip.AddrPort{
			netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port),
			netip.AddrPortFrom(netip.IPv6Loopback(), port),
		},
	}
}

// newNodes starts n engines on loopback, each a peer of every other.
func newNodes(t testing.TB, n int, mod func(i int, o *Options)) []*node {
	t.Helper()
	nodes := make([]*node, n)
	for i := range nodes {
		k := key.NewNode()
		opts := Options{PrivateKey: k}
		if mod != nil {
			mod(i, &opts)
		}
		e, err := New(opts)
		if err != nil {
			t.Fatalf("New: %v", err)
		}
		t.Cleanup(func() { e.Close() })
		nodes[i] = &node{
			e:    e,
			key:  k,
			v4:   netip.AddrFrom4([4]byte{100, 64, 0, byte(i + 1)}),
			v6:   netip.MustParseAddr(fmt.Sprintf("fd7a:115c:a1e0::%d", i+1)),
			opts: opts,
		}
	}
	for i, nd := range nodes {
		nd.cfg = Config{Addresses: []netip.Prefix{netip.PrefixFrom(nd.v4, 32), netip.PrefixFrom(nd.v6, 128)}}
		for j, other := range nodes {
			if i != j {
				nd.cfg.Peers = append(nd.cfg.Peers, other.peer())
			}
		}
		if err := nd.e.Reconfig(nd.cfg); err != nil {
			t.Fatalf("Reconfig: %v", err)
		}
	}
	return nodes
}

func tcpEchoServer(t testing.TB, ln net.Listener) {
	t.Helper()
	done := make(chan struct{})
	t.Cleanup(func() {
		ln.Close()
		<-done
	})
	go func() {
		defer close(done)
		var conns []net.Conn
		cdone := make(chan struct{}, 1024)
		n := 0
		defer func() {
			for _, c := range conns {
				c.Close()
			}
			for range n {
				<-cdone
			}
		}()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
			n++
			go func() {
				defer func() { cdone <- struct{}{} }()
				io.Copy(c, c)
				c.Close()
			}()
		}
	}()
}

func udpEchoServer(t testing.TB, pc net.PacketConn) {
	t.Helper()
	done := make(chan struct{})
	t.Cleanup(func() {
		pc.Close()
		<-done
	})
	go func() {
		defer close(done)
		buf := make([]byte, 65536)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	}()
}

func checkTCPEcho(t testing.TB, ctx context.Context, n *node, addr string) {
	t.Helper()
	c, err := n.e.DialContext(ctx, "tcp", addr)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	msg := []byte("hello over " + addr)
	if _, err := c.Write(msg); err != nil {
		t.Fatalf("write: %v", err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("read echo from %s: %v", addr, err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("echo from %s: got %q, want %q", addr, got, msg)
	}
}

func checkUDPEcho(t testing.TB, ctx context.Context, n *node, addr string) {
	t.Helper()
	c, err := n.e.DialContext(ctx, "udp", addr)
	if err != nil {
		t.Fatalf("dial udp %s: %v", addr, err)
	}
	defer c.Close()
	msg := []byte("ping over " + addr)
	buf := make([]byte, 2048)
	// UDP may lose the first datagram while the handshake completes.
	for try := 0; try < 50; try++ {
		if _, err := c.Write(msg); err != nil {
			t.Fatalf("write udp: %v", err)
		}
		c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		n, err := c.Read(buf)
		if err != nil {
			continue
		}
		if !bytes.Equal(buf[:n], msg) {
			t.Fatalf("udp echo from %s: got %q, want %q", addr, buf[:n], msg)
		}
		return
	}
	t.Fatalf("no udp echo from %s", addr)
}

func hostPort(ap netip.AddrPort) string { return ap.String() }

func TestEchoBetweenEngines(t *testing.T) {
	nodes := newNodes(t, 3, nil)
	ctx := t.Context()
	for _, srv := range nodes {
		ln, err := srv.e.Listen("tcp", ":7")
		if err != nil {
			t.Fatalf("Listen: %v", err)
		}
		tcpEchoServer(t, ln)
		pc, err := srv.e.ListenPacket("udp", ":7")
		if err != nil {
			t.Fatalf("ListenPacket: %v", err)
		}
		udpEchoServer(t, pc)
	}
	for i, cl := range nodes {
		for j, srv := range nodes {
			if i == j {
				continue
			}
			for _, a := range []netip.Addr{srv.v4, srv.v6} {
				t.Run(fmt.Sprintf("%d->%d/%v", i, j, a), func(t *testing.T) {
					checkTCPEcho(t, ctx, cl, hostPort(netip.AddrPortFrom(a, 7)))
					checkUDPEcho(t, ctx, cl, hostPort(netip.AddrPortFrom(a, 7)))
				})
			}
		}
	}
	for _, n := range nodes {
		st := n.e.Status()
		if len(st) != 2 {
			t.Fatalf("Status: got %d peers, want 2", len(st))
		}
		for _, ps := range st {
			if ps.Path != "direct" || !ps.Endpoint.IsValid() || ps.RxBytes == 0 || ps.TxBytes == 0 || ps.LastHandshake.IsZero() {
				t.Errorf("status of %s: %+v, want a direct path with traffic and a handshake", ps.Key.ShortString(), ps)
			}
		}
	}
}

func TestLargeTransfer(t *testing.T) {
	nodes := newNodes(t, 2, nil)
	a, b := nodes[0], nodes[1]
	ln, err := b.e.Listen("tcp", netip.AddrPortFrom(b.v4, 9000).String())
	if err != nil {
		t.Fatal(err)
	}
	const size = 64 << 20
	type result struct {
		sum [32]byte
		n   int64
		err error
	}
	res := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			res <- result{err: err}
			return
		}
		defer c.Close()
		h := sha256.New()
		n, err := io.Copy(h, c)
		var r result
		copy(r.sum[:], h.Sum(nil))
		r.n, r.err = n, err
		res <- r
	}()
	defer ln.Close()
	c, err := a.e.DialContext(t.Context(), "tcp", netip.AddrPortFrom(b.v4, 9000).String())
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	start := time.Now()
	if _, err := io.Copy(c, io.TeeReader(io.LimitReader(rand.Reader, size), h)); err != nil {
		t.Fatalf("send: %v", err)
	}
	c.Close()
	r := <-res
	if r.err != nil {
		t.Fatalf("receive: %v", r.err)
	}
	if r.n != size {
		t.Fatalf("received %d bytes, want %d", r.n, size)
	}
	if want := h.Sum(nil); !bytes.Equal(r.sum[:], want) {
		t.Fatalf("sha256 mismatch: got %x, want %x", r.sum, want)
	}
	t.Logf("64 MiB in %v (%.0f Mbit/s)", time.Since(start), float64(size)*8/time.Since(start).Seconds()/1e6)
}

func TestInboundForwarding(t *testing.T) {
	nodes := newNodes(t, 2, nil)
	a, b := nodes[0], nodes[1]
	ctx := t.Context()

	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tcpEchoServer(t, hl)
	port := hl.Addr().(*net.TCPAddr).Port
	checkTCPEcho(t, ctx, a, fmt.Sprintf("%v:%d", b.v4, port))

	hu, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	udpEchoServer(t, hu)
	checkUDPEcho(t, ctx, a, fmt.Sprintf("%v:%d", b.v4, hu.LocalAddr().(*net.UDPAddr).Port))

	// IPv6 overlay destinations go to [::1].
	hl6, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Fatal(err)
	}
	tcpEchoServer(t, hl6)
	checkTCPEcho(t, ctx, a, fmt.Sprintf("[%v]:%d", b.v6, hl6.Addr().(*net.TCPAddr).Port))

	// Nothing listens on the host port: connection refused.
	free, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	freePort := free.Addr().(*net.TCPAddr).Port
	free.Close()
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err = a.e.DialContext(dctx, "tcp", fmt.Sprintf("%v:%d", b.v4, freePort))
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial closed host port: got %v, want connection refused", err)
	}

	// A listener inside the engine takes precedence over forwarding.
	ln, err := b.e.Listen("tcp", fmt.Sprintf("%v:%d", b.v4, port))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- err.Error()
			return
		}
		c.Write([]byte("engine"))
		c.Close()
		got <- "ok"
	}()
	c, err := a.e.DialContext(ctx, "tcp", fmt.Sprintf("%v:%d", b.v4, port))
	if err != nil {
		t.Fatal(err)
	}
	data, _ := io.ReadAll(c)
	c.Close()
	if string(data) != "engine" {
		t.Fatalf("with engine listener: got %q, want %q", data, "engine")
	}
	if s := <-got; s != "ok" {
		t.Fatal(s)
	}
}

// With NoHostForward, a peer's connection to a port no engine listener
// claims is refused and its datagrams go nowhere, though the host listens
// on that port of its loopback; an engine listener still gets its flows.
func TestNoHostForward(t *testing.T) {
	nodes := newNodes(t, 2, func(i int, o *Options) { o.NoHostForward = i == 1 })
	a, b := nodes[0], nodes[1]
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()

	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer hl.Close()
	reached := make(chan string, 2)
	go func() {
		if c, err := hl.Accept(); err == nil {
			reached <- "tcp"
			c.Close()
		}
	}()
	port := hl.Addr().(*net.TCPAddr).Port
	if c, err := a.e.DialContext(ctx, "tcp", fmt.Sprintf("%v:%d", b.v4, port)); !errors.Is(err, syscall.ECONNREFUSED) {
		if c != nil {
			c.Close()
		}
		t.Fatalf("dial a port only the host listens on: %v, want connection refused", err)
	}

	hu, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer hu.Close()
	go func() {
		buf := make([]byte, 100)
		if _, _, err := hu.ReadFrom(buf); err == nil {
			reached <- "udp"
		}
	}()
	uport := hu.LocalAddr().(*net.UDPAddr).Port
	// The engine listener on the same UDP port afterwards proves the
	// path carries datagrams.
	uc, err := a.e.DialContext(ctx, "udp", fmt.Sprintf("%v:%d", b.v4, uport))
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	uc.Write([]byte("to the host?"))

	pc, err := b.e.ListenPacket("udp", fmt.Sprintf(":%d", uport))
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	got := make(chan string, 1)
	go func() {
		buf := make([]byte, 100)
		for {
			n, _, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if string(buf[:n]) == "to the engine" {
				got <- "ok"
				return
			}
		}
	}()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for done := false; !done; {
		uc.Write([]byte("to the engine"))
		select {
		case <-got:
			done = true
		case <-tick.C:
		case <-ctx.Done():
			t.Fatal("the engine's UDP listener got nothing")
		}
	}
	select {
	case p := <-reached:
		t.Errorf("a peer's %s flow reached the host's loopback listener", p)
	default:
	}
}
