package coordinator_test

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"beam.dev/beam/beamtest/pgtest"
	"beam.dev/beam/coordinator"
	"beam.dev/beam/coordinator/sqlstore"
	"beam.dev/beam/types/key"
)

// heldStore is a store shared with other coordinators whose listener
// holds the changes it hears of until release is closed, so that its
// coordinator's memory lags the store on purpose; it counts the reads of
// every node.
type heldStore struct {
	*sqlstore.Store
	release  chan struct{}
	synced   chan struct{} // closed after the listener's first resync
	once     sync.Once
	allReads atomic.Int32
}

func (h *heldStore) Nodes(ctx context.Context) ([]*coordinator.NodeRecord, error) {
	h.allReads.Add(1)
	return h.Store.Nodes(ctx)
}

func (h *heldStore) ListenNodes(ctx context.Context, resync func(ctx context.Context) error, changed func(ctx context.Context, chs []coordinator.Change) error, failed func(error)) error {
	held := func(ctx context.Context, chs []coordinator.Change) error {
		select {
		case <-h.release:
		case <-ctx.Done():
			return ctx.Err()
		}
		return changed(ctx, chs)
	}
	synced := func(ctx context.Context) error {
		err := resync(ctx)
		if err == nil {
			h.once.Do(func() { close(h.synced) })
		}
		return err
	}
	return h.Store.ListenNodes(ctx, synced, held, failed)
}

// TestRegisterClash: a coordinator whose memory lags the shared store
// (its listener has not applied another coordinator's new nodes yet)
// picks a name and an address the store refuses; it reads the nodes
// that hold them, not every node, and registers the node with others.
func TestRegisterClash(t *testing.T) {
	pg := pgtest.New(t)
	dsn := pg.NewDatabase(t)
	priv := key.NewMachine()
	ca := startCoordOn(t, dsn, priv)
	hb := &heldStore{release: make(chan struct{}), synced: make(chan struct{})}
	defer close(hb.release)
	cb := startCoordWith(t, dsn, priv, func(o *coordinator.Options) {
		hb.Store = o.Store.(*sqlstore.Store)
		o.Store = hb
	})
	ak := ca.authKey(t, coordinator.AuthKeyOptions{Reusable: true})
	select {
	case <-hb.synced:
	case <-time.After(fanoutWait):
		t.Fatal("coordinator B's listener did not resync")
	}
	before := hb.allReads.Load()

	// alpha takes the name "laptop" and the first address through A; B
	// has not heard of it, and picks both for its own "laptop".
	alpha := newNode(t, ca.URL).register(t, ak, "laptop").Node
	bravo := newNode(t, cb.URL).register(t, ak, "laptop").Node
	if alpha.Name != "laptop" || bravo.Name != "laptop-2" {
		t.Errorf("names %q and %q, want laptop and laptop-2", alpha.Name, bravo.Name)
	}
	for _, a := range alpha.Addresses {
		for _, b := range bravo.Addresses {
			if a == b {
				t.Errorf("address %v given to both nodes", a)
			}
		}
	}
	if got := hb.allReads.Load() - before; got != 0 {
		t.Errorf("coordinator B read every node %d times for the clash, want 0", got)
	}
	// B knows alpha from the read, though its listener holds the news.
	nodes, err := cb.Server.Nodes(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	known := false
	for _, n := range nodes {
		known = known || n.Key == alpha.Key
	}
	if !known {
		t.Errorf("coordinator B lists %d nodes without alpha, want alpha among them", len(nodes))
	}

	// A third node on B takes neither address.
	charlie := newNode(t, cb.URL).register(t, ak, "desktop").Node
	for _, c := range charlie.Addresses {
		if slices.Contains(alpha.Addresses, c) || slices.Contains(bravo.Addresses, c) {
			t.Errorf("charlie got %v, which another node holds", c)
		}
	}
}
