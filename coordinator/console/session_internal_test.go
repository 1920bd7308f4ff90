package console

import (
	"net/netip"
	"testing"
	"time"
)

// TestSessionStoreBound checks that the store never holds more than its
// bound, and that a flood of sign-in forms (which anyone can open) drops
// other forms, never a signed-in session.
func TestSessionStoreBound(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	clock := func() time.Time { return now }
	st := newSessionStore(clock, time.Hour, 12*time.Hour, 8)
	var admins []string
	for range 3 {
		_, v := st.create(Identity{Name: "admin", Method: "admin token"}, nil)
		admins = append(admins, v)
		now = now.Add(time.Second)
	}
	_, firstForm := st.create(Identity{}, nil)
	for range 100 {
		now = now.Add(time.Millisecond)
		st.create(Identity{}, nil)
	}
	if n := len(st.byID); n != 8 {
		t.Errorf("store holds %d sessions, want its bound 8", n)
	}
	for i, v := range admins {
		if ss := st.lookup(v); ss == nil || !ss.who.signedIn() {
			t.Errorf("signed-in session %d was dropped by a flood of sign-in forms", i)
		}
	}
	if st.lookup(firstForm) != nil {
		t.Error("the oldest form session survived the flood")
	}

	// With only signed-in sessions, the oldest goes.
	st = newSessionStore(clock, time.Hour, 12*time.Hour, 2)
	_, a := st.create(Identity{Name: "a"}, nil)
	now = now.Add(time.Second)
	_, b := st.create(Identity{Name: "b"}, nil)
	now = now.Add(time.Second)
	_, c := st.create(Identity{Name: "c"}, nil)
	if st.lookup(a) != nil || st.lookup(b) == nil || st.lookup(c) == nil {
		t.Error("full store of signed-in sessions: want the oldest dropped, the others kept")
	}
}

func TestSessionFormLifetime(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	st := newSessionStore(func() time.Time { return now }, time.Hour, 12*time.Hour, 8)
	_, form := st.create(Identity{}, nil)
	now = now.Add(st.formLifetime - time.Second)
	if st.lookup(form) == nil {
		t.Fatal("form session ended before its lifetime")
	}
	now = now.Add(time.Second)
	if st.lookup(form) != nil {
		t.Fatalf("form session outlived %v", st.formLifetime)
	}
}

func TestCSRFValid(t *testing.T) {
	ss := &session{csrf: "abc"}
	for _, tt := range []struct {
		token string
		want  bool
	}{{"abc", true}, {"", false}, {"ab", false}, {"abcd", false}, {"ABC", false}} {
		if got := ss.csrfValid(tt.token); got != tt.want {
			t.Errorf("csrfValid(%q) = %v, want %v", tt.token, got, tt.want)
		}
	}
	if (&session{}).csrfValid("") {
		t.Error("an empty token matched a session without one")
	}
}

func TestLoginLimiter(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	l := newLoginLimiter(func() time.Time { return now }, 2, 10*time.Second, 3)
	a := netip.MustParseAddr("198.51.100.1")
	for i := range 2 {
		if ok, _ := l.allow(a); !ok {
			t.Fatalf("attempt %d refused within the burst", i+1)
		}
	}
	ok, wait := l.allow(a)
	if ok || wait <= 0 || wait > 10*time.Second {
		t.Fatalf("attempt 3: got %v wait %v, want refused with a wait up to 10s", ok, wait)
	}
	// An IPv6 /64 is one source.
	v6a, v6b := netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("2001:db8::ffff:2")
	l.allow(v6a)
	l.allow(v6b)
	if ok, _ := l.allow(netip.MustParseAddr("2001:db8::3")); ok {
		t.Error("a third address of the same /64 got past a burst of 2")
	}
	if ok, _ := l.allow(netip.MustParseAddr("2001:db8:0:1::1")); !ok {
		t.Error("another /64 was limited")
	}
	if len(l.sources) > 3 {
		t.Errorf("limiter tracks %d sources, want at most 3", len(l.sources))
	}
	now = now.Add(10 * time.Second)
	if ok, _ := l.allow(netip.MustParseAddr("203.0.113.9")); !ok {
		t.Error("a new source was refused")
	}
}
