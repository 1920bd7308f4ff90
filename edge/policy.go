package edge

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/bcrypt"
	"golang.org/x/time/rate"
)

// MaxBcryptCost is the highest bcrypt cost a basic-auth secret may have:
// the edge checks the password of every request that brings one (until
// it caches a right one), about 0.25 s of CPU at 12, twice that for
// every step above.
const MaxBcryptCost = 12

// policy is a validated Policy ready for enforcement.
type policy struct {
	Policy
	users   []*authUser
	costs   []int          // the distinct costs of users' bcrypt hashes, ascending
	limiter *clientLimiter // nil without a rate limit
	anyCORS bool
}

type authUser struct {
	user   []byte
	scheme string // "bcrypt", "bcrypt-sha256", "sha256", "plain"
	secret []byte // hash, digest or password; bcrypt-sha256: a bcrypt hash of the password's SHA-256 in hex
	cost   int    // of a bcrypt hash

	mu sync.Mutex // guards ok
	ok [][32]byte // SHA-256 of passwords bcrypt accepted, to spare the CPU
}

// compilePolicy validates p. The caller holds e.mu.
func (e *Edge) compilePolicy(name string, proto Proto, p Policy) (*policy, error) {
	var errs []error
	cp := &policy{Policy: p}
	for _, u := range p.BasicAuth {
		au := &authUser{user: []byte(u.User)}
		switch {
		case u.User == "" || strings.ContainsAny(u.User, ":\r\n"):
			errs = append(errs, fmt.Errorf("basic auth user %q is invalid", u.User))
		case strings.HasPrefix(u.Secret, "$2a$"), strings.HasPrefix(u.Secret, "$2b$"), strings.HasPrefix(u.Secret, "$2y$"),
			strings.HasPrefix(u.Secret, "bcrypt-sha256:"):
			au.scheme = "bcrypt"
			h, ok := strings.CutPrefix(u.Secret, "bcrypt-sha256:")
			if ok {
				au.scheme = "bcrypt-sha256"
			}
			cost, err := bcrypt.Cost([]byte(h))
			switch {
			case err != nil:
				errs = append(errs, fmt.Errorf("basic auth user %q: bcrypt hash: %w", u.User, err))
			case cost > MaxBcryptCost:
				errs = append(errs, fmt.Errorf("basic auth user %q: bcrypt cost %d is over %d: the edge checks it on every request", u.User, cost, MaxBcryptCost))
			}
			au.secret, au.cost = []byte(h), cost
			if !slices.Contains(cp.costs, cost) {
				cp.costs = append(cp.costs, cost)
			}
		case strings.HasPrefix(u.Secret, "sha256:"):
			d, err := hex.DecodeString(strings.TrimPrefix(u.Secret, "sha256:"))
			if err != nil || len(d) != sha256.Size {
				errs = append(errs, fmt.Errorf("basic auth user %q: want sha256:<64 hex digits>", u.User))
			}
			au.scheme, au.secret = "sha256", d
		case strings.HasPrefix(u.Secret, "plain:"):
			au.scheme, au.secret = "plain", []byte(strings.TrimPrefix(u.Secret, "plain:"))
		default:
			errs = append(errs, fmt.Errorf("basic auth user %q: secret must start with $2a$/$2b$/$2y$, bcrypt-sha256:, sha256: or plain:", u.User))
		}
		cp.users = append(cp.users, au)
	}
	slices.Sort(cp.costs)
	if len(p.BasicAuth) > 0 && proto != ProtoHTTP {
		errs = append(errs, errors.New("basic auth needs an http route"))
	}
	if len(p.SignIn) > 0 && proto != ProtoHTTP {
		errs = append(errs, errors.New("sign-in needs an http route"))
	}
	for _, c := range slices.Concat(p.AllowCIDRs, p.DenyCIDRs) {
		if !c.IsValid() {
			errs = append(errs, fmt.Errorf("invalid CIDR %v", c))
		}
	}
	if p.RateLimit < 0 || p.RateBurst < 0 {
		errs = append(errs, errors.New("negative rate limit"))
	}
	if p.RateLimit > 0 {
		burst := max(p.RateBurst, 1)
		key := fmt.Sprintf("%s|%v|%d", name, float64(p.RateLimit), burst)
		l := e.limiters[key]
		if l == nil {
			l = &clientLimiter{limit: p.RateLimit, burst: burst, m: map[netip.Addr]*limEntry{}}
			e.limiters[key] = l
		}
		cp.limiter = l
	}
	checkHeaders := func(add map[string]string, remove []string) {
		for k, v := range add {
			if !validHeaderName(k) || !validHeaderValue(v) {
				errs = append(errs, fmt.Errorf("invalid header %q: %q", k, v))
			}
		}
		for _, k := range remove {
			if !validHeaderName(k) {
				errs = append(errs, fmt.Errorf("invalid header name %q", k))
			}
		}
	}
	checkHeaders(p.RequestHeaderAdd, p.RequestHeaderRemove)
	checkHeaders(p.ResponseHeaderAdd, p.ResponseHeaderRemove)
	if (len(p.RequestHeaderAdd)+len(p.RequestHeaderRemove)+len(p.ResponseHeaderAdd)+len(p.ResponseHeaderRemove)+len(p.CORSOrigins) > 0) && proto != ProtoHTTP {
		errs = append(errs, errors.New("header and CORS policies need an http route"))
	}
	for _, o := range p.CORSOrigins {
		if o == "*" {
			cp.anyCORS = true
			continue
		}
		if !strings.HasPrefix(o, "http://") && !strings.HasPrefix(o, "https://") || strings.ContainsAny(o, " \r\n,") || strings.Count(o, "/") != 2 {
			errs = append(errs, fmt.Errorf("CORS origin %q: want scheme://host[:port] or *", o))
		}
	}
	switch p.ProxyProtocol {
	case 0:
	case 1, 2:
		if proto != ProtoTCP && proto != ProtoTLS {
			errs = append(errs, errors.New("PROXY protocol needs a tcp or tls route"))
		}
	default:
		errs = append(errs, fmt.Errorf("PROXY protocol version %d (want 0, 1 or 2)", p.ProxyProtocol))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return cp, nil
}

// admitted reports whether the CIDR lists let client in.
func (p *policy) admitted(client netip.Addr) bool {
	client = client.Unmap()
	for _, c := range p.DenyCIDRs {
		if c.Contains(client) {
			return false
		}
	}
	if len(p.AllowCIDRs) == 0 {
		return true
	}
	for _, c := range p.AllowCIDRs {
		if c.Contains(client) {
			return true
		}
	}
	return false
}

// allowRate takes one token for client. It returns 0 if allowed, otherwise
// how long until a token would be available.
func (p *policy) allowRate(client netip.Addr, now time.Time) time.Duration {
	if p.limiter == nil {
		return 0
	}
	return p.limiter.allow(clientKey(client), now)
}

// authorized checks HTTP basic credentials. It compares the name with
// every user's in constant time and checks the password only against the
// users of that name. So that the time a wrong password takes does not
// tell which names exist, nor which scheme or cost a user has, every
// refused request spends the same bcrypt work: one check at each bcrypt
// cost the route's users have, against the user's own hash where the
// name's user has that cost and against a fixed hash that nothing
// matches otherwise. A route whose users all share one cost spends one
// check; mixed costs add at most as much again. A right password may
// take less (a remembered one, a sha256 or plain secret): that tells
// the client nothing it does not know.
func (p *policy) authorized(r *http.Request) bool {
	if len(p.users) == 0 {
		return true
	}
	user, pass, ok := r.BasicAuth()
	if !ok {
		return false
	}
	var match []*authUser
	for _, u := range p.users {
		if subtle.ConstantTimeCompare([]byte(user), u.user) == 1 {
			match = append(match, u)
		}
	}
	var spent []int // the bcrypt costs checked
	for _, u := range match {
		ok, cost := u.check(pass)
		if ok {
			return true
		}
		if cost > 0 {
			spent = append(spent, cost)
		}
	}
	for _, cost := range p.costs {
		if !slices.Contains(spent, cost) {
			bcryptCompare(dummyHash(cost), []byte(pass))
		}
	}
	return false
}

// bcryptCompare checks a password against a bcrypt hash; tests count
// its calls.
var bcryptCompare = bcrypt.CompareHashAndPassword

// dummyHashes are bcrypt hashes of a random password, one per cost,
// made on first use.
var dummyHashes = func() (hs [MaxBcryptCost + 1]func() []byte) {
	for cost := range hs {
		hs[cost] = sync.OnceValue(func() []byte {
			var pw [16]byte
			rand.Read(pw[:])
			h, err := bcrypt.GenerateFromPassword(pw[:], max(cost, bcrypt.MinCost))
			if err != nil {
				panic("edge: bcrypt: " + err.Error()) // only for a cost out of range
			}
			return h
		})
	}
	return hs
}()

// dummyHash returns a bcrypt hash of cost (at most MaxBcryptCost) that no
// password matches.
func dummyHash(cost int) []byte {
	return dummyHashes[min(cost, MaxBcryptCost)]()
}

// check reports whether pass is u's password, and the cost of the
// bcrypt check it made (0 for none).
func (u *authUser) check(pass string) (ok bool, bcryptCost int) {
	switch u.scheme {
	case "plain":
		a := sha256.Sum256([]byte(pass))
		b := sha256.Sum256(u.secret)
		return subtle.ConstantTimeCompare(a[:], b[:]) == 1, 0
	case "sha256":
		d := sha256.Sum256([]byte(pass))
		return subtle.ConstantTimeCompare(d[:], u.secret) == 1, 0
	case "bcrypt", "bcrypt-sha256":
		d := sha256.Sum256([]byte(pass))
		u.mu.Lock()
		cached := slices.Contains(u.ok, d)
		u.mu.Unlock()
		if cached {
			return true, 0
		}
		in := []byte(pass)
		if u.scheme == "bcrypt-sha256" {
			in = []byte(hex.EncodeToString(d[:]))
		}
		if bcryptCompare(u.secret, in) != nil {
			return false, u.cost
		}
		u.mu.Lock()
		if len(u.ok) < 8 {
			u.ok = append(u.ok, d)
		}
		u.mu.Unlock()
		return true, u.cost
	}
	return false, 0
}

// corsOrigin returns the Access-Control-Allow-Origin value for origin, or ""
// when origin is not allowed.
func (p *policy) corsOrigin(origin string) string {
	if origin == "" || len(p.CORSOrigins) == 0 {
		return ""
	}
	if p.anyCORS {
		return "*"
	}
	for _, o := range p.CORSOrigins {
		if strings.EqualFold(o, origin) {
			return origin
		}
	}
	return ""
}

// clientKey groups clients for limits: an IPv4 address, or an IPv6 /64.
func clientKey(a netip.Addr) netip.Addr {
	a = a.Unmap()
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.Addr()
	}
	return a
}

// clientLimiter is a token bucket per client key.
type clientLimiter struct {
	limit rate.Limit
	burst int

	mu sync.Mutex // guards m
	m  map[netip.Addr]*limEntry
}

type limEntry struct {
	lim  *rate.Limiter
	last time.Time
}

func (l *clientLimiter) allow(k netip.Addr, now time.Time) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	en := l.m[k]
	if en == nil {
		en = &limEntry{lim: rate.NewLimiter(l.limit, l.burst)}
		l.m[k] = en
	}
	en.last = now
	r := en.lim.ReserveN(now, 1)
	if !r.OK() {
		return time.Duration(math.MaxInt64)
	}
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return d
	}
	return 0
}

// prune drops entries idle long enough for their bucket to be full again.
func (l *clientLimiter) prune(now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	full := time.Duration(float64(l.burst)/float64(l.limit)*float64(time.Second)) + time.Minute
	for k, en := range l.m {
		if now.Sub(en.last) > full {
			delete(l.m, k)
		}
	}
}

// retryAfter formats a wait as a Retry-After value in whole seconds (at
// least 1).
func retryAfter(d time.Duration) string {
	s := int64(math.Ceil(d.Seconds()))
	if s < 1 || d < 0 {
		s = 1
	}
	if s > 3600 {
		s = 3600
	}
	return strconv.FormatInt(s, 10)
}

// connLimiter counts concurrent connections per client key.
type connLimiter struct {
	mu  sync.Mutex // guards the following fields
	max int        // <0: unlimited
	n   map[netip.Addr]int
}

func newConnLimiter(max int) *connLimiter {
	return &connLimiter{max: max, n: map[netip.Addr]int{}}
}

// setMax changes the cap; clients over a lowered cap keep their
// connections and get no new ones until they are under it.
func (l *connLimiter) setMax(max int) {
	l.mu.Lock()
	l.max = max
	l.mu.Unlock()
}

// acquire reserves a slot for client, reporting false when it has max
// connections already. Slots are counted even without a cap, so that a
// cap set later (setMax) counts the connections already open.
func (l *connLimiter) acquire(client netip.Addr) bool {
	k := clientKey(client)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.max >= 0 && l.n[k] >= l.max {
		return false
	}
	l.n[k]++
	return true
}

func (l *connLimiter) release(client netip.Addr) {
	k := clientKey(client)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n[k] <= 1 {
		delete(l.n, k)
	} else {
		l.n[k]--
	}
}

// validHeaderName reports whether k is an RFC 9110 token.
func validHeaderName(k string) bool {
	if k == "" {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0 {
			continue
		}
		return false
	}
	return true
}

// validHeaderValue reports whether v holds no control bytes but tab.
func validHeaderValue(v string) bool {
	for i := 0; i < len(v); i++ {
		if c := v[i]; c < ' ' && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}
