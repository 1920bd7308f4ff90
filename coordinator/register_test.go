package coordinator_test

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"beam.dev/beam/coordclient"
	"beam.dev/beam/coordinator"
	"beam.dev/beam/wire"
)

func TestRegisterHappyPath(t *testing.T) {
	c := startCoord(t, nil)
	n := newNode(t, c.URL)
	// Keys name existing users and tags the policy lists in tagOwners.
	setupACL(t, c, `{"tagOwners": {"tag:web": []}, "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}`, "ann")
	resp := n.register(t, c.authKey(t, coordinator.AuthKeyOptions{User: "ann", Tags: []string{"tag:web"}}), "Alpha.local")
	got := resp.Node
	if got == nil {
		t.Fatal("no node in response")
	}
	wantAddrs := []netip.Prefix{netip.MustParsePrefix("100.64.0.1/32"), netip.MustParsePrefix("fd7a:bea0:b0de::6440:1/128")}
	if len(got.Addresses) != 2 || got.Addresses[0] != wantAddrs[0] || got.Addresses[1] != wantAddrs[1] {
		t.Errorf("addresses = %v, want %v", got.Addresses, wantAddrs)
	}
	if got.Name != "alpha" || got.DNSName != "alpha.default.beam.internal." {
		t.Errorf("name = %q, %q; want alpha, alpha.default.beam.internal.", got.Name, got.DNSName)
	}
	if resp.NameChanged {
		t.Error("NameChanged set for a free name")
	}
	if got.Key != n.NodeKey() || got.User != "ann" || len(got.Tags) != 1 || got.Tags[0] != "tag:web" || got.OS != "linux" {
		t.Errorf("node = %+v", got)
	}
}

// TestLongNameCollision: a hostname that fills a DNS label gets a
// suffix in place of its last bytes, and names that only share a
// beginning with it do not count as taken.
func TestLongNameCollision(t *testing.T) {
	c := startCoord(t, nil)
	ak := c.authKey(t, coordinator.AuthKeyOptions{Reusable: true})
	long := strings.Repeat("x", 39) + "-" + strings.Repeat("y", 30) // a label of 63 after sanitizing
	other := strings.Repeat("x", 39) + "-other"
	var got []string
	for _, h := range []string{other, long, long, long, other} {
		got = append(got, newNode(t, c.URL).register(t, ak, h).Node.Name)
	}
	label := long[:63]
	want := []string{other, label, label[:61] + "-2", label[:61] + "-3", other + "-2"}
	if !slices.Equal(got, want) {
		t.Errorf("names %q, want %q", got, want)
	}
}

func TestNameCollisionAndUniqueIPs(t *testing.T) {
	c := startCoord(t, nil)
	ak := c.authKey(t, coordinator.AuthKeyOptions{Reusable: true})
	r1 := newNode(t, c.URL).register(t, ak, "beta")
	r2 := newNode(t, c.URL).register(t, ak, "beta")
	r3 := newNode(t, c.URL).register(t, ak, "BETA")
	if r1.Node.Name != "beta" || r1.NameChanged {
		t.Errorf("first: %q changed=%v, want beta false", r1.Node.Name, r1.NameChanged)
	}
	if r2.Node.Name != "beta-2" || !r2.NameChanged {
		t.Errorf("second: %q changed=%v, want beta-2 true", r2.Node.Name, r2.NameChanged)
	}
	if r3.Node.Name != "beta-3" || !r3.NameChanged {
		t.Errorf("third: %q changed=%v, want beta-3 true", r3.Node.Name, r3.NameChanged)
	}
	seen := make(map[netip.Addr]bool)
	for i := range 20 {
		r := newNode(t, c.URL).register(t, ak, "n")
		for _, p := range r.Node.Addresses {
			if seen[p.Addr()] {
				t.Fatalf("node %d got address %v twice", i, p.Addr())
			}
			seen[p.Addr()] = true
			if !coordinator.CGNATPrefix.Contains(p.Addr()) && !coordinator.ULAPrefix.Contains(p.Addr()) {
				t.Errorf("address %v outside the overlay ranges", p.Addr())
			}
		}
	}
}

func TestSanitizeLabel(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"beta", "beta"},
		{"My Laptop", "my-laptop"},
		{"host.example.com", "host"},
		{"--a__b--", "a-b"},
		{"", "node"},
		{"ünïcode", "n-code"},
		{"!!!", "node"},
		{string(make([]byte, 0)) + "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			if got := coordinator.SanitizeLabel(tc.in); got != tc.want {
				t.Errorf("SanitizeLabel(%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}

func TestRejoinAcrossRestart(t *testing.T) {
	c := startCoord(t, nil)
	n := newNode(t, c.URL)
	first := n.register(t, c.authKey(t, coordinator.AuthKeyOptions{}), "gamma")
	other := newNode(t, c.URL).register(t, c.authKey(t, coordinator.AuthKeyOptions{}), "delta")
	c.restart()
	again := n.register(t, "", "gamma")
	if again.Node.Name != first.Node.Name || again.Node.ID != first.Node.ID ||
		again.Node.Addresses[0] != first.Node.Addresses[0] || again.Node.Addresses[1] != first.Node.Addresses[1] {
		t.Errorf("rejoin after restart: got %+v, want name/ID/addresses of %+v", again.Node, first.Node)
	}
	// A new node after the restart gets a fresh address, not a taken one.
	fresh := newNode(t, c.URL).register(t, c.authKey(t, coordinator.AuthKeyOptions{}), "gamma")
	if fresh.Node.Name != "gamma-2" {
		t.Errorf("new node named %q, want gamma-2", fresh.Node.Name)
	}
	for _, p := range fresh.Node.Addresses {
		for _, old := range append(first.Node.Addresses, other.Node.Addresses...) {
			if p == old {
				t.Errorf("new node reused address %v", p)
			}
		}
	}
}

func TestAuthKeyErrors(t *testing.T) {
	var now atomic.Pointer[time.Time]
	start := time.Now()
	now.Store(&start)
	c := startCoord(t, func(o *coordinator.Options) { o.Now = func() time.Time { return *now.Load() } })
	ctx := context.Background()

	oneOff := c.authKey(t, coordinator.AuthKeyOptions{})
	newNode(t, c.URL).register(t, oneOff, "first")
	expiring := c.authKey(t, coordinator.AuthKeyOptions{Reusable: true, Expiry: time.Minute})
	newNode(t, c.URL).register(t, expiring, "before-expiry")

	if _, err := newNode(t, c.URL).Register(ctx, coordclient.RegisterParams{Hostname: "x"}); !errors.Is(err, coordclient.ErrNodeNotRegistered) {
		t.Fatalf("Register of a new node without a key = %v, want ErrNodeNotRegistered", err)
	}
	tests := []struct {
		name    string
		authKey string
		advance time.Duration
	}{
		{"wrong", "beamkey-000000000000-00000000000000000000000000000000000000000000000", 0},
		{"used one-off", oneOff, 0},
		{"expired", expiring, 2 * time.Minute},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.advance > 0 {
				later := start.Add(tc.advance)
				now.Store(&later)
			}
			_, err := newNode(t, c.URL).Register(ctx, coordclient.RegisterParams{AuthKey: tc.authKey, Hostname: "x"})
			if !errors.Is(err, coordclient.ErrAuthKeyInvalid) {
				t.Fatalf("Register = %v, want ErrAuthKeyInvalid", err)
			}
		})
	}
}

func TestOneOffKeyRace(t *testing.T) {
	c := startCoord(t, nil)
	ak := c.authKey(t, coordinator.AuthKeyOptions{})
	const n = 50
	nodes := make([]*node, n)
	for i := range nodes {
		nodes[i] = newNode(t, c.URL)
	}
	var wins, refusals atomic.Int32
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			_, err := nodes[i].Register(context.Background(), coordclient.RegisterParams{AuthKey: ak, Hostname: "racer"})
			switch {
			case err == nil:
				wins.Add(1)
			case errors.Is(err, coordclient.ErrAuthKeyInvalid):
				refusals.Add(1)
			default:
				t.Errorf("unexpected error: %v", err)
			}
		})
	}
	close(start)
	wg.Wait()
	if wins.Load() != 1 || refusals.Load() != n-1 {
		t.Fatalf("wins = %d, refusals = %d; want 1, %d", wins.Load(), refusals.Load(), n-1)
	}
	nodesNow, err := c.Server.Nodes(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(nodesNow) != 1 {
		t.Fatalf("%d nodes registered, want 1", len(nodesNow))
	}
}

func TestLogoutAndAdminByNetworkName(t *testing.T) {
	c := startCoord(t, nil)
	ctx := context.Background()
	ak := c.authKey(t, coordinator.AuthKeyOptions{Reusable: true})
	a := newNode(t, c.URL)
	a.register(t, ak, "leaver")
	if _, err := a.Register(ctx, coordclient.RegisterParams{Logout: true}); err != nil {
		t.Fatalf("logout: %v", err)
	}
	if _, err := a.Register(ctx, coordclient.RegisterParams{Logout: true}); !errors.Is(err, coordclient.ErrNodeNotRegistered) {
		t.Fatalf("second logout = %v, want ErrNodeNotRegistered", err)
	}
	newNode(t, c.URL).register(t, ak, "scoped")
	admin := coordclient.NewAdmin(c.URL, testToken, nil)
	if err := admin.RemoveNode(ctx, "lab/scoped"); !errors.Is(err, coordclient.ErrNotFound) {
		t.Fatalf("remove in the wrong network = %v, want ErrNotFound", err)
	}
	if err := admin.RemoveNode(ctx, "default/scoped"); err != nil {
		t.Fatalf("remove default/scoped: %v", err)
	}
	nodes, err := admin.ListNodes(ctx)
	if err != nil || len(nodes) != 0 {
		t.Fatalf("nodes = %v, %v; want none", nodes, err)
	}
	// Auth keys through the admin API: create, list by prefix, delete.
	setupACL(t, c, `{"tagOwners": {"tag:ci": []}, "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}`)
	secret, info, err := admin.CreateAuthKey(ctx, coordclient.AuthKeyRequest{Ephemeral: true, Expiry: time.Hour, Tags: []string{"tag:ci"}})
	if err != nil || !info.Valid || !info.Ephemeral || info.Expiry.IsZero() {
		t.Fatalf("CreateAuthKey = %+v, %v", info, err)
	}
	keys, err := admin.ListAuthKeys(ctx)
	if err != nil || len(keys) != 2 {
		t.Fatalf("ListAuthKeys = %v, %v", keys, err)
	}
	for _, k := range keys {
		if len(k.Prefix) >= len(secret) {
			t.Fatalf("listing shows a secret-length prefix %q", k.Prefix)
		}
	}
	if err := admin.DeleteAuthKey(ctx, info.Prefix); err != nil {
		t.Fatal(err)
	}
	if _, err := newNode(t, c.URL).Register(ctx, coordclient.RegisterParams{AuthKey: secret}); !errors.Is(err, coordclient.ErrAuthKeyInvalid) {
		t.Fatalf("deleted key = %v, want ErrAuthKeyInvalid", err)
	}
	if _, _, err := admin.CreateAuthKey(ctx, coordclient.AuthKeyRequest{Network: "Not A Label"}); err == nil {
		t.Fatal("key for a network with a bad name was created")
	}
	// A key for a new network creates it; its nodes get its domain and
	// do not see the default network's nodes.
	labKey, _, err := admin.CreateAuthKey(ctx, coordclient.AuthKeyRequest{Network: "lab", Reusable: true})
	if err != nil {
		t.Fatal(err)
	}
	newNode(t, c.URL).register(t, ak, "outsider")
	l1 := newNode(t, c.URL)
	if r := l1.register(t, labKey, "scoped"); r.Node.DNSName != "scoped.lab.beam.internal." {
		t.Fatalf("lab node DNS name = %q", r.Node.DNSName)
	}
	newNode(t, c.URL).register(t, labKey, "peer")
	w := watch(t, l1)
	nm := w.waitFor("lab peer", wait, func(nm *wire.NetMap) bool { return peerNamed(nm, "peer") != nil })
	if peerNamed(nm, "outsider") != nil || nm.DNS.Domain != "lab.beam.internal" {
		t.Fatalf("lab netmap = %+v", nm)
	}
}
