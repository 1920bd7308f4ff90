package coordinator_test

import (
	"errors"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"beam.dev/beam/beamtest/pgtest"
	"beam.dev/beam/coordinator"
	"beam.dev/beam/coordinator/sqlstore"
	"beam.dev/beam/types/key"
)

// TestReplicaSecrets: a coordinator that starts on a database another
// coordinator runs on must hold the same machine key, admin token and
// relay token, or it refuses to start, naming what differs; once no other
// coordinator runs, new secrets replace the stored ones (a rotation).
func TestReplicaSecrets(t *testing.T) {
	pg := pgtest.New(t)
	dsn := pg.NewDatabase(t)
	priv := key.NewMachine()
	first := startCoordOn(t, dsn, priv)
	// Wait for the first's heartbeat: it runs from then on.
	probe, err := sqlstore.Open(t.Context(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	tick := time.NewTicker(20 * time.Millisecond)
	for deadline := time.Now().Add(10 * time.Second); ; <-tick.C {
		n, err := probe.LiveCoordinators(t.Context())
		if err == nil && n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the first coordinator does not beat: %d, %v", n, err)
		}
	}
	tick.Stop()
	probe.Close()

	// newOn builds a coordinator on dsn with these secrets and closes it.
	newOn := func(priv key.MachinePrivate, admin, relay string) error {
		st, err := sqlstore.Open(t.Context(), dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		srv, err := coordinator.New(coordinator.Options{Store: st, PrivateKey: priv, AdminToken: admin, RelayToken: relay})
		if err != nil {
			return err
		}
		srv.Close()
		return nil
	}
	tests := []struct {
		name         string
		priv         key.MachinePrivate
		admin, relay string
		differ       []string
	}{
		{"same", priv, testToken, "", nil},
		{"other machine key", key.NewMachine(), testToken, "", []string{"machine key"}},
		{"other admin token", priv, "another-admin-token-0123456789", "", []string{"admin token"}},
		{"other both", key.NewMachine(), "another-admin-token-0123456789", "", []string{"machine key", "admin token"}},
		{"no admin token given", priv, "", "", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := newOn(tt.priv, tt.admin, tt.relay)
			if tt.differ == nil {
				if err != nil {
					t.Fatalf("New = %v, want a replica", err)
				}
				return
			}
			me, ok := errors.AsType[*coordinator.ReplicaMismatchError](err)
			if !ok {
				t.Fatalf("New = %v, want a ReplicaMismatchError", err)
			}
			if !slices.Equal(me.Differ, tt.differ) {
				t.Errorf("differ = %q, want %q", me.Differ, tt.differ)
			}
			if want := priv.Public().String(); me.MachineKey != want {
				t.Errorf("the running coordinators' key = %q, want %q", me.MachineKey, want)
			}
		})
	}
	// With the relay token set on the first, a replica without the same
	// one is refused too.
	if err := newOn(priv, testToken, "relay-token-0123456789"); err != nil {
		t.Fatalf("a replica setting the relay token first: %v", err)
	}
	if _, ok := errors.AsType[*coordinator.ReplicaMismatchError](newOn(priv, testToken, "other-relay-token-0123456789")); !ok {
		t.Errorf("a replica with another relay token was not refused")
	}
	// The first stops: a coordinator with new secrets may start.
	first.stop()
	if err := newOn(key.NewMachine(), "rotated-admin-token-0123456789", ""); err != nil {
		t.Errorf("New with new secrets, no other coordinator running = %v, want it to start", err)
	}
}

// TestReplicaSecretsSimultaneous: two coordinators with different
// secrets that start in the same instant on an empty database do not
// both start: one claims the database, the other is refused naming what
// differs, every time.
func TestReplicaSecretsSimultaneous(t *testing.T) {
	pg := pgtest.New(t)
	const rounds = 12
	for i := range rounds {
		t.Run(strconv.Itoa(i), func(t *testing.T) {
			dsn := pg.NewSchema(t)
			var stores [2]*sqlstore.Store
			for j := range stores {
				st, err := sqlstore.Open(t.Context(), dsn)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { st.Close() })
				stores[j] = st
			}
			// Both wait for go, then build their coordinators at once.
			var (
				wg   sync.WaitGroup
				errs [2]error
			)
			start := make(chan struct{})
			for j, st := range stores {
				wg.Go(func() {
					<-start
					srv, err := coordinator.New(coordinator.Options{
						Store: st, PrivateKey: key.NewMachine(),
						AdminToken: "admin-token-of-coordinator-" + strconv.Itoa(j),
						RelayToken: "relay-token-of-coordinator-" + strconv.Itoa(j),
					})
					if err == nil {
						t.Cleanup(func() { srv.Close() })
					}
					errs[j] = err
				})
			}
			close(start)
			wg.Wait()
			started := 0
			for _, err := range errs {
				if err == nil {
					started++
					continue
				}
				me, ok := errors.AsType[*coordinator.ReplicaMismatchError](err)
				if !ok {
					t.Fatalf("New = %v, want a ReplicaMismatchError or a start", err)
				}
				if want := []string{"machine key", "admin token", "relay token"}; !slices.Equal(me.Differ, want) {
					t.Errorf("differ = %q, want %q", me.Differ, want)
				}
			}
			if started != 1 {
				t.Fatalf("%d of 2 coordinators with different secrets started at once (errors %v), want 1", started, errs)
			}
		})
	}
}
