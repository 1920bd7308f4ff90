//go:build unix

package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"beam.dev/beam/internal/release"
)

// npxBeam is a running `npx beam PORT` in its own process group (npx,
// npm's shell, the launcher and beam): its stdout's first line is the URL.
type npxBeam struct {
	cmd    *exec.Cmd
	lines  chan string
	stderr *strings.Builder
}

func startNPX(t *testing.T, dir string, env []string, args ...string) *npxBeam {
	t.Helper()
	cmd := exec.Command("npx", append([]string{"--offline", "--no-install", "beam"}, args...)...)
	cmd.Dir, cmd.Env = dir, env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	n := &npxBeam{cmd: cmd, lines: make(chan string, 100), stderr: &strings.Builder{}}
	cmd.Stderr = &lockedWriter{w: n.stderr}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(n.lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			n.lines <- sc.Text()
		}
	}()
	t.Cleanup(func() { n.stop(t) })
	return n
}

// url waits for the first line beam prints.
func (n *npxBeam) url(t *testing.T, d time.Duration) string {
	t.Helper()
	select {
	case l, ok := <-n.lines:
		if ok {
			return l
		}
	case <-time.After(d):
	}
	t.Fatalf("npx beam printed no URL within %v; stderr:\n%s", d, n.stderr)
	return ""
}

// stop sends Ctrl-C's SIGINT to the process group, as a terminal does,
// waits, and kills what is left.
func (n *npxBeam) stop(t *testing.T) {
	if n.cmd.Process == nil || n.cmd.ProcessState != nil {
		return
	}
	pg := -n.cmd.Process.Pid
	syscall.Kill(pg, syscall.SIGINT)
	done := make(chan struct{})
	go func() { n.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		t.Errorf("npx beam did not exit within 15s of SIGINT")
	}
	syscall.Kill(pg, syscall.SIGKILL)
	<-done
}

type lockedWriter struct {
	mu chan struct{}
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	if l.mu == nil {
		l.mu = make(chan struct{}, 1)
	}
	l.mu <- struct{}{}
	defer func() { <-l.mu }()
	return l.w.Write(p)
}

// TestNPX builds the npm packages as `make npm` does (the launcher and
// this platform's package), packs them with npm pack, installs the
// tarballs into an empty directory with no registry (npm --offline, an
// empty cache, a registry address nothing listens on), and runs what
// users run: `npx beam version`; `npx beam PORT` with nothing set up (a
// local dev server and a loopback URL); and `npx beam PORT` with
// BEAM_SERVER naming a dev server (beam up, then beam expose). It logs
// the time from the install to the URL.
func TestNPX(t *testing.T) {
	if _, err := exec.LookPath("npm"); err != nil {
		t.Fatalf("npm is needed to test the npm packages: %v", err)
	}
	host := release.Platform{GOOS: runtime.GOOS, GOARCH: runtime.GOARCH}
	bin := buildBeam(t)
	dir := t.TempDir()
	bins := filepath.Join(dir, "bins")
	if err := os.MkdirAll(bins, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(bin, filepath.Join(bins, host.BinaryName())); err != nil {
		t.Fatal(err)
	}
	pkgs, err := release.WriteNPM(release.NPMOptions{
		Launcher: filepath.Join("..", "..", "npm", "beam"), Binaries: bins,
		Platforms: []release.Platform{host}, Version: "v1.2.3", OutDir: filepath.Join(dir, "pkgs"),
	})
	if err != nil {
		t.Fatal(err)
	}
	home := filepath.Join(dir, "home")
	env := append(os.Environ(),
		"HOME="+home, "XDG_RUNTIME_DIR=", "XDG_CONFIG_HOME=", "XDG_STATE_HOME=",
		"BEAM_SERVER=", "BEAM_COORDINATOR=", "BEAM_AUTHKEY=",
		"BEAM_STATE="+filepath.Join(dir, "state"), "BEAM_SOCKET="+filepath.Join(dir, "beamd.sock"),
		"npm_config_cache="+filepath.Join(dir, "npm-cache"),
		"npm_config_registry=http://127.0.0.1:"+strconv.Itoa(freePort(t))+"/",
		"npm_config_update_notifier=false", "npm_config_fund=false", "npm_config_audit=false")
	npm := func(wd string, args ...string) string {
		t.Helper()
		cmd := exec.Command("npm", args...)
		cmd.Dir, cmd.Env = wd, env
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("npm %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	tgz := filepath.Join(dir, "tgz")
	if err := os.MkdirAll(tgz, 0o755); err != nil {
		t.Fatal(err)
	}
	var tarballs []string
	for _, p := range pkgs {
		name := strings.TrimSpace(npm(p, "pack", "--silent", "--pack-destination", tgz))
		tarballs = append(tarballs, filepath.Join(tgz, name))
	}
	if got, want := filepath.Base(tarballs[0]), "beam-1.2.3.tgz"; got != want {
		t.Errorf("the launcher packs as %s, want %s", got, want)
	}

	proj := filepath.Join(dir, "proj")
	if err := os.MkdirAll(proj, 0o755); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	npm(proj, append([]string{"install", "--offline"}, tarballs...)...)
	t.Logf("npm install from the tarballs: %v", time.Since(start).Round(time.Millisecond))
	want, err := exec.Command(bin, "version").Output()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("npx", "--offline", "--no-install", "beam", "version")
	cmd.Dir, cmd.Env = proj, env
	if out, err := cmd.CombinedOutput(); err != nil || string(out) != string(want) {
		t.Errorf("npx beam version = %q, %v; want %q", out, err, want)
	}

	app, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "hello from port 3000's stand-in")
	})}
	go srv.Serve(app)
	t.Cleanup(func() { srv.Close() })
	port := strconv.Itoa(app.Addr().(*net.TCPAddr).Port)
	get := func(url string) {
		t.Helper()
		var body string
		waitFor(t, 15*time.Second, url+" answers", func() bool {
			body, err = curl(t, "-f", url+"/")
			return err == nil
		})
		if !strings.Contains(body, "port 3000's stand-in") {
			t.Errorf("%s answered %q", url, body)
		}
	}

	// Nothing set up: a local dev server in the beam process.
	local := startNPX(t, proj, env, port)
	url := local.url(t, 60*time.Second)
	t.Logf("npx beam %s with nothing set up: %s, %v after the install began", port, url, time.Since(start).Round(time.Millisecond))
	if !strings.HasPrefix(url, "http://") || !strings.Contains(url, ".localhost:") {
		t.Errorf("npx beam %s printed %q, want a loopback http://NAME.localhost:PORT URL", port, url)
	}
	get(url)
	local.stop(t)
	if s := local.stderr.String(); !strings.Contains(s, "For a public URL") || !strings.Contains(s, "BEAM_SERVER=") {
		t.Errorf("npx beam %s does not say how to get a public URL:\n%s", port, s)
	}

	// BEAM_SERVER names a server: beam up to it, then beam expose.
	c, _ := startDevServer(t)
	d := &device{c: c, name: "npx", state: filepath.Join(dir, "state"), socket: filepath.Join(dir, "beamd.sock")}
	t.Cleanup(d.kill)
	remote := startNPX(t, proj, append(env, "BEAM_SERVER="+c.url), port)
	url = remote.url(t, 60*time.Second)
	t.Logf("npx beam %s with BEAM_SERVER: %s", port, url)
	if !strings.HasPrefix(url, "http://") || !strings.Contains(url, ".localhost:") {
		t.Errorf("npx beam %s printed %q, want the dev server's http://NAME.localhost:PORT URL", port, url)
	}
	get(url)
	if st := d.status(); st.Coordinator != c.url || st.State != "Running" {
		t.Errorf("after npx beam %s the daemon is %s on %q, want Running on %s", port, st.State, st.Coordinator, c.url)
	}
	remote.stop(t)
	// The edge hears of the withdrawal through its stream, a moment after
	// beam expose has exited.
	waitFor(t, 10*time.Second, url+" gone after Ctrl-C", func() bool {
		_, err := curl(t, "-f", url+"/")
		return err != nil
	})
}
