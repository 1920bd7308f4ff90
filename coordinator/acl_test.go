package coordinator_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"beam.dev/beam/coordclient"
	"beam.dev/beam/coordinator"
	"beam.dev/beam/wire"
)

// setupACL creates users and applies a policy through the Server's API.
func setupACL(t testing.TB, c *coord, pol string, users ...string) {
	t.Helper()
	ctx := context.Background()
	for _, u := range users {
		if _, err := c.Server.CreateUser(ctx, u); err != nil {
			t.Fatalf("create user %s: %v", u, err)
		}
	}
	if err := c.Server.SetPolicy(ctx, []byte(pol)); err != nil {
		t.Fatalf("set policy: %v", err)
	}
}

func addrOf(n *wire.Node, v6 bool) netip.Addr {
	for _, p := range n.Addresses {
		if p.Addr().Is6() == v6 {
			return p.Addr()
		}
	}
	return netip.Addr{}
}

func TestUsersAndTagOwnership(t *testing.T) {
	c := startCoord(t, nil)
	ctx := context.Background()
	admin := coordclient.NewAdmin(c.URL, testToken, nil)
	if _, err := admin.CreateUser(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.CreateUser(ctx, "bob@example.com"); err != nil {
		t.Fatal(err)
	}
	var ce *coordclient.Error
	if _, err := admin.CreateUser(ctx, "alice"); !errors.As(err, &ce) || ce.Status != http.StatusConflict {
		t.Fatalf("duplicate user = %v, want 409", err)
	}
	for _, bad := range []string{"", "tag:x", "a b", "*", "group:eng", strings.Repeat("x", 65)} {
		if _, err := admin.CreateUser(ctx, bad); !errors.As(err, &ce) || ce.Status != http.StatusBadRequest {
			t.Errorf("CreateUser(%q) = %v, want 400", bad, err)
		}
	}
	users, err := admin.ListUsers(ctx)
	if err != nil || len(users) != 2 || users[0].Name != "alice" || users[1].Name != "bob@example.com" {
		t.Fatalf("ListUsers = %+v, %v", users, err)
	}

	// Keys for unknown users or tags the policy does not list are refused.
	if _, _, err := admin.CreateAuthKey(ctx, coordclient.AuthKeyRequest{User: "carol"}); !errors.As(err, &ce) || ce.Status != http.StatusBadRequest {
		t.Fatalf("key for unknown user = %v, want 400", err)
	}
	if _, _, err := admin.CreateAuthKey(ctx, coordclient.AuthKeyRequest{Tags: []string{"tag:server"}}); err == nil {
		t.Fatal("key with a tag the default policy does not list was created")
	}
	if err := admin.SetPolicy(ctx, []byte(`{
		"groups": {"group:ops": ["alice"]},
		"tagOwners": {"tag:server": [], "tag:db": ["group:ops"]},
		"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],
	}`)); err != nil {
		t.Fatal(err)
	}
	for _, tag := range []string{"tag:server", "tag:db"} {
		// Admins may use every listed tag, even one owned by a group.
		if _, _, err := admin.CreateAuthKey(ctx, coordclient.AuthKeyRequest{Tags: []string{tag}}); err != nil {
			t.Errorf("key with listed %s: %v", tag, err)
		}
	}
	if _, _, err := admin.CreateAuthKey(ctx, coordclient.AuthKeyRequest{Tags: []string{"tag:server", "tag:web"}}); err == nil {
		t.Error("key with an unlisted second tag was created")
	}
	if _, _, err := admin.CreateAuthKey(ctx, coordclient.AuthKeyRequest{Tags: []string{"server"}}); err == nil {
		t.Error("key with a tag without tag: was created")
	}

	// Nodes belong to the key's user or carry its tags.
	uk, _, err := admin.CreateAuthKey(ctx, coordclient.AuthKeyRequest{User: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	tk, _, err := admin.CreateAuthKey(ctx, coordclient.AuthKeyRequest{Tags: []string{"tag:server"}})
	if err != nil {
		t.Fatal(err)
	}
	if r := newNode(t, c.URL).register(t, uk, "laptop"); r.Node.User != "alice" || len(r.Node.Tags) != 0 {
		t.Errorf("user node = %+v", r.Node)
	}
	if r := newNode(t, c.URL).register(t, tk, "server"); r.Node.User != "" || !slices.Equal(r.Node.Tags, []string{"tag:server"}) {
		t.Errorf("tagged node = %+v", r.Node)
	}

	// A user with nodes, or named by the policy, cannot be deleted.
	if err := admin.DeleteUser(ctx, "alice"); !errors.As(err, &ce) || ce.Status != http.StatusConflict {
		t.Fatalf("delete user with nodes = %v, want 409", err)
	}
	if err := admin.DeleteUser(ctx, "bob@example.com"); err != nil {
		t.Fatal(err)
	}
	if err := admin.DeleteUser(ctx, "bob@example.com"); !errors.Is(err, coordclient.ErrNotFound) {
		t.Fatalf("second delete = %v, want ErrNotFound", err)
	}
	if err := admin.RemoveNode(ctx, "laptop"); err != nil {
		t.Fatal(err)
	}
	keys, _ := admin.ListAuthKeys(ctx)
	for _, k := range keys {
		if k.User == "alice" {
			admin.DeleteAuthKey(ctx, k.Prefix)
		}
	}
	if err := admin.DeleteUser(ctx, "alice"); !errors.As(err, &ce) || ce.Status != http.StatusConflict {
		t.Fatalf("delete user named by the policy = %v, want 409", err)
	}
}

const dbPolicy = `{
	"groups": {"group:eng": ["alice"]},
	"tagOwners": {"tag:db": []},
	"acls": [
		{"action": "accept", "src": ["group:eng"], "dst": ["tag:db:5432"]},
	],
	"tests": [
		{"src": "alice", "accept": ["tag:db:5432"], "deny": ["tag:db:22"]},
		{"src": "bob", "deny": ["tag:db:5432"]},
	],
}`

// TestPolicyEndToEnd runs a policy through real streams: alice reaches
// the database on 5432 only, bob does not even see it, and changes reach
// every node within 2 seconds.
func TestPolicyEndToEnd(t *testing.T) {
	c := startCoord(t, nil)
	ctx := context.Background()
	setupACL(t, c, dbPolicy, "alice", "bob")
	admin := coordclient.NewAdmin(c.URL, testToken, nil)

	ak := func(o coordinator.AuthKeyOptions) string { return c.authKey(t, o) }
	alice, bob, db := newNode(t, c.URL), newNode(t, c.URL), newNode(t, c.URL)
	alice.register(t, ak(coordinator.AuthKeyOptions{User: "alice"}), "alice-laptop")
	bob.register(t, ak(coordinator.AuthKeyOptions{User: "bob"}), "bob-laptop")
	db.register(t, ak(coordinator.AuthKeyOptions{Tags: []string{"tag:db"}}), "db")
	wa, wb, wd := watch(t, alice), watch(t, bob), watch(t, db)

	nmA := wa.waitFor("db visible to alice", wait, func(nm *wire.NetMap) bool { return peerNamed(nm, "db") != nil })
	nmD := wd.waitFor("alice visible to db", wait, func(nm *wire.NetMap) bool { return peerNamed(nm, "alice-laptop") != nil })
	nmB := wb.waitFor("bob's full map", wait, func(nm *wire.NetMap) bool { return nm.Self != nil })
	aliceNode, dbNode := nmD.PeerByKey(alice.NodeKey()), nmA.PeerByKey(db.NodeKey())
	if len(nmB.Peers) != 0 {
		t.Errorf("bob sees %d peers (%v); want none: he may reach nobody and nobody him", len(nmB.Peers), nmB.Peers)
	}
	if peerNamed(nmD, "bob-laptop") != nil || peerNamed(nmA, "bob-laptop") != nil {
		t.Error("bob is visible to a node that neither reaches him nor is reached by him")
	}
	// The filter the database received.
	for _, v6 := range []bool{false, true} {
		src, dst := addrOf(aliceNode, v6), addrOf(nmD.Self, v6)
		if !filterAllows(nmD.ExpandedFilter(), src, dst, 5432) {
			t.Errorf("db filter %+v refuses alice %v -> %v:5432", nmD.ExpandedFilter(), src, dst)
		}
		if filterAllows(nmD.ExpandedFilter(), src, dst, 22) {
			t.Errorf("db filter %+v admits alice on port 22", nmD.ExpandedFilter())
		}
	}
	bobNode, _ := c.Server.Nodes(ctx)
	var bobAddr netip.Addr
	for _, n := range bobNode {
		if n.Name == "bob-laptop" {
			bobAddr = addrOf(n, false)
		}
	}
	if filterAllows(nmD.ExpandedFilter(), bobAddr, addrOf(nmD.Self, false), 5432) {
		t.Errorf("db filter %+v admits bob", nmD.ExpandedFilter())
	}
	// Nobody may reach alice: her filter admits nothing.
	if filterAllows(nmA.ExpandedFilter(), addrOf(dbNode, false), addrOf(nmA.Self, false), 5432) || len(nmA.ExpandedFilter()) != 0 {
		t.Errorf("alice filter = %+v, want empty", nmA.ExpandedFilter())
	}

	// A new policy reaches every node within 2 seconds: bob joins group:eng.
	start := time.Now()
	if err := admin.SetPolicy(ctx, []byte(strings.Replace(strings.Replace(dbPolicy, `["alice"]`, `["alice", "bob"]`, 1),
		`{"src": "bob", "deny": ["tag:db:5432"]},`, `{"src": "bob", "accept": ["tag:db:5432"]},`, 1))); err != nil {
		t.Fatal(err)
	}
	wb.waitFor("db visible to bob", 2*time.Second, func(nm *wire.NetMap) bool { return peerNamed(nm, "db") != nil })
	wd.waitFor("db filter admits bob", 2*time.Second, func(nm *wire.NetMap) bool {
		return filterAllows(nm.ExpandedFilter(), bobAddr, addrOf(nm.Self, false), 5432)
	})
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("policy change took %v to reach the nodes", d)
	}
	// And back: bob loses the database again.
	if err := admin.SetPolicy(ctx, []byte(dbPolicy)); err != nil {
		t.Fatal(err)
	}
	wb.waitFor("db gone for bob", 2*time.Second, func(nm *wire.NetMap) bool { return peerNamed(nm, "db") == nil })
	wd.waitFor("db filter refuses bob", 2*time.Second, func(nm *wire.NetMap) bool {
		return !filterAllows(nm.ExpandedFilter(), bobAddr, addrOf(nm.Self, false), 5432)
	})

	// Joins are compiled in too: a second alice node sees the database at once.
	alice2 := newNode(t, c.URL)
	alice2.register(t, ak(coordinator.AuthKeyOptions{User: "alice"}), "alice-desktop")
	wd.waitFor("db filter admits alice's new node", wait, func(nm *wire.NetMap) bool {
		p := peerNamed(nm, "alice-desktop")
		return p != nil && filterAllows(nm.ExpandedFilter(), addrOf(p, false), addrOf(nm.Self, false), 5432)
	})

	got, err := admin.GetPolicy(ctx)
	if err != nil || string(got) != dbPolicy {
		t.Fatalf("GetPolicy = %q, %v", got, err)
	}
}

func TestPolicyRefused(t *testing.T) {
	c := startCoord(t, nil)
	ctx := context.Background()
	setupACL(t, c, dbPolicy, "alice", "bob")
	admin := coordclient.NewAdmin(c.URL, testToken, nil)
	tests := []struct {
		name       string
		src        string
		line, col  int
		msg        string
		testFailed bool
	}{
		{"syntax", "{\n  \"acls\": [\n    {\"action\": \"accept\" \"src\": [\"*\"]},\n  ],\n}", 3, 0, "", false},
		{"unknown user", "{\n\t\"acls\": [{\"action\": \"accept\", \"src\": [\"carol\"], \"dst\": [\"*:*\"]}],\n}", 2, 40, `unknown user or host "carol"`, false},
		{"failing test", strings.Replace(dbPolicy, `"deny": ["tag:db:22"]`, `"deny": ["tag:db:5432"]`, 1), 8, 56, "alice -> tag:db:5432: accepted, want denied", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, do := range []func(context.Context, []byte) error{admin.CheckPolicy, admin.SetPolicy} {
				err := do(ctx, []byte(tc.src))
				pe, ok := errors.AsType[*coordclient.PolicyError](err)
				if !ok || len(pe.Problems) == 0 {
					t.Fatalf("got %v, want a *PolicyError", err)
				}
				p := pe.Problems[0]
				if p.Line != tc.line || (tc.col != 0 && p.Column != tc.col) || p.Column == 0 || !strings.Contains(p.Message, tc.msg) || p.TestFailed != tc.testFailed {
					t.Errorf("problem = %+v, want line %d column %d message %q test_failed %v", p, tc.line, tc.col, tc.msg, tc.testFailed)
				}
			}
		})
	}
	if got, _ := admin.GetPolicy(ctx); string(got) != dbPolicy {
		t.Fatalf("a refused policy was applied: %s", got)
	}
	if err := admin.CheckPolicy(ctx, []byte(`{"acls": []}`)); err != nil {
		t.Fatalf("check of a good policy = %v", err)
	}
	if got, _ := admin.GetPolicy(ctx); string(got) != dbPolicy {
		t.Fatal("check applied the policy")
	}
	// Tests run against current nodes: with a real db node, a test that
	// only fails for it is caught.
	db := newNode(t, c.URL)
	db.register(t, c.authKey(t, coordinator.AuthKeyOptions{Tags: []string{"tag:db"}}), "db")
	bad := strings.Replace(dbPolicy, `"dst": ["tag:db:5432"]`, `"dst": ["100.64.0.99:5432"]`, 1)
	if err := admin.CheckPolicy(ctx, []byte(bad)); err == nil {
		t.Fatal("policy whose tests fail for the real db node was accepted")
	}

	// The policy survives a restart.
	c.restart()
	admin = coordclient.NewAdmin(c.URL, testToken, nil)
	if got, _ := admin.GetPolicy(ctx); string(got) != dbPolicy {
		t.Fatalf("policy after restart = %s", got)
	}
}

func TestKeyExpiryDefaults(t *testing.T) {
	c := startCoord(t, nil)
	ctx := context.Background()
	setupACL(t, c, `{"tagOwners": {"tag:server": []}, "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}`, "alice")
	admin := coordclient.NewAdmin(c.URL, testToken, nil)
	key := func(r coordclient.AuthKeyRequest) string {
		k, _, err := admin.CreateAuthKey(ctx, r)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	approx := func(got time.Time, want time.Duration) bool {
		d := time.Until(got)
		return d > want-time.Minute && d <= want
	}
	if n := newNode(t, c.URL).register(t, key(coordclient.AuthKeyRequest{User: "alice"}), "user").Node; !approx(n.KeyExpiry, coordinator.DefaultNodeKeyExpiry) {
		t.Errorf("user node expiry = %v, want about 180 days from now", n.KeyExpiry)
	}
	if coordinator.DefaultNodeKeyExpiry != 180*24*time.Hour {
		t.Errorf("DefaultNodeKeyExpiry = %v", coordinator.DefaultNodeKeyExpiry)
	}
	if n := newNode(t, c.URL).register(t, key(coordclient.AuthKeyRequest{}), "plain").Node; !approx(n.KeyExpiry, coordinator.DefaultNodeKeyExpiry) {
		t.Errorf("node of a key with neither user nor tag expires %v, want about 180 days from now", n.KeyExpiry)
	}
	if n := newNode(t, c.URL).register(t, key(coordclient.AuthKeyRequest{Tags: []string{"tag:server"}}), "tagged").Node; !n.KeyExpiry.IsZero() {
		t.Errorf("tagged node expiry = %v, want none", n.KeyExpiry)
	}
	if n := newNode(t, c.URL).register(t, key(coordclient.AuthKeyRequest{User: "alice", KeyExpiry: time.Hour}), "short").Node; !approx(n.KeyExpiry, time.Hour) {
		t.Errorf("node of a 1h key expires %v", n.KeyExpiry)
	}
	if n := newNode(t, c.URL).register(t, key(coordclient.AuthKeyRequest{User: "alice", KeyExpiry: -1}), "forever").Node; !n.KeyExpiry.IsZero() {
		t.Errorf("node of a never-expiring key expires %v", n.KeyExpiry)
	}
	keys, _ := admin.ListAuthKeys(ctx)
	var shown []string
	for _, k := range keys {
		shown = append(shown, k.KeyExpiry)
	}
	if !slices.Equal(shown, []string{"", "", "", "1h0m0s", "never"}) {
		t.Errorf("key expiries listed = %q", shown)
	}

	// Per node: set-expiry, then never; expire now.
	n, err := admin.SetNodeExpiry(ctx, "tagged", 48*time.Hour)
	if err != nil || !approx(n.KeyExpiry, 48*time.Hour) {
		t.Fatalf("SetNodeExpiry 48h = %+v, %v", n, err)
	}
	if n, err := admin.SetNodeExpiry(ctx, "user", 0); err != nil || !n.KeyExpiry.IsZero() {
		t.Fatalf("SetNodeExpiry never = %+v, %v", n, err)
	}
	if _, err := admin.SetNodeExpiry(ctx, "nobody", time.Hour); !errors.Is(err, coordclient.ErrNotFound) {
		t.Fatalf("SetNodeExpiry of unknown node = %v", err)
	}
	// An expired node may come back with a new key; it gets that key's expiry.
	sn := newNode(t, c.URL)
	sn.register(t, key(coordclient.AuthKeyRequest{User: "alice"}), "comeback")
	if err := admin.ExpireNode(ctx, "comeback"); err != nil {
		t.Fatal(err)
	}
	if _, err := sn.Register(ctx, coordclient.RegisterParams{Hostname: "comeback"}); !errors.Is(err, coordclient.ErrNodeExpired) {
		t.Fatalf("expired node without key = %v", err)
	}
	r := sn.register(t, key(coordclient.AuthKeyRequest{User: "alice", KeyExpiry: 2 * time.Hour}), "comeback")
	if r.Node.Name != "comeback" || !approx(r.Node.KeyExpiry, 2*time.Hour) {
		t.Fatalf("re-registered = %+v", r.Node)
	}
	// Reviving an expired node by extending its expiry lets it stream again.
	if err := admin.ExpireNode(ctx, "comeback"); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.SetNodeExpiry(ctx, "comeback", time.Hour); err != nil {
		t.Fatal(err)
	}
	w := watch(t, sn)
	w.waitFor("revived node's map", wait, func(nm *wire.NetMap) bool { return nm.Self != nil && peerNamed(nm, "user") != nil })
}

// TestNodeKeyExpiryOption: Options.NodeKeyExpiry sets the default of
// nodes with neither user nor tag, dev mode ones included; negative means
// never.
func TestNodeKeyExpiryOption(t *testing.T) {
	for _, tc := range []struct {
		name string
		opt  time.Duration
		want time.Duration // 0: never
	}{
		{"2h", 2 * time.Hour, 2 * time.Hour},
		{"never", -1, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := startCoord(t, func(o *coordinator.Options) { o.NodeKeyExpiry = tc.opt; o.DevMode = true })
			nodes := map[string]*node{}
			for name, ak := range map[string]string{"plain": c.authKey(t, coordinator.AuthKeyOptions{}), "dev": ""} {
				nodes[name] = newNode(t, c.URL)
				n := nodes[name].register(t, ak, name).Node
				if tc.want == 0 {
					if !n.KeyExpiry.IsZero() {
						t.Errorf("%s node expires %v, want never", name, n.KeyExpiry)
					}
					continue
				}
				if d := time.Until(n.KeyExpiry); d <= tc.want-time.Minute || d > tc.want {
					t.Errorf("%s node expires in %v, want %v", name, d, tc.want)
				}
			}
			if tc.want == 0 {
				return
			}
			// Once expired, a dev mode node on loopback renews without
			// a key, as it joined.
			admin := coordclient.NewAdmin(c.URL, testToken, nil)
			if err := admin.ExpireNode(context.Background(), "dev"); err != nil {
				t.Fatal(err)
			}
			n := nodes["dev"].register(t, "", "dev").Node
			if d := time.Until(n.KeyExpiry); d <= tc.want-time.Minute || d > tc.want {
				t.Errorf("renewed dev node expires in %v, want %v", d, tc.want)
			}
		})
	}
}

// authKeyPrefixes lists the prefixes of the coordinator's auth keys,
// sorted.
func authKeyPrefixes(t *testing.T, admin *coordclient.Admin) []string {
	t.Helper()
	keys, err := admin.ListAuthKeys(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, k := range keys {
		out = append(out, k.Prefix)
	}
	slices.Sort(out)
	return out
}

// TestApprovalMakesNoKeyUncollected: a registration approved after its
// node stopped waiting leaves no auth key behind: the one-off key is made
// only when a followup collects the approval, and deleted once used.
func TestApprovalMakesNoKeyUncollected(t *testing.T) {
	c := startCoord(t, nil)
	setupACL(t, c, `{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}`, "alice")
	admin := coordclient.NewAdmin(c.URL, testToken, nil)
	before := authKeyPrefixes(t, admin)

	ctx, cancel := context.WithCancel(t.Context())
	codes := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		_, err := newNode(t, c.URL).Register(ctx, coordclient.RegisterParams{Hostname: "gone", OnAuthURL: func(_, code string) { codes <- code }})
		done <- err
	}()
	var code string
	select {
	case code = <-codes:
	case <-time.After(wait):
		t.Fatal("no auth code")
	}
	cancel() // the node stops waiting before anyone approves it
	<-done
	if err := admin.Approve(t.Context(), code, "alice", nil); err != nil {
		t.Fatalf("approve: %v", err)
	}
	if got := authKeyPrefixes(t, admin); !slices.Equal(got, before) {
		t.Fatalf("auth keys after an approval nobody collected: %v, want %v", got, before)
	}
}

// TestInteractiveApproval: a node without an auth key waits, an admin
// approves its code, and the node gets registered and its map.
func TestInteractiveApproval(t *testing.T) {
	c := startCoord(t, nil)
	ctx := context.Background()
	setupACL(t, c, `{"tagOwners": {"tag:ci": []}, "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}`, "alice")
	admin := coordclient.NewAdmin(c.URL, testToken, nil)
	other := newNode(t, c.URL)
	other.register(t, c.authKey(t, coordinator.AuthKeyOptions{}), "other")

	n := newNode(t, c.URL)
	type result struct {
		resp *wire.RegisterResponse
		err  error
	}
	urls := make(chan [2]string, 2)
	done := make(chan result, 1)
	go func() {
		resp, err := n.Register(ctx, coordclient.RegisterParams{Hostname: "newbie", OS: "linux", OnAuthURL: func(u, code string) { urls <- [2]string{u, code} }})
		done <- result{resp, err}
	}()
	var got [2]string
	select {
	case got = <-urls:
	case r := <-done:
		t.Fatalf("Register returned before approval: %+v, %v", r.resp, r.err)
	case <-time.After(wait):
		t.Fatal("no auth URL")
	}
	authURL, code := got[0], got[1]
	if len(code) != 8 || strings.ContainsAny(code, "01OIL") || authURL != c.URL+"/register/"+code {
		t.Fatalf("auth URL %q, code %q", authURL, code)
	}
	resp, err := http.Get(authURL)
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(page), "beam admin nodes approve "+code) {
		t.Fatalf("approval page: %d %s", resp.StatusCode, page)
	}
	if resp, _ := http.Get(c.URL + "/register/ZZZZ2222"); resp.StatusCode != 404 {
		t.Fatalf("page of an unknown code: %d", resp.StatusCode)
	}
	pending, err := admin.ListPending(ctx)
	if err != nil || len(pending) != 1 || pending[0].Code != code || pending[0].Hostname != "newbie" {
		t.Fatalf("ListPending = %+v, %v", pending, err)
	}
	// Still waiting: nothing registered yet.
	select {
	case r := <-done:
		t.Fatalf("Register returned before approval: %+v, %v", r.resp, r.err)
	default:
	}
	if nodes, _ := admin.ListNodes(ctx); len(nodes) != 1 {
		t.Fatalf("%d nodes before approval, want 1", len(nodes))
	}
	if err := admin.Approve(ctx, code, "nobody", nil); err == nil {
		t.Fatal("approval for an unknown user succeeded")
	}
	if err := admin.Approve(ctx, "WRONG234", "alice", nil); !errors.Is(err, coordclient.ErrNotFound) {
		t.Fatalf("approval of an unknown code = %v", err)
	}
	keysBefore := authKeyPrefixes(t, admin)
	if err := admin.Approve(ctx, strings.ToLower(code[:4])+"-"+code[4:], "alice", nil); err != nil {
		t.Fatalf("approve: %v", err)
	}
	var r result
	select {
	case r = <-done:
	case <-time.After(wait):
		t.Fatal("Register did not return after approval")
	}
	if r.err != nil || r.resp.Node == nil || r.resp.Node.Name != "newbie" || r.resp.Node.User != "alice" || r.resp.Node.KeyExpiry.IsZero() {
		t.Fatalf("Register after approval = %+v, %v", r.resp, r.err)
	}
	if len(urls) != 0 {
		t.Error("OnAuthURL called more than once")
	}
	// The one-off key made for the approval is gone once used.
	if got := authKeyPrefixes(t, admin); !slices.Equal(got, keysBefore) {
		t.Errorf("auth keys after the approved node registered: %v, want %v", got, keysBefore)
	}
	w := watch(t, n)
	w.waitFor("approved node's map", wait, func(nm *wire.NetMap) bool { return nm.Self != nil && peerNamed(nm, "other") != nil })
	if err := admin.Approve(ctx, code, "alice", nil); err == nil {
		t.Fatal("second approval of a used code succeeded")
	}
	if p, _ := admin.ListPending(ctx); len(p) != 0 {
		t.Fatalf("pending after approval = %+v", p)
	}

	// A tagged approval; and Register without OnAuthURL fails cleanly.
	if _, err := newNode(t, c.URL).Register(ctx, coordclient.RegisterParams{Hostname: "x"}); !errors.Is(err, coordclient.ErrNodeNotRegistered) {
		t.Fatalf("Register without OnAuthURL = %v, want ErrNodeNotRegistered", err)
	}
	tn := newNode(t, c.URL)
	go func() {
		resp, err := tn.Register(ctx, coordclient.RegisterParams{Hostname: "runner", OnAuthURL: func(u, code string) { urls <- [2]string{u, code} }})
		done <- result{resp, err}
	}()
	got = <-urls
	if err := admin.Approve(ctx, got[1], "", []string{"tag:ci"}); err != nil {
		t.Fatal(err)
	}
	if r := <-done; r.err != nil || !slices.Equal(r.resp.Node.Tags, []string{"tag:ci"}) || !r.resp.Node.KeyExpiry.IsZero() {
		t.Fatalf("tagged approval = %+v, %v", r.resp, r.err)
	}

	// A canceled wait returns the context's error.
	cctx, cancel := context.WithCancel(ctx)
	go func() {
		resp, err := newNode(t, c.URL).Register(cctx, coordclient.RegisterParams{Hostname: "quitter", OnAuthURL: func(string, string) { cancel() }})
		done <- result{resp, err}
	}()
	if r := <-done; !errors.Is(r.err, context.Canceled) {
		t.Fatalf("canceled wait = %+v, %v", r.resp, r.err)
	}
}

func TestAuditLog(t *testing.T) {
	c := startCoord(t, func(o *coordinator.Options) { o.EphemeralTimeout = 50 * time.Millisecond })
	ctx := context.Background()
	admin := coordclient.NewAdmin(c.URL, testToken, nil)
	if _, err := admin.CreateUser(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	secret, info, err := admin.CreateAuthKey(ctx, coordclient.AuthKeyRequest{User: "alice", Reusable: true})
	if err != nil {
		t.Fatal(err)
	}
	a := newNode(t, c.URL)
	a.register(t, secret, "alpha")
	b := newNode(t, c.URL)
	b.register(t, secret, "beta")
	if err := admin.ExpireNode(ctx, "beta"); err != nil {
		t.Fatal(err)
	}
	b.register(t, secret, "beta")
	if _, err := admin.SetNodeExpiry(ctx, "beta", time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := admin.RemoveNode(ctx, "beta"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Register(ctx, coordclient.RegisterParams{Logout: true}); err != nil {
		t.Fatal(err)
	}
	if err := admin.SetPolicy(ctx, []byte(`{"acls": [{"action": "accept", "src": ["alice"], "dst": ["*:*"]}]}`)); err != nil {
		t.Fatal(err)
	}
	eph, _, err := admin.CreateAuthKey(ctx, coordclient.AuthKeyRequest{Ephemeral: true})
	if err != nil {
		t.Fatal(err)
	}
	newNode(t, c.URL).register(t, eph, "eph")
	if err := admin.DeleteAuthKey(ctx, info.Prefix); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.CreateUser(ctx, "bob"); err != nil {
		t.Fatal(err)
	}
	if err := admin.DeleteUser(ctx, "bob"); err != nil {
		t.Fatal(err)
	}

	want := []string{
		"admin user.create alice", "admin authkey.create " + info.Prefix, "node:alpha node.register alpha", "node:beta node.register beta",
		"coordinator node.expired beta", "admin node.expire beta", "node:beta node.reauth beta", "admin node.set_expiry beta",
		"admin node.remove beta", "node:alpha node.logout alpha", "admin policy.set policy", "node:eph node.register eph",
		"admin authkey.delete " + info.Prefix, "admin user.create bob", "admin user.delete bob",
	}
	var seen []string
	deadline := time.Now().Add(wait)
	for {
		entries, err := admin.Audit(ctx, 1000)
		if err != nil {
			t.Fatal(err)
		}
		seen = seen[:0]
		for i := len(entries) - 1; i >= 0; i-- {
			e := entries[i]
			if e.Time.IsZero() {
				t.Errorf("entry without time: %+v", e)
			}
			if strings.Contains(e.Detail, secret) || strings.Contains(e.Target, secret) {
				t.Fatalf("audit entry holds an auth key: %+v", e)
			}
			seen = append(seen, e.Actor+" "+e.Action+" "+e.Target)
		}
		// The ephemeral node is removed by the coordinator once offline.
		if slices.ContainsFunc(seen, func(s string) bool { return strings.HasPrefix(s, "coordinator node.remove") }) || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond) // polling the log, which has no change feed
	}
	i := 0
	for _, s := range seen {
		if i < len(want) && s == want[i] {
			i++
		}
	}
	if i != len(want) {
		t.Errorf("audit log lacks %q (in order); got:\n%s", want[i], strings.Join(seen, "\n"))
	}
	if !slices.ContainsFunc(seen, func(s string) bool { return strings.HasPrefix(s, "coordinator node.remove") }) {
		t.Errorf("no audit entry for the ephemeral node's removal; got:\n%s", strings.Join(seen, "\n"))
	}
	if entries, _ := admin.Audit(ctx, 2); len(entries) != 2 {
		t.Errorf("Audit(limit 2) = %d entries", len(entries))
	}
}
