package main

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"beam.dev/beam/beamnet"
	"beam.dev/beam/beamtest/harness"
)

// TestHello runs the example against an in-process coordinator and edge:
// it prints where it serves, a peer gets the greeting at http://hello/,
// the public gets it at the printed URL through the edge, and it stops
// when its context ends.
func TestHello(t *testing.T) {
	p, err := harness.StartPublic(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, config{ControlURL: p.URL, AuthKey: p.AuthKey, Dir: t.TempDir(), Name: "hello", Public: true}, pw)
		pw.Close()
	}()
	lines := make(chan string, 10)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	want := []*regexp.Regexp{
		regexp.MustCompile(`^joined as hello \(100\.\d+\.\d+\.\d+\)$`),
		regexp.MustCompile(`^peers: http://hello/$`),
		regexp.MustCompile(`^public: http://hello\.example\.test/$`),
	}
	var publicURL string
	for _, re := range want {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("hello ended before printing a line matching %s: %v", re, <-done)
			}
			if !re.MatchString(l) {
				t.Fatalf("hello printed %q, want a line matching %s", l, re)
			}
			publicURL = strings.TrimPrefix(l, "public: ")
		case <-time.After(60 * time.Second):
			t.Fatalf("no line matching %s from hello in 60s", re)
		}
	}

	// A peer, by name.
	peer := &beamnet.Server{Hostname: "visitor", ControlURL: p.URL, AuthKey: p.AuthKey, Dir: t.TempDir(), Ephemeral: true}
	defer peer.Close()
	if _, err := peer.Up(ctx); err != nil {
		t.Fatal(err)
	}
	body := getOK(t, peer.HTTPClient(), "http://hello/")
	if !regexp.MustCompile(`^hello 100\.\d+\.\d+\.\d+:\d+, from hello\n$`).MatchString(body) {
		t.Errorf("peer got %q, want the greeting for its overlay address", body)
	}

	// The public, through the edge (which learns the route from its
	// netmap stream: ask until it answers).
	ec := p.Client()
	defer ec.CloseIdleConnections()
	harness.WaitFor(t, 20*time.Second, "the edge serves "+publicURL, func() bool {
		resp, err := ec.Get(publicURL)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	if body, want := getOK(t, ec, publicURL), "hello 127.0.0.1, from hello via the edge\n"; body != want {
		t.Errorf("public GET %s: %q, want %q", publicURL, body, want)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("run returned %v after its context ended, want nil", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("run still running 30s after its context ended")
	}
}

// getOK fetches url with c and returns the body of a 200 answer.
func getOK(t *testing.T, c *http.Client, url string) string {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %q, %v; want 200", url, resp.StatusCode, b, err)
	}
	return string(b)
}
