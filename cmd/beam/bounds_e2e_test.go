package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"beam.dev/beam/coordclient"
	"beam.dev/beam/derp"
	"beam.dev/beam/types/key"
)

// The attacks of this file flood the cheap paths of a real beam server:
// idle connections from many loopback addresses, slow request bodies,
// registrations without a key, wrong passwords. Each is bounded in count
// and time and stops by itself.

// floodSource returns the i-th source address of a flood: 127.0.1.1,
// 127.0.1.2, ... (all loopback, on this machine).
func floodSource(i int) net.IP { return net.IPv4(127, 0, 1, byte(1+i%250)) }

// idleFlood holds connections to addr from many loopback source
// addresses, each having sent half a request header.
type idleFlood struct {
	mu    sync.Mutex
	conns []net.Conn
}

// open dials n connections to addr from sources addresses (at most
// workers at once, for at most d), sends half a request header on each
// and keeps those the server did not close. It returns how many dials
// succeeded.
func (f *idleFlood) open(t *testing.T, addr string, n, sources, workers int, d time.Duration) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), d)
	defer cancel()
	jobs := make(chan int)
	var wg sync.WaitGroup
	var mu sync.Mutex
	dialed := 0
	for range workers {
		wg.Go(func() {
			for i := range jobs {
				dl := net.Dialer{LocalAddr: &net.TCPAddr{IP: floodSource(i % sources)}, Timeout: 2 * time.Second}
				c, err := dl.DialContext(ctx, "tcp", addr)
				if err != nil {
					continue
				}
				mu.Lock()
				dialed++
				mu.Unlock()
				c.SetWriteDeadline(time.Now().Add(time.Second))
				if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: flood.localhost\r\n"); err != nil {
					c.Close()
					continue
				}
				f.mu.Lock()
				f.conns = append(f.conns, c)
				f.mu.Unlock()
			}
		})
	}
feed:
	for i := range n {
		select {
		case jobs <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(jobs)
	wg.Wait()
	return dialed
}

// held counts the flood's connections the server still holds open.
func (f *idleFlood) held() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	buf := make([]byte, 1)
	for _, c := range f.conns {
		c.SetReadDeadline(time.Now().Add(time.Millisecond))
		if _, err := c.Read(buf); err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				n++
			}
		}
	}
	return n
}

func (f *idleFlood) close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.conns {
		c.Close()
	}
	f.conns = nil
}

// openFiles counts the descriptors process pid holds.
func openFiles(t *testing.T, pid int) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/fd")
	if err != nil {
		t.Fatalf("count open files of %d: %v", pid, err)
	}
	return len(ents)
}

// getRoute fetches path of host at the edge's HTTP port.
func getRoute(httpPort int, host, path string) (int, string, error) {
	req, err := http.NewRequest("GET", fmt.Sprintf("http://127.0.0.1:%d%s", httpPort, path), nil)
	if err != nil {
		return 0, "", err
	}
	req.Host = host
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, string(b), nil
}

// exposeApp serves a small web app on host loopback and publishes it
// through d at the edge, returning the route's host name.
func exposeApp(t *testing.T, c *cluster, d *device, httpPort int, body string) string {
	t.Helper()
	app := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, body)
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go app.Serve(ln)
	t.Cleanup(func() { app.Close() })
	out := strings.TrimSpace(c.mustBeam(d.args("expose", strconv.Itoa(ln.Addr().(*net.TCPAddr).Port), "--bg")...))
	host := strings.TrimPrefix(out, "http://")
	host, _, _ = strings.Cut(host, ":")
	waitFor(t, 10*time.Second, "the route answers at the edge", func() bool {
		code, got, err := getRoute(httpPort, host, "/")
		return err == nil && code == 200 && got == body
	})
	return host
}

// TestIdleConnectionFlood floods the edge of a beam server whose open
// files limit is 2,048 with 3,000 idle connections (half a request header
// each) from 30 loopback addresses. The edge's caps keep descriptors for
// the rest of the process: the coordinator answers within a second, a
// device stays online with its route and another joins, and the edge
// serves the route again once the flood ends.
func TestIdleConnectionFlood(t *testing.T) {
	const nofile = 2048
	c, httpPort := startDevServerWith(t, nofile)
	pid := c.coord.Process.Pid
	alpha, beta := c.device("alpha"), c.device("beta")
	alpha.mustUp()
	host := exposeApp(t, c, alpha, httpPort, "hello from alpha")
	t.Logf("before the flood: the server holds %d open files", openFiles(t, pid))

	var flood idleFlood
	defer flood.close()
	t0 := time.Now()
	dialed := flood.open(t, "127.0.0.1:"+strconv.Itoa(httpPort), 3000, 30, 64, 20*time.Second)
	held := flood.held()
	files := openFiles(t, pid)
	t.Logf("flood: %d connections dialed from 30 addresses in %v, %d held open by the server, which holds %d open files (limit %d)",
		dialed, time.Since(t0).Round(time.Millisecond), held, files, nofile)
	if dialed <= nofile {
		t.Fatalf("the flood dialed %d connections, want more than the limit %d", dialed, nofile)
	}
	if files > nofile*3/4 {
		t.Errorf("the server holds %d open files under the flood, want at most %d (3/4 of its limit)", files, nofile*3/4)
	}
	if held == 0 {
		t.Errorf("the server held none of the flood's connections: the test did not load it")
	}

	// The coordinator answers within a second, and the devices keep going.
	for i := range 3 {
		start := time.Now()
		resp, err := (&http.Client{Timeout: 5 * time.Second}).Get(c.url + "/key")
		took := time.Since(start)
		if err != nil {
			t.Fatalf("GET /key under the flood (try %d): %v after %v", i, err, took)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 || took > time.Second {
			t.Errorf("GET /key under the flood: %d in %v, want 200 within 1s", resp.StatusCode, took)
		}
	}
	beta.mustUp()
	waitFor(t, 15*time.Second, "beta sees alpha online under the flood", func() bool {
		p := peerByName(beta.status(), "alpha")
		return p != nil && p.Online
	})
	if routes := c.mustBeam("admin", "--coordinator", c.url, "routes", "list"); !strings.Contains(routes, host) {
		t.Errorf("alpha's route is gone under the flood: %s", routes)
	}
	if flood.held() == 0 {
		t.Log("the flood's connections were already closed by the header timeout")
	}

	// The flood ends; everything works again.
	flood.close()
	waitFor(t, 20*time.Second, "the route answers after the flood", func() bool {
		code, got, err := getRoute(httpPort, host, "/")
		return err == nil && code == 200 && got == "hello from alpha"
	})
	if ok, why := ncEcho(beta, "alpha", echoServer(t), 10*time.Second); !ok {
		t.Fatalf("beta -> alpha after the flood: %s", why)
	}
}

// TestSlowBody sends a request body to a route at the edge one byte
// every 200 ms (a 2,000-byte body would take 400 s): with --body-timeout
// 2s the edge cuts it off within seconds.
func TestSlowBody(t *testing.T) {
	c, httpPort := startDevServerWith(t, 0, "--body-timeout", "2s")
	alpha := c.device("alpha")
	alpha.mustUp()
	host := exposeApp(t, c, alpha, httpPort, "took it")

	conn, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(httpPort))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST / HTTP/1.1\r\nHost: %s\r\nContent-Length: 2000\r\n\r\n", host)
	closed := make(chan string, 1)
	go func() {
		b, _ := io.ReadAll(conn)
		closed <- string(b)
	}()
	start := time.Now()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	sent := 0
	for {
		select {
		case got := <-closed:
			took := time.Since(start)
			t.Logf("the edge ended the slow body after %v and %d bytes: %.80q", took.Round(time.Millisecond), sent, got)
			if took > 15*time.Second {
				t.Errorf("the edge took %v to end a body sent at 5 bytes/s, want about 2s", took)
			}
			if strings.Contains(got, "took it") {
				t.Errorf("the app got the slow body: %q", got)
			}
			return
		case <-tick.C:
			if time.Since(start) > 30*time.Second {
				t.Fatalf("the edge still reads a body sent at 5 bytes/s after %v (%d bytes)", time.Since(start), sent)
			}
			if _, err := conn.Write([]byte{'x'}); err == nil {
				sent++
			}
		}
	}
}

// source returns the i-th of many loopback source addresses, from
// 127.0.2.1 on (never 127.0.0.1, where the test's devices are).
func source(i int) net.IP { return net.IPv4(127, 0, byte(2+i/250), byte(1+i%250)) }

// registrationFlood sends n registrations without an auth key, each with
// a new node key, from sources loopback addresses (source(first) on),
// and returns how many were answered with an approval code.
func registrationFlood(t *testing.T, coordURL string, first, sources, n int) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	clients := make([]*http.Client, sources)
	for i := range clients {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: source(first + i)}, Timeout: 5 * time.Second}
		tr := &http.Transport{DialContext: d.DialContext, MaxIdleConnsPerHost: 2}
		defer tr.CloseIdleConnections()
		clients[i] = &http.Client{Transport: tr}
	}
	jobs := make(chan int)
	var wg sync.WaitGroup
	var mu sync.Mutex
	coded := 0
	for range 16 {
		wg.Go(func() {
			for i := range jobs {
				cc, err := coordclient.New(coordclient.Options{ServerURL: coordURL, PrivateKey: key.NewNode(), HTTPClient: clients[i%sources]})
				if err != nil {
					t.Error(err)
					return
				}
				_, err = cc.Register(ctx, coordclient.RegisterParams{Hostname: fmt.Sprintf("flood-%d", i)})
				if errors.Is(err, coordclient.ErrNodeNotRegistered) && strings.Contains(err.Error(), "approval") {
					mu.Lock()
					coded++
					mu.Unlock()
				}
			}
		})
	}
feed:
	for i := range n {
		select {
		case jobs <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(jobs)
	wg.Wait()
	return coded
}

// TestRegistrationFlood fills the approval queue with registrations
// without an auth key, from one address and then from 200, and checks a
// person's beam up without a key still gets a code, survives a refill,
// and joins once approved.
func TestRegistrationFlood(t *testing.T) {
	c := newCluster(t)
	admin := coordclient.NewAdmin(c.url, c.token, nil)
	pending := func() int {
		t.Helper()
		p, err := admin.ListPending(t.Context())
		if err != nil {
			t.Fatalf("list pending registrations: %v", err)
		}
		return len(p)
	}

	t0 := time.Now()
	coded := registrationFlood(t, c.url, 0, 1, 1100)
	t.Logf("1,100 registrations from one address in %v: %d got a code, %d wait", time.Since(t0).Round(time.Millisecond), coded, pending())
	if n := pending(); n == 0 || n > 16 {
		t.Errorf("one address holds %d waiting registrations, want a few (1-16)", n)
	}

	t0 = time.Now()
	coded = registrationFlood(t, c.url, 1, 200, 1600)
	full := pending()
	t.Logf("1,600 registrations from 200 addresses in %v: %d got a code, %d wait", time.Since(t0).Round(time.Millisecond), coded, full)
	if full > 1024 {
		t.Errorf("%d registrations wait, want at most the queue's 1,024", full)
	}

	// A person's beam up without a key gets a code all the same...
	d := c.device("laptop")
	cmd, stdout, code := upAwaitingApproval(t, c, d, "90s")
	defer cmd.Process.Kill()

	// ...which a refill of the queue from the same 200 addresses does not
	// push out.
	coded = registrationFlood(t, c.url, 1, 200, 1600)
	t.Logf("refill: %d got a code, %d wait", coded, pending())
	c.mustBeam("admin", "nodes", "approve", code, "--coordinator", c.url)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("beam up after approval under the flood: %v", err)
	}
	if !strings.HasPrefix(stdout.String(), "laptop 100.64.") {
		t.Fatalf("beam up printed %q", stdout.String())
	}
}

// TestPasswordGuessing guesses the password of a basic-auth route (no
// rate limit) from one address for up to 3 s or 2,000 requests: after a
// few wrong passwords the edge answers 429 with Retry-After, while
// another address still gets in with the right password.
func TestPasswordGuessing(t *testing.T) {
	c, httpPort := startDevServer(t)
	alpha := c.device("alpha")
	alpha.mustUp()
	app := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "secret page") })}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go app.Serve(ln)
	t.Cleanup(func() { app.Close() })
	c.mustBeam(alpha.args("expose", strconv.Itoa(ln.Addr().(*net.TCPAddr).Port), "--name", "vault", "--basic-auth", "admin:right-password", "--bg")...)
	edgeURL := fmt.Sprintf("http://127.0.0.1:%d/", httpPort)
	from := func(src net.IP) *http.Client {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: src}, Timeout: 5 * time.Second}
		return &http.Client{Transport: &http.Transport{DialContext: d.DialContext}, Timeout: 10 * time.Second}
	}
	try := func(hc *http.Client, pass string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest("GET", edgeURL, nil)
		req.Host = "vault.localhost"
		req.SetBasicAuth("admin", pass)
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("GET vault.localhost: %v", err)
		}
		defer resp.Body.Close()
		io.Copy(io.Discard, resp.Body)
		return resp.StatusCode, resp.Header.Get("Retry-After")
	}
	guesser, user := from(source(0)), from(source(1))
	waitFor(t, 10*time.Second, "the route asks for a password", func() bool {
		code, _ := try(user, "")
		return code == 401
	})

	// Each wrong password costs the edge a bcrypt check (beam expose
	// hashes the password), so guess until refused, by count: at most 40
	// guesses, or a minute on a loaded machine.
	codes := map[int]int{}
	retry := ""
	deadline := time.Now().Add(time.Minute)
	for i := 0; i < 40 && time.Now().Before(deadline); i++ {
		code, ra := try(guesser, fmt.Sprintf("guess-%d", i))
		codes[code]++
		if code == 429 {
			retry = ra
			if codes[429] >= 3 {
				break
			}
		}
	}
	t.Logf("wrong passwords from one address: %v (Retry-After %q)", codes, retry)
	if codes[401] > 20 {
		t.Errorf("%d wrong passwords were checked, want at most 20 before 429", codes[401])
	}
	if codes[429] == 0 || retry == "" {
		t.Errorf("no 429 with Retry-After for a guessing client: %v", codes)
	}
	if code, _ := try(guesser, "right-password"); code != 429 {
		t.Errorf("the guessing address with the right password: %d, want 429 until the lockout ends", code)
	}
	if code, _ := try(user, "right-password"); code != 200 {
		t.Errorf("another address with the right password: %d, want 200", code)
	}
}

// TestRelayVerifyNeedsRelayToken asks the coordinator whether node keys
// are registered, as an outsider: it learns nothing. A relay given the
// coordinator's relay token still admits the registered node and refuses
// an unknown key; one started without the token refuses to start.
// (TestRelayTokenRotation rotates the token.)
func TestRelayVerifyNeedsRelayToken(t *testing.T) {
	c := newCluster(t)
	key1 := strings.TrimSpace(c.mustBeam("admin", "authkey", "create", "--coordinator", c.url))
	alpha := c.device("alpha")
	alpha.mustUp("--authkey", key1)
	b, err := os.ReadFile(filepath.Join(alpha.state, "state.json"))
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		PrivateKey key.NodePrivate `json:"private_key"`
	}
	if err := json.Unmarshal(b, &st); err != nil || st.PrivateKey.IsZero() {
		t.Fatalf("alpha's node key: %v", err)
	}
	stranger := key.NewNode()

	// The outsider: the same refusal for a registered key and for any other.
	var answers []string
	for _, k := range []string{st.PrivateKey.Public().String(), stranger.Public().String()} {
		for _, auth := range []string{"", "Bearer " + strings.Repeat("x", 64)} {
			req, _ := http.NewRequest("GET", c.url+"/api/v1/derp/verify?key="+k, nil)
			if auth != "" {
				req.Header.Set("Authorization", auth)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusUnauthorized {
				t.Errorf("an outsider asked about %.20s (auth %q): %d %s, want 401", k, auth, resp.StatusCode, body)
			}
			answers = append(answers, string(body))
		}
	}
	for _, a := range answers[1:] {
		if a != answers[0] {
			t.Errorf("the outsider can tell keys apart: %q vs %q", answers[0], a)
		}
	}

	// A relay without the token does not start.
	_, errOut, err := c.beam(nil, "derp", "--addr", "127.0.0.1:0", "--stun-addr", "", "--state", filepath.Join(c.dir, "derp-x"), "--verify-clients", c.url)
	if err == nil || !strings.Contains(errOut, "--verify-token-file") {
		t.Errorf("beam derp --verify-clients without a token: err %v, stderr %q; want a refusal naming --verify-token-file", err, errOut)
	}

	// A relay with it admits alpha and refuses the stranger.
	addr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	logf, err := os.Create(filepath.Join(c.dir, "derp.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(c.bin, "derp", "--addr", addr, "--stun-addr", "", "--state", filepath.Join(c.dir, "derp"),
		"--verify-clients", c.url, "--verify-token-file", filepath.Join(c.dir, "coord", "relay.token"))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	logf.Close()
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	waitFor(t, 10*time.Second, "relay answers", func() bool {
		resp, err := http.Get("http://" + addr + "/generate_204")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return true
	})
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
	defer cancel()
	dc, err := derp.Dial(ctx, "http://"+addr, st.PrivateKey, derp.ClientOptions{})
	if err != nil {
		b, _ := os.ReadFile(filepath.Join(c.dir, "derp.log"))
		t.Fatalf("alpha's key at the verifying relay: %v\nrelay log:\n%s", err, b)
	}
	dc.Close()
	if _, err := derp.Dial(ctx, "http://"+addr, stranger, derp.ClientOptions{}); !errors.Is(err, derp.ErrRefused) {
		t.Errorf("a stranger's key at the verifying relay: %v, want refused", err)
	}
}

// TestBadFlagsRefused starts each role of the real binary with a bad
// flag: it exits at once with one line naming the flag, never a panic.
func TestBadFlagsRefused(t *testing.T) {
	bin := buildBeam(t)
	dir := t.TempDir()
	for _, args := range [][]string{
		{"server", "--domain", "a..b", "--data", filepath.Join(dir, "srv"), "--addr", "127.0.0.1:0", "--http-addr", "", "--https-addr", "", "--stun-addr", "", "--dns-addr", "127.0.0.1:0"},
		{"server", "--dev", "--data", filepath.Join(dir, "srv"), "--tcp-ports", "30000-20000"},
		{"coordinator", "--data", filepath.Join(dir, "coord"), "--addr", "127.0.0.1:0", "--edge-domain", "-x.test"},
		{"derp", "--state", filepath.Join(dir, "derp"), "--addr", "127.0.0.1:65536"},
		{"edge", "--state", filepath.Join(dir, "edge"), "--socket", filepath.Join(dir, "edge.sock"), "--coordinator", "http://127.0.0.1:1", "--domain", "a..b"},
		{"up", "--state", filepath.Join(dir, "node"), "--socket", filepath.Join(dir, "node.sock"), "--coordinator", "http://127.0.0.1:1", "--socks5", "0.0.0.0:1080"},
	} {
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
		timedOut := ctx.Err() != nil
		cancel()
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		if err == nil || timedOut || strings.Contains(string(out), "panic") || len(lines) != 1 || !strings.HasPrefix(lines[0], "beam: bad --") {
			t.Errorf("beam %s: err %v, output %q; want a one-line refusal naming the flag", strings.Join(args, " "), err, out)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "node", "daemon.pid")); err == nil {
		t.Error("beam up with a bad flag started a daemon")
	}
}

// TestRelayIdleFlood floods a beam derp whose open files limit is 512
// with 1,000 idle connections from 20 loopback addresses: the relay stays
// within its descriptors, two clients connected before the flood keep
// relaying to each other, and new clients connect once it ends.
func TestRelayIdleFlood(t *testing.T) {
	const nofile = 512
	bin, dir := buildBeam(t), t.TempDir()
	addr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	logf, err := os.Create(filepath.Join(dir, "derp.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sh", "-c", `ulimit -n "$0" && exec "$@"`, strconv.Itoa(nofile), bin, "derp", "--addr", addr, "--stun-addr", "", "--state", filepath.Join(dir, "derp"))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	logf.Close()
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(dir, "derp.log"))
			t.Logf("relay log:\n%s", b)
		}
	})
	relayURL := "http://" + addr
	waitFor(t, 10*time.Second, "relay answers", func() bool {
		resp, err := http.Get(relayURL + "/generate_204")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return true
	})
	dialRelay := func() (*derp.Client, key.NodePrivate) {
		t.Helper()
		k := key.NewNode()
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		dc, err := derp.Dial(ctx, relayURL, k, derp.ClientOptions{})
		if err != nil {
			t.Fatalf("connect to the relay: %v", err)
		}
		t.Cleanup(func() { dc.Close() })
		return dc, k
	}
	a, _ := dialRelay()
	b, bKey := dialRelay()
	relays := relayProbe(t, a, b, bKey)
	relays("before the flood")

	var flood idleFlood
	defer flood.close()
	dialed := flood.open(t, addr, 1000, 20, 32, 20*time.Second)
	files := openFiles(t, cmd.Process.Pid)
	t.Logf("flood: %d connections dialed from 20 addresses, %d held open by the relay, which holds %d open files (limit %d)", dialed, flood.held(), files, nofile)
	if dialed <= nofile {
		t.Fatalf("the flood dialed %d connections, want more than the limit %d", dialed, nofile)
	}
	if files > nofile*7/8 {
		t.Errorf("the relay holds %d open files under the flood, want at most %d", files, nofile*7/8)
	}
	relays("under the flood")

	flood.close()
	waitFor(t, 20*time.Second, "a new client connects after the flood", func() bool {
		ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
		defer cancel()
		dc, err := derp.Dial(ctx, relayURL, key.NewNode(), derp.ClientOptions{})
		if err != nil {
			return false
		}
		dc.Close()
		return true
	})
}

// relayProbe starts reading b's packets and returns a check that a
// packet from a reaches b (bKey) through the relay within 10 s: it sends
// what every 200 ms until b receives it.
func relayProbe(t *testing.T, a, b *derp.Client, bKey key.NodePrivate) func(what string) {
	got := make(chan string, 16)
	go func() {
		for {
			m, err := b.Recv()
			if err != nil {
				return
			}
			if p, ok := m.(derp.ReceivedPacket); ok {
				got <- string(p.Data)
			}
		}
	}()
	return func(what string) {
		t.Helper()
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		deadline := time.After(10 * time.Second)
		for {
			if err := a.Send(bKey.Public(), []byte(what)); err != nil {
				t.Fatalf("%s: send: %v", what, err)
			}
			select {
			case s := <-got:
				if s == what {
					return
				}
			case <-tick.C:
			case <-deadline:
				t.Fatalf("%s: no packet relayed in 10s", what)
			}
		}
	}
}
