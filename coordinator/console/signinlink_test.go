package console_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"beam.dev/beam/coordinator/console"
)

// askLink posts to the sign-in link endpoint with the bearer token (none
// if empty) and body, and returns the status and the link on success.
func (e *env) askLink(token, body string) (int, console.SignInLink) {
	e.t.Helper()
	req, _ := http.NewRequest("POST", e.srv.URL+console.SignInLinkPath, strings.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var l console.SignInLink
	if resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(b, &l); err != nil {
			e.t.Fatalf("sign-in link answer %q: %v", b, err)
		}
	}
	return resp.StatusCode, l
}

func (e *env) mustLink(body string) console.SignInLink {
	e.t.Helper()
	status, l := e.askLink(testToken, body)
	if status != http.StatusOK || !strings.HasPrefix(l.Path, console.Path+"signin/") {
		e.t.Fatalf("ask for a sign-in link: status %d, link %+v; want 200 and a path under %ssignin/", status, l, console.Path)
	}
	return l
}

// useLink opens the link in b and reports whether b is signed in after.
func (b *browser) useLink(l console.SignInLink) (response, bool) {
	b.e.t.Helper()
	r := b.get(l.Path)
	return r, b.get(console.Path+"nodes").status == http.StatusOK
}

func TestSignInLink(t *testing.T) {
	e := newEnv(t, false, nil)
	l := e.mustLink("")
	if want := e.clock.now().Add(console.DefaultSignInLinkTTL); !l.Expires.Equal(want) {
		t.Errorf("link expires %v, want %v", l.Expires, want)
	}
	b := e.browser()
	r, in := b.useLink(l)
	if r.status != http.StatusOK || !in || !strings.Contains(r.body, `url=`+console.Path+`nodes"`) {
		t.Fatalf("first use: status %d, signed in %v; want 200, signed in, on to the nodes page\n%s", r.status, in, r.body)
	}
	if c := sessionCookieOf(r); c == nil || !c.HttpOnly || c.SameSite != http.SameSiteStrictMode {
		t.Errorf("session cookie of the link: %+v, want HttpOnly SameSite=Strict", c)
	}

	// Used once, it is spent, for another browser and for the same one.
	other := e.browser()
	r, in = other.useLink(l)
	if r.status != http.StatusForbidden || in || sessionCookieOf(r) != nil || !strings.Contains(r.body, "used already") {
		t.Errorf("second use: status %d, signed in %v, cookies %v; want 403 and no session\n%s", r.status, in, r.cookies, r.body)
	}
	if r := b.get(l.Path); r.status != http.StatusForbidden {
		t.Errorf("second use in the first browser: status %d, want 403", r.status)
	}

	entries, err := e.coord.Audit(t.Context(), 20)
	if err != nil {
		t.Fatal(err)
	}
	var log bytes.Buffer
	for _, a := range entries {
		log.WriteString(a.Actor + " " + a.Action + " " + a.Detail + "\n")
	}
	for _, want := range []string{"admin console.link one-time sign-in link valid for 1m0s", "console:admin console.login via sign-in link", "console.login_failed sign-in link unknown or used"} {
		if !strings.Contains(log.String(), want) {
			t.Errorf("audit log lacks %q:\n%s", want, &log)
		}
	}
	if strings.Contains(log.String(), strings.TrimPrefix(l.Path, console.Path+"signin/")) {
		t.Errorf("audit log holds the link's code:\n%s", &log)
	}
}

func TestSignInLinkExpires(t *testing.T) {
	e := newEnv(t, false, nil)
	tests := []struct {
		name    string
		body    string
		ttl     time.Duration // the link's lifetime
		advance time.Duration
		ok      bool
	}{
		{"default, in time", "", console.DefaultSignInLinkTTL, console.DefaultSignInLinkTTL - time.Second, true},
		{"default, late", "", console.DefaultSignInLinkTTL, console.DefaultSignInLinkTTL, false},
		{"short, late", `{"ttl_seconds":2}`, 2 * time.Second, 2 * time.Second, false},
		{"short, in time", `{"ttl_seconds":2}`, 2 * time.Second, time.Second, true},
		{"long cut to most", `{"ttl_seconds":86400}`, console.MaxSignInLinkTTL, console.MaxSignInLinkTTL, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := e.mustLink(tt.body)
			if want := e.clock.now().Add(tt.ttl); !l.Expires.Equal(want) {
				t.Errorf("link expires %v, want %v", l.Expires, want)
			}
			e.clock.advance(tt.advance)
			r, in := e.browser().useLink(l)
			if in != tt.ok || (r.status == http.StatusOK) != tt.ok {
				t.Errorf("after %v: status %d, signed in %v; want signed in %v", tt.advance, r.status, in, tt.ok)
			}
		})
	}
}

func TestSignInLinkRefused(t *testing.T) {
	e := newEnv(t, false, func(o *console.Options) { o.LoginBurst = 100 })
	for _, tt := range []struct{ name, token, body string }{
		{"no token", "", ""},
		{"wrong token", "wrong-" + testToken, ""},
		{"admin token in the body", "", `{"token":"` + testToken + `"}`},
	} {
		if status, l := e.askLink(tt.token, tt.body); status != http.StatusUnauthorized || l.Path != "" {
			t.Errorf("%s: status %d, link %+v; want 401 and none", tt.name, status, l)
		}
	}
	for _, body := range []string{`{"ttl_seconds":-1}`, `{"unknown":1}`, `[`} {
		if status, _ := e.askLink(testToken, body); status != http.StatusBadRequest {
			t.Errorf("body %s: status %d, want 400", body, status)
		}
	}
	req, _ := http.NewRequest("GET", e.srv.URL+console.SignInLinkPath, nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("GET the link endpoint: %s, want 405", resp.Status)
	}

	if r, in := e.browser().useLink(console.SignInLink{Path: console.Path + "signin/made-up"}); r.status != http.StatusForbidden || in {
		t.Errorf("made-up code: status %d, signed in %v; want 403", r.status, in)
	}

	// A link made with an admin token replaced since does not sign in;
	// a session it started ends with the rotation.
	spent, unused := e.mustLink(""), e.mustLink("")
	b := e.browser()
	if _, in := b.useLink(spent); !in {
		t.Fatal("link not signed in")
	}
	if err := e.coord.SetAdminToken(t.Context(), "rotated-"+testToken); err != nil {
		t.Fatal(err)
	}
	if b.get(console.Path+"nodes").status == http.StatusOK {
		t.Error("the link's session outlived the admin token it was made with")
	}
	if r, in := e.browser().useLink(unused); r.status != http.StatusForbidden || in || !strings.Contains(r.body, "replaced") {
		t.Errorf("link of a rotated token: status %d, signed in %v; want 403\n%s", r.status, in, r.body)
	}
}

// TestSignInLinkRateLimited: asking for links counts against the sign-in
// attempts of the address, so the admin token cannot be guessed there
// faster than in the form.
func TestSignInLinkRateLimited(t *testing.T) {
	e := newEnv(t, false, func(o *console.Options) {
		o.LoginBurst = 2
		o.LoginInterval = time.Minute
	})
	for range 2 {
		if status, _ := e.askLink("wrong-"+testToken, ""); status != http.StatusUnauthorized {
			t.Fatalf("wrong token: status %d, want 401", status)
		}
	}
	if status, _ := e.askLink(testToken, ""); status != http.StatusTooManyRequests {
		t.Fatalf("right token over the limit: status %d, want 429", status)
	}
	e.clock.advance(time.Minute)
	e.mustLink("")
}

// TestSignInLinkPlainHTTPOnlyFromLoopback: a link opened over plain HTTP
// from elsewhere is refused and spent (its code crossed the network in
// clear text).
func TestSignInLinkPlainHTTPOnlyFromLoopback(t *testing.T) {
	e := newEnv(t, false, nil)
	l := e.mustLink("")
	req := httptest.NewRequest("GET", "http://coord.example:8080"+l.Path, nil)
	req.RemoteAddr = "198.51.100.7:4242"
	w := httptest.NewRecorder()
	e.con.ServeHTTP(w, req)
	if w.Code != http.StatusForbidden || strings.Contains(w.Header().Get("Set-Cookie"), "beam_console=") {
		t.Errorf("plain-HTTP link from 198.51.100.7: got %d, cookies %q; want 403 and no session", w.Code, w.Header().Values("Set-Cookie"))
	}
	if _, in := e.browser().useLink(l); in {
		t.Error("the link still signed in after it was opened over plain HTTP from elsewhere")
	}
}

// TestSignInLinksBounded: past the most links waiting, a new one
// replaces the one that expires first.
func TestSignInLinksBounded(t *testing.T) {
	e := newEnv(t, false, func(o *console.Options) { o.LoginBurst = 1000 })
	first := e.mustLink("")
	var last console.SignInLink
	for range 64 {
		e.clock.advance(time.Millisecond)
		last = e.mustLink("")
	}
	if _, in := e.browser().useLink(first); in {
		t.Error("the oldest of 65 links still signed in")
	}
	if _, in := e.browser().useLink(last); !in {
		t.Error("the newest of 65 links did not sign in")
	}
}

// TestSignInLinkAdminAuth: with Options.AdminAuth, a link asked for with
// a token it admits (an admin's ID token) signs that admin in, by name,
// and the session does not end when the admin token is rotated.
func TestSignInLinkAdminAuth(t *testing.T) {
	e := newEnv(t, false, func(o *console.Options) {
		o.AdminAuth = func(r *http.Request) (string, bool) {
			if r.Header.Get("Authorization") == "Bearer id-token-of-alice" {
				return "alice@example.com", true
			}
			return "", false
		}
	})
	if status, _ := e.askLink("id-token-of-mallory", ""); status != http.StatusUnauthorized {
		t.Errorf("a token AdminAuth refuses: status %d, want 401", status)
	}
	status, l := e.askLink("id-token-of-alice", "")
	if status != http.StatusOK {
		t.Fatalf("a token AdminAuth admits: status %d, want 200", status)
	}
	b := e.browser()
	if _, in := b.useLink(l); !in {
		t.Fatal("alice's link did not sign in")
	}
	if page := b.get(console.Path + "nodes").body; !strings.Contains(page, "alice@example.com") {
		t.Errorf("the nodes page does not name alice:\n%s", page)
	}
	if err := e.coord.SetAdminToken(t.Context(), "rotated-"+testToken); err != nil {
		t.Fatal(err)
	}
	if b.get(console.Path+"nodes").status != http.StatusOK {
		t.Error("alice's session ended with the admin token's rotation")
	}
	entries, err := e.coord.Audit(t.Context(), 20)
	if err != nil {
		t.Fatal(err)
	}
	var log strings.Builder
	for _, a := range entries {
		log.WriteString(a.Actor + " " + a.Action + " " + a.Target + "\n")
	}
	for _, want := range []string{"admin:alice@example.com console.link alice@example.com", "console:alice@example.com console.login alice@example.com"} {
		if !strings.Contains(log.String(), want) {
			t.Errorf("audit log lacks %q:\n%s", want, &log)
		}
	}
}
