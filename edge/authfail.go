package edge

import (
	"net/netip"
	"sync"
	"time"
)

// authThrottle slows down password guessing against basic-auth routes,
// whether or not the route has a rate limit: a client (an IPv4 address,
// an IPv6 /64) whose credentials fail max times within lockout is
// refused, credentials unchecked, until lockout has passed since its
// first failure. It remembers at most maxClients clients; past that, the
// clients it does not remember share one count (overflow), so filling
// the table (one IPv6 /48 holds 65,536 /64s) does not lift the throttle:
// while it is full, all new clients together get max guesses per lockout.
type authThrottle struct {
	max        int // <= 0: no throttle
	lockout    time.Duration
	maxClients int

	mu       sync.Mutex // guards the fields below
	m        map[netip.Addr]*authFails
	overflow authFails // the clients not in m while m is full
	pruneAt  time.Time // when a full m may be walked for expired clients again
}

// authFails counts one client's failures since first, and its attempts
// under way.
type authFails struct {
	key      netip.Addr
	first    time.Time
	n        int
	inflight int // begun and not ended
}

// maxAuthClients bounds the clients an authThrottle remembers.
const maxAuthClients = 1 << 16

func newAuthThrottle(max int, lockout time.Duration) *authThrottle {
	return &authThrottle{max: max, lockout: lockout, maxClients: maxAuthClients, m: map[netip.Addr]*authFails{}}
}

// wait returns how long client is still refused; 0 if it may try.
func (a *authThrottle) wait(client netip.Addr, now time.Time) time.Duration {
	if a.max <= 0 {
		return 0
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	f := a.m[clientKey(client)]
	if f == nil || f.n < a.max {
		return 0
	}
	return max(f.first.Add(a.lockout).Sub(now), 0)
}

// failed counts a failed attempt of client.
func (a *authThrottle) failed(client netip.Addr, now time.Time) {
	if a.max <= 0 {
		return
	}
	k := clientKey(client)
	a.mu.Lock()
	defer a.mu.Unlock()
	f := a.m[k]
	if f == nil {
		f = a.newLocked(k, now)
	}
	if f.n == 0 || now.Sub(f.first) >= a.lockout {
		f.n, f.first = 0, now
	}
	f.n++
}

// begin counts an attempt of client whose credentials are about to be
// checked, before they are: the attempts under way count toward max with
// the failures, so that many guesses sent at once cannot all be checked
// before the first of them counts as failed. It returns how long client
// is still refused, and counts nothing then. Otherwise the caller reports
// the outcome with end(f, ...); f is nil when the throttle is off.
func (a *authThrottle) begin(client netip.Addr, now time.Time) (wait time.Duration, f *authFails) {
	if a.max <= 0 {
		return 0, nil
	}
	k := clientKey(client)
	a.mu.Lock()
	defer a.mu.Unlock()
	f = a.m[k]
	if f == nil {
		f = a.newLocked(k, now)
	}
	if f.n > 0 && now.Sub(f.first) >= a.lockout {
		f.n = 0 // the window passed: count afresh
	}
	switch {
	case f.n >= a.max:
		return max(f.first.Add(a.lockout).Sub(now), time.Second), nil
	case f.n+f.inflight >= a.max:
		// The attempts under way may use up the allowance; ask again
		// once they have been decided.
		return time.Second, nil
	}
	f.inflight++
	return 0, f
}

// end reports the outcome of an attempt begun with begin.
func (a *authThrottle) end(f *authFails, now time.Time, failed bool) {
	if f == nil {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	f.inflight--
	if failed {
		if f.n == 0 || now.Sub(f.first) >= a.lockout {
			f.n, f.first = 0, now
		}
		f.n++
	}
	if f.n == 0 && f.inflight == 0 && a.m[f.key] == f {
		delete(a.m, f.key)
	}
}

// newLocked returns a new count for the client key k, or the shared
// overflow count when m is full of clients whose window has not passed.
// A full m is walked for expired clients at most every lockout/8, not
// for every new client. a.mu held.
func (a *authThrottle) newLocked(k netip.Addr, now time.Time) *authFails {
	if len(a.m) >= a.maxClients && !now.Before(a.pruneAt) {
		a.pruneLocked(now)
		a.pruneAt = now.Add(max(a.lockout/8, time.Second))
	}
	if len(a.m) >= a.maxClients {
		return &a.overflow
	}
	f := &authFails{key: k}
	a.m[k] = f
	return f
}

// pruneLocked drops the clients whose window has passed and who have no
// attempt under way. a.mu held.
func (a *authThrottle) pruneLocked(now time.Time) {
	for k, f := range a.m {
		if f.inflight == 0 && now.Sub(f.first) >= a.lockout {
			delete(a.m, k)
		}
	}
}
