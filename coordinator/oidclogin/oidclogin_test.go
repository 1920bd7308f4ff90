package oidclogin_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"path/filepath"
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

func TestDeviceJoinsAsSignedInUser(t *testing.T) {
	e := newEnv(t, 48*time.Hour)
	authURL, done := e.startJoin(t, "laptop")
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar}
	resp, err := c.Get(authURL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	code := authURL[strings.LastIndex(authURL, "/")+1:]
	resp, body, err := oidctest.Login(t.Context(), c, e.base+oidclogin.LoginPath+code, alice.Email, alice.Password)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || !strings.Contains(body, "Signed in as alice@example.com. The device laptop joins") {
		t.Fatalf("after sign-in: %d\n%s", resp.StatusCode, body)
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
		resp, body, err := oidctest.Login(t.Context(), nil, e.base+oidclogin.LoginPath+code, u.Email, u.Password)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, body, done
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
