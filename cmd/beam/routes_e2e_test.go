package main

import (
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// appServer serves name on a loopback port and records the Authorization
// header of every request it gets.
type appServer struct {
	port int
	mu   sync.Mutex
	auth []string
}

func startApp(t *testing.T, name string) *appServer {
	a := &appServer{}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		a.auth = append(a.auth, r.Header.Get("Authorization"))
		a.mu.Unlock()
		fmt.Fprint(w, name)
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	a.port = ln.Addr().(*net.TCPAddr).Port
	return a
}

func (a *appServer) seen() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.auth...)
}

// TestPublicNameOwners plays issue #12.2 on the real binaries: while
// alice's device serves "app" behind basic auth, bob's device (another
// user of the network) tries to publish the same name, with and without
// --pool. Both are refused with the owner named, every authenticated
// request reaches alice's app, and the app never sees the credentials.
func TestPublicNameOwners(t *testing.T) {
	c, httpPort := startDevServer(t)
	admin := func(args ...string) string {
		t.Helper()
		return c.mustBeam(append([]string{"admin", "--coordinator", c.url}, args...)...)
	}
	admin("users", "create", "alice")
	admin("users", "create", "bob")
	alpha, bobdev := c.device("alpha"), c.device("bobdev")
	alpha.mustUp("--authkey", strings.TrimSpace(admin("authkey", "create", "--user", "alice")))
	bobdev.mustUp("--authkey", strings.TrimSpace(admin("authkey", "create", "--user", "bob")))

	aliceApp, bobApp := startApp(t, "alice"), startApp(t, "bob")
	c.mustBeam(alpha.args("expose", strconv.Itoa(aliceApp.port), "--name", "app", "--basic-auth", "u:secret", "--bg")...)

	for _, extra := range [][]string{nil, {"--pool"}} {
		args := append([]string{"expose", strconv.Itoa(bobApp.port), "--name", "app", "--bg"}, extra...)
		out, errOut, err := c.beam(nil, bobdev.args(args...)...)
		if err == nil {
			t.Fatalf("bob's beam %s succeeded (stdout %q); want a refusal", strings.Join(args, " "), out)
		}
		if !strings.Contains(errOut, "app.localhost") || !strings.Contains(errOut, "node alpha (user alice)") {
			t.Errorf("bob's beam %s: stderr %q; want the name and its owner, node alpha (user alice)", strings.Join(args, " "), errOut)
		}
	}
	if out := c.mustBeam(bobdev.args("expose", "list")...); strings.Contains(out, "app.localhost") {
		t.Errorf("bob's device lists the refused route:\n%s", out)
	}

	url := fmt.Sprintf("http://app.localhost:%d/", httpPort)
	waitFor(t, 10*time.Second, "app route at the edge", func() bool {
		code, _ := curl(t, "-o", "/dev/null", "-w", "%{http_code}", url)
		return code == "401"
	})
	const n = 8
	for i := range n {
		body, err := curl(t, "-u", "u:secret", url)
		if err != nil || body != "alice" {
			t.Fatalf("request %d with credentials: %q, %v; want alice's app", i, body, err)
		}
	}
	if got := bobApp.seen(); len(got) != 0 {
		t.Errorf("bob's app got %d requests for a name it does not own", len(got))
	}
	got := aliceApp.seen()
	if len(got) != n {
		t.Fatalf("alice's app got %d requests, want %d", len(got), n)
	}
	for i, a := range got {
		if a != "" {
			t.Errorf("request %d reached the app with Authorization %q; the edge must keep the credentials", i, a)
		}
	}
}
