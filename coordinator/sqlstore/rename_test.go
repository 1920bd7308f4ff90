package sqlstore

import (
	"errors"
	"testing"

	"beam.dev/beam/coordinator"
)

func TestRenameNode(t *testing.T) { forEachStore(t, testRenameNode) }

func testRenameNode(t *testing.T, s *Store) {
	ctx := t.Context()
	n1, _ := s.EnsureNetwork(ctx, "one", "one.beam.internal")
	n2, _ := s.EnsureNetwork(ctx, "two", "two.beam.internal")
	a, b, c := testNode(n1.ID, "alpha", 1), testNode(n1.ID, "beta", 2), testNode(n2.ID, "gamma", 3)
	for _, n := range []*coordinator.NodeRecord{a, b, c} {
		if err := s.InsertNode(ctx, n, n.CreatedAt); err != nil {
			t.Fatalf("insert %s: %v", n.Node.Name, err)
		}
	}
	if err := s.RenameNode(ctx, a.Node.ID, "web"); err != nil {
		t.Fatalf("rename alpha: %v", err)
	}
	if err := s.RenameNode(ctx, b.Node.ID, "web"); !errors.Is(err, coordinator.ErrConflict) {
		t.Errorf("rename beta to a taken name: %v, want ErrConflict", err)
	}
	// Names are unique per network only.
	if err := s.RenameNode(ctx, c.Node.ID, "web"); err != nil {
		t.Errorf("rename gamma in another network: %v", err)
	}
	if err := s.RenameNode(ctx, 9999, "x"); !errors.Is(err, coordinator.ErrNotFound) {
		t.Errorf("rename of a missing node: %v, want ErrNotFound", err)
	}
	nodes, err := s.Nodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, n := range nodes {
		got[n.Node.Key.String()] = n.Node.Name + " " + n.Node.DNSName
	}
	for _, tc := range []struct {
		rec  *coordinator.NodeRecord
		want string
	}{
		{a, "web web.one.beam.internal."},
		{b, "beta beta.one.beam.internal."},
		{c, "web web.two.beam.internal."},
	} {
		if g := got[tc.rec.Node.Key.String()]; g != tc.want {
			t.Errorf("node %d = %q, want %q", tc.rec.Node.ID, g, tc.want)
		}
	}
}
