package coordinator_test

import (
	"context"
	"errors"
	"testing"

	"beam.dev/beam/coordclient"
	"beam.dev/beam/coordinator"
	"beam.dev/beam/wire"
)

// TestExposeFollowsPolicy checks the policy's expose section: only tagged
// web servers may publish, and only names starting with "app-".
func TestExposeFollowsPolicy(t *testing.T) {
	c := startCoord(t, edgeOpts("", ""))
	ctx := context.Background()
	const pol = `{
		"tagOwners": {"tag:web": []},
		"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],
		"expose": [{"src": ["tag:web"], "names": ["app-*"]}],
	}`
	if err := c.Server.SetPolicy(ctx, []byte(pol)); err != nil {
		t.Fatal(err)
	}
	web := newNode(t, c.URL)
	web.register(t, c.authKey(t, coordinator.AuthKeyOptions{Tags: []string{"tag:web"}}), "web")
	plain := newNode(t, c.URL)
	plain.register(t, c.authKey(t, coordinator.AuthKeyOptions{}), "plain")

	if resp := expose(t, web, wire.ExposeRequest{Name: "app-shop", Proto: "http", Port: 3000}); resp.Route == nil {
		t.Fatalf("tag:web publishing app-shop: %+v", resp)
	}
	for _, tc := range []struct {
		n    *node
		name string
	}{{web, "shop"}, {plain, "app-blog"}, {plain, ""}} {
		_, err := tc.n.Expose(ctx, wire.ExposeRequest{Name: tc.name, Proto: "http", Port: 3000})
		if !errors.Is(err, coordclient.ErrForbidden) {
			t.Errorf("expose %q: err = %v, want ErrForbidden", tc.name, err)
		}
	}
}
