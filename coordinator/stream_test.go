package coordinator_test

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"testing"
	"time"

	"beam.dev/beam/coordclient"
	"beam.dev/beam/coordinator"
	"beam.dev/beam/wire"
)

const wait = 5 * time.Second

func TestStreamDeltas(t *testing.T) {
	c := startCoord(t, nil)
	ak := c.authKey(t, coordinator.AuthKeyOptions{Reusable: true})
	a := newNode(t, c.URL)
	a.register(t, ak, "alpha")
	wa := watch(t, a)
	nm := wa.waitFor("full map", wait, func(nm *wire.NetMap) bool { return nm.Self != nil })
	if nm.Self.Name != "alpha" || len(nm.Peers) != 0 || nm.DNS == nil || nm.DNS.Domain != "default.beam.internal" {
		t.Fatalf("first netmap = %+v", nm)
	}

	// A peer joins.
	b := newNode(t, c.URL)
	b.register(t, ak, "beta")
	nm = wa.waitFor("beta joins", wait, func(nm *wire.NetMap) bool { return peerNamed(nm, "beta") != nil })
	if p := peerNamed(nm, "beta"); p.Online || p.Key != b.NodeKey() {
		t.Fatalf("beta = %+v, want offline with b's key", p)
	}
	// The filter admits beta's addresses to all of alpha's ports.
	if !filterAllows(nm.ExpandedFilter(), peerNamed(nm, "beta").Addresses[0].Addr(), nm.Self.Addresses[0].Addr(), 22) ||
		!filterAllows(nm.ExpandedFilter(), peerNamed(nm, "beta").Addresses[1].Addr(), nm.Self.Addresses[1].Addr(), 65535) {
		t.Fatalf("filter = %+v, want beta allowed to every port", nm.ExpandedFilter())
	}
	if filterAllows(nm.ExpandedFilter(), netip.MustParseAddr("192.0.2.1"), nm.Self.Addresses[0].Addr(), 22) {
		t.Fatalf("filter = %+v admits a non-overlay source", nm.ExpandedFilter())
	}

	// The peer comes online and changes endpoints.
	wb := watch(t, b)
	wb.waitFor("beta sees alpha", wait, func(nm *wire.NetMap) bool { return peerNamed(nm, "alpha") != nil })
	wa.waitFor("beta online", wait, func(nm *wire.NetMap) bool { p := peerNamed(nm, "beta"); return p != nil && p.Online })
	eps := []netip.AddrPort{netip.MustParseAddrPort("192.0.2.10:41641"), netip.MustParseAddrPort("[2001:db8::1]:41641")}
	start := time.Now()
	b.SetEndpoints(eps, 3)
	wa.waitFor("beta endpoints", wait, func(nm *wire.NetMap) bool {
		p := peerNamed(nm, "beta")
		return p != nil && slices.Equal(p.Endpoints, eps) && p.HomeDERP == 3
	})
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("endpoint change took %v to reach the peer, want about a second at most", d)
	}

	// The peer goes offline.
	wb.stop()
	wa.waitFor("beta offline", wait, func(nm *wire.NetMap) bool { p := peerNamed(nm, "beta"); return p != nil && !p.Online })

	// The peer is removed.
	start = time.Now()
	if err := c.Server.RemoveNode(context.Background(), "beta"); err != nil {
		t.Fatal(err)
	}
	wa.waitFor("beta removed", wait, func(nm *wire.NetMap) bool { return peerNamed(nm, "beta") == nil })
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("removal took %v to reach the peer", d)
	}
	// Its key is no longer registered.
	if _, err := b.Register(context.Background(), coordclient.RegisterParams{Hostname: "beta"}); !errors.Is(err, coordclient.ErrNodeNotRegistered) {
		t.Errorf("removed node rejoin = %v, want ErrNodeNotRegistered", err)
	}
	err := b.Run(context.Background(), func(*wire.NetMap) {})
	if !errors.Is(err, coordclient.ErrNodeNotRegistered) {
		t.Errorf("removed node Run = %v, want ErrNodeNotRegistered", err)
	}

	// Removing the streaming node ends its stream with a clear error.
	if err := c.Server.RemoveNode(context.Background(), "alpha"); err != nil {
		t.Fatal(err)
	}
	if err := wa.waitErr(wait); !errors.Is(err, coordclient.ErrNodeRemoved) {
		t.Fatalf("Run after removal = %v, want ErrNodeRemoved", err)
	}
}

func TestExpireNode(t *testing.T) {
	c := startCoord(t, nil)
	ak := c.authKey(t, coordinator.AuthKeyOptions{Reusable: true})
	a, b := newNode(t, c.URL), newNode(t, c.URL)
	a.register(t, ak, "alpha")
	b.register(t, ak, "beta")
	wa, wb := watch(t, a), watch(t, b)
	wa.waitFor("beta", wait, func(nm *wire.NetMap) bool { return peerNamed(nm, "beta") != nil })
	wb.waitFor("alpha", wait, func(nm *wire.NetMap) bool { return peerNamed(nm, "alpha") != nil })

	admin := coordclient.NewAdmin(c.URL, testToken, nil)
	if err := admin.ExpireNode(context.Background(), "beta"); err != nil {
		t.Fatal(err)
	}
	if err := wb.waitErr(wait); !errors.Is(err, coordclient.ErrNodeExpired) {
		t.Fatalf("expired node's Run = %v, want ErrNodeExpired", err)
	}
	wa.waitFor("beta dropped", time.Second, func(nm *wire.NetMap) bool { return peerNamed(nm, "beta") == nil })
	if _, err := b.Register(context.Background(), coordclient.RegisterParams{Hostname: "beta"}); !errors.Is(err, coordclient.ErrNodeExpired) {
		t.Fatalf("rejoin without key = %v, want ErrNodeExpired", err)
	}
	// Re-authenticating with a key brings it back under the same name,
	// with the default expiry of a node without user or tag from now.
	resp := b.register(t, ak, "beta")
	if d := time.Until(resp.Node.KeyExpiry); resp.Node.Name != "beta" || d <= coordinator.DefaultNodeKeyExpiry-time.Minute || d > coordinator.DefaultNodeKeyExpiry {
		t.Fatalf("re-auth = %+v", resp.Node)
	}
	wa.waitFor("beta back", wait, func(nm *wire.NetMap) bool { return peerNamed(nm, "beta") != nil })
}

func TestEphemeralNodeDeleted(t *testing.T) {
	c := startCoord(t, func(o *coordinator.Options) { o.EphemeralTimeout = 100 * time.Millisecond })
	ak := c.authKey(t, coordinator.AuthKeyOptions{Ephemeral: true, Reusable: true})
	a, e := newNode(t, c.URL), newNode(t, c.URL)
	a.register(t, c.authKey(t, coordinator.AuthKeyOptions{}), "keeper")
	if r := e.register(t, ak, "eph"); !r.Node.Ephemeral {
		t.Fatal("node from an ephemeral key is not ephemeral")
	}
	wa := watch(t, a)
	we := watch(t, e)
	wa.waitFor("eph online", wait, func(nm *wire.NetMap) bool { p := peerNamed(nm, "eph"); return p != nil && p.Online })
	// Online ephemeral nodes stay well past the timeout: three timeouts
	// (a dozen sweeps) pass, and the coordinator's own node list, which
	// a deletion changes at once (unlike a peer's stream, which could
	// still be carrying it), must still hold eph.
	<-time.After(300 * time.Millisecond)
	nodes, err := c.Server.Nodes(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(nodes, func(n *wire.Node) bool { return n.Name == "eph" }) {
		t.Fatalf("online ephemeral node was deleted; nodes = %+v", nodes)
	}
	we.stop()
	wa.waitFor("eph deleted", wait, func(nm *wire.NetMap) bool { return peerNamed(nm, "eph") == nil })
	nodes, _ = c.Server.Nodes(context.Background())
	if len(nodes) != 1 || nodes[0].Name != "keeper" {
		t.Fatalf("nodes = %+v, want only keeper", nodes)
	}
}

func TestReconnectAfterRestart(t *testing.T) {
	c := startCoord(t, nil)
	ak := c.authKey(t, coordinator.AuthKeyOptions{Reusable: true})
	a, b := newNode(t, c.URL), newNode(t, c.URL)
	a.register(t, ak, "alpha")
	b.register(t, ak, "beta")
	wa := watch(t, a)
	wa.waitFor("beta", wait, func(nm *wire.NetMap) bool { return peerNamed(nm, "beta") != nil })

	c.stop()
	// While the coordinator is down, the node keeps its last netmap (Run keeps retrying).
	c.start()
	g := newNode(t, c.URL)
	g.register(t, ak, "gamma")
	nm := wa.waitFor("resync with gamma", 10*time.Second, func(nm *wire.NetMap) bool { return peerNamed(nm, "gamma") != nil })
	if peerNamed(nm, "beta") == nil || nm.Self.Name != "alpha" {
		t.Fatalf("netmap after resync = %+v", nm)
	}
}

func TestPolicyHidesPeers(t *testing.T) {
	// Nodes see only peers whose name shares their first letter.
	policy := func(self *wire.Node, all []*wire.Node) ([]wire.FilterRule, []*wire.Node) {
		var vis []*wire.Node
		var src []netip.Prefix
		for _, n := range all {
			if n.Name[0] == self.Name[0] {
				vis = append(vis, n)
				if n.Key != self.Key {
					src = append(src, n.Addresses...)
				}
			}
		}
		return []wire.FilterRule{{SrcIPs: src, DstPorts: []wire.NetPortRange{{IP: self.Addresses[0], First: 22, Last: 22}}}}, vis
	}
	c := startCoord(t, func(o *coordinator.Options) { o.Policy = policy })
	ak := c.authKey(t, coordinator.AuthKeyOptions{Reusable: true})
	a := newNode(t, c.URL)
	a.register(t, ak, "alpha")
	wa := watch(t, a)
	wa.waitFor("full", wait, func(nm *wire.NetMap) bool { return nm.Self != nil })
	newNode(t, c.URL).register(t, ak, "bravo")
	newNode(t, c.URL).register(t, ak, "apple")
	nm := wa.waitFor("apple", wait, func(nm *wire.NetMap) bool { return peerNamed(nm, "apple") != nil })
	if peerNamed(nm, "bravo") != nil {
		t.Fatal("policy-hidden peer is visible")
	}
	if len(nm.ExpandedFilter()) != 1 || nm.ExpandedFilter()[0].DstPorts[0].First != 22 || len(nm.ExpandedFilter()[0].SrcIPs) != 2 {
		t.Fatalf("filter = %+v", nm.ExpandedFilter())
	}
}

func TestDevModeLoopback(t *testing.T) {
	c := startCoord(t, func(o *coordinator.Options) { o.DevMode = true })
	r := newNode(t, c.URL).register(t, "", "devbox")
	if r.Node.Name != "devbox" {
		t.Fatalf("dev registration = %+v", r.Node)
	}
	off := startCoord(t, nil)
	if _, err := newNode(t, off.URL).Register(context.Background(), coordclient.RegisterParams{Hostname: "devbox"}); !errors.Is(err, coordclient.ErrNodeNotRegistered) {
		t.Fatalf("keyless registration without dev mode = %v", err)
	}
}

func TestSetDERPMapPushed(t *testing.T) {
	c := startCoord(t, nil)
	a := newNode(t, c.URL)
	a.register(t, c.authKey(t, coordinator.AuthKeyOptions{}), "alpha")
	wa := watch(t, a)
	wa.waitFor("full", wait, func(nm *wire.NetMap) bool { return nm.Self != nil })
	c.Server.SetDERPMap(&wire.DERPMap{Regions: map[int]*wire.DERPRegion{1: {RegionID: 1, RegionCode: "r1", Nodes: []*wire.DERPNode{{Name: "1a", RegionID: 1, URL: "http://127.0.0.1:3340"}}}}})
	wa.waitFor("derp map", wait, func(nm *wire.NetMap) bool { return nm.DERPMap != nil && nm.DERPMap.Regions[1] != nil })
}

// filterAllows reports whether some rule lets src reach dst:port.
func filterAllows(rules []wire.FilterRule, src, dst netip.Addr, port uint16) bool {
	for _, r := range rules {
		srcOK := slices.ContainsFunc(r.SrcIPs, func(p netip.Prefix) bool { return p.Contains(src) })
		dstOK := slices.ContainsFunc(r.DstPorts, func(d wire.NetPortRange) bool { return d.IP.Contains(dst) && d.First <= port && port <= d.Last })
		if srcOK && dstOK {
			return true
		}
	}
	return false
}
