package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// The attacker's view of a real deployment: the coordinator's admin API,
// the daemon's local socket and loopback listeners, its WireGuard UDP port,
// auth keys raced by many clients, and the logs of everything.

// newDebugCluster is newCluster with the coordinator logging at debug
// level, so the secrets check sees everything it could print.
func newDebugCluster(t *testing.T) *cluster {
	c := &cluster{t: t, bin: buildBeam(t), dir: t.TempDir()}
	c.addr = "127.0.0.1:" + strconv.Itoa(freePort(t))
	c.url = "http://" + c.addr
	logf, err := os.OpenFile(filepath.Join(c.dir, "coord.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(c.bin, "coordinator", "--addr", c.addr, "--data", filepath.Join(c.dir, "coord"), "--log-level", "debug")
	cmd.Env = append(os.Environ(), "XDG_RUNTIME_DIR="+c.dir) // its discovery file stays in the test
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	logf.Close()
	c.coord = cmd
	t.Cleanup(c.stopCoordinator)
	waitFor(t, 15*time.Second, "coordinator answers /key", func() bool {
		resp, err := http.Get(c.url + "/key")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	tok, err := os.ReadFile(filepath.Join(c.dir, "coord", "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	c.token = strings.TrimSpace(string(tok))
	return c
}

// freeUDPPort returns a UDP port free on both loopback families.
func freeUDPPort(t *testing.T) int {
	t.Helper()
	for range 20 {
		pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := pc.LocalAddr().(*net.UDPAddr).Port
		pc6, err := net.ListenPacket("udp6", "[::1]:"+strconv.Itoa(port))
		pc.Close()
		if err == nil {
			pc6.Close()
			return port
		}
	}
	t.Fatal("no UDP port free on both 127.0.0.1 and ::1")
	return 0
}

// secrets collects every secret the test hands out, for the log check.
type secrets struct {
	mu   sync.Mutex
	list map[string]string // secret -> what it is
}

func (s *secrets) add(what, secret string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.list == nil {
		s.list = map[string]string{}
	}
	s.list[secret] = what
}

func TestAttackSweep(t *testing.T) {
	c := newDebugCluster(t)
	var sec secrets
	sec.add("admin token", c.token)
	newKey := func(args ...string) string {
		t.Helper()
		k := strings.TrimSpace(c.mustBeam(append([]string{"admin", "authkey", "create", "--coordinator", c.url}, args...)...))
		sec.add("auth key", k)
		return k
	}
	key := newKey("--reusable")

	// alpha serves every loopback listener; beta's WireGuard port is fixed.
	socksPort, proxyPort, dnsPort := freePort(t), freePort(t), freePort(t)
	pb := freeUDPPort(t)
	alpha, beta := c.device("alpha"), c.device("beta")
	alpha.socket = filepath.Join(c.dir, "run", "alpha", "beamd.sock")
	alpha.mustUp("--authkey", key, "--log-level", "debug",
		"--socks5", "127.0.0.1:"+strconv.Itoa(socksPort),
		"--http-proxy", "127.0.0.1:"+strconv.Itoa(proxyPort),
		"--dns-listen", "127.0.0.1:"+strconv.Itoa(dnsPort))
	betaUp := func() { beta.mustUp("--authkey", key, "--log-level", "debug", "--port", strconv.Itoa(pb)) }
	betaUp()
	waitFor(t, 10*time.Second, "alpha and beta see each other", func() bool {
		return peerByName(alpha.status(), "beta") != nil && peerByName(beta.status(), "alpha") != nil
	})
	echo := echoServer(t)
	bothWays := func(what string) {
		t.Helper()
		if ok, why := ncEcho(alpha, "beta", echo, 10*time.Second); !ok {
			t.Fatalf("%s: alpha -> beta: %s", what, why)
		}
		if ok, why := ncEcho(beta, "alpha", echo, 10*time.Second); !ok {
			t.Fatalf("%s: beta -> alpha: %s", what, why)
		}
	}
	bothWays("before the attacks")

	t.Run("AdminAPI", func(t *testing.T) { attackAdminAPI(t, c) })
	t.Run("LocalSocket", func(t *testing.T) { attackLocalSocket(t, alpha) })
	t.Run("LoopbackListeners", func(t *testing.T) {
		attackLoopbackListeners(t, c, beta, echo, socksPort, proxyPort, dnsPort)
	})
	t.Run("WireGuardPort", func(t *testing.T) {
		attackWireGuardPort(t, alpha, beta, pb, echo, betaUp)
		bothWays("after garbage and replays")
	})
	t.Run("SingleUseKeyRace", func(t *testing.T) { attackKeyRace(t, c, newKey()) })
	t.Run("SecretsInLogs", func(t *testing.T) { attackSecretsInLogs(t, c, &sec) })
}

// adminRoute is one route of the admin API with a body to send.
type adminRoute struct {
	method, path, body string
}

func attackAdminAPI(t *testing.T, c *cluster) {
	routes := []adminRoute{
		{"POST", "/api/v1/authkeys", `{"reusable":true}`},
		{"GET", "/api/v1/authkeys", ""},
		{"DELETE", "/api/v1/authkeys/beamkey", ""},
		{"GET", "/api/v1/nodes", ""},
		{"DELETE", "/api/v1/nodes/alpha", ""},
		{"POST", "/api/v1/nodes/alpha/expire", ""},
		{"PUT", "/api/v1/nodes/alpha/expiry", `{"expiry":1000000000}`},
		{"GET", "/api/v1/users", ""},
		{"POST", "/api/v1/users", `{"name":"mallory"}`},
		{"DELETE", "/api/v1/users/alice", ""},
		{"GET", "/api/v1/policy", ""},
		{"PUT", "/api/v1/policy", `{"acls":[]}`},
		{"POST", "/api/v1/policy/check", `{"acls":[]}`},
		{"GET", "/api/v1/registrations", ""},
		{"POST", "/api/v1/registrations/ABCDEFGH/approve", `{"user":"mallory"}`},
		{"GET", "/api/v1/audit", ""},
		{"GET", "/api/v1/routes", ""},
		{"DELETE", "/api/v1/routes/alpha.example.test", ""},
		{"GET", "/api/v1/domains", ""},
		{"POST", "/api/v1/domains/example.test/verify", ""},
		{"PUT", "/api/v1/dns/txt/_acme-challenge.alpha", `{"values":["x"]}`},
		{"DELETE", "/api/v1/dns/txt/_acme-challenge.alpha", ""},
		{"GET", "/api/v1/dns/config", ""},
		{"PUT", "/api/v1/dns/config", `{"nameservers":["192.0.2.1"]}`},
		{"GET", "/api/v1/no-such-route", ""}, // unknown routes do not reveal themselves
	}
	tok := c.token
	random := make([]byte, 32)
	rand.Read(random)
	auths := map[string][]string{
		"none":                   nil,
		"empty":                  {""},
		"scheme only":            {"Bearer"},
		"scheme and space":       {"Bearer "},
		"token without scheme":   {tok},
		"right token, Basic":     {"Basic " + base64.StdEncoding.EncodeToString([]byte("admin:"+tok))},
		"double space":           {"Bearer  " + tok},
		"token plus a byte":      {"Bearer " + tok + "x"},
		"token minus a byte":     {"Bearer " + tok[:len(tok)-1]},
		"random token":           {"Bearer " + fmt.Sprintf("%x", random)},
		"huge token":             {"Bearer " + strings.Repeat("A", 16<<10)},
		"wrong first, right 2nd": {"Bearer wrong", "Bearer " + tok},
	}
	client := &http.Client{Timeout: 10 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	do := func(method, path, body string, auth []string) (int, string) {
		t.Helper()
		req, err := http.NewRequest(method, c.url+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		if body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		for _, a := range auth {
			req.Header.Add("Authorization", a)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		return resp.StatusCode, string(b)
	}
	// What a leak would look like: names, keys, the token, the policy.
	leaks := []string{"alpha", "beta", "nodekey:", "beamkey", tok, "acls", "100.64."}
	for name, auth := range auths {
		for _, r := range routes {
			code, body := do(r.method, r.path, r.body, auth)
			if code != http.StatusUnauthorized {
				t.Errorf("%s %s with %s auth: status %d, want 401 (body %.200q)", r.method, r.path, name, code, body)
			}
			if len(body) > 200 {
				t.Errorf("%s %s with %s auth: %d-byte body, want a short one", r.method, r.path, name, len(body))
			}
			for _, l := range leaks {
				if strings.Contains(body, l) {
					t.Errorf("%s %s with %s auth: body %.200q contains %q", r.method, r.path, name, body, l)
				}
			}
		}
	}
	// Paths that dodge the exact route spelling get nothing either.
	for _, p := range []string{"//api/v1/nodes", "/api/v1//nodes", "/api/v1/nodes/", "/api/v1/./nodes", "/api/v1/x/../nodes", "/API/V1/NODES", "/api/v1/nodes%2f"} {
		code, body := do("GET", p, "", nil)
		if code == http.StatusOK || strings.Contains(body, "alpha") || strings.Contains(body, "nodekey:") {
			t.Errorf("GET %s without a token: status %d body %.200q", p, code, body)
		}
	}
	// Nothing changed, and the right token still works (the sweep used
	// routes that exist).
	code, body := do("GET", "/api/v1/nodes", "", []string{"Bearer " + tok})
	if code != http.StatusOK || !strings.Contains(body, "alpha") {
		t.Fatalf("GET /api/v1/nodes with the token: %d %.200q", code, body)
	}
	if users := c.mustBeam("admin", "--coordinator", c.url, "users", "list"); strings.Contains(users, "mallory") {
		t.Errorf("a user was created without the token: %s", users)
	}
	var keys []json.RawMessage
	if err := json.Unmarshal([]byte(c.mustBeam("admin", "--coordinator", c.url, "authkey", "list", "--json")), &keys); err != nil || len(keys) != 1 {
		t.Errorf("auth keys after the sweep: %d (%v), want the 1 the test made", len(keys), err)
	}
	if pol := c.mustBeam("admin", "--coordinator", c.url, "policy", "get"); strings.Contains(pol, `{"acls":[]}`) {
		t.Errorf("the policy was replaced without the token: %s", pol)
	}
}

func attackLocalSocket(t *testing.T, d *device) {
	fi, err := os.Stat(d.socket)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket %s mode %v, want a 0600 socket", filepath.Base(d.socket), fi.Mode())
	}
	for _, dir := range []string{filepath.Dir(d.socket), d.state} {
		fi, err := os.Stat(dir)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm()&0o022 != 0 {
			t.Errorf("directory %s mode %v: writable by others", filepath.Base(dir), fi.Mode().Perm())
		}
	}
	fi, err = os.Stat(filepath.Join(d.state, "state.json"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("state.json: %v %v, want mode 0600", fi, err)
	}
}

// rawHTTP sends req on a new TCP connection to addr and returns what came
// back within the deadline.
func rawHTTP(t *testing.T, addr, req string) string {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Errorf("dial %s: %v", addr, err)
		return ""
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(2 * time.Second))
	io.WriteString(conn, req)
	b, _ := io.ReadAll(conn)
	return string(b)
}

// startRelay runs `beam derp` on loopback and returns its address.
func startRelay(t *testing.T, c *cluster) string {
	addr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	logf, err := os.Create(filepath.Join(c.dir, "derp.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(c.bin, "derp", "--addr", addr, "--stun-addr", "127.0.0.1:"+strconv.Itoa(freeUDPPort(t)),
		"--state", filepath.Join(c.dir, "derp"), "--log-level", "debug")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	logf.Close()
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	waitFor(t, 10*time.Second, "relay answers", func() bool {
		resp, err := http.Get("http://" + addr + "/generate_204")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return true
	})
	return addr
}

func attackLoopbackListeners(t *testing.T, c *cluster, beta *device, echo, socksPort, proxyPort, dnsPort int) {
	// A web app on beta's host, reached through alpha's HTTP proxy.
	const secret = "hello from beta's web app"
	app := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, secret) })}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go app.Serve(ln)
	t.Cleanup(func() { app.Close() })
	appPort := ln.Addr().(*net.TCPAddr).Port
	appURL := fmt.Sprintf("http://beta:%d/", appPort)
	proxyAddr := "127.0.0.1:" + strconv.Itoa(proxyPort)
	proxyURL := "http://" + proxyAddr

	// A peer: beta may open any port of alpha, which forwards it to the
	// same port of its host's loopback, but never to alpha's own
	// listeners, which would dial and resolve as alpha.
	playPeerAttacks(t, beta, "alpha", []peerAttack{
		{"SOCKS5 CONNECT", socksPort, socks5Connect("beta", appPort, "GET / HTTP/1.0\r\n\r\n")},
		{"HTTP CONNECT", proxyPort, []byte(fmt.Sprintf("CONNECT beta:%d HTTP/1.1\r\nHost: beta\r\n\r\n", appPort))},
		{"HTTP proxy request", proxyPort, []byte("GET " + appURL + " HTTP/1.1\r\nHost: beta\r\nConnection: close\r\n\r\n")},
		{"DNS over TCP", dnsPort, dnsTCPQuery(t, "beta")},
	})
	// Forwarding to alpha's other host ports still works.
	if ok, why := ncEcho(beta, "alpha", echo, 10*time.Second); !ok {
		t.Fatalf("beta -> alpha:%d after the attempts: %s", echo, why)
	}

	viaProxy := func(hdr map[string]string) (int, string) {
		t.Helper()
		tr := &http.Transport{Proxy: func(*http.Request) (*url.URL, error) { return url.Parse(proxyURL) }}
		defer tr.CloseIdleConnections()
		req, _ := http.NewRequest("GET", appURL, nil)
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := (&http.Client{Transport: tr, Timeout: 15 * time.Second}).Do(req)
		if err != nil {
			t.Fatalf("GET %s via the proxy: %v", appURL, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	// The proxy works for a host application...
	for _, hdr := range []map[string]string{nil, {"Origin": "http://127.0.0.1:3000"}, {"Referer": "http://localhost:8000/x"}} {
		if code, body := viaProxy(hdr); code != 200 || body != secret {
			t.Fatalf("proxy request with %v: %d %q, want 200 and the app", hdr, code, body)
		}
	}
	// ...but not for a web page of another site (CSRF through a
	// browser configured to use the proxy).
	for _, hdr := range []map[string]string{
		{"Origin": "http://evil.example"},
		{"Origin": "null"},
		{"Referer": "https://evil.example/page"},
		{"Origin": "http://127.0.0.1.evil.example"},
	} {
		if code, body := viaProxy(hdr); code < 400 || strings.Contains(body, secret) {
			t.Errorf("proxy request with %v: %d %q, want it refused", hdr, code, body)
		}
	}
	// CONNECT from another site's page is refused too.
	if got := rawHTTP(t, proxyAddr, "CONNECT beta:"+strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)+" HTTP/1.1\r\nHost: beta\r\nOrigin: http://evil.example\r\n\r\n"); !strings.HasPrefix(got, "HTTP/1.1 4") {
		t.Errorf("CONNECT with a foreign Origin: %.200q, want a 4xx", got)
	}
	// Requests in origin form (what DNS rebinding and CSRF produce) are
	// refused whatever their Host, Origin or Referer.
	for _, req := range []string{
		"GET / HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: " + proxyAddr + "\r\nOrigin: http://evil.example\r\nConnection: close\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: " + proxyAddr + "\r\nReferer: http://evil.example/\r\nConnection: close\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: evil.example:" + strconv.Itoa(proxyPort) + "\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
		"GET / HTTP/1.1\r\nHost: beta:" + strconv.Itoa(ln.Addr().(*net.TCPAddr).Port) + "\r\nConnection: close\r\n\r\n",
	} {
		if got := rawHTTP(t, proxyAddr, req); !strings.HasPrefix(got, "HTTP/1.1 4") || strings.Contains(got, secret) {
			t.Errorf("HTTP proxy, %q: got %.200q, want a 4xx", req, got)
		}
	}
	// The SOCKS5 and DNS listeners do not speak HTTP at all.
	rebind := "GET / HTTP/1.1\r\nHost: evil.example\r\nOrigin: http://evil.example\r\n\r\n"
	var wg sync.WaitGroup
	for name, port := range map[string]int{"socks5": socksPort, "dns": dnsPort} {
		wg.Go(func() {
			if got := rawHTTP(t, "127.0.0.1:"+strconv.Itoa(port), rebind); len(got) > 0 {
				t.Errorf("%s listener answered an HTTP request: %.200q", name, got)
			}
		})
	}
	wg.Wait()
	// The relay's stats: loopback clients only, and not to a browser page
	// (a foreign Host is DNS rebinding, a foreign Origin is CSRF).
	relay := startRelay(t, c)
	if got := rawHTTP(t, relay, "GET /derp/stats HTTP/1.1\r\nHost: "+relay+"\r\nConnection: close\r\n\r\n"); !strings.HasPrefix(got, "HTTP/1.1 200") || !strings.Contains(got, "{") {
		t.Fatalf("GET /derp/stats from loopback: %.300q, want 200 and JSON", got)
	}
	for _, req := range []string{
		"GET /derp/stats HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
		"GET /derp/stats HTTP/1.1\r\nHost: evil.example:" + relay[strings.LastIndex(relay, ":")+1:] + "\r\nConnection: close\r\n\r\n",
		"GET /derp/stats HTTP/1.1\r\nHost: " + relay + "\r\nOrigin: http://evil.example\r\nConnection: close\r\n\r\n",
		"GET /derp/stats HTTP/1.1\r\nHost: " + relay + "\r\nReferer: http://evil.example/\r\nConnection: close\r\n\r\n",
	} {
		if got := rawHTTP(t, relay, req); !strings.HasPrefix(got, "HTTP/1.1 4") || strings.Contains(got, "{") {
			t.Errorf("relay, %q: got %.300q, want a 4xx without stats", req, got)
		}
	}
}

// garbageDatagrams returns datagrams that look like WireGuard, disco or STUN but
// carry random or wrong contents, plus plain garbage.
func garbageDatagrams() [][]byte {
	rnd := func(n int) []byte {
		b := make([]byte, n)
		rand.Read(b)
		return b
	}
	typed := func(typ uint32, n int) []byte {
		b := rnd(n)
		binary.LittleEndian.PutUint32(b, typ)
		return b
	}
	stun := make([]byte, 20) // a STUN binding request
	binary.BigEndian.PutUint16(stun[0:], 0x0001)
	binary.BigEndian.PutUint32(stun[4:], 0x2112A442)
	copy(stun[8:], rnd(12))
	out := [][]byte{
		{}, {0}, {1, 0, 0, 0}, rnd(3), rnd(64), rnd(1400), rnd(65000),
		typed(1, 148), typed(1, 147), typed(1, 149), // handshake initiations
		typed(2, 92), typed(3, 64), // response and cookie reply naming random receivers
		typed(4, 32), typed(4, 1200), // transport data
		typed(4, 16), typed(5, 148), typed(0xffffffff, 100),
		stun,
		append([]byte("TS\xf0\x9f\x92\xac"), rnd(80)...), // a disco-style magic prefix
		append([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), rnd(8)...),
	}
	return out
}

func attackWireGuardPort(t *testing.T, alpha, beta *device, pb, echo int, betaUp func()) {
	// The port as alpha sees it.
	p := peerByName(alpha.status(), "beta")
	if p == nil || !strings.HasSuffix(p.Endpoint, ":"+strconv.Itoa(pb)) {
		t.Fatalf("alpha's view of beta = %+v, want the endpoint on port %d", p, pb)
	}
	targets := []string{"127.0.0.1:" + strconv.Itoa(pb), "[::1]:" + strconv.Itoa(pb)}

	// Capture what alpha sends beta's port: stop both, hold beta's port,
	// restart alpha (so it must handshake anew) and make it talk to beta.
	beta.kill()
	alpha.kill()
	// One socket per loopback family on beta's port.
	type datagram struct{ b []byte }
	got := make(chan datagram, 64)
	var readers sync.WaitGroup
	var socks []net.PacketConn
	for _, target := range targets {
		pc, err := net.ListenPacket("udp", target)
		if err != nil {
			t.Fatalf("hold beta's port %s: %v", target, err)
		}
		socks = append(socks, pc)
		readers.Go(func() {
			buf := make([]byte, 65536)
			for {
				n, _, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				select {
				case got <- datagram{bytes.Clone(buf[:n])}:
				default:
				}
			}
		})
	}
	alpha.mustUp()
	// Traffic for beta makes alpha handshake with beta's port.
	ctx, cancel := context.WithTimeout(t.Context(), 6*time.Second)
	defer cancel()
	nc := exec.CommandContext(ctx, alpha.c.bin, alpha.args("nc", "beta", strconv.Itoa(echo))...)
	nc.Stdin = strings.NewReader("hello?\n")
	if err := nc.Start(); err != nil {
		t.Fatal(err)
	}
	var captured [][]byte
	kinds := map[byte]int{}
	stop := time.After(5 * time.Second)
capture:
	for {
		select {
		case d := <-got:
			captured = append(captured, d.b)
			if len(d.b) > 0 {
				kinds[d.b[0]]++
				if d.b[0] == 1 && kinds[1] == 1 {
					// Take what else comes with the first handshake.
					stop = time.After(300 * time.Millisecond)
				}
			}
		case <-stop:
			break capture
		}
	}
	for _, pc := range socks {
		pc.Close()
	}
	readers.Wait()
	cancel()
	nc.Wait()
	t.Logf("captured %d datagrams from alpha to beta's port (by first byte: %v)", len(captured), kinds)
	if kinds[1] == 0 {
		t.Fatalf("captured no handshake initiation from alpha (%d datagrams)", len(captured))
	}

	// beta comes back on the same port; alpha reaches it with a fresh
	// handshake, newer than the captured ones.
	betaUp()
	waitFor(t, 20*time.Second, "alpha reaches the restarted beta", func() bool {
		ok, _ := ncEcho(alpha, "beta", echo, 3*time.Second)
		return ok
	})

	// The attacker: garbage, then each captured datagram three times, to
	// beta's port on both loopback families, from one socket.
	sent := 0
	var atks sync.WaitGroup
	for _, target := range targets {
		raddr, err := net.ResolveUDPAddr("udp", target)
		if err != nil {
			t.Fatal(err)
		}
		atk, err := net.ListenUDP("udp", &net.UDPAddr{IP: raddr.IP})
		if err != nil {
			t.Fatal(err)
		}
		defer atk.Close()
		for _, d := range garbageDatagrams() {
			if _, err := atk.WriteTo(d, raddr); err == nil {
				sent++
			}
		}
		for range 3 {
			for _, d := range captured {
				if _, err := atk.WriteTo(d, raddr); err == nil {
					sent++
				}
			}
		}
		atks.Go(func() {
			buf := make([]byte, 65536)
			atk.SetReadDeadline(time.Now().Add(2 * time.Second))
			n, from, err := atk.ReadFrom(buf)
			if err == nil {
				t.Errorf("beta answered the attacker at %s: %d bytes from %v: %x", target, n, from, buf[:min(n, 32)])
			} else if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
				t.Errorf("reading replies at %s: %v (want a timeout: no reply)", target, err)
			}
		})
	}
	atks.Wait()
	t.Logf("sent %d datagrams (garbage and replays) to %v, got no reply in 2s", sent, targets)
}

func attackKeyRace(t *testing.T, c *cluster, key string) {
	const n = 20
	devs := make([]*device, n)
	for i := range devs {
		devs[i] = c.device(fmt.Sprintf("racer-%02d", i))
	}
	type result struct {
		out, errOut string
		err         error
	}
	res := make([]result, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i, d := range devs {
		wg.Go(func() {
			<-start
			out, errOut, err := d.up("--authkey", key, "--log-level", "debug", "--timeout", "60s")
			res[i] = result{out, errOut, err}
		})
	}
	t0 := time.Now()
	close(start)
	wg.Wait()
	took := time.Since(t0)
	// Stop the racers' daemons now; they are many.
	var kw sync.WaitGroup
	for _, d := range devs {
		kw.Go(d.kill)
	}
	defer kw.Wait()
	joined := 0
	for i, r := range res {
		if r.err == nil {
			joined++
			if !strings.HasPrefix(r.out, fmt.Sprintf("racer-%02d 100.64.", i)) {
				t.Errorf("racer-%02d joined but printed %q", i, r.out)
			}
		} else if i == 0 {
			t.Logf("racer-%02d: %v %q", i, r.err, r.errOut)
		}
		if r.err != nil && strings.Count(strings.TrimSpace(r.errOut), "\n") != 0 {
			t.Errorf("racer-%02d refused with %q, want one line", i, r.errOut)
		}
	}
	var nodes []struct {
		Name string `json:"name"`
	}
	if err := json.Unmarshal([]byte(c.mustBeam("admin", "--coordinator", c.url, "nodes", "list", "--json")), &nodes); err != nil {
		t.Fatal(err)
	}
	registered := 0
	for _, nd := range nodes {
		if strings.HasPrefix(nd.Name, "racer-") {
			registered++
		}
	}
	t.Logf("%d concurrent beam up with one single-use key: %d joined, %d nodes registered, in %v", n, joined, registered, took.Round(time.Millisecond))
	if joined != 1 || registered != 1 {
		t.Fatalf("single-use key raced by %d: %d beam up succeeded, %d nodes registered; want exactly 1", n, joined, registered)
	}
}

func attackSecretsInLogs(t *testing.T, c *cluster, sec *secrets) {
	// Every node private key on disk.
	states, _ := filepath.Glob(filepath.Join(c.dir, "*", "state.json"))
	for _, p := range states {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		var st struct {
			PrivateKey string `json:"private_key"`
		}
		if err := json.Unmarshal(b, &st); err != nil || !strings.HasPrefix(st.PrivateKey, "privkey:") {
			t.Fatalf("%s: private_key %q, %v", p, st.PrivateKey, err)
		}
		sec.add("node private key of "+filepath.Base(filepath.Dir(p)), st.PrivateKey)
		sec.add("node private key (hex) of "+filepath.Base(filepath.Dir(p)), strings.TrimPrefix(st.PrivateKey, "privkey:"))
	}
	if len(states) < 3 {
		t.Fatalf("found %d state files, want alpha's, beta's and the racers'", len(states))
	}
	var logs []string
	filepath.WalkDir(c.dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(p, ".log") {
			logs = append(logs, p)
		}
		return nil
	})
	total, debug := 0, 0
	for _, p := range logs {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		total += len(b)
		debug += bytes.Count(b, []byte("level=DEBUG"))
		for s, what := range sec.list {
			if bytes.Contains(b, []byte(s)) {
				t.Errorf("%s appears in %s", what, strings.TrimPrefix(p, c.dir))
			}
		}
	}
	t.Logf("checked %d secrets against %d logs (%d bytes, %d debug lines)", len(sec.list), len(logs), total, debug)
	if len(logs) < 4 || debug == 0 {
		t.Fatalf("%d logs with %d debug lines: the check saw too little", len(logs), debug)
	}
}
