package edge

import (
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"

	"golang.org/x/time/rate"
)

// Proto is the kind of a route.
type Proto string

// Route protocols.
const (
	ProtoHTTP Proto = "http" // reverse proxy by Host, TLS terminated at the edge when served on TLS
	ProtoTLS  Proto = "tls"  // SNI passthrough of the raw TLS stream
	ProtoTCP  Proto = "tcp"  // raw TCP on PublicPort
	ProtoUDP  Proto = "udp"  // UDP datagrams on PublicPort
)

// Balance chooses a pool member for each new request or connection.
type Balance string

// Balancing strategies.
const (
	RoundRobin Balance = ""           // the default: members in turn
	LeastConn  Balance = "least_conn" // the member with the fewest active requests/connections
)

// Route publishes overlay targets on a public name or port.
type Route struct {
	// Host is the public name of an http or tls route, e.g.
	// "alpha.example.test". It is matched case-insensitively, ignoring one
	// trailing dot; two routes may not share a name in any spelling.
	Host string

	// CustomDomain marks Host as a custom domain whose ownership the
	// coordinator has verified; only then may Host lie outside
	// Options.Domain.
	CustomDomain bool

	// Proto is the route kind: ProtoHTTP, ProtoTLS, ProtoTCP or ProtoUDP.
	Proto Proto

	// PublicPort is the public port of a tcp or udp route; ServeTCP and
	// ServeUDP look routes up by it. Unused for http and tls routes.
	PublicPort uint16

	// Targets are the overlay address:ports of the devices; several make a
	// pool. At least one is required.
	Targets []netip.AddrPort

	// Balance picks a pool member; zero is RoundRobin.
	Balance Balance

	// Policy is enforced at the edge before anything reaches a target.
	Policy Policy
}

// Policy is what the edge enforces for a route. The zero Policy lets
// everything through unchanged.
type Policy struct {
	// BasicAuth, if not empty, requires HTTP basic auth with one of these
	// users (401 with WWW-Authenticate otherwise). http routes only.
	BasicAuth []BasicAuthUser

	// AllowCIDRs, if not empty, admits only clients inside one of them;
	// DenyCIDRs refuses clients inside any of them (403 for HTTP, a closed
	// connection or dropped datagram otherwise). Deny wins over allow.
	AllowCIDRs, DenyCIDRs []netip.Prefix

	// RateLimit is the sustained rate of requests (http), new connections
	// (tcp, tls) or new flows (udp) allowed per client IP, with bursts of
	// RateBurst (at least 1 when RateLimit is set). Zero means no limit.
	// Refused HTTP requests get 429 with Retry-After.
	RateLimit rate.Limit
	RateBurst int

	// RequestHeaderAdd sets headers on requests toward the device, replacing
	// any value the client sent; RequestHeaderRemove deletes headers from
	// them. Removal happens first.
	RequestHeaderAdd    map[string]string
	RequestHeaderRemove []string

	// ResponseHeaderAdd and ResponseHeaderRemove do the same on responses
	// toward the client.
	ResponseHeaderAdd    map[string]string
	ResponseHeaderRemove []string

	// CORSOrigins, if not empty, are the origins ("https://app.test", or "*"
	// for any) allowed to make cross-origin requests: the edge answers their
	// preflight OPTIONS requests itself and adds Access-Control-Allow-Origin
	// to responses for them.
	CORSOrigins []string

	// SignIn, if not empty, puts an http route behind the edge's
	// Options.SignIn with these rules ("email:*@example.com",
	// "group:eng"): the person must sign in and match one. The device then
	// gets SignInUserHeader and SignInEmailHeader, which the edge always
	// strips from clients' requests.
	SignIn []string

	// ProxyProtocol, for tcp and tls routes, sends a PROXY protocol header of
	// that version (1 or 2) to the device before the client's bytes; 0 sends
	// none.
	ProxyProtocol int
}

// BasicAuthUser is one user of Policy.BasicAuth.
type BasicAuthUser struct {
	// User is the user name, compared in constant time.
	User string

	// Secret verifies the password. Its form names the scheme:
	//   "$2a$…", "$2b$…", "$2y$…"  a bcrypt hash
	//   "bcrypt-sha256:$2a$…"      a bcrypt hash of the password's SHA-256
	//                              in lowercase hex (passwords over 72 bytes)
	//   "sha256:<64 hex digits>"   the SHA-256 of the password
	//   "plain:<password>"         the password itself, compared in constant time
	Secret string
}

// table is an immutable, validated routing snapshot.
type table struct {
	hosts   map[string]*route // http and tls routes by normalised host
	tcp     map[uint16]*route
	udp     map[uint16]*route
	targets map[netip.AddrPort]*target // every target of every route
}

// route is a validated Route with its runtime state.
type route struct {
	Route
	name    string // for logs: host or proto/port
	targets []*target
	policy  *policy
	rr      atomic.Uint64
}

// SetRoutes validates routes and, if all are valid, replaces the current
// routes with them atomically; requests and connections already under way
// keep the route they started with. On error nothing changes and the error
// lists every problem.
func (e *Edge) SetRoutes(routes []Route) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return ErrClosed
	}
	t := &table{
		hosts:   make(map[string]*route),
		tcp:     make(map[uint16]*route),
		udp:     make(map[uint16]*route),
		targets: make(map[netip.AddrPort]*target),
	}
	var errs []error
	for i, r := range routes {
		rt, err := e.validateRoute(r)
		if err != nil {
			errs = append(errs, fmt.Errorf("route %d (%s): %w", i, r.Host+portSuffix(r), err))
			continue
		}
		switch rt.Proto {
		case ProtoHTTP, ProtoTLS:
			if _, dup := t.hosts[rt.Host]; dup {
				errs = append(errs, fmt.Errorf("route %d: duplicate host %q", i, rt.Host))
				continue
			}
			t.hosts[rt.Host] = rt
		case ProtoTCP:
			if _, dup := t.tcp[rt.PublicPort]; dup {
				errs = append(errs, fmt.Errorf("route %d: duplicate tcp port %d", i, rt.PublicPort))
				continue
			}
			t.tcp[rt.PublicPort] = rt
		case ProtoUDP:
			if _, dup := t.udp[rt.PublicPort]; dup {
				errs = append(errs, fmt.Errorf("route %d: duplicate udp port %d", i, rt.PublicPort))
				continue
			}
			t.udp[rt.PublicPort] = rt
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	// Attach shared target state, keeping the health of known targets.
	for _, m := range []map[string]*route{t.hosts} {
		for _, rt := range m {
			e.attachTargetsLocked(t, rt)
		}
	}
	for _, m := range []map[uint16]*route{t.tcp, t.udp} {
		for _, rt := range m {
			e.attachTargetsLocked(t, rt)
		}
	}
	var gone []*target
	for a, tg := range e.targets {
		if t.targets[a] == nil {
			delete(e.targets, a)
			gone = append(gone, tg)
		}
	}
	e.routes.Store(t)
	// Connections to targets no route has any more would otherwise hang
	// on a device that may be gone for good. They are the only ones
	// closed: the idle connections to every other target stay for the
	// next requests (the transport drops a closed one from its pool).
	for _, tg := range gone {
		tg.remove()
	}
	return nil
}

func portSuffix(r Route) string {
	if r.Proto == ProtoTCP || r.Proto == ProtoUDP {
		return fmt.Sprintf("%s/%d", r.Proto, r.PublicPort)
	}
	return ""
}

func (e *Edge) attachTargetsLocked(t *table, rt *route) {
	for _, a := range rt.Targets {
		tg := e.targets[a]
		if tg == nil {
			tg = &target{addr: a}
			e.targets[a] = tg
		}
		rt.targets = append(rt.targets, tg)
		t.targets[a] = tg
	}
}

// validateRoute checks one route and returns its runtime form.
func (e *Edge) validateRoute(r Route) (*route, error) {
	var errs []error
	rt := &route{Route: r}
	switch r.Proto {
	case ProtoHTTP, ProtoTLS:
		h, ok := normalizeHost(r.Host)
		switch {
		case !ok:
			errs = append(errs, fmt.Errorf("invalid host %q", r.Host))
		case r.CustomDomain:
			if h == e.opts.Domain || strings.HasSuffix(h, "."+e.opts.Domain) {
				errs = append(errs, fmt.Errorf("custom domain %q lies under the edge domain", h))
			}
		default:
			label, ok := strings.CutSuffix(h, "."+e.opts.Domain)
			if !ok || label == "" || strings.Contains(label, ".") {
				errs = append(errs, fmt.Errorf("host %q is not one label under %q and not a verified custom domain", h, e.opts.Domain))
			}
		}
		rt.Host = h
		rt.name = h
		if r.PublicPort != 0 {
			errs = append(errs, errors.New("PublicPort is for tcp and udp routes"))
		}
	case ProtoTCP, ProtoUDP:
		if r.PublicPort == 0 {
			errs = append(errs, errors.New("PublicPort is required"))
		}
		if r.Host != "" {
			errs = append(errs, errors.New("Host is for http and tls routes"))
		}
		rt.name = fmt.Sprintf("%s/%d", r.Proto, r.PublicPort)
	default:
		errs = append(errs, fmt.Errorf("unknown proto %q", r.Proto))
	}
	if len(r.Targets) == 0 {
		errs = append(errs, errors.New("no targets"))
	}
	seen := map[netip.AddrPort]bool{}
	for _, a := range r.Targets {
		if err := e.checkTarget(a); err != nil {
			errs = append(errs, err)
		}
		if seen[a] {
			errs = append(errs, fmt.Errorf("duplicate target %v", a))
		}
		seen[a] = true
	}
	rt.Targets = append([]netip.AddrPort(nil), r.Targets...)
	switch r.Balance {
	case RoundRobin, LeastConn:
	default:
		errs = append(errs, fmt.Errorf("unknown balance %q", r.Balance))
	}
	p, err := e.compilePolicy(rt.name, r.Proto, r.Policy)
	if err != nil {
		errs = append(errs, err)
	}
	rt.policy = p
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return rt, nil
}

// checkTarget refuses targets outside the overlay.
func (e *Edge) checkTarget(a netip.AddrPort) error {
	ip := a.Addr()
	if !a.IsValid() || a.Port() == 0 {
		return fmt.Errorf("invalid target %v", a)
	}
	if ip.Is4In6() {
		return fmt.Errorf("target %v: IPv4-mapped addresses are refused", a)
	}
	if ip.Zone() != "" || ip.IsLoopback() || ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast() ||
		ip.IsUnspecified() || ip.IsMulticast() || ip.IsInterfaceLocalMulticast() ||
		ip == netip.AddrFrom4([4]byte{100, 100, 100, 100}) {
		return fmt.Errorf("target %v is not an overlay address", a)
	}
	for _, p := range e.overlay {
		if p.Contains(ip) {
			return nil
		}
	}
	return fmt.Errorf("target %v is outside the overlay prefixes", a)
}

// normalizeHost turns a Host header, SNI or route host into its canonical
// form: the port (if any) removed, ASCII lower-case, one trailing dot
// removed. It reports false for anything that is not a valid DNS name of
// letters, digits, hyphens and underscores (IP literals included).
func normalizeHost(h string) (string, bool) {
	if i := strings.LastIndexByte(h, ':'); i >= 0 {
		if strings.Contains(h[:i], ":") || strings.HasPrefix(h, "[") {
			return "", false // IPv6 literal
		}
		port := h[i+1:]
		if len(port) == 0 || len(port) > 5 {
			return "", false
		}
		for j := 0; j < len(port); j++ {
			if port[j] < '0' || port[j] > '9' {
				return "", false
			}
		}
		h = h[:i]
	}
	h = strings.TrimSuffix(h, ".")
	if len(h) == 0 || len(h) > 253 {
		return "", false
	}
	var b []byte // allocated only if h has upper case
	label := 0
	allDigits := true
	for i := 0; i < len(h); i++ {
		c := h[i]
		switch {
		case c >= 'a' && c <= 'z', c == '_':
			allDigits = false
		case c >= 'A' && c <= 'Z':
			allDigits = false
			if b == nil {
				b = []byte(h)
			}
			b[i] = c + 'a' - 'A'
		case c >= '0' && c <= '9':
		case c == '-':
			allDigits = false
			if label == 0 || i+1 == len(h) || h[i+1] == '.' {
				return "", false
			}
		case c == '.':
			if label == 0 {
				return "", false
			}
			label = 0
			continue
		default:
			return "", false
		}
		label++
		if label > 63 {
			return "", false
		}
	}
	if allDigits || label == 0 {
		return "", false // IPv4 literal or numeric TLD
	}
	// A name whose last label is numeric could be read as an IP address.
	if last := h[strings.LastIndexByte(h, '.')+1:]; strings.Trim(last, "0123456789") == "" {
		return "", false
	}
	if b != nil {
		return string(b), true
	}
	return h, true
}

// Headers naming the signed-in person on requests of routes with
// Policy.SignIn. The edge deletes them from every client request.
const (
	SignInUserHeader  = "X-Beam-User"
	SignInEmailHeader = "X-Beam-Email"
)

// SignIn authenticates people at the edge for routes with Policy.SignIn
// (an OpenID Connect relying party: beam.dev/beam/edge/edgeoidc).
type SignIn interface {
	// Authenticate returns who made r if they are signed in and match
	// one of rules. Otherwise it answers r itself (a redirect to sign in,
	// 401 for API clients, 403, or its own callback path) and returns ok
	// false.
	Authenticate(w http.ResponseWriter, r *http.Request, rules []string) (id Identity, ok bool)
}

// Identity is a signed-in person, as SignIn.Authenticate returns it.
type Identity struct {
	// User is the provider's name for the person (the email, else the
	// subject).
	User  string
	Email string
}
