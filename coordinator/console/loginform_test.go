package console_test

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"beam.dev/beam/coordinator/console"
)

// TestLoginFormFloodKeepsAdminIn: anonymous loads of the sign-in form
// (here 3,000, past the 1,024 sessions the console keeps) leave nothing
// on the server, so the form an admin loaded before the flood still
// signs in. Before, each load started a session, the flood evicted the
// admin's, and the sign-in got 403 "form expired".
func TestLoginFormFloodKeepsAdminIn(t *testing.T) {
	e := newEnv(t, false, nil)
	admin := e.browser()
	form := admin.get(console.Path + "login")
	token := csrf(t, form.body)
	anon := e.browser()
	anon.c.Jar = nil // a new form every time, as a script sends
	for i := range 3000 {
		if r := anon.get(console.Path + "login"); r.status != http.StatusOK {
			t.Fatalf("anonymous GET %d: status %d", i, r.status)
		}
	}
	r := admin.post(console.Path+"login", url.Values{"csrf": {token}, "token": {testToken}, "next": {console.Path + "keys"}}, nil)
	if r.status != http.StatusSeeOther || r.location != console.Path+"keys" {
		t.Fatalf("admin's sign-in after the flood: got %d %q, want 303 to keys\n%s", r.status, r.location, r.body)
	}
}

// TestLoginFormToken: the sign-in form's token is good only with the
// pre-login cookie it was made for, and only for a while.
func TestLoginFormToken(t *testing.T) {
	e := newEnv(t, false, func(o *console.Options) { o.LoginBurst = 100 })
	tests := []struct {
		name string
		// post signs in with b's form token after whatever it does.
		post func(t *testing.T, b *browser, token string) response
		want int
	}{
		{"its own cookie", func(t *testing.T, b *browser, token string) response {
			return b.post(console.Path+"login", url.Values{"csrf": {token}, "token": {testToken}}, nil)
		}, http.StatusSeeOther},
		{"another browser's cookie", func(t *testing.T, b *browser, token string) response {
			other := e.browser()
			other.get(console.Path + "login")
			return other.post(console.Path+"login", url.Values{"csrf": {token}, "token": {testToken}}, nil)
		}, http.StatusForbidden},
		{"no cookie", func(t *testing.T, b *browser, token string) response {
			other := e.browser()
			return other.post(console.Path+"login", url.Values{"csrf": {token}, "token": {testToken}}, nil)
		}, http.StatusForbidden},
		{"altered token", func(t *testing.T, b *browser, token string) response {
			bad := []byte(token)
			bad[len(bad)-2] ^= 1
			return b.post(console.Path+"login", url.Values{"csrf": {string(bad)}, "token": {testToken}}, nil)
		}, http.StatusForbidden},
		{"expired form", func(t *testing.T, b *browser, token string) response {
			e.clock.advance(16 * time.Minute)
			return b.post(console.Path+"login", url.Values{"csrf": {token}, "token": {testToken}}, nil)
		}, http.StatusForbidden},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := e.browser()
			token := csrf(t, b.get(console.Path+"login").body)
			r := tt.post(t, b, token)
			if r.status != tt.want {
				t.Fatalf("got %d, want %d\n%s", r.status, tt.want, r.body)
			}
			if tt.want == http.StatusForbidden && !strings.Contains(r.body, "expired") {
				t.Errorf("refused form without a fresh one:\n%s", r.body)
			}
		})
	}
}

// TestSessionsEndOnTokenRotation: a session signed in with the admin
// token ends when the token is replaced; one signed in otherwise (an
// identity provider) does not.
func TestSessionsEndOnTokenRotation(t *testing.T) {
	e := newEnv(t, false, nil)
	b := e.browser()
	b.mustLogin()
	if r := b.get(console.Path + "keys"); r.status != http.StatusOK {
		t.Fatalf("keys signed in: got %d", r.status)
	}
	// A sign-in through an identity provider ends in SignInWith.
	sso := e.browser()
	req := httptest.NewRequest("GET", e.srv.URL+"/sso/callback", nil)
	req.RemoteAddr = "127.0.0.1:4242"
	w := httptest.NewRecorder()
	e.con.SignInWith(w, req, "alice", "oidc", console.Path+"keys")
	u, _ := url.Parse(e.srv.URL)
	sso.jar.SetCookies(u, w.Result().Cookies())
	if r := sso.get(console.Path + "keys"); r.status != http.StatusOK {
		t.Fatalf("keys signed in through the identity provider: got %d", r.status)
	}
	if err := e.coord.SetAdminToken(t.Context(), testToken+"-rotated"); err != nil {
		t.Fatal(err)
	}
	if r := b.get(console.Path + "keys"); r.status != http.StatusSeeOther {
		t.Fatalf("keys after the token was rotated: got %d, want 303 to sign in", r.status)
	}
	if r := sso.get(console.Path + "keys"); r.status != http.StatusOK {
		t.Errorf("the identity provider's session after the rotation: got %d, want 200", r.status)
	}
	if r := b.login(testToken); r.status != http.StatusUnauthorized {
		t.Fatalf("sign-in with the old token: got %d, want 401", r.status)
	}
	if r := b.login(testToken + "-rotated"); r.status != http.StatusSeeOther {
		t.Fatalf("sign-in with the new token: got %d, want 303", r.status)
	}
	if r := b.get(console.Path + "keys"); r.status != http.StatusOK {
		t.Fatalf("keys with the new token: got %d, want 200", r.status)
	}
}
