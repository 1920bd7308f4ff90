package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	mathrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"beam.dev/beam/localapi/apitype"
)

// The end-to-end tests run the real beam binary: a coordinator and daemons
// started by `beam up`, all on loopback.

var (
	buildOnce sync.Once
	beamBin   string
	buildErr  error
)

// buildBeam builds the beam binary once per test run, as every release
// ships it: static, without cgo (a cgo build maps the C library as well,
// 1.4 MiB more resident in every daemon).
func buildBeam(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "beam-e2e-bin-")
		if err != nil {
			buildErr = err
			return
		}
		beamBin = filepath.Join(dir, "beam")
		cmd := exec.Command("go", "build", "-o", beamBin, ".")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		out, err := cmd.CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return beamBin
}

func TestMain(m *testing.M) {
	// Every daemon a test starts forwards names outside the overlay to
	// this loopback stub, never to the host's resolvers.
	stop, err := startUpstreamStub()
	if err != nil {
		fmt.Fprintln(os.Stderr, "upstream stub:", err)
		os.Exit(1)
	}
	code := m.Run()
	stop()
	if beamBin != "" {
		os.RemoveAll(filepath.Dir(beamBin))
	}
	os.Exit(code)
}

// cluster is a coordinator and the daemons of one test.
type cluster struct {
	t     testing.TB
	bin   string
	dir   string
	url   string
	addr  string
	token string
	coord *exec.Cmd
	// coordArgs are extra flags of beam coordinator.
	coordArgs []string
}

func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// freePortRange returns "FIRST-LAST", n loopback ports of network ("tcp"
// or "udp") that were all free a moment ago, for a server's edge port
// range: the default range would be shared by every server a test run
// starts at once (the edge binds a route's port when it is published).
func freePortRange(t testing.TB, network string, n int) string {
	t.Helper()
	// Below the kernel's ephemeral ports: a range that is free now but
	// among them is soon some other test's outgoing connection, and the
	// edge then cannot listen on the port it hands out.
	lo, hi := nonEphemeral()
	for range 100 {
		first := lo + mathrand.IntN(hi-lo-n)
		free := true
		for p := first; p < first+n && free; p++ {
			addr := "127.0.0.1:" + strconv.Itoa(p)
			var c io.Closer
			var err error
			if network == "udp" {
				c, err = net.ListenPacket("udp", addr)
			} else {
				c, err = net.Listen("tcp", addr)
			}
			if err != nil {
				free = false
				continue
			}
			c.Close()
		}
		if free {
			return fmt.Sprintf("%d-%d", first, first+n-1)
		}
	}
	t.Fatalf("no %d free %s ports in a row", n, network)
	return ""
}

// nonEphemeral returns a window [lo, hi) of ports that the kernel does
// not give outgoing connections (net.ipv4.ip_local_port_range): below
// its range or above it, whichever is larger, at most 20000 ports.
func nonEphemeral() (lo, hi int) {
	first, last := 32768, 60999
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			a, err1 := strconv.Atoi(f[0])
			z, err2 := strconv.Atoi(f[1])
			if err1 == nil && err2 == nil && a <= z {
				first, last = a, z
			}
		}
	}
	below := [2]int{max(1024, first-20000), first}
	above := [2]int{last + 1, min(65536, last+1+20000)}
	if above[1]-above[0] > below[1]-below[0] {
		below = above
	}
	if below[1]-below[0] < 1000 { // nothing sensible: the whole range
		return 20000, 60000
	}
	return below[0], below[1]
}

func newCluster(t *testing.T) *cluster { return newClusterTB(t) }

// newClusterTB starts a coordinator for a test or benchmark, with extra
// beam coordinator flags coordArgs.
func newClusterTB(t testing.TB, coordArgs ...string) *cluster {
	c := &cluster{t: t, bin: buildBeam(t), dir: t.TempDir(), coordArgs: coordArgs}
	c.addr = "127.0.0.1:" + strconv.Itoa(freePort(t))
	c.url = "http://" + c.addr
	c.startCoordinator()
	tok, err := os.ReadFile(filepath.Join(c.dir, "coord", "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	c.token = strings.TrimSpace(string(tok))
	if fi, err := os.Stat(filepath.Join(c.dir, "coord", "admin.token")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("admin.token mode = %v, %v; want 0600", fi.Mode().Perm(), err)
	}
	return c
}

func (c *cluster) startCoordinator() {
	t := c.t
	logf, err := os.OpenFile(filepath.Join(c.dir, "coord.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(c.bin, append([]string{"coordinator", "--addr", c.addr, "--data", filepath.Join(c.dir, "coord")}, c.coordArgs...)...)
	cmd.Env = append(os.Environ(), "XDG_RUNTIME_DIR="+c.dir) // its discovery file stays in the test
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	logf.Close()
	c.coord = cmd
	t.Cleanup(func() { c.stopCoordinator() })
	deadline := time.Now().Add(15 * time.Second)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		if resp, err := http.Get(c.url + "/key"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after 15s waiting for the coordinator on %s to answer /key; its log ends:\n%s", c.addr, logTail(filepath.Join(c.dir, "coord.log")))
		}
		<-tick.C
	}
}

// logTail returns the last few KB of the log file at path, for a failure
// message.
func logTail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

func (c *cluster) stopCoordinator() {
	if c.coord == nil {
		return
	}
	c.coord.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { c.coord.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		c.coord.Process.Kill()
		<-done
	}
	c.coord = nil
}

// beam runs the binary and returns stdout, stderr and the error.
func (c *cluster) beam(env []string, args ...string) (string, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.bin, args...)
	cmd.Env = append(os.Environ(), "BEAM_ADMIN_TOKEN="+c.token)
	cmd.Env = append(cmd.Env, env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	return out.String(), errb.String(), err
}

func (c *cluster) mustBeam(args ...string) string {
	c.t.Helper()
	out, errOut, err := c.beam(nil, args...)
	if err != nil {
		c.t.Fatalf("beam %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, out, errOut)
	}
	return out
}

// device is one daemon instance.
type device struct {
	c      *cluster
	name   string
	state  string
	socket string
}

func (c *cluster) device(name string) *device {
	d := &device{c: c, name: name, state: filepath.Join(c.dir, name), socket: filepath.Join(c.dir, name+".sock")}
	c.t.Cleanup(d.kill)
	return d
}

func (d *device) args(args ...string) []string {
	return append([]string{"--socket", d.socket, "--state", d.state}, args...)
}

func (d *device) up(extra ...string) (string, string, error) {
	args := d.args(append([]string{"up", "--coordinator", d.c.url, "--hostname", d.name}, extra...)...)
	return d.c.beam(nil, args...)
}

func (d *device) mustUp(extra ...string) string {
	d.c.t.Helper()
	out, errOut, err := d.up(extra...)
	if err != nil {
		logb, _ := os.ReadFile(filepath.Join(d.state, "beam.log"))
		d.c.t.Fatalf("beam up %s: %v\nstdout: %s\nstderr: %s\ndaemon log:\n%s", d.name, err, out, errOut, logb)
	}
	return out
}

func (d *device) status() *apitype.Status {
	d.c.t.Helper()
	out := d.c.mustBeam(d.args("status", "--json")...)
	var st apitype.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		d.c.t.Fatalf("status json: %v\n%s", err, out)
	}
	return &st
}

// kill stops the daemon by the PID it recorded (a daemon this test started).
func (d *device) kill() {
	b, err := os.ReadFile(filepath.Join(d.state, "daemon.pid"))
	if err != nil {
		return
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		return
	}
	p, err := os.FindProcess(pid)
	if err != nil {
		return
	}
	p.Signal(syscall.SIGTERM)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if p.Signal(syscall.Signal(0)) != nil {
			return
		}
		if _, err := os.Stat(filepath.Join(d.state, "daemon.pid")); err != nil {
			// The daemon removes its pid file as it exits; give it a moment to finish.
			waitFor(d.c.t, 5*time.Second, "daemon exit", func() bool { return p.Signal(syscall.Signal(0)) != nil })
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	p.Kill()
}

func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		<-tick.C
	}
}

// echoServer serves TCP echo on host loopback and returns its port.
func echoServer(t testing.TB) int {
	return tcpServer(t, func(c net.Conn) { io.Copy(c, c) })
}

// tcpServer serves each connection to a host loopback port with handle,
// which the connection is closed after, and returns the port.
func tcpServer(t testing.TB, handle func(net.Conn)) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				handle(c)
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port
}

func TestEndToEndSession(t *testing.T) {
	c := newCluster(t)
	key := strings.TrimSpace(c.mustBeam("admin", "authkey", "create", "--coordinator", c.url, "--reusable", "--expiry", "1h"))
	if key == "" || strings.ContainsAny(key, " \n") {
		t.Fatalf("authkey create printed %q, want only the key", key)
	}
	socksPort, dnsPort := freePort(t), freePort(t)
	alpha, beta := c.device("alpha"), c.device("beta")
	out := alpha.mustUp("--authkey", key, "--socks5", "127.0.0.1:"+strconv.Itoa(socksPort), "--dns-listen", "127.0.0.1:"+strconv.Itoa(dnsPort))
	if !strings.HasPrefix(out, "alpha 100.64.") {
		t.Fatalf("beam up alpha printed %q, want name and IPs", out)
	}
	beta.mustUp("--authkey", key)

	// status: alpha sees beta online.
	var betaIP string
	waitFor(t, 10*time.Second, "alpha sees beta online", func() bool {
		st := alpha.status()
		for _, p := range st.Peers {
			if p.Name == "beta" && p.Online && len(p.IPs) > 0 {
				betaIP = p.IPs[0].String()
				return true
			}
		}
		return false
	})
	st := alpha.status()
	if st.Self == nil || st.Self.Name != "alpha" || !strings.HasSuffix(st.Self.DNSName, ".") || len(st.Self.IPs) != 2 {
		t.Fatalf("alpha self = %+v", st.Self)
	}
	if !strings.HasPrefix(betaIP, "100.64.") {
		t.Fatalf("beta's IPv4 = %q, want 100.64.x.y", betaIP)
	}

	// Names: beam ip, beam dns query, dig against the daemon's loopback listener.
	if got := strings.TrimSpace(c.mustBeam(alpha.args("ip", "-4", "beta")...)); got != betaIP {
		t.Fatalf("beam ip -4 beta = %q, want %s", got, betaIP)
	}
	if got := c.mustBeam(alpha.args("dns", "query", "beta")...); !strings.Contains(got, "NOERROR") || !strings.Contains(got, betaIP) {
		t.Fatalf("beam dns query beta = %q", got)
	}
	if _, _, err := c.beam(nil, alpha.args("dns", "query", "nosuch."+st.DNSDomain)...); err == nil {
		t.Fatal("beam dns query of an unknown name exited 0")
	}
	if got := c.mustBeam(alpha.args("dns", "status")...); !strings.Contains(got, st.DNSDomain) || !strings.Contains(got, "100.100.100.100") {
		t.Fatalf("beam dns status = %q", got)
	}
	dig, err := exec.Command("dig", "+short", "+time=2", "+tries=2", "-p", strconv.Itoa(dnsPort), "@127.0.0.1", "beta."+st.DNSDomain).Output()
	if err != nil || strings.TrimSpace(string(dig)) != betaIP {
		t.Fatalf("dig beta via --dns-listen = %q, %v; want %s", dig, err, betaIP)
	}

	// beam nc by name reaches beta's host loopback port.
	port := echoServer(t)
	cmd := exec.Command(c.bin, alpha.args("nc", "beta", strconv.Itoa(port))...)
	cmd.Stdin = strings.NewReader("hi\n")
	got, err := cmd.Output()
	if err != nil || string(got) != "hi\n" {
		t.Fatalf("beam nc beta: %q, %v; want %q", got, err, "hi\n")
	}
	// Once traffic flowed, the path is direct.
	waitFor(t, 10*time.Second, "direct path to beta with a handshake", func() bool {
		for _, p := range alpha.status().Peers {
			if p.Name == "beta" && p.Path == "direct" && !p.LastHandshake.IsZero() && p.TxBytes > 0 {
				return true
			}
		}
		return false
	})

	// SOCKS5 with curl, by MagicDNS short name.
	hsrv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hello from beta") })}
	hln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go hsrv.Serve(hln)
	t.Cleanup(func() { hsrv.Close() })
	hport := hln.Addr().(*net.TCPAddr).Port
	curl, err := exec.Command("curl", "-sS", "--max-time", "20", "--socks5-hostname", "127.0.0.1:"+strconv.Itoa(socksPort),
		fmt.Sprintf("http://beta:%d/", hport)).CombinedOutput()
	if err != nil || string(curl) != "hello from beta" {
		t.Fatalf("curl through SOCKS5: %q, %v", curl, err)
	}

	// A port with nothing listening: refused cleanly, non-zero exit, one line.
	_, errOut, err := c.beam(nil, alpha.args("nc", "beta", strconv.Itoa(freePort(t)))...)
	if err == nil || strings.Count(strings.TrimSpace(errOut), "\n") != 0 || !strings.Contains(errOut, "refused") {
		t.Fatalf("nc to a closed port: err=%v stderr=%q; want one line saying refused", err, errOut)
	}

	// Restart beta's daemon: same name and IPs without an auth key.
	before := beta.status().Self
	beta.kill()
	out = beta.mustUp()
	after := beta.status().Self
	if after.Name != before.Name || fmt.Sprint(after.IPs) != fmt.Sprint(before.IPs) {
		t.Fatalf("after restart self = %s %v, want %s %v (up printed %q)", after.Name, after.IPs, before.Name, before.IPs, out)
	}

	// A taken hostname gets the next free name, and the user is told.
	beta2 := c.device("beta")
	beta2.state, beta2.socket = filepath.Join(c.dir, "beta-dup"), filepath.Join(c.dir, "beta-dup.sock")
	out, errOut, err = beta2.up("--authkey", key)
	if err != nil || !strings.HasPrefix(out, "beta-2 ") || !strings.Contains(errOut, "taken") {
		t.Fatalf("duplicate hostname: out=%q stderr=%q err=%v; want beta-2 and a note", out, errOut, err)
	}

	// Removing a node: peers drop it within seconds.
	c.mustBeam("admin", "nodes", "remove", "beta-2", "--coordinator", c.url)
	waitFor(t, 5*time.Second, "alpha drops beta-2", func() bool {
		for _, p := range alpha.status().Peers {
			if p.Name == "beta-2" {
				return false
			}
		}
		return true
	})
	waitFor(t, 5*time.Second, "removed node needs login", func() bool {
		return beta2.status().State == apitype.StateNeedsLogin
	})
}

func TestEndToEndBadInput(t *testing.T) {
	c := newCluster(t)
	d := c.device("gamma")
	_, errOut, err := d.up("--authkey", "beam-authkey-wrong")
	if err == nil {
		t.Fatal("beam up with a wrong auth key succeeded")
	}
	if lines := strings.Split(strings.TrimSpace(errOut), "\n"); len(lines) != 1 || !strings.HasPrefix(lines[0], "beam: ") {
		t.Fatalf("wrong key: stderr %q, want one readable line", errOut)
	}
	// A one-off key works once.
	key := strings.TrimSpace(c.mustBeam("admin", "authkey", "create", "--coordinator", c.url))
	d.mustUp("--authkey", key)
	d2 := c.device("delta")
	if _, errOut, err := d2.up("--authkey", key); err == nil {
		t.Fatalf("one-off key used twice succeeded (stderr %q)", errOut)
	}
	// Coordinator unreachable.
	d3 := c.device("eps")
	_, errOut, err = c.beam(nil, d3.args("up", "--coordinator", "http://127.0.0.1:1", "--authkey", key, "--timeout", "10s")...)
	if err == nil || !strings.Contains(strings.ToLower(errOut), "unreachable") && !strings.Contains(strings.ToLower(errOut), "refused") {
		t.Fatalf("unreachable coordinator: err=%v stderr=%q", err, errOut)
	}
	// Admin API without the token.
	cmd := exec.Command(c.bin, "admin", "nodes", "list", "--coordinator", c.url)
	cmd.Env = append(os.Environ(), "BEAM_ADMIN_TOKEN=wrong")
	if out, err := cmd.CombinedOutput(); err == nil {
		t.Fatalf("admin with a wrong token succeeded: %s", out)
	}
}

// TestEndToEndCoordinatorRestart moves data between two devices while the
// coordinator is stopped and started again: the transfer completes and the
// nodes resync afterwards.
func TestEndToEndCoordinatorRestart(t *testing.T) {
	c := newCluster(t)
	key := strings.TrimSpace(c.mustBeam("admin", "authkey", "create", "--coordinator", c.url, "--reusable"))
	a, b := c.device("alpha"), c.device("beta")
	a.mustUp("--authkey", key)
	b.mustUp("--authkey", key)
	waitFor(t, 10*time.Second, "alpha sees beta", func() bool {
		for _, p := range a.status().Peers {
			if p.Name == "beta" && p.Online {
				return true
			}
		}
		return false
	})

	// beta's host runs a sink that hashes what it receives and answers with the hash.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		h := sha256.New()
		io.Copy(h, conn)
		fmt.Fprintf(conn, "%x", h.Sum(nil))
	}()
	const size = 32 << 20
	data := bytes.Repeat([]byte("beam-transfer-0123456789abcdef\n"), size/32)
	want := fmt.Sprintf("%x", sha256.Sum256(data))

	cmd := exec.Command(c.bin, a.args("nc", "beta", strconv.Itoa(ln.Addr().(*net.TCPAddr).Port))...)
	pr, pw := io.Pipe()
	cmd.Stdin = pr
	var out bytes.Buffer
	cmd.Stdout = &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	writeDone := make(chan error, 1)
	go func() {
		half := len(data) / 2
		_, err := pw.Write(data[:half])
		if err == nil {
			c.stopCoordinator() // mid-transfer
			_, err = pw.Write(data[half:])
		}
		pw.Close()
		writeDone <- err
	}()
	if err := <-writeDone; err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("nc: %v", err)
	}
	if out.String() != want {
		t.Fatalf("checksum %q, want %q", out.String(), want)
	}
	if st := a.status(); st.CoordinatorOnline {
		t.Fatal("status says the coordinator is online while it is stopped")
	}
	c.startCoordinator()
	waitFor(t, 30*time.Second, "alpha resyncs with the coordinator", func() bool {
		return a.status().CoordinatorOnline
	})
	// A node that joins after the restart is seen by alpha: the stream resynced.
	g := c.device("gamma")
	g.mustUp("--authkey", key)
	waitFor(t, 10*time.Second, "alpha sees gamma", func() bool {
		for _, p := range a.status().Peers {
			if p.Name == "gamma" {
				return true
			}
		}
		return false
	})
}
