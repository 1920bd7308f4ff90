package netstack

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"
)

// hostUDPEcho starts a UDP echo server on the host at 127.0.0.1 and
// returns its port.
func hostUDPEcho(t *testing.T) int {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	udpEchoServer(t, pc)
	return pc.LocalAddr().(*net.UDPAddr).Port
}

// expectRefused asserts that a TCP dial from n to addr is answered with a
// RST (connection refused), not left to time out.
func expectRefused(t *testing.T, n *node, addr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	c, err := n.e.DialContext(ctx, "tcp", addr)
	if err == nil {
		c.Close()
		t.Fatalf("dial %s: connected, want connection refused", addr)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial %s: got %v, want connection refused", addr, err)
	}
}

func TestOwnListenersRefused(t *testing.T) {
	nodes := newNodes(t, 2, nil)
	a, b := nodes[0], nodes[1]
	app, ownTCP, ownWild := hostTCPEcho(t), hostTCPEcho(t), hostTCPEcho(t)
	appUDP, ownUDP := hostUDPEcho(t), hostUDPEcho(t)

	// Before the node names its listeners, peers reach them like any port.
	checkTCPEcho(t, t.Context(), a, fmt.Sprintf("%v:%d", b.v4, ownTCP))
	checkUDPEcho(t, t.Context(), a, fmt.Sprintf("%v:%d", b.v4, ownUDP))

	cfg := b.cfg
	cfg.OwnListeners = []netip.AddrPort{
		netip.MustParseAddrPort(fmt.Sprintf("127.0.0.1:%d", ownTCP)),
		netip.MustParseAddrPort(fmt.Sprintf("127.0.0.1:%d", ownUDP)),
		netip.MustParseAddrPort(fmt.Sprintf("[::]:%d", ownWild)),
	}
	if err := b.e.Reconfig(cfg); err != nil {
		t.Fatal(err)
	}
	before := b.e.ownRefused.Load()
	tests := []struct {
		name    string
		addr    string
		refused bool
	}{
		{"own ipv4", fmt.Sprintf("%v:%d", b.v4, ownTCP), true},
		// Only 127.0.0.1 was named: [::1] on that port is another socket.
		{"own ipv4, ipv6 destination", fmt.Sprintf("[%v]:%d", b.v6, ownTCP), false},
		{"wildcard ipv4", fmt.Sprintf("%v:%d", b.v4, ownWild), true},
		{"wildcard ipv6", fmt.Sprintf("[%v]:%d", b.v6, ownWild), true},
		{"app", fmt.Sprintf("%v:%d", b.v4, app), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.refused {
				expectRefused(t, a, tt.addr)
			} else {
				checkTCPEcho(t, t.Context(), a, tt.addr)
			}
		})
	}
	t.Run("udp", func(t *testing.T) {
		expectNoUDPEcho(t, a, fmt.Sprintf("%v:%d", b.v4, ownUDP))
		checkUDPEcho(t, t.Context(), a, fmt.Sprintf("%v:%d", b.v4, appUDP))
	})
	// 3 TCP refusals, and at least one of the UDP datagrams.
	if got := b.e.ownRefused.Load() - before; got < 4 {
		t.Errorf("refusals counted: got %d, want at least 4", got)
	}

	// Listeners dropped from the config are reachable again.
	if err := b.e.Reconfig(b.cfg); err != nil {
		t.Fatal(err)
	}
	checkTCPEcho(t, t.Context(), a, fmt.Sprintf("%v:%d", b.v4, ownTCP))
}

func TestFromOverlay(t *testing.T) {
	nodes := newNodes(t, 2, nil)
	a, b := nodes[0], nodes[1]

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	type accepted struct {
		c           net.Conn
		fromOverlay bool
	}
	acc := make(chan accepted, 2)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			// Judged at once on accept, as a listener would.
			acc <- accepted{c, FromOverlay(c.RemoteAddr())}
		}
	}()

	oc, err := a.e.DialContext(t.Context(), "tcp", fmt.Sprintf("%v:%d", b.v4, port))
	if err != nil {
		t.Fatal(err)
	}
	got := <-acc
	if !got.fromOverlay {
		t.Errorf("FromOverlay(%v) for a forwarded connection: got false, want true", got.c.RemoteAddr())
	}
	forwardedAddr := got.c.RemoteAddr()

	lc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer lc.Close()
	local := <-acc
	defer local.c.Close()
	if local.fromOverlay {
		t.Errorf("FromOverlay(%v) for a local connection: got true, want false", local.c.RemoteAddr())
	}

	// The address is released when the forwarded connection ends.
	oc.Close()
	io.Copy(io.Discard, got.c)
	got.c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for FromOverlay(forwardedAddr) {
		if time.Now().After(deadline) {
			t.Fatalf("FromOverlay(%v) still true 10s after the connection ended", forwardedAddr)
		}
		<-time.After(10 * time.Millisecond)
	}

	// UDP: the forwarded flow's datagrams come from an address the
	// registry knows; another local socket's do not.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	uc, err := a.e.DialContext(t.Context(), "udp", fmt.Sprintf("%v:%d", b.v4, pc.LocalAddr().(*net.UDPAddr).Port))
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	buf := make([]byte, 100)
	var from net.Addr
	for try := 0; from == nil && try < 50; try++ {
		uc.Write([]byte("x"))
		pc.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		if _, addr, err := pc.ReadFrom(buf); err == nil {
			from = addr
		}
	}
	if from == nil {
		t.Fatal("no forwarded datagram arrived")
	}
	if !FromOverlay(from) {
		t.Errorf("FromOverlay(%v) for a forwarded UDP flow: got false, want true", from)
	}
	other, err := net.Dial("udp", pc.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if FromOverlay(other.LocalAddr()) {
		t.Errorf("FromOverlay(%v) for a local UDP socket: got true, want false", other.LocalAddr())
	}
	if FromOverlay(nil) {
		t.Error("FromOverlay(nil): got true, want false")
	}
}
