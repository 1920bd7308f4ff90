// Package oidcauth is Beam's OpenID Connect relying party: it sends a
// browser to the provider (authorization code flow with PKCE S256, state
// and nonce) and, on the callback, exchanges the code and verifies the ID
// token (signature against the provider's published keys, issuer,
// audience, expiry, nonce) with github.com/zitadel/oidc/v3's rp package.
// What it returns is an Identity: subject, email, name and groups.
//
// Each sign-in's state lives on the server, is good once and for
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
// total. Past a cap, new sign-ins are refused (ErrTooManySignIns, 429)
// rather than older ones dropped, so a flood cannot undo sign-ins
// already under way.
const (
	// DefaultMaxSignIns is the default of Options.MaxSignIns.
	DefaultMaxSignIns = 4096
	// DefaultMaxSignInsPerAddress is the default of
	// Options.MaxSignInsPerAddress: far more than one person starts in
	// ten minutes, and enough for an office behind one NAT.
	DefaultMaxSignInsPerAddress = 64
)

// ErrTooManySignIns is returned by AuthURL when a cap on the sign-ins in
// flight is reached; Begin answers it with 429 and Retry-After.
var ErrTooManySignIns = errors.New("oidcauth: too many sign-ins in progress")

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
	// zero.
	MaxSignIns int
	// MaxSignInsPerAddress bounds the sign-ins in flight started from one
	// source address (an IPv4 address or an IPv6 /64, from the request's
	// RemoteAddr: behind a reverse proxy, everyone shares the proxy's);
	// DefaultMaxSignInsPerAddress if zero, no bound if negative.
	MaxSignInsPerAddress int
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

	maxFlows, maxPerSource int // maxPerSource < 0: none

	mu        sync.Mutex // guards the following fields
	states    map[string]*flow
	order     []string             // states by start, oldest first; finished ones stay until swept
	perSource map[netip.Prefix]int // flows in states per source
	refused   int                  // refusals not yet logged
	warned    time.Time            // when refusals were last logged
}

// flow is one started sign-in.
type flow struct {
	verifier, nonce, data string
	browser               [32]byte // SHA-256 of the browser cookie's value
	expires               time.Time
	source                netip.Prefix
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
		groupsClaim:  opts.GroupsClaim,
		cookie:       opts.CookieName,
		secure:       strings.HasPrefix(opts.RedirectURL, "https://"),
		logger:       opts.Logger,
		now:          opts.Now,
		states:       map[string]*flow{},
		perSource:    map[netip.Prefix]int{},
		maxFlows:     opts.MaxSignIns,
		maxPerSource: opts.MaxSignInsPerAddress,
	}
	if r.maxFlows <= 0 {
		r.maxFlows = DefaultMaxSignIns
	}
	if r.maxPerSource == 0 {
		r.maxPerSource = DefaultMaxSignInsPerAddress
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
// It returns ErrTooManySignIns if req's source address, or everyone, has
// too many sign-ins in flight.
func (r *RP) AuthURL(w http.ResponseWriter, req *http.Request, data string) (string, error) {
	state, verifier, nonce, browser := random(), random(), random(), random()
	now := r.now()
	src := sourceOf(req)
	r.mu.Lock()
	r.sweepLocked(now)
	var refused string
	switch {
	case r.maxPerSource >= 0 && r.perSource[src] >= r.maxPerSource:
		refused = "from this address"
	case len(r.states) >= r.maxFlows:
		refused = "on this server"
	}
	if refused != "" {
		r.refused++
		if now.Sub(r.warned) >= time.Minute {
			r.logger.Warn("refused oidc sign-ins: too many in progress", "source", src.String(), "where", refused, "refused", r.refused)
			r.refused, r.warned = 0, now
		}
		r.mu.Unlock()
		return "", fmt.Errorf("%w %s; finish one or try again later (they expire after %v)", ErrTooManySignIns, refused, StateTTL)
	}
	r.states[state] = &flow{verifier: verifier, nonce: nonce, data: data, browser: sha256.Sum256([]byte(browser)), expires: now.Add(StateTTL), source: src}
	r.order = append(r.order, state)
	r.perSource[src]++
	r.mu.Unlock()
	// One cookie per sign-in (named by the state's hash), so sign-ins in
	// several tabs do not undo each other. SameSite=Lax: the callback is a
	// top-level navigation from the provider's site.
	http.SetCookie(w, &http.Cookie{
		Name: r.cookieName(state), Value: browser, Path: "/", MaxAge: int(StateTTL / time.Second),
		HttpOnly: true, Secure: r.secure, SameSite: http.SameSiteLaxMode,
	})
	return rp.AuthURL(state, r.rp, rp.WithCodeChallenge(oidc.NewSHACodeChallenge(verifier)), rp.AuthURLOpt(rp.WithURLParam("nonce", nonce))), nil
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

// sweepLocked drops the sign-ins expired at now, and the finished ones
// from order. r.mu held.
func (r *RP) sweepLocked(now time.Time) {
	n := 0
	for _, s := range r.order {
		f := r.states[s]
		if f == nil {
			n++ // finished
			continue
		}
		if now.Before(f.expires) {
			break // started later, so expires later (the clock only moves on)
		}
		r.deleteLocked(s)
		n++
	}
	r.order = r.order[n:]
	// Finished sign-ins leave holes; compact once they are most of it.
	if len(r.order) > 2*len(r.states)+64 {
		live := make([]string, 0, len(r.states))
		for _, s := range r.order {
			if r.states[s] != nil {
				live = append(live, s)
			}
		}
		r.order = live
	}
}

// deleteLocked forgets the sign-in state. r.mu held.
func (r *RP) deleteLocked(state string) *flow {
	f := r.states[state]
	if f == nil {
		return nil
	}
	delete(r.states, state)
	if r.perSource[f.source]--; r.perSource[f.source] <= 0 {
		delete(r.perSource, f.source)
	}
	return f
}

// Begin redirects the browser to the provider (see AuthURL), or answers
// 429 with Retry-After when too many sign-ins are in flight.
func (r *RP) Begin(w http.ResponseWriter, req *http.Request, data string) {
	w.Header().Set("Cache-Control", "no-store")
	u, err := r.AuthURL(w, req, data)
	if err != nil {
		w.Header().Set("Retry-After", "60")
		http.Error(w, strings.TrimPrefix(err.Error(), "oidcauth: "), http.StatusTooManyRequests)
		return
	}
	http.Redirect(w, req, u, http.StatusFound)
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
	r.mu.Lock()
	f := r.deleteLocked(state) // good once, whatever happens next
	r.mu.Unlock()
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
