package console_test

import (
	"context"
	"crypto/tls"
	"html"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"beam.dev/beam/coordinator"
	"beam.dev/beam/coordinator/console"
	"beam.dev/beam/coordinator/sqlstore"
	"beam.dev/beam/types/key"
)

const testToken = "console-test-admin-token-0123456789"

// clock is a settable clock for sessions and limits.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// env is a coordinator with its console behind one test server, as beam
// coordinator serves them.
type env struct {
	t     *testing.T
	coord *coordinator.Server
	srv   *httptest.Server
	clock *clock
	con   *console.Console
}

func newEnv(t *testing.T, tlsServer bool, mod func(*console.Options)) *env {
	t.Helper()
	st, err := sqlstore.Open(t.Context(), filepath.Join(t.TempDir(), "coordinator.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	coord, err := coordinator.New(coordinator.Options{Store: st, PrivateKey: key.NewMachine(), AdminToken: testToken, Approver: console.Approver{}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { coord.Close() })
	clk := &clock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	opts := console.Options{Coordinator: coord, Now: clk.now}
	if mod != nil {
		mod(&opts)
	}
	con, err := console.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle(console.Path, con)
	mux.Handle("/", coord)
	srv := httptest.NewUnstartedServer(mux)
	if tlsServer {
		srv.StartTLS()
	} else {
		srv.Start()
	}
	t.Cleanup(srv.Close)
	return &env{t: t, coord: coord, srv: srv, clock: clk, con: con}
}

// browser is a client with a cookie jar that does not follow redirects,
// sending the headers a browser sends on a same-origin form post.
type browser struct {
	e   *env
	c   *http.Client
	jar *cookiejar.Jar
}

func (e *env) browser() *browser {
	jar, _ := cookiejar.New(nil)
	c := new(http.Client)
	*c = *e.srv.Client() // its transport trusts the test server's certificate
	c.Jar = jar
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &browser{e: e, c: c, jar: jar}
}

// response is a finished request.
type response struct {
	status   int
	location string
	body     string
	cookies  []*http.Cookie
}

func (b *browser) do(req *http.Request) response {
	b.e.t.Helper()
	resp, err := b.c.Do(req)
	if err != nil {
		b.e.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return response{status: resp.StatusCode, location: resp.Header.Get("Location"), body: string(body), cookies: resp.Cookies()}
}

func (b *browser) get(path string) response {
	b.e.t.Helper()
	req, _ := http.NewRequest("GET", b.e.srv.URL+path, nil)
	req.Header.Set("Sec-Fetch-Site", "same-origin")
	return b.do(req)
}

// post sends a form; hdr adds or overrides headers (an empty value
// removes one).
func (b *browser) post(path string, form url.Values, hdr map[string]string) response {
	b.e.t.Helper()
	req, _ := http.NewRequest("POST", b.e.srv.URL+path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", b.e.srv.URL)
	req.Header.Set("Sec-Fetch-Site", "same-origin")
	for k, v := range hdr {
		if v == "" {
			req.Header.Del(k)
		} else {
			req.Header.Set(k, v)
		}
	}
	return b.do(req)
}

var csrfRE = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// csrf returns the CSRF token in a page's forms.
func csrf(t *testing.T, body string) string {
	t.Helper()
	m := csrfRE.FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("no CSRF token in page:\n%s", body)
	}
	return html.UnescapeString(m[1])
}

// login signs b in with token and returns the response to the form.
func (b *browser) login(token string) response {
	b.e.t.Helper()
	form := b.get(console.Path + "login")
	if form.status != http.StatusOK {
		b.e.t.Fatalf("GET login: status %d, want 200", form.status)
	}
	return b.post(console.Path+"login", url.Values{"csrf": {csrf(b.e.t, form.body)}, "token": {token}, "next": {console.Path + "users"}}, nil)
}

func (b *browser) mustLogin() {
	b.e.t.Helper()
	if r := b.login(testToken); r.status != http.StatusSeeOther || r.location != console.Path+"users" {
		b.e.t.Fatalf("login: status %d location %q, want 303 to %susers\n%s", r.status, r.location, console.Path, r.body)
	}
}

func loginCookieOf(r response) *http.Cookie {
	for _, c := range r.cookies {
		if strings.HasSuffix(c.Name, "beam_console_login") {
			return c
		}
	}
	return nil
}

func sessionCookieOf(r response) *http.Cookie {
	for _, c := range r.cookies {
		if strings.HasSuffix(c.Name, "beam_console") {
			return c
		}
	}
	return nil
}

func TestLogin(t *testing.T) {
	e := newEnv(t, false, nil)
	b := e.browser()

	// Pages need a session: they send the browser to the form.
	if r := b.get(console.Path + "nodes"); r.status != http.StatusSeeOther || r.location != console.Path+"login?next="+url.QueryEscape(console.Path+"nodes") {
		t.Fatalf("nodes signed out: got %d %q, want 303 to the login form", r.status, r.location)
	}
	form := b.get(console.Path + "login")
	if c := sessionCookieOf(form); c != nil {
		t.Errorf("login form set a session cookie %+v: a form keeps nothing on the server", c)
	}
	formCookie := loginCookieOf(form)
	if formCookie == nil {
		t.Fatal("login form set no pre-login cookie")
	}
	if !formCookie.HttpOnly || formCookie.SameSite != http.SameSiteStrictMode || formCookie.Path != "/" {
		t.Errorf("pre-login cookie %+v, want HttpOnly SameSite=Strict Path=/", formCookie)
	}

	if r := b.login("wrong-token-" + testToken); r.status != http.StatusUnauthorized || !strings.Contains(r.body, "Wrong admin token") {
		t.Fatalf("wrong token: got %d, want 401 with Wrong admin token\n%s", r.status, r.body)
	}
	if r := b.get(console.Path + "nodes"); r.status != http.StatusSeeOther {
		t.Fatalf("after wrong token: nodes got %d, want 303", r.status)
	}

	r := b.login(testToken)
	if r.status != http.StatusSeeOther || r.location != console.Path+"users" {
		t.Fatalf("login: got %d %q, want 303 to users", r.status, r.location)
	}
	c := sessionCookieOf(r)
	if c == nil {
		t.Fatal("login set no session cookie")
	}
	if c.Value == formCookie.Value {
		t.Error("the session ID did not change at sign-in (fixation)")
	}
	if c.Name != "beam_console" || !c.HttpOnly || c.SameSite != http.SameSiteStrictMode || c.Path != "/" || c.Secure {
		t.Errorf("cookie over HTTP: got %+v, want beam_console HttpOnly SameSite=Strict Path=/ not Secure", c)
	}
	if c.MaxAge <= 0 || time.Duration(c.MaxAge)*time.Second > console.DefaultSessionLifetime {
		t.Errorf("cookie Max-Age %d, want 1..%v", c.MaxAge, console.DefaultSessionLifetime)
	}
	for _, page := range []string{"nodes", "pending", "routes", "users", "keys", "policy", "audit"} {
		if r := b.get(console.Path + page); r.status != http.StatusOK {
			t.Errorf("GET %s signed in: got %d, want 200\n%s", page, r.status, r.body)
		}
	}
	// The pre-login cookie's value does not carry the sign-in, as a
	// session cookie nor as itself.
	other := e.browser()
	u, _ := url.Parse(e.srv.URL)
	other.jar.SetCookies(u, []*http.Cookie{{Name: formCookie.Name, Value: formCookie.Value}, {Name: "beam_console", Value: formCookie.Value}})
	if r := other.get(console.Path + "nodes"); r.status != http.StatusSeeOther {
		t.Errorf("old form cookie: got %d, want 303 to login", r.status)
	}

	// Logout ends the session on the server, not just in this browser.
	page := b.get(console.Path + "nodes")
	if r := b.post(console.Path+"logout", url.Values{"csrf": {csrf(t, page.body)}}, nil); r.status != http.StatusSeeOther {
		t.Fatalf("logout: got %d, want 303", r.status)
	}
	replay := e.browser()
	replay.jar.SetCookies(u, []*http.Cookie{{Name: c.Name, Value: c.Value}})
	if r := replay.get(console.Path + "nodes"); r.status != http.StatusSeeOther {
		t.Errorf("cookie after logout: got %d, want 303 to login", r.status)
	}

	entries, err := e.coord.Audit(context.Background(), 10)
	if err != nil {
		t.Fatal(err)
	}
	var actions []string
	for _, a := range entries {
		actions = append(actions, a.Actor+" "+a.Action)
	}
	want := "console:admin console.logout|console:admin console.login|console:? console.login_failed"
	if got := strings.Join(actions, "|"); got != want {
		t.Errorf("audit log: got %q, want %q", got, want)
	}
}

func TestSecureCookieOverTLS(t *testing.T) {
	e := newEnv(t, true, nil)
	b := e.browser()
	r := b.login(testToken)
	c := sessionCookieOf(r)
	if r.status != http.StatusSeeOther || c == nil {
		t.Fatalf("login over TLS: got %d, cookie %v", r.status, c)
	}
	if c.Name != "__Host-beam_console" || !c.Secure || !c.HttpOnly || c.SameSite != http.SameSiteStrictMode || c.Path != "/" || c.Domain != "" {
		t.Errorf("cookie over TLS: got %+v, want __Host-beam_console Secure HttpOnly SameSite=Strict Path=/", c)
	}
	if r := b.get(console.Path + "nodes"); r.status != http.StatusOK {
		t.Errorf("nodes over TLS: got %d, want 200", r.status)
	}
}

func TestPlainHTTPLoginOnlyFromLoopback(t *testing.T) {
	e := newEnv(t, false, nil)
	// What a browser elsewhere sends: the console sees its address.
	con, err := console.New(console.Options{Coordinator: e.coord})
	if err != nil {
		t.Fatal(err)
	}
	req := httptest.NewRequest("POST", "http://coord.example:8080"+console.Path+"login", strings.NewReader(url.Values{"token": {testToken}}.Encode()))
	req.RemoteAddr = "198.51.100.7:4242"
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	w := httptest.NewRecorder()
	con.ServeHTTP(w, req)
	if w.Code != http.StatusForbidden || !strings.Contains(w.Body.String(), "SSH tunnel") {
		t.Errorf("plain-HTTP sign-in from 198.51.100.7: got %d, want 403 naming an SSH tunnel\n%s", w.Code, w.Body)
	}
	req.TLS = &tls.ConnectionState{}
	req.Body = io.NopCloser(strings.NewReader(url.Values{"token": {testToken}}.Encode()))
	w = httptest.NewRecorder()
	con.ServeHTTP(w, req)
	if w.Code == http.StatusForbidden && strings.Contains(w.Body.String(), "SSH tunnel") {
		t.Errorf("sign-in over TLS from 198.51.100.7 refused for plain HTTP")
	}
}

func TestCSRF(t *testing.T) {
	e := newEnv(t, false, nil)
	b := e.browser()
	b.mustLogin()
	token := csrf(t, b.get(console.Path+"users").body)
	other := e.browser()
	other.mustLogin()
	otherToken := csrf(t, other.get(console.Path+"users").body)

	tests := []struct {
		name  string
		form  url.Values
		hdr   map[string]string
		want  int
		wantB string
	}{
		{"no token", url.Values{"name": {"u1"}}, nil, http.StatusForbidden, "CSRF token"},
		{"wrong token", url.Values{"name": {"u2"}, "csrf": {"x" + token}}, nil, http.StatusForbidden, "CSRF token"},
		{"another session's token", url.Values{"name": {"u3"}, "csrf": {otherToken}}, nil, http.StatusForbidden, "CSRF token"},
		{"cross-site", url.Values{"name": {"u4"}, "csrf": {token}}, map[string]string{"Sec-Fetch-Site": "cross-site", "Origin": "http://evil.example"}, http.StatusForbidden, "Cross-origin"},
		{"same-site other origin", url.Values{"name": {"u5"}, "csrf": {token}}, map[string]string{"Sec-Fetch-Site": "same-site"}, http.StatusForbidden, "Cross-origin"},
		{"foreign origin without fetch metadata", url.Values{"name": {"u6"}, "csrf": {token}}, map[string]string{"Sec-Fetch-Site": "", "Origin": "http://evil.example"}, http.StatusForbidden, "Cross-origin"},
		{"same origin with token", url.Values{"name": {"u7"}, "csrf": {token}}, nil, http.StatusSeeOther, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := b.post(console.Path+"users", tt.form, tt.hdr)
			if r.status != tt.want || !strings.Contains(r.body, tt.wantB) {
				t.Errorf("got %d, want %d with %q\n%s", r.status, tt.want, tt.wantB, r.body)
			}
		})
	}
	users, err := e.coord.Users(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, u := range users {
		names = append(names, u.Name)
	}
	if got := strings.Join(names, ","); got != "u7" {
		t.Errorf("users after the posts: got %q, want only u7", got)
	}
	// Without a session cookie at all (SameSite=Strict keeps it from
	// cross-site posts), nothing happens either.
	anon := e.browser()
	if r := anon.post(console.Path+"users", url.Values{"name": {"u8"}, "csrf": {token}}, nil); r.status != http.StatusForbidden {
		t.Errorf("post without a session: got %d, want 403", r.status)
	}
	// The login form checks its token too.
	if r := anon.post(console.Path+"login", url.Values{"token": {testToken}}, nil); r.status != http.StatusForbidden || sessionCookieOf(r) != nil && sessionCookieOf(r).Value != "" && !strings.Contains(r.body, "expired") {
		t.Errorf("login without a form token: got %d, want 403 and a fresh form\n%s", r.status, r.body)
	}
}

func TestSessionLifetime(t *testing.T) {
	e := newEnv(t, false, func(o *console.Options) {
		o.SessionIdle = 10 * time.Minute
		o.SessionLifetime = time.Hour
	})
	b := e.browser()
	b.mustLogin()
	// Used every 9 minutes, it stays up to the lifetime, then ends.
	for range 6 {
		e.clock.advance(9 * time.Minute)
		if r := b.get(console.Path + "nodes"); r.status != http.StatusOK {
			t.Fatalf("active session at %v: got %d, want 200", e.clock.now(), r.status)
		}
	}
	e.clock.advance(7 * time.Minute) // 61 minutes after sign-in
	if r := b.get(console.Path + "nodes"); r.status != http.StatusSeeOther {
		t.Fatalf("session past its lifetime: got %d, want 303 to login", r.status)
	}
	// Idle longer than SessionIdle: ended.
	b.mustLogin()
	e.clock.advance(10 * time.Minute)
	if r := b.get(console.Path + "nodes"); r.status != http.StatusSeeOther {
		t.Fatalf("idle session: got %d, want 303 to login", r.status)
	}
}

func TestLoginRateLimit(t *testing.T) {
	e := newEnv(t, false, func(o *console.Options) {
		o.LoginBurst = 3
		o.LoginInterval = time.Minute
	})
	b := e.browser()
	for i := range 3 {
		if r := b.login("wrong-" + testToken); r.status != http.StatusUnauthorized {
			t.Fatalf("attempt %d: got %d, want 401", i+1, r.status)
		}
	}
	r := b.login(testToken) // right token, but over the limit
	if r.status != http.StatusTooManyRequests || !strings.Contains(r.body, "Too many sign-in attempts") {
		t.Fatalf("attempt 4: got %d, want 429\n%s", r.status, r.body)
	}
	if b.get(console.Path+"nodes").status != http.StatusSeeOther {
		t.Fatal("signed in although the attempt was limited")
	}
	e.clock.advance(time.Minute)
	b.mustLogin()
}

func TestNextStaysOnConsole(t *testing.T) {
	e := newEnv(t, false, func(o *console.Options) { o.LoginBurst = 100 })
	tests := []struct{ next, want string }{
		{console.Path + "approve/ABCD2345", console.Path + "approve/ABCD2345"},
		{console.Path + "keys", console.Path + "keys"},
		{"https://evil.example/", console.Path + "nodes"},
		{"//evil.example/console/", console.Path + "nodes"},
		{console.Path + "/evil.example", console.Path + "nodes"},
		{"/\\evil.example", console.Path + "nodes"},
		{console.Path + "logout", console.Path + "nodes"},
		{console.Path + "signin/CODE", console.Path + "nodes"},
		{"", console.Path + "nodes"},
	}
	for _, tt := range tests {
		t.Run(tt.next, func(t *testing.T) {
			b := e.browser()
			form := b.get(console.Path + "login?next=" + url.QueryEscape(tt.next))
			r := b.post(console.Path+"login", url.Values{"csrf": {csrf(t, form.body)}, "token": {testToken}, "next": {tt.next}}, nil)
			if r.status != http.StatusSeeOther || r.location != tt.want {
				t.Errorf("got %d to %q, want 303 to %q", r.status, r.location, tt.want)
			}
		})
	}
}

func TestAuthKeysAndAudit(t *testing.T) {
	e := newEnv(t, false, nil)
	b := e.browser()
	b.mustLogin()
	token := csrf(t, b.get(console.Path+"keys").body)
	r := b.post(console.Path+"keys", url.Values{"csrf": {token}, "reusable": {"1"}, "expiry": {"1h"}}, nil)
	if r.status != http.StatusOK || r.location != "" {
		t.Fatalf("create key: got %d location %q, want 200 with the key in the page", r.status, r.location)
	}
	m := regexp.MustCompile(`id="new-key-value">(beamkey-[0-9a-f]+)-[0-9a-f]+<`).FindStringSubmatch(r.body)
	if m == nil {
		t.Fatalf("no new key in the page:\n%s", r.body)
	}
	prefix := m[1]
	if r := b.get(console.Path + "keys"); strings.Contains(r.body, "new-key-value") || !strings.Contains(r.body, prefix) {
		t.Errorf("keys page again: shows the secret again, or lacks %s", prefix)
	}
	if r := b.post(console.Path+"keys", url.Values{"csrf": {token}, "expiry": {"soon"}}, nil); r.status != http.StatusBadRequest || !strings.Contains(r.body, "positive duration") {
		t.Errorf("bad expiry: got %d, want 400 naming the problem\n%s", r.status, r.body)
	}
	if r := b.post(console.Path+"keys/"+prefix+"/revoke", url.Values{"csrf": {token}}, nil); r.status != http.StatusSeeOther {
		t.Fatalf("revoke: got %d, want 303", r.status)
	}
	keys, err := e.coord.AuthKeys(context.Background())
	if err != nil || len(keys) != 0 {
		t.Fatalf("keys after revoke: %v, %v; want none", keys, err)
	}
	if r := b.get(console.Path + "keys"); !strings.Contains(r.body, "Revoked auth key "+prefix) {
		t.Errorf("no confirmation after revoke:\n%s", r.body)
	}
	// Policy: check shows problems without saving; save applies and audits.
	bad := `{"acls": [{"action": "accept", "src": ["nobody"], "dst": ["*:*"]}]}`
	if r := b.post(console.Path+"policy", url.Values{"csrf": {token}, "policy": {bad}, "action": {"save"}}, nil); r.status != http.StatusBadRequest || !strings.Contains(r.body, "not saved") {
		t.Errorf("bad policy saved? got %d\n%s", r.status, r.body)
	}
	good := `{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:22"]}], "tests": [{"src": "100.64.0.1", "accept": ["100.64.0.2:22"], "deny": ["100.64.0.2:80"]}]}`
	if r := b.post(console.Path+"policy", url.Values{"csrf": {token}, "policy": {good}, "action": {"save"}}, nil); r.status != http.StatusSeeOther {
		t.Errorf("save policy: got %d, want 303\n%s", r.status, r.body)
	}
	if got := string(e.coord.Policy()); got != good {
		t.Errorf("policy in force: got %q, want %q", got, good)
	}

	entries, err := e.coord.Audit(context.Background(), 10)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, a := range entries {
		if a.Actor != "console:admin" {
			t.Errorf("audit entry %s by %q, want console:admin", a.Action, a.Actor)
		}
		if strings.Contains(a.Detail, prefix+"-") {
			t.Errorf("audit entry %s holds the secret: %q", a.Action, a.Detail)
		}
		got = append(got, a.Action)
	}
	want := "policy.set authkey.delete authkey.create console.login"
	if strings.Join(got, " ") != want {
		t.Errorf("audit log: got %q, want %q", strings.Join(got, " "), want)
	}
}

func TestApprovalURLLeadsToConsole(t *testing.T) {
	e := newEnv(t, false, nil)
	b := e.browser()
	// An unknown code is the coordinator's 404; a pending one redirects
	// (see the browser test in cmd/beam for the whole flow).
	if r := b.get("/register/ABCD2345"); r.status != http.StatusNotFound {
		t.Errorf("unknown code: got %d, want 404", r.status)
	}
	b.mustLogin()
	r := b.get(console.Path + "approve/ABCD2345")
	if r.status != http.StatusNotFound || !strings.Contains(r.body, "No node is waiting") {
		t.Errorf("approve page of an unknown code: got %d\n%s", r.status, r.body)
	}
	token := csrf(t, r.body)
	r = b.post(console.Path+"approve/ABCD2345", url.Values{"csrf": {token}}, nil)
	if r.status != http.StatusSeeOther || r.location != console.Path+"pending" {
		t.Errorf("approve unknown code: got %d to %q, want 303 to pending", r.status, r.location)
	}
}

func TestSecurityHeaders(t *testing.T) {
	e := newEnv(t, false, nil)
	resp, err := e.srv.Client().Get(e.srv.URL + console.Path + "login")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	for k, want := range map[string]string{
		"X-Frame-Options":        "DENY",
		"Cache-Control":          "no-store",
		"Referrer-Policy":        "no-referrer",
		"X-Content-Type-Options": "nosniff",
	} {
		if got := resp.Header.Get(k); got != want {
			t.Errorf("%s: got %q, want %q", k, got, want)
		}
	}
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'none'") || !strings.Contains(csp, "frame-ancestors 'none'") || strings.Contains(csp, "script-src") {
		t.Errorf("CSP %q: want default-src 'none', frame-ancestors 'none' and no scripts", csp)
	}
}
