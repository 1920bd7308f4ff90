package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestEmbeddedHello runs examples/hello, a program that joins with
// package beamnet (no daemon), as its own process against the real beam
// server --dev: it prints its peer and public URLs, a device's beam nc
// reaches it by name, the public reaches it through the edge, and on
// Ctrl-C it exits at once and its public route goes.
func TestEmbeddedHello(t *testing.T) {
	c, httpPort := startDevServer(t)
	hello := filepath.Join(t.TempDir(), "hello")
	if out, err := exec.Command("go", "build", "-o", hello, "beam.dev/beam/examples/hello").CombinedOutput(); err != nil {
		t.Fatalf("go build examples/hello: %v\n%s", err, out)
	}
	// Dev mode: a program on the server's machine joins without an auth
	// key.
	cmd := exec.Command(hello, "-coordinator", c.url, "-state", filepath.Join(c.dir, "hello-state"), "-public")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	lines := make(chan string, 10)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		exited <- cmd.Wait()
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		if t.Failed() {
			t.Logf("hello's stderr:\n%s", stderr.String())
		}
	})

	publicURL := fmt.Sprintf("http://hello.localhost:%d/", httpPort)
	for _, re := range []*regexp.Regexp{
		regexp.MustCompile(`^joined as hello \(100\.\d+\.\d+\.\d+\)$`),
		regexp.MustCompile(`^peers: http://hello/$`),
		regexp.MustCompile(`^public: ` + regexp.QuoteMeta(publicURL) + `$`),
	} {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("hello exited before printing a line matching %s", re)
			}
			if !re.MatchString(l) {
				t.Fatalf("hello printed %q, want a line matching %s", l, re)
			}
		case <-time.After(60 * time.Second):
			t.Fatalf("no line matching %s from hello in 60s", re)
		}
	}

	// The public, through the edge.
	waitFor(t, 10*time.Second, "the edge serves "+publicURL, func() bool {
		code, _ := curl(t, "-o", "/dev/null", "-w", "%{http_code}", publicURL)
		return code == "200"
	})
	if body, err := curl(t, publicURL); err != nil || body != "hello 127.0.0.1, from hello via the edge\n" {
		t.Errorf("curl %s: %q, %v; want the greeting via the edge", publicURL, body, err)
	}

	// A device, by name, through its daemon.
	alpha := c.device("alpha")
	alpha.mustUp()
	nc := exec.Command(c.bin, alpha.args("nc", "hello", "80")...)
	nc.Stdin = strings.NewReader("GET / HTTP/1.0\r\nHost: hello\r\n\r\n")
	out, err := nc.CombinedOutput()
	if err != nil || !regexp.MustCompile(`(?s)^HTTP/1\.0 200 OK\r\n.*\r\n\r\nhello 100\.\d+\.\d+\.\d+:\d+, from hello\n$`).Match(out) {
		t.Errorf("beam nc hello 80: %q, %v; want the greeting for alpha's overlay address", out, err)
	}

	// Ctrl-C: the program closes its Server, which withdraws the route.
	start := time.Now()
	cmd.Process.Signal(syscall.SIGINT)
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("hello exited with %v after SIGINT, want 0", err)
		}
		t.Logf("hello exited %v after SIGINT", time.Since(start).Round(time.Millisecond))
	case <-time.After(15 * time.Second):
		t.Fatal("hello still running 15s after SIGINT")
	}
	// (A request that arrives before the edge has the news waits for its
	// dial to the device to time out: ask with a short timeout.)
	waitFor(t, 20*time.Second, "the route gone from the edge", func() bool {
		code, _ := curl(t, "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2", publicURL)
		return code == "404"
	})
	if fi, err := os.Stat(filepath.Join(c.dir, "hello-state", "state.json")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("hello's state file: %v, %v; want mode 0600", fi, err)
	}
}
