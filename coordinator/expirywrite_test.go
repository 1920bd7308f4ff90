package coordinator_test

import (
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"beam.dev/beam/coordinator"
	"beam.dev/beam/coordinator/sqlstore"
	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// TestNodeUpdateKeepsOthersExpiry: a node's own update (its endpoints)
// does not write back the key expiry its coordinator holds in memory.
// Another coordinator on the same database may have just expired the
// node, and that expiry must survive an update made before the first
// coordinator heard of it. The other coordinator is played by a second
// store on the same SQLite file, which never notifies the first.
func TestNodeUpdateKeepsOthersExpiry(t *testing.T) {
	dsn := filepath.Join(t.TempDir(), "beam.db")
	c := startCoordOn(t, dsn, key.NewMachine())
	n := newNode(t, c.URL)
	resp := n.register(t, c.authKey(t, coordinator.AuthKeyOptions{}), "victim")
	w := watch(t, n)
	w.waitFor("the first map", 10*time.Second, func(nm *wire.NetMap) bool { return nm.Self != nil })

	other, err := sqlstore.Open(t.Context(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	recs, err := other.Nodes(t.Context())
	if err != nil || len(recs) != 1 || recs[0].Node.ID != resp.Node.ID {
		t.Fatalf("Nodes = %v, %v; want the one node", recs, err)
	}
	expired := time.Now().Add(-time.Minute).Truncate(time.Second).UTC()
	recs[0].Node.KeyExpiry = expired
	if err := other.UpdateNodeExpiry(t.Context(), recs[0]); err != nil {
		t.Fatal(err)
	}

	eps := []netip.AddrPort{netip.MustParseAddrPort("192.0.2.7:41641")}
	n.SetEndpoints(eps, 1)
	deadline := time.Now().Add(10 * time.Second)
	for {
		recs, err = other.Nodes(t.Context())
		if err != nil || len(recs) != 1 {
			t.Fatalf("Nodes = %v, %v", recs, err)
		}
		if len(recs[0].Node.Endpoints) > 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond) // polling another process's store
	}
	if got := recs[0].Node.KeyExpiry; !got.Equal(expired) {
		t.Errorf("key expiry after the node's update = %v, want the other coordinator's %v", got, expired)
	}
	if got := recs[0].Node.Endpoints; len(got) != 1 || got[0] != eps[0] {
		t.Errorf("endpoints = %v, want %v", got, eps)
	}
}
