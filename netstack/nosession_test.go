package netstack

import (
	"fmt"
	"net"
	"testing"
	"time"
)

// TestNoSessionBacklogBounded sends 20,000 UDP datagrams of 1,200 bytes
// to a peer that never answers (its engine is closed) and checks that the
// heap stays within a bound: wireguard-go holds at most noSessionBudget
// of them (each in a 64 KiB buffer, 8-16 MiB) instead of up to 256 MiB
// (222 MiB measured without the bound), and the rest are dropped.
func TestNoSessionBacklogBounded(t *testing.T) {
	nodes := newNodes(t, 2, nil)
	a, gone := nodes[0], nodes[1]
	gone.e.Close()
	before := heapInuse()
	c, err := a.e.DialContext(t.Context(), "udp", fmt.Sprintf("%v:9", gone.v4))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	pkt := make([]byte, 1200)
	const sent = 20000
	for i := range sent {
		if _, err := c.Write(pkt); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	// The last datagrams may still be on their way to the TUN reader.
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for deadline := time.Now().Add(10 * time.Second); a.e.noSessionDrops.Load() < sent/2 && time.Now().Before(deadline); {
		<-tick.C
	}
	heap := int64(heapInuse()) - int64(before)
	const bound = 48 << 20
	t.Logf("heap %.1f MiB after %d datagrams, %d dropped, budget %d packets", float64(heap)/(1<<20), sent, a.e.noSessionDrops.Load(), a.e.noSessionBudget)
	if heap > bound {
		t.Errorf("heap grew %.1f MiB sending to a peer without a session, want at most %d MiB", float64(heap)/(1<<20), bound>>20)
	}
	if d := a.e.noSessionDrops.Load(); d < sent-uint64(4*a.e.noSessionBudget) {
		t.Errorf("dropped %d of %d datagrams, want all but about %d", d, sent, a.e.noSessionBudget)
	}
}

// TestNoSessionGateOpenWithSession sends 20,000 datagrams to a peer with
// a session: the gate for peers without one holds back none of them.
func TestNoSessionGateOpenWithSession(t *testing.T) {
	nodes := newNodes(t, 2, nil)
	a, b := nodes[0], nodes[1]
	pc, err := b.e.ListenPacket("udp", fmt.Sprintf("%v:9", b.v4))
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	c, err := a.e.DialContext(t.Context(), "udp", fmt.Sprintf("%v:9", b.v4))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// A session first: resend until one datagram arrives.
	got := make(chan struct{})
	go func() {
		buf := make([]byte, 2048)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return
			}
			select {
			case <-got:
			default:
				close(got)
			}
		}
	}()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for waiting := true; waiting; {
		if _, err := c.Write([]byte("hello")); err != nil {
			t.Fatal(err)
		}
		select {
		case <-got:
			waiting = false
		case <-tick.C:
		case <-time.After(20 * time.Second):
			t.Fatal("no datagram through in 20 s")
		}
	}
	drops := a.e.noSessionDrops.Load()
	pkt := make([]byte, 1200)
	for i := range 20000 {
		if _, err := c.Write(pkt); err != nil && !isBufferFull(err) {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	if d := a.e.noSessionDrops.Load() - drops; d != 0 {
		t.Errorf("the gate dropped %d of 20000 datagrams to a peer with a session, want 0", d)
	}
}

func isBufferFull(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}
