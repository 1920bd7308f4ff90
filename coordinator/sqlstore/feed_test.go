package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"beam.dev/beam/coordinator"
	"beam.dev/beam/wire"
)

// TestHeartbeat: a node streaming from one store's coordinator is online
// for another store; once the first stops beating for the stale time, it is
// unknown for the others until it streams from another coordinator, or
// until the unknown timeout passes, when the other's heartbeat drops its
// stream state (offline). Each Heartbeat returns the nodes whose state
// changed since its last call.
func TestHeartbeat(t *testing.T) {
	dsn := pg.NewSchema(t)
	a, b, c := openStore(t, dsn), openStore(t, dsn), openStore(t, dsn)
	ctx := t.Context()
	n, err := a.EnsureNetwork(ctx, "default", "d")
	if err != nil {
		t.Fatal(err)
	}
	alpha, beta := testNode(n.ID, "alpha", 1), testNode(n.ID, "beta", 2)
	for _, rec := range []*coordinator.NodeRecord{alpha, beta} {
		if err := a.InsertNode(ctx, rec, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	if _, missing, err := a.Heartbeat(ctx); err != nil || !missing {
		t.Fatalf("first Heartbeat: missing = %v, %v; want true", missing, err)
	}
	if _, missing, err := a.Heartbeat(ctx); err != nil || missing {
		t.Fatalf("second Heartbeat: missing = %v, %v; want false", missing, err)
	}
	for _, rec := range []*coordinator.NodeRecord{alpha, beta} {
		if err := a.SetNodeOnline(ctx, rec.Node.ID, true, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	presence := func(s *Store, rec *coordinator.NodeRecord) coordinator.Presence {
		t.Helper()
		_, p, err := s.NodeByID(ctx, rec.Node.ID)
		if err != nil {
			t.Fatal(err)
		}
		all, err := s.RemoteOnline(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if all[rec.Node.ID] != p {
			t.Errorf("RemoteOnline has %s as %d, NodeByID as %d", rec.Node.Name, all[rec.Node.ID], p)
		}
		return p
	}
	beat := func(s *Store, want ...*coordinator.NodeRecord) {
		t.Helper()
		changed, _, err := s.Heartbeat(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var wantIDs []wire.NodeID
		for _, rec := range want {
			wantIDs = append(wantIDs, rec.Node.ID)
		}
		if !slices.Equal(changed, wantIDs) {
			t.Errorf("Heartbeat changed %v, want %v", changed, wantIDs)
		}
	}
	// stall moves the last beat of s's coordinator d into the past.
	stall := func(s *Store, d time.Duration) {
		t.Helper()
		if _, err := s.db.ExecContext(ctx, `UPDATE coordinator_beats SET beat = beat - $1 WHERE origin = $2`, int64(d), s.origin); err != nil {
			t.Fatal(err)
		}
	}

	beat(b)
	if got := presence(b, alpha); got != coordinator.PresenceOnline {
		t.Fatalf("alpha on the other store: %d, want online while its coordinator beats", got)
	}
	if got := presence(a, alpha); got != coordinator.PresenceNone {
		t.Errorf("alpha on its own store: %d, want none", got)
	}
	// a's coordinator stops beating: alpha and beta are unknown.
	stall(a, 2*a.beats.stale)
	beat(b, alpha, beta)
	beat(b)
	if got := presence(b, alpha); got != coordinator.PresenceUnknown {
		t.Errorf("alpha after its coordinator stopped beating: %d, want unknown", got)
	}
	// beta streams from c's coordinator now: online again for b.
	if err := c.SetNodeOnline(ctx, beta.Node.ID, true, time.Now()); err != nil {
		t.Fatal(err)
	}
	beat(c, alpha) // c's first beat: alpha is unknown to it too; beta is its own
	if got := presence(b, beta); got != coordinator.PresenceOnline {
		t.Errorf("beta streaming from c: %d, want online", got)
	}
	beat(b, beta)
	// a's coordinator comes back from its stall: alpha is online again.
	if _, missing, err := a.Heartbeat(ctx); err != nil || missing {
		t.Errorf("Heartbeat after a short stall: missing = %v, %v; want false", missing, err)
	}
	beat(b, alpha)
	if got := presence(b, alpha); got != coordinator.PresenceOnline {
		t.Errorf("alpha after its coordinator beat again: %d, want online", got)
	}
	// a's coordinator stops for longer than the unknown timeout: alpha
	// is dropped (offline), and a's beat with it.
	stall(a, b.beats.stale+b.beats.unknownTimeout+time.Second)
	beat(b, alpha)
	if got := presence(b, alpha); got != coordinator.PresenceNone {
		t.Errorf("alpha after the unknown timeout: %d, want none (offline)", got)
	}
	if got := presence(b, beta); got != coordinator.PresenceOnline {
		t.Errorf("beta, streaming from c: %d, want online", got)
	}
	if _, missing, err := a.Heartbeat(ctx); err != nil || !missing {
		t.Errorf("Heartbeat after the long stall: missing = %v, %v; want true", missing, err)
	}
	var beats int
	if err := b.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM coordinator_beats`).Scan(&beats); err != nil || beats != 3 {
		t.Errorf("%d heartbeats kept (%v), want 3", beats, err)
	}
}

// TestListenNodesReportsFailures: a listener that cannot connect says why
// each time before it tries again, instead of retrying in silence.
func TestListenNodesReportsFailures(t *testing.T) {
	s := openStore(t, pg.NewSchema(t))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	cfg := s.pgcfg.Copy()
	cfg.Host, cfg.Port, cfg.Fallbacks = "127.0.0.1", uint16(port), nil
	orig := s.pgcfg
	s.pgcfg = cfg // the listener's own connection only
	t.Cleanup(func() { s.pgcfg = orig })
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	errs := make(chan error, 10)
	done := make(chan error, 1)
	go func() {
		done <- s.ListenNodes(ctx, func(context.Context) error { return nil }, func(context.Context, []coordinator.Change) error { return nil }, func(err error) {
			select {
			case errs <- err:
			default:
			}
		})
	}()
	for i := range 2 {
		select {
		case err := <-errs:
			if !strings.Contains(err.Error(), "connect listener") {
				t.Errorf("failure %d = %v, want the listener's connect error", i, err)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("failure %d never reported", i)
		}
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("ListenNodes = %v, want context.Canceled", err)
	}
}

// TestListenUnreadableResyncs: a notification the listener cannot read
// (a coordinator of another version writing a form it does not know) is
// a change it would lose: it says so through failed, connects again and
// resyncs, rather than drop it silently.
func TestListenUnreadableResyncs(t *testing.T) {
	s := openStore(t, pg.NewSchema(t))
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	resyncs := make(chan struct{}, 10)
	errs := make(chan error, 10)
	done := make(chan error, 1)
	go func() {
		done <- s.ListenNodes(ctx, func(context.Context) error { resyncs <- struct{}{}; return nil },
			func(context.Context, []coordinator.Change) error { return nil },
			func(err error) { errs <- err })
	}()
	select {
	case <-resyncs:
	case <-time.After(30 * time.Second):
		t.Fatal("listener did not connect")
	}
	var schema string
	if err := s.db.QueryRowContext(ctx, `SELECT current_schema()`).Scan(&schema); err != nil {
		t.Fatal(err)
	}
	if _, err := s.db.ExecContext(ctx, `SELECT pg_notify($1, $2)`, feedChannelPrefix+schema, "other-origin someday 42 a new form"); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errs:
		if !strings.Contains(err.Error(), "unreadable change notification") {
			t.Errorf("failure = %v, want the unreadable notification named", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("an unreadable notification was dropped silently: no failure reported")
	}
	select {
	case <-resyncs:
	case <-time.After(30 * time.Second):
		t.Fatal("no resync after an unreadable notification")
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("ListenNodes = %v, want context.Canceled", err)
	}
}

// TestListenChanges: a store hears another store's writes to nodes,
// settings, routes and domains, in order, each named by its kind and key,
// and not its own. A change written twice may come once, in a batch
// given after the second write.
func TestListenChanges(t *testing.T) {
	dsn := pg.NewSchema(t)
	a, b := openStore(t, dsn), openStore(t, dsn)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	got := make(chan []coordinator.Change, 100)
	ready := make(chan struct{}, 1)
	done := make(chan error, 1)
	go func() {
		done <- b.ListenNodes(ctx, func(context.Context) error { ready <- struct{}{}; return nil }, func(_ context.Context, chs []coordinator.Change) error {
			got <- slices.Clone(chs)
			return nil
		}, nil)
	}()
	select {
	case <-ready:
	case <-time.After(30 * time.Second):
		t.Fatal("listener did not connect")
	}
	n, err := a.EnsureNetwork(ctx, "default", "d")
	if err != nil {
		t.Fatal(err)
	}
	rec := testNode(n.ID, "alpha", 1)
	if err := a.InsertNode(ctx, rec, time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := b.SetSetting(ctx, "own", []byte("x")); err != nil { // b's own: not reported
		t.Fatal(err)
	}
	if err := a.SetSetting(ctx, "policy_hujson", []byte("{}")); err != nil {
		t.Fatal(err)
	}
	r := &coordinator.Route{NetworkID: n.ID, NodeID: rec.Node.ID, Host: "alpha.example.test", Proto: "http", Port: 80, CreatedAt: time.Now()}
	if err := a.PutRoute(ctx, r); err != nil {
		t.Fatal(err)
	}
	if err := a.PutDomain(ctx, &coordinator.Domain{NetworkID: n.ID, Domain: "shop.example.com", Token: "t", CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if err := a.DeleteRoutes(ctx, []int64{r.ID}); err != nil {
		t.Fatal(err)
	}
	route := coordinator.Change{Kind: coordinator.ChangeRoute, ID: r.ID}
	domain := coordinator.Change{Kind: coordinator.ChangeDomain, Name: "shop.example.com"}
	want := []coordinator.Change{
		{Kind: coordinator.ChangeNode, ID: int64(rec.Node.ID)},
		{Kind: coordinator.ChangeSetting, Name: "policy_hujson"},
		route,
		domain,
	}
	// The route's deletion, written after the domain, comes in a batch
	// no earlier than the domain's.
	var first []coordinator.Change
	domainBatch, routeBatch := -1, -1
	for i := 0; len(first) < len(want) || routeBatch < domainBatch; i++ {
		select {
		case chs := <-got:
			seen := make(map[coordinator.Change]bool)
			for _, ch := range chs {
				if seen[ch] {
					t.Errorf("batch %d has %+v twice: %+v", i, ch, chs)
				}
				seen[ch] = true
				if !slices.Contains(first, ch) {
					first = append(first, ch)
				}
				switch ch {
				case domain:
					if domainBatch < 0 {
						domainBatch = i
					}
				case route:
					routeBatch = i
				}
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("changes so far %+v (domain in batch %d, route last in %d); want %+v, the route again after the domain", first, domainBatch, routeBatch, want)
		}
	}
	if !slices.Equal(first, want) {
		t.Errorf("changes in order = %+v, want %+v", first, want)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("ListenNodes = %v, want context.Canceled", err)
	}
	select {
	case ch := <-got:
		t.Errorf("extra change %+v", ch)
	default:
	}
}

// TestParseChange: notification payloads of every kind, and malformed ones.
func TestParseChange(t *testing.T) {
	presence := func(id int64) coordinator.Change {
		return coordinator.Change{Kind: coordinator.ChangePresence, ID: id}
	}
	tests := []struct {
		payload   string
		origin    string
		want      coordinator.Change
		streaming string
		ok        bool
	}{
		{"o1 42", "o1", coordinator.Change{Kind: coordinator.ChangeNode, ID: 42}, "", true},
		{" 42", "", coordinator.Change{Kind: coordinator.ChangeNode, ID: 42}, "", true},
		{"o1 setting dns_config", "o1", coordinator.Change{Kind: coordinator.ChangeSetting, Name: "dns_config"}, "", true},
		{"o1 route 7", "o1", coordinator.Change{Kind: coordinator.ChangeRoute, ID: 7}, "", true},
		{"o1 domain shop.example.com", "o1", coordinator.Change{Kind: coordinator.ChangeDomain, Name: "shop.example.com"}, "", true},
		{"o1 pending ABCD2345", "o1", coordinator.Change{Kind: coordinator.ChangePending, Name: "ABCD2345"}, "", true},
		{"o1 online 42 o2", "o1", presence(42), "o2", true},
		{"o1 online 42 o1", "o1", presence(42), "o1", true},
		{"o1 offline 42", "o1", presence(42), "", true},
		{"o1 online 42", "", coordinator.Change{}, "", false},
		{"o1 online 42 ", "", coordinator.Change{}, "", false},
		{"o1 online x o2", "", coordinator.Change{}, "", false},
		{"o1 offline x", "", coordinator.Change{}, "", false},
		{"o1 route x", "", coordinator.Change{}, "", false},
		{"o1 bogus 7", "", coordinator.Change{}, "", false},
		{"o1 x", "", coordinator.Change{}, "", false},
		{"o1", "", coordinator.Change{}, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.payload, func(t *testing.T) {
			origin, ch, streaming, ok := parseChange(tt.payload)
			if ok != tt.ok || (ok && (origin != tt.origin || ch != tt.want || streaming != tt.streaming)) {
				t.Errorf("parseChange(%q) = %q, %+v, %q, %v; want %q, %+v, %q, %v", tt.payload, origin, ch, streaming, ok,
					tt.origin, tt.want, tt.streaming, tt.ok)
			}
		})
	}
}

// TestHeartbeatAfterOutage: when the database was unreachable for longer
// than beatStale, every coordinator's beat is stale at once; the first to
// beat again takes no one for dead until the others had judgeAfter to
// beat too, so their nodes do not flap to unknown (or offline, past the
// unknown timeout).
func TestHeartbeatAfterOutage(t *testing.T) {
	dsn := pg.NewSchema(t)
	a, b := openStore(t, dsn), openStore(t, dsn)
	for _, s := range []*Store{a, b} {
		s.beats.judgeAfter = time.Hour // the others never get to beat in this test
	}
	beatStale, unknownTimeout := b.beats.stale, b.beats.unknownTimeout
	ctx := t.Context()
	n, err := a.EnsureNetwork(ctx, "default", "d")
	if err != nil {
		t.Fatal(err)
	}
	alpha := testNode(n.ID, "alpha", 1)
	if err := a.InsertNode(ctx, alpha, time.Now()); err != nil {
		t.Fatal(err)
	}
	for _, s := range []*Store{a, b} {
		if _, _, err := s.Heartbeat(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.SetNodeOnline(ctx, alpha.Node.ID, true, time.Now()); err != nil {
		t.Fatal(err)
	}
	for _, outage := range []time.Duration{2 * beatStale, beatStale + unknownTimeout + time.Second} {
		// Nobody could beat for outage.
		if _, err := a.db.ExecContext(ctx, `UPDATE coordinator_beats SET beat = beat - $1`, int64(outage)); err != nil {
			t.Fatal(err)
		}
		for range 2 {
			changed, _, err := b.Heartbeat(ctx)
			if err != nil || len(changed) != 0 {
				t.Errorf("after an outage of %v: b's Heartbeat changed %v, %v; want none while a has had no chance to beat", outage, changed, err)
			}
		}
		if _, p, err := b.NodeByID(ctx, alpha.Node.ID); err != nil || p != coordinator.PresenceOnline {
			t.Errorf("after an outage of %v: alpha on b is %d, %v; want online", outage, p, err)
		}
		if all, err := b.RemoteOnline(ctx); err != nil || all[alpha.Node.ID] != coordinator.PresenceOnline {
			t.Errorf("after an outage of %v: RemoteOnline on b = %v, %v; want alpha online", outage, all, err)
		}
		if _, missing, err := a.Heartbeat(ctx); err != nil || missing {
			t.Errorf("a's Heartbeat after an outage of %v: missing = %v, %v; want false (its beat kept)", outage, missing, err)
		}
	}
	// Once b judges again, a's coordinator stopping makes alpha unknown.
	b.beats.mu.Lock()
	b.beats.judgeAfter = 0
	b.beats.mu.Unlock()
	if _, err := a.db.ExecContext(ctx, `UPDATE coordinator_beats SET beat = beat - $1 WHERE origin = $2`, int64(2*beatStale), a.origin); err != nil {
		t.Fatal(err)
	}
	if changed, _, err := b.Heartbeat(ctx); err != nil || !slices.Equal(changed, []wire.NodeID{alpha.Node.ID}) {
		t.Errorf("b's Heartbeat once a stopped = %v, %v; want [%d]", changed, err, alpha.Node.ID)
	}
}

// freezer is a TCP proxy to a PostgreSQL server's unix socket whose
// connections can be frozen: they stay open, but nothing passes either
// way, as on a connection left half open by a failover or a NAT that
// forgot it. Connections made after a freeze pass.
type freezer struct {
	ln     net.Listener
	socket string

	mu     sync.Mutex
	conns  []*frozenPair
	closed chan struct{}
}

type frozenPair struct {
	frozen atomic.Bool
	a, b   net.Conn
}

// newFreezer proxies to the server of cfg, until t ends.
func newFreezer(t *testing.T, host string, port uint16) *freezer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &freezer{ln: ln, socket: filepath.Join(host, fmt.Sprintf(".s.PGSQL.%d", port)), closed: make(chan struct{})}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		close(f.closed)
		ln.Close()
		f.mu.Lock()
		for _, p := range f.conns {
			p.a.Close()
			p.b.Close()
		}
		f.mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			a, err := ln.Accept()
			if err != nil {
				return
			}
			b, err := net.Dial("unix", f.socket)
			if err != nil {
				a.Close()
				continue
			}
			p := &frozenPair{a: a, b: b}
			f.mu.Lock()
			f.conns = append(f.conns, p)
			f.mu.Unlock()
			wg.Go(func() { f.pipe(p, a, b) })
			wg.Go(func() { f.pipe(p, b, a) })
		}
	})
	return f
}

// pipe copies from src to dst until either closes; once p is frozen, what
// it reads goes nowhere and it waits for the end of the test.
func (f *freezer) pipe(p *frozenPair, dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if p.frozen.Load() {
			<-f.closed
			return
		}
		if n > 0 {
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			dst.Close()
			return
		}
	}
}

// freeze freezes every connection open now.
func (f *freezer) freeze() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, p := range f.conns {
		p.frozen.Store(true)
	}
}

// TestListenHalfOpen: a listener whose connection goes half open (the
// proxy between it and the server stops passing anything, and TCP sees
// nothing wrong) notices within seconds, connects again and resyncs, so
// the changes made meanwhile are not lost; until then, a quiet healthy
// connection is left alone.
func TestListenHalfOpen(t *testing.T) {
	oldIdle, oldCheck := listenIdle, listenCheckTimeout
	listenIdle, listenCheckTimeout = 200*time.Millisecond, 500*time.Millisecond
	t.Cleanup(func() { listenIdle, listenCheckTimeout = oldIdle, oldCheck })

	dsn := pg.NewSchema(t)
	a, b := openStore(t, dsn), openStore(t, dsn)
	px := newFreezer(t, b.pgcfg.Host, b.pgcfg.Port)
	cfg := b.pgcfg.Copy()
	tcp := px.ln.Addr().(*net.TCPAddr)
	cfg.Host, cfg.Port, cfg.Fallbacks = tcp.IP.String(), uint16(tcp.Port), nil
	orig := b.pgcfg
	b.pgcfg = cfg // the listener's own connection only
	t.Cleanup(func() { b.pgcfg = orig })

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	resyncs := make(chan time.Time, 10)
	got := make(chan coordinator.Change, 100)
	failures := make(chan error, 10)
	done := make(chan error, 1)
	go func() {
		done <- b.ListenNodes(ctx, func(context.Context) error { resyncs <- time.Now(); return nil },
			func(_ context.Context, chs []coordinator.Change) error {
				for _, ch := range chs {
					got <- ch
				}
				return nil
			},
			func(err error) { failures <- err })
	}()
	waitResync := func(what string) time.Time {
		t.Helper()
		select {
		case at := <-resyncs:
			return at
		case <-time.After(30 * time.Second):
			t.Fatalf("no resync %s", what)
			return time.Time{}
		}
	}
	waitChange := func(want coordinator.Change) {
		t.Helper()
		select {
		case ch := <-got:
			if ch != want {
				t.Errorf("change %+v, want %+v", ch, want)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("change %+v never reported", want)
		}
	}
	waitResync("after connecting")
	// Quiet for several idle checks: the connection stays.
	quiet := time.After(5 * listenIdle)
	select {
	case err := <-failures:
		t.Fatalf("a quiet healthy listener failed: %v", err)
	case <-quiet:
	}
	if err := a.SetSetting(ctx, "before", []byte("x")); err != nil {
		t.Fatal(err)
	}
	waitChange(coordinator.Change{Kind: coordinator.ChangeSetting, Name: "before"})

	px.freeze()
	frozen := time.Now()
	if err := a.SetSetting(ctx, "meanwhile", []byte("x")); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-failures:
		if !strings.Contains(err.Error(), "check the listener's connection") {
			t.Errorf("failure %v, want the connection check's", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the half-open connection went unnoticed")
	}
	at := waitResync("after the connection went half open")
	t.Logf("resynced %v after the connection froze", at.Sub(frozen).Round(time.Millisecond))
	if err := a.SetSetting(ctx, "after", []byte("x")); err != nil {
		t.Fatal(err)
	}
	waitChange(coordinator.Change{Kind: coordinator.ChangeSetting, Name: "after"})
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("ListenNodes = %v, want context.Canceled", err)
	}
}

// TestListenResyncFails: a resync that fails makes the listener connect
// again and resync again, after a pause that grows with each failure in
// a row, reporting each failure.
func TestListenResyncFails(t *testing.T) {
	s := openStore(t, pg.NewSchema(t))
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	resyncs := make(chan time.Time, 10)
	failures := make(chan error, 10)
	done := make(chan error, 1)
	n := 0
	go func() {
		done <- s.ListenNodes(ctx, func(context.Context) error {
			resyncs <- time.Now()
			if n++; n <= 2 {
				return errors.New("injected")
			}
			return nil
		}, func(context.Context, []coordinator.Change) error { return nil }, func(err error) { failures <- err })
	}()
	var at []time.Time
	for i := range 3 {
		select {
		case r := <-resyncs:
			at = append(at, r)
		case <-time.After(30 * time.Second):
			t.Fatalf("resync %d never came", i)
		}
	}
	for i := range 2 {
		err := <-failures
		if !strings.Contains(err.Error(), "resync") || !strings.Contains(err.Error(), "injected") {
			t.Errorf("failure %d = %v, want the resync's", i, err)
		}
	}
	if d1, d2 := at[1].Sub(at[0]), at[2].Sub(at[1]); d1 < feedRetry || d2 < 2*feedRetry {
		t.Errorf("resyncs %v and %v apart, want at least %v and %v", d1, d2, feedRetry, 2*feedRetry)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("ListenNodes = %v, want context.Canceled", err)
	}
}

// TestSetNodeOnlineOrder: a delayed write of a node going online on one
// coordinator does not take the node from another it began streaming
// from later, and so the first's later offline write leaves it online
// there; a newer stream takes it. The same for SetStreamStates.
func TestSetNodeOnlineOrder(t *testing.T) {
	writes := []struct {
		name string
		set  func(s *Store, ctx context.Context, id wire.NodeID, online bool, at time.Time) error
	}{
		{"SetNodeOnline", (*Store).SetNodeOnline},
		{"SetStreamStates", func(s *Store, ctx context.Context, id wire.NodeID, online bool, at time.Time) error {
			return s.SetStreamStates(ctx, []coordinator.StreamState{{ID: id, Online: online, At: at}})
		}},
	}
	for _, w := range writes {
		t.Run(w.name, func(t *testing.T) { setNodeOnlineOrder(t, w.set) })
	}
}

func setNodeOnlineOrder(t *testing.T, set func(s *Store, ctx context.Context, id wire.NodeID, online bool, at time.Time) error) {
	dsn := pg.NewSchema(t)
	a, b := openStore(t, dsn), openStore(t, dsn)
	ctx := t.Context()
	n, err := a.EnsureNetwork(ctx, "default", "d")
	if err != nil {
		t.Fatal(err)
	}
	alpha := testNode(n.ID, "alpha", 1)
	if err := a.InsertNode(ctx, alpha, time.Now()); err != nil {
		t.Fatal(err)
	}
	origin := func() string {
		t.Helper()
		var o string
		err := a.db.QueryRowContext(ctx, `SELECT origin FROM node_online WHERE node_id = $1`, int64(alpha.Node.ID)).Scan(&o)
		if errors.Is(err, sql.ErrNoRows) {
			return "none"
		}
		if err != nil {
			t.Fatal(err)
		}
		switch o {
		case a.origin:
			return "a"
		case b.origin:
			return "b"
		}
		return o
	}
	onA := time.Now().Add(-time.Second) // alpha streamed from a, then moved to b
	steps := []struct {
		what   string
		s      *Store
		online bool
		at     time.Time
		want   string
	}{
		{"b: online now", b, true, time.Now(), "b"},
		{"a: online a second ago, written late", a, true, onA, "b"},
		{"a: offline", a, false, time.Now(), "b"},
		{"b: online again (its own row)", b, true, onA, "b"},
		{"a: online after b's", a, true, time.Now().Add(time.Millisecond), "a"},
		{"b: offline", b, false, time.Now(), "a"},
		{"a: offline", a, false, time.Now(), "none"},
	}
	for _, st := range steps {
		if err := set(st.s, ctx, alpha.Node.ID, st.online, st.at); err != nil {
			t.Fatalf("%s: %v", st.what, err)
		}
		if got := origin(); got != st.want {
			t.Errorf("%s: stream state is %s's, want %s's", st.what, got, st.want)
		}
	}
}

// TestStreamStatesBatch: SetStreamStates records many nodes at once,
// online and offline, skipping a node deleted meanwhile; NodesByID reads
// them back with their presence for another store (none for the
// writer's own, nor for a node streaming nowhere) and leaves out the
// deleted one.
func TestStreamStatesBatch(t *testing.T) {
	dsn := pg.NewSchema(t)
	a, b := openStore(t, dsn), openStore(t, dsn)
	ctx := t.Context()
	n, err := a.EnsureNetwork(ctx, "default", "d")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := a.Heartbeat(ctx); err != nil {
		t.Fatal(err)
	}
	var ids []wire.NodeID
	for i := range 5 {
		rec := testNode(n.ID, fmt.Sprintf("n%d", i), byte(i+1))
		if err := a.InsertNode(ctx, rec, time.Now()); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, rec.Node.ID)
	}
	now := time.Now()
	if err := a.SetStreamStates(ctx, []coordinator.StreamState{{ID: ids[0], Online: true, At: now}, {ID: ids[1], Online: true, At: now},
		{ID: ids[2], Online: true, At: now}}); err != nil {
		t.Fatal(err)
	}
	if err := a.DeleteNode(ctx, ids[4]); err != nil {
		t.Fatal(err)
	}
	// ids[4] is gone: skipped. ids[3] goes online, ids[1] offline.
	if err := a.SetStreamStates(ctx, []coordinator.StreamState{{ID: ids[1], At: now}, {ID: ids[3], Online: true, At: now},
		{ID: ids[4], Online: true, At: now}}); err != nil {
		t.Fatal(err)
	}
	recs, remote, err := b.NodesByID(ctx, ids)
	if err != nil {
		t.Fatal(err)
	}
	var got []wire.NodeID
	for _, r := range recs {
		got = append(got, r.Node.ID)
	}
	if want := ids[:4]; !slices.Equal(got, want) {
		t.Errorf("NodesByID read nodes %v, want %v", got, want)
	}
	want := map[wire.NodeID]coordinator.Presence{ids[0]: coordinator.PresenceOnline, ids[2]: coordinator.PresenceOnline, ids[3]: coordinator.PresenceOnline}
	if !maps.Equal(remote, want) {
		t.Errorf("NodesByID presence for another store = %v, want %v", remote, want)
	}
	if _, remote, err := a.NodesByID(ctx, ids); err != nil || len(remote) != 0 {
		t.Errorf("NodesByID presence for the writer = %v, %v; want none (its own streams)", remote, err)
	}
}

// TestNodesClashing: NodesClashing reads the nodes that hold a node's
// key, its name in its network, or either of its addresses (a
// registration the store refused clashes with those), with their
// presence for another store, and no other node.
func TestNodesClashing(t *testing.T) {
	dsn := pg.NewSchema(t)
	a, b := openStore(t, dsn), openStore(t, dsn)
	ctx := t.Context()
	n, err := a.EnsureNetwork(ctx, "default", "d")
	if err != nil {
		t.Fatal(err)
	}
	other, err := a.EnsureNetwork(ctx, "other", "o")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := a.Heartbeat(ctx); err != nil {
		t.Fatal(err)
	}
	// The last node has the name of the second, in another network.
	stored := make(map[string]*coordinator.NodeRecord)
	for i, name := range []string{"key", "name", "v4", "v6", "bystander", "othernet"} {
		rec := testNode(n.ID, name, byte(i+1))
		if name == "othernet" {
			rec = testNode(other.ID, "name", byte(i+1))
		}
		if err := a.InsertNode(ctx, rec, time.Now()); err != nil {
			t.Fatal(err)
		}
		stored[name] = rec
	}
	if err := a.SetStreamStates(ctx, []coordinator.StreamState{{ID: stored["name"].Node.ID, Online: true, At: time.Now()}}); err != nil {
		t.Fatal(err)
	}
	// A new node with the first's key, the second's name, the third's
	// IPv4 address and the fourth's IPv6 address.
	clash := testNode(n.ID, "name", 99)
	clash.Node.Key = stored["key"].Node.Key
	clash.Node.Addresses = []netip.Prefix{stored["v4"].Node.Addresses[0], stored["v6"].Node.Addresses[1]}
	recs, remote, err := b.NodesClashing(ctx, clash)
	if err != nil {
		t.Fatal(err)
	}
	var got, want []wire.NodeID
	for _, r := range recs {
		got = append(got, r.Node.ID)
	}
	for _, name := range []string{"key", "name", "v4", "v6"} {
		want = append(want, stored[name].Node.ID)
	}
	if !slices.Equal(got, want) {
		t.Errorf("NodesClashing read %v, want %v", got, want)
	}
	wantRemote := map[wire.NodeID]coordinator.Presence{stored["name"].Node.ID: coordinator.PresenceOnline}
	if !maps.Equal(remote, wantRemote) {
		t.Errorf("NodesClashing presence for another store = %v, want %v", remote, wantRemote)
	}
	recs, _, err = b.NodesClashing(ctx, testNode(n.ID, "newcomer", 100))
	if err != nil || len(recs) != 0 {
		t.Errorf("NodesClashing for a node that clashes with none = %d nodes, %v; want none", len(recs), err)
	}
}

// TestEdgeAcks: a route's Version changes with each write; an edge
// recorded as sent one version is not for the next.
func TestEdgeAcks(t *testing.T) {
	s := openStore(t, pg.NewSchema(t))
	ctx := t.Context()
	n, err := s.EnsureNetwork(ctx, "default", "d")
	if err != nil {
		t.Fatal(err)
	}
	alpha, edge := testNode(n.ID, "alpha", 1), testNode(n.ID, "edge", 2)
	for _, rec := range []*coordinator.NodeRecord{alpha, edge} {
		if err := s.InsertNode(ctx, rec, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	r := &coordinator.Route{NetworkID: n.ID, NodeID: alpha.Node.ID, Host: "alpha.example.test", Proto: "tcp", Port: 22, PublicPort: 20000, CreatedAt: time.Now()}
	if err := s.PutRoute(ctx, r); err != nil {
		t.Fatal(err)
	}
	v1 := r.Version
	if got, err := s.RouteByID(ctx, r.ID); err != nil || got.Version != v1 || v1 == "" {
		t.Fatalf("RouteByID: version %q (%v), want %q as PutRoute said, not empty", got.Version, err, v1)
	}
	acks := func(v string) []wire.NodeID {
		t.Helper()
		got, err := s.RouteAcks(ctx, r.ID, v)
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	if err := s.AckRoute(ctx, r.ID, v1, []wire.NodeID{edge.Node.ID, 999}); err != nil {
		t.Fatal(err)
	}
	if got := acks(v1); !slices.Equal(got, []wire.NodeID{edge.Node.ID}) {
		t.Errorf("acks of version 1 = %v, want [%d] (no such node as 999)", got, edge.Node.ID)
	}
	r.Port = 2222
	if err := s.PutRoute(ctx, r); err != nil {
		t.Fatal(err)
	}
	if r.Version == v1 {
		t.Fatalf("version %q unchanged by a write", v1)
	}
	if got := acks(r.Version); len(got) != 0 {
		t.Errorf("acks of version 2 = %v, want none yet", got)
	}
	if err := s.DeleteRoutes(ctx, []int64{r.ID}); err != nil {
		t.Fatal(err)
	}
	if got := acks(v1); len(got) != 0 {
		t.Errorf("acks of a deleted route = %v, want none", got)
	}
}

// TestStopBeating: the nodes of a coordinator that stopped cleanly
// (StopBeating) stay online for the others, and for a store opened after
// it closed, while its grace runs, and the coordinator no longer counts as
// live; once the grace is over a heartbeat drops their stream states
// (offline), and the stop's record with them. A node that streams from
// another coordinator meanwhile is not dropped.
func TestStopBeating(t *testing.T) {
	dsn := pg.NewSchema(t)
	ctx := t.Context()
	a, b := openStore(t, dsn), openStore(t, dsn)
	n, err := a.EnsureNetwork(ctx, "default", "d")
	if err != nil {
		t.Fatal(err)
	}
	alpha, beta := testNode(n.ID, "alpha", 1), testNode(n.ID, "beta", 2)
	for _, rec := range []*coordinator.NodeRecord{alpha, beta} {
		if err := a.InsertNode(ctx, rec, time.Now()); err != nil {
			t.Fatal(err)
		}
		if err := a.SetNodeOnline(ctx, rec.Node.ID, true, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := a.Heartbeat(ctx); err != nil {
		t.Fatal(err)
	}
	const grace = time.Hour
	if err := a.StopBeating(ctx, grace); err != nil {
		t.Fatal(err)
	}
	a.Close()
	next := openStore(t, dsn) // the coordinator's restart
	if live, err := next.LiveCoordinators(ctx); err != nil || live != 0 {
		t.Errorf("live coordinators after a clean stop: %d, %v; want 0", live, err)
	}
	for _, s := range []*Store{b, next} {
		if changed, _, err := s.Heartbeat(ctx); err != nil || len(changed) != 0 {
			t.Errorf("Heartbeat during the grace: changed %v, %v; want none", changed, err)
		}
		all, err := s.RemoteOnline(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, rec := range []*coordinator.NodeRecord{alpha, beta} {
			if all[rec.Node.ID] != coordinator.PresenceOnline {
				t.Errorf("%s during the grace: %d, want online", rec.Node.Name, all[rec.Node.ID])
			}
		}
	}
	// beta comes back to the restart; the grace ends.
	if err := next.SetNodeOnline(ctx, beta.Node.ID, true, time.Now()); err != nil {
		t.Fatal(err)
	}
	if _, err := b.db.ExecContext(ctx, `UPDATE coordinator_beats SET stopped_until = stopped_until - $1 WHERE stopped_until IS NOT NULL`, int64(grace+time.Second)); err != nil {
		t.Fatal(err)
	}
	changed, _, err := b.Heartbeat(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(changed, []wire.NodeID{alpha.Node.ID}) {
		t.Errorf("Heartbeat after the grace changed %v, want alpha's %d", changed, alpha.Node.ID)
	}
	all, err := b.RemoteOnline(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if all[alpha.Node.ID] != coordinator.PresenceNone || all[beta.Node.ID] != coordinator.PresenceOnline {
		t.Errorf("after the grace alpha %d and beta %d, want none (offline) and online", all[alpha.Node.ID], all[beta.Node.ID])
	}
	var stops int
	if err := b.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM coordinator_beats WHERE stopped_until IS NOT NULL`).Scan(&stops); err != nil || stops != 0 {
		t.Errorf("%d records of a stop kept after the grace (%v), want 0", stops, err)
	}
}

// TestHeartbeatAfterStaleRead: a read between two Heartbeats can catch
// another coordinator's beat stale (it beat late, under load) although
// both Heartbeats find it fresh; the coordinator keeps what the read
// said, so the next Heartbeat reports the node, and so the other way
// round. Before, the node stayed unknown on the reader for good (its
// peers there never saw it online again), or online while unknown.
func TestHeartbeatAfterStaleRead(t *testing.T) {
	dsn := pg.NewSchema(t)
	a, b := openStore(t, dsn), openStore(t, dsn)
	ctx := t.Context()
	n, err := a.EnsureNetwork(ctx, "default", "d")
	if err != nil {
		t.Fatal(err)
	}
	alpha := testNode(n.ID, "alpha", 1)
	if err := a.InsertNode(ctx, alpha, time.Now()); err != nil {
		t.Fatal(err)
	}
	for _, s := range []*Store{a, b} {
		if _, _, err := s.Heartbeat(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.SetNodeOnline(ctx, alpha.Node.ID, true, time.Now()); err != nil {
		t.Fatal(err)
	}
	// setBeat puts a's last beat ago in the past.
	setBeat := func(ago time.Duration) {
		t.Helper()
		if _, err := a.db.ExecContext(ctx, `UPDATE coordinator_beats SET beat = `+dbNow+` - $1 WHERE origin = $2`, int64(ago), a.origin); err != nil {
			t.Fatal(err)
		}
	}
	read := func(want coordinator.Presence, when string) {
		t.Helper()
		if _, p, err := b.NodeByID(ctx, alpha.Node.ID); err != nil || p != want {
			t.Fatalf("%s: alpha on b is %d, %v; want %d", when, p, err, want)
		}
	}
	beat := func(want []wire.NodeID, when string) {
		t.Helper()
		changed, _, err := b.Heartbeat(ctx)
		if err != nil || !slices.Equal(changed, want) {
			t.Fatalf("%s: b's Heartbeat changed %v, %v; want %v", when, changed, err, want)
		}
	}
	beat(nil, "a beats")
	read(coordinator.PresenceOnline, "a beats")
	setBeat(2 * b.beats.stale) // a beats late...
	read(coordinator.PresenceUnknown, "a late")
	setBeat(0) // ...and beats again before b's next Heartbeat
	beat([]wire.NodeID{alpha.Node.ID}, "a beat again after a read found it late")
	read(coordinator.PresenceOnline, "a beat again")
	beat(nil, "nothing new")

	// The other way: unknown at a Heartbeat, online at a read, unknown
	// again at the next Heartbeat.
	setBeat(2 * b.beats.stale)
	beat([]wire.NodeID{alpha.Node.ID}, "a stopped beating")
	setBeat(0)
	read(coordinator.PresenceOnline, "a beats for a moment")
	setBeat(2 * b.beats.stale)
	beat([]wire.NodeID{alpha.Node.ID}, "a stopped again after a read found it online")
	read(coordinator.PresenceUnknown, "a stopped again")
	beat(nil, "nothing new, a still stopped")
}

// TestChangeBatchPresence: a batch holds one stream state per node, its
// latest, where the node's first came; online from another store is
// PresenceOnline, from this one no presence; this store's own writes are
// left out.
func TestChangeBatchPresence(t *testing.T) {
	s := openStore(t, pg.NewSchema(t))
	var b changeBatch
	for _, p := range []string{
		"o2 online 5 o2",
		"o2 7",
		"o2 offline 5",
		"o3 online 6 o3",
		"o2 online 5 o2",
		s.origin + " online 8 " + s.origin,
		"o2 online 9 " + s.origin,
		"o2 offline 6",
	} {
		s.addChange(&b, &pgconn.Notification{Payload: p})
	}
	want := []coordinator.Change{
		{Kind: coordinator.ChangePresence, ID: 5, Presence: coordinator.PresenceOnline},
		{Kind: coordinator.ChangeNode, ID: 7},
		{Kind: coordinator.ChangePresence, ID: 6, Presence: coordinator.PresenceNone},
		{Kind: coordinator.ChangePresence, ID: 9, Presence: coordinator.PresenceNone},
	}
	if !slices.Equal(b.chs, want) {
		t.Errorf("batch = %+v, want %+v", b.chs, want)
	}
	b.reset()
	s.addChange(&b, &pgconn.Notification{Payload: "o2 offline 5"})
	if want := []coordinator.Change{{Kind: coordinator.ChangePresence, ID: 5}}; !slices.Equal(b.chs, want) {
		t.Errorf("batch after reset = %+v, want %+v", b.chs, want)
	}
}
