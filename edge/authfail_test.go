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
