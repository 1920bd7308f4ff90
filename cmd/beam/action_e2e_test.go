package main

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// runnerFile reads a GitHub runner command file (GITHUB_OUTPUT,
// GITHUB_STATE): NAME<<DELIM, the value's lines, DELIM.
func runnerFile(t *testing.T, path string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	vals := map[string]string{}
	lines := strings.Split(string(b), "\n")
	for i := 0; i < len(lines); i++ {
		name, delim, ok := strings.Cut(lines[i], "<<")
		if !ok {
			continue
		}
		var v []string
		for i++; i < len(lines) && lines[i] != delim; i++ {
			v = append(v, lines[i])
		}
		vals[name] = strings.Join(v, "\n")
	}
	return vals
}

// TestGitHubAction runs the action's main and post steps (action.yml) as
// the runner does, with node, against a dev server: main joins with an auth
// key and publishes a port, whose URL it outputs and which answers through
// the edge; post deregisters the node and stops the daemon.
func TestGitHubAction(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatalf("node runs the action: %v", err)
	}
	c, _ := startDevServer(t)
	key := strings.TrimSpace(c.mustBeam("admin", "authkey", "create", "--coordinator", c.url, "--expiry", "1h"))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	app := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "hello from the runner")
	})}
	go app.Serve(ln)
	t.Cleanup(func() { app.Close() })
	port := ln.Addr().(*net.TCPAddr).Port

	temp := t.TempDir()
	output, state := filepath.Join(temp, "output"), filepath.Join(temp, "state")
	d := &device{c: c, name: "gha-test", state: filepath.Join(temp, "beam-state")}
	t.Cleanup(d.kill)
	env := append(os.Environ(),
		"RUNNER_TEMP="+temp, "GITHUB_OUTPUT="+output, "GITHUB_STATE="+state,
		"INPUT_SERVER="+c.url, "INPUT_AUTHKEY="+key, "INPUT_PORT="+strconv.Itoa(port),
		"INPUT_HOSTNAME=gha-test", "INPUT_NAME=", "INPUT_VERSION=latest", "INPUT_BINARY="+c.bin)
	step := func(script string, env []string) string {
		t.Helper()
		cmd := exec.Command(node, filepath.Join("..", "..", "action", script))
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		if err != nil {
			logb, _ := os.ReadFile(filepath.Join(d.state, "beam.log"))
			t.Fatalf("node %s: %v\n%s\ndaemon log:\n%s", script, err, out, logb)
		}
		return string(out)
	}
	start := time.Now()
	out := step("main.js", env)
	if !strings.Contains(out, "::add-mask::"+key) {
		t.Errorf("main.js does not mask the auth key:\n%s", out)
	}
	outputs := runnerFile(t, output)
	url := outputs["url"]
	if !strings.HasPrefix(url, "http://gha-test.localhost:") || outputs["hostname"] != "gha-test" {
		t.Fatalf("outputs %v, want url http://gha-test.localhost:PORT and hostname gha-test\n%s", outputs, out)
	}
	t.Logf("main step: joined and published %s in %v", url, time.Since(start).Round(time.Millisecond))
	var body string
	waitFor(t, 15*time.Second, "the published port answers at "+url, func() bool {
		body, err = curl(t, "-f", url+"/")
		return err == nil
	})
	if !strings.Contains(body, "hello from the runner") {
		t.Errorf("%s answered %q", url, body)
	}

	saved := runnerFile(t, state)
	postEnv := append(os.Environ(), "STATE_beam="+saved["beam"], "STATE_state="+saved["state"])
	step("post.js", postEnv)
	if _, err := os.Stat(filepath.Join(d.state, "daemon.pid")); err == nil {
		t.Error("post.js left the daemon running")
	}
	if nodes := c.mustBeam("admin", "nodes", "list", "--coordinator", c.url); strings.Contains(nodes, "gha-test") {
		t.Errorf("post.js left the node registered:\n%s", nodes)
	}
	if _, err := curl(t, "-f", url+"/"); err == nil {
		t.Errorf("%s still answers after post.js", url)
	}
}
