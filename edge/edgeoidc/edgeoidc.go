// Package edgeoidc puts public routes behind a sign-in at an OpenID
// Connect provider: it implements edge.SignIn with oidcauth.
//
// Each route host is its own relying party: the provider sends the
// browser back to https://HOST/.beam/oidc/callback (CallbackPath), so
// every cookie stays scoped to that host and no token crosses from one
// route to another. HOST is the request's host lower-cased without a
// trailing dot, with its port only if the request names one, which must
// be the port of the listener it came in on (else 400): the edge routes
// every spelling of a host alike, and each spelling must not be a new
// relying party. The sign-ins in flight of all hosts share one set of
// bounds (oidcauth.Flows), and past maxHosts the least recently used
// relying party is forgotten (its sign-ins in flight still finish). Register that URL for each route at the provider, or
// one wildcard URL where the provider allows it. After the callback the
// browser holds a session cookie for the host (HttpOnly, SameSite=Lax,
// Secure over HTTPS); the edge keeps the session in memory and strips
// the cookie before the request goes to the device. A request without a
// session is sent to sign in if it comes from a browser (GET or HEAD
// accepting text/html) and gets 401 otherwise; a signed-in person whom no
// rule admits gets 403.
package edgeoidc

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"html"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"

	"beam.dev/beam/edge"
	"beam.dev/beam/oidcauth"
)

// CallbackPath is where the provider sends browsers back, on every route host.
const CallbackPath = "/.beam/oidc/callback"

// DefaultSessionLifetime is how long a sign-in lasts at a route.
const DefaultSessionLifetime = 8 * time.Hour

const (
	cookieName  = "beam_edge_session"
	stateCookie = "beam_edge_oidc"
	maxSessions = 100000
)

// maxHosts bounds the relying parties (route hosts) and parsed rules
// kept; a variable for tests.
var maxHosts = 10000

// Options configures a SignIn.
type Options struct {
	// Issuer, ClientID and ClientSecret name the provider and the client
	// registered there. Issuer and ClientID are required.
	Issuer, ClientID, ClientSecret string
	// Scopes and GroupsClaim are as oidcauth.Options.
	Scopes      []string
	GroupsClaim string
	// SessionLifetime is how long a sign-in lasts; zero means
	// DefaultSessionLifetime.
	SessionLifetime time.Duration
	// MaxSignIns and MaxSignInsPerAddress bound the sign-ins in flight
	// of all route hosts together, as oidcauth.NewFlows'.
	MaxSignIns, MaxSignInsPerAddress int
	// HTTPClient reaches the provider; nil means oidcauth's default.
	HTTPClient *http.Client
	// Logger receives logs; nil discards them.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// SignIn is an edge.SignIn. It is safe for concurrent use.
type SignIn struct {
	opts   Options
	logger *slog.Logger
	now    func() time.Time
	life   time.Duration

	flows *oidcauth.Flows // the sign-ins in flight of every route host

	mu       sync.Mutex                 // guards the following fields
	rps      map[string]*rpEntry        // by origin (see origin)
	used     uint64                     // ticks at each use of an RP
	sessions map[string]*session        // by cookie value
	rules    map[string]*oidcauth.Allow // parsed rules, by their joined text
}

type rpEntry struct {
	rp   *oidcauth.RP
	used uint64 // SignIn.used at its last use
}

type session struct {
	host    string // origin
	id      oidcauth.Identity
	expires time.Time
}

var _ edge.SignIn = (*SignIn)(nil)

// New returns a SignIn on opts. It contacts the provider only when a
// route host first needs it.
func New(opts Options) (*SignIn, error) {
	if opts.Issuer == "" || opts.ClientID == "" {
		return nil, errors.New("edgeoidc: Options.Issuer and ClientID are required")
	}
	s := &SignIn{opts: opts, logger: opts.Logger, now: opts.Now, life: opts.SessionLifetime,
		flows: oidcauth.NewFlows(opts.MaxSignIns, opts.MaxSignInsPerAddress),
		rps:   map[string]*rpEntry{}, sessions: map[string]*session{}, rules: map[string]*oidcauth.Allow{}}
	if s.logger == nil {
		s.logger = slog.New(slog.DiscardHandler)
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.life <= 0 {
		s.life = DefaultSessionLifetime
	}
	return s, nil
}

// origin is the canonical origin of r's host: the scheme, the host
// lower-cased without a trailing dot and, if r names a port other than
// the scheme's default, that port. ok is false if the host does not
// parse or r names a port other than its listener's.
func origin(r *http.Request) (o string, ok bool) {
	scheme, def := "http", "80"
	if r.TLS != nil {
		scheme, def = "https", "443"
	}
	host, port := r.Host, ""
	if h, p, err := net.SplitHostPort(r.Host); err == nil {
		host, port = h, p
	}
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	if host == "" || strings.ContainsAny(host, ":[]/@\\\" ") {
		return "", false
	}
	if port != "" {
		if lp := listenerPort(r); lp != "" && port != lp {
			return "", false
		}
		if port == def {
			port = ""
		}
	}
	if port != "" {
		host += ":" + port
	}
	return scheme + "://" + host, true
}

// listenerPort is the port of the listener r came in on, or "" if unknown.
func listenerPort(r *http.Request) string {
	a, _ := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
	if a == nil {
		return ""
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return ""
	}
	return fmt.Sprint(ap.Port())
}

// rp returns the relying party of origin o, discovering the provider
// for the first request of each; past maxHosts the least recently used
// is forgotten.
func (s *SignIn) rp(ctx context.Context, o string) (*oidcauth.RP, error) {
	s.mu.Lock()
	if e := s.rps[o]; e != nil {
		s.used++
		e.used = s.used
		s.mu.Unlock()
		return e.rp, nil
	}
	s.mu.Unlock()
	rp, err := oidcauth.New(ctx, oidcauth.Options{
		Issuer: s.opts.Issuer, ClientID: s.opts.ClientID, ClientSecret: s.opts.ClientSecret,
		RedirectURL: o + CallbackPath, Scopes: s.opts.Scopes, GroupsClaim: s.opts.GroupsClaim,
		CookieName: stateCookie, HTTPClient: s.opts.HTTPClient, Logger: s.logger, Now: s.now,
		Flows: s.flows,
	})
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.used++
	if e := s.rps[o]; e != nil {
		e.used = s.used
		return e.rp, nil
	}
	if len(s.rps) >= maxHosts {
		var lru string
		for k, e := range s.rps {
			if lru == "" || e.used < s.rps[lru].used {
				lru = k
			}
		}
		delete(s.rps, lru)
	}
	s.rps[o] = &rpEntry{rp: rp, used: s.used}
	return rp, nil
}

func (s *SignIn) allow(rules []string) (*oidcauth.Allow, error) {
	k := strings.Join(rules, "\n")
	s.mu.Lock()
	defer s.mu.Unlock()
	if a := s.rules[k]; a != nil {
		return a, nil
	}
	a, err := oidcauth.ParseAllow(rules)
	if err != nil {
		return nil, err
	}
	if len(s.rules) >= maxHosts {
		clear(s.rules)
	}
	s.rules[k] = a
	return a, nil
}

func cookieFor(r *http.Request) string {
	if r.TLS != nil {
		return "__Host-" + cookieName
	}
	return cookieName
}

// Authenticate implements edge.SignIn.
func (s *SignIn) Authenticate(w http.ResponseWriter, r *http.Request, rules []string) (edge.Identity, bool) {
	allow, err := s.allow(rules)
	if err != nil {
		page(w, http.StatusInternalServerError, "Sign-in misconfigured", "This route's sign-in rules do not parse.")
		return edge.Identity{}, false
	}
	o, ok := origin(r)
	if !ok {
		page(w, http.StatusBadRequest, "Bad request", "This host or port is not one this edge serves.")
		return edge.Identity{}, false
	}
	if r.URL.Path == CallbackPath {
		s.callback(w, r, o)
		return edge.Identity{}, false
	}
	if ss := s.session(r, o); ss != nil {
		if !allow.Permits(&ss.id) {
			page(w, http.StatusForbidden, "Not allowed", "You are signed in as "+who(&ss.id)+", who may not use this service.")
			return edge.Identity{}, false
		}
		stripCookies(r)
		id := edge.Identity{User: who(&ss.id)}
		if ss.id.EmailVerified {
			id.Email = ss.id.Email // the app may trust X-Beam-Email: never an unverified one
		}
		return id, true
	}
	if (r.Method != http.MethodGet && r.Method != http.MethodHead) || !strings.Contains(r.Header.Get("Accept"), "text/html") {
		w.Header().Set("WWW-Authenticate", `Bearer realm="`+strings.TrimPrefix(strings.TrimPrefix(o, "https://"), "http://")+`"`)
		page(w, http.StatusUnauthorized, "Unauthorized", "This service needs a sign-in: open it in a browser.")
		return edge.Identity{}, false
	}
	rp, err := s.rp(r.Context(), o)
	if err != nil {
		s.logger.Warn("oidc provider unreachable", "host", o, "err", err)
		page(w, http.StatusBadGateway, "Sign-in unavailable", "The sign-in provider cannot be reached; try again later.")
		return edge.Identity{}, false
	}
	rp.Begin(w, r, r.URL.RequestURI())
	return edge.Identity{}, false
}

func who(id *oidcauth.Identity) string {
	if id.Email != "" && id.EmailVerified {
		return id.Email
	}
	return id.Subject
}

// session returns r's unexpired session for its origin o, or nil.
func (s *SignIn) session(r *http.Request, o string) *session {
	c, err := r.Cookie(cookieFor(r))
	if err != nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	ss := s.sessions[c.Value]
	if ss == nil || ss.host != o {
		return nil
	}
	if !s.now().Before(ss.expires) {
		delete(s.sessions, c.Value)
		return nil
	}
	return ss
}

func (s *SignIn) callback(w http.ResponseWriter, r *http.Request, o string) {
	rp, err := s.rp(r.Context(), o)
	if err != nil {
		page(w, http.StatusBadGateway, "Sign-in unavailable", "The sign-in provider cannot be reached; try again later.")
		return
	}
	id, next, err := rp.Finish(w, r)
	if err != nil {
		s.logger.Info("edge sign-in refused", "host", o, "err", err)
		page(w, http.StatusForbidden, "Sign-in failed", strings.TrimPrefix(err.Error(), "oidcauth: "))
		return
	}
	b := make([]byte, 32)
	rand.Read(b)
	value := base64.RawURLEncoding.EncodeToString(b)
	now := s.now()
	s.mu.Lock()
	if len(s.sessions) >= maxSessions {
		for k, ss := range s.sessions {
			if !now.Before(ss.expires) || len(s.sessions) >= maxSessions {
				delete(s.sessions, k)
			}
		}
	}
	s.sessions[value] = &session{host: o, id: *id, expires: now.Add(s.life)}
	s.mu.Unlock()
	http.SetCookie(w, &http.Cookie{Name: cookieFor(r), Value: value, Path: "/", MaxAge: int(s.life / time.Second),
		HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteLaxMode})
	s.logger.Info("edge sign-in", "host", o, "user", who(id))
	if !strings.HasPrefix(next, "/") || strings.HasPrefix(next, "//") || strings.HasPrefix(next, "/\\") {
		next = "/"
	}
	w.Header().Set("Cache-Control", "no-store")
	http.Redirect(w, r, next, http.StatusFound)
}

// stripCookies removes the edge's cookies (the session, and those of
// sign-ins in flight) from r: the device never sees them.
func stripCookies(r *http.Request) {
	var keep []string
	for _, c := range r.Cookies() {
		if c.Name != cookieName && c.Name != "__Host-"+cookieName && !strings.HasPrefix(c.Name, stateCookie+"_") {
			keep = append(keep, c.Name+"="+c.Value)
		}
	}
	r.Header.Del("Cookie")
	if len(keep) > 0 {
		r.Header.Set("Cookie", strings.Join(keep, "; "))
	}
}

func page(w http.ResponseWriter, status int, title, msg string) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	fmt.Fprintf(w, "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>%s</title></head><body><h1 id=\"title\">%s</h1><p id=\"message\">%s</p></body></html>\n",
		html.EscapeString(title), html.EscapeString(title), html.EscapeString(msg))
}
