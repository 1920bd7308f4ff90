package coordinator

import (
	"log/slog"
	"math"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// What an unauthenticated client can make the coordinator keep or do.
// Anyone can seal a request to the coordinator with a key they just
// made, so the sealed endpoints (wire.PathRegister, PathMap, PathExpose,
// PathTXT) cost per request at most: a box to open, a rate-limit bucket
// per source address (sourceLimiter), and a count in a log summary
// (logLimiter). Requests are recorded against replays only once they
// come from a registered node key or carry a valid credential
// (Server.seeRequest), and what a node says about itself is cleaned and
// bounded (cleanRegisterRequest, cleanMapRequest).

const (
	// DefaultMachineRequestRate and DefaultMachineRequestBurst are the
	// default token bucket of one source address (an IPv4 address or an
	// IPv6 /64) on the sealed endpoints: far above what a node sends (a
	// registration and a map stream when it starts, an endpoint update
	// every few seconds while its paths change), and enough for a
	// thousand nodes behind one NAT to come back at once after a
	// coordinator restart.
	DefaultMachineRequestRate  = 200
	DefaultMachineRequestBurst = 2000

	// maxLimitedSources bounds the buckets kept. Beyond it, buckets that
	// refilled are dropped, and a source that finds no room is not
	// limited: refusing it would lock out new nodes instead of the flood.
	maxLimitedSources = 1 << 16

	// logLimitEvery is the interval of a logLimiter: the lines beyond
	// its burst in one interval are counted and logged in one summary.
	logLimitEvery = 10 * time.Second
)

// sourceLimiter is a token bucket per source address. It is safe for
// concurrent use.
type sourceLimiter = keyLimiter[netip.Addr]

// keyLimiter is a token bucket per key (a source address, a node key).
// It is safe for concurrent use.
type keyLimiter[K comparable] struct {
	rate  float64 // tokens per second; <= 0: no limit
	burst float64

	mu        sync.Mutex // guards the following fields
	buckets   map[K]*bucket
	lastSweep time.Time
}

type bucket struct {
	tokens float64
	last   time.Time
}

func newSourceLimiter(rate float64, burst int) *sourceLimiter {
	if rate == 0 {
		rate = DefaultMachineRequestRate
	}
	if burst <= 0 {
		burst = DefaultMachineRequestBurst
	}
	return newKeyLimiter[netip.Addr](rate, burst)
}

func newKeyLimiter[K comparable](rate float64, burst int) *keyLimiter[K] {
	return &keyLimiter[K]{rate: rate, burst: float64(burst), buckets: make(map[K]*bucket)}
}

// allowSource takes a token of l's bucket of source (its IPv4 address
// or IPv6 /64) at now, as allow.
func allowSource(l *sourceLimiter, source netip.Addr, now time.Time) (bool, time.Duration) {
	if !source.IsValid() {
		return true, 0
	}
	return l.allow(sourceKey(source), now)
}

// allow takes a token of source's bucket at now. If there is none it
// returns false and how long until there is one.
func (l *keyLimiter[K]) allow(source K, now time.Time) (bool, time.Duration) {
	if l.rate <= 0 {
		return true, 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[source]
	if b == nil {
		if len(l.buckets) >= maxLimitedSources {
			if now.Sub(l.lastSweep) >= time.Second {
				l.sweepLocked(now)
			}
			if len(l.buckets) >= maxLimitedSources {
				return true, 0
			}
		}
		b = &bucket{tokens: l.burst, last: now}
		l.buckets[source] = b
	}
	if d := now.Sub(b.last); d > 0 {
		b.tokens = min(l.burst, b.tokens+d.Seconds()*l.rate)
		b.last = now
	}
	if b.tokens < 1 {
		wait := time.Duration(math.Ceil((1 - b.tokens) / l.rate * float64(time.Second)))
		return false, wait
	}
	b.tokens--
	return true, 0
}

// sweepLocked drops the buckets that are full again at now: a source
// without a bucket starts full. l.mu held.
func (l *keyLimiter[K]) sweepLocked(now time.Time) {
	l.lastSweep = now
	for a, b := range l.buckets {
		if b.tokens+now.Sub(b.last).Seconds()*l.rate >= l.burst {
			delete(l.buckets, a)
		}
	}
}

// sweep drops full buckets (janitor).
func (l *keyLimiter[K]) sweep(now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.sweepLocked(now)
}

// chargeSource takes one request from the per-source rate limit of r's
// address. Over it, it returns 429 wire.CodeRateLimited with a
// Retry-After header, and coordclient waits that long before it tries
// again. openRequest charges the requests of node keys this coordinator
// does not know, and those of known keys that do not open: a registered
// node is never refused for what others sharing its address (a NAT, a
// /64, the reverse proxy in front of the coordinator) send, and anyone
// forging envelopes with its public key pays from their own address.
func (s *Server) chargeSource(w http.ResponseWriter, r *http.Request) *apiError {
	ok, wait := allowSource(s.machineLimit, remoteAddr(r), s.now())
	if ok {
		return nil
	}
	s.met.machineLimited.Add(1)
	secs := max(1, int((wait+time.Second-1)/time.Second))
	w.Header().Set("Retry-After", strconv.Itoa(secs))
	return errorf(http.StatusTooManyRequests, wire.CodeRateLimited, "too many requests from this address; retry in %ds", secs)
}

// DefaultNodeRequestRate and DefaultNodeRequestBurst are the default
// token bucket of one registered node on the sealed endpoints: a node
// sends a registration and a map stream when it starts, an endpoint
// update every few seconds while its paths change, and a route change
// now and then, so a node past it is broken or hostile, and refusing it
// keeps it from costing the coordinator a box and a store write at will.
const (
	DefaultNodeRequestRate  = 20
	DefaultNodeRequestBurst = 200
)

// chargeNode takes one request from the rate limit of the registered
// node nk. Over it, it returns 429 wire.CodeRateLimited with a
// Retry-After header, which coordclient waits before it tries again.
func (s *Server) chargeNode(w http.ResponseWriter, nk key.NodePublic) *apiError {
	ok, wait := s.nodeLimit.allow(nk, s.now())
	if ok {
		return nil
	}
	s.met.nodeLimited.Add(1)
	secs := max(1, int((wait+time.Second-1)/time.Second))
	w.Header().Set("Retry-After", strconv.Itoa(secs))
	return errorf(http.StatusTooManyRequests, wire.CodeRateLimited, "too many requests from this node; retry in %ds", secs)
}

// logLimiter logs one kind of line that anyone can cause (a refused
// registration, one waiting for approval) at most burst times per
// logLimitEvery; the lines left out are counted, and the count is logged
// with the next line or by flush.
type logLimiter struct {
	msg   string
	burst int

	mu         sync.Mutex // guards the following fields
	start      time.Time  // of the current interval
	logged     int        // lines logged in it
	suppressed int        // lines left out since the last one logged
}

// log logs msg with attrs, or counts it.
func (l *logLimiter) log(log *slog.Logger, now time.Time, attrs ...any) {
	l.mu.Lock()
	if now.Sub(l.start) >= logLimitEvery {
		l.start, l.logged = now, 0
	}
	if l.logged >= max(l.burst, 1) {
		l.suppressed++
		l.mu.Unlock()
		return
	}
	l.logged++
	n := l.suppressed
	l.suppressed = 0
	l.mu.Unlock()
	if n > 0 {
		attrs = append(attrs, "not_logged_before", n)
	}
	log.Info(l.msg, attrs...)
}

// flush logs the count of lines left out once their interval is over
// (janitor).
func (l *logLimiter) flush(log *slog.Logger, now time.Time) {
	l.mu.Lock()
	n := l.suppressed
	if n == 0 || now.Sub(l.start) < logLimitEvery {
		l.mu.Unlock()
		return
	}
	l.start, l.logged, l.suppressed = now, 0, 0
	l.mu.Unlock()
	log.Info(l.msg+" (not logged one by one)", "count", n, "interval", logLimitEvery)
}

// cleanRegisterRequest bounds and cleans what a registering node says
// about itself (wire.MaxHostnameLen, wire.MaxOSLen; cleanText) before it
// is stored, shown to an admin or sent to peers.
func cleanRegisterRequest(req *wire.RegisterRequest) {
	req.Hostname = cleanText(req.Hostname, wire.MaxHostnameLen)
	req.OS = cleanText(req.OS, wire.MaxOSLen)
}

// cleanMapRequest bounds and cleans what a node's map request says about
// it before it is stored and fanned out to its peers: at most
// wire.MaxEndpoints usable endpoints (wire.CleanEndpoints), a printable
// hostname of at most wire.MaxHostnameLen bytes.
func cleanMapRequest(req *wire.MapRequest) {
	if req.Endpoints != nil {
		req.Endpoints = wire.CleanEndpoints(req.Endpoints)
	}
	req.Hostname = cleanText(req.Hostname, wire.MaxHostnameLen)
}

// cleanText returns s as printable text of at most max bytes: invalid
// UTF-8, control and format characters (terminal escapes, bidi
// overrides) and other non-printing runes dropped, spaces trimmed, cut
// at a rune boundary.
func cleanText(s string, max int) string {
	clean := true
	for _, r := range s {
		if r == utf8.RuneError || !unicode.IsPrint(r) {
			clean = false
			break
		}
	}
	if !clean {
		var b strings.Builder
		for _, r := range s {
			if r != utf8.RuneError && unicode.IsPrint(r) {
				b.WriteRune(r)
			}
		}
		s = b.String()
	}
	s = strings.TrimSpace(s)
	if len(s) > max {
		cut := max
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = strings.TrimSpace(s[:cut])
	}
	return s
}
