package coordinator_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"

	"beam.dev/beam/beamtest/pgtest"
	"beam.dev/beam/coordclient"
	"beam.dev/beam/coordinator"
	"beam.dev/beam/coordinator/sqlstore"
	"beam.dev/beam/types/key"
)

// keyCountingStore counts the auth key reads of a store.
type keyCountingStore struct {
	*sqlstore.Store
	keyReads atomic.Int32
}

func (k *keyCountingStore) AuthKeyByHash(ctx context.Context, hash []byte) (*coordinator.AuthKey, error) {
	k.keyReads.Add(1)
	return k.Store.AuthKeyByHash(ctx, hash)
}

// TestReusableKeyRead: a burst of registrations with one reusable auth
// key reads it from the shared store once, not once each (a round trip
// under the registrations' lock); and a key another coordinator deleted
// admits no one, though this one has not read it again.
func TestReusableKeyRead(t *testing.T) {
	pg := pgtest.New(t)
	dsn := pg.NewDatabase(t)
	priv := key.NewMachine()
	ca := startCoordOn(t, dsn, priv)
	kb := &keyCountingStore{}
	cb := startCoordWith(t, dsn, priv, func(o *coordinator.Options) {
		kb.Store = o.Store.(*sqlstore.Store)
		o.Store = kb
	})
	ak := ca.authKey(t, coordinator.AuthKeyOptions{Reusable: true})
	for i := range 5 {
		newNode(t, cb.URL).register(t, ak, fmt.Sprintf("n%d", i))
	}
	if got := kb.keyReads.Load(); got != 1 {
		t.Errorf("5 registrations with one reusable key read it %d times, want 1", got)
	}

	keys, err := ca.Server.AuthKeys(t.Context())
	if err != nil || len(keys) != 1 {
		t.Fatalf("auth keys = %v, %v; want one", keys, err)
	}
	if err := ca.Server.DeleteAuthKeyAs(t.Context(), "admin", keys[0].Prefix); err != nil {
		t.Fatal(err)
	}
	_, err = newNode(t, cb.URL).Register(t.Context(), coordclient.RegisterParams{AuthKey: ak, Hostname: "late", OS: "linux"})
	if !errors.Is(err, coordclient.ErrAuthKeyInvalid) {
		t.Errorf("registration with a key the other coordinator deleted = %v, want ErrAuthKeyInvalid", err)
	}
	nodes, err := cb.Server.Nodes(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		if n.Name == "late" {
			t.Errorf("node %q registered with a deleted key", n.Name)
		}
	}
}
