package wire

import (
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
)

// RouteOptions is the policy an edge enforces for one route before
// anything reaches the device. The CLI builds it from beam expose's flags,
// the coordinator refuses a route whose options do not Validate, and the
// edge turns it into its own policy without parsing anything again. The
// zero value lets everything through unchanged.
type RouteOptions struct {
	// BasicAuth, if not empty, requires HTTP basic auth with one of these
	// users; the edge keeps the credentials (the app never sees them).
	// http routes only.
	BasicAuth []BasicAuthUser `json:"basic_auth,omitempty"`
	// AllowIP, if not empty, admits only clients inside one of these
	// prefixes; DenyIP refuses clients inside any of them. Deny wins.
	AllowIP []netip.Prefix `json:"allow_ip,omitempty"`
	DenyIP  []netip.Prefix `json:"deny_ip,omitempty"`
	// RateLimit is the requests (http), connections (tls, tcp) or flows
	// (udp) each client IP may start; zero means no limit.
	RateLimit Rate `json:"rate_limit,omitzero"`
	// HeaderAdd sets request headers toward the device; HeaderRemove
	// deletes them first. http routes only.
	HeaderAdd    map[string]string `json:"header_add,omitempty"`
	HeaderRemove []string          `json:"header_remove,omitempty"`
	// CORS are the origins ("https://app.test", or "*") allowed to make
	// cross-origin requests. http routes only.
	CORS []string `json:"cors,omitempty"`
	// ProxyProtocol, 1 or 2, sends a PROXY protocol header of that
	// version to the device; 0 sends none. tcp and tls routes only.
	ProxyProtocol int `json:"proxy_protocol,omitempty"`
	// OIDC, if not empty, puts the route behind a sign-in at the edge's
	// OpenID Connect provider; a signed-in person passes if one rule
	// matches: "email:ADDRESS", "email:*@DOMAIN" (verified emails) or
	// "group:NAME" (a group of the provider's groups claim). The app
	// gets X-Beam-User and X-Beam-Email. http routes only.
	OIDC []string `json:"oidc,omitempty"`
}

// BasicAuthUser is one user of RouteOptions.BasicAuth.
type BasicAuthUser struct {
	User string `json:"user"`
	// Secret verifies the password; its form names the scheme:
	// "plain:PASSWORD", "sha256:<64 hex digits>" (the SHA-256 of the
	// password), a bcrypt hash ("$2a$", "$2b$", "$2y$"), or
	// "bcrypt-sha256:" and a bcrypt hash of the password's SHA-256 in
	// lowercase hex (for passwords over bcrypt's 72 bytes).
	Secret string `json:"secret"`
}

// Rate is a number of events per second, minute or hour. Its text form,
// also in JSON, is "20/s", "600/m" or "5000/h".
type Rate struct {
	Count int
	// Per is time.Second, time.Minute or time.Hour.
	Per time.Duration
}

// The bcrypt costs a BasicAuthUser.Secret may have. The edge checks a
// password for every request that brings one (until it caches the
// answer), so the cost bounds the CPU a client can spend there: about
// 0.25 s at 12, doubling with each step (31 would take days).
const (
	MinBcryptCost = 4
	MaxBcryptCost = 12
)

// Limits on RouteOptions, so one route cannot make every edge hold a
// large policy.
const (
	maxAuthUsers   = 64
	maxPrefixes    = 256
	maxHeaders     = 64
	maxCORSOrigins = 64
	maxOptionText  = 4096 // one user, secret, header value or origin
	maxRateCount   = 1_000_000
)

// ParseRate parses "N/s", "N/m" or "N/h" (also "N/sec", "N/min",
// "N/hour") with N a whole number from 1 to 1,000,000.
func ParseRate(s string) (Rate, error) {
	n, unit, ok := strings.Cut(strings.TrimSpace(s), "/")
	if !ok {
		return Rate{}, fmt.Errorf("rate %q: want N/s, N/m or N/h", s)
	}
	count, err := strconv.Atoi(n)
	if err != nil || count < 1 || count > maxRateCount {
		return Rate{}, fmt.Errorf("rate %q: the count must be a whole number from 1 to %d", s, maxRateCount)
	}
	var per time.Duration
	switch unit {
	case "s", "sec", "second":
		per = time.Second
	case "m", "min", "minute":
		per = time.Minute
	case "h", "hour":
		per = time.Hour
	default:
		return Rate{}, fmt.Errorf("rate %q: the unit must be s, m or h", s)
	}
	return Rate{Count: count, Per: per}, nil
}

// IsZero reports whether r is no limit.
func (r Rate) IsZero() bool { return r == Rate{} }

// PerSecond returns the sustained rate in events per second.
func (r Rate) PerSecond() float64 {
	if r.Per <= 0 {
		return 0
	}
	return float64(r.Count) / r.Per.Seconds()
}

// String returns the text form, "" for no limit.
func (r Rate) String() string {
	if r.IsZero() {
		return ""
	}
	unit := "?"
	switch r.Per {
	case time.Second:
		unit = "s"
	case time.Minute:
		unit = "m"
	case time.Hour:
		unit = "h"
	}
	return strconv.Itoa(r.Count) + "/" + unit
}

// MarshalText implements encoding.TextMarshaler.
func (r Rate) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler; "" is no limit. It
// reads any "COUNT/UNIT" with a whole count, leaving the range of the
// count and the unit to Validate (which says what is wrong); an unknown
// unit leaves Per zero.
func (r *Rate) UnmarshalText(b []byte) error {
	if len(b) == 0 {
		*r = Rate{}
		return nil
	}
	n, unit, ok := strings.Cut(string(b), "/")
	count, err := strconv.Atoi(n)
	if !ok || err != nil {
		return fmt.Errorf("rate %q: want N/s, N/m or N/h", b)
	}
	*r = Rate{Count: count}
	if v, err := ParseRate("1/" + unit); err == nil {
		r.Per = v.Per
	}
	return nil
}

// IsZero reports whether o sets nothing.
func (o RouteOptions) IsZero() bool {
	return len(o.BasicAuth) == 0 && len(o.AllowIP) == 0 && len(o.DenyIP) == 0 && o.RateLimit.IsZero() &&
		len(o.HeaderAdd) == 0 && len(o.HeaderRemove) == 0 && len(o.CORS) == 0 && o.ProxyProtocol == 0 && len(o.OIDC) == 0
}

// Names lists the options o sets, by their JSON names.
func (o RouteOptions) Names() []string {
	var out []string
	for _, x := range []struct {
		name string
		set  bool
	}{
		{"basic_auth", len(o.BasicAuth) > 0}, {"allow_ip", len(o.AllowIP) > 0}, {"deny_ip", len(o.DenyIP) > 0},
		{"rate_limit", !o.RateLimit.IsZero()}, {"header_add", len(o.HeaderAdd) > 0}, {"header_remove", len(o.HeaderRemove) > 0},
		{"cors", len(o.CORS) > 0}, {"proxy_protocol", o.ProxyProtocol != 0}, {"oidc", len(o.OIDC) > 0},
	} {
		if x.set {
			out = append(out, x.name)
		}
	}
	return out
}

// Clone returns a deep copy of o.
func (o RouteOptions) Clone() RouteOptions {
	c := o
	c.BasicAuth = slices.Clone(o.BasicAuth)
	c.AllowIP = slices.Clone(o.AllowIP)
	c.DenyIP = slices.Clone(o.DenyIP)
	if o.HeaderAdd != nil {
		c.HeaderAdd = make(map[string]string, len(o.HeaderAdd))
		for k, v := range o.HeaderAdd {
			c.HeaderAdd[k] = v
		}
	}
	c.HeaderRemove = slices.Clone(o.HeaderRemove)
	c.CORS = slices.Clone(o.CORS)
	c.OIDC = slices.Clone(o.OIDC)
	return c
}

// Equal reports whether o and p set the same policy.
func (o RouteOptions) Equal(p RouteOptions) bool {
	if len(o.HeaderAdd) != len(p.HeaderAdd) {
		return false
	}
	for k, v := range o.HeaderAdd {
		if w, ok := p.HeaderAdd[k]; !ok || w != v {
			return false
		}
	}
	return slices.Equal(o.BasicAuth, p.BasicAuth) && slices.Equal(o.AllowIP, p.AllowIP) && slices.Equal(o.DenyIP, p.DenyIP) &&
		o.RateLimit == p.RateLimit && slices.Equal(o.HeaderRemove, p.HeaderRemove) && slices.Equal(o.CORS, p.CORS) &&
		o.ProxyProtocol == p.ProxyProtocol && slices.Equal(o.OIDC, p.OIDC)
}

// Validate checks o for a route of proto ("http", "tls", "tcp" or
// "udp") and returns every problem, joined, in words for the route's
// owner.
func (o RouteOptions) Validate(proto string) error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	httpOnly := func(what string, set bool) {
		if set && proto != "http" {
			bad("%s works only for http routes", what)
		}
	}
	httpOnly("basic auth", len(o.BasicAuth) > 0)
	httpOnly("header rewriting", len(o.HeaderAdd)+len(o.HeaderRemove) > 0)
	httpOnly("CORS", len(o.CORS) > 0)
	httpOnly("OIDC sign-in", len(o.OIDC) > 0)
	if len(o.OIDC) > maxAuthUsers {
		bad("OIDC: at most %d rules", maxAuthUsers)
	}
	for _, r := range o.OIDC {
		if !validOIDCRule(r) {
			bad("OIDC rule %q: want email:ADDRESS, email:*@DOMAIN or group:NAME", r)
		}
	}
	if len(o.BasicAuth) > maxAuthUsers {
		bad("basic auth: at most %d users", maxAuthUsers)
	}
	users := make(map[string]bool, len(o.BasicAuth))
	for _, u := range o.BasicAuth {
		// The edge compares names byte for byte: "Ann" and "ann" are two
		// users, a second "ann" would be a second password for one.
		if users[u.User] {
			bad("basic auth user %q given twice", u.User)
		}
		users[u.User] = true
		if u.User == "" || len(u.User) > maxOptionText || strings.ContainsAny(u.User, ":\r\n") || !printable(u.User) {
			bad("basic auth user %q: want a name without ':' or control characters", u.User)
		}
		if err := checkSecret(u.Secret); err != nil {
			bad("basic auth user %q: %w", u.User, err)
		}
	}
	for _, l := range []struct {
		name string
		ps   []netip.Prefix
	}{{"allow IP", o.AllowIP}, {"deny IP", o.DenyIP}} {
		if len(l.ps) > maxPrefixes {
			bad("%s: at most %d prefixes", l.name, maxPrefixes)
		}
		for _, p := range l.ps {
			if !p.IsValid() || p != p.Masked() || p.Addr().Zone() != "" {
				bad("%s: %v is not a network prefix (like 192.0.2.0/24 or 198.51.100.7/32)", l.name, p)
			}
		}
	}
	if r := o.RateLimit; !r.IsZero() {
		switch {
		case r.Count < 1 || r.Count > maxRateCount:
			bad("rate limit: the count must be a whole number from 1 to %d, not %d", maxRateCount, r.Count)
		case r.Per != time.Second && r.Per != time.Minute && r.Per != time.Hour:
			bad("rate limit: the period must be a second, a minute or an hour (N/s, N/m, N/h)")
		}
	}
	if len(o.HeaderAdd)+len(o.HeaderRemove) > maxHeaders {
		bad("headers: at most %d", maxHeaders)
	}
	for k, v := range o.HeaderAdd {
		if !headerName(k) || len(v) > maxOptionText || !headerValue(v) {
			bad("header %q: want a header name and a value without control characters", k+": "+v)
		}
	}
	for _, k := range o.HeaderRemove {
		if !headerName(k) {
			bad("header to remove %q is not a header name", k)
		}
	}
	if len(o.CORS) > maxCORSOrigins {
		bad("CORS: at most %d origins", maxCORSOrigins)
	}
	for _, c := range o.CORS {
		if c != "*" && !origin(c) {
			bad("CORS origin %q: want scheme://host[:port] or *", c)
		}
	}
	switch o.ProxyProtocol {
	case 0:
	case 1, 2:
		if proto != "tcp" && proto != "tls" {
			bad("the PROXY protocol works only for tcp and tls routes")
		}
	default:
		bad("PROXY protocol version %d: want 1 or 2", o.ProxyProtocol)
	}
	return errors.Join(errs...)
}

// checkSecret checks the form of a BasicAuthUser.Secret.
func checkSecret(s string) error {
	switch {
	case len(s) > maxOptionText:
		return errors.New("secret too long")
	case strings.HasPrefix(s, "plain:"):
		if len(s) == len("plain:") {
			return errors.New("empty password")
		}
		return nil
	case strings.HasPrefix(s, "sha256:"):
		if d, err := hex.DecodeString(s[len("sha256:"):]); err != nil || len(d) != 32 {
			return errors.New("want sha256:<64 hex digits>")
		}
		return nil
	case strings.HasPrefix(s, "bcrypt-sha256:"):
		if err := checkBcrypt(s[len("bcrypt-sha256:"):]); err != nil {
			return fmt.Errorf("bcrypt-sha256: %w", err)
		}
		return nil
	case strings.HasPrefix(s, "$2a$"), strings.HasPrefix(s, "$2b$"), strings.HasPrefix(s, "$2y$"):
		return checkBcrypt(s)
	}
	return errors.New("the secret must start with plain:, sha256:, bcrypt-sha256: or a bcrypt prefix ($2a$, $2b$, $2y$)")
}

// checkBcrypt checks the form of a bcrypt hash and its cost.
func checkBcrypt(s string) error {
	// $2a$CC$ then 53 characters of salt and hash.
	if len(s) != 60 || !strings.HasPrefix(s, "$2a$") && !strings.HasPrefix(s, "$2b$") && !strings.HasPrefix(s, "$2y$") ||
		s[6] != '$' || s[4] < '0' || s[4] > '3' || s[5] < '0' || s[5] > '9' {
		return errors.New("not a bcrypt hash")
	}
	if cost := int(s[4]-'0')*10 + int(s[5]-'0'); cost < MinBcryptCost || cost > MaxBcryptCost {
		return fmt.Errorf("bcrypt cost %d: want %d to %d (every cost step doubles the edge's work for every request)", cost, MinBcryptCost, MaxBcryptCost)
	}
	return nil
}

// headerName reports whether k is an RFC 9110 token.
func headerName(k string) bool {
	if k == "" || len(k) > 256 {
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

// headerValue reports whether v holds no control bytes but tab.
func headerValue(v string) bool {
	for i := 0; i < len(v); i++ {
		if c := v[i]; c < ' ' && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

// printable reports whether s holds no control bytes.
func printable(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < ' ' || c == 0x7f {
			return false
		}
	}
	return true
}

// origin reports whether o is scheme://host[:port] with scheme http or
// https.
func origin(o string) bool {
	rest, ok := strings.CutPrefix(o, "https://")
	if !ok {
		rest, ok = strings.CutPrefix(o, "http://")
	}
	return ok && rest != "" && len(o) <= maxOptionText && !strings.ContainsAny(rest, "/ ,?#@\\") && printable(rest)
}

// RouteOptionsFromLegacy converts the string map that held route options
// before they were typed (CapabilityVersion 6 and earlier; routes
// stored then still hold it): "basic_auth" (user:pass[,user:pass]),
// "allow_ip"/"deny_ip" (comma-separated CIDRs or addresses), "rate_limit"
// ("20/s"), "header_add" (newline-separated "K: V"), "header_remove" and
// "cors" (comma-separated), "proxy_protocol" ("v1"/"v2").
func RouteOptionsFromLegacy(m map[string]string) (RouteOptions, error) {
	var o RouteOptions
	var errs []error
	list := func(s string) []string {
		var out []string
		for _, f := range strings.Split(s, ",") {
			if f = strings.TrimSpace(f); f != "" {
				out = append(out, f)
			}
		}
		return out
	}
	for k, v := range m {
		switch k {
		case "basic_auth":
			for _, pair := range list(v) {
				u, p, _ := strings.Cut(pair, ":")
				if !strings.HasPrefix(p, "$2") && !strings.HasPrefix(p, "sha256:") && !strings.HasPrefix(p, "plain:") {
					p = "plain:" + p
				}
				o.BasicAuth = append(o.BasicAuth, BasicAuthUser{User: u, Secret: p})
			}
		case "allow_ip", "deny_ip":
			for _, s := range list(v) {
				p, err := ParsePrefix(s)
				if err != nil {
					errs = append(errs, fmt.Errorf("%s: %w", k, err))
					continue
				}
				if k == "allow_ip" {
					o.AllowIP = append(o.AllowIP, p)
				} else {
					o.DenyIP = append(o.DenyIP, p)
				}
			}
		case "rate_limit":
			r, err := ParseRate(v)
			if err != nil {
				errs = append(errs, err)
			}
			o.RateLimit = r
		case "header_add":
			for _, line := range strings.Split(v, "\n") {
				if strings.TrimSpace(line) == "" {
					continue
				}
				hk, hv, _ := strings.Cut(line, ":")
				if o.HeaderAdd == nil {
					o.HeaderAdd = map[string]string{}
				}
				o.HeaderAdd[strings.TrimSpace(hk)] = strings.TrimSpace(hv)
			}
		case "header_remove":
			o.HeaderRemove = list(v)
		case "cors":
			o.CORS = list(v)
		case "proxy_protocol":
			switch v {
			case "v1", "1":
				o.ProxyProtocol = 1
			case "v2", "2":
				o.ProxyProtocol = 2
			default:
				errs = append(errs, fmt.Errorf("proxy_protocol %q", v))
			}
		default:
			errs = append(errs, fmt.Errorf("unknown route option %q", k))
		}
	}
	return o, errors.Join(errs...)
}

// ParsePrefix parses a CIDR ("192.0.2.0/24", masked) or a single address
// ("198.51.100.7", a /32 or /128).
func ParsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, err
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// validOIDCRule reports whether r is an OIDC rule of RouteOptions.OIDC.
func validOIDCRule(r string) bool {
	kind, v, ok := strings.Cut(r, ":")
	if !ok || v == "" || len(r) > maxOptionText || !printable(r) || strings.ContainsAny(v, " \t") {
		return false
	}
	switch kind {
	case "group":
		return true
	case "email":
		local, domain, ok := strings.Cut(v, "@")
		return ok && local != "" && domain != "" && !strings.ContainsAny(domain, "@*/") &&
			(local == "*" || !strings.Contains(local, "*"))
	}
	return false
}
