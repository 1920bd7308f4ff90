package coordinator_test

import (
	"context"
	"slices"
	"testing"

	"beam.dev/beam/coordclient"
	"beam.dev/beam/coordinator"
	"beam.dev/beam/wire"
)

// TestDroppedTagNotHeld drops a tag from tagOwners while a node carries
// it: on that policy change the node stops holding the tag (the database
// no longer admits it, it no longer sees the database) and the admin node
// list shows it carrying a tag no owner grants. Listing the tag again
// grants it again.
func TestDroppedTagNotHeld(t *testing.T) {
	const withWeb = `{
		"tagOwners": {"tag:db": [], "tag:web": []},
		"acls": [{"action": "accept", "src": ["tag:web"], "dst": ["tag:db:5432"]}],
	}`
	const withoutWeb = `{
		"tagOwners": {"tag:db": []},
		"acls": [{"action": "accept", "src": ["tag:db"], "dst": ["tag:db:5432"]}],
	}`
	c := startCoord(t, nil)
	ctx := context.Background()
	setupACL(t, c, withWeb)
	admin := coordclient.NewAdmin(c.URL, testToken, nil)
	web, db := newNode(t, c.URL), newNode(t, c.URL)
	web.register(t, c.authKey(t, coordinator.AuthKeyOptions{Tags: []string{"tag:web"}}), "web")
	db.register(t, c.authKey(t, coordinator.AuthKeyOptions{Tags: []string{"tag:db"}}), "db")
	ww, wd := watch(t, web), watch(t, db)

	admitsWeb := func(nm *wire.NetMap) bool {
		p := peerNamed(nm, "web")
		return p != nil && filterAllows(nm.ExpandedFilter(), addrOf(p, false), addrOf(nm.Self, false), 5432)
	}
	wd.waitFor("db admits web", wait, admitsWeb)
	ww.waitFor("web sees db", wait, func(nm *wire.NetMap) bool { return peerNamed(nm, "db") != nil })
	ungranted := func() []string {
		t.Helper()
		nodes, err := admin.ListNodes(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range nodes {
			if n.Name == "web" {
				if !slices.Equal(n.Tags, []string{"tag:web"}) {
					t.Errorf("web's tags = %v, want it still to carry tag:web", n.Tags)
				}
				return n.UngrantedTags
			}
		}
		t.Fatal("web not in the node list")
		return nil
	}
	if got := ungranted(); got != nil {
		t.Fatalf("web's ungranted tags = %v under a policy listing tag:web, want none", got)
	}

	if err := admin.SetPolicy(ctx, []byte(withoutWeb)); err != nil {
		t.Fatal(err)
	}
	wd.waitFor("db stops admitting web", wait, func(nm *wire.NetMap) bool { return !admitsWeb(nm) })
	ww.waitFor("web loses db", wait, func(nm *wire.NetMap) bool { return peerNamed(nm, "db") == nil })
	if got := ungranted(); !slices.Equal(got, []string{"tag:web"}) {
		t.Errorf("web's ungranted tags = %v after tag:web left tagOwners, want [tag:web]", got)
	}

	if err := admin.SetPolicy(ctx, []byte(withWeb)); err != nil {
		t.Fatal(err)
	}
	wd.waitFor("db admits web again", wait, admitsWeb)
	if got := ungranted(); got != nil {
		t.Errorf("web's ungranted tags = %v once tag:web is listed again, want none", got)
	}
}
