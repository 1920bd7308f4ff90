package beamnet_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"testing"
	"time"

	"beam.dev/beam/beamnet"
	"beam.dev/beam/beamtest/harness"
)

// The in-process cluster the examples and most tests run against (a
// coordinator with an edge domain and a public edge, see
// harness.Public). TestMain starts it.
var (
	// controlURL is the coordinator's URL.
	controlURL string
	// authKey is a reusable auth key of the cluster's network.
	authKey string
	// edgeClient sends every request to the edge's HTTP listener,
	// whatever the URL's host, as the public DNS would.
	edgeClient *http.Client
)

const edgeDomain = harness.PublicDomain

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "beamnet-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	p, err := harness.StartPublic(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "start the test cluster:", err)
		return 1
	}
	defer p.Close()
	controlURL, authKey, edgeClient = p.URL, p.AuthKey, p.Client()
	defer edgeClient.CloseIdleConnections()
	// One node joins, publishes and leaves first, so the cluster has
	// started every goroutine it keeps before a test counts them.
	if err := warmUp(); err != nil {
		fmt.Fprintln(os.Stderr, "warm up the test cluster:", err)
		return 1
	}
	return m.Run()
}

// warmUp runs one Server through Up, ListenPublic and Close.
func warmUp() error {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s := &beamnet.Server{Hostname: "warmup", ControlURL: controlURL, AuthKey: authKey, Ephemeral: true}
	defer s.Close()
	if _, err := s.Up(ctx); err != nil {
		return err
	}
	ln, err := s.ListenPublic(ctx, "warmup")
	if err != nil {
		return err
	}
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "warm") })}
	go hs.Serve(ln)
	defer hs.Close()
	_, err = getPublic(ln.URL())
	edgeClient.CloseIdleConnections()
	return err
}

// getPublic fetches url through the edge until the route answers (the
// edge learns it from its netmap stream) or 20 seconds pass, and returns
// the body of the first 200 answer.
func getPublic(url string) (string, error) {
	deadline := time.Now().Add(20 * time.Second)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		body, status, err := get(edgeClient, url)
		switch {
		case err == nil && status == http.StatusOK:
			return body, nil
		case err == nil:
			last = fmt.Errorf("status %d: %s", status, body)
		default:
			last = err
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("GET %s: no answer in 20s: %w", url, last)
		}
		<-tick.C
	}
}

// get fetches url with c and returns the body and status.
func get(c *http.Client, url string) (string, int, error) {
	resp, err := c.Get(url)
	if err != nil {
		return "", 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), resp.StatusCode, err
}
