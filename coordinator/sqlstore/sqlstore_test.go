package sqlstore

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"beam.dev/beam/coordinator"
	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// cmpOpts compares times by instant and keys and addresses by value.
var cmpOpts = cmp.Options{
	cmp.Comparer(func(a, b time.Time) bool { return a.Equal(b) }),
	cmp.Comparer(func(a, b key.NodePublic) bool { return a == b }),
	cmp.Comparer(func(a, b key.DiscoPublic) bool { return a == b }),
	cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }),
	cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b }),
}

// opener opens a fresh, empty store for one test.
type opener func(t *testing.T) *Store

func TestSQLiteMemory(t *testing.T) {
	runStoreSuite(t, func(t *testing.T) *Store {
		s, err := Open(t.Context(), ":memory:")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	})
}

func TestSQLiteFile(t *testing.T) {
	runStoreSuite(t, func(t *testing.T) *Store {
		s, err := Open(t.Context(), filepath.Join(t.TempDir(), "c.db"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	})
}

func TestPostgres(t *testing.T) {
	runStoreSuite(t, func(t *testing.T) *Store { return openStore(t, pg.NewSchema(t)) })
}

func TestReopenKeepsData(t *testing.T) {
	forEachDialect(t, func(t *testing.T, dsn string) {
		ctx := t.Context()
		s, err := Open(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		n, _ := s.EnsureNetwork(ctx, "default", "default.beam.internal")
		rec := testNode(n.ID, "one", 1)
		if err := s.InsertNode(ctx, rec, time.Now()); err != nil {
			t.Fatal(err)
		}
		s.Close()
		s = openStore(t, dsn) // migrations run again and must be no-ops
		nodes, err := s.Nodes(ctx)
		if err != nil || len(nodes) != 1 {
			t.Fatalf("Nodes after reopen = %v, %v", nodes, err)
		}
		if diff := cmp.Diff(rec, nodes[0], cmpOpts); diff != "" {
			t.Errorf("node after reopen (-want +got):\n%s", diff)
		}
	})
}

// TestOpenPostgresErrors checks that a PostgreSQL URL that does not
// parse, or names no reachable server or database, fails Open with an
// error that says so and does not contain the password.
func TestOpenPostgresErrors(t *testing.T) {
	const pw, sslpw = "s3cret-Pw", "k3y-Pw"
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedPort := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	srv := pg.Server(t)
	for _, tc := range []struct {
		name, dsn, want string
	}{
		{"malformed", "postgres://beam:" + pw + "@[::1/db", "parse PostgreSQL URL"},
		{"bad port", "postgres://beam:" + pw + "@127.0.0.1:99999/db", "parse PostgreSQL URL"},
		{"bad option", "postgresql://beam:" + pw + "@127.0.0.1/db?sslmode=sometimes", "parse PostgreSQL URL"},
		{"refused", fmt.Sprintf("postgres://beam:%s@127.0.0.1:%d/db?sslmode=disable", pw, closedPort), "connect to PostgreSQL at 127.0.0.1:"},
		{"both passwords", "postgresql://beam:" + pw + "@127.0.0.1/db?sslpassword=" + sslpw + "&sslmode=sometimes", "parse PostgreSQL URL"},
		{"password parameter", fmt.Sprintf("postgres://beam@127.0.0.1:%d/db?password=%s&sslmode=disable", closedPort, pw), "connect to PostgreSQL at 127.0.0.1:"},
		{"no server on socket", "postgres://beam:" + pw + "@/db?host=" + t.TempDir(), "connect to PostgreSQL at /"},
		{"no database", strings.Replace(srv.DSN("nosuch"), "beam@", "beam:"+pw+"@", 1), `database "nosuch" does not exist`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := Open(t.Context(), tc.dsn)
			if err == nil {
				s.Close()
				t.Fatalf("Open(%s) succeeded", tc.name)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not contain %q", err, tc.want)
			}
			if strings.Contains(err.Error(), pw) || strings.Contains(err.Error(), sslpw) {
				t.Errorf("error %q contains a password", err)
			}
		})
	}
}

func testNode(networkID int64, name string, i byte) *coordinator.NodeRecord {
	v4 := netip.AddrFrom4([4]byte{100, 64, 0, i})
	v6 := netip.AddrFrom16([16]byte{0xfd, 0x7a, 15: i})
	return &coordinator.NodeRecord{
		Node: wire.Node{
			Key:       key.NewNode().Public(),
			DiscoKey:  key.NewDisco().Public(),
			Name:      name,
			DNSName:   name + ".default.beam.internal.",
			Hostname:  name,
			OS:        "linux",
			Addresses: []netip.Prefix{netip.PrefixFrom(v4, 32), netip.PrefixFrom(v6, 128)},
			Endpoints: []netip.AddrPort{netip.MustParseAddrPort("192.0.2.1:41641")},
			HomeDERP:  1,
			PeerRelay: 41642,
			LastSeen:  time.Unix(1700000000, 123).UTC(),
			User:      "ann",
			Tags:      []string{"tag:a"},
		},
		NetworkID: networkID,
		CreatedAt: time.Unix(1700000000, 0).UTC(),
	}
}

// runStoreSuite checks a Store implementation; every dialect runs it.
func runStoreSuite(t *testing.T, open opener) {
	timeEq := cmpOpts

	t.Run("Networks", func(t *testing.T) {
		s, ctx := open(t), t.Context()
		a, err := s.EnsureNetwork(ctx, "default", "default.beam.internal")
		if err != nil {
			t.Fatal(err)
		}
		b, err := s.EnsureNetwork(ctx, "default", "ignored.example")
		if err != nil || b.ID != a.ID || b.Domain != "default.beam.internal" {
			t.Fatalf("second EnsureNetwork = %+v, %v; want %+v", b, err, a)
		}
		s.EnsureNetwork(ctx, "lab", "lab.beam.internal")
		nets, err := s.Networks(ctx)
		if err != nil || len(nets) != 2 || nets[1].Name != "lab" {
			t.Fatalf("Networks = %+v, %v", nets, err)
		}
	})

	t.Run("AuthKeys", func(t *testing.T) {
		s, ctx := open(t), t.Context()
		n, _ := s.EnsureNetwork(ctx, "default", "d")
		k := &coordinator.AuthKey{NetworkID: n.ID, Prefix: "beamkey-1", Hash: []byte("h1"), Reusable: true, Ephemeral: true,
			Expiry: time.Unix(1800000000, 5).UTC(), Tags: []string{"tag:x", "tag:y"}, User: "bob", CreatedAt: time.Unix(1700000000, 0).UTC()}
		if err := s.CreateAuthKey(ctx, k); err != nil || k.ID == 0 {
			t.Fatalf("CreateAuthKey: %v, id %d", err, k.ID)
		}
		got, err := s.AuthKeyByHash(ctx, []byte("h1"))
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(k, got, timeEq); diff != "" {
			t.Errorf("AuthKeyByHash (-want +got):\n%s", diff)
		}
		if _, err := s.AuthKeyByHash(ctx, []byte("nope")); !errors.Is(err, coordinator.ErrNotFound) {
			t.Errorf("unknown hash: %v, want ErrNotFound", err)
		}
		dup := &coordinator.AuthKey{NetworkID: n.ID, Prefix: "beamkey-1", Hash: []byte("h2")}
		if err := s.CreateAuthKey(ctx, dup); !errors.Is(err, coordinator.ErrConflict) {
			t.Errorf("duplicate prefix: %v, want ErrConflict", err)
		}
		keys, err := s.AuthKeys(ctx)
		if err != nil || len(keys) != 1 {
			t.Fatalf("AuthKeys = %v, %v", keys, err)
		}
		if err := s.DeleteAuthKey(ctx, "beamkey-1"); err != nil {
			t.Fatal(err)
		}
		if err := s.DeleteAuthKey(ctx, "beamkey-1"); !errors.Is(err, coordinator.ErrNotFound) {
			t.Errorf("second delete: %v, want ErrNotFound", err)
		}
	})

	t.Run("ConsumeAuthKey", func(t *testing.T) {
		s, ctx := open(t), t.Context()
		n, _ := s.EnsureNetwork(ctx, "default", "d")
		now := time.Unix(1700000000, 0)
		oneOff := &coordinator.AuthKey{NetworkID: n.ID, Prefix: "p1", Hash: []byte("1")}
		reusable := &coordinator.AuthKey{NetworkID: n.ID, Prefix: "p2", Hash: []byte("2"), Reusable: true}
		expiring := &coordinator.AuthKey{NetworkID: n.ID, Prefix: "p3", Hash: []byte("3"), Reusable: true, Expiry: now.Add(time.Hour)}
		for _, k := range []*coordinator.AuthKey{oneOff, reusable, expiring} {
			if err := s.CreateAuthKey(ctx, k); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.ConsumeAuthKey(ctx, oneOff.ID, now); err != nil {
			t.Fatal(err)
		}
		if err := s.ConsumeAuthKey(ctx, oneOff.ID, now); !errors.Is(err, coordinator.ErrAuthKeySpent) {
			t.Errorf("second use of a one-off key: %v, want ErrAuthKeySpent", err)
		}
		for range 3 {
			if err := s.ConsumeAuthKey(ctx, reusable.ID, now); err != nil {
				t.Fatal(err)
			}
		}
		if k, _ := s.AuthKeyByHash(ctx, []byte("2")); k.UseCount != 3 {
			t.Errorf("reusable UseCount = %d, want 3", k.UseCount)
		}
		if err := s.ConsumeAuthKey(ctx, expiring.ID, now); err != nil {
			t.Fatal(err)
		}
		if err := s.ConsumeAuthKey(ctx, expiring.ID, now.Add(2*time.Hour)); !errors.Is(err, coordinator.ErrAuthKeySpent) {
			t.Errorf("expired key: %v, want ErrAuthKeySpent", err)
		}
	})

	t.Run("ConsumeRace", func(t *testing.T) {
		s, ctx := open(t), t.Context()
		n, _ := s.EnsureNetwork(ctx, "default", "d")
		k := &coordinator.AuthKey{NetworkID: n.ID, Prefix: "p", Hash: []byte("h")}
		s.CreateAuthKey(ctx, k)
		var ok atomic.Int32
		var wg sync.WaitGroup
		for i := range 20 {
			wg.Go(func() {
				rec := testNode(n.ID, "racer"+string(rune('a'+i)), byte(i+1))
				rec.AuthKeyID = k.ID
				err := s.InsertNode(ctx, rec, time.Now())
				switch {
				case err == nil:
					ok.Add(1)
				case !errors.Is(err, coordinator.ErrAuthKeySpent):
					t.Errorf("InsertNode: %v", err)
				}
			})
		}
		wg.Wait()
		nodes, _ := s.Nodes(ctx)
		if ok.Load() != 1 || len(nodes) != 1 {
			t.Fatalf("%d inserts succeeded, %d nodes stored; want 1, 1", ok.Load(), len(nodes))
		}
	})

	t.Run("Nodes", func(t *testing.T) {
		s, ctx := open(t), t.Context()
		n, _ := s.EnsureNetwork(ctx, "default", "default.beam.internal")
		ak := &coordinator.AuthKey{NetworkID: n.ID, Prefix: "p", Hash: []byte("h")}
		s.CreateAuthKey(ctx, ak)
		a := testNode(n.ID, "alpha", 1)
		a.AuthKeyID = ak.ID
		if err := s.InsertNode(ctx, a, time.Now()); err != nil || a.Node.ID == 0 {
			t.Fatalf("InsertNode: %v, id %d", err, a.Node.ID)
		}
		// The one-off key is spent: a second node cannot use it.
		b := testNode(n.ID, "beta", 2)
		b.AuthKeyID = ak.ID
		if err := s.InsertNode(ctx, b, time.Now()); !errors.Is(err, coordinator.ErrAuthKeySpent) {
			t.Fatalf("insert with spent key: %v", err)
		}
		b.AuthKeyID = 0
		b.Node.Tags, b.Node.Endpoints = nil, nil
		if err := s.InsertNode(ctx, b, time.Now()); err != nil {
			t.Fatal(err)
		}
		conflicts := map[string]func(*coordinator.NodeRecord){
			"node key": func(r *coordinator.NodeRecord) { r.Node.Key = a.Node.Key },
			"name":     func(r *coordinator.NodeRecord) { r.Node.Name = "alpha" },
			"ipv4":     func(r *coordinator.NodeRecord) { r.Node.Addresses[0] = a.Node.Addresses[0] },
			"ipv6":     func(r *coordinator.NodeRecord) { r.Node.Addresses[1] = a.Node.Addresses[1] },
		}
		for what, mut := range conflicts {
			c := testNode(n.ID, "gamma", 3)
			mut(c)
			if err := s.InsertNode(ctx, c, time.Now()); !errors.Is(err, coordinator.ErrConflict) {
				t.Errorf("duplicate %s: %v, want ErrConflict", what, err)
			}
		}
		a.Node.Endpoints = []netip.AddrPort{netip.MustParseAddrPort("198.51.100.7:1"), netip.MustParseAddrPort("[2001:db8::2]:2")}
		a.Node.HomeDERP = 9
		a.Node.PeerRelay = 40001
		a.Node.KeyExpiry = time.Unix(1900000000, 0).UTC()
		a.Node.LastSeen = time.Unix(1700000100, 0).UTC()
		a.Node.DiscoKey = key.NewDisco().Public()
		a.Node.OS = "darwin"
		if err := s.UpdateNode(ctx, a); err != nil {
			t.Fatal(err)
		}
		// UpdateNode leaves the expiry alone: it is UpdateNodeExpiry's.
		if nodes, _ := s.Nodes(ctx); len(nodes) == 0 || nodes[0].Node.KeyExpiry.Equal(a.Node.KeyExpiry) {
			t.Errorf("UpdateNode wrote the key expiry")
		}
		if err := s.UpdateNodeExpiry(ctx, a); err != nil {
			t.Fatal(err)
		}
		nodes, err := s.Nodes(ctx)
		if err != nil || len(nodes) != 2 {
			t.Fatalf("Nodes = %v, %v", nodes, err)
		}
		if diff := cmp.Diff([]*coordinator.NodeRecord{a, b}, nodes, timeEq); diff != "" {
			t.Errorf("Nodes (-want +got):\n%s", diff)
		}
		// Deleting the auth key leaves the node, without its key reference.
		if err := s.DeleteAuthKey(ctx, "p"); err != nil {
			t.Fatal(err)
		}
		if nodes, _ := s.Nodes(ctx); nodes[0].AuthKeyID != 0 {
			t.Errorf("AuthKeyID after key deletion = %d, want 0", nodes[0].AuthKeyID)
		}
		if err := s.DeleteNode(ctx, a.Node.ID); err != nil {
			t.Fatal(err)
		}
		if err := s.DeleteNode(ctx, a.Node.ID); !errors.Is(err, coordinator.ErrNotFound) {
			t.Errorf("second delete: %v", err)
		}
		if err := s.UpdateNode(ctx, a); !errors.Is(err, coordinator.ErrNotFound) {
			t.Errorf("update of deleted node: %v", err)
		}
		if err := s.UpdateNodeExpiry(ctx, a); !errors.Is(err, coordinator.ErrNotFound) {
			t.Errorf("expiry update of deleted node: %v", err)
		}
	})

	t.Run("RenewNode", func(t *testing.T) {
		s, ctx := open(t), t.Context()
		n, _ := s.EnsureNetwork(ctx, "default", "default.beam.internal")
		a := testNode(n.ID, "alpha", 1)
		if err := s.InsertNode(ctx, a, time.Now()); err != nil {
			t.Fatal(err)
		}
		ak := &coordinator.AuthKey{NetworkID: n.ID, Prefix: "r", Hash: []byte("r")}
		s.CreateAuthKey(ctx, ak)
		expiry := func() time.Time {
			nodes, err := s.Nodes(ctx)
			if err != nil || len(nodes) != 1 {
				t.Fatalf("Nodes = %v, %v", nodes, err)
			}
			return nodes[0].Node.KeyExpiry
		}
		renewed := *a
		renewed.Node.KeyExpiry = time.Unix(1900000000, 0).UTC()
		renewed.AuthKeyID = ak.ID
		if err := s.RenewNode(ctx, &renewed, time.Now()); err != nil {
			t.Fatal(err)
		}
		if got := expiry(); !got.Equal(renewed.Node.KeyExpiry) {
			t.Errorf("expiry after RenewNode = %v, want %v", got, renewed.Node.KeyExpiry)
		}
		// The one-off key is spent: a second renewal with it writes nothing.
		again := renewed
		again.Node.KeyExpiry = time.Unix(2000000000, 0).UTC()
		if err := s.RenewNode(ctx, &again, time.Now()); !errors.Is(err, coordinator.ErrAuthKeySpent) {
			t.Errorf("renewal with a spent key: %v, want ErrAuthKeySpent", err)
		}
		if got := expiry(); !got.Equal(renewed.Node.KeyExpiry) {
			t.Errorf("a renewal with a spent key wrote expiry %v", got)
		}
		// A node that is gone spends nothing.
		fresh := &coordinator.AuthKey{NetworkID: n.ID, Prefix: "f", Hash: []byte("f")}
		s.CreateAuthKey(ctx, fresh)
		gone := *a
		gone.Node.ID = a.Node.ID + 100
		gone.AuthKeyID = fresh.ID
		if err := s.RenewNode(ctx, &gone, time.Now()); !errors.Is(err, coordinator.ErrNotFound) {
			t.Errorf("renewal of a node that is gone: %v, want ErrNotFound", err)
		}
		if err := s.ConsumeAuthKey(ctx, fresh.ID, time.Now()); err != nil {
			t.Errorf("the key of a failed renewal was spent: %v", err)
		}
	})

	t.Run("Settings", func(t *testing.T) {
		s, ctx := open(t), t.Context()
		if _, err := s.Setting(ctx, "x"); !errors.Is(err, coordinator.ErrNotFound) {
			t.Fatalf("missing setting: %v", err)
		}
		s.SetSetting(ctx, "x", []byte("1"))
		s.SetSetting(ctx, "x", []byte("2"))
		if v, err := s.Setting(ctx, "x"); err != nil || string(v) != "2" {
			t.Fatalf("Setting = %q, %v", v, err)
		}
		// SetSettings writes all or none: a value the database refuses
		// (NULL) leaves the others as they were, whichever comes first.
		if err := s.SetSettings(ctx, map[string][]byte{"x": []byte("3"), "y": []byte("3"), "z": nil}); err == nil {
			t.Fatal("SetSettings with a NULL value succeeded")
		}
		if v, err := s.Setting(ctx, "x"); err != nil || string(v) != "2" {
			t.Errorf("x after a failed SetSettings = %q, %v; want 2", v, err)
		}
		if v, err := s.Setting(ctx, "y"); !errors.Is(err, coordinator.ErrNotFound) {
			t.Errorf("y after a failed SetSettings = %q, %v; want none", v, err)
		}
		if err := s.SetSettings(ctx, map[string][]byte{"x": []byte("4"), "y": []byte("4")}); err != nil {
			t.Fatal(err)
		}
		for _, name := range []string{"x", "y"} {
			if v, err := s.Setting(ctx, name); err != nil || string(v) != "4" {
				t.Errorf("%s after SetSettings = %q, %v; want 4", name, v, err)
			}
		}
	})
}

// TestRedactedErrorMasksEveryPassword: a driver error that echoes the
// URL shows none of its secrets, in either part or parameter.
func TestRedactedErrorMasksEveryPassword(t *testing.T) {
	dsn := "postgres://beam:us%2Fer-pw@db.example.test/beam?password=param-pw&sslpassword=ssl-pw"
	err := redactedError{fmt.Errorf("cannot use %s", dsn), passwordsOf(dsn)}
	for _, secret := range []string{"us/er-pw", "us%2Fer-pw", "param-pw", "ssl-pw"} {
		if strings.Contains(err.Error(), secret) {
			t.Errorf("%q shows %q", err, secret)
		}
	}
	if errors.Unwrap(err) == nil {
		t.Error("the driver's error is not wrapped")
	}
}
