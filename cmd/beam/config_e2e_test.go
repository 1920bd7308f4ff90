package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"beam.dev/beam/localapi/apitype"
)

// startConfigServer runs beam server --config with a file holding the
// given HuJSON body and the extra flags, and returns a cluster pointing at
// it. It waits for the coordinator to answer at addr.
func startConfigServer(t *testing.T, body string, addr string, extra ...string) (*cluster, string) {
	c := &cluster{t: t, bin: buildBeam(t), dir: t.TempDir()}
	c.addr = addr
	c.url = "http://" + c.addr
	cfg := filepath.Join(c.dir, "server.hujson")
	if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(c.dir, "server.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(c.bin, append([]string{"server", "--config", cfg}, extra...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), "XDG_RUNTIME_DIR="+c.dir)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	logf.Close()
	c.coord = cmd
	t.Cleanup(func() {
		c.stopCoordinator()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("server log:\n%s", b)
		}
	})
	waitFor(t, 20*time.Second, "coordinator answers /key", func() bool {
		resp, err := http.Get(c.url + "/key")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	return c, cfg
}

// TestServerConfigFile starts beam server from a config file (one setting
// overridden by a flag), joins a device, and publishes two routes at
// once with beam expose --config: both answer through the edge, and
// Ctrl-C withdraws both.
func TestServerConfigFile(t *testing.T) {
	dir := t.TempDir()
	addr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	httpPort := freePort(t)
	unused := freePort(t) // the file's http_addr, which the flag replaces
	body := fmt.Sprintf(`{
		// a dev server on free loopback ports
		"dev": true,
		"data": %q,
		"addr": %q,
		"http_addr": "127.0.0.1:%d",
		"stun_addr": "127.0.0.1:%d",
		"tcp_ports": %q,
		"udp_ports": %q,
		"log_level": "info",
	}`, filepath.Join(dir, "srv"), addr, unused, freePort(t), freePortRange(t, "tcp", 10), freePortRange(t, "udp", 10))
	c, _ := startConfigServer(t, body, addr, "--http-addr", "127.0.0.1:"+strconv.Itoa(httpPort))
	waitFor(t, 20*time.Second, "edge answers on the flag's port", func() bool {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/", httpPort))
		if err != nil {
			return false
		}
		resp.Body.Close()
		return true
	})
	if _, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", unused), time.Second); err == nil {
		t.Errorf("the file's http_addr 127.0.0.1:%d answers; the flag should have replaced it", unused)
	}

	alpha := c.device("alpha")
	alpha.mustUp()
	app := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "app at %s", r.Host)
	})}
	aln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go app.Serve(aln)
	t.Cleanup(func() { app.Close() })
	appPort := aln.Addr().(*net.TCPAddr).Port
	echo := echoServer(t)
	tunnels := filepath.Join(dir, "beam.hujson")
	os.WriteFile(tunnels, []byte(fmt.Sprintf(`{
		"tunnels": {
			"web": {"port": %d, "basic_auth": ["u:p"]},
			"echo": {"target": "localhost:%d", "tcp": true},
		},
	}`, appPort, echo)), 0o600)

	cmd := exec.Command(c.bin, alpha.args("expose", "--config", tunnels, "--json")...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{}) // closed when cmd has exited, waitErr set
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		select {
		case <-exited:
		default:
			cmd.Process.Kill()
			<-exited
		}
	})
	// One JSON line per tunnel, in label order.
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	got := map[string]apitype.ExposeResponse{}
	timeout := time.After(60 * time.Second)
	for len(got) < 2 {
		var line string
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("expose --config ended after %d tunnels (stderr %s)", len(got), stderr.String())
			}
			line = l
		case <-timeout:
			t.Fatalf("expose --config printed %d tunnels in 60s (stderr %s)", len(got), stderr.String())
		}
		var r struct {
			Tunnel string `json:"tunnel"`
			apitype.ExposeResponse
		}
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("expose --config printed %q: %v (stderr %s)", line, err, stderr.String())
		}
		got[r.Tunnel] = r.ExposeResponse
	}
	go func() {
		for range lines {
		}
	}()
	web, echoRoute := got["web"], got["echo"]
	if want := fmt.Sprintf("http://web.localhost:%d", httpPort); web.URL != want {
		t.Fatalf("web URL %q, want %q (stderr %s)", web.URL, want, stderr.String())
	}
	if echoRoute.Proto != "tcp" || echoRoute.PublicPort == 0 {
		t.Fatalf("echo route %+v, want tcp with a public port", echoRoute)
	}

	// Both answer through the edge.
	waitFor(t, 10*time.Second, "web route asks for credentials", func() bool {
		code, _ := curl(t, "-o", "/dev/null", "-w", "%{http_code}", web.URL+"/")
		return code == "401"
	})
	if body, err := curl(t, "-u", "u:p", web.URL+"/"); err != nil || body != "app at web.localhost:"+strconv.Itoa(httpPort) {
		t.Fatalf("web with credentials: %q, %v", body, err)
	}
	var echoed string
	waitFor(t, 10*time.Second, "echo route answers", func() bool {
		conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", echoRoute.PublicPort), 2*time.Second)
		if err != nil {
			return false
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(3 * time.Second))
		fmt.Fprint(conn, "ping\n")
		line, err := bufio.NewReader(conn).ReadString('\n')
		echoed = line
		return err == nil
	})
	if echoed != "ping\n" {
		t.Fatalf("echo through the edge: %q", echoed)
	}

	// Ctrl-C withdraws both routes.
	cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-exited:
		if waitErr != nil {
			t.Fatalf("expose --config after Ctrl-C: %v (stderr %s)", waitErr, stderr.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("expose --config did not exit on Ctrl-C")
	}
	var routes []apitype.Route
	if err := json.Unmarshal([]byte(c.mustBeam(alpha.args("expose", "list", "--json")...)), &routes); err != nil || len(routes) != 0 {
		t.Fatalf("after Ctrl-C, routes = %+v, %v; want none", routes, err)
	}
}

// TestServerConfigReload sends a running beam server SIGHUP: a file with
// an unknown key, then a policy file that does not parse, are refused
// and the server keeps serving with its config; a good file reloads the
// log level, the policy and the edge's limits, and names the setting
// that needs a restart.
func TestServerConfigReload(t *testing.T) {
	dir := t.TempDir()
	addr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	policy := filepath.Join(dir, "policy.hujson")
	os.WriteFile(policy, []byte(`{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}`), 0o600)
	tcpPorts, udpPorts := freePortRange(t, "tcp", 2), freePortRange(t, "udp", 2)
	body := func(extra string) string {
		return fmt.Sprintf(`{
			"dev": true, "data": %q, "addr": %q, "http_addr": "127.0.0.1:0", "stun_addr": "127.0.0.1:0",
			"tcp_ports": %q, "udp_ports": %q, "policy_file": %q,
			%s
		}`, filepath.Join(dir, "srv"), addr, tcpPorts, udpPorts, policy, extra)
	}
	c, cfg := startConfigServer(t, body(`"log_level": "info",`), addr)
	logPath := filepath.Join(c.dir, "server.log")
	logHas := func(what string, n int) {
		t.Helper()
		waitFor(t, 15*time.Second, fmt.Sprintf("%d× %q in the server log", n, what), func() bool {
			b, _ := os.ReadFile(logPath)
			return strings.Count(string(b), what) >= n
		})
	}
	hup := func() {
		t.Helper()
		if err := c.coord.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
	}
	serves := func() {
		t.Helper()
		resp, err := http.Get(c.url + "/key")
		if err != nil {
			t.Fatalf("after a refused reload the server does not answer: %v", err)
		}
		resp.Body.Close()
	}

	os.WriteFile(cfg, []byte(body(`"log_levle": "debug",`)), 0o600)
	hup()
	logHas("config reload refused", 1)
	logHas(`unknown key \"log_levle\"`, 1)
	serves()

	os.WriteFile(cfg, []byte(body(`"log_level": "debug",`)), 0o600)
	os.WriteFile(policy, []byte(`{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:nope"]}]}`), 0o600)
	hup()
	logHas("config reload refused", 2)
	serves()
	if b, _ := os.ReadFile(logPath); strings.Contains(string(b), "level=DEBUG") {
		t.Fatal("the log level of a refused reload took effect")
	}

	os.WriteFile(policy, []byte(`{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:22"]}]}`), 0o600)
	os.WriteFile(cfg, []byte(body(`"log_level": "debug", "edge_max_conns": 50, "public_url": "http://127.0.0.1:1",`)), 0o600)
	hup()
	logHas("config reloaded", 1)
	logHas("reloaded=\"[edge_max_conns log_level policy_file]\" needs_restart=[public_url]", 1)
	serves()
	tok, err := os.ReadFile(filepath.Join(dir, "srv", "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	c.token = strings.TrimSpace(string(tok))
	if got := c.mustBeam("admin", "--coordinator", c.url, "policy", "get"); !strings.Contains(got, "*:22") {
		t.Errorf("policy after reload:\n%s\nwant the file's *:22", got)
	}
}

// TestDaemonConfigReload runs beam daemon --config as a process (the
// proxies serve before it joins a network): its
// SOCKS5 proxy moves to the address a reloaded file gives, and a file
// with a bad value is refused with the proxy left where it is.
func TestDaemonConfigReload(t *testing.T) {
	c := newCluster(t)
	d := c.device("alpha")
	cfg := filepath.Join(c.dir, "daemon.hujson")
	portA, portB := freePort(t), freePort(t)
	write := func(body string) {
		if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(fmt.Sprintf(`{"socks5": "127.0.0.1:%d", "hostname": "alpha", "log_level": "info"}`, portA))
	logPath := filepath.Join(c.dir, "daemon.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(c.bin, d.args("daemon", "--config", cfg)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	logf.Close()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("daemon log:\n%s", b)
		}
	})
	waitFor(t, 15*time.Second, "daemon started", func() bool {
		b, _ := os.ReadFile(logPath)
		return strings.Contains(string(b), "daemon started")
	})
	listens := func(port int) bool {
		conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second)
		if err != nil {
			return false
		}
		conn.Close()
		return true
	}
	waitFor(t, 15*time.Second, "SOCKS5 proxy on the file's address", func() bool { return listens(portA) })
	logHas := func(what string, n int) {
		t.Helper()
		waitFor(t, 15*time.Second, fmt.Sprintf("%d× %q in the daemon log", n, what), func() bool {
			b, _ := os.ReadFile(logPath)
			return strings.Count(string(b), what) >= n
		})
	}

	write(`{"socks5": "0.0.0.0:1080"}`)
	cmd.Process.Signal(syscall.SIGHUP)
	logHas("config reload refused", 1)
	if !listens(portA) {
		t.Fatal("after a refused reload, the proxy left its address")
	}

	write(fmt.Sprintf(`{"socks5": "127.0.0.1:%d", "hostname": "alpha", "log_level": "info"}`, portB))
	cmd.Process.Signal(syscall.SIGHUP)
	logHas("config reloaded", 1)
	waitFor(t, 15*time.Second, "SOCKS5 proxy on the reloaded address, not the old one", func() bool { return listens(portB) && !listens(portA) })
	if st := d.status(); st.State == "" {
		t.Errorf("after the reload the daemon does not answer its status: %+v", st)
	}
}
