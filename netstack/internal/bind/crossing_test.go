package bind

import (
	"bytes"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"beam.dev/beam/types/key"
	"golang.zx2c4.com/wireguard/conn"
)

// crossingPeer is a bind with one peer, played by a UDP socket, whose key
// is lower than the bind's (peerLower) or higher.
type crossingPeer struct {
	t  *testing.T
	b  *Bind
	p  *peer
	ep conn.Endpoint
	pc *net.UDPConn
	fn conn.ReceiveFunc
	to *net.UDPAddr
}

func newCrossingPeer(t *testing.T, peerLower bool) *crossingPeer {
	t.Helper()
	priv := key.NewNode()
	var peerKey key.NodePublic
	for {
		peerKey = key.NewNode().Public()
		ours, theirs := priv.Public().Raw32(), peerKey.Raw32()
		if (bytes.Compare(theirs[:], ours[:]) < 0) == peerLower {
			break
		}
	}
	b, err := New(Options{PrivateKey: priv})
	if err != nil {
		t.Fatal(err)
	}
	fns, port, err := b.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	b.SetPeers([]PeerConfig{{Key: peerKey, Endpoints: []netip.AddrPort{pc.LocalAddr().(*net.UDPAddr).AddrPort()}}})
	ep, err := b.ParseEndpoint(peerKey.String())
	if err != nil {
		t.Fatal(err)
	}
	return &crossingPeer{t: t, b: b, p: b.peers[peerKey].p, ep: ep, pc: pc, fn: fns[0],
		to: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: int(port)}}
}

// fromPeer sends pkt from the peer and reports whether the bind handed
// it to wireguard-go.
func (c *crossingPeer) fromPeer(pkt []byte) bool {
	c.t.Helper()
	if _, err := c.pc.WriteToUDP(pkt, c.to); err != nil {
		c.t.Fatal(err)
	}
	bufs := [][]byte{make([]byte, 2048)}
	sizes := []int{0}
	if n, err := c.fn(bufs, sizes, []conn.Endpoint{nil}); err != nil || n != 1 {
		c.t.Fatalf("receive: n=%d err=%v", n, err)
	}
	return sizes[0] != 0
}

// send sends pkt to the peer as wireguard-go does.
func (c *crossingPeer) send(pkt []byte) {
	c.t.Helper()
	if err := c.b.Send([][]byte{pkt}, c.ep); err != nil {
		c.t.Fatal(err)
	}
}

// toPeer returns what the peer got within wait; nil if nothing.
func (c *crossingPeer) toPeer(wait time.Duration) []byte {
	c.t.Helper()
	c.pc.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, 2048)
	n, _, err := c.pc.ReadFromUDP(buf)
	if err != nil {
		return nil
	}
	return buf[:n]
}

// TestCrossedInitiationsTiedByKey: when our initiation and the peer's
// pass each other on the way, only one may be answered. wireguard-go
// answering the peer's forgets ours and refuses the answer to it; with
// both ends doing so, neither held a session it could send on until
// wireguard-go's retry 5 s later (a restarted peer's connections took
// 5 s to be reset). The peer with the lower key yields: its initiation
// is dropped while ours is unanswered, for at most initRetryAfter; from a
// peer with the higher key it goes to wireguard-go.
func TestCrossedInitiationsTiedByKey(t *testing.T) {
	for _, tt := range []struct {
		name      string
		peerLower bool
		want      bool // handed over while ours is out
	}{
		{"peer key lower", true, false},
		{"peer key higher", false, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := newCrossingPeer(t, tt.peerLower)
			ours := handshakeMsg(msgInitiation, 0x51, 0)
			c.send(ours)
			if got := c.toPeer(5 * time.Second); !bytes.Equal(got, ours) {
				t.Fatalf("the peer got %x, want our initiation", got)
			}
			theirs := handshakeMsg(msgInitiation, 0x61, 0)
			if got := c.fromPeer(theirs); got != tt.want {
				t.Errorf("peer's initiation while ours is out: handed over %v, want %v", got, tt.want)
			}
			if !tt.peerLower {
				return
			}
			// Copies of it, sprayed over other paths, are dropped too;
			// one resent initCopyHold later goes over even while ours is
			// out: the peer is still waiting, so it did not answer ours.
			if c.fromPeer(theirs) {
				t.Error("copy of the dropped initiation: handed over, want dropped")
			}
			c.p.initCopies.mu.Lock()
			c.p.initCopies.crossed.at -= int64(initCopyHold)
			c.p.initCopies.mu.Unlock()
			if !c.fromPeer(theirs) {
				t.Fatalf("the dropped initiation resent %v later: dropped, want handed over", initCopyHold)
			}
			// wireguard-go answers it, which forgets ours.
			c.send(handshakeMsg(msgResponse, 0x55, 0x61))
			c.toPeer(5 * time.Second)

			// A new initiation of ours: the peer's next is dropped until
			// ours is initRetryAfter old (it may be lost).
			c.send(handshakeMsg(msgInitiation, 0x52, 0))
			if c.toPeer(5*time.Second) == nil {
				t.Fatal("our new initiation did not go out")
			}
			if c.fromPeer(handshakeMsg(msgInitiation, 0x62, 0)) {
				t.Error("peer's initiation while our new one is out: handed over, want dropped")
			}
			c.b.AgeForTest(c.p.key, initRetryAfter)
			if !c.fromPeer(handshakeMsg(msgInitiation, 0x63, 0)) {
				t.Fatalf("peer's initiation %v after ours: dropped, want handed over", initRetryAfter)
			}
			c.send(handshakeMsg(msgResponse, 0x56, 0x63))
			c.toPeer(5 * time.Second)

			// Ours answered: the peer's goes over.
			c.send(handshakeMsg(msgInitiation, 0x53, 0))
			if c.toPeer(5*time.Second) == nil {
				t.Fatal("our third initiation did not go out")
			}
			if !c.fromPeer(handshakeMsg(msgResponse, 0x71, 0x53)) {
				t.Fatal("the answer to ours: dropped, want handed over")
			}
			if !c.fromPeer(handshakeMsg(msgInitiation, 0x64, 0)) {
				t.Error("peer's initiation once ours is answered: dropped, want handed over")
			}
		})
	}
}

// TestInitiationHeldWhileAnswering: an initiation of ours that wireguard-go
// sends while it has the peer's initiation to answer (handed over just
// before) is held back: answering forgets it, and the peer, receiving it,
// would answer it and forget its own, whose answer is on its way. Once
// wireguard-go answered, ours is never sent (nor resent by Maintain);
// if it does not answer, Maintain sends ours after initRetryAfter.
func TestInitiationHeldWhileAnswering(t *testing.T) {
	for _, peerLower := range []bool{true, false} {
		c := newCrossingPeer(t, peerLower)
		if !c.fromPeer(handshakeMsg(msgInitiation, 0x61, 0)) {
			t.Fatal("the peer's initiation: dropped, want handed over")
		}
		ours := handshakeMsg(msgInitiation, 0x51, 0)
		c.send(ours)
		if got := c.toPeer(200 * time.Millisecond); got != nil {
			t.Fatalf("peer lower %v: our initiation while wireguard-go answers the peer's: the peer got %x, want nothing", peerLower, got)
		}
		// A disco message from the peer would resend it: not while held.
		c.b.resendInit(c.p, time.Now().UnixNano())
		if got := c.toPeer(200 * time.Millisecond); got != nil {
			t.Fatalf("peer lower %v: our held initiation resent: the peer got %x, want nothing", peerLower, got)
		}
		resp := handshakeMsg(msgResponse, 0x52, 0x61)
		c.send(resp)
		if got := c.toPeer(5 * time.Second); !bytes.Equal(got, resp) {
			t.Fatalf("peer lower %v: the peer got %x, want the answer", peerLower, got)
		}
		c.b.AgeForTest(c.p.key, initRetryAfter)
		c.b.Maintain()
		if got := c.toPeer(200 * time.Millisecond); got != nil {
			t.Errorf("peer lower %v: ours after wireguard-go answered the peer's: the peer got %x, want nothing", peerLower, got)
		}
	}

	// wireguard-go does not answer (it refused the peer's initiation):
	// ours goes after initRetryAfter.
	c := newCrossingPeer(t, true)
	c.fromPeer(handshakeMsg(msgInitiation, 0x61, 0))
	ours := handshakeMsg(msgInitiation, 0x51, 0)
	c.send(ours)
	if got := c.toPeer(200 * time.Millisecond); got != nil {
		t.Fatalf("our initiation while wireguard-go answers the peer's: the peer got %x, want nothing", got)
	}
	c.b.AgeForTest(c.p.key, initRetryAfter)
	c.p.initCopies.mu.Lock()
	for i := range c.p.initCopies.pending {
		c.p.initCopies.pending[i].at -= int64(initRetryAfter)
	}
	c.p.initCopies.mu.Unlock()
	c.b.Maintain()
	if got := c.toPeer(5 * time.Second); !bytes.Equal(got, ours) {
		t.Errorf("held %v with no answer from wireguard-go: the peer got %x, want our initiation", initRetryAfter, got)
	}
}

// TestInitResendWhileSending: the bind resends an initiation outside the
// lock that guards it (resendInit) while wireguard-go may be sending a
// new one; the new one must not be copied into the array being sent (the
// race detector's finding, and a resent initiation half overwritten).
func TestInitResendWhileSending(t *testing.T) {
	c := newCrossingPeer(t, true)
	var wg sync.WaitGroup
	for i := range 200 {
		// One resend per goroutine: nothing after it orders its read
		// of the initiation before the next Send.
		wg.Go(func() { c.b.resendInit(c.p, time.Now().UnixNano()) })
		c.send(handshakeMsg(msgInitiation, uint32(0x100+i), 0))
	}
	wg.Wait()
}
