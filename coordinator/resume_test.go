package coordinator_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"beam.dev/beam/coordclient"
	"beam.dev/beam/coordinator"
	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// openResumeStream opens the map stream of the registered node priv as
// openRawStream does, offering digest (nil: none).
func openResumeStream(t testing.TB, c *coord, priv key.NodePrivate, version int, digest *wire.PeersDigest) *rawStream {
	t.Helper()
	mk := c.priv.Public()
	clear, err := json.Marshal(&wire.MapRequest{Version: version, NodeKey: priv.Public(), Stream: true, Peers: digest, Epoch: c.epoch(t), Timestamp: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	env, err := json.Marshal(wire.Envelope{NodeKey: priv.Public(), Sealed: priv.SealTo(mk, clear)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.URL+wire.PathMap, bytes.NewReader(env))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		t.Fatalf("open map stream: %v", err)
	}
	if resp.StatusCode != http.StatusOK {
		cancel()
		t.Fatalf("open map stream: status %s", resp.Status)
	}
	rs := &rawStream{t: t, priv: priv, mk: mk, body: resp.Body, cancel: cancel, version: version}
	t.Cleanup(rs.close)
	return rs
}

// streamAll runs the map streams of the registered nodes privs until the
// test ends, so that they are online.
func streamAll(t *testing.T, c *coord, privs []key.NodePrivate) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	for _, priv := range privs {
		cl, err := coordclient.New(coordclient.Options{ServerURL: c.URL, PrivateKey: priv})
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() { cl.Run(ctx, func(*wire.NetMap) {}) })
	}
}

// digestOf is the digest a node holding peers sends.
func digestOf(peers []*wire.Node) *wire.PeersDigest {
	var d wire.PeersDigest
	for _, p := range peers {
		d.Add(p.Key, p.Rev)
	}
	return &d
}

// TestResumeAcrossRestart checks the coordinator's side of map resume: a
// node whose digest matches the peers it would get is sent a first
// message that keeps them, with every other field of a full map and the
// peers not online (one of 39 here; the others stream and stay online
// across the restart), in a small fraction of a full map's bytes, also
// after the coordinator restarted; a node whose peers changed meanwhile
// (one joined, one changed its endpoints), a digest that does not match,
// and a node of version 14 get a full map.
func TestResumeAcrossRestart(t *testing.T) {
	c := startCoord(t, nil)
	ak := c.authKey(t, coordinator.AuthKeyOptions{Reusable: true})
	privs := registerMany(t, c, ak, "n", 40)
	self := privs[0]
	streamAll(t, c, privs[2:])

	rs := openResumeStream(t, c, self, wire.CapabilityVersion, nil)
	full, fullSize := rs.next()
	if len(full.Peers) != 39 || full.PeersKept {
		t.Fatalf("first map: %d peers, kept %v; want 39 peers", len(full.Peers), full.PeersKept)
	}
	online := make(map[key.NodePublic]bool)
	for _, p := range full.Peers {
		if p.Rev == 0 {
			t.Fatalf("peer %s has no Rev", p.Name)
		}
		online[p.Key] = p.Online
	}
	// The restart comes once the 38 streaming peers are online.
	stop := time.AfterFunc(30*time.Second, rs.close)
	for countTrue(online) < 38 {
		mr, _ := rs.next()
		for k, on := range mr.PeersOnline {
			online[k] = on
		}
	}
	stop.Stop()
	rs.close()
	digest := digestOf(full.Peers)

	c.restart()
	rs = openResumeStream(t, c, self, wire.CapabilityVersion, digest)
	kept, keptSize := rs.next()
	t.Logf("full map %d bytes, resumed %d", fullSize, keptSize)

	if !kept.PeersKept || kept.Peers != nil {
		t.Fatalf("after restart: kept %v with %d peers; want the peers kept", kept.PeersKept, len(kept.Peers))
	}
	if kept.Self == nil || kept.Self.Key != self.Public() || kept.DERPMap == nil && full.DERPMap != nil || kept.DNS == nil || !kept.PacketFilterSet {
		t.Fatalf("resumed map lacks full-map fields: %+v", kept)
	}
	if len(kept.PeersOffline) != 1 || kept.PeersOffline[0] != privs[1].Public() {
		t.Errorf("resumed map: peers offline %v, want n1 alone", kept.PeersOffline)
	}
	if keptSize*4 > fullSize {
		t.Errorf("resumed map is %d bytes, full map %d; want less than a quarter", keptSize, fullSize)
	}
	rs.close()

	t.Run("OldVersion", func(t *testing.T) {
		rs := openResumeStream(t, c, self, 14, digest)
		mr, _ := rs.next()
		if mr.PeersKept || len(mr.Peers) != 39 {
			t.Fatalf("version 14: kept %v, %d peers; want a full map of 39", mr.PeersKept, len(mr.Peers))
		}
	})
	t.Run("WrongDigest", func(t *testing.T) {
		d := *digest
		d.Sum[0]++
		rs := openResumeStream(t, c, self, wire.CapabilityVersion, &d)
		mr, _ := rs.next()
		if mr.PeersKept || len(mr.Peers) != 39 {
			t.Fatalf("wrong digest: kept %v, %d peers; want a full map of 39", mr.PeersKept, len(mr.Peers))
		}
	})
	t.Run("ChangedWhileAway", func(t *testing.T) {
		// A peer reports new endpoints and another joins while the node
		// is away.
		peer := privs[1]
		cl, err := coordclient.New(coordclient.Options{ServerURL: c.URL, PrivateKey: peer})
		if err != nil {
			t.Fatal(err)
		}
		cl.SetEndpoints([]netip.AddrPort{netip.MustParseAddrPort("192.0.2.9:41641")}, 0)
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan struct{})
		go func() {
			defer close(done)
			cl.Run(ctx, func(*wire.NetMap) {})
		}()
		defer func() { cancel(); <-done }()
		// The node sees the endpoints (in its full map, or a delta after).
		rs := openResumeStream(t, c, self, wire.CapabilityVersion, nil)
		stop := time.AfterFunc(30*time.Second, rs.close)
		for mr, _ := rs.next(); ; mr, _ = rs.next() {
			if slices.ContainsFunc(append(mr.Peers, mr.PeersChanged...), func(p *wire.Node) bool {
				return p.Key == peer.Public() && len(p.Endpoints) == 1
			}) {
				break
			}
		}
		stop.Stop()
		rs.close()
		c.restart()
		rs = openResumeStream(t, c, self, wire.CapabilityVersion, digest)
		mr, _ := rs.next()
		if mr.PeersKept || len(mr.Peers) != 39 {
			t.Fatalf("a peer changed: kept %v, %d peers; want a full map of 39", mr.PeersKept, len(mr.Peers))
		}
		rs.close()
		digest := digestOf(mr.Peers)
		newNode(t, c.URL).register(t, ak, "late")
		rs = openResumeStream(t, c, self, wire.CapabilityVersion, digest)
		mr, _ = rs.next()
		if mr.PeersKept || len(mr.Peers) != 40 {
			t.Fatalf("a peer joined: kept %v, %d peers; want a full map of 40", mr.PeersKept, len(mr.Peers))
		}
	})
}

// countingDialer counts the bytes a client reads from its connections.
type countingDialer struct {
	n atomic.Int64
}

func (d *countingDialer) client() *http.Client {
	var dialer net.Dialer
	return &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dialer.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &countedConn{Conn: c, n: &d.n}, nil
	}}}
}

type countedConn struct {
	net.Conn
	n *atomic.Int64
}

func (c *countedConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.n.Add(int64(n))
	return n, err
}

// TestClientResumesAfterDeltas checks that coordclient's digest of the
// peers it holds, kept up from the messages it passed on (a full map,
// peers joining, changing, being removed, a policy hiding some), is the
// coordinator's: after a restart its stream resumes (it reads a small
// fraction of a full map: its peers stream, and stay online across the
// restart) and it hands Run the same peers as before.
func TestClientResumesAfterDeltas(t *testing.T) {
	var hide atomic.Bool // the policy hides n3 and n4
	c := startCoord(t, func(o *coordinator.Options) {
		o.Policy = func(self *wire.Node, all []*wire.Node) ([]wire.FilterRule, []*wire.Node) {
			var visible []*wire.Node
			for _, n := range all {
				if !hide.Load() || (n.Name != "n3" && n.Name != "n4") {
					visible = append(visible, n)
				}
			}
			return []wire.FilterRule{}, visible
		}
	})
	ak := c.authKey(t, coordinator.AuthKeyOptions{Reusable: true})
	privs := registerMany(t, c, ak, "n", 30)
	streamAll(t, c, privs[3:]) // online across the restart

	var cd countingDialer
	obs, err := coordclient.New(coordclient.Options{ServerURL: c.URL, PrivateKey: privs[0], HTTPClient: cd.client()})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	cond := sync.NewCond(&mu)
	var nm *wire.NetMap
	var firsts int
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		var cur *wire.NetMap
		obs.RunResponses(ctx, func(mr *wire.MapResponse, first bool) {
			if first {
				cur = nil
			}
			cur = cur.Apply(mr, time.Now())
			mu.Lock()
			nm = cur
			if first {
				firsts++
			}
			cond.Broadcast()
			mu.Unlock()
		})
	}()
	defer func() { cancel(); <-done }()
	waitNM := func(what string, ok func(*wire.NetMap, int) bool) *wire.NetMap {
		t.Helper()
		timer := time.AfterFunc(30*time.Second, func() { mu.Lock(); cond.Broadcast(); mu.Unlock() })
		defer timer.Stop()
		deadline := time.Now().Add(30 * time.Second)
		mu.Lock()
		defer mu.Unlock()
		for nm == nil || !ok(nm, firsts) {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			cond.Wait()
		}
		return nm
	}
	waitNM("the full map", func(nm *wire.NetMap, _ int) bool { return len(nm.Peers) == 29 })
	fullBytes := cd.n.Load()

	// Changes: a peer joins, one reports endpoints, one is removed, and
	// a policy hides two.
	newNode(t, c.URL).register(t, ak, "joiner")
	waitNM("the joiner", func(nm *wire.NetMap, _ int) bool { return peerNamed(nm, "joiner") != nil })
	peer, err := coordclient.New(coordclient.Options{ServerURL: c.URL, PrivateKey: privs[1]})
	if err != nil {
		t.Fatal(err)
	}
	peer.SetEndpoints([]netip.AddrPort{netip.MustParseAddrPort("192.0.2.8:41641")}, 0)
	peerDone := make(chan struct{})
	go func() {
		defer close(peerDone)
		peer.Run(ctx, func(*wire.NetMap) {})
	}()
	defer func() { cancel(); <-peerDone }()
	waitNM("n1's endpoints", func(nm *wire.NetMap, _ int) bool {
		p := peerNamed(nm, "n1")
		return p != nil && len(p.Endpoints) == 1
	})
	if err := c.Server.RemoveNode(t.Context(), "n2"); err != nil {
		t.Fatal(err)
	}
	waitNM("n2 removed", func(nm *wire.NetMap, _ int) bool { return peerNamed(nm, "n2") == nil })
	hide.Store(true)
	newNode(t, c.URL).register(t, ak, "joiner2") // a change: every stream recomputes its peers
	before := waitNM("n3 and n4 hidden", func(nm *wire.NetMap, _ int) bool {
		return peerNamed(nm, "n3") == nil && peerNamed(nm, "n4") == nil && peerNamed(nm, "joiner2") != nil
	})
	want := peerKeys(before)
	// n1 and n5..n29 stream (n3 and n4 are hidden): the restart comes
	// once they are online.
	waitNM("the streaming peers online", func(nm *wire.NetMap, _ int) bool {
		on := 0
		for _, p := range nm.Peers {
			if p.Online {
				on++
			}
		}
		return on == 26
	})

	c.restart()
	start := cd.n.Load()
	after := waitNM("a map after the restart", func(_ *wire.NetMap, firsts int) bool { return firsts >= 2 })
	read := cd.n.Load() - start
	t.Logf("full map %d bytes; restart %d bytes", fullBytes, read)
	if got := peerKeys(after); !equalKeys(got, want) {
		t.Fatalf("after the restart %d peers, want the %d before", len(got), len(want))
	}
	// A resumed map carries the DERP map, DNS and filter but no peer: about
	// a third of the full map of 29 peers; a full map again would be as
	// large as the first. (The first's count takes in the deltas read
	// with it, fewer when online flips are batched: half is the bound.)
	if read*2 > fullBytes {
		t.Errorf("read %d bytes over the restart, the full map was %d; want a resumed map (less than half)", read, fullBytes)
	}
}

func countTrue(m map[key.NodePublic]bool) int {
	n := 0
	for _, v := range m {
		if v {
			n++
		}
	}
	return n
}

func peerKeys(nm *wire.NetMap) map[key.NodePublic]bool {
	out := make(map[key.NodePublic]bool, len(nm.Peers))
	for _, p := range nm.Peers {
		out[p.Key] = true
	}
	return out
}

func equalKeys(a, b map[key.NodePublic]bool) bool {
	if len(a) != len(b) {
		return false
	}
	for k := range a {
		if !b[k] {
			return false
		}
	}
	return true
}
