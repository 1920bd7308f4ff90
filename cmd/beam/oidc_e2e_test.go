package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"

	"beam.dev/beam/beamtest/oidctest"
)

// Sign-in through an OpenID Connect provider, on the real binary: a real
// provider (zitadel's OP, in this test process) and headless Chromium.

var (
	oidcAlice = oidctest.User{Subject: "u-alice", Email: "alice@example.com", Name: "Alice", Password: "alice-pw", Groups: []string{"eng"}}
	oidcBob   = oidctest.User{Subject: "u-bob", Email: "bob@example.com", Name: "Bob", Password: "bob-pw"}
	oidcEve   = oidctest.User{Subject: "u-eve", Email: "eve@evil.test", Name: "Eve", Password: "eve-pw", Groups: []string{"eng"}}
)

// oidcCluster starts a provider and a coordinator that signs people in
// there, with extra coordinator flags.
func oidcCluster(t *testing.T, extra ...string) (*cluster, *oidctest.Provider) {
	t.Helper()
	p := oidctest.Start(t, []oidctest.User{oidcAlice, oidcBob, oidcEve}, []oidctest.Client{
		{ID: "beam", Secret: "beam-secret", RedirectURIs: []string{"http://127.0.0.1:*/oidc/callback"}},
	})
	secret := filepath.Join(t.TempDir(), "oidc.secret")
	if err := os.WriteFile(secret, []byte("beam-secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	args := append([]string{"--oidc-issuer", p.Issuer, "--oidc-client-id", "beam", "--oidc-client-secret-file", secret,
		"--oidc-scopes", "email,profile,groups", "--oidc-allowed-domains", "example.com"}, extra...)
	return newClusterTB(t, args...), p
}

// signInAtProvider fills in the test provider's sign-in form in the tab.
func signInAtProvider(t *testing.T, ctx context.Context, u oidctest.User) {
	t.Helper()
	browse(t, ctx, "sign in at the provider as "+u.Email,
		chromedp.WaitVisible(chromedp.ID("email")),
		chromedp.SendKeys(chromedp.ID("email"), u.Email),
		chromedp.SendKeys(chromedp.ID("password"), u.Password),
		chromedp.Click(chromedp.ID("submit")),
		chromedp.WaitVisible(chromedp.ID("title")),
	)
}

// confirmDevice presses the button of the page a device sign-in ends on
// ("Add this device as EMAIL") after checking it names want, and waits
// for the next page.
func confirmDevice(t *testing.T, ctx context.Context, want string) {
	t.Helper()
	if title := read(t, ctx, "confirmation page", chromedp.Text(chromedp.ID("title"))); title != "Add this device?" {
		body := read(t, ctx, "page", chromedp.Text("body"))
		t.Fatalf("after signing in: page %q, want the confirmation\n%s", title, body)
	}
	if b := read(t, ctx, "confirm button", chromedp.Text(chromedp.ID("confirm"))); b != "Add this device as "+want {
		t.Fatalf("confirm button says %q, want %q", b, "Add this device as "+want)
	}
	browse(t, ctx, "confirm the device", chromedp.Click(chromedp.ID("confirm")), chromedp.WaitNotPresent(chromedp.ID("confirm")), chromedp.WaitVisible(chromedp.ID("title")))
}

// TestOIDCDeviceSignIn: beam up without a key prints a URL; a person
// opens it, sees the device, signs in at the provider, confirms, and the
// device joins as their user, in the policy group their groups claim names,
// with the login's key lifetime. Someone outside the allowed domain is
// refused and their device keeps waiting.
func TestOIDCDeviceSignIn(t *testing.T) {
	c, _ := oidcCluster(t, "--oidc-key-lifetime", "720h", "--oidc-admins", "alice@example.com")
	admin := func(args ...string) string {
		return c.mustBeam(append([]string{"admin", "--coordinator", c.url}, args...)...)
	}
	admin("policy", "set", writeFile(t, c.dir, "policy.hujson", `{
		"groups": {"group:eng": []},
		"tagOwners": {"tag:srv": []},
		"acls": [{"action": "accept", "src": ["group:eng"], "dst": ["tag:srv:*"]}],
	}`))
	srv := c.device("srv")
	srv.mustUp("--authkey", strings.TrimSpace(admin("authkey", "create", "--tag", "tag:srv")))
	ctx := consoleBrowser(t)

	laptop := c.device("laptop")
	up, stdout, code := upAwaitingApproval(t, c, laptop, "60s")
	defer up.Process.Kill()
	browse(t, ctx, "open the sign-in URL", chromedp.Navigate(c.url+"/register/"+code), chromedp.WaitVisible(chromedp.ID("signin")))
	if host := read(t, ctx, "hostname", chromedp.Text(chromedp.ID("hostname"))); host != "laptop" {
		t.Fatalf("sign-in page shows device %q, want laptop", host)
	}
	browse(t, ctx, "follow the sign-in link", chromedp.Click(chromedp.ID("signin")))
	signInAtProvider(t, ctx, oidcAlice)
	confirmDevice(t, ctx, oidcAlice.Email)
	if title := read(t, ctx, "result", chromedp.Text(chromedp.ID("title"))); title != "Device added" {
		body := read(t, ctx, "page", chromedp.Text("body"))
		t.Fatalf("after signing in: page %q\n%s", title, body)
	}
	waited := make(chan error, 1)
	go func() { waited <- up.Wait() }()
	select {
	case err := <-waited:
		if err != nil || !strings.HasPrefix(stdout.String(), "laptop 100.64.") {
			t.Fatalf("beam up after the sign-in: %v, printed %q", err, stdout.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("beam up did not finish within 30 s of the sign-in")
	}
	st := laptop.status()
	if st.Self == nil || st.Self.User != "alice@example.com" {
		t.Fatalf("laptop joined as %+v, want user alice@example.com", st.Self)
	}
	if left := time.Until(st.Self.KeyExpiry); left < 719*time.Hour || left > 721*time.Hour {
		t.Errorf("laptop's key expires in %v, want about 720h (--oidc-key-lifetime)", left)
	}
	// group:eng (from the groups claim) may reach tag:srv: laptop sees srv.
	waitFor(t, 20*time.Second, "laptop sees srv through group:eng", func() bool { return peerByName(laptop.status(), "srv") != nil })

	// beam up --force-reauth signs in again; only the device's own user may.
	reauth := func(u oidctest.User) (string, chan error, *strings.Builder, *exec.Cmd) {
		t.Helper()
		cmd := exec.Command(c.bin, laptop.args("up", "--coordinator", c.url, "--force-reauth", "--timeout", "60s")...)
		stderr, _ := cmd.StderrPipe()
		out := new(strings.Builder)
		cmd.Stdout = out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill() })
		br := bufio.NewReader(stderr)
		re := regexp.MustCompile(`beam admin nodes approve (\S+)`)
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				t.Fatalf("beam up --force-reauth printed no sign-in URL: %v", err)
			}
			if m := re.FindStringSubmatch(line); m != nil {
				go io.Copy(io.Discard, br)
				done := make(chan error, 1)
				go func() { done <- cmd.Wait() }()
				browse(t, ctx, "sign in again", chromedp.Navigate(c.url+"/oidc/login/"+m[1]))
				signInAtProvider(t, ctx, u)
				confirmDevice(t, ctx, u.Email)
				return read(t, ctx, "result", chromedp.Text("body")), done, out, cmd
			}
		}
	}
	page, done, _, cmd := reauth(oidcBob)
	if !strings.Contains(page, "this device belongs to alice@example.com") {
		t.Fatalf("re-authentication as bob: page says %q", page)
	}
	cmd.Process.Kill()
	<-done
	page, done, out, _ := reauth(oidcAlice)
	if !strings.Contains(page, "Device added") {
		t.Fatalf("re-authentication as alice: page says %q", page)
	}
	select {
	case err := <-done:
		if err != nil || !strings.HasPrefix(out.String(), "laptop 100.64.") {
			t.Fatalf("beam up --force-reauth: %v, printed %q", err, out.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("beam up --force-reauth did not finish within 30 s of the sign-in")
	}
	if audit := admin("audit"); !regexp.MustCompile(`node:laptop\s+node\.reauth\s+laptop`).MatchString(audit) {
		t.Errorf("audit log lacks laptop's re-authentication:\n%s", audit)
	}
	if st := laptop.status(); st.Self == nil || st.Self.User != "alice@example.com" {
		t.Errorf("after re-authentication laptop is %+v, want alice's", st.Self)
	}
	// Removing the user removes their devices.
	waitFor(t, 20*time.Second, "srv sees laptop", func() bool { return peerByName(srv.status(), "laptop") != nil })
	if _, errOut, err := c.beam(nil, "admin", "--coordinator", c.url, "users", "delete", "alice@example.com"); err == nil || !strings.Contains(errOut, "owns 1 node") {
		t.Fatalf("deleting a user with a device: %v %s, want a refusal naming the node", err, errOut)
	}
	admin("users", "delete", "alice@example.com", "--with-nodes")
	if out := admin("nodes", "list"); strings.Contains(out, "laptop") {
		t.Fatalf("laptop still listed after its user was removed:\n%s", out)
	}
	waitFor(t, 20*time.Second, "srv drops laptop", func() bool { return peerByName(srv.status(), "laptop") == nil })

	// Outside the allowed domain: refused, and the device keeps waiting.
	evil := c.device("evilbox")
	up2, _, code2 := upAwaitingApproval(t, c, evil, "60s")
	defer up2.Process.Kill()
	browse(t, ctx, "open the outsider's sign-in URL", chromedp.Navigate(c.url+"/oidc/login/"+code2))
	signInAtProvider(t, ctx, oidcEve)
	if title := read(t, ctx, "result", chromedp.Text(chromedp.ID("title"))); title != "Not allowed" {
		t.Fatalf("outsider: page %q, want Not allowed", title)
	}
	if body := read(t, ctx, "page", chromedp.Text("body")); !strings.Contains(body, "eve@evil.test may not join devices to this network") {
		t.Fatalf("outsider: page says %q", body)
	}
	nodes := admin("nodes", "list")
	if strings.Contains(nodes, "evilbox") {
		t.Fatalf("the outsider's device joined:\n%s", nodes)
	}
	if st := evil.status(); st.AuthCode == "" {
		t.Errorf("the outsider's device stopped waiting: state %s", st.State)
	}

	// An admin signs in to the console with their login; an action there
	// is recorded in the audit log as theirs. Someone not listed is not let in.
	browse(t, ctx, "console sign-in page", chromedp.Navigate(c.url+"/console/login"), chromedp.Click(chromedp.ID("sso")))
	signInAtProvider(t, ctx, oidcEve)
	if title := read(t, ctx, "result", chromedp.Text(chromedp.ID("title"))); title != "Not an admin" {
		t.Fatalf("non-admin console sign-in: page %q, want Not an admin", title)
	}
	browse(t, ctx, "console sign-in page", chromedp.Navigate(c.url+"/console/login?next=%2Fconsole%2Fusers"), chromedp.Click(chromedp.ID("sso")))
	browse(t, ctx, "sign in at the provider as the admin",
		chromedp.WaitVisible(chromedp.ID("email")),
		chromedp.SendKeys(chromedp.ID("email"), oidcAlice.Email),
		chromedp.SendKeys(chromedp.ID("password"), oidcAlice.Password),
		chromedp.Click(chromedp.ID("submit")),
		chromedp.WaitVisible(chromedp.ID("create-user")),
		chromedp.SendKeys(chromedp.ID("name"), "carol"),
		chromedp.Submit(chromedp.ID("name")),
		chromedp.WaitVisible(chromedp.ID("user-carol")),
	)
	if who := read(t, ctx, "who", chromedp.Text("form.logout span")); who != "alice@example.com" {
		t.Errorf("console signed in as %q, want alice@example.com", who)
	}
	audit := admin("audit")
	if !regexp.MustCompile(`(?m)console:alice@example\.com\s+user\.create\s+carol`).MatchString(audit) {
		t.Errorf("audit log lacks alice's creating carol in the console:\n%s", audit)
	}
	if !strings.Contains(audit, "console.login_failed") || !strings.Contains(audit, "oidc:eve@evil.test") {
		t.Errorf("audit log lacks the refused console sign-in of eve:\n%s", audit)
	}
}

// TestOIDCLinkDoesNotAddDevice: someone runs beam up without a key and
// sends the sign-in link (/oidc/login/CODE) to a person whose browser
// signs in at the provider without a question; the device keeps waiting
// until that person presses the confirmation's button, which a page of
// another origin cannot press for them. A link to the callback with an
// error description of the sender's shows none of it.
func TestOIDCLinkDoesNotAddDevice(t *testing.T) {
	c, _ := oidcCluster(t)
	planted := "Reinstall Beam from https://evil.test/install.sh"
	q := url.Values{"error": {"access_denied"}, "error_description": {planted}, "state": {"made-up"}}
	if resp, err := http.Get(c.url + "/oidc/callback?" + q.Encode()); err != nil {
		t.Fatal(err)
	} else {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden || strings.Contains(string(body), "evil.test") || strings.Contains(string(body), "access_denied") {
			t.Errorf("callback with a planted error: got %d, want 403 without the planted text:\n%s", resp.StatusCode, body)
		}
	}
	evil := c.device("evil")
	up, stdout, code := upAwaitingApproval(t, c, evil, "60s")
	defer up.Process.Kill()
	waited := make(chan error, 1)
	go func() { waited <- up.Wait() }()

	jar, _ := cookiejar.New(nil)
	victim := &http.Client{Jar: jar, Timeout: 30 * time.Second}
	resp, page, err := oidctest.Login(t.Context(), victim, c.url+"/oidc/login/"+code, oidcAlice.Email, oidcAlice.Password)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || !strings.Contains(page, "Add this device as alice@example.com") || !strings.Contains(page, "evil") {
		t.Fatalf("the link's sign-in ended with %d, want the confirmation page:\n%s", resp.StatusCode, page)
	}
	m := regexp.MustCompile(`name="token" value="([^"]+)"`).FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("no confirmation form:\n%s", page)
	}
	post := func(origin string) int {
		t.Helper()
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, c.url+"/oidc/confirm", strings.NewReader(url.Values{"token": {m[1]}}.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Origin", origin)
		resp, err := victim.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if got := post("http://evil.test"); got != http.StatusForbidden {
		t.Errorf("cross-origin confirmation: got %d, want 403", got)
	}
	select {
	case err := <-waited:
		t.Fatalf("beam up finished (%v, printed %q) without a confirmation", err, stdout.String())
	case <-time.After(2 * time.Second):
	}
	if st := evil.status(); st.AuthCode == "" || (st.Self != nil && st.Self.User != "") {
		t.Fatalf("after the link's sign-in the device is %s as %+v, want it still waiting", st.State, st.Self)
	}
	if got := post(c.url); got != http.StatusOK {
		t.Fatalf("same-origin confirmation: got %d, want 200", got)
	}
	select {
	case err := <-waited:
		if err != nil {
			t.Fatalf("beam up after the confirmation: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("beam up did not finish within 30 s of the confirmation")
	}
	if st := evil.status(); st.Self == nil || st.Self.User != "alice@example.com" {
		t.Fatalf("after the confirmation the device is %+v, want alice's", st.Self)
	}
}

// TestOIDCSignInFlood: unauthenticated starts of sign-ins from several
// addresses, past both bounds on the sign-ins in flight, are never
// refused and lock nobody out: an admin at a fresh address then signs
// in to the console.
func TestOIDCSignInFlood(t *testing.T) {
	c, _ := oidcCluster(t, "--oidc-admins", "alice@example.com", "--oidc-max-sign-ins", "16", "--oidc-max-sign-ins-per-address", "4")
	from := func(ip string) *http.Client {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
		jar, _ := cookiejar.New(nil)
		return &http.Client{Jar: jar, Timeout: 30 * time.Second, Transport: &http.Transport{DialContext: d.DialContext}}
	}
	for i := range 8 {
		cl := from(fmt.Sprintf("127.0.2.%d", i+1))
		cl.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
		for j := range 8 {
			resp, err := cl.Get(c.url + "/oidc/admin?next=/console/")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusFound {
				t.Fatalf("start %d from address %d: got %d, want 302 to the provider", j, i, resp.StatusCode)
			}
		}
	}
	admin := from("127.0.3.9")
	resp, body, err := oidctest.Login(t.Context(), admin, c.url+"/oidc/admin?next=/console/", oidcAlice.Email, oidcAlice.Password)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, "Signed in.") {
		t.Fatalf("admin sign-in after the flood ended at %s with %d:\n%.600s", resp.Request.URL, resp.StatusCode, body)
	}
	resp, err = admin.Get(c.url + "/console/")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), "alice@example.com") {
		t.Fatalf("the console after the admin's sign-in: %d at %s:\n%.600s", resp.StatusCode, resp.Request.URL, b)
	}
}

// TestOIDCRouteInBrowser: a route exposed with --oidc sends a browser
// through the provider's sign-in and back to the page it asked for; the
// app gets the person in X-Beam-User and X-Beam-Email (a client's own
// X-Beam-User never gets through); API clients get 401.
func TestOIDCRouteInBrowser(t *testing.T) {
	p := oidctest.Start(t, []oidctest.User{oidcAlice, oidcEve}, []oidctest.Client{
		{ID: "beam", Secret: "beam-secret", RedirectURIs: []string{"http://127.0.0.1:*/oidc/callback", "http://*/.beam/oidc/callback"}},
	})
	secret := writeFile(t, t.TempDir(), "oidc.secret", "beam-secret\n")
	c, httpPort := startDevServerWith(t, 0, "--oidc-issuer", p.Issuer, "--oidc-client-id", "beam", "--oidc-client-secret-file", secret,
		"--oidc-scopes", "email,profile,groups", "--oidc-allowed-domains", "example.com")
	alpha := c.device("alpha")
	alpha.mustUp()
	app := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "app saw %s user=%q email=%q", r.URL.Path, r.Header.Get("X-Beam-User"), r.Header.Get("X-Beam-Email"))
	})}
	aln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go app.Serve(aln)
	t.Cleanup(func() { app.Close() })
	appPort := aln.Addr().(*net.TCPAddr).Port
	u := strings.TrimSpace(c.mustBeam(alpha.args("expose", strconv.Itoa(appPort), "--oidc", "group:eng", "--bg")...))
	if want := fmt.Sprintf("http://alpha.localhost:%d", httpPort); u != want {
		t.Fatalf("beam expose printed %q, want %q", u, want)
	}
	// An API client (no text/html) gets 401, forged identity or not.
	code, err := curl(t, "-o", "/dev/null", "-w", "%{http_code}", "-H", "X-Beam-User: alice@example.com", u+"/api")
	if err != nil || code != "401" {
		t.Fatalf("API client: got %q, %v; want 401", code, err)
	}

	// The edge routes any spelling of the host; the sign-in knows one
	// callback per host and refuses a port the edge does not listen on.
	noRedirect := &http.Client{Timeout: 30 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	for _, tc := range []struct {
		host     string
		code     int
		callback string
	}{
		{fmt.Sprintf("ALPHA.localhost.:%d", httpPort), http.StatusFound, u + "/.beam/oidc/callback"},
		{fmt.Sprintf("alpha.localhost:%d", httpPort+1), http.StatusBadRequest, ""},
	} {
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d/", httpPort), nil)
		req.Host = tc.host
		req.Header.Set("Accept", "text/html")
		resp, err := noRedirect.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.code {
			t.Errorf("Host %s: got %d, want %d", tc.host, resp.StatusCode, tc.code)
		} else if loc, _ := url.Parse(resp.Header.Get("Location")); tc.callback != "" && loc.Query().Get("redirect_uri") != tc.callback {
			t.Errorf("Host %s: callback %q, want %q", tc.host, loc.Query().Get("redirect_uri"), tc.callback)
		}
	}

	ctx := consoleBrowser(t)
	// Every request of the browser carries a forged X-Beam-User.
	if _, err := chromedp.Call(ctx, network.Enable, network.EnableParams{}); err != nil {
		t.Fatal(err)
	}
	if _, err := chromedp.Call(ctx, network.SetExtraHTTPHeaders, network.SetExtraHTTPHeadersParams{Headers: network.Headers{"X-Beam-User": "mallory"}}); err != nil {
		t.Fatal(err)
	}
	browse(t, ctx, "open the route", chromedp.Navigate(u+"/hello"))
	browse(t, ctx, "sign in at the provider as "+oidcAlice.Email,
		chromedp.WaitVisible(chromedp.ID("email")),
		chromedp.SendKeys(chromedp.ID("email"), oidcAlice.Email),
		chromedp.SendKeys(chromedp.ID("password"), oidcAlice.Password),
		chromedp.Click(chromedp.ID("submit")),
		chromedp.WaitReady("body"),
	)
	var body string
	waitFor(t, 20*time.Second, "the app's page after the sign-in", func() bool {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		b, err := chromedp.Run(rctx, chromedp.Text("body"))
		if err != nil {
			return false // the page is between the redirects' loads: its context is gone
		}
		body = b
		return strings.Contains(body, "app saw")
	})
	if want := `app saw /hello user="alice@example.com" email="alice@example.com"`; strings.TrimSpace(body) != want {
		t.Fatalf("after sign-in the app saw %q, want %q", body, want)
	}
	if loc := read(t, ctx, "location", chromedp.Location()); loc != u+"/hello" {
		t.Errorf("the browser ended at %s, want %s/hello", loc, u)
	}
}

// TestOIDCAdminAPI: beam admin works with an admin's ID token from the
// provider in place of the admin token, and the audit log names them;
// another person's token, or a forged or expired one, is refused.
func TestOIDCAdminAPI(t *testing.T) {
	c, p := oidcCluster(t, "--oidc-admins", "alice@example.com")
	now := time.Now()
	token := func(email string, exp time.Time, forge bool) string {
		claims := map[string]any{"iss": p.Issuer, "sub": "u-" + email, "aud": []string{"beam"}, "exp": exp.Unix(),
			"iat": now.Unix(), "email": email, "email_verified": true}
		if forge {
			return p.SignForged(claims)
		}
		return p.Sign(claims)
	}
	asAdmin := func(tok string, args ...string) (string, string, error) {
		return c.beam([]string{"BEAM_ADMIN_TOKEN=" + tok}, append([]string{"admin", "--coordinator", c.url}, args...)...)
	}
	if out, errOut, err := asAdmin(token("alice@example.com", now.Add(5*time.Minute), false), "users", "create", "carol"); err != nil {
		t.Fatalf("beam admin with alice's ID token: %v\n%s%s", err, out, errOut)
	}
	for name, tok := range map[string]string{
		"not an admin": token("bob@example.com", now.Add(5*time.Minute), false),
		"forged":       token("alice@example.com", now.Add(5*time.Minute), true),
		"expired":      token("alice@example.com", now.Add(-time.Minute), false),
	} {
		if _, _, err := asAdmin(tok, "users", "create", "mallory-"+strings.Fields(name)[0]); err == nil {
			t.Errorf("%s token: beam admin succeeded", name)
		}
	}
	// beam admin console takes alice's ID token too: its link signs her in.
	out, errOut, err := asAdmin(token("alice@example.com", now.Add(5*time.Minute), false), "console")
	if link := strings.TrimSpace(out); err != nil || !signInLinkRE(c.url).MatchString(link) {
		t.Errorf("beam admin console with alice's ID token: %v, printed %q\n%s", err, out, errOut)
	} else if status, session := openWithoutCookies(t, link); status != http.StatusOK || !session {
		t.Errorf("alice's sign-in link: status %d, session %v; want 200 and a session", status, session)
	}
	if out, _, err := asAdmin(token("bob@example.com", now.Add(5*time.Minute), false), "console"); err == nil || strings.TrimSpace(out) != "" {
		t.Errorf("beam admin console with bob's ID token: %v, printed %q; want refused", err, out)
	}
	audit := c.mustBeam("admin", "--coordinator", c.url, "audit")
	if !regexp.MustCompile(`(?m)admin:alice@example\.com\s+console\.link\s+alice@example\.com`).MatchString(audit) {
		t.Errorf("audit log lacks alice's console.link:\n%s", audit)
	}
	if !regexp.MustCompile(`(?m)admin:alice@example\.com\s+user\.create\s+carol`).MatchString(audit) {
		t.Errorf("audit log lacks alice's user.create:\n%s", audit)
	}
	if strings.Contains(audit, "mallory") {
		t.Errorf("a refused token created a user:\n%s", audit)
	}
}
