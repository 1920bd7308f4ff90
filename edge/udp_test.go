package edge

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// startUDPEdge serves a udp route to the device address dev on a fresh
// loopback socket and returns the edge's address; the edge stops with the
// test.
func startUDPEdge(t *testing.T, e *Edge, ov *overlay, dev string) net.Addr {
	t.Helper()
	target := ov.add(dev)
	setRoutes(t, e, Route{Proto: ProtoUDP, PublicPort: 7000, Targets: []netip.AddrPort{target}})
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- e.ServeUDP(ctx, 7000, pc) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("ServeUDP = %v", err)
		}
	})
	return pc.LocalAddr()
}

// streamingDevice listens on loopback and, once a datagram arrives from an
// address, sends size-byte datagrams to it every interval until the test
// ends, whether or not anyone answers.
func streamingDevice(t *testing.T, size int, interval time.Duration) string {
	t.Helper()
	dpc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); dpc.Close(); wg.Wait() })
	wg.Go(func() {
		seen := map[string]bool{}
		buf := make([]byte, 64<<10)
		for {
			_, from, err := dpc.ReadFrom(buf)
			if err != nil {
				return
			}
			if seen[from.String()] {
				continue
			}
			seen[from.String()] = true
			wg.Go(func() {
				msg := make([]byte, size)
				tick := time.NewTicker(interval)
				defer tick.Stop()
				for {
					select {
					case <-ctx.Done():
						return
					case <-tick.C:
						dpc.WriteTo(msg, from) // errors once the edge closed the flow
					}
				}
			})
		}
	})
	return dpc.LocalAddr().String()
}

// received is what a client got: datagram sizes and arrival times.
type received struct {
	sizes []int
	times []time.Time
}

// receiveFor collects what c receives during d.
func receiveFor(c net.PacketConn, d time.Duration) received {
	var r received
	end := time.Now().Add(d)
	buf := make([]byte, 64<<10)
	for {
		c.SetReadDeadline(end)
		n, _, err := c.ReadFrom(buf)
		if err != nil {
			return r
		}
		r.sizes = append(r.sizes, n)
		r.times = append(r.times, time.Now())
	}
}

// TestUDPReplyNeedsClient checks that a flow a client opened with one
// datagram does not let the device stream to the client's address: the
// client gets at most udpReplyFactor times what it sent, and nothing once
// it has been silent for UDPIdleTimeout, however much the device sends.
func TestUDPReplyNeedsClient(t *testing.T) {
	const idle = 500 * time.Millisecond
	flows := func(e *Edge) int {
		e.clients.mu.Lock()
		defer e.clients.mu.Unlock()
		return e.clients.n[netip.MustParseAddr("127.0.0.1")]
	}
	t.Run("cap", func(t *testing.T) {
		ov := newOverlay()
		e := newTestEdge(t, ov, Options{UDPIdleTimeout: idle})
		edgeAddr := startUDPEdge(t, e, ov, streamingDevice(t, 1000, time.Millisecond))
		c, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		const sent = 10
		if _, err := c.WriteTo(make([]byte, sent), edgeAddr); err != nil {
			t.Fatal(err)
		}
		r := receiveFor(c, 3*idle)
		wire := 0
		for _, n := range r.sizes {
			wire += n + udpHeaderBytes
		}
		if max := udpReplyFactor * (sent + udpHeaderBytes); wire > max || len(r.sizes) == 0 {
			t.Errorf("client that sent one %d-byte datagram got %d datagrams (%d bytes with headers); want 1 to %d bytes",
				sent, len(r.sizes), wire, max)
		}
	})
	t.Run("expiry", func(t *testing.T) {
		ov := newOverlay()
		e := newTestEdge(t, ov, Options{UDPIdleTimeout: idle})
		// 100-byte datagrams every 2 ms: the credit of one 8 KB datagram
		// (about 520 KB) outlasts the idle timeout several times over.
		edgeAddr := startUDPEdge(t, e, ov, streamingDevice(t, 100, 2*time.Millisecond))
		c, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		sentAt := time.Now()
		if _, err := c.WriteTo(make([]byte, 8<<10), edgeAddr); err != nil {
			t.Fatal(err)
		}
		r := receiveFor(c, 4*idle)
		if len(r.times) == 0 {
			t.Fatal("client got nothing")
		}
		const slack = 300 * time.Millisecond
		if last := r.times[len(r.times)-1].Sub(sentAt); last > idle+slack {
			t.Errorf("client received datagrams %v after its only one; want none after %v (+%v slack)", last.Round(time.Millisecond), idle, slack)
		}
		if n := flows(e); n != 0 {
			t.Errorf("%d flows %v after the client's only datagram, want 0", n, 4*idle)
		}
	})
}

// TestUDPFlowTableFull checks that clients from a few addresses that open
// flows the device never answers cannot lock others out of a udp route: a
// new client still gets its answer, and a client the device answered keeps
// its flow.
func TestUDPFlowTableFull(t *testing.T) {
	const maxFlows = 128
	ov := newOverlay()
	e := newTestEdge(t, ov, Options{MaxUDPFlows: maxFlows})
	// The device answers "hello" with its sender's address and ignores
	// anything else.
	edgeAddr := startUDPEdge(t, e, ov, helloDevice(t, func(from net.Addr) []byte { return []byte(from.String()) }))

	listen := func(ip string) net.PacketConn {
		t.Helper()
		c, err := net.ListenPacket("udp", ip+":0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	// hello sends "hello" from c and returns the overlay-side address the
	// device saw, or "" if no answer came.
	hello := func(c net.PacketConn) string {
		t.Helper()
		buf := make([]byte, 2048)
		for range 3 {
			if _, err := c.WriteTo([]byte("hello"), edgeAddr); err != nil {
				t.Fatal(err)
			}
			c.SetReadDeadline(time.Now().Add(time.Second))
			if n, _, err := c.ReadFrom(buf); err == nil {
				return string(buf[:n])
			}
		}
		return ""
	}
	early := listen("127.0.0.1")
	before := hello(early)
	if before == "" {
		t.Fatal("no answer before the flood")
	}

	// Fill: every source port of three addresses opens an unanswered flow,
	// more than the table and more than a client key's share of it.
	var sent int
	for _, ip := range []string{"127.0.0.2", "127.0.0.3", "127.0.0.4"} {
		for range maxFlows {
			c := listen(ip)
			if _, err := c.WriteTo([]byte("junk"), edgeAddr); err != nil {
				t.Fatal(err)
			}
			sent++
		}
	}
	// The edge reads datagrams in order, so this hello comes after the junk.
	if got := hello(listen("127.0.0.5")); got == "" {
		t.Errorf("a new client got no answer after %d unanswered flows", sent)
	}
	e.clients.mu.Lock()
	held := e.clients.n[netip.MustParseAddr("127.0.0.2")]
	e.clients.mu.Unlock()
	if held > udpMaxFlowsPerClient {
		t.Errorf("one address holds %d flows, want at most %d", held, udpMaxFlowsPerClient)
	}
	if after := hello(early); after != before {
		t.Errorf("answered client's flow changed from %s to %s after the flood; want it kept", before, after)
	}
}

// TestUDPUnansweredExpiry checks that a flow the device never answered
// expires udpUnrepliedTimeout after its client's last datagram, well
// before UDPIdleTimeout, while an answered flow stays.
func TestUDPUnansweredExpiry(t *testing.T) {
	ov := newOverlay()
	e := newTestEdge(t, ov, Options{UDPIdleTimeout: time.Minute})
	// The device answers "hello" and ignores anything else.
	edgeAddr := startUDPEdge(t, e, ov, helloDevice(t, func(net.Addr) []byte { return []byte("hi") }))
	flows := func(ip string) int {
		e.clients.mu.Lock()
		defer e.clients.mu.Unlock()
		return e.clients.n[netip.MustParseAddr(ip)]
	}
	answered, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer answered.Close()
	unanswered, err := net.ListenPacket("udp", "127.0.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	defer unanswered.Close()
	answered.WriteTo([]byte("hello"), edgeAddr)
	answered.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, _, err := answered.ReadFrom(make([]byte, 64)); err != nil {
		t.Fatalf("no answer: %v", err)
	}
	start := time.Now()
	unanswered.WriteTo([]byte("junk"), edgeAddr)
	waitFor(t, 5*time.Second, "the unanswered flow", func() bool { return flows("127.0.0.2") == 1 })
	waitFor(t, udpUnrepliedTimeout+5*time.Second, "the unanswered flow to expire", func() bool { return flows("127.0.0.2") == 0 })
	if took := time.Since(start); took < udpUnrepliedTimeout-time.Second {
		t.Errorf("unanswered flow expired after %v, want about %v", took.Round(time.Millisecond), udpUnrepliedTimeout)
	}
	if n := flows("127.0.0.1"); n != 1 {
		t.Errorf("answered client has %d flows, want its 1 kept", n)
	}
}

// helloDevice serves a device's UDP port on loopback that answers each
// "hello" with reply(sender) and ignores anything else, until the test
// ends, and returns its address.
func helloDevice(t *testing.T, reply func(from net.Addr) []byte) string {
	dpc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dpc.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := dpc.ReadFrom(buf)
			if err != nil {
				return
			}
			if string(buf[:n]) == "hello" {
				dpc.WriteTo(reply(from), from)
			}
		}
	}()
	return dpc.LocalAddr().String()
}
