package main

import (
	"encoding/json"
	"html"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// consoleClient is a cookie-keeping HTTP client of a coordinator's web
// console that does not follow redirects and sends what a browser sends
// on a same-origin form.
type consoleClient struct {
	t    *testing.T
	base string
	hc   *http.Client
}

func newConsoleClient(t *testing.T, base string) *consoleClient {
	jar, _ := cookiejar.New(nil)
	return &consoleClient{t: t, base: base, hc: &http.Client{Jar: jar, Timeout: 30 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

// do sends a GET (form nil) or a form POST and returns the status, the
// redirect target and the body.
func (cc *consoleClient) do(path string, form url.Values) (int, string, string) {
	cc.t.Helper()
	method, body := http.MethodGet, io.Reader(nil)
	if form != nil {
		method, body = http.MethodPost, strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, cc.base+path, body)
	if err != nil {
		cc.t.Fatal(err)
	}
	req.Header.Set("Sec-Fetch-Site", "same-origin")
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Origin", cc.base)
	}
	resp, err := cc.hc.Do(req)
	if err != nil {
		cc.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get("Location"), string(b)
}

var consoleCSRF = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

func (cc *consoleClient) csrf(page string) string {
	cc.t.Helper()
	m := consoleCSRF.FindStringSubmatch(page)
	if m == nil {
		cc.t.Fatalf("no CSRF token in page:\n%s", page)
	}
	return html.UnescapeString(m[1])
}

// login signs in with token; it returns the status of the form's post.
func (cc *consoleClient) login(token string) int {
	cc.t.Helper()
	_, _, form := cc.do("/console/login", nil)
	status, _, _ := cc.do("/console/login", url.Values{"csrf": {cc.csrf(form)}, "token": {token}, "next": {"/console/keys"}})
	return status
}

// apiStatus is the status of GET /api/v1/authkeys with token.
func apiStatus(t *testing.T, base, token string) int {
	req, _ := http.NewRequest(http.MethodGet, base+"/api/v1/authkeys", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestConsoleSessionEndsOnTokenRotation signs in to the console of a
// real beam coordinator with the admin token, rotates the token as the
// README says (a new admin.token, then SIGHUP) and checks that the
// console session signed in with the old token ended with it: its pages
// send it to sign in and its form to create a reusable auth key is
// refused, as the old token is on the API. Before, the old cookie kept
// working for its whole lifetime. The sign-in itself comes after 1,100
// anonymous loads of the sign-in form, made after the admin loaded it,
// which used to fill the console's sessions and expire the admin's form.
func TestConsoleSessionEndsOnTokenRotation(t *testing.T) {
	c := newCluster(t)
	cc := newConsoleClient(t, c.url)
	_, _, form := cc.do("/console/login", nil)
	for i := range 1100 {
		resp, err := http.Get(c.url + "/console/login")
		if err != nil {
			t.Fatalf("anonymous GET %d: %v", i, err)
		}
		resp.Body.Close()
	}
	if s, _, body := cc.do("/console/login", url.Values{"csrf": {cc.csrf(form)}, "token": {c.token}, "next": {"/console/keys"}}); s != http.StatusSeeOther {
		t.Fatalf("sign-in with the admin token after 1,100 anonymous form loads: status %d, want 303\n%s", s, body)
	}
	status, _, keys := cc.do("/console/keys", nil)
	if status != http.StatusOK {
		t.Fatalf("keys page signed in: status %d", status)
	}
	csrf := cc.csrf(keys)

	newToken := "rotated-" + strings.Repeat("x", 40)
	if err := os.WriteFile(filepath.Join(c.dir, "coord", "admin.token"), []byte(newToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := c.coord.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 15*time.Second, "the old admin token refused by the API", func() bool {
		return apiStatus(t, c.url, c.token) == http.StatusUnauthorized
	})

	if status, loc, _ := cc.do("/console/keys", nil); status != http.StatusSeeOther || !strings.HasPrefix(loc, "/console/login") {
		t.Errorf("keys page with the old session: status %d to %q, want 303 to sign in", status, loc)
	}
	status, _, body := cc.do("/console/keys", url.Values{"csrf": {csrf}, "reusable": {"on"}, "expiry": {"1h"}})
	if status != http.StatusForbidden || strings.Contains(body, "beamkey-") {
		t.Errorf("creating an auth key with the old session: status %d, want 403\n%s", status, body)
	}
	var keyList []json.RawMessage
	out := c.mustBeam("admin", "authkey", "list", "--json", "--coordinator", c.url, "--token-file", writeTokenFile(t, newToken))
	if err := json.Unmarshal([]byte(out), &keyList); err != nil || len(keyList) != 0 {
		t.Errorf("auth keys after the old session's form: %s (%v), want none", out, err)
	}

	if s := cc.login(c.token); s != http.StatusUnauthorized {
		t.Errorf("sign-in with the old token: status %d, want 401", s)
	}
	if s := cc.login(newToken); s != http.StatusSeeOther {
		t.Fatalf("sign-in with the new token: status %d, want 303", s)
	}
	if status, _, _ := cc.do("/console/keys", nil); status != http.StatusOK {
		t.Errorf("keys page with the new token's session: status %d, want 200", status)
	}
}

// writeTokenFile writes token to a file of its own and returns its path.
func writeTokenFile(t *testing.T, token string) string {
	p := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(p, []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
