package beamnet_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"sync"
	"testing"
	"time"

	"beam.dev/beam/beamnet"
	"beam.dev/beam/coordinator"
	"beam.dev/beam/coordinator/sqlstore"
	"beam.dev/beam/edge"
	"beam.dev/beam/edgenode"
	"beam.dev/beam/localapi/apitype"
	"beam.dev/beam/node"
	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// The in-process cluster the examples and most tests run against: a
// coordinator on in-memory SQLite with an edge domain, and a public edge
// (an edge node whose netmaps feed an edgenode.Server with a loopback
// HTTP listener), wired as beam server wires them. TestMain starts it.
var (
	// controlURL is the coordinator's URL.
	controlURL string
	// authKey is a reusable auth key of the cluster's network.
	authKey string
	// edgeClient sends every request to the edge's HTTP listener,
	// whatever the URL's host, as the public DNS would.
	edgeClient *http.Client
	// testCoord is the coordinator, for tests that make keys.
	testCoord *coordinator.Server
)

const edgeDomain = "example.test"

// cluster is what startCluster started.
type cluster struct {
	stops []func()
}

// close stops everything, last started first.
func (c *cluster) close() {
	for i := len(c.stops) - 1; i >= 0; i-- {
		c.stops[i]()
	}
}

// startCluster starts the coordinator and the edge and sets the package
// variables above. dir holds the edge node's state.
func startCluster(dir string) (*cluster, error) {
	c := &cluster{}
	ok := false
	defer func() {
		if !ok {
			c.close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	st, err := sqlstore.Open(ctx, ":memory:")
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	c.stops = append(c.stops, func() { st.Close() })
	coord, err := coordinator.New(coordinator.Options{
		Store:             st,
		PrivateKey:        key.NewMachine(),
		AdminToken:        "test-admin-token",
		KeepAliveInterval: 2 * time.Second,
		EdgeDomain:        edgeDomain,
		EdgeHTTPURL:       "http://{host}",
	})
	if err != nil {
		return nil, fmt.Errorf("start coordinator: %w", err)
	}
	hs := httptest.NewServer(coord)
	c.stops = append(c.stops, func() {
		hs.CloseClientConnections()
		coord.Close()
		hs.Close()
	})
	testCoord, controlURL = coord, hs.URL
	authKey, err = coord.CreateAuthKey(ctx, coordinator.AuthKeyOptions{Reusable: true})
	if err != nil {
		return nil, fmt.Errorf("auth key: %w", err)
	}
	edgeKey, err := coord.CreateAuthKey(ctx, coordinator.AuthKeyOptions{Reusable: true, Edge: true})
	if err != nil {
		return nil, fmt.Errorf("edge auth key: %w", err)
	}

	routes := make(chan []wire.EdgeRoute, 1)
	en, err := node.New(node.Options{
		StateDir: dir,
		Hostname: "edge",
		// No idle connections to the coordinator: a connection the edge
		// opens while a test counts goroutines would look like the test's.
		HTTPClient: &http.Client{Transport: &http.Transport{DisableKeepAlives: true}},
		OnNetMap: func(nm *wire.NetMap) {
			select {
			case <-routes:
			default:
			}
			routes <- nm.EdgeRoutes
		},
	})
	if err != nil {
		return nil, fmt.Errorf("edge node: %w", err)
	}
	c.stops = append(c.stops, func() { en.Close() })
	if _, err := en.Up(ctx, apitype.UpRequest{Coordinator: hs.URL, AuthKey: edgeKey, Hostname: "edge"}); err != nil {
		return nil, fmt.Errorf("edge up: %w", err)
	}
	e, err := edge.New(edge.Options{Dial: en.DialContext, Domain: edgeDomain})
	if err != nil {
		return nil, fmt.Errorf("edge: %w", err)
	}
	c.stops = append(c.stops, func() { e.Close() })
	srv, err := edgenode.New(edgenode.Options{Edge: e, HTTPAddr: "127.0.0.1:0"})
	if err != nil {
		return nil, fmt.Errorf("edgenode: %w", err)
	}
	c.stops = append(c.stops, func() { srv.Close() })
	var wg sync.WaitGroup
	rctx, rcancel := context.WithCancel(context.Background())
	c.stops = append(c.stops, func() { rcancel(); wg.Wait() })
	wg.Go(func() {
		for {
			select {
			case <-rctx.Done():
				return
			case rs := <-routes:
				srv.Update(rs)
			}
		}
	})
	edgeAddr := srv.Addr("http").String()
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", edgeAddr)
		},
	}
	edgeClient = &http.Client{Transport: tr, Timeout: 30 * time.Second}
	c.stops = append(c.stops, tr.CloseIdleConnections)
	ok = true
	return c, nil
}

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
	c, err := startCluster(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "start the test cluster:", err)
		return 1
	}
	defer c.close()
	// One node joins, publishes and leaves first, so the cluster has
	// started every goroutine it keeps before a test counts them.
	if err := warmUp(); err != nil {
		fmt.Fprintln(os.Stderr, "warm up the test cluster:", err)
		return 1
	}
	return m.Run()
}

// getPublic fetches url through the edge until the route answers (the
// edge learns it from its netmap stream) or 20 seconds pass, and returns
// the body of the first answer that is not the edge's 404 or 502.
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
