package coordinator_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"beam.dev/beam/coordclient"
	"beam.dev/beam/coordinator"
	"beam.dev/beam/coordinator/sqlstore"
)

// failingUpdates is a store whose next UpdateNode fails, as a database
// that drops the connection between two writes of one registration.
type failingUpdates struct {
	*sqlstore.Store
	failNext atomic.Bool
}

func (f *failingUpdates) UpdateNode(ctx context.Context, n *coordinator.NodeRecord) error {
	if f.failNext.Swap(false) {
		return errors.New("connection reset by the database")
	}
	return f.Store.UpdateNode(ctx, n)
}

// TestReauthOneOffKeyWriteFails: a node that authenticates again with a
// one-off key, while a store write after the key's use fails, is renewed
// and keeps its renewal across a restart. Before, the key was spent in
// one write and the renewal stored in later ones: the registration
// failed, and the node's retry found its key already used.
func TestReauthOneOffKeyWriteFails(t *testing.T) {
	var fs *failingUpdates
	c := startCoord(t, func(o *coordinator.Options) {
		fs = &failingUpdates{Store: o.Store.(*sqlstore.Store)}
		o.Store = fs
	})
	first := c.authKey(t, coordinator.AuthKeyOptions{NodeKeyExpiry: time.Hour})
	n := newNode(t, c.URL)
	n.register(t, first, "alpha")

	oneOff := c.authKey(t, coordinator.AuthKeyOptions{NodeKeyExpiry: 48 * time.Hour})
	fs.failNext.Store(true)
	r, err := n.Register(t.Context(), coordclient.RegisterParams{AuthKey: oneOff, Hostname: "alpha", OS: "linux", Reauth: true})
	if err != nil {
		t.Fatalf("re-authentication with a one-off key while a store write fails: %v", err)
	}
	if fs.failNext.Load() {
		t.Fatal("the re-authentication wrote nothing that could fail")
	}
	if until := time.Until(r.Node.KeyExpiry); until < 47*time.Hour {
		t.Errorf("key expiry in %v after re-authentication, want about 48 h", until.Round(time.Minute))
	}

	c.restart()
	recs, err := c.Store.Nodes(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 1 || time.Until(recs[0].Node.KeyExpiry) < 47*time.Hour {
		t.Fatalf("stored after a restart: %d nodes, expiry %v; want one, renewed for 48 h", len(recs), recs[0].Node.KeyExpiry)
	}
	if _, err := newNode(t, c.URL).Register(t.Context(), coordclient.RegisterParams{AuthKey: oneOff, Hostname: "beta", OS: "linux"}); !errors.Is(err, coordclient.ErrAuthKeyInvalid) {
		t.Errorf("the one-off key used again: %v, want it spent", err)
	}
}
