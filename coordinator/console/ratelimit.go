package console

import (
	"net/netip"
	"sync"
	"time"
)

// loginLimiter bounds sign-in attempts per source address (an IPv4
// address, or the /64 of an IPv6 one) with a token bucket: burst attempts
// at once, then one every interval. It tracks at most max sources; when
// full it forgets the one idle longest, so a flood from many addresses
// costs memory it does not get to keep.
type loginLimiter struct {
	now      func() time.Time
	burst    int
	interval time.Duration
	max      int

	mu      sync.Mutex // guards the following fields
	sources map[netip.Addr]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
}

func newLoginLimiter(now func() time.Time, burst int, interval time.Duration, max int) *loginLimiter {
	return &loginLimiter{now: now, burst: burst, interval: interval, max: max, sources: make(map[netip.Addr]*bucket)}
}

// sourceKey groups addresses: an IPv4 address, or the /64 of an IPv6 one.
func sourceKey(a netip.Addr) netip.Addr {
	a = a.Unmap()
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.Addr()
	}
	return a
}

// allow takes one attempt for source. If there is none left it reports
// false and how long until the next.
func (l *loginLimiter) allow(source netip.Addr) (bool, time.Duration) {
	source = sourceKey(source)
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.sources[source]
	if b == nil {
		if len(l.sources) >= l.max {
			l.evictLocked()
		}
		b = &bucket{tokens: float64(l.burst), last: now}
		l.sources[source] = b
	}
	if el := now.Sub(b.last); el > 0 {
		b.tokens = min(float64(l.burst), b.tokens+float64(el)/float64(l.interval))
	}
	b.last = now
	if b.tokens < 1 {
		return false, time.Duration((1 - b.tokens) * float64(l.interval))
	}
	b.tokens--
	return true, 0
}

// evictLocked forgets the source idle longest. loginLimiter.mu held.
func (l *loginLimiter) evictLocked() {
	var oldest netip.Addr
	var at time.Time
	for a, b := range l.sources {
		if !oldest.IsValid() || b.last.Before(at) {
			oldest, at = a, b.last
		}
	}
	delete(l.sources, oldest)
}
