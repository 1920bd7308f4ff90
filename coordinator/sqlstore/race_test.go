package sqlstore

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"beam.dev/beam/coordinator"
	"beam.dev/beam/types/key"
)

// racers is how many goroutines race for one thing, half on each store.
const racers = 20

// twoStores opens two stores on one new database of each dialect, as two
// coordinators sharing it would, and runs f with them.
func twoStores(t *testing.T, f func(t *testing.T, a, b *Store)) {
	forEachDialect(t, func(t *testing.T, dsn string) {
		a := openStore(t, dsn)
		b := openStore(t, dsn)
		f(t, a, b)
	})
}

// race runs do(i, store) for i in [0, racers), all at once, alternating
// the stores, and returns how many calls succeeded; it fails t for an
// error that is not want.
func race(t *testing.T, a, b *Store, want error, do func(i int, s *Store) error) int {
	t.Helper()
	var (
		wg    sync.WaitGroup
		start = make(chan struct{})
		mu    sync.Mutex
		ok    int
	)
	for i := range racers {
		s := a
		if i%2 == 1 {
			s = b
		}
		wg.Go(func() {
			<-start
			err := do(i, s)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				ok++
			case !errors.Is(err, want):
				t.Errorf("racer %d: %v, want nil or %v", i, err, want)
			}
		})
	}
	close(start)
	wg.Wait()
	return ok
}

// raceNode is node i of a race: its own key, name and addresses.
func raceNode(networkID int64, i int) *coordinator.NodeRecord {
	return testNode(networkID, fmt.Sprintf("racer%d", i), byte(i+1))
}

// TestTwoCoordinatorsRace races two stores on one database for what two
// coordinators could both hand out: a node name, an overlay address, a
// one-off auth key, a public name and an edge port. Exactly one racer
// wins each.
func TestTwoCoordinatorsRace(t *testing.T) {
	t.Run("Name", func(t *testing.T) {
		twoStores(t, func(t *testing.T, a, b *Store) {
			ctx := t.Context()
			n, _ := a.EnsureNetwork(ctx, "default", "d")
			won := race(t, a, b, coordinator.ErrConflict, func(i int, s *Store) error {
				rec := raceNode(n.ID, i)
				rec.Node.Name = "laptop"
				return s.InsertNode(ctx, rec, time.Now())
			})
			checkWinners(t, b, won, func(r *coordinator.NodeRecord) bool { return r.Node.Name == "laptop" })
		})
	})
	t.Run("Address", func(t *testing.T) {
		twoStores(t, func(t *testing.T, a, b *Store) {
			ctx := t.Context()
			n, _ := a.EnsureNetwork(ctx, "default", "d")
			addr := raceNode(n.ID, 99).Node.Addresses
			won := race(t, a, b, coordinator.ErrConflict, func(i int, s *Store) error {
				rec := raceNode(n.ID, i)
				own := rec.Node.Addresses
				rec.Node.Addresses = []netip.Prefix{addr[0], own[1]}
				if i%4 >= 2 { // half race for the IPv6 address instead
					rec.Node.Addresses = []netip.Prefix{own[0], addr[1]}
				}
				return s.InsertNode(ctx, rec, time.Now())
			})
			// One racer gets the IPv4 address and one the IPv6 address,
			// and no address is stored twice.
			nodes, err := a.Nodes(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if won != 2 || len(nodes) != 2 {
				t.Fatalf("%d inserts succeeded, %d nodes stored; want 2, 2", won, len(nodes))
			}
			seen := map[netip.Prefix]bool{}
			for _, r := range nodes {
				for _, p := range r.Node.Addresses {
					if seen[p] {
						t.Errorf("address %v stored twice", p)
					}
					seen[p] = true
				}
			}
		})
	})
	t.Run("NodeKey", func(t *testing.T) {
		twoStores(t, func(t *testing.T, a, b *Store) {
			ctx := t.Context()
			n, _ := a.EnsureNetwork(ctx, "default", "d")
			k := key.NewNode().Public()
			won := race(t, a, b, coordinator.ErrConflict, func(i int, s *Store) error {
				rec := raceNode(n.ID, i)
				rec.Node.Key = k
				return s.InsertNode(ctx, rec, time.Now())
			})
			checkWinners(t, b, won, func(r *coordinator.NodeRecord) bool { return r.Node.Key == k })
		})
	})
	t.Run("OneOffKeyRegistration", func(t *testing.T) {
		twoStores(t, func(t *testing.T, a, b *Store) {
			ctx := t.Context()
			n, _ := a.EnsureNetwork(ctx, "default", "d")
			k := &coordinator.AuthKey{NetworkID: n.ID, Prefix: "once", Hash: []byte("once")}
			if err := a.CreateAuthKey(ctx, k); err != nil {
				t.Fatal(err)
			}
			won := race(t, a, b, coordinator.ErrAuthKeySpent, func(i int, s *Store) error {
				rec := raceNode(n.ID, i)
				rec.AuthKeyID = k.ID
				return s.InsertNode(ctx, rec, time.Now())
			})
			checkWinners(t, b, won, func(r *coordinator.NodeRecord) bool { return r.AuthKeyID == k.ID })
			if got, _ := b.AuthKeyByHash(ctx, []byte("once")); got == nil || got.UseCount != 1 {
				t.Errorf("key after the race: %+v, want UseCount 1", got)
			}
		})
	})
	t.Run("OneOffKeyConsume", func(t *testing.T) {
		twoStores(t, func(t *testing.T, a, b *Store) {
			ctx := t.Context()
			n, _ := a.EnsureNetwork(ctx, "default", "d")
			k := &coordinator.AuthKey{NetworkID: n.ID, Prefix: "once", Hash: []byte("once")}
			if err := a.CreateAuthKey(ctx, k); err != nil {
				t.Fatal(err)
			}
			won := race(t, a, b, coordinator.ErrAuthKeySpent, func(i int, s *Store) error {
				return s.ConsumeAuthKey(ctx, k.ID, time.Now())
			})
			if won != 1 {
				t.Errorf("%d consumes of a one-off key succeeded, want 1", won)
			}
		})
	})
	t.Run("ReusableKey", func(t *testing.T) {
		twoStores(t, func(t *testing.T, a, b *Store) {
			ctx := t.Context()
			n, _ := a.EnsureNetwork(ctx, "default", "d")
			k := &coordinator.AuthKey{NetworkID: n.ID, Prefix: "many", Hash: []byte("many"), Reusable: true}
			if err := a.CreateAuthKey(ctx, k); err != nil {
				t.Fatal(err)
			}
			won := race(t, a, b, nil, func(i int, s *Store) error {
				rec := raceNode(n.ID, i)
				rec.AuthKeyID = k.ID
				return s.InsertNode(ctx, rec, time.Now())
			})
			got, err := a.AuthKeyByHash(ctx, []byte("many"))
			if won != racers || err != nil || got.UseCount != racers {
				t.Errorf("%d registrations with a reusable key, use count %+v (%v); want %d of each", won, got, err, racers)
			}
		})
	})
	t.Run("Rename", func(t *testing.T) {
		twoStores(t, func(t *testing.T, a, b *Store) {
			ctx := t.Context()
			n, _ := a.EnsureNetwork(ctx, "default", "d")
			ids := make([]*coordinator.NodeRecord, racers)
			for i := range ids {
				ids[i] = raceNode(n.ID, i)
				if err := a.InsertNode(ctx, ids[i], time.Now()); err != nil {
					t.Fatal(err)
				}
			}
			won := race(t, a, b, coordinator.ErrConflict, func(i int, s *Store) error {
				return s.RenameNode(ctx, ids[i].Node.ID, "web")
			})
			checkWinners(t, b, won, func(r *coordinator.NodeRecord) bool { return r.Node.Name == "web" })
		})
	})
	t.Run("PublicName", func(t *testing.T) {
		twoStores(t, func(t *testing.T, a, b *Store) {
			ctx := t.Context()
			n, _ := a.EnsureNetwork(ctx, "default", "d")
			nodes := insertRacers(t, a, n.ID)
			won := race(t, a, b, coordinator.ErrConflict, func(i int, s *Store) error {
				return s.PutRoute(ctx, &coordinator.Route{NetworkID: n.ID, NodeID: nodes[i].Node.ID,
					Host: "app.example.test", Proto: "http", Port: 3000})
			})
			checkRoutes(t, b, won, 1)
		})
	})
	t.Run("PublicNameOtherNetworks", func(t *testing.T) {
		twoStores(t, func(t *testing.T, a, b *Store) {
			ctx := t.Context()
			var nodes []*coordinator.NodeRecord
			for i := range racers {
				n, err := a.EnsureNetwork(ctx, fmt.Sprintf("net%d", i), fmt.Sprintf("net%d.d", i))
				if err != nil {
					t.Fatal(err)
				}
				rec := raceNode(n.ID, i)
				if err := a.InsertNode(ctx, rec, time.Now()); err != nil {
					t.Fatal(err)
				}
				nodes = append(nodes, rec)
			}
			// Pools are per network: pool routes of other networks
			// cannot share a name.
			won := race(t, a, b, coordinator.ErrConflict, func(i int, s *Store) error {
				return s.PutRoute(ctx, &coordinator.Route{NetworkID: nodes[i].NetworkID, NodeID: nodes[i].Node.ID,
					Host: "shop.example.test", Proto: "http", Port: 3000, Pool: true, CustomDomain: true})
			})
			checkRoutes(t, b, won, 1)
		})
	})
	t.Run("Pool", func(t *testing.T) {
		twoStores(t, func(t *testing.T, a, b *Store) {
			ctx := t.Context()
			n, _ := a.EnsureNetwork(ctx, "default", "d")
			nodes := insertRacers(t, a, n.ID)
			won := race(t, a, b, nil, func(i int, s *Store) error {
				return s.PutRoute(ctx, &coordinator.Route{NetworkID: n.ID, NodeID: nodes[i].Node.ID,
					Host: "pool.example.test", Proto: "tcp", PublicPort: 20000, Port: 3000, Pool: true})
			})
			checkRoutes(t, b, won, racers)
			// A node that did not ask for the pool cannot join it.
			other := raceNode(n.ID, racers)
			if err := a.InsertNode(ctx, other, time.Now()); err != nil {
				t.Fatal(err)
			}
			err := b.PutRoute(ctx, &coordinator.Route{NetworkID: n.ID, NodeID: other.Node.ID,
				Host: "pool.example.test", Proto: "tcp", PublicPort: 20000, Port: 3000})
			if !errors.Is(err, coordinator.ErrConflict) {
				t.Errorf("a route outside the pool on its name: %v, want ErrConflict", err)
			}
		})
	})
	t.Run("EdgePort", func(t *testing.T) {
		twoStores(t, func(t *testing.T, a, b *Store) {
			ctx := t.Context()
			n, _ := a.EnsureNetwork(ctx, "default", "d")
			nodes := insertRacers(t, a, n.ID)
			won := race(t, a, b, coordinator.ErrConflict, func(i int, s *Store) error {
				return s.PutRoute(ctx, &coordinator.Route{NetworkID: n.ID, NodeID: nodes[i].Node.ID,
					Host: fmt.Sprintf("db%d.example.test", i), Proto: "tcp", PublicPort: 20001, Port: 5432})
			})
			checkRoutes(t, b, won, 1)
			// The same port of the other protocol is another port.
			err := a.PutRoute(ctx, &coordinator.Route{NetworkID: n.ID, NodeID: nodes[0].Node.ID,
				Host: "dns.example.test", Proto: "udp", PublicPort: 20001, Port: 53})
			if err != nil {
				t.Errorf("udp route on a port a tcp route holds: %v", err)
			}
		})
	})
	t.Run("Migrations", func(t *testing.T) {
		// Coordinators starting at once on an empty database.
		forEachDialect(t, func(t *testing.T, dsn string) {
			var wg sync.WaitGroup
			for i := range 4 {
				wg.Go(func() {
					s, err := Open(t.Context(), dsn)
					if err != nil {
						t.Errorf("Open %d: %v", i, err)
						return
					}
					s.Close()
				})
			}
			wg.Wait()
			s := openStore(t, dsn)
			var n int
			if err := s.db.QueryRowContext(t.Context(), `SELECT COUNT(*) FROM schema_migrations`).Scan(&n); err != nil {
				t.Fatal(err)
			}
			migs, err := migrations(s.d.name)
			if err != nil || n != len(migs) {
				t.Errorf("%d migrations recorded, want %d (%v)", n, len(migs), err)
			}
		})
	})
}

// insertRacers stores one node per racer.
func insertRacers(t *testing.T, s *Store, networkID int64) []*coordinator.NodeRecord {
	t.Helper()
	var out []*coordinator.NodeRecord
	for i := range racers {
		rec := raceNode(networkID, i)
		if err := s.InsertNode(t.Context(), rec, time.Now()); err != nil {
			t.Fatal(err)
		}
		out = append(out, rec)
	}
	return out
}

// checkWinners checks that exactly one racer won and that s holds exactly
// one node that is.
func checkWinners(t *testing.T, s *Store, won int, is func(*coordinator.NodeRecord) bool) {
	t.Helper()
	nodes, err := s.Nodes(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, r := range nodes {
		if is(r) {
			n++
		}
	}
	if won != 1 || n != 1 {
		t.Errorf("%d racers won, %d such nodes stored; want 1, 1", won, n)
	}
}

// checkRoutes checks that want racers won and s holds as many routes.
func checkRoutes(t *testing.T, s *Store, won, want int) {
	t.Helper()
	routes, err := s.Routes(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if won != want || len(routes) != want {
		t.Errorf("%d racers won, %d routes stored; want %d, %d", won, len(routes), want, want)
	}
}
