package netstack

import (
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"beam.dev/beam/types/key"
	"golang.zx2c4.com/wireguard/device"
)

// inDevice reports whether peer k is configured in wireguard-go.
func (e *Engine) inDevice(k key.NodePublic) bool {
	return e.dev.LookupPeer(device.NoisePublicKey(k.Raw32())) != nil
}

// devicePeers counts the peers configured in wireguard-go.
func (e *Engine) devicePeers(tb testing.TB) int {
	tb.Helper()
	text, err := e.dev.IpcGet()
	if err != nil {
		tb.Fatalf("IpcGet: %v", err)
	}
	return len(parseUAPIPeers(text))
}

// TestLazyPeers checks that peers join wireguard-go only with traffic:
// none is configured after Reconfig (of many), a connection from a to b
// configures b in a (outbound) and a in b (inbound, by the handshake
// initiation a sends, accepted the first time), and the other peers stay
// out.
func TestLazyPeers(t *testing.T) {
	t.Setenv("BEAM_DEBUG_LAZY_PEERS", "1")
	nodes := newNodes(t, 2, nil)
	a, b := nodes[0], nodes[1]
	// Many more peers a never talks to.
	cfg := a.cfg
	cfg.Peers = append(slices.Clone(cfg.Peers), benchPeers(200)...)
	if err := a.e.Reconfig(cfg); err != nil {
		t.Fatal(err)
	}
	if n := a.e.devicePeers(t); n != 0 {
		t.Fatalf("after Reconfig with %d peers, %d in wireguard-go, want 0", len(cfg.Peers), n)
	}
	if n := len(a.e.Status()); n != len(cfg.Peers) {
		t.Errorf("Status lists %d peers, want %d", n, len(cfg.Peers))
	}

	ln, err := b.e.Listen("tcp", ":7")
	if err != nil {
		t.Fatal(err)
	}
	tcpEchoServer(t, ln)
	start := time.Now()
	checkTCPEcho(t, t.Context(), a, netip.AddrPortFrom(b.v4, 7).String())
	took := time.Since(start)
	t.Logf("first connection to a peer asleep at both ends: %v", took)

	if !a.e.inDevice(b.key.Public()) || !b.e.inDevice(a.key.Public()) {
		t.Errorf("after a connection, b in a's device %v, a in b's %v; want both", a.e.inDevice(b.key.Public()), b.e.inDevice(a.key.Public()))
	}
	if n := a.e.devicePeers(t); n != 1 {
		t.Errorf("a has %d peers in wireguard-go, want 1 (b)", n)
	}
	// b took the initiation that woke a in its device: one initiation,
	// answered before the bind's resend (initRetryAfter, 1 s) or
	// wireguard-go's retry (5 s) could have been needed.
	if got := a.e.PeerTraffic(b.key.Public()).HandshakesInitiated; got != 1 {
		t.Errorf("a sent %d handshake initiations to b, want 1", got)
	}
	if took >= time.Second {
		t.Errorf("connection took %v, want under 1 s (a handshake, not a retry)", took)
	}
}

// TestLazyPeerIdle checks that a peer without traffic for the idle time
// leaves wireguard-go, keeps its counters in Status, and comes back for
// the next packet of a flow opened before. The flow is UDP, so nothing
// flows between the exchanges (TCP may still send an ACK).
func TestLazyPeerIdle(t *testing.T) {
	t.Setenv("BEAM_DEBUG_LAZY_PEERS", "1")
	nodes := newNodes(t, 2, nil)
	a, b := nodes[0], nodes[1]
	pc, err := b.e.ListenPacket("udp", ":7")
	if err != nil {
		t.Fatal(err)
	}
	udpEchoServer(t, pc)
	c, err := a.e.DialContext(t.Context(), "udp", netip.AddrPortFrom(b.v4, 7).String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	echo := func(msg string) {
		t.Helper()
		buf := make([]byte, 64)
		// A datagram may be lost while the handshake completes.
		for range 50 {
			if _, err := c.Write([]byte(msg)); err != nil {
				t.Fatalf("write: %v", err)
			}
			c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			n, err := c.Read(buf)
			if err == nil && string(buf[:n]) == msg {
				return
			}
		}
		t.Fatalf("no echo of %q", msg)
	}
	echo("before")
	before := a.e.Status()[0]
	if before.TxBytes == 0 || before.LastHandshake.IsZero() {
		t.Fatalf("status after traffic: %+v", before)
	}

	// A negative idle time makes every peer idle, however recent its
	// last packet.
	for _, n := range []*node{a, b} {
		n.e.ps.mu.Lock()
		n.e.ps.idleAfter = -time.Hour
		n.e.ps.mu.Unlock()
		n.e.trimIdlePeers()
		if k := n.e.cfg.Peers[0].Key; n.e.inDevice(k) {
			t.Fatalf("idle peer %s still in wireguard-go", k.ShortString())
		}
	}
	idle := a.e.Status()[0]
	if idle.TxBytes != before.TxBytes || idle.RxBytes != before.RxBytes || !idle.LastHandshake.Equal(before.LastHandshake) {
		t.Errorf("status of the idle peer %+v, want the counters it had: %+v", idle, before)
	}

	echo("after")
	if !a.e.inDevice(b.key.Public()) || !b.e.inDevice(a.key.Public()) {
		t.Errorf("peers not back in wireguard-go after traffic")
	}
	if after := a.e.Status()[0]; after.TxBytes <= before.TxBytes {
		t.Errorf("tx bytes after more traffic %d, want more than %d", after.TxBytes, before.TxBytes)
	}
}

// TestUpdatePeers checks one-peer changes: UpdatePeers adds, changes and
// removes the peers named and leaves the others, and the engine ends as
// Reconfig with the same peers would leave it.
func TestUpdatePeers(t *testing.T) {
	nodes := newNodes(t, 2, nil)
	a, b := nodes[0], nodes[1]
	extra := benchPeers(3)
	if err := a.e.UpdatePeers(extra, nil); err != nil {
		t.Fatal(err)
	}
	changed := extra[1]
	changed.Endpoints = []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:9")}
	if err := a.e.UpdatePeers([]Peer{changed}, []key.NodePublic{extra[0].Key}); err != nil {
		t.Fatal(err)
	}
	want := map[key.NodePublic]Peer{b.key.Public(): b.peer(), changed.Key: changed, extra[2].Key: extra[2]}
	a.e.mu.Lock()
	got := slices.Clone(a.e.cfg.Peers)
	a.e.mu.Unlock()
	if len(got) != len(want) {
		t.Fatalf("peers after updates: %d, want %d", len(got), len(want))
	}
	for i, p := range got {
		w, ok := want[p.Key]
		if !ok || !samePeer(&p, &w) {
			t.Errorf("peer %d: %+v, want %+v", i, p, w)
		}
		if ep := a.e.ps.byKey[p.Key]; ep == nil || ep.idx != i {
			t.Errorf("peer %d (%s) indexed at %+v", i, p.Key.ShortString(), ep)
		}
	}
	if pp := a.e.bind.PeerPath(extra[0].Key); pp.Path != "none" {
		t.Errorf("removed peer still has a path: %+v", pp)
	}
	if err := a.e.UpdatePeers([]Peer{{Key: key.NodePublic{}}}, nil); err == nil {
		t.Errorf("UpdatePeers with a zero key: no error")
	}
	// The peer that stayed still works.
	ln, err := b.e.Listen("tcp", ":7")
	if err != nil {
		t.Fatal(err)
	}
	tcpEchoServer(t, ln)
	checkTCPEcho(t, t.Context(), a, netip.AddrPortFrom(b.v4, 7).String())
}

// TestLazyPeersByDefault: without BEAM_DEBUG_LAZY_PEERS no peer is in
// wireguard-go before traffic; with BEAM_DEBUG_LAZY_PEERS=0 every peer is,
// as soon as it is in the config.
func TestLazyPeersByDefault(t *testing.T) {
	for _, tt := range []struct {
		env  string
		want int
	}{
		{"", 0},
		{"1", 0},
		{"0", 20},
		{"false", 20},
	} {
		t.Run("BEAM_DEBUG_LAZY_PEERS="+tt.env, func(t *testing.T) {
			t.Setenv("BEAM_DEBUG_LAZY_PEERS", tt.env)
			n := newNodes(t, 1, nil)[0]
			cfg := n.cfg
			cfg.Peers = benchPeers(20)
			if err := n.e.Reconfig(cfg); err != nil {
				t.Fatal(err)
			}
			if got := n.e.devicePeers(t); got != tt.want {
				t.Errorf("%d of %d peers in wireguard-go, want %d", got, len(cfg.Peers), tt.want)
			}
		})
	}
}

// TestLazyPeerTrimRacesWake checks that trimIdlePeers does not hold the
// peer table while wireguard-go removes peers (which waits for the peers'
// receive goroutines, which may wait for the TUN reader): a packet the TUN
// reader meets for the peer being removed is noted without waiting, and
// the peer is back in wireguard-go once the removal is done; a wake from
// the receive goroutine meanwhile waits for the removal and adds the peer
// too. Before, the TUN reader waited for the removal: a deadlock.
func TestLazyPeerTrimRacesWake(t *testing.T) {
	t.Setenv("BEAM_DEBUG_LAZY_PEERS", "1")
	nodes := newNodes(t, 2, nil)
	a, b := nodes[0], nodes[1]
	bk := b.key.Public()
	a.e.wakePeer(bk)
	if !a.e.inDevice(bk) {
		t.Fatal("b not in a's device after wakePeer")
	}
	// An IPv4 header addressed to b, as the TUN reader would see it.
	pkt := make([]byte, 20)
	pkt[0] = 0x45
	copy(pkt[16:20], b.v4.AsSlice())

	const limit = 10 * time.Second // a deadlock, not a slow machine
	var outboundReturned, inboundStarted bool
	inboundDone := make(chan struct{})
	a.e.ps.mu.Lock()
	a.e.ps.idleAfter = -time.Hour
	a.e.ps.onRemovingForTest = func() {
		done := make(chan struct{})
		go func() {
			defer close(done)
			a.e.noteOutbound(pkt)
		}()
		select {
		case <-done:
			outboundReturned = true
		case <-time.After(limit):
			t.Errorf("noteOutbound still waiting after %v while a removal runs", limit)
			return
		}
		inboundStarted = true
		go func() {
			defer close(inboundDone)
			a.e.wakePeer(bk)
		}()
	}
	a.e.ps.mu.Unlock()

	trimmed := make(chan struct{})
	go func() {
		defer close(trimmed)
		a.e.trimIdlePeers()
	}()
	select {
	case <-trimmed:
	case <-time.After(2 * limit):
		t.Fatalf("trimIdlePeers still running after %v", 2*limit)
	}
	if !outboundReturned {
		t.Fatal("noteOutbound did not return during the removal")
	}
	if !a.e.inDevice(bk) {
		t.Errorf("b not in a's device after a packet to it met its removal, want it added back")
	}
	if inboundStarted {
		select {
		case <-inboundDone:
		case <-time.After(limit):
			t.Fatalf("wakePeer still waiting %v after the removal ended", limit)
		}
	}
	if !a.e.inDevice(bk) {
		t.Errorf("b not in a's device after wakePeer")
	}
	if got := a.e.ps.asleep.Load(); got != 0 {
		t.Errorf("asleep = %d, want 0 (b is a's only peer)", got)
	}
}

// TestLazyPeerTrimStress races trims with wakes from both sides and checks
// after each round that the table agrees with wireguard-go: a peer the
// table calls awake is in the device, one it calls asleep is not, and the
// asleep count matches. A wake that ran after a trim began leaves the
// peer awake.
func TestLazyPeerTrimStress(t *testing.T) {
	t.Setenv("BEAM_DEBUG_LAZY_PEERS", "1")
	nodes := newNodes(t, 2, nil)
	a, b := nodes[0], nodes[1]
	bk := b.key.Public()
	pkt := make([]byte, 20)
	pkt[0] = 0x45
	copy(pkt[16:20], b.v4.AsSlice())
	a.e.ps.mu.Lock()
	a.e.ps.idleAfter = -time.Hour
	a.e.ps.mu.Unlock()
	ep := a.e.ps.byKey[bk]
	for i := range 100 {
		var wg sync.WaitGroup
		wg.Go(a.e.trimIdlePeers)
		wg.Go(func() { a.e.noteOutbound(pkt) })
		wg.Go(func() { a.e.wakePeer(bk) })
		wg.Wait()
		a.e.ps.mu.Lock()
		inDev, asleep := ep.inDev.Load(), a.e.ps.asleep.Load()
		a.e.ps.mu.Unlock()
		if got := a.e.inDevice(bk); got != inDev {
			t.Fatalf("round %d: b in device %v, table says %v", i, got, inDev)
		}
		if want := map[bool]int64{true: 0, false: 1}[inDev]; asleep != want {
			t.Fatalf("round %d: asleep = %d with b in device %v, want %d", i, asleep, inDev, want)
		}
		// A wake after the trim has finished always leaves b awake.
		a.e.noteOutbound(pkt)
		if !a.e.inDevice(bk) {
			t.Fatalf("round %d: b not in device after a packet to it", i)
		}
	}
}
