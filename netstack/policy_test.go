package netstack

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"
)

// expectNoConnect asserts that a TCP dial to addr does not succeed within
// a short deadline (the SYN is dropped).
func expectNoConnect(t *testing.T, n *node, addr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 700*time.Millisecond)
	defer cancel()
	c, err := n.e.DialContext(ctx, "tcp", addr)
	if err == nil {
		c.Close()
		t.Fatalf("dial %s: connected, want it refused", addr)
	}
}

// expectNoUDPEcho asserts that no UDP echo comes back from addr.
func expectNoUDPEcho(t *testing.T, n *node, addr string) {
	t.Helper()
	c, err := n.e.DialContext(t.Context(), "udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 100)
	for range 3 {
		c.Write([]byte("x"))
		c.SetReadDeadline(time.Now().Add(150 * time.Millisecond))
		if _, err := c.Read(buf); err == nil {
			t.Fatalf("udp %s: got an echo, want the flow refused", addr)
		}
	}
}

// hostTCPEcho starts a TCP echo server on the host on 127.0.0.1 and ::1,
// on the same port, and returns the port.
func hostTCPEcho(t *testing.T) int {
	for range 100 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln6, err := net.Listen("tcp", fmt.Sprintf("[::1]:%d", port))
		if err != nil {
			ln.Close()
			continue
		}
		tcpEchoServer(t, ln)
		tcpEchoServer(t, ln6)
		return port
	}
	t.Fatal("no port free on both loopbacks")
	return 0
}

func TestShieldsUp(t *testing.T) {
	nodes := newNodes(t, 2, nil)
	a, b := nodes[0], nodes[1]
	open, closed := hostTCPEcho(t), hostTCPEcho(t)

	// Warm up the tunnel so a refusal is not a handshake delay.
	checkTCPEcho(t, t.Context(), a, fmt.Sprintf("%v:%d", b.v4, closed))

	cfg := b.cfg
	cfg.ShieldsUp = true
	cfg.AllowInbound = []uint16{uint16(open)}
	if err := b.e.Reconfig(cfg); err != nil {
		t.Fatal(err)
	}
	expectNoConnect(t, a, fmt.Sprintf("%v:%d", b.v4, closed))
	checkTCPEcho(t, t.Context(), a, fmt.Sprintf("%v:%d", b.v4, open))
	checkTCPEcho(t, t.Context(), a, fmt.Sprintf("[%v]:%d", b.v6, open))

	// Engine listeners are shielded too.
	ln, err := b.e.Listen("tcp", ":2222")
	if err != nil {
		t.Fatal(err)
	}
	tcpEchoServer(t, ln)
	expectNoConnect(t, a, fmt.Sprintf("%v:2222", b.v4))

	// Outbound connections from the shielded node still work.
	la, err := a.e.Listen("tcp", ":2223")
	if err != nil {
		t.Fatal(err)
	}
	tcpEchoServer(t, la)
	checkTCPEcho(t, t.Context(), b, fmt.Sprintf("%v:2223", a.v4))

	// Shields down again.
	if err := b.e.Reconfig(b.cfg); err != nil {
		t.Fatal(err)
	}
	checkTCPEcho(t, t.Context(), a, fmt.Sprintf("%v:2222", b.v4))
}

func TestFilter(t *testing.T) {
	nodes := newNodes(t, 3, nil)
	a, b, c := nodes[0], nodes[1], nodes[2]
	allowed, denied := hostTCPEcho(t), hostTCPEcho(t)

	cfg := b.cfg
	cfg.Filter = &Filter{Rules: []FilterRule{{
		SrcIPs:   []netip.Prefix{netip.PrefixFrom(a.v4, 32), netip.PrefixFrom(a.v6, 128)},
		DstPorts: []PortRange{{First: uint16(allowed), Last: uint16(allowed)}},
	}}}
	if err := b.e.Reconfig(cfg); err != nil {
		t.Fatal(err)
	}
	checkTCPEcho(t, t.Context(), a, fmt.Sprintf("%v:%d", b.v4, allowed))
	checkTCPEcho(t, t.Context(), a, fmt.Sprintf("[%v]:%d", b.v6, allowed))
	expectNoConnect(t, a, fmt.Sprintf("%v:%d", b.v4, denied))
	// c is not in the rule's sources.
	expectNoConnect(t, c, fmt.Sprintf("%v:%d", b.v4, allowed))

	// UDP to a port the rule does not open is dropped...
	pc, err := b.e.ListenPacket("udp", ":5353")
	if err != nil {
		t.Fatal(err)
	}
	udpEchoServer(t, pc)
	expectNoUDPEcho(t, a, fmt.Sprintf("%v:5353", b.v4))

	// ...but replies to flows b opens pass, for TCP and UDP.
	la, err := a.e.Listen("tcp", ":7000")
	if err != nil {
		t.Fatal(err)
	}
	tcpEchoServer(t, la)
	pa, err := a.e.ListenPacket("udp", ":7000")
	if err != nil {
		t.Fatal(err)
	}
	udpEchoServer(t, pa)
	checkTCPEcho(t, t.Context(), b, fmt.Sprintf("%v:7000", a.v4))
	checkUDPEcho(t, t.Context(), b, fmt.Sprintf("%v:7000", a.v4))
	checkUDPEcho(t, t.Context(), b, fmt.Sprintf("[%v]:7000", a.v6))
}

func TestServiceAddrNotForwarded(t *testing.T) {
	svc := netip.MustParseAddr("100.100.100.100")
	nodes := newNodes(t, 2, nil)
	a, b := nodes[0], nodes[1]
	cfg := b.cfg
	cfg.ServiceAddrs = []netip.Addr{svc}
	if err := b.e.Reconfig(cfg); err != nil {
		t.Fatal(err)
	}
	// a routes the service address to b (as if b advertised it).
	acfg := a.cfg
	acfg.Peers[0].AllowedIPs = append(acfg.Peers[0].AllowedIPs, netip.PrefixFrom(svc, 32))
	if err := a.e.Reconfig(acfg); err != nil {
		t.Fatal(err)
	}
	port := hostTCPEcho(t)
	// The host listens on port, but the service address is never
	// forwarded to the host.
	expectNoConnect(t, a, fmt.Sprintf("%v:%d", svc, port))

	// A local listener on the service address serves b itself and peers.
	ln, err := b.e.Listen("tcp", fmt.Sprintf("%v:53", svc))
	if err != nil {
		t.Fatal(err)
	}
	tcpEchoServer(t, ln)
	checkTCPEcho(t, t.Context(), b, fmt.Sprintf("%v:53", svc))
	checkTCPEcho(t, t.Context(), a, fmt.Sprintf("%v:53", svc))
}

func TestReconfigRemovePeer(t *testing.T) {
	nodes := newNodes(t, 3, nil)
	a, b, c := nodes[0], nodes[1], nodes[2]
	for _, n := range nodes {
		ln, err := n.e.Listen("tcp", ":7")
		if err != nil {
			t.Fatal(err)
		}
		tcpEchoServer(t, ln)
	}
	ctx := t.Context()
	// A long-lived connection to b across the reconfig.
	conn, err := a.e.DialContext(ctx, "tcp", fmt.Sprintf("%v:7", b.v4))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	roundTrip := func() {
		t.Helper()
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := conn.Write([]byte("abc")); err != nil {
			t.Fatalf("write on long-lived conn: %v", err)
		}
		buf := make([]byte, 3)
		if _, err := conn.Read(buf); err != nil {
			t.Fatalf("read on long-lived conn: %v", err)
		}
	}
	roundTrip()
	checkTCPEcho(t, ctx, a, fmt.Sprintf("%v:7", c.v4))
	before := a.e.Status()

	// a drops c.
	cfg := a.cfg
	cfg.Peers = []Peer{b.peer()}
	if err := a.e.Reconfig(cfg); err != nil {
		t.Fatal(err)
	}
	roundTrip()
	expectNoConnect(t, a, fmt.Sprintf("%v:7", c.v4))
	expectNoConnect(t, c, fmt.Sprintf("%v:7", a.v4))
	checkTCPEcho(t, ctx, a, fmt.Sprintf("%v:7", b.v4))
	checkTCPEcho(t, ctx, c, fmt.Sprintf("%v:7", b.v4))

	// b's session was not reset: its handshake time is unchanged.
	after := a.e.Status()
	if len(after) != 1 || after[0].Key != b.key.Public() {
		t.Fatalf("status after removal: %+v, want only b", after)
	}
	for _, s := range before {
		if s.Key == b.key.Public() && !s.LastHandshake.Equal(after[0].LastHandshake) {
			t.Errorf("b's handshake changed across reconfig: %v -> %v", s.LastHandshake, after[0].LastHandshake)
		}
	}

	// Adding c back restores it.
	if err := a.e.Reconfig(a.cfg); err != nil {
		t.Fatal(err)
	}
	checkTCPEcho(t, ctx, a, fmt.Sprintf("%v:7", c.v4))
	roundTrip()
}
