package bind

import (
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"beam.dev/beam/netstack/internal/disco"
	"beam.dev/beam/netstack/internal/udprelay"
	"beam.dev/beam/types/key"
)

// fakeServer records Allocate calls.
type fakeServer struct {
	mu    sync.Mutex
	pairs [][2]udprelay.Party
}

func (f *fakeServer) Allocate(a, b udprelay.Party) (*disco.Allocation, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pairs = append(f.pairs, [2]udprelay.Party{a, b})
	return &disco.Allocation{VNI: 7, Peers: [2]key.DiscoPublic{a.Disco, b.Disco}, Addrs: []netip.AddrPort{netip.MustParseAddrPort("192.0.2.9:41700")}}, nil
}

func (f *fakeServer) Retain(func(udprelay.Party) bool) int { return 0 }

func (f *fakeServer) calls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.pairs)
}

// testPeer is a peer's keys and endpoints.
type testPeer struct {
	node  key.NodePublic
	disco key.DiscoPrivate
	eps   []netip.AddrPort
}

func newTestPeer() testPeer { return testPeer{node: key.NewNode().Public(), disco: key.NewDisco()} }

// relayBind returns an open bind with a peer relay server srv (nil: none)
// and the peers given, all in relay region 1.
func relayBind(t *testing.T, srv RelayServer, peers []testPeer, relayServers ...key.NodePublic) (*Bind, *fakeRelay) {
	t.Helper()
	fr := &fakeRelay{}
	b, err := New(Options{PrivateKey: key.NewNode(), Relay: fr, DiscoKey: key.NewDisco(), RelayServer: srv})
	if err != nil {
		t.Fatal(err)
	}
	var pcs []PeerConfig
	for _, p := range peers {
		pc := PeerConfig{Key: p.node, HomeRegion: 1, DiscoKey: p.disco.Public(), Endpoints: p.eps}
		for _, k := range relayServers {
			pc.RelayServer = pc.RelayServer || k == p.node
		}
		pcs = append(pcs, pc)
	}
	b.SetPeers(pcs)
	b.SetUDPFilterForTest(func(netip.AddrPort) bool { return false })
	if _, _, err := b.Open(0); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b, fr
}

// from seals m from p to b and hands it to b as if relayed from p.
func from(b *Bind, p testPeer, m disco.Message) {
	b.DeliverRelayed(1, p.node, disco.AppendPacket(nil, p.disco.Public(), p.disco.Shared(b.DiscoPublic()), m))
}

// TestServeAllocate: a relay node serves a session only between two of
// its own peers, and sends the allocation to both.
func TestServeAllocate(t *testing.T) {
	a, b, stranger := newTestPeer(), newTestPeer(), newTestPeer()
	tests := []struct {
		name  string
		other key.DiscoPublic
		calls int
		sends []key.NodePublic
	}{
		{"two peers", b.disco.Public(), 1, []key.NodePublic{a.node, b.node}},
		{"not a peer", stranger.disco.Public(), 0, nil},
		{"itself", a.disco.Public(), 0, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := &fakeServer{}
			bd, fr := relayBind(t, srv, []testPeer{a, b})
			from(bd, a, &disco.Allocate{Peer: tc.other})
			if got := srv.calls(); got != tc.calls {
				t.Fatalf("Allocate called %d times, want %d", got, tc.calls)
			}
			var got []key.NodePublic
			for _, s := range fr.take() {
				got = append(got, s.dst)
			}
			if len(got) != len(tc.sends) || len(got) > 0 && (got[0] != tc.sends[0] || got[1] != tc.sends[1]) {
				t.Errorf("allocation sent to %v, want %v", got, tc.sends)
			}
		})
	}
	t.Run("not offered", func(t *testing.T) {
		// The policy does not designate this node (its netmap says so):
		// nothing is served until it does again.
		srv := &fakeServer{}
		bd, fr := relayBind(t, srv, []testPeer{a, b})
		bd.SetRelayOffered(false)
		from(bd, a, &disco.Allocate{Peer: b.disco.Public()})
		if got, s := srv.calls(), fr.take(); got != 0 || len(s) != 0 {
			t.Errorf("not offered: Allocate called %d times, sent %v; want nothing", got, s)
		}
		bd.SetRelayOffered(true)
		from(bd, a, &disco.Allocate{Peer: b.disco.Public()})
		if got := srv.calls(); got != 1 {
			t.Errorf("offered again: Allocate called %d times, want 1", got)
		}
	})
	t.Run("no server", func(t *testing.T) {
		bd, fr := relayBind(t, nil, []testPeer{a, b})
		from(bd, a, &disco.Allocate{Peer: b.disco.Public()})
		if s := fr.take(); len(s) != 0 {
			t.Errorf("a node without a relay server sent %v", s)
		}
	})
}

// TestTakeAllocation: a node takes an allocation only from a peer that
// offers a relay server, only for itself and one of its own peers.
func TestTakeAllocation(t *testing.T) {
	r, b, stranger := newTestPeer(), newTestPeer(), newTestPeer()
	r.eps = []netip.AddrPort{netip.MustParseAddrPort("192.0.2.9:41641")}
	tests := []struct {
		name   string
		server key.NodePublic // the peer flagged as relay server
		other  key.DiscoPublic
		us     bool // the allocation names us
		want   bool
	}{
		{"from a relay server, for a peer", r.node, b.disco.Public(), true, true},
		{"from a peer with no relay server", key.NodePublic{}, b.disco.Public(), true, false},
		{"for a node that is not our peer", r.node, stranger.disco.Public(), true, false},
		{"not naming us", r.node, b.disco.Public(), false, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			bd, _ := relayBind(t, nil, []testPeer{r, b}, tc.server)
			us := bd.DiscoPublic()
			if !tc.us {
				us = stranger.disco.Public()
			}
			markTraffic(bd, b.node)
			from(bd, r, &disco.Allocation{VNI: 9, Peers: [2]key.DiscoPublic{us, tc.other},
				Addrs: []netip.AddrPort{netip.MustParseAddrPort("192.0.2.9:41700")}})
			bd.mu.Lock()
			s := bd.peers[b.node].p.pr.Load()
			bd.mu.Unlock()
			if got := s != nil; got != tc.want {
				t.Fatalf("session to b: %v, want %v", got, tc.want)
			}
			if s != nil && (s.vni != 9 || s.server.key != r.node) {
				t.Errorf("session %+v, want VNI 9 via r", s)
			}
			// An unconfirmed session never carries traffic.
			if pp := bd.PeerPath(b.node); pp.Path == "peer-relay" {
				t.Errorf("path %+v before any pong through the session", pp)
			}
		})
	}
}

// TestSessionPingBack: a node whose session is bound but unconfirmed,
// and which pinged the peer through it just before (a ping the server
// may have dropped, the peer not being bound yet), answers the peer's
// ping through the session with a pong and then a ping of its own, so
// its side is confirmed a round trip after the peer's rather than at
// the next maintenance ping.
func TestSessionPingBack(t *testing.T) {
	r, p := newTestPeer(), newTestPeer()
	// The test plays the relay server's socket.
	srv, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	srvAddr := srv.LocalAddr().(*net.UDPAddr).AddrPort()
	r.eps = []netip.AddrPort{srvAddr}
	bd, _ := relayBind(t, nil, []testPeer{r, p}, r.node)
	bd.SetUDPFilterForTest(nil)
	markTraffic(bd, p.node)
	const vni = 9
	from(bd, r, &disco.Allocation{VNI: vni, Peers: [2]key.DiscoPublic{bd.DiscoPublic(), p.disco.Public()}, Addrs: []netip.AddrPort{srvAddr}})
	bd.mu.Lock()
	s := bd.peers[p.node].p.pr.Load()
	bd.mu.Unlock()
	if s == nil {
		t.Fatal("no session after the allocation")
	}
	// Bound at the server, and it just pinged the peer.
	s.addr.Store(&srvAddr)
	now := time.Now().UnixNano()
	s.lastPing.Store(now)

	tx := [12]byte{1, 2, 3}
	pkt := disco.AppendPacket(nil, p.disco.Public(), p.disco.Shared(bd.DiscoPublic()), &disco.Ping{TxID: tx, NodeKey: p.node})
	bd.handleSessionDisco(s, pkt, now)

	// What the node sends through the session: a pong to the peer's
	// ping, then a ping (the maintenance ping, which would also come,
	// does not run in this test).
	var gotPong, gotPing bool
	buf := make([]byte, 2048)
	srv.SetReadDeadline(time.Now().Add(5 * time.Second))
	for !gotPong || !gotPing {
		n, _, err := srv.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("through the session: pong %v, ping %v; read: %v", gotPong, gotPing, err)
		}
		typ, gotVNI, ok := udprelay.ParseHeader(buf[:n])
		if !ok || typ != udprelay.TypeData || gotVNI != vni {
			continue
		}
		sender, sealed, ok := disco.Sender(buf[udprelay.HeaderLen:n])
		if !ok || sender != bd.DiscoPublic() {
			continue
		}
		m, err := disco.Open(p.disco.Shared(bd.DiscoPublic()), sealed)
		if err != nil {
			t.Fatalf("open: %v", err)
		}
		switch m := m.(type) {
		case *disco.Pong:
			gotPong = gotPong || m.TxID == tx
		case *disco.Ping:
			gotPing = true
		}
	}
}

// markTraffic records traffic with peer k just now.
func markTraffic(bd *Bind, k key.NodePublic) {
	bd.mu.Lock()
	bd.peers[k].p.lastWGRecv.Store(time.Now().UnixNano())
	bd.mu.Unlock()
}

// sessionOf returns bd's peer relay session to k.
func sessionOf(bd *Bind, k key.NodePublic) *prSession {
	bd.mu.Lock()
	defer bd.mu.Unlock()
	return bd.peers[k].p.pr.Load()
}

// bindRelays counts the BindRelay packets sent to srv so far: it sends
// a marker from another socket and reads up to it (loopback keeps the
// order of what was sent before).
func bindRelays(t *testing.T, srv *net.UDPConn) int {
	t.Helper()
	c, err := net.DialUDP("udp4", nil, srv.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	marker := []byte("marker")
	if _, err := c.Write(marker); err != nil {
		t.Fatal(err)
	}
	n := 0
	buf := make([]byte, 2048)
	srv.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		m, _, err := srv.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("read up to the marker: %v", err)
		}
		if string(buf[:m]) == string(marker) {
			return n
		}
		if typ, _, ok := udprelay.ParseHeader(buf[:m]); ok && typ == udprelay.TypeControl {
			n++
		}
	}
}

// TestAllocationGuard: Allocations cannot steer a node's UDP. One not
// asked for, for a peer with no traffic, binds nothing and sends
// nothing; addresses off the server's endpoints are dropped; a flood
// sends a bounded number of BindRelays; and a working session stays.
func TestAllocationGuard(t *testing.T) {
	setup := func(t *testing.T) (*Bind, *fakeRelay, testPeer, testPeer, *net.UDPConn, netip.AddrPort) {
		r, p := newTestPeer(), newTestPeer()
		srv, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { srv.Close() })
		srvAddr := srv.LocalAddr().(*net.UDPAddr).AddrPort()
		r.eps = []netip.AddrPort{srvAddr}
		bd, fr := relayBind(t, nil, []testPeer{r, p}, r.node)
		bd.SetUDPFilterForTest(nil)
		fr.take()
		return bd, fr, r, p, srv, srvAddr
	}
	alloc := func(bd *Bind, p testPeer, vni uint32, addrs ...netip.AddrPort) *disco.Allocation {
		return &disco.Allocation{VNI: vni, Peers: [2]key.DiscoPublic{bd.DiscoPublic(), p.disco.Public()}, Addrs: addrs}
	}

	t.Run("not asked for", func(t *testing.T) {
		bd, fr, r, p, srv, srvAddr := setup(t)
		from(bd, r, alloc(bd, p, 9, srvAddr))
		if s := sessionOf(bd, p.node); s != nil {
			t.Errorf("session %d bound from an Allocation nobody asked for", s.vni)
		}
		if n := bindRelays(t, srv); n != 0 {
			t.Errorf("%d BindRelays sent, want 0", n)
		}
		if s := fr.take(); len(s) != 0 {
			t.Errorf("sent through the relay: %v, want nothing", s)
		}
	})

	t.Run("addresses off the server's endpoints", func(t *testing.T) {
		bd, _, r, p, _, srvAddr := setup(t)
		victim := netip.MustParseAddrPort("192.0.2.77:53")
		bd.mu.Lock()
		pp := bd.peers[p.node].p
		bd.mu.Unlock()
		bd.maybeAllocate(pp, time.Now().UnixNano()) // asks r
		from(bd, r, alloc(bd, p, 9, victim, srvAddr, victim))
		s := sessionOf(bd, p.node)
		if s == nil {
			t.Fatal("no session after an Allocation asked for")
		}
		if len(s.addrs) != 1 || s.addrs[0] != srvAddr {
			t.Errorf("session addresses %v, want [%v]", s.addrs, srvAddr)
		}

		// Only addresses off them: nothing to bind.
		bd2, _, r2, p2, srv2, _ := setup(t)
		markTraffic(bd2, p2.node)
		from(bd2, r2, alloc(bd2, p2, 9, victim))
		if s := sessionOf(bd2, p2.node); s != nil {
			t.Errorf("session to %v, want none", s.addrs)
		}
		if n := bindRelays(t, srv2); n != 0 {
			t.Errorf("%d BindRelays sent, want 0", n)
		}
	})

	t.Run("flood", func(t *testing.T) {
		bd, _, r, p, srv, srvAddr := setup(t)
		markTraffic(bd, p.node)
		addrs := make([]netip.AddrPort, 8)
		for i := range addrs {
			addrs[i] = srvAddr
		}
		const flood = 200
		start := time.Now()
		for i := range flood {
			from(bd, r, alloc(bd, p, uint32(100+i), addrs...))
		}
		// One Allocation per server per allocateEvery, one address: one
		// BindRelay, and at most one more for each allocateEvery the
		// flood took (under -race on a loaded machine it took up to 9 s,
		// and a second was taken).
		took := time.Since(start)
		if n, most := bindRelays(t, srv), 1+int(took/allocateEvery); n < 1 || n > most {
			t.Errorf("%d Allocations in %v sent %d BindRelays, want 1 to %d", flood, took, n, most)
		}
	})

	t.Run("working session stays", func(t *testing.T) {
		bd, _, r, p, srv, srvAddr := setup(t)
		markTraffic(bd, p.node)
		from(bd, r, alloc(bd, p, 9, srvAddr))
		s := sessionOf(bd, p.node)
		if s == nil {
			t.Fatal("no session")
		}
		now := time.Now().UnixNano()
		s.addr.Store(&srvAddr)
		s.confirmed.Store(now)
		s.ep.lastRecv.Store(now)
		bindRelays(t, srv)
		bd.mu.Lock()
		pp := bd.peers[p.node].p
		bd.mu.Unlock()
		// Both what would let an Allocation in: an ask and the allowance.
		bd.mu.Lock()
		bd.peers[r.node].p.lastOffered.Store(0)
		bd.mu.Unlock()
		pp.lastAllocate.Store(now)
		pp.allocServer.Store(bd.peers[r.node].p)
		from(bd, r, alloc(bd, p, 10, srvAddr))
		if got := sessionOf(bd, p.node); got != s {
			t.Errorf("session %d replaced by %d", s.vni, got.vni)
		}
		if n := bindRelays(t, srv); n != 0 {
			t.Errorf("%d BindRelays sent, want 0", n)
		}
	})
}

// sendsTo counts fr's sends to k since the last take, keeping the rest
// (all sends are taken).
func sendsTo(fr *fakeRelay, k key.NodePublic) int {
	n := 0
	for _, s := range fr.take() {
		if s.dst == k {
			n++
		}
	}
	return n
}

// TestAllocateRetry: an Allocate that gets no Allocation is sent again
// after allocateRetries (a first ask to a relay node that just joined may
// be lost), a bounded number of times; one that is answered is not.
func TestAllocateRetry(t *testing.T) {
	r, b := newTestPeer(), newTestPeer()
	peerOf := func(bd *Bind, k key.NodePublic) *peer {
		bd.mu.Lock()
		defer bd.mu.Unlock()
		return bd.peers[k].p
	}
	// count waits until the sends to r reach want (or 10 s pass), then
	// a second more, and returns how many there were.
	count := func(fr *fakeRelay, want int) int {
		n := 0
		deadline := time.Now().Add(10 * time.Second)
		for n < want && time.Now().Before(deadline) {
			n += sendsTo(fr, r.node)
			time.Sleep(20 * time.Millisecond)
		}
		time.Sleep(time.Second)
		return n + sendsTo(fr, r.node)
	}
	t.Run("unanswered", func(t *testing.T) {
		bd, fr := relayBind(t, nil, []testPeer{r, b}, r.node)
		start := time.Now()
		bd.maybeAllocate(peerOf(bd, b.node), start.UnixNano())
		want := 1 + len(allocateRetries)
		if got := count(fr, want); got != want {
			t.Errorf("Allocates sent = %d, want %d (the ask and %d quick retries)", got, want, len(allocateRetries))
		}
		t.Logf("%d Allocates in %v", want, time.Since(start).Round(time.Millisecond))
	})
	t.Run("answered", func(t *testing.T) {
		r := r
		r.eps = []netip.AddrPort{netip.MustParseAddrPort("192.0.2.9:41641")}
		bd, fr := relayBind(t, nil, []testPeer{r, b}, r.node)
		bd.maybeAllocate(peerOf(bd, b.node), time.Now().UnixNano())
		from(bd, r, &disco.Allocation{VNI: 9, Peers: [2]key.DiscoPublic{bd.DiscoPublic(), b.disco.Public()},
			Addrs: []netip.AddrPort{netip.MustParseAddrPort("192.0.2.9:41700")}})
		if sessionOf(bd, b.node) == nil {
			t.Fatal("the allocation made no session")
		}
		// Nothing more is asked (the wait covers two retries).
		time.Sleep(allocateRetries[0] + allocateRetries[1])
		if got := sendsTo(fr, r.node); got != 1 {
			t.Errorf("Allocates sent = %d, want 1 (answered: no retry)", got)
		}
	})
}

// TestAllocationResend: an Allocation for a peer the relay node has no
// path to yet (no home region known, no direct path) goes out once a
// path is known, within allocationRetries.
func TestAllocationResend(t *testing.T) {
	a, b := newTestPeer(), newTestPeer()
	srv := &fakeServer{}
	bd, fr := relayBind(t, srv, []testPeer{a, b})
	// b's home region is not known yet.
	bd.UpdatePeers([]PeerConfig{{Key: b.node, DiscoKey: b.disco.Public()}}, nil)
	from(bd, a, &disco.Allocate{Peer: b.disco.Public()})
	if got := sendsTo(fr, a.node); got != 1 {
		t.Fatalf("allocations sent to the asker: %d, want 1", got)
	}
	bd.UpdatePeers([]PeerConfig{{Key: b.node, DiscoKey: b.disco.Public(), HomeRegion: 1}}, nil)
	deadline := time.Now().Add(5 * time.Second)
	for sendsTo(fr, b.node) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the allocation never reached the other peer once its region was known")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestServedSessionsFollowPeers: the relay server's sessions end when the
// peer table no longer has one of their peers with that disco key: the
// peer removed (from the netmap, or out of the policy), its disco key
// changed, or this node no longer offers the relay. Allocate is given
// both peers' node keys.
func TestServedSessionsFollowPeers(t *testing.T) {
	a, b, c := newTestPeer(), newTestPeer(), newTestPeer()
	newServer := func(t *testing.T) *udprelay.Server {
		srv, err := udprelay.New(udprelay.Options{
			DiscoKey: key.NewDisco(),
			Addrs:    func() []netip.AddrPort { return []netip.AddrPort{netip.MustParseAddrPort("192.0.2.9:41700")} },
		})
		if err != nil {
			t.Fatal(err)
		}
		return srv
	}
	pc := func(p testPeer) PeerConfig {
		return PeerConfig{Key: p.node, HomeRegion: 1, DiscoKey: p.disco.Public()}
	}
	// serve has a ask for sessions with b and c, and checks both exist.
	serve := func(t *testing.T, bd *Bind, srv *udprelay.Server) {
		t.Helper()
		from(bd, a, &disco.Allocate{Peer: b.disco.Public()})
		bd.mu.Lock()
		bd.peers[a.node].p.lastServeAllocate.Store(0) // serveAllocateEvery
		bd.mu.Unlock()
		from(bd, a, &disco.Allocate{Peer: c.disco.Public()})
		if st := srv.Stats(); st.Sessions != 2 {
			t.Fatalf("sessions %d after a asked for b and c, want 2", st.Sessions)
		}
	}
	tests := []struct {
		name   string
		change func(bd *Bind)
		want   int // sessions left
	}{
		{"peer removed", func(bd *Bind) { bd.UpdatePeers(nil, []key.NodePublic{b.node}) }, 1},
		{"peer left the full table", func(bd *Bind) { bd.SetPeers([]PeerConfig{pc(a), pc(c)}) }, 1},
		{"new disco key", func(bd *Bind) {
			b2 := b
			b2.disco = key.NewDisco()
			bd.UpdatePeers([]PeerConfig{pc(b2)}, nil)
		}, 1},
		{"asker removed", func(bd *Bind) { bd.UpdatePeers(nil, []key.NodePublic{a.node}) }, 0},
		{"not offered", func(bd *Bind) { bd.SetRelayOffered(false) }, 0},
		{"unrelated change", func(bd *Bind) { bd.UpdatePeers([]PeerConfig{pc(c)}, nil) }, 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := newServer(t)
			bd, _ := relayBind(t, srv, []testPeer{a, b, c})
			serve(t, bd, srv)
			tc.change(bd)
			if st := srv.Stats(); st.Sessions != tc.want || st.Released != uint64(2-tc.want) {
				t.Errorf("after the change: %d sessions, %d released; want %d and %d", st.Sessions, st.Released, tc.want, 2-tc.want)
			}
		})
	}
	t.Run("peer removed during Allocate", func(t *testing.T) {
		// The peer table changes after serveAllocate checked it and
		// before the server made the session: the session is released
		// and no Allocation goes out.
		srv := &hookServer{Server: newServer(t)}
		bd, fr := relayBind(t, srv, []testPeer{a, b})
		srv.before = func() { bd.UpdatePeers(nil, []key.NodePublic{b.node}) }
		from(bd, a, &disco.Allocate{Peer: b.disco.Public()})
		if st := srv.Stats(); st.Allocated != 1 || st.Sessions != 0 || st.Released != 1 {
			t.Errorf("stats %+v, want 1 session allocated and released", st)
		}
		if s := fr.take(); len(s) != 0 {
			t.Errorf("sent %v, want no Allocation", s)
		}
	})
	t.Run("node keys", func(t *testing.T) {
		srv := &fakeServer{}
		bd, _ := relayBind(t, srv, []testPeer{a, b})
		from(bd, a, &disco.Allocate{Peer: b.disco.Public()})
		want := [2]udprelay.Party{{Node: a.node, Disco: a.disco.Public()}, {Node: b.node, Disco: b.disco.Public()}}
		if srv.calls() != 1 || srv.pairs[0] != want {
			t.Errorf("Allocate got %v, want %v", srv.pairs, want)
		}
	})
}

// hookServer is a relay server that runs before (if set) at the start of
// each Allocate.
type hookServer struct {
	*udprelay.Server
	before func()
}

func (h *hookServer) Allocate(a, b udprelay.Party) (*disco.Allocation, error) {
	if h.before != nil {
		h.before()
	}
	return h.Server.Allocate(a, b)
}

// TestSessionDiscoChange: this node's session with a peer through a relay
// server ends when the peer's or the server's disco key changes (a new
// process: the session at the server is gone); another change keeps it.
func TestSessionDiscoChange(t *testing.T) {
	r, b := newTestPeer(), newTestPeer()
	r.eps = []netip.AddrPort{netip.MustParseAddrPort("192.0.2.9:41641")}
	tests := []struct {
		name    string
		changed func() testPeer
		keep    bool
	}{
		{"peer's disco key", func() testPeer { b2 := b; b2.disco = key.NewDisco(); return b2 }, false},
		{"server's disco key", func() testPeer { r2 := r; r2.disco = key.NewDisco(); return r2 }, false},
		{"peer's endpoints", func() testPeer {
			b2 := b
			b2.eps = []netip.AddrPort{netip.MustParseAddrPort("198.51.100.7:41641")}
			return b2
		}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			bd, _ := relayBind(t, nil, []testPeer{r, b}, r.node)
			markTraffic(bd, b.node)
			from(bd, r, &disco.Allocation{VNI: 9, Peers: [2]key.DiscoPublic{bd.DiscoPublic(), b.disco.Public()},
				Addrs: []netip.AddrPort{netip.MustParseAddrPort("192.0.2.9:41700")}})
			session := func() (*prSession, bool) {
				bd.mu.Lock()
				defer bd.mu.Unlock()
				_, inTable := (*bd.pr.sessions.Load())[9]
				return bd.peers[b.node].p.pr.Load(), inTable
			}
			if s, in := session(); s == nil || !in {
				t.Fatalf("no session after the allocation (%v, in table %v)", s, in)
			}
			p := tc.changed()
			bd.UpdatePeers([]PeerConfig{{Key: p.node, HomeRegion: 1, DiscoKey: p.disco.Public(), Endpoints: p.eps, RelayServer: p.node == r.node}}, nil)
			if s, in := session(); (s != nil) != tc.keep || in != tc.keep {
				t.Errorf("session after the change: %v (in table %v), want kept %v", s, in, tc.keep)
			}
		})
	}
}
