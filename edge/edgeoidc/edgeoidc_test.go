package edgeoidc_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"strings"
	"testing"
	"time"

	"beam.dev/beam/beamtest/oidctest"
	"beam.dev/beam/edge/edgeoidc"
)

var (
	alice = oidctest.User{Subject: "u-alice", Email: "alice@example.com", Name: "Alice", Password: "pw-a", Groups: []string{"eng"}}
	eve   = oidctest.User{Subject: "u-eve", Email: "eve@evil.test", Name: "Eve", Password: "pw-e"}
	// dave's provider did not verify his address, but he is in group eng.
	dave = oidctest.User{Subject: "u-dave", Email: "dave@example.com", Name: "Dave", Password: "pw-d", Groups: []string{"eng"}, Unverified: true}
)

// route serves what a device behind a route would see: the identity and
// the cookies that got through.
func route(t *testing.T, s *edgeoidc.SignIn, rules []string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, ok := s.Authenticate(w, r, rules)
		if !ok {
			return
		}
		fmt.Fprintf(w, "app: user=%s email=%s path=%s cookie=%q", id.User, id.Email, r.URL.RequestURI(), r.Header.Get("Cookie"))
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return "http://" + ln.Addr().String()
}

func newSignIn(t *testing.T) *edgeoidc.SignIn {
	p := oidctest.Start(t, []oidctest.User{alice, eve, dave}, []oidctest.Client{{ID: "edge", Secret: "s", RedirectURIs: []string{"http://*" + edgeoidc.CallbackPath}}})
	s, err := edgeoidc.New(edgeoidc.Options{Issuer: p.Issuer, ClientID: "edge", ClientSecret: "s", Scopes: []string{"email", "profile", "groups"}})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func browser() *http.Client {
	jar, _ := cookiejar.New(nil)
	return &http.Client{Jar: jar, Timeout: 30 * time.Second}
}

func get(t *testing.T, c *http.Client, u, accept string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", u, nil)
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestBrowserSignsInAndComesBack(t *testing.T) {
	s := newSignIn(t)
	base := route(t, s, []string{"email:*@example.com"})
	c := browser()
	c.Jar.SetCookies(mustURL(t, base), []*http.Cookie{{Name: "app_pref", Value: "dark"}})
	// A sign-in started and abandoned leaves its state cookie behind.
	if code, body := get(t, c, base+"/abandoned", "text/html"); code != 200 || !strings.Contains(body, `action="/login"`) {
		t.Fatalf("starting a sign-in: %d %q, want the provider's form", code, body)
	}
	resp, body, err := oidctest.Login(t.Context(), c, base+"/reports?q=1", alice.Email, alice.Password)
	if err != nil {
		t.Fatal(err)
	}
	want := `app: user=alice@example.com email=alice@example.com path=/reports?q=1 cookie="app_pref=dark"`
	if resp.StatusCode != 200 || body != want {
		t.Fatalf("after sign-in: %d %q, want 200 %q", resp.StatusCode, body, want)
	}
	// The session holds: no second trip to the provider.
	if code, body := get(t, c, base+"/other", "text/html"); code != 200 || !strings.Contains(body, "user=alice@example.com") {
		t.Fatalf("second request: %d %q", code, body)
	}
	// The same cookie is worthless on another route host.
	other := route(t, s, []string{"email:*@example.com"})
	var session *http.Cookie
	for _, ck := range c.Jar.Cookies(mustURL(t, base)) {
		if ck.Name == "beam_edge_session" {
			session = ck
		}
	}
	if session == nil {
		t.Fatal("no session cookie")
	}
	req, _ := http.NewRequest("GET", other+"/", nil)
	req.AddCookie(session)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("session cookie on another host: got %d, want 401", resp.StatusCode)
	}
}

func TestAPIClientGets401(t *testing.T) {
	s := newSignIn(t)
	base := route(t, s, []string{"group:eng"})
	for _, accept := range []string{"", "application/json", "*/*"} {
		if code, body := get(t, browser(), base+"/api", accept); code != http.StatusUnauthorized || strings.Contains(body, "app:") {
			t.Errorf("Accept %q: got %d %q, want 401", accept, code, body)
		}
	}
}

func TestOutsiderGets403(t *testing.T) {
	s := newSignIn(t)
	base := route(t, s, []string{"email:*@example.com", "group:eng"})
	resp, body, err := oidctest.Login(t.Context(), browser(), base+"/", eve.Email, eve.Password)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "eve@evil.test, who may not use this service") {
		t.Fatalf("outsider: %d %q", resp.StatusCode, body)
	}
}

func TestCallbackRedirectStaysOnHost(t *testing.T) {
	s := newSignIn(t)
	base := route(t, s, []string{"group:eng"})
	c := browser()
	resp, body, err := oidctest.Login(t.Context(), c, base+"//evil.test/x", alice.Email, alice.Password)
	if err != nil {
		t.Fatal(err)
	}
	if resp.Request.URL.Host != mustURL(t, base).Host {
		t.Fatalf("sign-in ended at %s, want the route host: %q", resp.Request.URL, body)
	}
}

func mustURL(t *testing.T, s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func TestUnverifiedEmailNotPassedOn(t *testing.T) {
	s := newSignIn(t)
	base := route(t, s, []string{"email:*@example.com", "group:eng"})
	resp, body, err := oidctest.Login(t.Context(), browser(), base+"/", dave.Email, dave.Password)
	if err != nil {
		t.Fatal(err)
	}
	// Admitted by group:eng, not by the unverified email; named by subject.
	if want := `app: user=u-dave email= path=/ cookie=""`; resp.StatusCode != 200 || body != want {
		t.Fatalf("got %d %q, want 200 %q", resp.StatusCode, body, want)
	}
}

// browserAt is a browser whose connections come from the loopback
// address src and reach NAME.localhost at the loopback address.
func browserAt(src string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	c := browser()
	c.Transport = &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		if h, port, err := net.SplitHostPort(addr); err == nil && strings.HasSuffix(h, ".localhost") {
			addr = net.JoinHostPort("127.0.0.1", port)
		}
		return d.DialContext(ctx, network, addr)
	}}
	return c
}

// start begins a sign-in at host (a Host header for the route at base)
// in c and returns the status and the provider URL it was sent to.
func start(t *testing.T, c *http.Client, base, host string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", base+"/", nil)
	req.Host = host
	req.Header.Set("Accept", "text/html")
	stop := c.CheckRedirect
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	defer func() { c.CheckRedirect = stop }()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode, resp.Header.Get("Location")
}

// finish signs in as alice from authURL in c and returns where it ended.
func finish(t *testing.T, c *http.Client, authURL string) (int, string) {
	t.Helper()
	resp, body, err := oidctest.Login(t.Context(), c, authURL, alice.Email, alice.Password)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, body
}

// TestHostSpellings: the edge routes a host however it is spelt (case,
// trailing dot, any port); the sign-in sends the provider the host's one
// canonical callback, and refuses a port the edge does not listen on, so
// spellings cannot mint relying parties.
func TestHostSpellings(t *testing.T) {
	s := newSignIn(t)
	base := route(t, s, []string{"email:*@example.com"})
	port := mustURL(t, base).Port()
	other := "1"
	if port == other {
		other = "2"
	}
	for _, tc := range []struct {
		host     string
		code     int
		callback string
	}{
		{"alpha.localhost:" + port, http.StatusFound, "http://alpha.localhost:" + port + edgeoidc.CallbackPath},
		{"ALPHA.LocalHost.:" + port, http.StatusFound, "http://alpha.localhost:" + port + edgeoidc.CallbackPath},
		{"alpha.localhost", http.StatusFound, "http://alpha.localhost" + edgeoidc.CallbackPath}, // behind a port mapping
		{"alpha.localhost:" + other, http.StatusBadRequest, ""},
		{"alpha.localhost:1" + port, http.StatusBadRequest, ""},
	} {
		code, loc := start(t, browser(), base, tc.host)
		if code != tc.code {
			t.Errorf("Host %s: got %d, want %d", tc.host, code, tc.code)
			continue
		}
		if tc.callback == "" {
			continue
		}
		if got := mustURL(t, loc).Query().Get("redirect_uri"); got != tc.callback {
			t.Errorf("Host %s: callback %q, want %q", tc.host, got, tc.callback)
		}
	}
}

// TestSignInBoundsAcrossHosts: the bound on one address's sign-ins in
// flight holds across route hosts, not per host.
func TestSignInBoundsAcrossHosts(t *testing.T) {
	p := oidctest.Start(t, []oidctest.User{alice}, []oidctest.Client{{ID: "edge", Secret: "s", RedirectURIs: []string{"http://*" + edgeoidc.CallbackPath}}})
	s, err := edgeoidc.New(edgeoidc.Options{Issuer: p.Issuer, ClientID: "edge", ClientSecret: "s", MaxSignInsPerAddress: 2})
	if err != nil {
		t.Fatal(err)
	}
	base := route(t, s, []string{"email:*@example.com"})
	port := mustURL(t, base).Port()
	c := browserAt("127.0.0.1")
	var started []string
	for _, h := range []string{"a", "b", "c"} {
		code, loc := start(t, c, base, h+".localhost:"+port)
		if code != http.StatusFound {
			t.Fatalf("start at %s: got %d", h, code)
		}
		started = append(started, loc)
	}
	if code, body := finish(t, c, started[0]); code != http.StatusForbidden || !strings.Contains(body, "unknown, used or expired") {
		t.Errorf("the first of 3 sign-ins at 3 hosts (bound 2 per address): got %d %q, want 403 unknown", code, body)
	}
	if code, body := finish(t, c, started[2]); code != http.StatusOK || !strings.Contains(body, "user=alice@example.com") {
		t.Errorf("the last of 3 sign-ins: got %d %q, want the app", code, body)
	}
}

// TestHostFloodKeepsSignIns: sign-ins started at more route hosts than
// the edge keeps relying parties for do not undo a sign-in in flight.
func TestHostFloodKeepsSignIns(t *testing.T) {
	edgeoidc.SetMaxHostsForTest(t, 4)
	s := newSignIn(t)
	base := route(t, s, []string{"email:*@example.com"})
	port := mustURL(t, base).Port()
	c := browserAt("127.0.0.1")
	code, authURL := start(t, c, base, "alpha.localhost:"+port)
	if code != http.StatusFound {
		t.Fatalf("start: got %d", code)
	}
	flood := browserAt("127.0.0.2")
	for i := range 12 {
		if code, _ := start(t, flood, base, fmt.Sprintf("h%d.localhost:%s", i, port)); code != http.StatusFound {
			t.Fatalf("flood start %d: got %d", i, code)
		}
	}
	if code, body := finish(t, c, authURL); code != http.StatusOK || !strings.Contains(body, "user=alice@example.com") {
		t.Fatalf("the sign-in started before the flood: got %d %q, want the app", code, body)
	}
}
