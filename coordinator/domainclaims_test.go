package coordinator_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"beam.dev/beam/coordclient"
	"beam.dev/beam/coordinator"
	"beam.dev/beam/wire"
)

// blockingDNS is a resolver that never answers: each lookup waits for its
// context (the coordinator's proof-check timeout) and fails.
type blockingDNS struct {
	entered  chan string // each lookup sends its name
	returned atomic.Int32
}

func (b *blockingDNS) wait(ctx context.Context, name string) error {
	select {
	case b.entered <- name:
	default:
	}
	<-ctx.Done()
	b.returned.Add(1)
	return ctx.Err()
}

func (b *blockingDNS) opts(o *coordinator.Options) {
	edgeOpts("", "")(o)
	o.LookupTXT = func(ctx context.Context, name string) ([]string, error) { return nil, b.wait(ctx, name) }
	o.LookupCNAME = func(ctx context.Context, name string) (string, error) { return "", b.wait(ctx, name) }
}

// TestDomainProofOutsideChangeLock: a node's custom-domain expose whose
// DNS lookups hang holds up no other node's expose (the lookups run
// without the lock that serializes route changes).
func TestDomainProofOutsideChangeLock(t *testing.T) {
	b := &blockingDNS{entered: make(chan string, 1)}
	c := startCoord(t, b.opts)
	attacker := newNode(t, c.URL)
	attacker.register(t, c.authKey(t, coordinator.AuthKeyOptions{}), "attacker")
	other := newNode(t, c.URL)
	other.register(t, c.authKey(t, coordinator.AuthKeyOptions{Network: "other"}), "legit")

	slow := make(chan error, 1)
	go func() {
		_, err := attacker.Expose(context.Background(), wire.ExposeRequest{CustomDomain: "x1.attacker.test", Proto: "http", Port: 3000})
		slow <- err
	}()
	select {
	case <-b.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the custom-domain expose made no DNS lookup")
	}
	start := time.Now()
	expose(t, other, wire.ExposeRequest{Name: "legit2", Proto: "http", Port: 3000})
	if n := b.returned.Load(); n != 0 {
		t.Errorf("another node's expose returned after %v, once %d hanging lookups had timed out; want it to wait for none", time.Since(start), n)
	}
	if err := <-slow; !errors.Is(err, coordclient.ErrDomainNotVerified) {
		t.Errorf("expose with a resolver that never answers = %v, want ErrDomainNotVerified", err)
	}
}

// countingDNS fails every lookup at once and counts them.
type countingDNS struct {
	mu      sync.Mutex
	lookups map[string]int
}

func (d *countingDNS) lookup(name string) error {
	d.mu.Lock()
	d.lookups[name]++
	d.mu.Unlock()
	return errors.New("no such host")
}

func (d *countingDNS) count(name string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.lookups[name]
}

// TestFailedExposeStoresNoClaim: a node's exposes of domains it has not
// proved leave no claims behind (only an admin creates one), and a failed
// check of a domain is not looked up again at once when the node retries.
func TestFailedExposeStoresNoClaim(t *testing.T) {
	d := &countingDNS{lookups: map[string]int{}}
	c := startCoord(t, func(o *coordinator.Options) {
		edgeOpts("", "")(o)
		o.LookupTXT = func(_ context.Context, name string) ([]string, error) { return nil, d.lookup(name) }
		o.LookupCNAME = func(_ context.Context, name string) (string, error) { return "", d.lookup(name) }
	})
	a := newNode(t, c.URL)
	a.register(t, c.authKey(t, coordinator.AuthKeyOptions{}), "alpha")
	const n = 20
	for i := range n {
		_, err := a.Expose(context.Background(), wire.ExposeRequest{CustomDomain: fmt.Sprintf("x%d.attacker.test", i), Proto: "http", Port: 3000})
		if !errors.Is(err, coordclient.ErrDomainNotVerified) || !strings.Contains(err.Error(), "beam admin domains verify") {
			t.Fatalf("expose %d = %v, want ErrDomainNotVerified telling how to claim the domain", i, err)
		}
	}
	stored, err := c.Store.Domains(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(stored) != 0 || len(c.Server.Domains(context.Background())) != 0 {
		t.Fatalf("after %d failed exposes of distinct domains: %d stored claims, want 0", n, len(stored))
	}

	before := d.count("x0.attacker.test")
	for range 5 {
		if _, err := a.Expose(context.Background(), wire.ExposeRequest{CustomDomain: "x0.attacker.test", Proto: "http", Port: 3000}); !errors.Is(err, coordclient.ErrDomainNotVerified) {
			t.Fatalf("retry = %v, want ErrDomainNotVerified", err)
		}
	}
	if got := d.count("x0.attacker.test"); got != before {
		t.Errorf("5 retries of a failed check made %d more CNAME lookups, want 0", got-before)
	}

	// An admin's claim is stored, and checked at once whatever the node did.
	admin := coordclient.NewAdmin(c.URL, testToken, nil)
	if st, err := admin.VerifyDomain(context.Background(), "x0.attacker.test", ""); err != nil || st.Verified || st.Token == "" {
		t.Fatalf("admin verify = %+v, %v", st, err)
	}
	if got := d.count("_beam-challenge.x0.attacker.test"); got != 1 {
		t.Errorf("admin verify made %d TXT lookups, want 1", got)
	}
	if ds := c.Server.Domains(context.Background()); len(ds) != 1 || ds[0].Domain != "x0.attacker.test" {
		t.Errorf("claims after admin verify = %+v, want x0.attacker.test", ds)
	}
}

// TestAdminVerifyOutsideChangeLock: an admin's domain check whose DNS
// lookups hang holds up no node's expose either.
func TestAdminVerifyOutsideChangeLock(t *testing.T) {
	b := &blockingDNS{entered: make(chan string, 1)}
	c := startCoord(t, b.opts)
	a := newNode(t, c.URL)
	a.register(t, c.authKey(t, coordinator.AuthKeyOptions{}), "alpha")
	slow := make(chan error, 1)
	go func() {
		_, err := c.Server.VerifyDomain(context.Background(), "", "shop.customer.test")
		slow <- err
	}()
	select {
	case <-b.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("verify made no DNS lookup")
	}
	expose(t, a, wire.ExposeRequest{Name: "app", Proto: "http", Port: 3000})
	if n := b.returned.Load(); n != 0 {
		t.Errorf("an expose waited for %d hanging lookups of an admin's verify, want none", n)
	}
	if err := <-slow; err != nil {
		t.Errorf("verify = %v", err)
	}
}

// TestRemoveDomain: an admin removes a network's claim, which withdraws
// its routes on the domain; a second remove finds nothing.
func TestRemoveDomain(t *testing.T) {
	td := startTestDNS(t)
	c := startCoord(t, func(o *coordinator.Options) {
		edgeOpts("", "")(o)
		o.LookupTXT = td.resolver().LookupTXT
		o.LookupCNAME = td.resolver().LookupCNAME
	})
	a := newNode(t, c.URL)
	a.register(t, c.authKey(t, coordinator.AuthKeyOptions{}), "alpha")
	ctx := context.Background()
	admin := coordclient.NewAdmin(c.URL, testToken, nil)
	st, err := admin.VerifyDomain(ctx, "shop.example.com", "")
	if err != nil {
		t.Fatal(err)
	}
	td.set("_beam-challenge.shop.example.com", st.Token)
	if st, err := admin.VerifyDomain(ctx, "shop.example.com", ""); err != nil || !st.Verified {
		t.Fatalf("verify = %+v, %v", st, err)
	}
	expose(t, a, wire.ExposeRequest{CustomDomain: "shop.example.com", Proto: "http", Port: 3000})

	if err := admin.RemoveDomain(ctx, "shop.example.com", "nosuchnet"); !errors.Is(err, coordclient.ErrNotFound) {
		t.Fatalf("remove for a missing network = %v, want ErrNotFound", err)
	}
	if err := admin.RemoveDomain(ctx, "Shop.Example.com.", ""); err != nil {
		t.Fatal(err)
	}
	if ds := c.Server.Domains(ctx); len(ds) != 0 {
		t.Errorf("claims after remove = %+v, want none", ds)
	}
	if stored, _ := c.Store.Domains(ctx); len(stored) != 0 {
		t.Errorf("stored claims after remove = %d, want 0", len(stored))
	}
	if rs := c.Server.Routes(ctx); len(rs) != 0 {
		t.Errorf("routes after remove = %+v, want the domain's route withdrawn", rs)
	}
	if err := admin.RemoveDomain(ctx, "shop.example.com", ""); !errors.Is(err, coordclient.ErrNotFound) {
		t.Errorf("second remove = %v, want ErrNotFound", err)
	}
}
