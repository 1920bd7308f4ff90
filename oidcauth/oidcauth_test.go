package oidcauth_test

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"beam.dev/beam/beamtest/oidctest"
	"beam.dev/beam/oidcauth"
)

var (
	alice = oidctest.User{Subject: "u-alice", Email: "Alice@Example.com", Name: "Alice", Password: "pw-alice", Groups: []string{"eng", "ops"}}
	bob   = oidctest.User{Subject: "u-bob", Email: "bob@other.org", Name: "Bob", Password: "pw-bob"}
)

// rpServer serves an RP: /start begins a sign-in, /callback finishes it
// and answers "ok EMAIL NAME GROUPS DATA" or 403 with the error.
type rpServer struct {
	base string
	rp   *oidcauth.RP
}

func startRP(t *testing.T, p *oidctest.Provider, clientID string) *rpServer {
	t.Helper()
	return startRPWith(t, p, clientID, nil)
}

// startRPWith is startRP with options changed by opt (if not nil).
func startRPWith(t *testing.T, p *oidctest.Provider, clientID string, opt func(*oidcauth.Options)) *rpServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &rpServer{base: "http://" + ln.Addr().String()}
	opts := oidcauth.Options{
		Issuer: p.Issuer, ClientID: clientID, ClientSecret: "secret-" + clientID,
		RedirectURL: s.base + "/callback", Scopes: []string{"email", "profile", "groups"},
	}
	if opt != nil {
		opt(&opts)
	}
	s.rp, err = oidcauth.New(t.Context(), opts)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /start", func(w http.ResponseWriter, r *http.Request) { s.rp.Begin(w, r, "data-1") })
	mux.HandleFunc("GET /callback", func(w http.ResponseWriter, r *http.Request) {
		id, data, err := s.rp.Finish(w, r)
		if err != nil {
			if !errors.Is(err, oidcauth.ErrSignIn) {
				t.Errorf("Finish error %v does not wrap ErrSignIn", err)
			}
			http.Error(w, err.Error(), http.StatusForbidden)
			return
		}
		fmt.Fprintf(w, "ok %s %s %s %s verified=%v", id.Email, id.Name, strings.Join(id.Groups, ","), data, id.EmailVerified)
	})
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return s
}

func newProvider(t *testing.T) *oidctest.Provider {
	return oidctest.Start(t, []oidctest.User{alice, bob}, []oidctest.Client{
		{ID: "beam", Secret: "secret-beam", RedirectURIs: []string{"http://127.0.0.1:*/callback"}},
		{ID: "other", Secret: "secret-other", RedirectURIs: []string{"http://127.0.0.1:*/callback"}},
	})
}

// browser returns a client with its own cookies that stops before
// delivering the provider's redirect to /callback.
func browser() *http.Client {
	jar, _ := cookiejar.New(nil)
	return &http.Client{Jar: jar, Timeout: 30 * time.Second, CheckRedirect: func(r *http.Request, via []*http.Request) error {
		if r.URL.Path == "/callback" {
			return http.ErrUseLastResponse
		}
		return nil
	}}
}

// callbackURL signs in as u and returns the callback URL the provider
// redirected to, undelivered.
func callbackURL(t *testing.T, c *http.Client, s *rpServer, u oidctest.User) string {
	t.Helper()
	resp, body, err := oidctest.Login(t.Context(), c, s.base+"/start", u.Email, u.Password)
	if err != nil {
		t.Fatal(err)
	}
	loc := resp.Header.Get("Location")
	if resp.StatusCode != http.StatusFound || !strings.HasPrefix(loc, s.base+"/callback?") {
		t.Fatalf("sign-in answered %d Location %q: %.300s", resp.StatusCode, loc, body)
	}
	return loc
}

// deliver sends the browser c to the callback URL u.
func deliver(t *testing.T, c *http.Client, u string) (int, string) {
	t.Helper()
	resp, err := c.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestSignIn(t *testing.T) {
	p := newProvider(t)
	s := startRP(t, p, "beam")
	c := browser()
	u := callbackURL(t, c, s, alice)
	code, body := deliver(t, c, u)
	if want := "ok alice@example.com Alice eng,ops data-1 verified=true"; code != 200 || body != want {
		t.Fatalf("callback: got %d %q, want 200 %q", code, body, want)
	}
	// Replaying the same callback (state and code) is refused.
	if code, body := deliver(t, c, u); code != http.StatusForbidden || !strings.Contains(body, "unknown, used or expired") {
		t.Fatalf("replayed callback: got %d %q, want 403 unknown, used or expired", code, body)
	}
}

func TestAuthURLUsesPKCEAndNonce(t *testing.T) {
	p := newProvider(t)
	s := startRP(t, p, "beam")
	c := browser()
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, err := c.Get(s.base + "/start")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	u, err := url.Parse(resp.Header.Get("Location"))
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	for _, k := range []string{"state", "nonce", "code_challenge"} {
		if len(q.Get(k)) < 40 {
			t.Errorf("auth URL %s = %q, want a random value", k, q.Get(k))
		}
	}
	if got := q.Get("code_challenge_method"); got != "S256" {
		t.Errorf("code_challenge_method = %q, want S256", got)
	}
	if !strings.HasPrefix(u.String(), p.Issuer) {
		t.Errorf("auth URL %s is not at the provider %s", u, p.Issuer)
	}
}

func TestRefusedTokens(t *testing.T) {
	p := newProvider(t)
	s := startRP(t, p, "beam")
	tests := []struct {
		name    string
		rewrite func(c map[string]any) string
	}{
		{"forged signature", func(c map[string]any) string { return p.SignForged(c) }},
		{"expired", func(c map[string]any) string {
			c["exp"], c["iat"] = time.Now().Add(-time.Hour).Unix(), time.Now().Add(-2*time.Hour).Unix()
			return p.Sign(c)
		}},
		{"wrong audience", func(c map[string]any) string {
			c["aud"], c["azp"] = []string{"other"}, "other"
			return p.Sign(c)
		}},
		{"wrong issuer", func(c map[string]any) string { c["iss"] = "http://127.0.0.1:1"; return p.Sign(c) }},
		{"wrong nonce", func(c map[string]any) string { c["nonce"] = "not-the-nonce"; return p.Sign(c) }},
		{"no signature", func(c map[string]any) string {
			parts := strings.Split(p.Sign(c), ".")
			return parts[0] + "." + parts[1] + "."
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p.RewriteIDTokens(tt.rewrite)
			defer p.RewriteIDTokens(nil)
			c := browser()
			code, body := deliver(t, c, callbackURL(t, c, s, alice))
			if code != http.StatusForbidden || !strings.Contains(body, "did not check out") {
				t.Fatalf("got %d %q, want 403 did not check out", code, body)
			}
		})
	}
	// The same flow with the provider's own token passes.
	c := browser()
	if code, body := deliver(t, c, callbackURL(t, c, s, alice)); code != 200 {
		t.Fatalf("untampered sign-in: got %d %q", code, body)
	}
}

func TestRefusedCallbacks(t *testing.T) {
	p := newProvider(t)
	s := startRP(t, p, "beam")
	t.Run("other browser", func(t *testing.T) {
		u := callbackURL(t, browser(), s, alice)
		if code, body := deliver(t, browser(), u); code != http.StatusForbidden || !strings.Contains(body, "another browser") {
			t.Fatalf("got %d %q, want 403 another browser", code, body)
		}
	})
	t.Run("unknown state", func(t *testing.T) {
		c := browser()
		u, _ := url.Parse(callbackURL(t, c, s, alice))
		q := u.Query()
		q.Set("state", "made-up")
		u.RawQuery = q.Encode()
		if code, _ := deliver(t, c, u.String()); code != http.StatusForbidden {
			t.Fatalf("got %d, want 403", code)
		}
	})
	t.Run("replayed code with a fresh state", func(t *testing.T) {
		c := browser()
		first, _ := url.Parse(callbackURL(t, c, s, alice))
		if code, body := deliver(t, c, first.String()); code != 200 {
			t.Fatalf("first callback: %d %q", code, body)
		}
		// A new sign-in's state, but the old (used) code.
		second, _ := url.Parse(callbackURL(t, c, s, alice))
		q := second.Query()
		q.Set("code", first.Query().Get("code"))
		second.RawQuery = q.Encode()
		if code, body := deliver(t, c, second.String()); code != http.StatusForbidden || !strings.Contains(body, "did not check out") {
			t.Fatalf("got %d %q, want 403 did not check out", code, body)
		}
	})
	t.Run("code of another sign-in", func(t *testing.T) {
		// A code issued for one sign-in (its PKCE challenge) is useless
		// with another sign-in's state and verifier.
		c := browser()
		stolen, _ := url.Parse(callbackURL(t, browser(), s, bob))
		mine, _ := url.Parse(callbackURL(t, c, s, alice))
		q := mine.Query()
		q.Set("code", stolen.Query().Get("code"))
		mine.RawQuery = q.Encode()
		if code, body := deliver(t, c, mine.String()); code != http.StatusForbidden {
			t.Fatalf("got %d %q, want 403", code, body)
		}
	})
	const planted = "Your device was removed. Reinstall it from https://evil.test/install.sh"
	t.Run("provider error", func(t *testing.T) {
		c := browser()
		u, _ := url.Parse(callbackURL(t, c, s, alice))
		q := u.Query()
		q.Del("code")
		q.Set("error", "access_denied")
		q.Set("error_description", planted)
		u.RawQuery = q.Encode()
		if code, body := deliver(t, c, u.String()); code != http.StatusForbidden || !strings.Contains(body, "access_denied") || strings.Contains(body, "evil.test") {
			t.Fatalf("got %d %q, want 403 naming access_denied and not the description", code, body)
		}
	})
	t.Run("provider error of unknown code", func(t *testing.T) {
		c := browser()
		u, _ := url.Parse(callbackURL(t, c, s, alice))
		q := u.Query()
		q.Del("code")
		q.Set("error", planted)
		u.RawQuery = q.Encode()
		if code, body := deliver(t, c, u.String()); code != http.StatusForbidden || strings.Contains(body, "evil.test") {
			t.Fatalf("got %d %q, want 403 without the planted text", code, body)
		}
	})
	// Anyone can send a browser to the callback with an error and a
	// description of their own, and no sign-in of that browser's: the
	// page shows neither.
	for name, state := range map[string]string{"no state": "", "unknown state": "made-up"} {
		t.Run("planted error, "+name, func(t *testing.T) {
			q := url.Values{"error": {"access_denied"}, "error_description": {planted}}
			if state != "" {
				q.Set("state", state)
			}
			code, body := deliver(t, browser(), s.base+"/callback?"+q.Encode())
			if code != http.StatusForbidden || strings.Contains(body, "evil.test") || strings.Contains(body, "access_denied") || !strings.Contains(body, "unknown, used or expired") {
				t.Fatalf("got %d %q, want 403 unknown, used or expired, without the planted error", code, body)
			}
		})
	}
	t.Run("planted error, another browser's state", func(t *testing.T) {
		u, _ := url.Parse(callbackURL(t, browser(), s, alice))
		q := u.Query()
		q.Del("code")
		q.Set("error", "access_denied")
		q.Set("error_description", planted)
		u.RawQuery = q.Encode()
		if code, body := deliver(t, browser(), u.String()); code != http.StatusForbidden || strings.Contains(body, "evil.test") || !strings.Contains(body, "another browser") {
			t.Fatalf("got %d %q, want 403 another browser, without the planted text", code, body)
		}
	})
}

// TestCodeNeedsVerifier plays a thief who got a code (say from a leaked
// redirect) and the client's secret: without the PKCE verifier the
// provider will not exchange it.
func TestCodeNeedsVerifier(t *testing.T) {
	p := newProvider(t)
	s := startRP(t, p, "beam")
	u, _ := url.Parse(callbackURL(t, browser(), s, alice))
	form := url.Values{"grant_type": {"authorization_code"}, "code": {u.Query().Get("code")}, "redirect_uri": {s.base + "/callback"}}
	req, _ := http.NewRequest("POST", p.Issuer+"/oauth/token", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth("beam", "secret-beam")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusBadRequest || strings.Contains(string(b), "id_token") {
		t.Fatalf("token request without verifier: got %d %s, want 400 and no token", resp.StatusCode, b)
	}
}

func TestAllow(t *testing.T) {
	a, err := oidcauth.ParseAllow([]string{"email:*@example.com", "email:Carol@Else.org", "group:eng"})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		id   oidcauth.Identity
		want bool
	}{
		{oidcauth.Identity{Email: "alice@example.com", EmailVerified: true}, true},
		{oidcauth.Identity{Email: "alice@example.com"}, false}, // unverified
		{oidcauth.Identity{Email: "alice@sub.example.com", EmailVerified: true}, false},
		{oidcauth.Identity{Email: "alice@example.com.evil", EmailVerified: true}, false},
		{oidcauth.Identity{Email: "carol@else.org", EmailVerified: true}, true},
		{oidcauth.Identity{Email: "dave@else.org", EmailVerified: true}, false},
		{oidcauth.Identity{Email: "x@y.z", Groups: []string{"ops", "eng"}}, true},
		{oidcauth.Identity{Groups: []string{"engineering"}}, false},
	}
	for _, tt := range tests {
		if got := a.Permits(&tt.id); got != tt.want {
			t.Errorf("Permits(%+v) = %v, want %v", tt.id, got, tt.want)
		}
	}
	for _, bad := range []string{"alice@example.com", "email:*@", "email:*", "group:", "domain:x", "email:a@*.com"} {
		if _, err := oidcauth.ParseAllow([]string{bad}); err == nil {
			t.Errorf("ParseAllow(%q) succeeded, want an error", bad)
		}
	}
}

func TestVerifyIDToken(t *testing.T) {
	p := newProvider(t)
	s := startRP(t, p, "beam")
	now := time.Now()
	claims := func(mod func(map[string]any)) map[string]any {
		c := map[string]any{"iss": p.Issuer, "sub": "u-alice", "aud": []string{"beam"}, "exp": now.Add(5 * time.Minute).Unix(),
			"iat": now.Unix(), "email": "alice@example.com", "email_verified": true, "groups": []string{"admins"}}
		if mod != nil {
			mod(c)
		}
		return c
	}
	id, err := s.rp.VerifyIDToken(t.Context(), p.Sign(claims(nil)))
	if err != nil || id.Email != "alice@example.com" || !id.EmailVerified || len(id.Groups) != 1 {
		t.Fatalf("a good token: %+v, %v", id, err)
	}
	for name, tok := range map[string]string{
		"forged":         p.SignForged(claims(nil)),
		"expired":        p.Sign(claims(func(c map[string]any) { c["exp"] = now.Add(-time.Minute).Unix() })),
		"wrong audience": p.Sign(claims(func(c map[string]any) { c["aud"] = []string{"other"} })),
		"wrong issuer":   p.Sign(claims(func(c map[string]any) { c["iss"] = "http://127.0.0.1:1" })),
		"garbage":        "a.b.c",
	} {
		if id, err := s.rp.VerifyIDToken(t.Context(), tok); err == nil || !errors.Is(err, oidcauth.ErrSignIn) {
			t.Errorf("%s token: %+v, %v; want refused", name, id, err)
		}
	}
}

// browserFrom is browser with its connections from the loopback address
// ip, so the RP sees several sources.
func browserFrom(ip string) *http.Client {
	c := browser()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	c.Transport = &http.Transport{DialContext: d.DialContext}
	return c
}

// fakeClock is a clock tests move by hand.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// TestSignInFloodLocksNobodyOut starts sign-ins that are never finished,
// as anyone can, from several addresses, past both bounds: no start is
// refused, each address's flood pushes out its own oldest sign-ins, and
// at the total the busiest address's; a sign-in started before the flood,
// and one from a fresh address after it, both finish.
func TestSignInFloodLocksNobodyOut(t *testing.T) {
	p := newProvider(t)
	clock := &fakeClock{t: time.Now()}
	s := startRPWith(t, p, "beam", func(o *oidcauth.Options) {
		o.MaxSignIns, o.MaxSignInsPerAddress, o.Now = 5, 3, clock.Now
	})
	start := func(c *http.Client) (int, string) {
		t.Helper()
		stop := c.CheckRedirect
		c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
		defer func() { c.CheckRedirect = stop }()
		resp, err := c.Get(s.base + "/start")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode, resp.Header.Get("Location")
	}
	// finish signs in at the provider from authURL and delivers the callback.
	finish := func(c *http.Client, authURL string) (int, string) {
		t.Helper()
		resp, body, err := oidctest.Login(t.Context(), c, authURL, alice.Email, alice.Password)
		if err != nil {
			t.Fatal(err)
		}
		loc := resp.Header.Get("Location")
		if resp.StatusCode != http.StatusFound || !strings.HasPrefix(loc, s.base+"/callback?") {
			t.Fatalf("sign-in answered %d Location %q: %.300s", resp.StatusCode, loc, body)
		}
		return deliver(t, c, loc)
	}

	early := browserFrom("127.0.0.9")
	code, earlyURL := start(early)
	if code != http.StatusFound {
		t.Fatalf("start before the flood: got %d, want 302", code)
	}
	for _, ip := range []string{"127.0.0.2", "127.0.0.3", "127.0.0.4"} {
		for i := range 8 {
			if code, _ := start(browserFrom(ip)); code != http.StatusFound {
				t.Fatalf("start %d from %s: got %d, want 302 (a flood is never refused, it pushes out its own)", i, ip, code)
			}
		}
	}
	if code, body := finish(early, earlyURL); code != http.StatusOK {
		t.Fatalf("sign-in started before the flood: got %d %q, want 200", code, body)
	}
	fresh := browserFrom("127.0.0.5")
	code, freshURL := start(fresh)
	if code != http.StatusFound {
		t.Fatalf("start from a fresh address after the flood: got %d, want 302", code)
	}
	if code, body := finish(fresh, freshURL); code != http.StatusOK {
		t.Fatalf("sign-in from a fresh address after the flood: got %d %q, want 200", code, body)
	}

	// An address past its bound loses its own oldest sign-in.
	c := browserFrom("127.0.0.6")
	_, oldest := start(c)
	for range 3 {
		start(c)
	}
	if code, body := finish(c, oldest); code != http.StatusForbidden || !strings.Contains(body, "unknown, used or expired") {
		t.Fatalf("the oldest of 4 sign-ins from one address (bound 3): got %d %q, want 403 unknown", code, body)
	}

	// Expired sign-ins are gone.
	_, stale := start(c)
	clock.Add(oidcauth.StateTTL)
	if code, body := finish(c, stale); code != http.StatusForbidden || !strings.Contains(body, "unknown, used or expired") {
		t.Fatalf("an expired sign-in: got %d %q, want 403 unknown", code, body)
	}
}
