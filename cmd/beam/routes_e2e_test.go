package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"beam.dev/beam/localapi/apitype"
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

// fgExpose is a foreground `beam expose`.
type fgExpose struct {
	cmd    *exec.Cmd
	url    string
	stderr strings.Builder // written by the exec package until Wait returns
	done   chan struct{}   // closed once the command exited; then err is set
	err    error
}

// startExpose runs `beam expose ARGS` in the foreground on d and waits for
// its URL.
func startExpose(t *testing.T, d *device, args ...string) *fgExpose {
	t.Helper()
	cmd := exec.Command(d.c.bin, d.args(append([]string{"expose"}, args...)...)...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	fg := &fgExpose{cmd: cmd, done: make(chan struct{})}
	cmd.Stderr = &fg.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-fg.done
	})
	br := bufio.NewReader(stdout)
	line, err := br.ReadString('\n')
	go func() {
		io.Copy(io.Discard, br)
		fg.err = cmd.Wait()
		close(fg.done)
	}()
	if err != nil {
		t.Fatalf("beam expose %s: no URL (%v)", strings.Join(args, " "), err)
	}
	fg.url = strings.TrimSpace(line)
	return fg
}

// wait returns the exit error and the stderr text once the command ends.
func (fg *fgExpose) wait(t *testing.T, d time.Duration) (error, string) {
	t.Helper()
	select {
	case <-fg.done:
	case <-time.After(d):
		t.Fatalf("beam expose (%s) still running after %v", fg.url, d)
	}
	return fg.err, fg.stderr.String()
}

func routeList(t *testing.T, d *device) []apitype.Route {
	t.Helper()
	var routes []apitype.Route
	if err := json.Unmarshal([]byte(d.c.mustBeam(d.args("expose", "list", "--json")...)), &routes); err != nil {
		t.Fatal(err)
	}
	return routes
}

// TestExposeRoutesDoNotCollide plays issue #22 on the real binaries: each
// beam expose owns its route, and a foreground expose whose route goes
// away says so and exits non-zero.
func TestExposeRoutesDoNotCollide(t *testing.T) {
	c, httpPort := startDevServer(t)
	alpha := c.device("alpha")
	alpha.mustUp()
	appA, appB := startApp(t, "first"), startApp(t, "second")

	// A second http expose under the default name gets its own name.
	first := strings.TrimSpace(c.mustBeam(alpha.args("expose", strconv.Itoa(appA.port), "--bg")...))
	second := strings.TrimSpace(c.mustBeam(alpha.args("expose", strconv.Itoa(appB.port), "--bg")...))
	if want := fmt.Sprintf("http://alpha-2.localhost:%d", httpPort); first == second || second != want {
		t.Fatalf("second expose printed %q (first %q), want %q", second, first, want)
	}
	for url, want := range map[string]string{first: "first", second: "second"} {
		waitFor(t, 10*time.Second, url+" serves its own app", func() bool {
			body, err := curl(t, url+"/")
			return err == nil && body == want
		})
	}
	// Under an explicit name it is refused with a hint.
	c.mustBeam(alpha.args("expose", strconv.Itoa(appA.port), "--name", "web", "--bg")...)
	if _, errOut, err := c.beam(nil, alpha.args("expose", strconv.Itoa(appB.port), "--name", "web", "--bg")...); err == nil || !strings.Contains(errOut, "beam expose stop web") {
		t.Errorf("second route under --name web: err %v, stderr %q; want a refusal with a hint", err, errOut)
	}

	// Two tcp exposes get two ports; Ctrl-C on a tcp expose leaves the
	// udp route of the same name alone.
	e1, e2 := echoServer(t), echoServer(t)
	t1 := strings.TrimSpace(c.mustBeam(alpha.args("expose", "--tcp", strconv.Itoa(e1), "--bg")...))
	udp := startExpose(t, alpha, "--udp", strconv.Itoa(freeUDPPort(t)))
	tcp := startExpose(t, alpha, "--tcp", strconv.Itoa(e2))
	if t1 == tcp.url {
		t.Fatalf("two tcp exposes share %s", t1)
	}
	tcp.cmd.Process.Signal(syscall.SIGINT)
	if err, _ := tcp.wait(t, 20*time.Second); err != nil {
		t.Fatalf("tcp expose after Ctrl-C: %v", err)
	}
	var protos []string
	for _, r := range routeList(t, alpha) {
		protos = append(protos, r.Proto)
	}
	slices.Sort(protos)
	if want := []string{"http", "http", "http", "tcp", "udp"}; !slices.Equal(protos, want) {
		t.Fatalf("routes after Ctrl-C on the second tcp expose: %v, want %v", protos, want)
	}

	// beam expose stop from another shell ends the foreground expose.
	udpName := "udp:" + udp.url[strings.LastIndexByte(udp.url, ':')+1:]
	c.mustBeam(alpha.args("expose", "stop", udpName)...)
	if err, stderr := udp.wait(t, 20*time.Second); err == nil || !strings.Contains(stderr, "no longer published") {
		t.Errorf("udp expose after beam expose stop: exit %v, stderr %q; want non-zero and why", err, stderr)
	}

	// So does an admin removing the route.
	fg := startExpose(t, alpha, strconv.Itoa(appB.port), "--name", "fg")
	c.mustBeam("admin", "--coordinator", c.url, "routes", "remove", "fg.localhost")
	if err, stderr := fg.wait(t, 20*time.Second); err == nil || !strings.Contains(stderr, "no longer published") || strings.Contains(stderr, "forwarding "+fg.url+" ->\n") {
		t.Errorf("foreground expose after an admin removal: exit %v, stderr %q; want non-zero and why", err, stderr)
	}
}

// TestExposeTargets publishes targets as users write them: a port,
// localhost:PORT, http://localhost:PORT, an app speaking HTTPS itself
// (https://localhost:PORT) and another address the device reaches
// (127.0.0.2:PORT standing for a LAN host).
func TestExposeTargets(t *testing.T) {
	c, httpPort := startDevServer(t)
	alpha := c.device("alpha")
	alpha.mustUp()

	plain := startApp(t, "plain")
	tlsApp := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "tls app, host %s", r.Host)
	}))
	t.Cleanup(tlsApp.Close)
	tlsPort := tlsApp.Listener.Addr().(*net.TCPAddr).Port
	lanLn, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	lan := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "lan host") })}
	go lan.Serve(lanLn)
	t.Cleanup(func() { lan.Close() })
	lanPort := lanLn.Addr().(*net.TCPAddr).Port

	tests := []struct {
		name, target, want string
	}{
		{"port", strconv.Itoa(plain.port), "plain"},
		{"lh", "localhost:" + strconv.Itoa(plain.port), "plain"},
		{"httpurl", "http://localhost:" + strconv.Itoa(plain.port), "plain"},
		{"https", "https://localhost:" + strconv.Itoa(tlsPort), fmt.Sprintf("tls app, host https.localhost:%d", httpPort)},
		{"lan", "127.0.0.2:" + strconv.Itoa(lanPort), "lan host"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, errOut, err := c.beam(nil, alpha.args("expose", tt.target, "--name", tt.name, "--bg")...)
			if err != nil {
				t.Fatalf("beam expose %s: %v\n%s", tt.target, err, errOut)
			}
			url := strings.TrimSpace(out) + "/"
			var body string
			waitFor(t, 10*time.Second, url+" answers from "+tt.target, func() bool {
				body, err = curl(t, url)
				return err == nil && body == tt.want
			})
			// Clients that do not resolve *.localhost get a loopback URL
			// and the Host header to send.
			host := tt.name + ".localhost"
			lb := fmt.Sprintf("http://127.0.0.1:%d", httpPort)
			if !strings.Contains(errOut, lb) || !strings.Contains(errOut, "Host: "+host) {
				t.Fatalf("beam expose stderr %q lacks the loopback URL %s and Host %s", errOut, lb, host)
			}
			req, _ := http.NewRequest("GET", lb+"/", nil)
			req.Host = fmt.Sprintf("%s:%d", host, httpPort) // as a browser sends it
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(b) != tt.want {
				t.Errorf("Go client at %s with Host %s: %q, want %q", lb, host, b, tt.want)
			}
		})
	}
	// A raw TCP route to a LAN-style address: an echo server on
	// 127.0.0.2 through the edge port.
	echoLn, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { echoLn.Close() })
	go func() {
		for {
			c, err := echoLn.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	tcpURL := strings.TrimSpace(c.mustBeam(alpha.args("expose", "--tcp", echoLn.Addr().String(), "--bg")...))
	edgePort := tcpURL[strings.LastIndexByte(tcpURL, ':')+1:]
	waitFor(t, 10*time.Second, "echo through "+tcpURL, func() bool {
		conn, err := net.DialTimeout("tcp", "127.0.0.1:"+edgePort, 5*time.Second)
		if err != nil {
			return false
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprint(conn, "ping\n")
		line, _ := bufio.NewReader(conn).ReadString('\n')
		return line == "ping\n"
	})

	// A LAN target is listed as such.
	if out := c.mustBeam(alpha.args("expose", "list")...); !strings.Contains(out, "127.0.0.2:"+strconv.Itoa(lanPort)) || !strings.Contains(out, "https://localhost:"+strconv.Itoa(tlsPort)) {
		t.Errorf("expose list does not show the targets:\n%s", out)
	}
}

// TestExposeShowsEdgeRefusals checks that requests the edge refuses itself
// (401 without credentials, 429 over the rate limit) appear in the
// foreground expose's log and --json, so the owner sees them.
func TestExposeShowsEdgeRefusals(t *testing.T) {
	c, httpPort := startDevServer(t)
	alpha := c.device("alpha")
	alpha.mustUp()
	app := startApp(t, "app")

	// Policy values the edge could not enforce are refused up front, and
	// no route runs without them.
	for _, bad := range [][]string{{"--rate-limit", "fast"}, {"--rate-limit", "0/s"}, {"--allow-ip", "office"}, {"--deny-ip", "192.0.2.0/33"}} {
		args := append([]string{"expose", strconv.Itoa(app.port), "--name", "bad", "--bg"}, bad...)
		if _, errOut, err := c.beam(nil, alpha.args(args...)...); err == nil || !strings.Contains(errOut, bad[0]) {
			t.Errorf("beam expose %s %q: err %v, stderr %q; want a refusal naming %s", bad[0], bad[1], err, errOut, bad[0])
		}
	}
	if routes := routeList(t, alpha); len(routes) != 0 {
		t.Fatalf("routes after refused options: %+v", routes)
	}

	cmd := exec.Command(c.bin, alpha.args("expose", strconv.Itoa(app.port), "--name", "guarded", "--basic-auth", "u:p", "--rate-limit", "1/m", "--json")...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGINT)
		cmd.Wait()
	})
	dec := json.NewDecoder(stdout)
	var resp apitype.ExposeResponse
	if err := dec.Decode(&resp); err != nil || resp.URL == "" {
		t.Fatalf("first JSON line: %+v, %v", resp, err)
	}
	lines := make(chan apitype.RequestLog, 16)
	go func() {
		for {
			var l apitype.RequestLog
			if err := dec.Decode(&l); err != nil {
				close(lines)
				return
			}
			lines <- l
		}
	}()
	url := fmt.Sprintf("http://guarded.localhost:%d/secret", httpPort)
	waitFor(t, 10*time.Second, "the route at the edge", func() bool {
		code, _ := curl(t, "-o", "/dev/null", "-w", "%{http_code}", "-X", "OPTIONS", fmt.Sprintf("http://guarded.localhost:%d/", httpPort))
		return code != "404"
	})
	// The probe above got 401 and took the one request a minute: the
	// next is 429.
	if code, _ := curl(t, "-o", "/dev/null", "-w", "%{http_code}", url); code != "429" {
		t.Fatalf("GET %s = %s, want 429", url, code)
	}
	seen := map[int]bool{}
	deadline := time.After(15 * time.Second)
	for !seen[401] || !seen[429] {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatal("expose --json ended")
			}
			if !l.Edge || l.Host != "guarded.localhost" {
				t.Errorf("log line %+v: want a refusal at the edge for guarded.localhost", l)
			}
			seen[l.Status] = true
			if l.Status == 429 && (l.Path != "/secret" || l.Method != "GET" || l.Client != "127.0.0.1") {
				t.Errorf("429 line %+v, want GET /secret from 127.0.0.1", l)
			}
		case <-deadline:
			t.Fatalf("refusals in the log: %v; want 401 and 429", seen)
		}
	}
	if got := app.seen(); len(got) != 0 {
		t.Errorf("the app got %d refused requests", len(got))
	}
}
