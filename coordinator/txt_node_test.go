package coordinator_test

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"beam.dev/beam/beamtest/pgtest"
	"beam.dev/beam/coordclient"
	"beam.dev/beam/coordinator"
	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// TestNodeTXTForTLSRoutes: a device may publish the DNS-01 challenge of
// its own live tls routes, and nothing else.
func TestNodeTXTForTLSRoutes(t *testing.T) {
	z, query := startZone(t)
	c := startCoord(t, func(o *coordinator.Options) {
		edgeOpts("20000-20009", "")(o)
		o.Zone = z
	})
	ak := c.authKey(t, coordinator.AuthKeyOptions{Reusable: true})
	a, b := newNode(t, c.URL), newNode(t, c.URL)
	a.register(t, ak, "alpha")
	b.register(t, ak, "beta")
	ctx := context.Background()

	const secure = "_acme-challenge.secure.example.test"
	tok1, tok2, tok3 := keyAuth("1"), keyAuth("2"), keyAuth("3")
	// Before the route exists nobody may set its challenge.
	if err := a.SetTXT(ctx, secure, []string{"early"}); !errors.Is(err, coordclient.ErrForbidden) {
		t.Fatalf("SetTXT before the route exists = %v, want ErrForbidden", err)
	}
	expose(t, a, wire.ExposeRequest{Name: "secure", Proto: "tls", Port: 8443})
	expose(t, a, wire.ExposeRequest{Name: "web", Proto: "http", Port: 3000})
	expose(t, a, wire.ExposeRequest{Name: "db", Proto: "tcp", Port: 5432})
	expose(t, b, wire.ExposeRequest{Name: "other", Proto: "tls", Port: 8443})

	if err := a.SetTXT(ctx, secure, []string{tok1, tok2}); err != nil {
		t.Fatalf("owner SetTXT %s: %v", secure, err)
	}
	if got, want := query(secure), []string{tok1, tok2}; !slices.Equal(got, want) {
		t.Fatalf("zone TXT %s = %v, want %v", secure, got, want)
	}
	// Any spelling of the name is the same name.
	if err := a.SetTXT(ctx, "_ACME-Challenge.Secure.Example.Test.", []string{tok3}); err != nil {
		t.Fatalf("owner SetTXT in upper case with a dot: %v", err)
	}
	if got, want := query(secure), []string{tok3}; !slices.Equal(got, want) {
		t.Fatalf("zone TXT %s = %v, want %v", secure, got, want)
	}

	for _, tt := range []struct {
		who  *node
		name string
	}{
		{b, secure}, // another node's tls route
		{a, "_acme-challenge.other.example.test"}, // beta's route
		{a, "_acme-challenge.web.example.test"},   // own http route: the edge's business
		{a, "_acme-challenge.db.example.test"},    // own tcp route
		{a, "_acme-challenge.example.test"},       // the edge's wildcard
		{a, "secure.example.test"},                // not a challenge name
		{a, "_acme-challenge.x.secure.example.test"},
		{a, "_beam-challenge.secure.example.test"},
		{a, "_acme-challenge."},
	} {
		if err := tt.who.SetTXT(ctx, tt.name, []string{"evil"}); !errors.Is(err, coordclient.ErrForbidden) {
			t.Errorf("SetTXT %q = %v, want ErrForbidden", tt.name, err)
		}
		if err := tt.who.SetTXT(ctx, tt.name, nil); !errors.Is(err, coordclient.ErrForbidden) {
			t.Errorf("delete TXT %q = %v, want ErrForbidden", tt.name, err)
		}
	}
	if got, want := query(secure), []string{tok3}; !slices.Equal(got, want) {
		t.Fatalf("zone TXT %s after refused requests = %v, want %v", secure, got, want)
	}

	if err := a.SetTXT(ctx, secure, nil); err != nil {
		t.Fatalf("owner delete: %v", err)
	}
	if got := query(secure); len(got) != 0 {
		t.Fatalf("zone TXT %s after delete = %v", secure, got)
	}

	// Once the route is withdrawn, its challenge name is closed again.
	if _, err := a.Expose(ctx, wire.ExposeRequest{Name: "secure", Proto: "tls", Remove: true}); err != nil {
		t.Fatal(err)
	}
	if err := a.SetTXT(ctx, secure, []string{"late"}); !errors.Is(err, coordclient.ErrForbidden) {
		t.Fatalf("SetTXT after the route was withdrawn = %v, want ErrForbidden", err)
	}
	if got := query(secure); len(got) != 0 {
		t.Fatalf("zone TXT %s = %v after a refused request", secure, got)
	}
}

// TestNodeTXTForCustomDomain: the DNS-01 challenge of a tls route on a
// verified custom domain, which the zone cannot serve, is stored at the
// delegated name in the edge domain that the domain's owner points
// "_acme-challenge.HOST" to with a CNAME; the expose answer and the
// domain's status name it, and only the route's node may set it.
func TestNodeTXTForCustomDomain(t *testing.T) {
	td := startTestDNS(t)
	z, query := startZone(t)
	c := startCoord(t, func(o *coordinator.Options) {
		edgeOpts("20000-20009", "")(o)
		o.Zone = z
		o.LookupTXT = td.resolver().LookupTXT
		o.LookupCNAME = td.resolver().LookupCNAME
	})
	ak := c.authKey(t, coordinator.AuthKeyOptions{Reusable: true})
	a, b := newNode(t, c.URL), newNode(t, c.URL)
	a.register(t, ak, "alpha")
	b.register(t, ak, "beta")
	ctx := context.Background()

	tok1 := keyAuth("1")
	const (
		host      = "app.customer.test"
		challenge = "_acme-challenge." + host
		delegated = host + "._acme-challenge." + edgeDomain
	)
	admin := coordclient.NewAdmin(c.URL, testToken, nil)
	st, err := admin.VerifyDomain(ctx, host, "")
	if err != nil {
		t.Fatal(err)
	}
	td.set("_beam-challenge."+host, st.Token)
	if st, err = admin.VerifyDomain(ctx, host, ""); err != nil || !st.Verified {
		t.Fatalf("verify = %+v, %v", st, err)
	}
	if st.ACMEChallenge != challenge || st.ACMEChallengeCNAME != delegated {
		t.Errorf("domain status delegates %q to %q, want %q to %q", st.ACMEChallenge, st.ACMEChallengeCNAME, challenge, delegated)
	}

	// Before the route exists nobody may set its challenge.
	if err := a.SetTXT(ctx, challenge, []string{"early"}); !errors.Is(err, coordclient.ErrForbidden) {
		t.Fatalf("SetTXT before the route exists = %v, want ErrForbidden", err)
	}
	resp := expose(t, a, wire.ExposeRequest{CustomDomain: host, Proto: "tls", Port: 8443})
	if resp.ACMEChallengeCNAME != delegated {
		t.Errorf("tls expose on %s: ACMEChallengeCNAME = %q, want %q", host, resp.ACMEChallengeCNAME, delegated)
	}
	if r := expose(t, a, wire.ExposeRequest{Name: "plain", Proto: "tls", Port: 8444}); r.ACMEChallengeCNAME != "" {
		t.Errorf("tls expose under the edge domain: ACMEChallengeCNAME = %q, want none", r.ACMEChallengeCNAME)
	}

	if err := a.SetTXT(ctx, challenge, []string{tok1}); err != nil {
		t.Fatalf("owner SetTXT %s: %v", challenge, err)
	}
	if got, want := query(delegated), []string{tok1}; !slices.Equal(got, want) {
		t.Fatalf("zone TXT %s = %v, want %v", delegated, got, want)
	}
	for _, tt := range []struct {
		who  *node
		name string
	}{
		{b, challenge}, // another node
		{a, delegated}, // the zone name itself is not a challenge name of a route
		{b, delegated},
		{a, "_acme-challenge.other.customer.test"}, // no such route
	} {
		if err := tt.who.SetTXT(ctx, tt.name, []string{"evil"}); !errors.Is(err, coordclient.ErrForbidden) {
			t.Errorf("SetTXT %q = %v, want ErrForbidden", tt.name, err)
		}
	}
	if got, want := query(delegated), []string{tok1}; !slices.Equal(got, want) {
		t.Fatalf("zone TXT %s after refused requests = %v, want %v", delegated, got, want)
	}
	if err := a.SetTXT(ctx, challenge, nil); err != nil {
		t.Fatalf("owner delete: %v", err)
	}
	if got := query(delegated); len(got) != 0 {
		t.Fatalf("zone TXT %s after delete = %v", delegated, got)
	}

	// Withdrawing the route deletes the delegated record with it.
	if err := a.SetTXT(ctx, challenge, []string{tok1}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Expose(ctx, wire.ExposeRequest{CustomDomain: host, Proto: "tls", Remove: true}); err != nil {
		t.Fatal(err)
	}
	if got := query(delegated); len(got) != 0 {
		t.Fatalf("zone TXT %s after its route was withdrawn = %v, want none", delegated, got)
	}
}

// keyAuth returns a DNS-01 TXT value as ACME has devices publish it: the
// base64url SHA-256 of a key authorization, 43 characters.
func keyAuth(s string) string {
	h := sha256.Sum256([]byte(s))
	return base64.RawURLEncoding.EncodeToString(h[:])
}

// TestNodeTXTValues: a device's challenge record holds at most two
// values, each a DNS-01 key authorization digest (43 characters of
// base64url); anything else is refused with an error saying so, and the
// record stays as it was. Eight values of 255 bytes used to pass: a
// 65-byte query got over 1100 bytes back, to any address it claimed.
// Edges keep the general limits.
func TestNodeTXTValues(t *testing.T) {
	z, query := startZone(t)
	c := startCoord(t, func(o *coordinator.Options) {
		edgeOpts("", "")(o)
		o.Zone = z
	})
	ak := c.authKey(t, coordinator.AuthKeyOptions{Reusable: true})
	a := newNode(t, c.URL)
	a.register(t, ak, "alpha")
	ctx := context.Background()
	expose(t, a, wire.ExposeRequest{Name: "amp", Proto: "tls", Port: 8443})
	const name = "_acme-challenge.amp.example.test"
	good := []string{keyAuth("1"), keyAuth("2")}
	if err := a.SetTXT(ctx, name, good); err != nil {
		t.Fatalf("SetTXT of two key authorizations: %v", err)
	}
	for _, tt := range []struct {
		name   string
		values []string
		want   string
	}{
		{"three values", []string{keyAuth("1"), keyAuth("2"), keyAuth("3")}, "at most 2"},
		{"eight long values", slices.Repeat([]string{strings.Repeat("a", 255)}, 8), "at most 2"},
		{"255 bytes", []string{strings.Repeat("a", 255)}, "43 characters"},
		{"44 characters", []string{keyAuth("1") + "A"}, "43 characters"},
		{"42 characters", []string{keyAuth("1")[:42]}, "43 characters"},
		{"not base64url", []string{strings.Repeat("a", 42) + "="}, "43 characters"},
		{"a word", []string{"token-1"}, "43 characters"},
		{"one good, one bad", []string{keyAuth("1"), "v=spf1 -all"}, "43 characters"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := a.SetTXT(ctx, name, tt.values)
			var ce *coordclient.Error
			if !errors.As(err, &ce) || ce.Code != wire.CodeBadRequest || !strings.Contains(ce.Message, tt.want) {
				t.Fatalf("SetTXT = %v, want a bad request saying %q", err, tt.want)
			}
			if got := query(name); !slices.Equal(got, good) {
				t.Fatalf("zone TXT %s = %v after a refused request, want %v", name, got, good)
			}
		})
	}

	ek := c.authKey(t, coordinator.AuthKeyOptions{Network: "edges", Edge: true})
	ed := newNode(t, c.URL)
	ed.register(t, ek, "edge1")
	long := []string{strings.Repeat("e", 200), keyAuth("1"), keyAuth("2")}
	if err := ed.SetTXT(ctx, "_acme-challenge.example.test", long); err != nil {
		t.Fatalf("edge SetTXT of three values: %v", err)
	}
}

// TestNodeTXTGoesWithRoute: a device's challenge record goes with the
// last tls route of its host, whether the device withdraws it, an admin
// does, or the device is removed; a pool member's leaving keeps it for
// the others. It used to stay: served on, out of reach of the device that
// set it, and inherited by the name's next owner.
func TestNodeTXTGoesWithRoute(t *testing.T) {
	z, query := startZone(t)
	c := startCoord(t, func(o *coordinator.Options) {
		edgeOpts("", "")(o)
		o.Zone = z
	})
	ctx := context.Background()
	if _, err := c.Server.CreateUser(ctx, "ann@example.test"); err != nil {
		t.Fatal(err)
	}
	ak := c.authKey(t, coordinator.AuthKeyOptions{Reusable: true, User: "ann@example.test"})
	n := 0
	device := func() *node {
		n++
		d := newNode(t, c.URL)
		d.register(t, ak, fmt.Sprintf("dev%d", n))
		return d
	}
	tok := []string{keyAuth("1")}
	set := func(t *testing.T, d *node, name string) {
		t.Helper()
		if err := d.SetTXT(ctx, name, tok); err != nil {
			t.Fatalf("SetTXT %s: %v", name, err)
		}
		if got := query(name); !slices.Equal(got, tok) {
			t.Fatalf("zone TXT %s = %v, want %v", name, got, tok)
		}
	}
	gone := func(t *testing.T, name, when string) {
		t.Helper()
		if got := query(name); len(got) != 0 {
			t.Fatalf("zone TXT %s %s = %v, want none", name, when, got)
		}
	}

	t.Run("withdrawn", func(t *testing.T) {
		a, b := device(), device()
		expose(t, a, wire.ExposeRequest{Name: "w", Proto: "tls", Port: 8443})
		expose(t, a, wire.ExposeRequest{Name: "w", Proto: "http", Port: 3000})
		const name = "_acme-challenge.w.example.test"
		set(t, a, name)
		if _, err := a.Expose(ctx, wire.ExposeRequest{Name: "w", Proto: "tls", Remove: true}); err != nil {
			t.Fatal(err)
		}
		gone(t, name, "after its tls route was withdrawn")
		// The name's next owner starts with no record.
		if _, err := a.Expose(ctx, wire.ExposeRequest{Name: "w", Proto: "http", Remove: true}); err != nil {
			t.Fatal(err)
		}
		expose(t, b, wire.ExposeRequest{Name: "w", Proto: "tls", Port: 8443})
		gone(t, name, "for the name's next owner")
	})
	t.Run("removed by an admin", func(t *testing.T) {
		a := device()
		expose(t, a, wire.ExposeRequest{Name: "adm", Proto: "tls", Port: 8443})
		const name = "_acme-challenge.adm.example.test"
		set(t, a, name)
		if err := c.Server.RemoveRoutes(ctx, "adm.example.test"); err != nil {
			t.Fatal(err)
		}
		gone(t, name, "after an admin removed its route")
	})
	t.Run("node removed", func(t *testing.T) {
		a := device()
		expose(t, a, wire.ExposeRequest{Name: "rm", Proto: "tls", Port: 8443})
		const name = "_acme-challenge.rm.example.test"
		set(t, a, name)
		if err := c.Server.RemoveNode(ctx, a.priv.Public().String()); err != nil {
			t.Fatal(err)
		}
		gone(t, name, "after its node was removed")
	})
	t.Run("pool", func(t *testing.T) {
		a, b := device(), device()
		expose(t, a, wire.ExposeRequest{Name: "pool", Proto: "tls", Port: 8443, Pool: true})
		expose(t, b, wire.ExposeRequest{Name: "pool", Proto: "tls", Port: 8443, Pool: true})
		const name = "_acme-challenge.pool.example.test"
		set(t, a, name)
		if _, err := b.Expose(ctx, wire.ExposeRequest{Name: "pool", Proto: "tls", Remove: true}); err != nil {
			t.Fatal(err)
		}
		if got := query(name); !slices.Equal(got, tok) {
			t.Fatalf("zone TXT %s = %v after another pool member left, want %v", name, got, tok)
		}
		if _, err := a.Expose(ctx, wire.ExposeRequest{Name: "pool", Proto: "tls", Remove: true}); err != nil {
			t.Fatal(err)
		}
		gone(t, name, "after the pool's last route was withdrawn")
	})
}

// TestNodeTXTGoesWithRouteOnOtherCoordinator: zone records live in each
// coordinator's memory, where the device set them; when its route is
// withdrawn through another coordinator on the same PostgreSQL, or its
// node removed there, the record goes from the first one's zone too.
func TestNodeTXTGoesWithRouteOnOtherCoordinator(t *testing.T) {
	pg := pgtest.New(t)
	dsn := pg.NewDatabase(t)
	priv := key.NewMachine()
	za, queryA := startZone(t)
	zb, _ := startZone(t)
	ca := startCoordWith(t, dsn, priv, func(o *coordinator.Options) {
		edgeOpts("", "")(o)
		o.Zone = za
	})
	cb := startCoordWith(t, dsn, priv, func(o *coordinator.Options) {
		edgeOpts("", "")(o)
		o.Zone = zb
	})
	ctx := t.Context()
	ak := ca.authKey(t, coordinator.AuthKeyOptions{Reusable: true})
	tok := []string{keyAuth("1")}
	// publish exposes the tls route hostname of a new device on ca and
	// sets its challenge there; it returns the challenge name and the
	// device's client on cb, once cb knows the route.
	publish := func(t *testing.T, hostname string) (string, *node) {
		t.Helper()
		a := newNode(t, ca.URL)
		a.register(t, ak, hostname)
		expose(t, a, wire.ExposeRequest{Name: hostname, Proto: "tls", Port: 8443})
		name := "_acme-challenge." + hostname + ".example.test"
		if err := a.SetTXT(ctx, name, tok); err != nil {
			t.Fatal(err)
		}
		if got := queryA(name); !slices.Equal(got, tok) {
			t.Fatalf("zone TXT %s on ca = %v, want %v", name, got, tok)
		}
		onB, err := coordclient.New(coordclient.Options{ServerURL: cb.URL, PrivateKey: a.priv, DiscoKey: key.NewDisco().Public()})
		if err != nil {
			t.Fatal(err)
		}
		if !within(fanoutWait, func() bool {
			return slices.ContainsFunc(cb.Server.Routes(ctx), func(r wire.RouteInfo) bool { return r.NodeName == hostname })
		}) {
			t.Fatalf("cb does not know the route of %s", hostname)
		}
		return name, &node{priv: a.priv, Client: onB}
	}
	goneOnA := func(t *testing.T, name, when string) {
		t.Helper()
		if !within(fanoutWait, func() bool { return len(queryA(name)) == 0 }) {
			t.Fatalf("zone TXT %s on ca %s = %v, want none", name, when, queryA(name))
		}
	}
	t.Run("withdrawn", func(t *testing.T) {
		name, onB := publish(t, "alpha")
		if _, err := onB.Expose(ctx, wire.ExposeRequest{Name: "alpha", Proto: "tls", Remove: true}); err != nil {
			t.Fatal(err)
		}
		goneOnA(t, name, "after the route was withdrawn through cb")
	})
	t.Run("node removed", func(t *testing.T) {
		name, onB := publish(t, "bravo")
		if err := cb.Server.RemoveNode(ctx, onB.priv.Public().String()); err != nil {
			t.Fatal(err)
		}
		goneOnA(t, name, "after cb removed the node")
	})
}

// within reports whether cond holds within d, asking every 20 ms.
func within(d time.Duration, cond func() bool) bool {
	deadline := time.After(d)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-deadline:
			return cond()
		case <-tick.C:
		}
	}
	return true
}
