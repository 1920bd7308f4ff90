package netstack

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"
)

// idleAge is how far TestIdleDirectPath moves the engines' path times into
// the past: well beyond the 5 s after which a silent direct path is no
// longer trusted while traffic flows.
const idleAge = 20 * time.Second

// ageBoth makes a and b look as if they had not talked for d.
func ageBoth(a, b *node, d time.Duration) {
	a.e.bind.AgeForTest(b.key.Public(), d)
	b.e.bind.AgeForTest(a.key.Public(), d)
}

// ageIdle is ageBoth once no ping to the direct path is in flight either
// way. A ping in flight would be aged with the rest, and read as
// unanswered for d: the path would look dead, not idle. A ping that went
// out just before the ageing makes it wait for the pong and age again.
func ageIdle(t *testing.T, a, b *node, d time.Duration) {
	t.Helper()
	out := func() bool {
		return a.e.bind.DirectPingOutForTest(b.key.Public()) || b.e.bind.DirectPingOutForTest(a.key.Public())
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		for out() {
			if time.Now().After(deadline) {
				t.Fatal("a ping to the direct path still unanswered after 10 s")
			}
			time.Sleep(10 * time.Millisecond)
		}
		ageBoth(a, b, d)
		if !out() {
			return
		}
	}
}

// pathOf returns n's status for its only peer.
func pathOf(t *testing.T, n *node) PeerStatus {
	t.Helper()
	st := n.e.Status()
	if len(st) != 1 {
		t.Fatalf("status lists %d peers, want 1", len(st))
	}
	return st[0]
}

// TestIdleDirectPath: two engines with a confirmed direct path and a
// relay go idle (their path times are moved far into the past). Status
// must still show the direct path, a Ping must come back over it, and
// traffic must flow over it again; the relay must not take over. When the
// direct path died while idle, the Ping is answered through the relay,
// and once the direct path has failed to answer, status shows the relay.
func TestIdleDirectPath(t *testing.T) {
	a, b := relayPair(t, nil)
	pc, err := b.e.ListenPacket("udp", ":7")
	if err != nil {
		t.Fatal(err)
	}
	udpEchoServer(t, pc)
	checkUDPEcho(t, t.Context(), a, fmt.Sprintf("%v:7", b.v4))
	want := waitPath(t, a, "direct", 5*time.Second).Endpoint
	waitPath(t, b, "direct", 5*time.Second)

	ageIdle(t, a, b, idleAge)
	for _, n := range []*node{a, b} {
		if st := pathOf(t, n); st.Path != "direct" || !st.Endpoint.IsValid() {
			t.Errorf("idle for %v: status %+v, want the direct path", idleAge, st)
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	r, err := a.e.Ping(ctx, b.v4)
	if err != nil {
		t.Fatalf("Ping after %v idle: %v", idleAge, err)
	}
	if r.Path != "direct" || r.Endpoint.Port() != want.Port() {
		t.Errorf("Ping after %v idle = %+v, want a pong over the direct path to %v", idleAge, r, want)
	}
	if st := pathOf(t, a); st.Path != "direct" {
		t.Errorf("after the ping: status %+v, want direct", st)
	}
	// Traffic after the idle time goes direct again.
	ageIdle(t, a, b, idleAge)
	checkUDPEcho(t, t.Context(), a, fmt.Sprintf("%v:7", b.v4))
	if st := pathOf(t, a); st.Path != "direct" {
		t.Errorf("after traffic resumed: status %+v, want direct", st)
	}

	// The direct path dies while idle: the ping finds out. It gets its
	// own 5 s: the first ping's context started before the echo and the
	// ageing above, which can take seconds of it on a loaded machine.
	blockDirect(a, b)
	ageBoth(a, b, idleAge)
	ctx, cancel = context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	r, err = a.e.Ping(ctx, b.v4)
	if err != nil {
		t.Fatalf("Ping with the direct path dead: %v", err)
	}
	if r.Path != "relay" {
		t.Errorf("Ping with the direct path dead = %+v, want a pong through the relay", r)
	}
	// The unanswered ping counts once it has had suspectAfter to answer.
	a.e.bind.AgeForTest(b.key.Public(), 2*time.Second)
	if st := pathOf(t, a); st.Path != "relay" {
		t.Errorf("direct path dead and its ping unanswered: status %+v, want relay", st)
	}
}

// TestFirstPingEarly pings a peer the moment it is configured, before the
// peer knows us and before we know its address or relay region (as when
// a device pings one that joined a moment ago and whose STUN mapping and
// home relay have not reached us yet). The ping must be answered soon
// after the peer learns of us and we learn its address, not time out.
func TestFirstPingEarly(t *testing.T) {
	url := relayURL(t)
	nodes := newNodes(t, 2, nil)
	a, b := nodes[0], nodes[1]
	resetPeers(t, nodes)
	// a knows b by a wrong address and no relay region; b knows nothing.
	acfg := a.cfg
	acfg.DERPMap = map[int]DERPRegion{1: {URLs: []string{url}}}
	acfg.HomeDERP = 1
	pb := b.peer()
	pb.Endpoints = []netip.AddrPort{netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), 9)}
	acfg.Peers = []Peer{pb}
	if err := a.e.Reconfig(acfg); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	type result struct {
		r   PingResult
		err error
	}
	done := make(chan result, 1)
	go func() {
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		r, err := a.e.Ping(ctx, b.v4)
		done <- result{r, err}
	}()
	select {
	case res := <-done:
		t.Fatalf("Ping answered before the peer knew us: %+v, %v", res.r, res.err)
	case <-time.After(300 * time.Millisecond):
	}
	// Now b learns a, and a learns b's real address and relay region.
	bcfg := b.cfg
	bcfg.DERPMap = acfg.DERPMap
	bcfg.HomeDERP = 1
	pa := a.peer()
	pa.HomeDERP = 1
	bcfg.Peers = []Peer{pa}
	if err := b.e.Reconfig(bcfg); err != nil {
		t.Fatal(err)
	}
	learned := time.Now()
	acfg.Peers = []Peer{b.peer()}
	acfg.Peers[0].HomeDERP = 1
	if err := a.e.Reconfig(acfg); err != nil {
		t.Fatal(err)
	}
	res := <-done
	if res.err != nil {
		t.Fatalf("first Ping after %v: %v", time.Since(start), res.err)
	}
	took := time.Since(learned)
	t.Logf("first ping answered %v after both knew each other (%v after it began), over %s", took, time.Since(start), res.r.Path)
	// Pings are sent again at doubling intervals from 100 ms, at most
	// 1 s apart; 300 ms in, the next round is at most 400 ms away. The
	// bound leaves room for a loaded machine.
	if took > 2*time.Second {
		t.Errorf("first ping answered %v after both knew each other, want within 2s", took)
	}
}
