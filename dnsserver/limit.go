package dnsserver

import (
	"net/netip"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Default per-source rate limit, used when the options leave it zero.
const (
	DefaultRateLimit rate.Limit = 200
	DefaultBurst                = 400
)

// maxLimiters bounds how many sources the limiter tracks; past it, sources whose
// bucket is full again (idle) are forgotten, and if none are, all are.
const maxLimiters = 8192

// sourceLimiter is a per-source token bucket. The zero value is not usable;
// see newSourceLimiter.
type sourceLimiter struct {
	limit rate.Limit
	burst int
	now   func() time.Time

	mu sync.Mutex // guards the following fields
	m  map[netip.Addr]*rate.Limiter
}

func newSourceLimiter(limit rate.Limit, burst int, now func() time.Time) *sourceLimiter {
	if limit == 0 {
		limit = DefaultRateLimit
	}
	if burst <= 0 {
		burst = DefaultBurst
	}
	return &sourceLimiter{limit: limit, burst: burst, now: now, m: make(map[netip.Addr]*rate.Limiter)}
}

// allow reports whether src may send one more query now.
func (l *sourceLimiter) allow(src netip.Addr) bool {
	if l.limit == rate.Inf {
		return true
	}
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	lim := l.m[src]
	if lim == nil {
		if len(l.m) >= maxLimiters {
			l.pruneLocked(now)
		}
		lim = rate.NewLimiter(l.limit, l.burst)
		l.m[src] = lim
	}
	return lim.AllowN(now, 1)
}

// pruneLocked forgets idle sources. l.mu must be held.
func (l *sourceLimiter) pruneLocked(now time.Time) {
	for a, lim := range l.m {
		if lim.TokensAt(now) >= float64(l.burst) {
			delete(l.m, a)
		}
	}
	if len(l.m) >= maxLimiters {
		clear(l.m)
	}
}
