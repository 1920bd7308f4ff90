package node_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"beam.dev/beam/beamtest/harness"
	"beam.dev/beam/coordinator"
	"beam.dev/beam/derp/derpserver"
	"beam.dev/beam/localapi/apitype"
	"beam.dev/beam/node"
	"beam.dev/beam/wire"
)

// idleNode returns a node that was never brought up.
func idleNode(t *testing.T) *node.Node {
	t.Helper()
	n, err := node.New(node.Options{StateDir: t.TempDir(), Hostname: "idle"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

// stunOn serves STUN on a loopback UDP socket and returns its address.
func stunOn(t *testing.T) netip.AddrPort {
	t.Helper()
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- derpserver.ServeSTUN(ctx, pc, nil) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("ServeSTUN: %v", err)
		}
		pc.Close()
	})
	return pc.LocalAddr().(*net.UDPAddr).AddrPort()
}

func opCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// TestPing pings a peer by name and by address, and refuses what is not
// a peer of this network.
func TestPing(t *testing.T) {
	if _, err := idleNode(t).Ping(opCtx(t), "100.64.0.2"); !errors.Is(err, node.ErrNotRunning) {
		t.Errorf("Ping on a node never brought up = %v, want ErrNotRunning", err)
	}

	c := harness.NewCluster(t, harness.Options{})
	key := c.AuthKey(coordinator.AuthKeyOptions{Reusable: true})
	alpha, beta := c.AddNode("alpha", key), c.AddNode("beta", key)
	c.WaitPeers(alpha, beta)
	betaIP := netip.MustParseAddr(alpha.PeerIP("beta", false))
	domain := alpha.Status().DNSDomain
	if domain == "" {
		t.Fatal("alpha's status has no DNS domain")
	}
	// beta's disco key reaches alpha with its first endpoints report,
	// a moment after beta itself.
	harness.WaitFor(t, 10*time.Second, "alpha knows beta's disco key", func() bool {
		_, err := alpha.Ping(opCtx(t), betaIP.String())
		return err == nil
	})

	for _, host := range []string{"beta", "beta." + domain, betaIP.String()} {
		t.Run(host, func(t *testing.T) {
			r, err := alpha.Ping(opCtx(t), host)
			if err != nil {
				t.Fatal(err)
			}
			if r.Name != "beta" || r.IP != betaIP || r.Latency <= 0 || r.Path != "direct" || r.Endpoint == "" || r.Relay != "" {
				t.Errorf("Ping(%q) = %+v, want beta at %v over a direct path with a latency", host, r, betaIP)
			}
		})
	}

	for _, tc := range []struct {
		name, host string
		want       string // in the error
	}{
		{"empty", "", ""},
		{"unknown name", "nosuch." + domain, ""},
		{"host loopback", "127.0.0.1", "not a node of this network"},
		{"documentation address", "192.0.2.1", "not a node of this network"},
		{"overlay address of no peer", "100.64.99.99", ""},
		{"name with a port", "beta:80", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := alpha.Ping(opCtx(t), tc.host)
			if err == nil {
				t.Fatalf("Ping(%q) = %+v, want an error", tc.host, r)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Ping(%q) = %v, want it to say %q", tc.host, err, tc.want)
			}
		})
	}

	// Once down, a node pings nobody.
	if err := alpha.Down(opCtx(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := alpha.Ping(opCtx(t), betaIP.String()); !errors.Is(err, node.ErrNotRunning) {
		t.Errorf("Ping after Down = %v, want ErrNotRunning", err)
	}
}

// TestNetcheck reports what two relay regions' STUN servers see, under
// the regions' codes from the netmap.
func TestNetcheck(t *testing.T) {
	if _, err := idleNode(t).Netcheck(opCtx(t)); !errors.Is(err, node.ErrNotRunning) {
		t.Errorf("Netcheck on a node never brought up = %v, want ErrNotRunning", err)
	}

	s1, s2 := stunOn(t), stunOn(t)
	dm := &wire.DERPMap{Regions: map[int]*wire.DERPRegion{
		1: {RegionID: 1, RegionCode: "one", Nodes: []*wire.DERPNode{{Name: "1a", RegionID: 1, STUNAddr: s1.String(), STUNOnly: true}}},
		2: {RegionID: 2, RegionCode: "two", Nodes: []*wire.DERPNode{{Name: "2a", RegionID: 2, STUNAddr: s2.String(), STUNOnly: true}}},
	}}
	c := harness.NewCluster(t, harness.Options{DERPMap: dm})
	alpha := c.AddNode("alpha", "")
	r, err := alpha.Netcheck(opCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if !r.UDP {
		t.Errorf("UDP = false, want true (both STUN servers are on loopback)")
	}
	if ap, err := netip.ParseAddrPort(r.GlobalV4); err != nil || ap.Addr() != netip.MustParseAddr("127.0.0.1") || ap.Port() == 0 {
		t.Errorf("GlobalV4 = %q, want 127.0.0.1 and the node's port", r.GlobalV4)
	}
	if r.MappingVariesByDestIP == nil || *r.MappingVariesByDestIP {
		t.Errorf("MappingVariesByDestIP = %v, want false (no NAT)", r.MappingVariesByDestIP)
	}
	var regions []string
	for name, d := range r.RegionLatency {
		regions = append(regions, name)
		if d <= 0 {
			t.Errorf("latency of %s = %v, want > 0", name, d)
		}
	}
	slices.Sort(regions)
	if !slices.Equal(regions, []string{"DERP(one)", "DERP(two)"}) {
		t.Errorf("regions = %v, want DERP(one) and DERP(two), named by their codes", regions)
	}

	if err := alpha.Down(opCtx(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := alpha.Netcheck(opCtx(t)); !errors.Is(err, node.ErrNotRunning) {
		t.Errorf("Netcheck after Down = %v, want ErrNotRunning", err)
	}
}

// TestDown leaves the mesh and comes back with the same identity; Down
// is harmless on a node that never came up and when repeated.
func TestDown(t *testing.T) {
	idle := idleNode(t)
	if err := idle.Down(opCtx(t)); err != nil {
		t.Errorf("Down on a node never brought up: %v", err)
	}
	if st := idle.Status().State; st != apitype.StateNoState {
		t.Errorf("state after Down on a never-registered node = %s, want %s", st, apitype.StateNoState)
	}

	c := harness.NewCluster(t, harness.Options{})
	key := c.AuthKey(coordinator.AuthKeyOptions{Reusable: true})
	alpha, beta := c.AddNode("alpha", key), c.AddNode("beta", key)
	c.WaitPeers(alpha, beta)
	before := alpha.Status().Self

	for i := range 2 {
		if err := alpha.Down(opCtx(t)); err != nil {
			t.Fatalf("Down #%d: %v", i+1, err)
		}
		if st := alpha.Status(); st.State != apitype.StateStopped || len(st.Peers) != 0 {
			t.Fatalf("after Down #%d: state %s with %d peers, want %s and none", i+1, st.State, len(st.Peers), apitype.StateStopped)
		}
	}
	harness.WaitFor(t, 10*time.Second, "beta sees alpha offline", func() bool {
		for _, p := range beta.Status().Peers {
			if p.Name == "alpha" {
				return !p.Online
			}
		}
		return false
	})
	if _, err := alpha.DialContext(opCtx(t), "tcp", "beta:80"); err == nil {
		t.Error("dial through a node that is down succeeded")
	}

	// Up without a key rejoins with the stored identity.
	if _, err := alpha.Up(opCtx(t), apitype.UpRequest{Coordinator: c.URL}); err != nil {
		t.Fatalf("Up after Down: %v", err)
	}
	after := alpha.Status().Self
	if after == nil || after.Key != before.Key || after.Name != before.Name || !slices.Equal(after.IPs, before.IPs) {
		t.Errorf("after Down and Up: %+v, want the same key, name and addresses as %+v", after, before)
	}
	c.WaitPeers(alpha, beta)
}

// TestLogout deregisters a node and forgets its key; it refuses to
// forget it while the coordinator cannot be told.
func TestLogout(t *testing.T) {
	idle := idleNode(t)
	if err := idle.Logout(opCtx(t)); err != nil {
		t.Errorf("Logout on a node never registered: %v", err)
	}

	c := harness.NewCluster(t, harness.Options{})
	key := c.AuthKey(coordinator.AuthKeyOptions{Reusable: true})
	alpha, beta := c.AddNode("alpha", key), c.AddNode("beta", key)
	c.WaitPeers(alpha, beta)
	oldKey := alpha.Status().Self.Key

	for i := range 2 {
		if err := alpha.Logout(opCtx(t)); err != nil {
			t.Fatalf("Logout #%d: %v", i+1, err)
		}
		if st := alpha.Status(); st.State != apitype.StateNoState || st.Self != nil || len(st.Peers) != 0 {
			t.Fatalf("after Logout #%d: state %s, self %+v, %d peers; want %s, no self, no peers", i+1, st.State, st.Self, len(st.Peers), apitype.StateNoState)
		}
	}
	nodes, err := c.Coord.Nodes(opCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		if n.Name == "alpha" {
			t.Errorf("the coordinator still lists alpha after its logout: %+v", n)
		}
	}
	harness.WaitFor(t, 10*time.Second, "alpha gone from beta's peers", func() bool {
		return !slices.ContainsFunc(beta.Status().Peers, func(p apitype.PeerStatus) bool { return p.Name == "alpha" })
	})

	// Without a key, a logged-out node cannot come back: it waits for a
	// person to approve it.
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	r, err := alpha.Up(ctx, apitype.UpRequest{Coordinator: c.URL})
	cancel()
	t.Logf("Up without a key after Logout: %+v, %v; state %s", r, err, alpha.Status().State)
	if st := alpha.Status().State; st == apitype.StateRunning {
		t.Fatalf("Up without a key after Logout: %+v, %v; state %s, want it not running", r, err, st)
	}
	// With one it joins under a new node key.
	if _, err := alpha.Up(opCtx(t), apitype.UpRequest{Coordinator: c.URL, AuthKey: key, Hostname: "alpha"}); err != nil {
		t.Fatalf("Up with a key after Logout: %v", err)
	}
	if self := alpha.Status().Self; self == nil || self.Key == oldKey {
		t.Errorf("after Logout and Up: self %+v, want a new node key (old %s)", self, oldKey)
	}

	// With the coordinator gone, Logout fails and keeps the registration,
	// so a later Logout can still deregister it.
	c.HTTP.CloseClientConnections()
	c.HTTP.Close()
	ctx, cancel = context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	if err := alpha.Logout(ctx); err == nil || !strings.Contains(err.Error(), "logout") {
		t.Fatalf("Logout with the coordinator down = %v, want a logout error", err)
	}
	if st := alpha.Status(); st.State == apitype.StateNoState {
		t.Errorf("after a failed Logout the node forgot its registration: %+v", st)
	}
}
