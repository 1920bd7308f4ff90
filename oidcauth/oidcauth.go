// Package oidcauth is Beam's OpenID Connect relying party: it sends a
// browser to the provider (authorization code flow with PKCE S256, state
// and nonce) and, on the callback, exchanges the code and verifies the ID
// token (signature against the provider's published keys, issuer,
// audience, expiry, nonce) with github.com/zitadel/oidc/v3's rp package.
// What it returns is an Identity: subject, email, name and groups.
//
// Each sign-in's state lives on the server (Flows), is good once and for
// StateTTL, and is bound to the browser that started it by a cookie, so a
// callback replayed, or completed in another browser, is refused. The
// coordinator (device sign-in, console admins) and the edge (routes
// behind --oidc) use it; Allow says who may pass.
package oidcauth

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/zitadel/oidc/v3/pkg/client/rp"
	"github.com/zitadel/oidc/v3/pkg/oidc"
)

// StateTTL is how long a started sign-in may take.
const StateTTL = 10 * time.Minute

// Bounds of the sign-ins in flight (started, not finished or expired):
// each holds a few hundred bytes of server-side state for StateTTL, and
// anyone can start one, so they are capped per source address and in
// total. A new sign-in is never refused: past the cap of its source, the
// source's own oldest sign-in is dropped; past the total, the oldest of
// the source with the most (IPv6 sources counted per /48 for this). So a
// flood from a few addresses, or one IPv6 network, pushes out its own
// sign-ins, not other people's, and cannot lock anyone out.
const (
	// DefaultMaxSignIns is the default of Options.MaxSignIns.
	DefaultMaxSignIns = 4096
	// DefaultMaxSignInsPerAddress is the default of
	// Options.MaxSignInsPerAddress: far more than one person starts in
	// ten minutes, and enough for an office behind one NAT.
	DefaultMaxSignInsPerAddress = 64
)

// Options configures an RP.
type Options struct {
	// Issuer is the provider's issuer URL. Required.
	Issuer string
	// ClientID and ClientSecret are the client registered at the
	// provider. ClientID is required.
	ClientID, ClientSecret string
	// RedirectURL is the absolute callback URL registered at the
	// provider; the caller routes it to RP.Finish. Required.
	RedirectURL string
	// Scopes are requested besides "openid"; nil means email and profile.
	Scopes []string
	// GroupsClaim is the ID token claim listing the user's groups; empty
	// means "groups".
	GroupsClaim string
	// CookieName names the cookie binding a sign-in to its browser;
	// empty means "beam_oidc".
	CookieName string
	// HTTPClient reaches the provider; nil means a client with a 30s timeout.
	HTTPClient *http.Client
	// Logger receives logs; nil discards them.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// MaxSignIns bounds the sign-ins in flight; DefaultMaxSignIns if
	// zero, no bound if negative. Ignored if Flows is set.
	MaxSignIns int
	// MaxSignInsPerAddress bounds the sign-ins in flight started from one
	// source address (an IPv4 address or an IPv6 /64, from the request's
	// RemoteAddr: behind a reverse proxy, everyone shares the proxy's);
	// DefaultMaxSignInsPerAddress if zero, no bound if negative. Ignored
	// if Flows is set.
	MaxSignInsPerAddress int
	// Flows keeps the sign-ins in flight; nil means the RP's own, bounded
	// by MaxSignIns and MaxSignInsPerAddress. RPs that share one share
	// its bounds.
	Flows *Flows
}

// Identity is who signed in, from the verified ID token.
type Identity struct {
	Subject       string
	Email         string
	EmailVerified bool
	Name          string
	// Groups are the values of the groups claim.
	Groups []string
	// Expiry is when the ID token expires.
	Expiry time.Time
}

// ErrSignIn is wrapped by every refused callback.
var ErrSignIn = errors.New("oidcauth: sign-in refused")

// RP is a relying party of one provider. It is safe for concurrent use.
type RP struct {
	rp          rp.RelyingParty
	groupsClaim string
	cookie      string
	secure      bool
	logger      *slog.Logger
	now         func() time.Time

	flows *Flows
}

// Flows holds sign-ins in flight, of one RP or of several that share
// their bounds (the edge: one RP per route host); a sign-in is finished
// only by an RP with the redirect URL of the one that started it. It is
// safe for concurrent use.
type Flows struct {
	max, maxPerSource int // < 0: none

	mu        sync.Mutex // guards the following fields
	states    map[string]*flow
	order     []string             // states by start, oldest first; finished ones stay until swept
	perSource map[netip.Prefix]int // flows in states per source (IPv4 address, IPv6 /64)
	perGroup  map[netip.Prefix]int // flows in states per group (IPv4 address, IPv6 /48)
	dropped   int                  // drops not yet logged
	warned    time.Time            // when drops were last logged
}

// flow is one started sign-in.
type flow struct {
	redirect              string // the redirect URL of the RP that started it, which alone may finish it
	verifier, nonce, data string
	browser               [32]byte // SHA-256 of the browser cookie's value
	expires               time.Time
	source, group         netip.Prefix
}

// NewFlows returns an empty Flows that keeps at most max sign-ins in
// flight, and maxPerAddress from one source address; zero means the
// default (DefaultMaxSignIns, DefaultMaxSignInsPerAddress), negative no
// bound.
func NewFlows(max, maxPerAddress int) *Flows {
	if max == 0 {
		max = DefaultMaxSignIns
	}
	if maxPerAddress == 0 {
		maxPerAddress = DefaultMaxSignInsPerAddress
	}
	return &Flows{max: max, maxPerSource: maxPerAddress, states: map[string]*flow{},
		perSource: map[netip.Prefix]int{}, perGroup: map[netip.Prefix]int{}}
}

type nonceKey struct{}

// New discovers the provider at opts.Issuer and returns its RP.
func New(ctx context.Context, opts Options) (*RP, error) {
	if opts.Issuer == "" || opts.ClientID == "" || opts.RedirectURL == "" {
		return nil, errors.New("oidcauth: Options.Issuer, ClientID and RedirectURL are required")
	}
	scopes := opts.Scopes
	if scopes == nil {
		scopes = []string{oidc.ScopeEmail, oidc.ScopeProfile}
	}
	scopes = append([]string{oidc.ScopeOpenID}, scopes...)
	hc := opts.HTTPClient
	if hc == nil {
		hc = &http.Client{Timeout: 30 * time.Second}
	}
	r := &RP{
		groupsClaim: opts.GroupsClaim,
		cookie:      opts.CookieName,
		secure:      strings.HasPrefix(opts.RedirectURL, "https://"),
		logger:      opts.Logger,
		now:         opts.Now,
		flows:       opts.Flows,
	}
	if r.flows == nil {
		r.flows = NewFlows(opts.MaxSignIns, opts.MaxSignInsPerAddress)
	}
	if r.groupsClaim == "" {
		r.groupsClaim = "groups"
	}
	if r.cookie == "" {
		r.cookie = "beam_oidc"
	}
	if r.logger == nil {
		r.logger = slog.New(slog.DiscardHandler)
	}
	if r.now == nil {
		r.now = time.Now
	}
	p, err := rp.NewRelyingPartyOIDC(ctx, opts.Issuer, opts.ClientID, opts.ClientSecret, opts.RedirectURL, scopes,
		rp.WithHTTPClient(hc),
		rp.WithVerifierOpts(rp.WithNonce(func(ctx context.Context) string {
			n, _ := ctx.Value(nonceKey{}).(string)
			return n
		})),
	)
	if err != nil {
		return nil, fmt.Errorf("oidcauth: discover provider %s: %w", opts.Issuer, err)
	}
	r.rp = p
	return r, nil
}

// Issuer is the provider's issuer URL.
func (r *RP) Issuer() string { return r.rp.Issuer() }

func random() string {
	b := make([]byte, 32)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// AuthURL starts a sign-in for the browser of w, which sent req, and
// returns the provider's URL to send it to; data comes back from Finish.
// If a bound of the sign-ins in flight is reached, an older one is
// dropped (see DefaultMaxSignIns).
func (r *RP) AuthURL(w http.ResponseWriter, req *http.Request, data string) string {
	state, verifier, nonce, browser := random(), random(), random(), random()
	now := r.now()
	src := sourceOf(req)
	r.flows.add(state, &flow{redirect: r.RedirectURL(), verifier: verifier, nonce: nonce, data: data, browser: sha256.Sum256([]byte(browser)),
		expires: now.Add(StateTTL), source: src, group: groupOf(src)}, now, r.logger)
	// One cookie per sign-in (named by the state's hash), so sign-ins in
	// several tabs do not undo each other. SameSite=Lax: the callback is a
	// top-level navigation from the provider's site.
	http.SetCookie(w, &http.Cookie{
		Name: r.cookieName(state), Value: browser, Path: "/", MaxAge: int(StateTTL / time.Second),
		HttpOnly: true, Secure: r.secure, SameSite: http.SameSiteLaxMode,
	})
	return rp.AuthURL(state, r.rp, rp.WithCodeChallenge(oidc.NewSHACodeChallenge(verifier)), rp.AuthURLOpt(rp.WithURLParam("nonce", nonce)))
}

// add keeps f under state, first dropping expired sign-ins and, at a
// bound, the oldest sign-in of f's source (at its per-source bound) or
// of the group with the most (at the total).
func (fs *Flows) add(state string, f *flow, now time.Time, logger *slog.Logger) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fs.sweepLocked(now)
	dropped := 0
	if fs.maxPerSource >= 0 && fs.perSource[f.source] >= fs.maxPerSource {
		if fs.dropOldestLocked(func(o *flow) bool { return o.source == f.source }) {
			dropped++
		}
	}
	if fs.max >= 0 && len(fs.states) >= fs.max {
		most := 0
		for _, n := range fs.perGroup {
			most = max(most, n)
		}
		if fs.dropOldestLocked(func(o *flow) bool { return fs.perGroup[o.group] == most }) {
			dropped++
		}
	}
	if dropped > 0 {
		fs.dropped += dropped
		if now.Sub(fs.warned) >= time.Minute {
			logger.Warn("dropped oidc sign-ins in progress: too many", "source", f.source.String(), "dropped", fs.dropped)
			fs.dropped, fs.warned = 0, now
		}
	}
	fs.states[state] = f
	fs.order = append(fs.order, state)
	fs.perSource[f.source]++
	fs.perGroup[f.group]++
}

// dropOldestLocked forgets the oldest sign-in in flight that match
// accepts, and reports whether there was one. fs.mu held.
func (fs *Flows) dropOldestLocked(match func(*flow) bool) bool {
	for _, s := range fs.order {
		if f := fs.states[s]; f != nil && match(f) {
			fs.deleteLocked(s)
			return true
		}
	}
	return false
}

// sourceOf is the source a sign-in is counted against: req's IPv4
// address, or its IPv6 /64; the zero Prefix if RemoteAddr is not an
// address.
func sourceOf(req *http.Request) netip.Prefix {
	ap, err := netip.ParseAddrPort(req.RemoteAddr)
	if err != nil {
		return netip.Prefix{}
	}
	a := ap.Addr().Unmap()
	bits := 32
	if a.Is6() {
		bits = 64
	}
	p, _ := a.Prefix(bits)
	return p
}

// groupOf is the group whose sign-ins are dropped together at the total
// bound: the IPv4 address, or the IPv6 /48 (one site's networks), of
// source.
func groupOf(source netip.Prefix) netip.Prefix {
	if !source.Addr().Is6() {
		return source
	}
	p, _ := source.Addr().Prefix(48)
	return p
}

// sweepLocked drops the sign-ins expired at now, and the finished ones
// from order. fs.mu held.
func (fs *Flows) sweepLocked(now time.Time) {
	n := 0
	for _, s := range fs.order {
		f := fs.states[s]
		if f == nil {
			n++ // finished or dropped
			continue
		}
		if now.Before(f.expires) {
			break // started later, so expires later (the clock only moves on)
		}
		fs.deleteLocked(s)
		n++
	}
	fs.order = fs.order[n:]
	// Finished sign-ins leave holes; compact once they are most of it.
	if len(fs.order) > 2*len(fs.states)+64 {
		live := make([]string, 0, len(fs.states))
		for _, s := range fs.order {
			if fs.states[s] != nil {
				live = append(live, s)
			}
		}
		fs.order = live
	}
}

// deleteLocked forgets the sign-in state. fs.mu held.
func (fs *Flows) deleteLocked(state string) *flow {
	f := fs.states[state]
	if f == nil {
		return nil
	}
	delete(fs.states, state)
	if fs.perSource[f.source]--; fs.perSource[f.source] <= 0 {
		delete(fs.perSource, f.source)
	}
	if fs.perGroup[f.group]--; fs.perGroup[f.group] <= 0 {
		delete(fs.perGroup, f.group)
	}
	return f
}

// take forgets and returns the sign-in state that an RP with the
// redirect URL started, or nil.
func (fs *Flows) take(redirect, state string) *flow {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if f := fs.states[state]; f == nil || f.redirect != redirect {
		return nil
	}
	return fs.deleteLocked(state)
}

// Begin redirects the browser to the provider (see AuthURL).
func (r *RP) Begin(w http.ResponseWriter, req *http.Request, data string) {
	w.Header().Set("Cache-Control", "no-store")
	http.Redirect(w, req, r.AuthURL(w, req, data), http.StatusFound)
}

func (r *RP) cookieName(state string) string {
	h := sha256.Sum256([]byte(state))
	return r.cookie + "_" + base64.RawURLEncoding.EncodeToString(h[:9])
}

// Finish completes the sign-in whose callback req is: the state must be
// one this RP issued, unexpired, unused and started by the same browser;
// then the code is exchanged with the PKCE verifier and the ID token
// verified. It returns who signed in and the data given to AuthURL.
// Errors wrap ErrSignIn; their text is safe to show.
func (r *RP) Finish(w http.ResponseWriter, req *http.Request) (*Identity, string, error) {
	q := req.URL.Query()
	state := q.Get("state")
	f := r.flows.take(r.RedirectURL(), state) // good once, whatever happens next
	if state == "" || f == nil || !r.now().Before(f.expires) {
		return nil, "", fmt.Errorf("%w: this sign-in is unknown, used or expired; start again", ErrSignIn)
	}
	c, err := req.Cookie(r.cookieName(state))
	r.forget(w, state)
	if err != nil || subtle.ConstantTimeCompare(f.browser[:], hashOf(c.Value)) != 1 {
		return nil, "", fmt.Errorf("%w: this sign-in was started in another browser; start again", ErrSignIn)
	}
	// Only now, for a sign-in of this browser, does the provider's error
	// count; and only its code is shown (never error_description): anyone
	// can send a browser to the callback URL with text of their own.
	if e := q.Get("error"); e != "" {
		return nil, "", fmt.Errorf("%w: the provider refused the sign-in (%s); start again", ErrSignIn, providerError(e))
	}
	code := q.Get("code")
	if code == "" {
		return nil, "", fmt.Errorf("%w: the provider sent no code", ErrSignIn)
	}
	ctx := context.WithValue(req.Context(), nonceKey{}, f.nonce)
	tokens, err := rp.CodeExchange[*oidc.IDTokenClaims](ctx, code, r.rp, rp.WithCodeVerifier(f.verifier))
	if err != nil {
		r.logger.Info("oidc code exchange failed", "err", err)
		return nil, "", fmt.Errorf("%w: the provider's answer did not check out: %v", ErrSignIn, err)
	}
	return r.identity(tokens.IDTokenClaims), f.data, nil
}

// providerErrors are the error codes of OAuth 2.0 (RFC 6749 4.1.2.1) and
// OpenID Connect Core (3.1.2.6) an authorization response may carry.
var providerErrors = []string{
	"access_denied", "invalid_request", "unauthorized_client", "unsupported_response_type",
	"invalid_scope", "server_error", "temporarily_unavailable", "interaction_required",
	"login_required", "account_selection_required", "consent_required", "invalid_request_uri",
	"invalid_request_object", "request_not_supported", "request_uri_not_supported",
	"registration_not_supported",
}

// providerError is e if it is a known error code, else "unknown error".
func providerError(e string) string {
	for _, k := range providerErrors {
		if e == k {
			return e
		}
	}
	return "unknown error"
}

func hashOf(s string) []byte {
	h := sha256.Sum256([]byte(s))
	return h[:]
}

// forget deletes the browser cookie of state.
func (r *RP) forget(w http.ResponseWriter, state string) {
	if state == "" {
		return
	}
	http.SetCookie(w, &http.Cookie{Name: r.cookieName(state), Value: "", Path: "/", MaxAge: -1, HttpOnly: true, Secure: r.secure, SameSite: http.SameSiteLaxMode})
}

func (r *RP) identity(c *oidc.IDTokenClaims) *Identity {
	id := &Identity{
		Subject:       c.Subject,
		Email:         strings.ToLower(c.Email),
		EmailVerified: bool(c.EmailVerified),
		Name:          c.Name,
		Expiry:        c.GetExpiration(),
	}
	switch g := c.Claims[r.groupsClaim].(type) {
	case []any:
		for _, v := range g {
			if s, ok := v.(string); ok {
				id.Groups = append(id.Groups, s)
			}
		}
	case string:
		id.Groups = strings.Fields(g)
	}
	return id
}

// VerifyIDToken checks an ID token presented as a bearer token (to an
// API): signed by the provider's published keys, issued by it for this
// client (audience), unexpired. There is no nonce to check: such a token
// proves a sign-in at the provider for this client, not one this RP
// started, so only accept it where that is enough (an admin API, with
// short-lived tokens).
func (r *RP) VerifyIDToken(ctx context.Context, token string) (*Identity, error) {
	v := *r.rp.IDTokenVerifier()
	v.Nonce = nil
	claims, err := rp.VerifyIDToken[*oidc.IDTokenClaims](ctx, token, &v)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrSignIn, err)
	}
	return r.identity(claims), nil
}

// RedirectURL is the callback URL the RP was configured with.
func (r *RP) RedirectURL() string { return r.rp.OAuthConfig().RedirectURL }
