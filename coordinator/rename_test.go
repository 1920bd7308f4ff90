package coordinator_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"beam.dev/beam/coordclient"
	"beam.dev/beam/coordinator"
	"beam.dev/beam/wire"
)

// statusOf returns the HTTP status of an admin API error, or 0.
func statusOf(err error) int {
	var ce *coordclient.Error
	if errors.As(err, &ce) {
		return ce.Status
	}
	return 0
}

func TestRenameNode(t *testing.T) {
	c := startCoord(t, nil)
	ctx := context.Background()
	ak := c.authKey(t, coordinator.AuthKeyOptions{Reusable: true})
	a, b, g := newNode(t, c.URL), newNode(t, c.URL), newNode(t, c.URL)
	a.register(t, ak, "alpha")
	b.register(t, ak, "beta")
	g.register(t, ak, "gamma")
	wa, wb := watch(t, a), watch(t, b)
	wa.waitFor("beta and gamma", wait, func(nm *wire.NetMap) bool {
		return peerNamed(nm, "beta") != nil && peerNamed(nm, "gamma") != nil
	})
	wb.waitFor("beta's map", wait, func(nm *wire.NetMap) bool { return nm.Self != nil })
	admin := coordclient.NewAdmin(c.URL, testToken, nil)

	// Upper case is folded; the peer gets the new name at once.
	start := time.Now()
	n, err := admin.RenameNode(ctx, "beta", "Web")
	if err != nil {
		t.Fatalf("rename beta: %v", err)
	}
	if n.Name != "web" || n.DNSName != "web.default.beam.internal." || n.Key != b.NodeKey() {
		t.Fatalf("renamed node = name %q dns %q key %v, want web, web.default.beam.internal., beta's key", n.Name, n.DNSName, n.Key)
	}
	nm := wa.waitFor("alpha sees web", time.Second, func(nm *wire.NetMap) bool {
		p := peerNamed(nm, "web")
		return p != nil && p.DNSName == "web.default.beam.internal." && peerNamed(nm, "beta") == nil
	})
	t.Logf("rename reached a peer after %v", time.Since(start))
	if p := peerNamed(nm, "web"); p.Key != b.NodeKey() || len(p.Addresses) != 2 {
		t.Errorf("peer web = %+v, want beta's key and both addresses", p)
	}
	wb.waitFor("beta's self renamed", time.Second, func(nm *wire.NetMap) bool {
		return nm.Self.Name == "web" && nm.Self.DNSName == "web.default.beam.internal."
	})

	// Renaming to its own name is a no-op.
	if n, err := admin.RenameNode(ctx, "web", "web"); err != nil || n.Name != "web" {
		t.Errorf("rename web to web = %v, %v; want web, nil", n, err)
	}

	// Errors.
	for _, tc := range []struct {
		name, ref, to string
		status        int
	}{
		{"taken", "gamma", "alpha", http.StatusConflict},
		{"old name gone", "beta", "b2", http.StatusNotFound},
		{"empty", "gamma", "", http.StatusBadRequest},
		{"dot", "gamma", "a.b", http.StatusBadRequest},
		{"leading dash", "gamma", "-g", http.StatusBadRequest},
		{"trailing dash", "gamma", "g-", http.StatusBadRequest},
		{"underscore", "gamma", "g_1", http.StatusBadRequest},
		{"too long", "gamma", "a123456789012345678901234567890123456789012345678901234567890123", http.StatusBadRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := admin.RenameNode(ctx, tc.ref, tc.to)
			if got := statusOf(err); got != tc.status {
				t.Fatalf("rename %s to %q: %v (status %d), want status %d", tc.ref, tc.to, err, got, tc.status)
			}
			if tc.status == http.StatusNotFound && !errors.Is(err, coordclient.ErrNotFound) {
				t.Errorf("error %v does not match ErrNotFound", err)
			}
		})
	}
	if _, err := c.Server.RenameNode(ctx, "gamma", "alpha"); !errors.Is(err, coordinator.ErrConflict) {
		t.Errorf("Server.RenameNode to a taken name: %v, want ErrConflict", err)
	}
	if _, err := c.Server.RenameNode(ctx, "gamma", "no_good"); !errors.Is(err, coordinator.ErrInvalid) {
		t.Errorf("Server.RenameNode to a bad label: %v, want ErrInvalid", err)
	}

	// The freed name goes to the next node called beta; a node asking for
	// the new name gets a suffix.
	if r := newNode(t, c.URL).register(t, ak, "beta"); r.Node.Name != "beta" {
		t.Errorf("new node with hostname beta got %q, want beta", r.Node.Name)
	}
	if r := newNode(t, c.URL).register(t, ak, "web"); r.Node.Name != "web-2" {
		t.Errorf("new node with hostname web got %q, want web-2", r.Node.Name)
	}

	// The audit log has it.
	entries, err := admin.Audit(ctx, 50)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, e := range entries {
		if e.Action == "node.rename" && e.Target == "beta" && e.Actor == "admin" {
			found = true
		}
	}
	if !found {
		t.Errorf("no node.rename entry for beta in the audit log: %+v", entries)
	}

	// The name survives a restart and a rejoin.
	wa.stop()
	wb.stop()
	c.restart()
	if r := b.register(t, "", "beta"); r.Node.Name != "web" || r.Node.DNSName != "web.default.beam.internal." {
		t.Errorf("after restart and rejoin: name %q dns %q, want web", r.Node.Name, r.Node.DNSName)
	}
	nodes, err := c.Server.Nodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, n := range nodes {
		names[n.Name] = true
	}
	for _, want := range []string{"alpha", "beta", "gamma", "web", "web-2"} {
		if !names[want] {
			t.Errorf("after restart, no node %q among %v", want, names)
		}
	}
}

// TestRenameNodeRace renames two nodes to the same name at once: exactly
// one wins, and the store and memory agree.
func TestRenameNodeRace(t *testing.T) {
	c := startCoord(t, nil)
	ctx := context.Background()
	ak := c.authKey(t, coordinator.AuthKeyOptions{Reusable: true})
	newNode(t, c.URL).register(t, ak, "one")
	newNode(t, c.URL).register(t, ak, "two")
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, ref := range []string{"one", "two"} {
		wg.Go(func() { _, errs[i] = c.Server.RenameNode(ctx, ref, "same") })
	}
	wg.Wait()
	ok, conflict := 0, 0
	for _, err := range errs {
		switch {
		case err == nil:
			ok++
		case errors.Is(err, coordinator.ErrConflict):
			conflict++
		default:
			t.Errorf("rename: %v", err)
		}
	}
	if ok != 1 || conflict != 1 {
		t.Fatalf("got %d successes and %d conflicts (%v), want 1 and 1", ok, conflict, errs)
	}
	stored, err := c.Store.Nodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	count := 0
	for _, r := range stored {
		if r.Node.Name == "same" {
			count++
		}
	}
	if count != 1 {
		t.Errorf("%d stored nodes named same, want 1", count)
	}
}

// TestRenameNodeRegisterRace renames a node while others register with
// the same hostname: names stay unique.
func TestRenameNodeRegisterRace(t *testing.T) {
	c := startCoord(t, nil)
	ctx := context.Background()
	ak := c.authKey(t, coordinator.AuthKeyOptions{Reusable: true})
	newNode(t, c.URL).register(t, ak, "old")
	var wg sync.WaitGroup
	var renameErr error
	wg.Go(func() { _, renameErr = c.Server.RenameNode(ctx, "old", "fresh") })
	regErrs := make([]error, 4)
	for i := range regErrs {
		n := newNode(t, c.URL)
		wg.Go(func() {
			_, regErrs[i] = n.Register(ctx, coordclient.RegisterParams{AuthKey: ak, Hostname: "fresh", OS: "linux"})
		})
	}
	wg.Wait()
	for _, err := range regErrs {
		if err != nil {
			t.Errorf("register: %v", err)
		}
	}
	if renameErr != nil && !errors.Is(renameErr, coordinator.ErrConflict) {
		t.Fatalf("rename: %v", renameErr)
	}
	nodes, err := c.Server.Nodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, n := range nodes {
		if seen[n.Name] {
			t.Errorf("name %q used twice", n.Name)
		}
		seen[n.Name] = true
	}
	if len(nodes) != 5 {
		t.Errorf("%d nodes, want 5", len(nodes))
	}
}

// FuzzRenameRequest feeds arbitrary bodies and node references to
// POST /api/v1/nodes/{name}/rename. Every answer is 200, 400, 404 or 409;
// after a 200 the node's name is a DNS label and names stay unique.
func FuzzRenameRequest(f *testing.F) {
	c := startCoord(f, nil)
	ak := c.authKey(f, coordinator.AuthKeyOptions{Reusable: true})
	newNode(f, c.URL).register(f, ak, "alpha")
	newNode(f, c.URL).register(f, ak, "beta")
	f.Add("alpha", []byte(`{"name": "gamma"}`))      // a valid rename
	f.Add("beta", []byte(`{"name": "alpha"}`))       // taken
	f.Add("alpha", []byte(`{"name": "Upper-Case"}`)) // folded to lower case
	f.Add("alpha", []byte(`{"name": "a.b"}`))        // not a label
	f.Add("alpha", []byte(`{"name": "x", "more": 1}`))
	f.Add("nosuch", []byte(`{"name": "x"}`))
	f.Add("default/beta", []byte(`{"name": "b2"}`))
	f.Add("alpha", []byte(`{"name": 5}`))
	f.Add("alpha", []byte(`[]`))
	f.Add("alpha", []byte{})
	f.Fuzz(func(t *testing.T, ref string, body []byte) {
		if ref == "" || ref == "." || ref == ".." || strings.ContainsAny(ref, "?#%") {
			return // not a path segment this test can address
		}
		req, err := http.NewRequest(http.MethodPost, c.URL+"/api/v1/nodes/"+url.PathEscape(ref)+"/rename", bytes.NewReader(body))
		if err != nil {
			return
		}
		req.Header.Set("Authorization", "Bearer "+testToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var n wire.Node
		decErr := json.NewDecoder(resp.Body).Decode(&n)
		resp.Body.Close()
		switch resp.StatusCode {
		case http.StatusOK:
			if decErr != nil || n.Name == "" || n.Name != coordinator.SanitizeLabel(n.Name) {
				t.Fatalf("200 with node name %q (%v)", n.Name, decErr)
			}
		case http.StatusBadRequest, http.StatusNotFound, http.StatusConflict:
		default:
			t.Fatalf("status %d for ref %q body %q", resp.StatusCode, ref, body)
		}
		nodes, err := c.Server.Nodes(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		seen := map[string]bool{}
		for _, n := range nodes {
			if seen[n.Name] {
				t.Fatalf("name %q used twice", n.Name)
			}
			seen[n.Name] = true
		}
	})
}

// TestRenameOnHostnameChange: a node that rejoins with a new hostname gets
// that hostname's name when it is free and keeps its own (with
// NameChanged) when it is taken; rejoining with the same hostname keeps an
// admin's rename.
func TestRenameOnHostnameChange(t *testing.T) {
	c := startCoord(t, nil)
	ctx := context.Background()
	ak := c.authKey(t, coordinator.AuthKeyOptions{Reusable: true})
	a, b := newNode(t, c.URL), newNode(t, c.URL)
	a.register(t, ak, "alpha")
	b.register(t, ak, "beta")
	admin := coordclient.NewAdmin(c.URL, testToken, nil)

	steps := []struct {
		what, hostname string
		adminRename    string // before the rejoin, if set
		wantName       string
		wantTaken      bool
	}{
		{what: "same hostname", hostname: "beta", wantName: "beta"},
		{what: "new free hostname", hostname: "Gamma.example.com", wantName: "gamma"},
		{what: "taken hostname", hostname: "alpha", wantName: "gamma", wantTaken: true},
		{what: "admin rename sticks", hostname: "alpha", adminRename: "web", wantName: "web"},
		{what: "then a new hostname", hostname: "delta", wantName: "delta"},
	}
	for _, st := range steps {
		if st.adminRename != "" {
			cur := b.register(t, "", st.hostname).Node.Name
			if _, err := admin.RenameNode(ctx, cur, st.adminRename); err != nil {
				t.Fatalf("%s: admin rename: %v", st.what, err)
			}
		}
		r := b.register(t, "", st.hostname)
		if r.Node.Name != st.wantName || r.NameChanged != st.wantTaken {
			t.Errorf("%s: rejoin with hostname %q: got name %q name_changed %v, want %q %v", st.what, st.hostname, r.Node.Name, r.NameChanged, st.wantName, st.wantTaken)
		}
		if r.Node.DNSName != st.wantName+".default.beam.internal." {
			t.Errorf("%s: DNS name %q, want %s.default.beam.internal.", st.what, r.Node.DNSName, st.wantName)
		}
	}
}
