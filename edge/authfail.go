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
// first failure. It remembers at most maxClients clients; past that, new
// clients are not tracked until old entries expire.
type authThrottle struct {
	max        int // <= 0: no throttle
	lockout    time.Duration
	maxClients int

	mu sync.Mutex // guards m
	m  map[netip.Addr]*authFails
}

// authFails counts one client's failures since first.
type authFails struct {
	first time.Time
	n     int
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
	if f != nil && now.Sub(f.first) >= a.lockout {
		f = nil // the window passed: count afresh
	}
	if f == nil {
		if len(a.m) >= a.maxClients {
			a.pruneLocked(now)
			if len(a.m) >= a.maxClients {
				return
			}
		}
		f = &authFails{first: now}
		a.m[k] = f
	}
	f.n++
}

// pruneLocked drops the clients whose window has passed. a.mu held.
func (a *authThrottle) pruneLocked(now time.Time) {
	for k, f := range a.m {
		if now.Sub(f.first) >= a.lockout {
			delete(a.m, k)
		}
	}
}
