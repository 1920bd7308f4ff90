package bind

import (
	"encoding/binary"
	"net/netip"
	"runtime"
	"sync"
	"testing"

	"beam.dev/beam/netstack/internal/disco"
	"beam.dev/beam/types/key"
)

// sentCounter is a UDP filter that drops everything and counts the
// packets per destination address.
type sentCounter struct {
	mu sync.Mutex
	n  map[netip.Addr]int
}

func (c *sentCounter) allow(ap netip.AddrPort) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n[ap.Addr()]++
	return false
}

func (c *sentCounter) to(a netip.Addr) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[a]
}

// sprayPeer is one peer of sprayBindPeers: its table entry and disco key.
type sprayPeer struct {
	key   key.NodePublic
	disco key.DiscoPrivate
	p     *peer
}

// sprayBindPeers returns an open bind whose peers, all in relay region 1,
// have the given coordinator endpoints (one each), and the counter of what
// the bind sent (nothing leaves the machine).
func sprayBindPeers(t *testing.T, endpoints ...netip.AddrPort) (*Bind, []sprayPeer, *sentCounter) {
	t.Helper()
	b, err := New(Options{PrivateKey: key.NewNode(), Relay: &fakeRelay{}, DiscoKey: key.NewDisco()})
	if err != nil {
		t.Fatal(err)
	}
	var ps []sprayPeer
	var pcs []PeerConfig
	for _, ep := range endpoints {
		sp := sprayPeer{key: key.NewNode().Public(), disco: key.NewDisco()}
		ps = append(ps, sp)
		pcs = append(pcs, PeerConfig{Key: sp.key, HomeRegion: 1, DiscoKey: sp.disco.Public(), Endpoints: []netip.AddrPort{ep}})
	}
	b.SetPeers(pcs)
	c := &sentCounter{n: make(map[netip.Addr]int)}
	b.SetUDPFilterForTest(c.allow)
	if _, _, err := b.Open(0); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	b.mu.Lock()
	for i := range ps {
		ps[i].p = b.peers[ps[i].key].p
	}
	b.mu.Unlock()
	return b, ps, c
}

// cmmNaming seals a call-me-maybe from sp to b naming hard as its hard-NAT IP.
func cmmNaming(b *Bind, sp sprayPeer, hard netip.Addr) []byte {
	return disco.AppendPacket(nil, sp.disco.Public(), sp.disco.Shared(b.DiscoPublic()), &disco.CallMeMaybe{HardNAT: []netip.Addr{hard}})
}

// TestBirthdaySprayTarget: a peer's call-me-maybe starts a spray only at a
// public IPv4 address of one of its coordinator endpoints, and an IP is
// sprayed at most once per birthdayEvery whichever peer names it (a
// captured call-me-maybe replayed, or another peer naming the same IP).
func TestBirthdaySprayTarget(t *testing.T) {
	tests := []struct {
		name     string
		endpoint string // the peer's coordinator endpoint
		hard     string // the hard-NAT IP its call-me-maybe names
		spray    bool
	}{
		{"its endpoint's IP", "192.0.2.7:41641", "192.0.2.7", true},
		{"another IP", "192.0.2.7:41641", "198.51.100.9", false},
		{"CGNAT endpoint", "100.64.7.7:41641", "100.64.7.7", false},
		{"link-local endpoint", "169.254.7.7:41641", "169.254.7.7", false},
		{"broadcast", "255.255.255.255:41641", "255.255.255.255", false},
		{"loopback endpoint", "127.0.0.2:41641", "127.0.0.2", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, ps, c := sprayBindPeers(t, netip.MustParseAddrPort(tt.endpoint))
			hard := netip.MustParseAddr(tt.hard)
			b.DeliverRelayed(1, ps[0].key, cmmNaming(b, ps[0], hard))
			if got := spraying(b, ps[0].p); got != tt.spray {
				t.Fatalf("spraying = %v, want %v", got, tt.spray)
			}
			b.Close() // stops the spray; what it sent is counted
			if sent := c.to(hard); !tt.spray && sent > 0 {
				t.Errorf("sent %d packets to %v, want none", sent, hard)
			}
		})
	}

	t.Run("one IP across peers", func(t *testing.T) {
		b, ps, _ := sprayBindPeers(t, netip.MustParseAddrPort("192.0.2.7:41641"), netip.MustParseAddrPort("192.0.2.7:41642"))
		hard := netip.MustParseAddr("192.0.2.7")
		b.DeliverRelayed(1, ps[0].key, cmmNaming(b, ps[0], hard))
		b.DeliverRelayed(1, ps[1].key, cmmNaming(b, ps[1], hard))
		if !spraying(b, ps[0].p) {
			t.Fatal("the first peer's call-me-maybe started no spray")
		}
		if spraying(b, ps[1].p) {
			t.Error("a second peer naming the same IP within birthdayEvery started a second spray")
		}
	})
}

// TestPeerNotHereBounded: a relay repeating "not here" for a peer cannot
// pile up retry timers: one is pending at most.
func TestPeerNotHereBounded(t *testing.T) {
	fr := &fakeRelay{}
	b, err := New(Options{PrivateKey: key.NewNode(), Relay: fr})
	if err != nil {
		t.Fatal(err)
	}
	peerKey := key.NewNode().Public()
	b.SetPeers([]PeerConfig{{Key: peerKey, HomeRegion: 1}})
	if _, _, err := b.Open(0); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	init := make([]byte, initiationSize)
	binary.LittleEndian.PutUint32(init, msgInitiation)
	ep, err := b.ParseEndpoint(peerKey.String())
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Send([][]byte{init}, ep); err != nil {
		t.Fatal(err)
	}

	const reports = 100000
	before := liveHeap()
	for range reports {
		b.PeerNotHere(peerKey)
	}
	grew := int64(liveHeap()) - int64(before)
	// A pending timer and its closure take about 150 bytes: 15 MB for
	// the reports if each armed one.
	if grew > 2<<20 {
		t.Errorf("%d reports grew the live heap by %.1f MiB, want < 2 MiB (one pending retry)", reports, float64(grew)/(1<<20))
	}
}

// liveHeap returns the live heap after a full collection.
func liveHeap() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}
