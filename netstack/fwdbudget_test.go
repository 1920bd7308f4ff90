package netstack

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// udpFlowsAnswered opens n UDP flows from nd to addr at once, each sending
// datagrams for a few seconds until one is echoed, and returns how many
// were. The flows stay open until the test ends.
func udpFlowsAnswered(t *testing.T, nd *node, addr string, n int) int {
	t.Helper()
	var answered atomic.Int32
	var wg sync.WaitGroup
	for i := range n {
		c, err := nd.e.DialContext(t.Context(), "udp", addr)
		if err != nil {
			t.Fatalf("dial udp %s: %v", addr, err)
		}
		t.Cleanup(func() { c.Close() })
		wg.Go(func() {
			msg := fmt.Appendf(nil, "flow %d", i)
			buf := make([]byte, 64)
			for range 15 {
				if _, err := c.Write(msg); err != nil {
					return
				}
				c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
				if _, err := c.Read(buf); err == nil {
					answered.Add(1)
					return
				}
			}
		})
	}
	wg.Wait()
	return int(answered.Load())
}

// tcpConnsAccepted dials n TCP connections from nd to addr at once and
// returns how many were established; they stay open until the test ends.
func tcpConnsAccepted(t *testing.T, nd *node, addr string, n int) int {
	t.Helper()
	var ok atomic.Int32
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
			defer cancel()
			c, err := nd.e.DialContext(ctx, "tcp", addr)
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
			ok.Add(1)
		})
	}
	wg.Wait()
	return int(ok.Load())
}

// TestForwardBudgetPerPeer: one peer cannot take every forwarded UDP flow
// or TCP connection of a node: it gets an eighth of each, another peer
// still gets through, and an edge (Config.Edges, whose address every
// public client of its routes shares) gets half.
func TestForwardBudgetPerPeer(t *testing.T) {
	const total = 32 // an eighth: 4; a half: 16
	nodes := newNodes(t, 4, func(i int, o *Options) {
		if i == 1 {
			o.MaxUDPFlows, o.MaxTCPConns = total, total
		}
	})
	a, b, c, edge := nodes[0], nodes[1], nodes[2], nodes[3]
	b.cfg.Edges = []netip.Addr{edge.v4}
	if err := b.e.Reconfig(b.cfg); err != nil {
		t.Fatal(err)
	}
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tcpEchoServer(t, hl)
	tcpAddr := fmt.Sprintf("%v:%d", b.v4, hl.Addr().(*net.TCPAddr).Port)
	udpAddr := fmt.Sprintf("%v:%d", b.v4, hostUDPEcho(t))
	for _, nd := range []*node{a, c, edge} { // handshakes done; the connection is released
		checkTCPEcho(t, t.Context(), nd, tcpAddr)
	}

	if got := udpFlowsAnswered(t, a, udpAddr, 40); got > total/8 {
		t.Errorf("one peer got %d forwarded UDP flows, want at most %d", got, total/8)
	}
	if got := udpFlowsAnswered(t, c, udpAddr, 1); got != 1 {
		t.Errorf("after one peer's flood, another peer's flow was not forwarded")
	}
	if got := udpFlowsAnswered(t, edge, udpAddr, 20); got <= total/8 || got > total/2 {
		t.Errorf("the edge got %d forwarded UDP flows, want more than %d and at most %d", got, total/8, total/2)
	}

	if got := tcpConnsAccepted(t, a, tcpAddr, 40); got > total/8 {
		t.Errorf("one peer got %d forwarded TCP connections, want at most %d", got, total/8)
	}
	checkTCPEcho(t, t.Context(), c, tcpAddr)
	if got := tcpConnsAccepted(t, edge, tcpAddr, 20); got <= total/8 || got > total/2 {
		t.Errorf("the edge got %d forwarded TCP connections, want more than %d and at most %d", got, total/8, total/2)
	}
}

// TestForwardUnrepliedUDPExpires: a forwarded UDP flow the host never
// answers ends (and gives its share back) after UDPUnrepliedTimeout, not
// UDPIdleTimeout.
func TestForwardUnrepliedUDPExpires(t *testing.T) {
	const unreplied = 300 * time.Millisecond
	sink, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sink.Close() })
	sinkPort := sink.LocalAddr().(*net.UDPAddr).Port
	ended := make(chan Flow, 16)
	nodes := newNodes(t, 2, func(i int, o *Options) {
		if i == 1 {
			o.UDPIdleTimeout = time.Minute
			o.UDPUnrepliedTimeout = unreplied
			o.OnFlow = func(f Flow) {
				if f.Proto == "udp" && int(f.Dst.Port()) == sinkPort && !f.End.IsZero() {
					ended <- f
				}
			}
		}
	})
	a, b := nodes[0], nodes[1]
	checkUDPEcho(t, t.Context(), a, fmt.Sprintf("%v:%d", b.v4, hostUDPEcho(t)))
	c, err := a.e.DialContext(t.Context(), "udp", fmt.Sprintf("%v:%d", b.v4, sinkPort))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	select {
	case f := <-ended:
		if d := f.End.Sub(f.Start); d < unreplied || d > 20*time.Second {
			t.Errorf("unanswered flow lasted %v, want about %v", d, unreplied)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("an unanswered UDP flow did not end within 20s (UDPUnrepliedTimeout %v, UDPIdleTimeout %v)", unreplied, time.Minute)
	}
}
