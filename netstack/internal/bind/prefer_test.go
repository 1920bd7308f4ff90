package bind

import (
	"net/netip"
	"testing"
	"time"
)

func TestBetterPath(t *testing.T) {
	v4 := netip.MustParseAddrPort("203.0.113.12:41641")
	v4b := netip.MustParseAddrPort("198.51.100.2:41641")
	v6 := netip.MustParseAddrPort("[2001:db8:1::2]:41641")
	v6b := netip.MustParseAddrPort("[2001:db8:2::2]:41641")
	ms := time.Millisecond
	us := time.Microsecond
	tests := []struct {
		name       string
		a          netip.AddrPort
		aLat       time.Duration
		b          netip.AddrPort
		bLat       time.Duration
		want       bool
		wantSwitch bool // betterPath(b, bLat, a, aLat): the way back
	}{
		{"same address", v4, ms, v4, 10 * ms, false, false},
		{"v4 clearly faster than v4", v4b, 2 * ms, v4, 10 * ms, true, false},
		{"v4 a little faster than v4", v4b, 8 * ms, v4, 10 * ms, false, false},
		{"v4 faster by under 1ms", v4b, 100 * us, v4, 900 * us, false, false},
		{"v6 clearly faster than v6", v6b, 2 * ms, v6, 10 * ms, true, false},
		{"v6 as fast as v4", v6, 10 * ms, v4, 10 * ms, true, false},
		{"v6 9% slower than v4", v6, 109 * ms, v4, 100 * ms, true, false},
		{"v6 11% slower than v4", v6, 111 * ms, v4, 100 * ms, false, false},
		{"v6 slower by under 1ms, sub-ms paths", v6, 900 * us, v4, 100 * us, true, false},
		{"v6 slower by over 1ms", v6, 1200 * us, v4, 100 * us, false, true},
		{"v6 twice as slow", v6, 20 * ms, v4, 10 * ms, false, true},
		{"v6 faster than v4", v6, 5 * ms, v4, 10 * ms, true, false},
		{"v6 over unmeasured v4", v6, 50 * ms, v4, 0, true, false},
		{"unmeasured v6 over unmeasured v4", v6, 0, v4, 0, true, false},
		{"unmeasured v4 over v4", v4b, 0, v4, 10 * ms, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := betterPath(tt.a, tt.aLat, tt.b, tt.bLat); got != tt.want {
				t.Errorf("betterPath(%v, %v, %v, %v) = %v, want %v", tt.a, tt.aLat, tt.b, tt.bLat, got, tt.want)
			}
			if tt.aLat != 0 && tt.bLat != 0 {
				if got := betterPath(tt.b, tt.bLat, tt.a, tt.aLat); got != tt.wantSwitch {
					t.Errorf("betterPath(%v, %v, %v, %v) (the way back) = %v, want %v", tt.b, tt.bLat, tt.a, tt.aLat, got, tt.wantSwitch)
				}
			}
		})
	}
}

// TestBetterPathNoFlap checks that no two measured paths each count as
// better than the other, over a grid of latencies and both families.
func TestBetterPathNoFlap(t *testing.T) {
	addrs := []netip.AddrPort{
		netip.MustParseAddrPort("203.0.113.12:1"), netip.MustParseAddrPort("203.0.113.13:1"),
		netip.MustParseAddrPort("[2001:db8:1::2]:1"), netip.MustParseAddrPort("[2001:db8:2::2]:1"),
	}
	var lats []time.Duration
	for l := 50 * time.Microsecond; l < 500*time.Millisecond; l = l * 11 / 10 {
		lats = append(lats, l)
	}
	for _, a := range addrs {
		for _, b := range addrs {
			for _, la := range lats {
				for _, lb := range lats {
					if betterPath(a, la, b, lb) && betterPath(b, lb, a, la) {
						t.Fatalf("%v (%v) and %v (%v) are each better than the other", a, la, b, lb)
					}
				}
			}
		}
	}
}

func TestKeepFor(t *testing.T) {
	now := time.Now().UnixNano()
	ep := func(s string, lat time.Duration, lastRecv int64) *Endpoint {
		e := newEndpoint(nil, netip.MustParseAddrPort(s))
		e.latency.Store(int64(lat))
		e.lastRecv.Store(lastRecv)
		return e
	}
	const v4, v6, relay = "203.0.113.12:41641", "[2001:db8:1::2]:41641", "127.3.3.40:1"
	ms := time.Millisecond
	stale := now - int64(staleAfter) - 1
	tests := []struct {
		name    string
		best, e *Endpoint
		want    bool
	}{
		{"fresh v6 over v4", ep(v6, ms, now), ep(v4, 0, now), true},
		{"fresh v6 over v4 as fast", ep(v6, ms, now), ep(v4, ms, now), true},
		{"fresh v6 over clearly faster v4", ep(v6, 20*ms, now), ep(v4, 5*ms, now), false},
		{"stale v6", ep(v6, ms, stale), ep(v4, 0, now), false},
		{"v4 best", ep(v4, ms, now), ep("203.0.113.13:41641", 0, now), false},
		{"v4 best, v6 new", ep(v4, ms, now), ep(v6, 0, now), false},
		{"v6 best, v6 new", ep(v6, ms, now), ep("[2001:db8:1::3]:41641", 0, now), false},
		{"no best", nil, ep(v4, 0, now), false},
		{"relay best", ep(relay, 0, now), ep(v4, 0, now), false},
		{"relay new", ep(v6, ms, now), ep(relay, 0, now), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := keepFor(tt.best, tt.e, now); got != tt.want {
				t.Errorf("keepFor = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestQuiet(t *testing.T) {
	now := time.Now().UnixNano()
	sec := int64(time.Second)
	tests := []struct {
		name            string
		lastRecv        int64
		unansweredSince int64
		want            bool
	}{
		{"never pinged", now - 3*sec, 0, false},
		{"ping answered", now - sec/2, now - sec, false},
		{"ping out for 0.5 s", now - 3*sec, now - sec/2, false},
		{"ping out for 1.5 s", now - 3*sec, now - 3*sec/2, true},
		{"ping out for 1.5 s, path heard just now", now, now - 3*sec/2, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := &peer{}
			best := newEndpoint(p, netip.MustParseAddrPort("[2001:db8:1::2]:41641"))
			best.lastRecv.Store(tt.lastRecv)
			p.unansweredSince.Store(tt.unansweredSince)
			if got := quiet(p, best, now); got != tt.want {
				t.Errorf("quiet = %v, want %v", got, tt.want)
			}
		})
	}
}
