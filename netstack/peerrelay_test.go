package netstack

import (
	"context"
	"fmt"
	"testing"
	"time"

	"beam.dev/beam/types/key"
)

// peerStatus returns n's status of peer k.
func peerStatus(n *node, k key.NodePublic) (PeerStatus, bool) {
	for _, st := range n.e.Status() {
		if st.Key == k {
			return st, true
		}
	}
	return PeerStatus{}, false
}

// waitPeerPath waits until n reaches k over path.
func waitPeerPath(t *testing.T, n *node, k key.NodePublic, path string, within time.Duration) PeerStatus {
	t.Helper()
	deadline := time.Now().Add(within)
	tk := time.NewTicker(20 * time.Millisecond)
	defer tk.Stop()
	for {
		st, _ := peerStatus(n, k)
		if st.Path == path {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("path to %s %+v after %v, want %q", k.ShortString(), st, within, path)
		}
		<-tk.C
	}
}

// peerRelayTrio starts nodes a and b that cannot reach each other
// directly and r, which runs a peer relay server both reach (all three in
// one relay region), and a UDP echo flow from a to b that has echoed.
func peerRelayTrio(t *testing.T) (a, b, r *node, f *echoFlow) {
	t.Helper()
	url := relayURL(t)
	nodes := newNodes(t, 3, func(i int, o *Options) {
		if i == 2 {
			o.PeerRelay = &PeerRelayOptions{}
		}
	})
	a, b, r = nodes[0], nodes[1], nodes[2]
	resetPeers(t, nodes)
	blockDirect(a, b)
	for i, n := range nodes {
		cfg := n.cfg
		cfg.DERPMap = map[int]DERPRegion{1: {URLs: []string{url}}}
		cfg.HomeDERP = 1
		cfg.Peers = nil
		for j, other := range nodes {
			if i == j {
				continue
			}
			p := other.peer()
			p.HomeDERP = 1
			p.RelayServer = j == 2
			cfg.Peers = append(cfg.Peers, p)
		}
		n.cfg = cfg
		if err := n.e.Reconfig(cfg); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range nodes {
		if err := n.e.relays.waitConnectedForTest(t.Context(), 1); err != nil {
			t.Fatalf("connect to relay: %v", err)
		}
	}
	pc, err := b.e.ListenPacket("udp", ":7")
	if err != nil {
		t.Fatal(err)
	}
	udpEchoServer(t, pc)
	f = startFlow(t, a, fmt.Sprintf("%v:7", b.v4))
	f.waitEcho(t, 0, 10*time.Second)
	return a, b, r, f
}

// TestPeerRelay: a and b cannot reach each other directly, r runs a peer
// relay server both reach. Traffic between a and b moves from the relay
// region to the peer relay, which Status and Ping report; when r goes
// away, it falls back to the relay region without the flow stopping for
// long; when the direct path opens, it goes direct.
func TestPeerRelay(t *testing.T) {
	a, b, r, f := peerRelayTrio(t)

	start := time.Now()
	st := waitPeerPath(t, a, b.key.Public(), "peer-relay", 10*time.Second)
	waitPeerPath(t, b, a.key.Public(), "peer-relay", 5*time.Second)
	t.Logf("peer relay after %v: %+v", time.Since(start), st)
	if st.Via != r.key.Public() || st.Endpoint.Port() != r.e.prs.port {
		t.Errorf("status %+v, want via %s at port %d", st, r.key.Public().ShortString(), r.e.prs.port)
	}
	f.waitEcho(t, f.sent.Load()+20, 5*time.Second)
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	pr, err := a.e.Ping(ctx, b.v4)
	if err != nil {
		t.Fatalf("Ping over the peer relay: %v", err)
	}
	if pr.Path != "peer-relay" || pr.Via != r.key.Public() || pr.Latency <= 0 {
		t.Errorf("Ping = %+v, want the peer relay via %s", pr, r.key.Public().ShortString())
	}
	rs, ok := r.e.PeerRelay()
	if !ok || rs.Sessions != 1 || rs.Bound != 1 || rs.Packets == 0 {
		t.Errorf("relay server stats %+v (ok %v), want one bound session that forwarded packets", rs, ok)
	}
	if tr := a.e.PeerTraffic(b.key.Public()); tr.PeerRelay.TxPackets == 0 || tr.PeerRelay.RxPackets == 0 {
		t.Errorf("a's traffic to b %+v, want packets both ways over the peer relay", tr)
	}

	// The relay server goes away: back to the relay region.
	r.e.Close()
	gone := time.Now()
	f.waitEcho(t, f.sent.Load()+1, 5*time.Second)
	t.Logf("flow resumed %v after the peer relay went away", time.Since(gone))
	waitPeerPath(t, a, b.key.Public(), "relay", 10*time.Second)
	f.waitEcho(t, f.sent.Load(), 5*time.Second)

	// Direct opens: it wins.
	unblock(a, b)
	waitPeerPath(t, a, b.key.Public(), "direct", 8*time.Second)
	f.waitEcho(t, f.sent.Load(), 5*time.Second)
}

// waitPeerRelayStats waits until r's relay server stats satisfy cond.
func waitPeerRelayStats(t *testing.T, r *node, what string, within time.Duration, cond func(PeerRelayStats) bool) PeerRelayStats {
	t.Helper()
	deadline := time.Now().Add(within)
	tk := time.NewTicker(10 * time.Millisecond)
	defer tk.Stop()
	for {
		rs, _ := r.e.PeerRelay()
		if cond(rs) {
			return rs
		}
		if time.Now().After(deadline) {
			t.Fatalf("relay server stats %+v after %v, want %s", rs, within, what)
		}
		<-tk.C
	}
}

// TestPeerRelayPeerRemoved: when b leaves the relay node's netmap (removed,
// or no longer visible under the policy), r ends the session at once: a's
// packets on it are dropped, not forwarded until the session goes idle,
// and a and b go on through the relay region.
func TestPeerRelayPeerRemoved(t *testing.T) {
	a, b, r, f := peerRelayTrio(t)
	waitPeerPath(t, a, b.key.Public(), "peer-relay", 10*time.Second)
	waitPeerPath(t, b, a.key.Public(), "peer-relay", 5*time.Second)
	f.waitEcho(t, f.sent.Load()+5, 5*time.Second)
	before := waitPeerRelayStats(t, r, "one bound session that forwarded", 5*time.Second, func(rs PeerRelayStats) bool {
		return rs.Bound == 1 && rs.Packets > 0
	})

	cfg := r.cfg
	cfg.Peers = []Peer{cfg.Peers[0]}
	if cfg.Peers[0].Key != a.key.Public() {
		cfg.Peers = []Peer{r.cfg.Peers[1]}
	}
	if err := r.e.Reconfig(cfg); err != nil {
		t.Fatal(err)
	}
	if rs, _ := r.e.PeerRelay(); rs.Sessions != 0 || rs.Released != before.Released+1 {
		t.Fatalf("relay server stats right after b left r's netmap %+v, want no session and 1 more released", rs)
	}
	// The flow (a datagram every 10 ms each way) still goes to r until a
	// and b see the session fail. Once a packet was dropped, every
	// earlier one was handled: from then on nothing is forwarded.
	dropped := waitPeerRelayStats(t, r, "a packet on the ended session dropped", 5*time.Second, func(rs PeerRelayStats) bool {
		return rs.DroppedOther > before.DroppedOther
	})
	after := waitPeerRelayStats(t, r, "more packets on the ended session dropped", 5*time.Second, func(rs PeerRelayStats) bool {
		return rs.DroppedOther >= dropped.DroppedOther+5
	})
	if after.Packets != dropped.Packets {
		t.Errorf("relay server forwarded %d packets after the session ended, want none", after.Packets-dropped.Packets)
	}
	waitPeerPath(t, a, b.key.Public(), "relay", 10*time.Second)
	f.waitEcho(t, f.sent.Load(), 5*time.Second)
	if rs, _ := r.e.PeerRelay(); rs.Sessions != 0 || rs.Packets != dropped.Packets {
		t.Errorf("relay server stats once a fell back %+v, want no session and no packet forwarded since %d", rs, dropped.Packets)
	}
}
