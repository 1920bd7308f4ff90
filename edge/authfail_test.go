package edge

import (
	"net/netip"
	"testing"
	"time"
)

func TestAuthThrottle(t *testing.T) {
	t0 := time.Unix(1_000_000, 0)
	a := newAuthThrottle(3, time.Minute)
	guesser, neighbour := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	v6, v6same := netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("2001:db8::2")
	for i := range 3 {
		if d := a.wait(guesser, t0); d != 0 {
			t.Fatalf("after %d failures: wait %v, want 0", i, d)
		}
		a.failed(guesser, t0.Add(time.Duration(i)*time.Second))
	}
	for _, tc := range []struct {
		name   string
		client netip.Addr
		at     time.Duration
		want   time.Duration
	}{
		{"the guesser, at once", guesser, 10 * time.Second, 50 * time.Second},
		{"a neighbour", neighbour, 10 * time.Second, 0},
		{"the guesser, after the lockout", guesser, time.Minute, 0},
	} {
		if got := a.wait(tc.client, t0.Add(tc.at)); got != tc.want {
			t.Errorf("%s: wait %v, want %v", tc.name, got, tc.want)
		}
	}
	// A failure after the window starts a new count.
	a.failed(guesser, t0.Add(2*time.Minute))
	if d := a.wait(guesser, t0.Add(2*time.Minute)); d != 0 {
		t.Errorf("one failure in a new window: wait %v, want 0", d)
	}
	// An IPv6 /64 is one client.
	for range 3 {
		a.failed(v6, t0)
	}
	if d := a.wait(v6same, t0); d != time.Minute {
		t.Errorf("another address of the /64: wait %v, want 1m", d)
	}
}

func TestAuthThrottleBounded(t *testing.T) {
	t0 := time.Unix(1_000_000, 0)
	a := newAuthThrottle(1, time.Minute)
	a.maxClients = 100
	addr := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{198, 51, byte(i >> 8), byte(i)}) }
	for i := range 1000 {
		a.failed(addr(i), t0)
	}
	if n := len(a.m); n != 100 {
		t.Fatalf("%d clients remembered, want the bound 100", n)
	}
	// Once the old ones expire, new clients are tracked again.
	a.failed(addr(5000), t0.Add(time.Minute))
	if d := a.wait(addr(5000), t0.Add(time.Minute)); d != time.Minute {
		t.Fatalf("a new client after the old expired: wait %v, want 1m", d)
	}
	if n := len(a.m); n != 1 {
		t.Fatalf("%d clients remembered after the prune, want 1", n)
	}
}

// TestAuthThrottleFull plays a guesser who fills the table (as one IPv6
// /48 can fill the real one) and then guesses from new addresses: the
// new addresses share one count, so guesses past the limit are refused.
func TestAuthThrottleFull(t *testing.T) {
	t0 := time.Unix(1_000_000, 0)
	const max, size = 3, 50
	a := newAuthThrottle(max, time.Minute)
	a.maxClients = size
	v6 := func(i int) netip.Addr {
		return netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, 1, byte(i >> 8), byte(i), 15: 1})
	}
	guess := func(c netip.Addr, at time.Time) time.Duration {
		d, f := a.begin(c, at)
		if d == 0 {
			a.end(f, at, true)
		}
		return d
	}
	for i := range size {
		if d := guess(v6(i), t0); d != 0 {
			t.Fatalf("filling the table, client %d: wait %v, want 0", i, d)
		}
	}
	if n := len(a.m); n != size {
		t.Fatalf("%d clients remembered, want %d", n, size)
	}
	var checked, refused int
	for i := size; i < size+100; i++ {
		if d := guess(v6(i), t0.Add(time.Second)); d > 0 {
			refused++
		} else {
			checked++
		}
	}
	if checked != max || refused != 100-max {
		t.Errorf("100 guesses from new /64s with the table full: %d checked, %d refused; want %d checked, %d refused", checked, refused, max, 100-max)
	}
	// A client the table remembers keeps its own count.
	if d := guess(v6(0), t0.Add(2*time.Second)); d != 0 {
		t.Errorf("a remembered client with 1 failure: wait %v, want 0", d)
	}
	// Once the lockout has passed, the table is pruned and new clients
	// get their own counts again.
	later := t0.Add(2 * time.Minute)
	for i := range max {
		if d := guess(v6(1000), later); d != 0 {
			t.Fatalf("a new client after the prune, guess %d: wait %v, want 0", i, d)
		}
	}
	if d := guess(v6(1000), later); d != time.Minute {
		t.Errorf("a new client after the prune, past the limit: wait %v, want 1m", d)
	}
	if d := guess(v6(1001), later); d != 0 {
		t.Errorf("another new client after the prune: wait %v, want 0 (its own count)", d)
	}
}

// TestAuthThrottlePruneRate checks that a full table is not walked for
// every new client: between two walks, new clients only touch the
// shared count.
func TestAuthThrottlePruneRate(t *testing.T) {
	t0 := time.Unix(1_000_000, 0)
	a := newAuthThrottle(1000, time.Minute)
	a.maxClients = 10
	for i := range 10 {
		a.failed(netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}), t0)
	}
	a.failed(netip.AddrFrom4([4]byte{198, 51, 100, 1}), t0.Add(time.Second))
	next := a.pruneAt
	if want := t0.Add(time.Second + time.Minute/8); !next.Equal(want) {
		t.Fatalf("after a walk of the full table: next walk at %v, want %v", next, want)
	}
	for i := range 100 {
		a.failed(netip.AddrFrom4([4]byte{198, 51, 100, byte(i)}), t0.Add(2*time.Second))
	}
	if !a.pruneAt.Equal(next) {
		t.Errorf("the table was walked again before %v (next walk %v)", next, a.pruneAt)
	}
	if a.overflow.n != 101 {
		t.Errorf("shared count %d, want 101", a.overflow.n)
	}
}
