package derpserver

import (
	"net/netip"
	"sync"
	"time"
)

// STUN rate limits. A node's discovery round sends one Binding request to
// each STUN address of each relay and retransmits the unanswered ones once
// (netstack's stunRound), so one node sends a relay's port at most two
// requests a round, a round every 20s or when its addresses change. The
// limits below let a few hundred nodes behind one NAT address refresh at
// once, while a spoofed source (a reflection victim) gets at most
// stunRate answers of 40 bytes a second from each responder.
const (
	// stunRate is each source's sustained allowance, requests per second.
	stunRate = 32
	// stunBurst is each source's burst allowance.
	stunBurst = 256
	// stunMaxSources bounds the table of sources (about 64 bytes each).
	// When it is full and no entry is idle, new sources share one
	// bucket with the same limits, so a flood of spoofed addresses is
	// still limited.
	stunMaxSources = 8192
)

// stunLimiter is a token bucket per source: an IPv4 address or an IPv6
// /64 (what one host or one victim's network holds). It is safe for
// concurrent use.
type stunLimiter struct {
	rate    float64 // tokens per second
	burst   float64
	max     int              // table bound
	now     func() time.Time // clock
	mu      sync.Mutex       // guards the following fields
	sources map[netip.Addr]*stunBucket
	shared  stunBucket // for new sources while the table is full
	swept   time.Time  // last sweep of idle entries
}

// stunBucket is one token bucket.
type stunBucket struct {
	tokens float64
	last   time.Time
}

func newSTUNLimiter(rate float64, burst, maxSources int) *stunLimiter {
	return &stunLimiter{
		rate:    rate,
		burst:   float64(burst),
		max:     maxSources,
		now:     time.Now,
		sources: make(map[netip.Addr]*stunBucket),
	}
}

// allow reports whether a request from src may be answered, taking a
// token if so.
func (l *stunLimiter) allow(src netip.Addr) bool {
	k := stunSourceKey(src)
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.sources[k]
	if b == nil {
		if len(l.sources) >= l.max {
			l.sweepLocked(now)
		}
		if len(l.sources) >= l.max {
			return l.shared.take(now, l.rate, l.burst)
		}
		b = &stunBucket{tokens: l.burst, last: now}
		l.sources[k] = b
	}
	return b.take(now, l.rate, l.burst)
}

// sweepLocked drops the entries whose bucket has refilled (a new entry
// would be the same), at most once a second so a flood of new sources does
// not scan the table per packet.
func (l *stunLimiter) sweepLocked(now time.Time) {
	if now.Sub(l.swept) < time.Second {
		return
	}
	l.swept = now
	full := time.Duration(l.burst / l.rate * float64(time.Second))
	for k, b := range l.sources {
		if now.Sub(b.last) >= full {
			delete(l.sources, k)
		}
	}
}

// take refills b for the time since its last use and takes a token if
// there is one.
func (b *stunBucket) take(now time.Time, rate, burst float64) bool {
	if b.last.IsZero() {
		b.tokens = burst
	} else if d := now.Sub(b.last); d > 0 {
		b.tokens = min(burst, b.tokens+d.Seconds()*rate)
	}
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// stunSourceKey is the limiter's key for src: the IPv4 address, or the
// /64 of an IPv6 one.
func stunSourceKey(src netip.Addr) netip.Addr {
	src = src.Unmap()
	if src.Is4() {
		return src
	}
	p, _ := src.WithZone("").Prefix(64)
	return p.Addr()
}
