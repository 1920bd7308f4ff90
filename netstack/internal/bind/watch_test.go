package bind

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"beam.dev/beam/netstack/internal/disco"
	"beam.dev/beam/types/key"
)

// TestMaintainPingsQuietDirectPath checks that a peer which only
// receives pings its direct path once it goes quiet mid-flow (after both
// NATs forgot their mappings, only its own packet reopens its NAT), and
// that an idle peer is left alone.
func TestMaintainPingsQuietDirectPath(t *testing.T) {
	peerSock, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer peerSock.Close()
	peerAddr := peerSock.LocalAddr().(*net.UDPAddr).AddrPort()

	fr := &fakeRelay{}
	b, err := New(Options{PrivateKey: key.NewNode(), Relay: fr, DiscoKey: key.NewDisco()})
	if err != nil {
		t.Fatal(err)
	}
	peerKey := key.NewNode().Public()
	b.SetPeers([]PeerConfig{{
		Key:        peerKey,
		Endpoints:  []netip.AddrPort{peerAddr},
		HomeRegion: 2,
		DiscoKey:   key.NewDisco().Public(),
	}})
	if _, _, err := b.Open(0); err != nil {
		t.Fatal(err)
	}
	defer b.Close()

	b.mu.Lock()
	pe := b.peers[peerKey]
	e := pe.eps[peerAddr]
	b.mu.Unlock()
	p := pe.p
	p.best.Store(e)
	pending := func() int {
		b.disco.mu.Lock()
		defer b.disco.mu.Unlock()
		return len(b.disco.pending)
	}

	// Idle: the last packet either way is long ago, so the silence
	// proves nothing and nothing is sent.
	now := time.Now()
	old := now.Add(-2 * staleAfter).UnixNano()
	e.lastRecv.Store(old)
	p.lastWGRecv.Store(old)
	b.Maintain()
	if n, sent := pending(), fr.take(); n != 0 || len(sent) != 0 {
		t.Fatalf("idle peer: %d pings in flight, relay sends %+v; want none", n, sent)
	}

	// Mid-flow: the peer's packets stopped arriving 2 s ago over the
	// direct path and we send nothing. Maintain pings the peer's address
	// and, the path being silent past suspectAfter, asks the peer
	// through the relay to ping us.
	quiet := now.Add(-2 * time.Second).UnixNano()
	e.lastRecv.Store(quiet)
	p.lastWGRecv.Store(quiet)
	b.Maintain()
	if n := pending(); n == 0 {
		t.Fatal("quiet direct path mid-flow: no ping in flight")
	}
	if sent := fr.take(); len(sent) != 1 || sent[0].region != 2 || sent[0].dst != peerKey {
		t.Fatalf("relay sends %+v, want one call-me-maybe to the peer in region 2", sent)
	}
	peerSock.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 2048)
	n, _, err := peerSock.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatalf("peer address got no ping: %v", err)
	}
	if !disco.IsPacket(buf[:n]) {
		t.Fatalf("peer address got %d bytes that are not disco", n)
	}
}
