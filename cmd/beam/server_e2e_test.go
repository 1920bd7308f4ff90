package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"beam.dev/beam/localapi/apitype"
)

// startDevServer runs `beam server --dev` on free loopback ports and
// returns a cluster pointing at it and the edge's HTTP port.
func startDevServer(t testing.TB) (*cluster, int) { return startDevServerWith(t, 0) }

// startDevServerWith is startDevServer with the server's open files
// limit (soft and hard) set to nofile, if not 0, and extra flags.
func startDevServerWith(t testing.TB, nofile int, extra ...string) (*cluster, int) {
	c := &cluster{t: t, bin: buildBeam(t), dir: t.TempDir()}
	c.addr = "127.0.0.1:" + strconv.Itoa(freePort(t))
	c.url = "http://" + c.addr
	httpPort := freePort(t)
	logf, err := os.Create(filepath.Join(c.dir, "server.log"))
	if err != nil {
		t.Fatal(err)
	}
	args := append([]string{"server", "--dev", "--data", filepath.Join(c.dir, "srv"), "--addr", c.addr,
		"--http-addr", "127.0.0.1:" + strconv.Itoa(httpPort), "--stun-addr", "127.0.0.1:" + strconv.Itoa(freePort(t)),
		"--tcp-ports", freePortRange(t, "tcp", 10), "--udp-ports", freePortRange(t, "udp", 10)}, extra...)
	cmd := exec.Command(c.bin, args...)
	if nofile != 0 {
		// The shell sets the limit and becomes beam (exec): one process.
		cmd = exec.Command("sh", append([]string{"-c", `ulimit -n "$0" && exec "$@"`, strconv.Itoa(nofile), c.bin}, args...)...)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), "XDG_RUNTIME_DIR="+c.dir) // its discovery file stays in the test
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	logf.Close()
	c.coord = cmd
	t.Cleanup(func() {
		c.stopCoordinator()
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(c.dir, "server.log"))
			t.Logf("server log:\n%s", b)
		}
	})
	waitFor(t, 20*time.Second, "edge answers", func() bool {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/", httpPort))
		if err != nil {
			return false
		}
		resp.Body.Close()
		return true
	})
	tok, err := os.ReadFile(filepath.Join(c.dir, "srv", "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	c.token = strings.TrimSpace(string(tok))
	return c, httpPort
}

// getVia fetches url with curl, which resolves *.localhost to loopback as
// browsers do.
func curl(t *testing.T, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command("curl", append([]string{"-sS", "--max-time", "15"}, args...)...).CombinedOutput()
	return string(out), err
}

func TestServerDevExpose(t *testing.T) {
	c, httpPort := startDevServer(t)
	alpha := c.device("alpha")
	// From loopback, dev mode needs no auth key.
	alpha.mustUp()

	app := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from the app, xff=%s", r.Header.Get("X-Forwarded-For"))
	})}
	aln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go app.Serve(aln)
	t.Cleanup(func() { app.Close() })
	appPort := aln.Addr().(*net.TCPAddr).Port

	out := strings.TrimSpace(c.mustBeam(alpha.args("expose", strconv.Itoa(appPort), "--bg")...))
	want := fmt.Sprintf("http://alpha.localhost:%d", httpPort)
	if out != want {
		t.Fatalf("beam expose printed %q, want %q", out, want)
	}
	body, err := curl(t, want+"/")
	if err != nil || !strings.HasPrefix(body, "hello from the app, xff=127.0.0.1") {
		t.Fatalf("curl %s: %q, %v", want, body, err)
	}
	var routes []apitype.Route
	if err := json.Unmarshal([]byte(c.mustBeam(alpha.args("expose", "list", "--json")...)), &routes); err != nil || len(routes) != 1 || routes[0].Port != uint16(appPort) {
		t.Fatalf("expose list = %+v, %v", routes, err)
	}

	// A second route, named, with basic auth; nothing listens yet: 502
	// with a helpful page, and a warning at expose time.
	idle := freePort(t)
	_, errOut, err := c.beam(nil, alpha.args("expose", strconv.Itoa(idle), "--name", "later", "--basic-auth", "u:p", "--bg")...)
	if err != nil || !strings.Contains(errOut, "nothing is listening") {
		t.Fatalf("expose idle port: err=%v stderr=%q", err, errOut)
	}
	laterURL := fmt.Sprintf("http://later.localhost:%d/", httpPort)
	// The edge learns new routes from the coordinator's stream, within a second.
	waitFor(t, 5*time.Second, "later route at the edge, asking for credentials", func() bool {
		code, _ := curl(t, "-o", "/dev/null", "-w", "%{http_code}", laterURL)
		return code == "401"
	})
	if body, _ := curl(t, "-u", "u:p", "-w", "\n%{http_code}", laterURL); !strings.HasSuffix(body, "502") || !strings.Contains(body, "nothing is listening") {
		t.Fatalf("with credentials, app down: %q; want a 502 help page", body)
	}
	c.mustBeam(alpha.args("expose", "stop", "later")...)
	waitFor(t, 5*time.Second, "later route gone", func() bool {
		code, _ := curl(t, "-o", "/dev/null", "-w", "%{http_code}", laterURL)
		return code == "404"
	})

	// A raw TCP route: an echo server through the edge port.
	echo := echoServer(t)
	out = strings.TrimSpace(c.mustBeam(alpha.args("expose", "--tcp", strconv.Itoa(echo), "--bg")...))
	m := regexp.MustCompile(`^tcp://[^:]+:(\d+)$`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("tcp expose printed %q", out)
	}
	var conn net.Conn
	waitFor(t, 5*time.Second, "edge tcp port open", func() bool {
		conn, err = net.Dial("tcp", "127.0.0.1:"+m[1])
		return err == nil
	})
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprint(conn, "ping\n")
	line, err := bufio.NewReader(conn).ReadString('\n')
	conn.Close()
	if err != nil || line != "ping\n" {
		t.Fatalf("tcp route echo = %q, %v", line, err)
	}

	// Foreground expose: prints the URL, then one line per request, and
	// Ctrl-C removes the route.
	app2 := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "fg") })}
	ln2, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go app2.Serve(ln2)
	t.Cleanup(func() { app2.Close() })
	fg := exec.Command(c.bin, alpha.args("expose", strconv.Itoa(ln2.Addr().(*net.TCPAddr).Port), "--name", "fg")...)
	stdout, _ := fg.StdoutPipe()
	fg.Stderr = io.Discard
	if err := fg.Start(); err != nil {
		t.Fatal(err)
	}
	defer fg.Process.Kill()
	br := bufio.NewReader(stdout)
	urlLine, err := br.ReadString('\n')
	if err != nil || strings.TrimSpace(urlLine) != fmt.Sprintf("http://fg.localhost:%d", httpPort) {
		t.Fatalf("foreground expose first line %q, %v", urlLine, err)
	}
	// The watch stream may attach just after the URL is printed: retry the
	// request until its log line arrives.
	lines := make(chan string, 16)
	go func() {
		for {
			l, err := br.ReadString('\n')
			if err != nil {
				close(lines)
				return
			}
			lines <- l
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	var got string
	for got == "" {
		if body, err := curl(t, strings.TrimSpace(urlLine)+"/hello?x=1"); err != nil || body != "fg" {
			// The edge may not have the route yet.
			time.Sleep(100 * time.Millisecond)
			continue
		}
		select {
		case l := <-lines:
			got = l
		case <-time.After(500 * time.Millisecond):
		case <-ctx.Done():
			t.Fatal("no request line from foreground expose")
		}
	}
	if !strings.Contains(got, "GET") || !strings.Contains(got, "/hello?x=1") || !strings.Contains(got, "200") {
		t.Fatalf("request line %q", got)
	}
	fg.Process.Signal(syscall.SIGINT)
	if err := fg.Wait(); err != nil {
		t.Fatalf("foreground expose exit: %v", err)
	}
	waitFor(t, 5*time.Second, "route gone after Ctrl-C", func() bool {
		code, _ := curl(t, "-o", "/dev/null", "-w", "%{http_code}", strings.TrimSpace(urlLine)+"/")
		return code == "404"
	})
}

// upAwaitingApproval starts `beam up` without an auth key for d and
// returns it, its stdout, and the approval code it printed; the caller
// kills it when done.
func upAwaitingApproval(t *testing.T, c *cluster, d *device, timeout string) (*exec.Cmd, *strings.Builder, string) {
	t.Helper()
	cmd := exec.Command(c.bin, d.args("up", "--coordinator", c.url, "--hostname", d.name, "--timeout", timeout)...)
	stderr, _ := cmd.StderrPipe()
	stdout := new(strings.Builder)
	cmd.Stdout = stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(stderr)
	re := regexp.MustCompile(`beam admin nodes approve (\S+)`)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			cmd.Process.Kill()
			t.Fatalf("beam up without a key ended without printing an approval code: %v", err)
		}
		if m := re.FindStringSubmatch(line); m != nil {
			go io.Copy(io.Discard, br)
			return cmd, stdout, m[1]
		}
	}
}

func TestInteractiveApproval(t *testing.T) {
	c := newCluster(t)
	d := c.device("laptop")
	cmd, stdout, code := upAwaitingApproval(t, c, d, "60s")
	defer cmd.Process.Kill()
	c.mustBeam("admin", "nodes", "approve", code, "--coordinator", c.url)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("beam up after approval: %v", err)
	}
	if !strings.HasPrefix(stdout.String(), "laptop 100.64.") {
		t.Fatalf("beam up printed %q", stdout.String())
	}
	if st := d.status(); st.State != apitype.StateRunning {
		t.Fatalf("state %s after approval", st.State)
	}
}

// TestDemo runs the README's first command (beam demo) and checks it
// reached the app through the mesh and through the edge.
func TestDemo(t *testing.T) {
	bin := buildBeam(t)
	tmp := t.TempDir()
	cmd := exec.Command(bin, "demo", "--port", "0")
	cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("beam demo: %v\n%s", err, out)
	}
	for _, want := range []string{"mesh      alpha GET http://beta:", "Hello from beta's app! You asked for /mesh", "public    GET http://beta.localhost:", "You asked for /public via beta.localhost", "ok: the mesh and the edge work"} {
		if !strings.Contains(string(out), want) {
			t.Fatalf("beam demo output lacks %q:\n%s", want, out)
		}
	}
	// Its data goes with it: the server's edge node saved its state
	// after the directory was removed, which left it behind, before the
	// demo waited for the server to stop.
	if left, _ := os.ReadDir(tmp); len(left) > 0 {
		t.Errorf("beam demo left %d entries in the temporary directory, such as %s", len(left), left[0].Name())
	}
}

// TestExposeTCPSkipsHeldPort: beam server does not hand a tcp route a
// public port another program on its host listens on (the edge could not
// serve it); the route gets the next port of the range, and works.
func TestExposeTCPSkipsHeldPort(t *testing.T) {
	rng := freePortRange(t, "tcp", 3)
	first, _, _ := strings.Cut(rng, "-")
	held, err := net.Listen("tcp", ":"+first) // every address, as the edge listens
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	c, _ := startDevServerWith(t, 0, "--tcp-ports", rng)
	alpha := c.device("alpha")
	alpha.mustUp()
	echo := echoServer(t)
	out := strings.TrimSpace(c.mustBeam(alpha.args("expose", "--tcp", strconv.Itoa(echo), "--bg")...))
	m := regexp.MustCompile(`^tcp://[^:]+:(\d+)$`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("tcp expose printed %q", out)
	}
	if m[1] == first {
		t.Fatalf("route got public port %s, which another program holds", first)
	}
	var conn net.Conn
	waitFor(t, 5*time.Second, "edge tcp port open", func() bool {
		conn, err = net.Dial("tcp", "127.0.0.1:"+m[1])
		return err == nil
	})
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprint(conn, "ping\n")
	if line, err := bufio.NewReader(conn).ReadString('\n'); err != nil || line != "ping\n" {
		t.Fatalf("tcp route echo = %q, %v", line, err)
	}
}
