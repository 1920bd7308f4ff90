package oidclogin_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"beam.dev/beam/beamtest/oidctest"
	"beam.dev/beam/coordclient"
	"beam.dev/beam/coordinator"
	"beam.dev/beam/coordinator/oidclogin"
	"beam.dev/beam/coordinator/sqlstore"
	"beam.dev/beam/oidcauth"
	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

var (
	alice = oidctest.User{Subject: "u-alice", Email: "alice@example.com", Name: "Alice", Password: "pw-a", Groups: []string{"eng", "admins"}}
	// impostor got alice's address at the provider after her: another account.
	impostor = oidctest.User{Subject: "u-new", Email: "alice@example.com", Name: "Not Alice", Password: "pw-i"}
	eve      = oidctest.User{Subject: "u-eve", Email: "eve@evil.test", Name: "Eve", Password: "pw-e", Groups: []string{"eng"}}
)

type env struct {
	base  string
	coord *coordinator.Server
}

func newEnv(t *testing.T, expiry time.Duration) *env {
	t.Helper()
	p := oidctest.Start(t, []oidctest.User{alice, impostor, eve}, []oidctest.Client{{ID: "beam", Secret: "s", RedirectURIs: []string{"http://127.0.0.1:*" + oidclogin.CallbackPath}}})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	base := "http://" + ln.Addr().String()
	rp, err := oidcauth.New(t.Context(), oidcauth.Options{Issuer: p.Issuer, ClientID: "beam", ClientSecret: "s",
		RedirectURL: base + oidclogin.CallbackPath, Scopes: []string{"email", "profile", "groups"}})
	if err != nil {
		t.Fatal(err)
	}
	st, err := sqlstore.Open(t.Context(), filepath.Join(t.TempDir(), "c.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	allow, _ := oidcauth.ParseAllow([]string{"email:*@example.com"})
	var login *oidclogin.Login
	coord, err := coordinator.New(coordinator.Options{Store: st, PrivateKey: key.NewMachine(), AdminToken: "tok",
		Approver: approverFunc(func(w http.ResponseWriter, r *http.Request, pr wire.PendingRegistration) {
			login.ServeApproval(w, r, pr)
		})})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { coord.Close() })
	login, err = oidclogin.New(oidclogin.Options{Coordinator: coord, RP: rp, Allow: allow, NodeKeyExpiry: expiry,
		GroupMap: map[string]string{"admins": "group:ops"}})
	if err != nil {
		t.Fatal(err)
	}
	policy := `{"groups": {"group:eng": [], "group:ops": []}, "acls": [{"action": "accept", "src": ["group:eng"], "dst": ["*:*"]}]}`
	if err := coord.SetPolicy(t.Context(), []byte(policy)); err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle(oidclogin.Prefix, login)
	mux.Handle("/", coord)
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return &env{base: base, coord: coord}
}

type approverFunc func(http.ResponseWriter, *http.Request, wire.PendingRegistration)

func (f approverFunc) ServeApproval(w http.ResponseWriter, r *http.Request, p wire.PendingRegistration) {
	f(w, r, p)
}

// startJoin registers a new node without an auth key; it returns the
// approval URL and a channel with the registration's result.
func (e *env) startJoin(t *testing.T, host string) (string, chan *wire.RegisterResponse) {
	t.Helper()
	cl, err := coordclient.New(coordclient.Options{ServerURL: e.base, PrivateKey: key.NewNode(), DiscoKey: key.NewDisco().Public()})
	if err != nil {
		t.Fatal(err)
	}
	urls := make(chan string, 1)
	done := make(chan *wire.RegisterResponse, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	go func() {
		r, err := cl.Register(ctx, coordclient.RegisterParams{Hostname: host, OS: "linux", OnAuthURL: func(u, code string) { urls <- u }})
		if err != nil {
			r = &wire.RegisterResponse{Error: err.Error()}
		}
		done <- r
	}()
	select {
	case u := <-urls:
		return u, done
	case r := <-done:
		t.Fatalf("register ended without an approval URL: %+v", r)
	}
	return "", nil
}

// browser is an HTTP client with a cookie jar.
func browser() *http.Client {
	jar, _ := cookiejar.New(nil)
	return &http.Client{Jar: jar}
}

var tokenRE = regexp.MustCompile(`name="token" value="([^"]+)"`)

// confirmToken returns the token of the confirmation form in page.
func confirmToken(t *testing.T, page string) string {
	t.Helper()
	m := tokenRE.FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("no confirmation form on the page:\n%s", page)
	}
	return m[1]
}

// post sends the confirmation form with token from c, with extra headers.
func (e *env) post(t *testing.T, c *http.Client, token string, hdr ...string) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, e.base+oidclogin.ConfirmPath, strings.NewReader(url.Values{"token": {token}}.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// signIn signs in as u in c for the device of code and returns the page
// the sign-in ends on.
func (e *env) signIn(t *testing.T, c *http.Client, code string, u oidctest.User) (int, string) {
	t.Helper()
	resp, body, err := oidctest.Login(t.Context(), c, e.base+oidclogin.LoginPath+code, u.Email, u.Password)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, body
}

func TestDeviceJoinsAsSignedInUser(t *testing.T) {
	e := newEnv(t, 48*time.Hour)
	authURL, done := e.startJoin(t, "laptop")
	c := browser()
	resp, err := c.Get(authURL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	code := authURL[strings.LastIndex(authURL, "/")+1:]
	status, body := e.signIn(t, c, code, alice)
	if status != 200 || !strings.Contains(body, "Add this device as alice@example.com") || !strings.Contains(body, "laptop") {
		t.Fatalf("after sign-in: %d\n%s", status, body)
	}
	status, body = e.post(t, c, confirmToken(t, body))
	if status != 200 || !strings.Contains(body, "Signed in as alice@example.com. The device laptop joins") {
		t.Fatalf("after confirming: %d\n%s", status, body)
	}
	var r *wire.RegisterResponse
	select {
	case r = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("node not registered 30s after the sign-in")
	}
	if r.Node == nil || r.Node.User != "alice@example.com" {
		t.Fatalf("registered node: %+v, want user alice@example.com", r)
	}
	if left := time.Until(r.Node.KeyExpiry); left < 47*time.Hour || left > 49*time.Hour {
		t.Errorf("key expires in %v, want about 48h (the login lifetime)", left)
	}
	groups, err := e.coord.UserGroups(t.Context(), "alice@example.com")
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"group:eng", "group:ops"}; !slices.Equal(groups, want) {
		t.Errorf("groups %v, want %v", groups, want)
	}
	audit, _ := e.coord.Audit(t.Context(), 50)
	var actions []string
	for _, a := range audit {
		actions = append(actions, a.Actor+" "+a.Action)
	}
	for _, want := range []string{"oidc:alice@example.com user.create", "oidc:alice@example.com node.approve"} {
		if !slices.Contains(actions, want) {
			t.Errorf("audit log lacks %q: %v", want, actions)
		}
	}
}

func TestOutsiderRefused(t *testing.T) {
	e := newEnv(t, 0)
	authURL, done := e.startJoin(t, "evilbox")
	code := authURL[strings.LastIndex(authURL, "/")+1:]
	resp, body, err := oidctest.Login(t.Context(), nil, e.base+oidclogin.LoginPath+code, eve.Email, eve.Password)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "eve@evil.test may not join devices to this network") {
		t.Fatalf("outsider: got %d\n%s", resp.StatusCode, body)
	}
	select {
	case r := <-done:
		t.Fatalf("outsider's node registered: %+v", r)
	default:
	}
	if len(e.coord.PendingRegistrations()) != 1 {
		t.Errorf("pending registrations: %v, want the outsider's still waiting", e.coord.PendingRegistrations())
	}
	users, _ := e.coord.Users(t.Context())
	if len(users) != 0 {
		t.Errorf("users %v after a refused sign-in, want none", users)
	}
}

func TestApprovalPageShowsDevice(t *testing.T) {
	e := newEnv(t, 0)
	authURL, _ := e.startJoin(t, "printer")
	resp, err := http.Get(authURL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b := new(strings.Builder)
	if _, err := io.Copy(b, resp.Body); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "printer") || !strings.Contains(b.String(), `href="`+oidclogin.LoginPath) {
		t.Fatalf("approval page lacks the device or the sign-in link:\n%s", b)
	}
	// An unknown code does not start a sign-in.
	resp, err = http.Get(e.base + oidclogin.LoginPath + "ZZZZ2222")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("login of an unknown code: got %d, want 404", resp.StatusCode)
	}
}

func TestEmailReusedByAnotherAccountRefused(t *testing.T) {
	e := newEnv(t, 0)
	signIn := func(u oidctest.User) (int, string, chan *wire.RegisterResponse) {
		authURL, done := e.startJoin(t, "dev-"+u.Subject)
		code := authURL[strings.LastIndex(authURL, "/")+1:]
		c := browser()
		status, body := e.signIn(t, c, code, u)
		if status != 200 {
			t.Fatalf("%s: sign-in: %d %s", u.Subject, status, body)
		}
		status, body = e.post(t, c, confirmToken(t, body))
		return status, body, done
	}
	if code, body, _ := signIn(alice); code != 200 {
		t.Fatalf("alice: %d %s", code, body)
	}
	code, body, done := signIn(impostor)
	if code != http.StatusForbidden || !strings.Contains(body, "bound to another account") {
		t.Fatalf("another account with alice's email: %d\n%s", code, body)
	}
	select {
	case r := <-done:
		t.Fatalf("the impostor's device registered: %+v", r)
	default:
	}
}

// TestSignInAloneDoesNotApprove: someone who started beam up sends a
// person the link to LoginPath; the person's browser signs in (a session
// at the provider needs no click) and comes back, and the device still
// waits. Only the confirmation form's POST, from this origin, with its
// token and the cookie of the browser that signed in, adds it; a forged
// or replayed POST does not.
func TestSignInAloneDoesNotApprove(t *testing.T) {
	e := newEnv(t, 0)
	authURL, done := e.startJoin(t, "evil")
	code := authURL[strings.LastIndex(authURL, "/")+1:]
	victim := browser()
	status, page := e.signIn(t, victim, code, alice)
	if status != 200 || !strings.Contains(page, "Add this device as alice@example.com") || !strings.Contains(page, "evil") || !strings.Contains(page, code) {
		t.Fatalf("after the sign-in: %d, want 200 and a page asking to add evil (%s):\n%s", status, code, page)
	}
	stillWaiting := func(when string) {
		t.Helper()
		select {
		case r := <-done:
			t.Fatalf("%s: the device registered: %+v", when, r)
		case <-time.After(100 * time.Millisecond):
		}
		if n := len(e.coord.PendingRegistrations()); n != 1 {
			t.Fatalf("%s: %d pending registrations, want the device still waiting", when, n)
		}
	}
	stillWaiting("after the sign-in")
	token := confirmToken(t, page)

	// The attacker's page cannot post the form: not with the person's
	// cookie and the token (cross-origin), nor without them.
	for _, tc := range []struct {
		name   string
		c      *http.Client
		token  string
		header []string
	}{
		{"cross-origin, Sec-Fetch-Site", victim, token, []string{"Sec-Fetch-Site", "cross-site"}},
		{"cross-origin, Origin", victim, token, []string{"Origin", "http://evil.test"}},
		{"without the cookie", browser(), token, nil},
		{"without the token", victim, "", nil},
		{"with another token", victim, strings.Repeat("A", len(token)), nil},
	} {
		if status, body := e.post(t, tc.c, tc.token, tc.header...); status != http.StatusForbidden {
			t.Errorf("%s: got %d, want 403:\n%s", tc.name, status, body)
		}
	}
	if resp, err := victim.Get(e.base + oidclogin.ConfirmPath + "?token=" + url.QueryEscape(token)); err != nil {
		t.Fatal(err)
	} else if resp.Body.Close(); resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("GET of the confirmation: got %d, want 405", resp.StatusCode)
	}
	stillWaiting("after forged confirmations")
	if users, _ := e.coord.Users(t.Context()); len(users) != 0 {
		t.Errorf("users %v before any confirmation, want none", users)
	}

	status, body := e.post(t, victim, token, "Origin", e.base, "Sec-Fetch-Site", "same-origin")
	if status != 200 || !strings.Contains(body, "Device added") {
		t.Fatalf("the confirmation: %d\n%s", status, body)
	}
	select {
	case r := <-done:
		if r.Node == nil || r.Node.User != "alice@example.com" {
			t.Fatalf("registered node: %+v, want user alice@example.com", r)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("node not registered 30s after the confirmation")
	}
	if status, body := e.post(t, victim, token); status != http.StatusForbidden {
		t.Errorf("the confirmation again: got %d, want 403:\n%s", status, body)
	}
}
