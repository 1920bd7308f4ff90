package coordinator_test

import (
	"context"
	"errors"
	"slices"
	"testing"

	"beam.dev/beam/coordclient"
	"beam.dev/beam/coordinator"
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
	// Before the route exists nobody may set its challenge.
	if err := a.SetTXT(ctx, secure, []string{"early"}); !errors.Is(err, coordclient.ErrForbidden) {
		t.Fatalf("SetTXT before the route exists = %v, want ErrForbidden", err)
	}
	expose(t, a, wire.ExposeRequest{Name: "secure", Proto: "tls", Port: 8443})
	expose(t, a, wire.ExposeRequest{Name: "web", Proto: "http", Port: 3000})
	expose(t, a, wire.ExposeRequest{Name: "db", Proto: "tcp", Port: 5432})
	expose(t, b, wire.ExposeRequest{Name: "other", Proto: "tls", Port: 8443})

	if err := a.SetTXT(ctx, secure, []string{"token-1", "token-2"}); err != nil {
		t.Fatalf("owner SetTXT %s: %v", secure, err)
	}
	if got, want := query(secure), []string{"token-1", "token-2"}; !slices.Equal(got, want) {
		t.Fatalf("zone TXT %s = %v, want %v", secure, got, want)
	}
	// Any spelling of the name is the same name.
	if err := a.SetTXT(ctx, "_ACME-Challenge.Secure.Example.Test.", []string{"token-3"}); err != nil {
		t.Fatalf("owner SetTXT in upper case with a dot: %v", err)
	}
	if got, want := query(secure), []string{"token-3"}; !slices.Equal(got, want) {
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
	if got, want := query(secure), []string{"token-3"}; !slices.Equal(got, want) {
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

	if err := a.SetTXT(ctx, challenge, []string{"token-1"}); err != nil {
		t.Fatalf("owner SetTXT %s: %v", challenge, err)
	}
	if got, want := query(delegated), []string{"token-1"}; !slices.Equal(got, want) {
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
	if got, want := query(delegated), []string{"token-1"}; !slices.Equal(got, want) {
		t.Fatalf("zone TXT %s after refused requests = %v, want %v", delegated, got, want)
	}
	if err := a.SetTXT(ctx, challenge, nil); err != nil {
		t.Fatalf("owner delete: %v", err)
	}
	if got := query(delegated); len(got) != 0 {
		t.Fatalf("zone TXT %s after delete = %v", delegated, got)
	}
}
