package natlab

import (
	"encoding/json"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"beam.dev/beam/beamtest/nslab"
	"beam.dev/beam/localapi/apitype"
)

// tunEdgePort is the edge's HTTP port in TestTUNModeExpose.
const tunEdgePort = 7080

// TestTUNModeExpose publishes a port of a TUN-mode device whose app
// listens on every address (0.0.0.0 and [::]): the device side of expose
// must still get the edge's connections (its listener on the overlay
// address cannot bind that port beside the app, so the TUN filter steers
// them to it), so a request through the edge is answered by the app
// through the device's relay (the app sees it from 127.0.0.1), and beam
// expose logs it. The edge enforces the route's basic auth.
func TestTUNModeExpose(t *testing.T) {
	const domain = "example.test"
	w := newWorld(t, worldConfig{edgeDomain: domain})
	ctx := t.Context()
	alpha := w.addTUNDevice("alpha", nslab.NATEasy)
	if err := alpha.ready(ctx); err != nil {
		t.Fatal(err)
	}
	if err := alpha.up(ctx); err != nil {
		t.Fatal(err)
	}

	eh := w.lab.AddServer("edge")
	key, err := w.srv.Run(ctx, w.bin, "admin", "authkey", "create", "--edge", "--coordinator", w.coordURL,
		"--token-file", filepath.Join(w.dir, "coord", "admin.token"))
	if err != nil {
		t.Fatalf("edge auth key: %v", err)
	}
	edgeHTTP := hostPort(eh.Addr(), tunEdgePort)
	eh.Start(ctx, w.bin, "--state", filepath.Join(w.dir, "edge"), "--socket", filepath.Join(w.dir, "edge.sock"),
		"edge", "--coordinator", w.coordURL, "--authkey", strings.TrimSpace(string(key)), "--domain", domain,
		"--http-addr", edgeHTTP, "--https-addr", "")

	cmd := alpha.host.Command(ctx, w.bin, "--socket", alpha.socket, "--state", alpha.state,
		"expose", strconv.Itoa(tunHTTPPort), "--name", "tunapp", "--basic-auth", "u:p", "--json")
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
		t.Fatalf("beam expose: first JSON line %+v, %v", resp, err)
	}
	lines := make(chan apitype.RequestLog, 16)
	go func() {
		defer close(lines)
		for {
			var l apitype.RequestLog
			if err := dec.Decode(&l); err != nil {
				return
			}
			lines <- l
		}
	}()

	get := func(path string, auth bool) (string, error) {
		args := []string{"-sS", "--max-time", "5", "-H", "Host: tunapp." + domain, "-w", "\n%{http_code}"}
		if auth {
			args = append(args, "-u", "u:p")
		}
		out, err := w.srv.Run(ctx, "curl", append(args, "http://"+edgeHTTP+path)...)
		return string(out), err
	}
	// The edge learns the route and reaches alpha (retried until then).
	deadline := time.Now().Add(60 * time.Second)
	var got string
	for {
		got, err = get("/through-expose", true)
		if err == nil && strings.HasSuffix(got, "\n200") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET through the edge: %q, %v", got, err)
		}
		select {
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		case <-time.After(500 * time.Millisecond):
		}
	}
	if want := "hello from alpha to 127.0.0.1\n\n200"; got != want {
		t.Errorf("GET through the edge = %q, want %q: the device's expose relay must carry it to the app", got, want)
	}
	waitLog := func(path string, status int) {
		t.Helper()
		timeout := time.After(20 * time.Second)
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("beam expose ended before logging %s", path)
				}
				if l.Path == path && l.Status == status {
					return
				}
			case <-timeout:
				t.Fatalf("beam expose did not log %s with status %d", path, status)
			}
		}
	}
	waitLog("/through-expose", 200)

	if got, err := get("/no-auth", false); err != nil || !strings.HasSuffix(got, "\n401") {
		t.Errorf("GET without basic auth = %q, %v; want 401 from the edge", got, err)
	}
}
