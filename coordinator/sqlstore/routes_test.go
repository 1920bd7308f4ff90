package sqlstore

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"beam.dev/beam/coordinator"
	"beam.dev/beam/wire"
)

// TestRouteOptionsStored checks that typed route options, the pool flag
// and the upstream survive the store, and that a route stored with the
// string map of options of earlier versions reads back typed.
func TestRouteOptionsStored(t *testing.T) { forEachStore(t, testRouteOptionsStored) }

func testRouteOptionsStored(t *testing.T, s *Store) {
	ctx := t.Context()
	n, _ := s.EnsureNetwork(ctx, "default", "default.beam.internal")
	rec := testNode(n.ID, "one", 1)
	if err := s.InsertNode(ctx, rec, time.Now()); err != nil {
		t.Fatal(err)
	}
	typed := &coordinator.Route{
		NetworkID: n.ID, NodeID: rec.Node.ID, Host: "app.example.test", Proto: "http", Port: 3000, Pool: true,
		Upstream: "https://localhost:3000", CreatedAt: time.Unix(1700000000, 0).UTC(),
		Options: wire.RouteOptions{
			BasicAuth: []wire.BasicAuthUser{{User: "u", Secret: "plain:p"}},
			AllowIP:   []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")},
			RateLimit: wire.Rate{Count: 20, Per: time.Second},
		},
	}
	if err := s.PutRoute(ctx, typed); err != nil {
		t.Fatal(err)
	}
	// A row written by an earlier version.
	if _, err := s.db.ExecContext(ctx, s.d.rebind(`INSERT INTO routes (node_id, network_id, host, proto, port, options, created_at)
		VALUES (?, ?, 'old.example.test', 'http', 4000, '{"basic_auth":"u:p","allow_ip":"198.51.100.7","rate_limit":"600/m"}', 0)`),
		int64(rec.Node.ID), n.ID); err != nil {
		t.Fatal(err)
	}
	routes, err := s.Routes(ctx)
	if err != nil || len(routes) != 2 {
		t.Fatalf("Routes = %v, %v", routes, err)
	}
	if diff := cmp.Diff(typed, routes[0], cmpOpts); diff != "" {
		t.Errorf("typed route (-want +got):\n%s", diff)
	}
	want := wire.RouteOptions{
		BasicAuth: []wire.BasicAuthUser{{User: "u", Secret: "plain:p"}},
		AllowIP:   []netip.Prefix{netip.MustParsePrefix("198.51.100.7/32")},
		RateLimit: wire.Rate{Count: 600, Per: time.Minute},
	}
	if !routes[1].Options.Equal(want) {
		t.Errorf("legacy route options = %+v, want %+v", routes[1].Options, want)
	}
	// RouteByID reads the one route, as Routes does.
	got, err := s.RouteByID(ctx, typed.ID)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(typed, got, cmpOpts); diff != "" {
		t.Errorf("RouteByID (-want +got):\n%s", diff)
	}
	if err := s.DeleteRoutes(ctx, []int64{typed.ID}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RouteByID(ctx, typed.ID); !errors.Is(err, coordinator.ErrNotFound) {
		t.Errorf("RouteByID of a deleted route = %v, want ErrNotFound", err)
	}
}
