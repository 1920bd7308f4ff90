package coordinator_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"beam.dev/beam/beamtest/pgtest"
	"beam.dev/beam/coordclient"
	"beam.dev/beam/coordinator"
	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// startCoordOn starts a coordinator with machine key priv on the database dsn.
func startCoordOn(t testing.TB, dsn string, priv key.MachinePrivate) *coord {
	t.Helper()
	c := &coord{t: t, dsn: dsn, priv: priv, addr: "127.0.0.1:0"}
	c.start()
	t.Cleanup(c.stop)
	return c
}

// fanoutWait bounds how long a change takes to reach another
// coordinator's streams: a notification, a read and a delta, well under
// a second when measured on a loaded machine.
const fanoutWait = 15 * time.Second

// TestSeveralCoordinators runs two coordinators on one PostgreSQL
// database, as replicas behind one name (one machine key).
func TestSeveralCoordinators(t *testing.T) {
	pg := pgtest.New(t)
	priv := key.NewMachine()

	t.Run("RegistrationRace", func(t *testing.T) {
		dsn := pg.NewDatabase(t)
		cs := []*coord{startCoordOn(t, dsn, priv), startCoordOn(t, dsn, priv)}
		ak := cs[0].authKey(t, coordinator.AuthKeyOptions{Reusable: true})
		const perCoord = 6
		var (
			wg    sync.WaitGroup
			mu    sync.Mutex
			nodes []*wire.Node
		)
		for i := range 2 * perCoord {
			c := cs[i%2]
			n := newNode(t, c.URL)
			wg.Go(func() {
				resp := n.register(t, ak, "racer")
				mu.Lock()
				nodes = append(nodes, resp.Node)
				mu.Unlock()
			})
		}
		wg.Wait()
		if t.Failed() {
			return
		}
		names := make(map[string]bool)
		addrs := make(map[netip.Prefix]bool)
		for _, n := range nodes {
			if names[n.Name] {
				t.Errorf("name %q given twice", n.Name)
			}
			names[n.Name] = true
			for _, a := range n.Addresses {
				if addrs[a] {
					t.Errorf("address %v given twice", a)
				}
				addrs[a] = true
			}
		}
		if got, want := len(names), 2*perCoord; got != want {
			t.Errorf("got %d distinct names, want %d", got, want)
		}
		// Both coordinators list every node.
		for i, c := range cs {
			all, err := c.Server.Nodes(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			if len(all) < 2*perCoord && !waitNodes(t, c, 2*perCoord) {
				t.Errorf("coordinator %d lists %d nodes, want %d", i, len(all), 2*perCoord)
			}
		}
	})

	t.Run("FanOut", func(t *testing.T) {
		dsn := pg.NewDatabase(t)
		ca, cb := startCoordOn(t, dsn, priv), startCoordOn(t, dsn, priv)
		ak := ca.authKey(t, coordinator.AuthKeyOptions{Reusable: true})
		a, b := newNode(t, ca.URL), newNode(t, cb.URL)
		a.register(t, ak, "alpha")
		b.register(t, ak, "bravo")
		wa, wb := watch(t, a), watch(t, b)
		online := func(name string) func(*wire.NetMap) bool {
			return func(nm *wire.NetMap) bool {
				p := peerNamed(nm, name)
				return p != nil && p.Online
			}
		}
		wa.waitFor("alpha sees bravo online (bravo streams on the other coordinator)", fanoutWait, online("bravo"))
		wb.waitFor("bravo sees alpha online", fanoutWait, online("alpha"))

		if _, err := ca.Server.RenameNode(t.Context(), "alpha", "alpha-renamed"); err != nil {
			t.Fatal(err)
		}
		wb.waitFor("bravo sees the rename made on alpha's coordinator", fanoutWait, func(nm *wire.NetMap) bool {
			return peerNamed(nm, "alpha-renamed") != nil && peerNamed(nm, "alpha") == nil
		})

		wb.stop()
		wa.waitFor("alpha sees bravo offline", fanoutWait, func(nm *wire.NetMap) bool {
			p := peerNamed(nm, "bravo")
			return p != nil && !p.Online
		})

		c := newNode(t, cb.URL)
		c.register(t, ak, "charlie")
		wa.waitFor("alpha sees charlie, registered on the other coordinator", fanoutWait, func(nm *wire.NetMap) bool {
			return peerNamed(nm, "charlie") != nil
		})
		if err := cb.Server.RemoveNode(t.Context(), "charlie"); err != nil {
			t.Fatal(err)
		}
		wa.waitFor("alpha sees charlie removed", fanoutWait, func(nm *wire.NetMap) bool {
			return peerNamed(nm, "charlie") == nil
		})
		// A node removed on the other coordinator loses its stream here.
		if err := cb.Server.RemoveNode(t.Context(), "alpha-renamed"); err != nil {
			t.Fatal(err)
		}
		if err := wa.waitErr(fanoutWait); !errors.Is(err, coordclient.ErrNodeRemoved) {
			t.Errorf("alpha's Run after removal on the other coordinator = %v, want ErrNodeRemoved", err)
		}
	})

	t.Run("NetworksAndShutdown", func(t *testing.T) { networksAndShutdown(t, pg, priv) })

	// Behind a load balancer a node may register through one coordinator
	// and ask another for its map at once, before the other has heard of
	// it: the other reads it from the store.
	t.Run("MapOnAnother", func(t *testing.T) {
		dsn := pg.NewDatabase(t)
		ca, cb := startCoordOn(t, dsn, priv), startCoordOn(t, dsn, priv)
		ak := ca.authKey(t, coordinator.AuthKeyOptions{Reusable: true})
		for i := range 5 {
			n := newNode(t, ca.URL)
			name := fmt.Sprintf("hop%d", i)
			n.register(t, ak, name)
			cl, err := coordclient.New(coordclient.Options{ServerURL: cb.URL, PrivateKey: n.priv, DiscoKey: key.NewDisco().Public()})
			if err != nil {
				t.Fatal(err)
			}
			w := watch(t, &node{priv: n.priv, Client: cl})
			w.waitFor(name+"'s map from the other coordinator", fanoutWait, func(nm *wire.NetMap) bool {
				return nm.Self != nil && nm.Self.Name == name
			})
			w.stop()
		}
	})
}

// networksAndShutdown: a node registers on one coordinator into a network
// created on the other, and a coordinator that stops leaves its nodes
// online for the other for the online grace (it asked them to come back),
// then offline if they did not.
func networksAndShutdown(t *testing.T, pg *pgtest.Server, priv key.MachinePrivate) {
	defer coordinator.SetOnlineGraceForTest(graceForTest)()
	dsn := pg.NewDatabase(t)
	ca, cb := startCoordOn(t, dsn, priv), startCoordOn(t, dsn, priv)
	// The network is created on ca; cb learns of it from the store.
	ak := ca.authKey(t, coordinator.AuthKeyOptions{Network: "other", Reusable: true})
	x, y := newNode(t, cb.URL), newNode(t, ca.URL)
	if got := x.register(t, ak, "xray").Node.DNSName; got != "xray.other.beam.internal." {
		t.Errorf("xray registered on the other coordinator as %q, want xray.other.beam.internal.", got)
	}
	y.register(t, ak, "yankee")
	watch(t, x)
	wy := watch(t, y)
	wy.waitFor("yankee sees xray online", fanoutWait, func(nm *wire.NetMap) bool {
		p := peerNamed(nm, "xray")
		return p != nil && p.Online
	})
	// Both coordinators stall (or the database is out of reach) for
	// longer than the unknown timeout: whichever beats first takes no one
	// for dead until the other has had time to beat too, so neither's
	// stream states are dropped and both beat again.
	conn, err := pgx.Connect(t.Context(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	// First each coordinator beats once after its start: a coordinator's
	// first heartbeat rightly takes others' hour-old beats for dead ones
	// (the beat its secrets claim recorded at start is not one).
	var origins []string
	var startBeats []int64
	rows, err := conn.Query(t.Context(), `SELECT origin, beat FROM coordinator_beats`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var origin string
		var beat int64
		if err := rows.Scan(&origin, &beat); err != nil {
			t.Fatal(err)
		}
		origins, startBeats = append(origins, origin), append(startBeats, beat)
	}
	if rows.Close(); rows.Err() != nil || len(origins) != 2 {
		t.Fatalf("beats at start: %v, %v; want two", origins, rows.Err())
	}
	beatDeadline := time.Now().Add(fanoutWait)
	for {
		var again int
		if err := conn.QueryRow(t.Context(), `SELECT COUNT(*) FROM coordinator_beats WHERE
			(origin = $1 AND beat > $2) OR (origin = $3 AND beat > $4)`, origins[0], startBeats[0], origins[1], startBeats[1]).Scan(&again); err != nil {
			t.Fatal(err)
		}
		if again == 2 {
			break
		}
		if time.Now().After(beatDeadline) {
			t.Fatalf("%d of 2 coordinators beat after their start within %v", again, fanoutWait)
		}
		tick := time.NewTimer(50 * time.Millisecond)
		<-tick.C
	}
	// The beats age in a transaction that locks their table first: a
	// heartbeat already under way (it read its own beat as fresh) ends
	// before they age, and later ones see them aged. Aged under a
	// heartbeat that had read its beat fresh, the other's beat looked an
	// hour old to a coordinator that had not stalled, which then rightly
	// took the other for gone.
	aged := time.Now().UnixNano()
	tx, err := conn.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(t.Context(), `LOCK TABLE coordinator_beats IN ACCESS EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(t.Context(), `UPDATE coordinator_beats SET beat = beat - 3600000000000`); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(fanoutWait)
	for {
		var n, beats int
		if err := conn.QueryRow(t.Context(), `SELECT (SELECT COUNT(*) FROM node_online),
			(SELECT COUNT(*) FROM coordinator_beats WHERE beat > $1)`, aged).Scan(&n, &beats); err != nil {
			t.Fatal(err)
		}
		if n != 2 {
			t.Fatalf("after a stall: %d stream states, want both kept", n)
		}
		if beats == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after a stall: %d coordinators beat again, want 2", beats)
		}
		tick := time.NewTimer(100 * time.Millisecond)
		<-tick.C
	}
	wy.waitFor("yankee sees xray online after the stall", fanoutWait, func(nm *wire.NetMap) bool {
		p := peerNamed(nm, "xray")
		return p != nil && p.Online
	})

	// A coordinator that shuts down leaves its nodes online for the
	// grace (xray keeps trying its URL, never another), then offline.
	stopped := time.Now()
	cb.stop()
	nm := wy.waitFor("yankee sees xray offline once the grace after its coordinator stopped is over", fanoutWait+graceForTest, func(nm *wire.NetMap) bool {
		p := peerNamed(nm, "xray")
		return p != nil && !p.Online
	})
	if took := time.Since(stopped); took < graceForTest {
		t.Errorf("xray offline %v after its coordinator stopped, before the grace of %v", took, graceForTest)
	}
	if p := peerNamed(nm, "xray"); p.Unknown {
		t.Error("xray unknown after the grace, want offline")
	}
}

// waitNodes waits until c lists n nodes, reporting whether it did.
func waitNodes(t *testing.T, c *coord, n int) bool {
	deadline := time.Now().Add(fanoutWait)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for time.Now().Before(deadline) {
		all, err := c.Server.Nodes(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if len(all) >= n {
			return true
		}
		<-tick.C
	}
	return false
}

// startCoordWith is startCoordOn with options adjusted by mod.
func startCoordWith(t testing.TB, dsn string, priv key.MachinePrivate, mod func(*coordinator.Options)) *coord {
	t.Helper()
	c := &coord{t: t, dsn: dsn, priv: priv, mod: mod, addr: "127.0.0.1:0"}
	c.start()
	t.Cleanup(c.stop)
	return c
}

// TestSharedState: what one coordinator changes besides nodes (the
// policy, DNS settings, edge routes and custom domains) reaches the
// streams and the memory of another on the same database.
func TestSharedState(t *testing.T) {
	pg := pgtest.New(t)
	dsn := pg.NewDatabase(t)
	priv := key.NewMachine()
	mod := func(o *coordinator.Options) {
		edgeOpts("20000-20009", "")(o)
		o.LookupTXT = func(ctx context.Context, name string) ([]string, error) {
			if name == coordinator.ChallengePrefix+"shop.customer.test" {
				return []string{"any"}, nil // refused: not the token
			}
			return nil, errors.New("no such name")
		}
	}
	ca, cb := startCoordWith(t, dsn, priv, mod), startCoordWith(t, dsn, priv, mod)
	ak := ca.authKey(t, coordinator.AuthKeyOptions{Reusable: true})
	a, b := newNode(t, ca.URL), newNode(t, cb.URL)
	a.register(t, ak, "alpha")
	b.register(t, ak, "bravo")
	edge := newNode(t, ca.URL)
	edge.register(t, ca.authKey(t, coordinator.AuthKeyOptions{Edge: true}), "edge")
	wb, we := watch(t, b), watch(t, edge)
	wb.waitFor("bravo sees alpha", fanoutWait, func(nm *wire.NetMap) bool { return peerNamed(nm, "alpha") != nil })

	t.Run("Policy", func(t *testing.T) {
		start := time.Now()
		if err := ca.Server.SetPolicy(t.Context(), []byte(`{"acls": []}`)); err != nil {
			t.Fatal(err)
		}
		wb.waitFor("bravo, on the other coordinator, loses alpha under a policy that admits nothing", fanoutWait, func(nm *wire.NetMap) bool {
			return peerNamed(nm, "alpha") == nil
		})
		t.Logf("policy reached the other coordinator's stream in %v", time.Since(start).Round(time.Millisecond))
		if got, want := string(cb.Server.Policy()), `{"acls": []}`; got != want {
			t.Errorf("policy on the other coordinator = %q, want %q", got, want)
		}
		allow := `{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}], "expose": [{"src": ["*"], "names": ["*"]}], "peerRelays": ["*"]}`
		if err := ca.Server.SetPolicy(t.Context(), []byte(allow)); err != nil {
			t.Fatal(err)
		}
		wb.waitFor("bravo sees alpha again", fanoutWait, func(nm *wire.NetMap) bool { return peerNamed(nm, "alpha") != nil })
	})

	t.Run("DNS", func(t *testing.T) {
		ns := netip.MustParseAddrPort("192.0.2.53:53")
		if err := ca.Server.SetDNSSettings(t.Context(), &wire.DNSSettings{Nameservers: []netip.AddrPort{ns}}); err != nil {
			t.Fatal(err)
		}
		wb.waitFor("bravo gets the nameserver set on the other coordinator", fanoutWait, func(nm *wire.NetMap) bool {
			return nm.DNS != nil && len(nm.DNS.Nameservers) == 1 && nm.DNS.Nameservers[0] == ns
		})
		if got := cb.Server.DNSSettings().Nameservers; len(got) != 1 || got[0] != ns {
			t.Errorf("DNS nameservers on the other coordinator = %v, want [%v]", got, ns)
		}
	})

	t.Run("Routes", func(t *testing.T) {
		// bravo exposes through cb; the edge streams from ca.
		resp := expose(t, b, wire.ExposeRequest{Proto: "tcp", Port: 5432})
		host := resp.Route.Host
		we.waitFor("the edge on the other coordinator gets bravo's route", fanoutWait, func(nm *wire.NetMap) bool {
			return slices.ContainsFunc(nm.EdgeRoutes, func(r wire.EdgeRoute) bool { return r.Host == host && r.Proto == "tcp" })
		})
		if rs := ca.Server.Routes(t.Context()); len(rs) != 1 || rs[0].Host != host || rs[0].PublicPort != resp.Route.PublicPort {
			t.Errorf("routes on the other coordinator = %+v, want %s port %d", rs, host, resp.Route.PublicPort)
		}
		// alpha, on ca, is given the next free edge port, not bravo's.
		ra := expose(t, a, wire.ExposeRequest{Proto: "tcp", Port: 5432})
		if ra.Route.PublicPort == resp.Route.PublicPort {
			t.Errorf("alpha got bravo's edge port %d", ra.Route.PublicPort)
		}
		if err := ca.Server.RemoveRoutes(t.Context(), host); err != nil {
			t.Fatal(err)
		}
		we.waitFor("the edge loses bravo's route, removed on its own coordinator", fanoutWait, func(nm *wire.NetMap) bool {
			return !slices.ContainsFunc(nm.EdgeRoutes, func(r wire.EdgeRoute) bool { return r.Host == host })
		})
		wb.waitFor("bravo's own routes, removed on the other coordinator, are gone", fanoutWait, func(nm *wire.NetMap) bool {
			return !slices.ContainsFunc(nm.EdgeRoutes, func(r wire.EdgeRoute) bool { return r.Host == host })
		})
		if rs := cb.Server.Routes(t.Context()); len(rs) != 1 || rs[0].Host != ra.Route.Host {
			t.Errorf("routes on bravo's coordinator = %+v, want alpha's %s only", rs, ra.Route.Host)
		}
	})

	t.Run("PeerRelay", func(t *testing.T) {
		// A node offering a peer relay streams from cb; alpha, on ca,
		// gets the offer in its peer.
		priv := key.NewNode()
		cl, err := coordclient.New(coordclient.Options{ServerURL: cb.URL, PrivateKey: priv, DiscoKey: key.NewDisco().Public(), PeerRelay: 41700})
		if err != nil {
			t.Fatal(err)
		}
		relay := &node{priv: priv, Client: cl}
		relay.register(t, ak, "relay")
		watch(t, relay)
		wa := watch(t, a)
		wa.waitFor("alpha sees the relay offer of a node streaming from the other coordinator", fanoutWait, func(nm *wire.NetMap) bool {
			p := peerNamed(nm, "relay")
			return p != nil && p.Online && p.PeerRelay == 41700
		})
		wa.stop()
	})

	t.Run("Replay", func(t *testing.T) {
		// alpha's endpoint update, sent to ca, is refused when replayed
		// to cb, and to ca again: a node's of this version for its boot
		// epoch on cb (and recorded only in ca's memory), an older node's
		// (no epoch) as seen in the store.
		for _, tc := range []struct {
			name     string
			version  int
			epoch    []byte
			wantAtCB wire.ErrorCode
		}{
			{"current", wire.CapabilityVersion, ca.epoch(t), wire.CodeStaleEpoch},
			{"before boot epochs", wire.BootEpochVersion - 1, nil, wire.CodeReplay},
		} {
			req := sealEnvelope(t, a.priv.Public(), a.priv, priv.Public(), wire.MapRequest{
				Version: tc.version, NodeKey: a.priv.Public(), DiscoKey: key.NewDisco().Public(),
				Endpoints: []netip.AddrPort{netip.MustParseAddrPort("192.0.2.7:41641")}, Epoch: tc.epoch, Timestamp: time.Now(),
			})
			if st, eb, _ := rawPost(t, ca.URL, wire.PathMap, req); st != http.StatusOK {
				t.Fatalf("%s: genuine map request: %d %+v", tc.name, st, eb)
			}
			for _, c := range []*coord{cb, ca} {
				want := wire.CodeReplay
				if c == cb {
					want = tc.wantAtCB
				}
				if st, eb, _ := rawPost(t, c.URL, wire.PathMap, req); st != http.StatusUnauthorized || eb.Code != want {
					t.Errorf("%s: replay to %s: %d %q, want 401 %s", tc.name, c.URL, st, eb.Code, want)
				}
			}
		}
	})

	t.Run("Approval", func(t *testing.T) {
		// A node without an auth key waits on cb; an admin of ca lists
		// its code and approves it; the node is registered.
		code, done := waitForApproval(t, cb, ca, "waiter")
		start := time.Now()
		if err := ca.Server.ApproveRegistration(t.Context(), code, coordinator.Approval{}); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("register after approval on the other coordinator: %v", err)
			}
			t.Logf("approval on one coordinator released the node waiting on the other in %v", time.Since(start).Round(time.Millisecond))
		case <-time.After(fanoutWait):
			t.Fatal("the node waiting on the other coordinator was not released by the approval")
		}
		if err := ca.Server.ApproveRegistration(t.Context(), code, coordinator.Approval{}); !errors.Is(err, coordinator.ErrNotFound) && !errors.Is(err, coordinator.ErrConflict) {
			t.Errorf("second approval = %v, want ErrNotFound or ErrConflict", err)
		}
		if !waitNodes(t, ca, 5) { // alpha, bravo, edge, relay, waiter
			t.Errorf("the other coordinator does not list the approved node")
		}
	})

	t.Run("ApprovalReleasedFirst", func(t *testing.T) {
		// The coordinator holding the followup releases it, registers
		// the node and drops the code everywhere before the approving
		// one gets back to its own copy: the approval still succeeded.
		code, done := waitForApproval(t, cb, ca, "waiter2")
		listed := func() bool { return pendingListed(ca, code) }
		defer coordinator.SetApprovalHookForTest(func(string) {
			deadline := time.Now().Add(fanoutWait)
			for listed() && time.Now().Before(deadline) {
				tick := time.NewTimer(20 * time.Millisecond)
				<-tick.C
			}
		})()
		if err := ca.Server.ApproveRegistration(t.Context(), code, coordinator.Approval{}); err != nil {
			t.Fatalf("approval whose node the other coordinator released first: %v", err)
		}
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("register after approval: %v", err)
			}
		case <-time.After(fanoutWait):
			t.Fatal("the node waiting on the other coordinator was not released")
		}
		if listed() {
			t.Error("the code is still listed after its node registered")
		}
	})

	t.Run("Domains", func(t *testing.T) {
		st, err := ca.Server.VerifyDomain(t.Context(), "", "shop.customer.test")
		if err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(fanoutWait)
		for {
			ds := cb.Server.Domains(t.Context())
			if len(ds) == 1 && ds[0].Token == st.Token {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("domains on the other coordinator = %+v, want the claim on shop.customer.test with token %s", ds, st.Token)
			}
			tick := time.NewTimer(20 * time.Millisecond)
			<-tick.C
		}
	})

	t.Run("UserGroups", func(t *testing.T) {
		// ann's node streams from ca; a policy admits group:eng, of
		// which ann becomes a member by a sign-in on ca: bravo, on cb,
		// then sees her node.
		if _, err := ca.Server.CreateUser(t.Context(), "ann"); err != nil {
			t.Fatal(err)
		}
		an := newNode(t, ca.URL)
		an.register(t, ca.authKey(t, coordinator.AuthKeyOptions{User: "ann"}), "anna")
		watch(t, an)
		if err := ca.Server.SetPolicy(t.Context(), []byte(`{"groups": {"group:eng": []}, "acls": [{"action": "accept", "src": ["group:eng"], "dst": ["*:*"]}]}`)); err != nil {
			t.Fatal(err)
		}
		wb.waitFor("bravo does not see anna, in no group yet", fanoutWait, func(nm *wire.NetMap) bool {
			return peerNamed(nm, "anna") == nil && peerNamed(nm, "alpha") == nil
		})
		if err := ca.Server.SetUserGroups(t.Context(), "ann", []string{"group:eng"}); err != nil {
			t.Fatal(err)
		}
		wb.waitFor("bravo sees anna once her group, set on the other coordinator, admits her", fanoutWait, func(nm *wire.NetMap) bool {
			return peerNamed(nm, "anna") != nil
		})
		if err := ca.Server.SetPolicy(t.Context(), []byte(`{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}`)); err != nil {
			t.Fatal(err)
		}
		wb.waitFor("bravo sees alpha again", fanoutWait, func(nm *wire.NetMap) bool { return peerNamed(nm, "alpha") != nil })
	})

	// Changes the listeners never hear of (written with triggers off)
	// are picked up when the listeners reconnect: each resyncs the
	// policy, DNS settings, routes and pending registrations.
	t.Run("Resync", func(t *testing.T) {
		conn, err := pgx.Connect(t.Context(), dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(context.Background())
		exec := func(sql string, args ...any) {
			t.Helper()
			if _, err := conn.Exec(t.Context(), sql, args...); err != nil {
				t.Fatalf("%s: %v", sql, err)
			}
		}
		exec(`SET session_replication_role = replica`) // no triggers: no notifications
		exec(`UPDATE settings SET value = $1 WHERE name = 'policy_hujson'`, []byte(`{"acls": []}`))
		exec(`UPDATE settings SET value = $1 WHERE name = 'dns_config'`, []byte(`{}`))
		exec(`DELETE FROM routes`)
		now := time.Now()
		exec(`INSERT INTO pending_registrations (code, node_key, created_at, expires_at) VALUES ('RESYNC23', $1, $2, $3)`,
			key.NewNode().Public().String(), now.UnixNano(), now.Add(time.Minute).UnixNano())
		exec(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND query LIKE 'LISTEN %'`)
		wb.waitFor("bravo loses alpha under the policy written while unheard", fanoutWait, func(nm *wire.NetMap) bool { return peerNamed(nm, "alpha") == nil })
		wb.waitFor("bravo's nameservers go", fanoutWait, func(nm *wire.NetMap) bool { return nm.DNS != nil && len(nm.DNS.Nameservers) == 0 })
		we.waitFor("the edge's routes go", fanoutWait, func(nm *wire.NetMap) bool { return len(nm.EdgeRoutes) == 0 })
		for _, c := range []*coord{ca, cb} {
			deadline := time.Now().Add(fanoutWait)
			for !slices.ContainsFunc(c.Server.PendingRegistrations(), func(p wire.PendingRegistration) bool { return p.Code == "RESYNC23" }) {
				if time.Now().After(deadline) {
					t.Fatalf("coordinator at %s lists %+v after its resync, want RESYNC23", c.URL, c.Server.PendingRegistrations())
				}
				tick := time.NewTimer(20 * time.Millisecond)
				<-tick.C
			}
		}
	})
}

// waitForApproval registers a node named hostname on on without an auth
// key, and returns its approval code, once lister lists it, and a channel
// that gets the registration's result.
func waitForApproval(t *testing.T, on, lister *coord, hostname string) (string, <-chan error) {
	t.Helper()
	codes := make(chan string, 1)
	done := make(chan error, 1)
	waiter := newNode(t, on.URL)
	go func() {
		_, err := waiter.Register(t.Context(), coordclient.RegisterParams{Hostname: hostname, OnAuthURL: func(_, code string) { codes <- code }})
		done <- err
	}()
	var code string
	select {
	case code = <-codes:
	case err := <-done:
		t.Fatalf("register returned %v before an auth code", err)
	case <-time.After(fanoutWait):
		t.Fatal("no auth code")
	}
	deadline := time.Now().Add(fanoutWait)
	for !pendingListed(lister, code) {
		if time.Now().After(deadline) {
			t.Fatalf("the other coordinator lists %+v, want code %s", lister.Server.PendingRegistrations(), code)
		}
		tick := time.NewTimer(20 * time.Millisecond)
		<-tick.C
	}
	return code, done
}

// pendingListed reports whether c lists a registration waiting with code.
func pendingListed(c *coord, code string) bool {
	return slices.ContainsFunc(c.Server.PendingRegistrations(), func(p wire.PendingRegistration) bool { return p.Code == code })
}
