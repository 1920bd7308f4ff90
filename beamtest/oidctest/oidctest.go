// Package oidctest runs a real OpenID Connect provider in-process for
// tests: the OP of github.com/zitadel/oidc/v3 (discovery, authorization
// with PKCE, token, userinfo and keys endpoints, RS256-signed ID tokens)
// over an in-memory storage with test users, clients and a groups claim.
// People sign in at a plain HTML form (email and password), which a test
// fills in with a browser or with Login.
//
// Only tests import it.
package oidctest

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"
)

// User is a person who can sign in.
type User struct {
	Subject  string
	Email    string
	Name     string
	Password string
	Groups   []string
	// Unverified makes email_verified false.
	Unverified bool
}

// Client is a registered relying party.
type Client struct {
	ID, Secret string
	// RedirectURIs are the allowed redirect URIs; each may be a
	// path.Match glob ("http://127.0.0.1:*/oidc/callback").
	RedirectURIs []string
}

// Provider is a running OP. Its Issuer is an http://127.0.0.1:PORT URL.
type Provider struct {
	Issuer string
	// GroupsClaim is the claim carrying users' groups; "groups".
	GroupsClaim string

	st  *storage
	srv *http.Server
}

// Start runs a provider for users and clients on a loopback port until
// the test ends.
func Start(t testing.TB, users []User, clients []Client) *Provider {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("oidctest: listen: %v", err)
	}
	issuer := "http://" + ln.Addr().String()
	priv, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatalf("oidctest: key: %v", err)
	}
	st := &storage{
		users:    map[string]*User{},
		clients:  map[string]*Client{},
		requests: map[string]*authRequest{},
		codes:    map[string]string{},
		tokens:   map[string]*accessToken{},
		key:      signingKey{id: "k1", priv: priv},
	}
	for i := range users {
		u := users[i]
		st.users[u.Subject] = &u
	}
	for i := range clients {
		c := clients[i]
		st.clients[c.ID] = &c
	}
	var cryptoKey [32]byte
	rand.Read(cryptoKey[:])
	cfg := &op.Config{CryptoKey: cryptoKey, CodeMethodS256: true, AuthMethodPost: true}
	provider, err := op.NewProvider(cfg, st, op.StaticIssuer(issuer), op.WithAllowInsecure())
	if err != nil {
		t.Fatalf("oidctest: provider: %v", err)
	}
	p := &Provider{Issuer: issuer, GroupsClaim: "groups", st: st}
	st.callback = op.AuthCallbackURL(provider)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /login", p.loginForm)
	mux.HandleFunc("POST /login", p.login)
	mux.Handle("/", p.tamper(provider))
	p.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() { defer close(done); p.srv.Serve(ln) }()
	t.Cleanup(func() {
		p.srv.Close()
		<-done
	})
	return p
}

// RewriteIDTokens makes the token endpoint replace each ID token it
// issues by f's result, given the token's claims; nil stops it. Tests
// use it with Sign and SignForged to play a provider (or a man in the
// middle) handing out bad tokens.
func (p *Provider) RewriteIDTokens(f func(claims map[string]any) string) {
	p.st.mu.Lock()
	defer p.st.mu.Unlock()
	p.st.rewrite = f
}

// Sign signs claims with the provider's own key.
func (p *Provider) Sign(claims map[string]any) string {
	return sign(claims, jose.SigningKey{Algorithm: jose.RS256, Key: jose.JSONWebKey{Key: p.st.key.priv, KeyID: p.st.key.id}})
}

// SignForged signs claims with a key the provider never published,
// under the provider's key ID.
func (p *Provider) SignForged(claims map[string]any) string {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		panic(err)
	}
	return sign(claims, jose.SigningKey{Algorithm: jose.RS256, Key: jose.JSONWebKey{Key: k, KeyID: p.st.key.id}})
}

func sign(claims map[string]any, k jose.SigningKey) string {
	s, err := jose.NewSigner(k, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		panic(err)
	}
	b, _ := json.Marshal(claims)
	jws, err := s.Sign(b)
	if err != nil {
		panic(err)
	}
	out, err := jws.CompactSerialize()
	if err != nil {
		panic(err)
	}
	return out
}

// tamper applies RewriteIDTokens to the token endpoint's answers.
func (p *Provider) tamper(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.st.mu.Lock()
		f := p.st.rewrite
		p.st.mu.Unlock()
		if f == nil || r.URL.Path != "/oauth/token" {
			next.ServeHTTP(w, r)
			return
		}
		rec := &recorder{header: http.Header{}, status: http.StatusOK}
		next.ServeHTTP(rec, r)
		var body map[string]any
		if rec.status == http.StatusOK && json.Unmarshal([]byte(rec.body.String()), &body) == nil {
			if idt, ok := body["id_token"].(string); ok {
				if claims, err := unverifiedClaims(idt); err == nil {
					body["id_token"] = f(claims)
					b, _ := json.Marshal(body)
					rec.body.Reset()
					rec.body.Write(b)
				}
			}
		}
		for k, v := range rec.header {
			if k != "Content-Length" {
				w.Header()[k] = v
			}
		}
		w.WriteHeader(rec.status)
		io.WriteString(w, rec.body.String())
	})
}

func unverifiedClaims(jwt string) (map[string]any, error) {
	jws, err := jose.ParseSigned(jwt, []jose.SignatureAlgorithm{jose.RS256})
	if err != nil {
		return nil, err
	}
	var c map[string]any
	err = json.Unmarshal(jws.UnsafePayloadWithoutVerification(), &c)
	return c, err
}

type recorder struct {
	header http.Header
	status int
	body   strings.Builder
}

func (r *recorder) Header() http.Header         { return r.header }
func (r *recorder) WriteHeader(s int)           { r.status = s }
func (r *recorder) Write(b []byte) (int, error) { return r.body.Write(b) }

var loginPage = template.Must(template.New("login").Parse(`<!doctype html>
<html><head><title>Test provider sign-in</title></head><body>
<h1>Sign in</h1>
{{if .Error}}<p id="error">{{.Error}}</p>{{end}}
<form method="post" action="/login">
<input type="hidden" name="id" value="{{.ID}}">
<label>Email <input id="email" name="email" type="text"></label>
<label>Password <input id="password" name="password" type="password"></label>
<button id="submit" type="submit">Sign in</button>
</form></body></html>`))

func (p *Provider) loginForm(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	loginPage.Execute(w, map[string]string{"ID": r.URL.Query().Get("authRequestID")})
}

func (p *Provider) login(w http.ResponseWriter, r *http.Request) {
	id, email, pw := r.FormValue("id"), r.FormValue("email"), r.FormValue("password")
	st := p.st
	st.mu.Lock()
	req := st.requests[id]
	var user *User
	for _, u := range st.users {
		if strings.EqualFold(u.Email, email) && u.Password == pw {
			user = u
		}
	}
	if req != nil && user != nil {
		req.subject, req.done, req.authTime = user.Subject, true, time.Now()
	}
	st.mu.Unlock()
	if req == nil {
		http.Error(w, "unknown sign-in request", http.StatusBadRequest)
		return
	}
	if user == nil {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.WriteHeader(http.StatusUnauthorized)
		loginPage.Execute(w, map[string]string{"ID": id, "Error": "wrong email or password"})
		return
	}
	http.Redirect(w, r, st.callback(r.Context(), id), http.StatusFound)
}

// Login plays a person's browser: it follows authURL to the provider's
// sign-in form, signs in as email with password and follows the
// redirects back, returning the last response and its body. c is the
// browser (its Jar keeps cookies; a CheckRedirect that stops early
// returns that response); nil means a new client with a cookie jar.
func Login(ctx context.Context, c *http.Client, authURL, email, password string) (*http.Response, string, error) {
	if c == nil {
		jar, _ := cookiejar.New(nil)
		c = &http.Client{Jar: jar, Timeout: 30 * time.Second}
	}
	req, err := http.NewRequestWithContext(ctx, "GET", authURL, nil)
	if err != nil {
		return nil, "", err
	}
	req.Header.Set("Accept", "text/html")
	resp, body, err := do(c, req)
	if err != nil {
		return nil, "", err
	}
	if !strings.Contains(body, `action="/login"`) {
		return resp, body, fmt.Errorf("oidctest: no sign-in form at %s (status %d): %.300s", resp.Request.URL, resp.StatusCode, body)
	}
	id := resp.Request.URL.Query().Get("authRequestID")
	form := url.Values{"id": {id}, "email": {email}, "password": {password}}
	login := resp.Request.URL.ResolveReference(&url.URL{Path: "/login"})
	req, err = http.NewRequestWithContext(ctx, "POST", login.String(), strings.NewReader(form.Encode()))
	if err != nil {
		return nil, "", err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "text/html")
	return do(c, req)
}

func do(c *http.Client, req *http.Request) (*http.Response, string, error) {
	resp, err := c.Do(req)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp, string(b), err
}

// storage is the OP's in-memory op.Storage.
type storage struct {
	key      signingKey
	callback func(context.Context, string) string

	mu       sync.Mutex       // guards the following fields
	users    map[string]*User // by subject
	clients  map[string]*Client
	requests map[string]*authRequest
	codes    map[string]string // code -> request ID
	tokens   map[string]*accessToken
	rewrite  func(map[string]any) string
}

type accessToken struct {
	subject, clientID string
	scopes            []string
	expires           time.Time
}

var errNotFound = errors.New("oidctest: not found")

func randomID() string {
	b := make([]byte, 16)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func (s *storage) CreateAuthRequest(ctx context.Context, r *oidc.AuthRequest, userID string) (op.AuthRequest, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a := &authRequest{id: randomID(), req: *r, created: time.Now()}
	if r.CodeChallenge != "" {
		a.challenge = &oidc.CodeChallenge{Challenge: r.CodeChallenge, Method: r.CodeChallengeMethod}
	}
	s.requests[a.id] = a
	return a, nil
}

func (s *storage) AuthRequestByID(ctx context.Context, id string) (op.AuthRequest, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if a := s.requests[id]; a != nil {
		return a, nil
	}
	return nil, errNotFound
}

func (s *storage) AuthRequestByCode(ctx context.Context, code string) (op.AuthRequest, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if a := s.requests[s.codes[code]]; a != nil {
		return a, nil
	}
	return nil, errNotFound
}

func (s *storage) SaveAuthCode(ctx context.Context, id, code string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.codes[code] = id
	return nil
}

// DeleteAuthRequest forgets the request and its codes: a code is good once.
func (s *storage) DeleteAuthRequest(ctx context.Context, id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.requests, id)
	for c, rid := range s.codes {
		if rid == id {
			delete(s.codes, c)
		}
	}
	return nil
}

func (s *storage) CreateAccessToken(ctx context.Context, r op.TokenRequest) (string, time.Time, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	id := randomID()
	exp := time.Now().Add(5 * time.Minute)
	clientID := ""
	if a, ok := r.(*authRequest); ok {
		clientID = a.req.ClientID
	}
	s.tokens[id] = &accessToken{subject: r.GetSubject(), clientID: clientID, scopes: r.GetScopes(), expires: exp}
	return id, exp, nil
}

func (s *storage) CreateAccessAndRefreshTokens(ctx context.Context, r op.TokenRequest, current string) (string, string, time.Time, error) {
	return "", "", time.Time{}, errors.New("oidctest: refresh tokens are not supported")
}

func (s *storage) TokenRequestByRefreshToken(ctx context.Context, t string) (op.RefreshTokenRequest, error) {
	return nil, op.ErrInvalidRefreshToken
}

func (s *storage) TerminateSession(ctx context.Context, userID, clientID string) error { return nil }

func (s *storage) RevokeToken(ctx context.Context, token, userID, clientID string) *oidc.Error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.tokens, token)
	return nil
}

func (s *storage) GetRefreshTokenInfo(ctx context.Context, clientID, token string) (string, string, error) {
	return "", "", op.ErrInvalidRefreshToken
}

func (s *storage) SigningKey(ctx context.Context) (op.SigningKey, error) { return s.key, nil }

func (s *storage) SignatureAlgorithms(ctx context.Context) ([]jose.SignatureAlgorithm, error) {
	return []jose.SignatureAlgorithm{jose.RS256}, nil
}

func (s *storage) KeySet(ctx context.Context) ([]op.Key, error) {
	return []op.Key{publicKey{s.key}}, nil
}

func (s *storage) GetClientByClientID(ctx context.Context, id string) (op.Client, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c := s.clients[id]; c != nil {
		return client{c}, nil
	}
	return nil, errNotFound
}

func (s *storage) AuthorizeClientIDSecret(ctx context.Context, id, secret string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.clients[id]
	if c == nil || sha256.Sum256([]byte(c.Secret)) != sha256.Sum256([]byte(secret)) {
		return errors.New("oidctest: invalid client credentials")
	}
	return nil
}

func (s *storage) SetUserinfoFromScopes(ctx context.Context, ui *oidc.UserInfo, userID, clientID string, scopes []string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	u := s.users[userID]
	if u == nil {
		return errNotFound
	}
	ui.Subject = u.Subject
	for _, sc := range scopes {
		switch sc {
		case oidc.ScopeEmail:
			ui.Email, ui.EmailVerified = u.Email, oidc.Bool(!u.Unverified)
		case oidc.ScopeProfile:
			ui.Name = u.Name
		case "groups":
			ui.AppendClaims("groups", u.Groups)
		}
	}
	return nil
}

func (s *storage) SetUserinfoFromToken(ctx context.Context, ui *oidc.UserInfo, tokenID, subject, origin string) error {
	s.mu.Lock()
	t := s.tokens[tokenID]
	s.mu.Unlock()
	if t == nil || time.Now().After(t.expires) {
		return errors.New("oidctest: token is invalid or expired")
	}
	return s.SetUserinfoFromScopes(ctx, ui, t.subject, t.clientID, t.scopes)
}

func (s *storage) SetIntrospectionFromToken(ctx context.Context, r *oidc.IntrospectionResponse, tokenID, subject, clientID string) error {
	return errors.New("oidctest: introspection is not supported")
}

func (s *storage) GetPrivateClaimsFromScopes(ctx context.Context, userID, clientID string, scopes []string) (map[string]any, error) {
	return nil, nil
}

func (s *storage) GetKeyByIDAndClientID(ctx context.Context, keyID, clientID string) (*jose.JSONWebKey, error) {
	return nil, errNotFound
}

func (s *storage) ValidateJWTProfileScopes(ctx context.Context, userID string, scopes []string) ([]string, error) {
	return nil, errors.New("oidctest: JWT profile is not supported")
}

func (s *storage) Health(ctx context.Context) error { return nil }

type authRequest struct {
	id        string
	req       oidc.AuthRequest
	challenge *oidc.CodeChallenge
	created   time.Time
	subject   string
	done      bool
	authTime  time.Time
}

func (a *authRequest) GetID() string                         { return a.id }
func (a *authRequest) GetACR() string                        { return "" }
func (a *authRequest) GetAMR() []string                      { return []string{"pwd"} }
func (a *authRequest) GetAudience() []string                 { return []string{a.req.ClientID} }
func (a *authRequest) GetAuthTime() time.Time                { return a.authTime }
func (a *authRequest) GetClientID() string                   { return a.req.ClientID }
func (a *authRequest) GetCodeChallenge() *oidc.CodeChallenge { return a.challenge }
func (a *authRequest) GetNonce() string                      { return a.req.Nonce }
func (a *authRequest) GetRedirectURI() string                { return a.req.RedirectURI }
func (a *authRequest) GetResponseType() oidc.ResponseType    { return a.req.ResponseType }
func (a *authRequest) GetResponseMode() oidc.ResponseMode    { return a.req.ResponseMode }
func (a *authRequest) GetScopes() []string                   { return a.req.Scopes }
func (a *authRequest) GetState() string                      { return a.req.State }
func (a *authRequest) GetSubject() string                    { return a.subject }
func (a *authRequest) Done() bool                            { return a.done }

type client struct{ c *Client }

func (c client) GetID() string                        { return c.c.ID }
func (c client) RedirectURIs() []string               { return c.c.RedirectURIs }
func (c client) RedirectURIGlobs() []string           { return c.c.RedirectURIs }
func (c client) PostLogoutRedirectURIs() []string     { return nil }
func (c client) PostLogoutRedirectURIGlobs() []string { return nil }
func (c client) ApplicationType() op.ApplicationType  { return op.ApplicationTypeWeb }
func (c client) AuthMethod() oidc.AuthMethod          { return oidc.AuthMethodBasic }
func (c client) ResponseTypes() []oidc.ResponseType {
	return []oidc.ResponseType{oidc.ResponseTypeCode}
}
func (c client) GrantTypes() []oidc.GrantType        { return []oidc.GrantType{oidc.GrantTypeCode} }
func (c client) LoginURL(id string) string           { return "/login?authRequestID=" + url.QueryEscape(id) }
func (c client) AccessTokenType() op.AccessTokenType { return op.AccessTokenTypeBearer }
func (c client) IDTokenLifetime() time.Duration      { return 5 * time.Minute }
func (c client) DevMode() bool                       { return true } // http:// redirect URIs
func (c client) RestrictAdditionalIdTokenScopes() func([]string) []string {
	return func(s []string) []string { return s }
}
func (c client) RestrictAdditionalAccessTokenScopes() func([]string) []string {
	return func(s []string) []string { return s }
}
func (c client) IsScopeAllowed(scope string) bool     { return scope == "groups" }
func (c client) IDTokenUserinfoClaimsAssertion() bool { return true }
func (c client) ClockSkew() time.Duration             { return 0 }

type signingKey struct {
	id   string
	priv *rsa.PrivateKey
}

func (k signingKey) SignatureAlgorithm() jose.SignatureAlgorithm { return jose.RS256 }
func (k signingKey) Key() any                                    { return k.priv }
func (k signingKey) ID() string                                  { return k.id }

type publicKey struct{ signingKey }

func (k publicKey) Algorithm() jose.SignatureAlgorithm { return jose.RS256 }
func (k publicKey) Use() string                        { return "sig" }
func (k publicKey) Key() any                           { return &k.priv.PublicKey }
