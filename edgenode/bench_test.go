package edgenode_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"beam.dev/beam/coordinator"
	"beam.dev/beam/coordinator/sqlstore"
	"beam.dev/beam/edge"
	"beam.dev/beam/edgenode"
	"beam.dev/beam/localapi/apitype"
	"beam.dev/beam/node"
	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// meshEdge is an in-process public edge wired as beam server wires it:
// a coordinator with an edge domain, an edge node joined with an edge key
// whose netmaps feed an edgenode.Server, and a device that exposes an
// origin HTTP server on its loopback.
type meshEdge struct {
	dials      atomic.Int64 // dials of the edge toward devices
	edgeAddr   string       // the edge's HTTP listener
	originAddr string       // the origin, straight
	host       string       // the route's public host
}

const benchDomain = "example.test"

func newMeshEdge(tb testing.TB, origin http.Handler) *meshEdge {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	st, err := sqlstore.Open(ctx, ":memory:")
	if err != nil {
		tb.Fatalf("open store: %v", err)
	}
	coord, err := coordinator.New(coordinator.Options{
		Store:       st,
		PrivateKey:  key.NewMachine(),
		AdminToken:  "test-admin-token",
		EdgeDomain:  benchDomain,
		EdgeHTTPURL: "http://{host}",
	})
	if err != nil {
		tb.Fatalf("start coordinator: %v", err)
	}
	hs := httptest.NewServer(coord)
	tb.Cleanup(func() {
		hs.CloseClientConnections()
		coord.Close()
		hs.Close()
		st.Close()
	})
	authKey := func(o coordinator.AuthKeyOptions) string {
		k, err := coord.CreateAuthKey(ctx, o)
		if err != nil {
			tb.Fatalf("create auth key: %v", err)
		}
		return k
	}

	// The edge node and its listeners.
	routes := make(chan []wire.EdgeRoute, 1)
	en, err := node.New(node.Options{
		StateDir: tb.TempDir(),
		Hostname: "edge",
		OnNetMap: func(nm *wire.NetMap) {
			select {
			case <-routes:
			default:
			}
			routes <- nm.EdgeRoutes
		},
	})
	if err != nil {
		tb.Fatalf("edge node: %v", err)
	}
	tb.Cleanup(func() { en.Close() })
	if _, err := en.Up(ctx, apitype.UpRequest{Coordinator: hs.URL, AuthKey: authKey(coordinator.AuthKeyOptions{Reusable: true, Edge: true}), Hostname: "edge"}); err != nil {
		tb.Fatalf("edge up: %v", err)
	}
	m := &meshEdge{}
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		m.dials.Add(1)
		return en.DialContext(ctx, network, addr)
	}
	e, err := edge.New(edge.Options{Dial: dial, Domain: benchDomain})
	if err != nil {
		tb.Fatalf("edge: %v", err)
	}
	tb.Cleanup(func() { e.Close() })
	srv, err := edgenode.New(edgenode.Options{Edge: e, HTTPAddr: "127.0.0.1:0"})
	if err != nil {
		tb.Fatalf("edgenode: %v", err)
	}
	tb.Cleanup(func() { srv.Close() })
	var wg sync.WaitGroup
	rctx, rcancel := context.WithCancel(context.Background())
	tb.Cleanup(func() { rcancel(); wg.Wait() })
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

	// The origin and the device exposing it.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	osrv := &http.Server{Handler: origin}
	wg.Go(func() { osrv.Serve(ln) })
	tb.Cleanup(func() { osrv.Close() })
	port := uint16(ln.Addr().(*net.TCPAddr).Port)

	dev, err := node.New(node.Options{StateDir: tb.TempDir(), Hostname: "device"})
	if err != nil {
		tb.Fatalf("device node: %v", err)
	}
	tb.Cleanup(func() { dev.Close() })
	if _, err := dev.Up(ctx, apitype.UpRequest{Coordinator: hs.URL, AuthKey: authKey(coordinator.AuthKeyOptions{Reusable: true}), Hostname: "device"}); err != nil {
		tb.Fatalf("device up: %v", err)
	}
	resp, err := dev.Expose(ctx, apitype.ExposeRequest{Port: port, Name: "app"})
	if err != nil {
		tb.Fatalf("expose: %v", err)
	}
	m.edgeAddr, m.originAddr, m.host = srv.Addr("http").String(), ln.Addr().String(), resp.Host
	if m.host != "app."+benchDomain {
		tb.Fatalf("exposed host = %q, want app.%s", m.host, benchDomain)
	}

	// Wait until the edge has the route and reaches the device.
	c := clientFor(m.edgeAddr, 1)
	defer c.CloseIdleConnections()
	deadline := time.Now().Add(30 * time.Second)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		resp, err := c.Get("http://" + m.host + "/")
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			tb.Fatalf("edge never served %s: %v %v", m.host, resp, err)
		}
		<-tick.C
	}
	return m
}

// clientFor returns a client whose every connection goes to addr, keeping
// up to conns connections alive.
func clientFor(addr string, conns int) *http.Client {
	d := &net.Dialer{}
	return &http.Client{
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return d.DialContext(ctx, "tcp", addr)
			},
			MaxIdleConnsPerHost: conns,
			MaxConnsPerHost:     conns,
			DisableCompression:  true,
		},
		Timeout: 30 * time.Second,
	}
}

// loadResult is what one load run measured.
type loadResult struct {
	requests int
	rps      float64
	p50, p99 time.Duration
}

// load runs conns workers, each sending keep-alive GETs for host to addr
// one after another, for d, and returns the rate and latency percentiles.
func load(tb testing.TB, addr, host string, conns int, d time.Duration) loadResult {
	tb.Helper()
	c := clientFor(addr, conns)
	defer c.CloseIdleConnections()
	url := "http://" + host + "/"
	var (
		mu   sync.Mutex
		lats []time.Duration
		errs []error
		wg   sync.WaitGroup
	)
	start := time.Now()
	stop := start.Add(d)
	for range conns {
		wg.Go(func() {
			var mine []time.Duration
			for time.Now().Before(stop) {
				t0 := time.Now()
				resp, err := c.Get(url)
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if err == nil && resp.StatusCode != http.StatusOK {
						err = fmt.Errorf("status %d", resp.StatusCode)
					}
				}
				if err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
					return
				}
				mine = append(mine, time.Since(t0))
			}
			mu.Lock()
			lats = append(lats, mine...)
			mu.Unlock()
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	if len(errs) > 0 {
		tb.Fatalf("%d workers failed, first: %v", len(errs), errs[0])
	}
	if len(lats) == 0 {
		tb.Fatal("no request completed")
	}
	slices.Sort(lats)
	pct := func(p float64) time.Duration { return lats[int(float64(len(lats)-1)*p)] }
	return loadResult{requests: len(lats), rps: float64(len(lats)) / elapsed.Seconds(), p50: pct(0.50), p99: pct(0.99)}
}

// BenchmarkEdgeKeepAlive measures keep-alive GETs through the public edge
// (client -> edge -> WireGuard over loopback UDP -> device -> origin)
// against the same load straight at the origin, in the same run: 50
// connections for the throughput ratio, one connection for the latency the
// edge adds. Each b.N iteration is one second of load of each kind.
func BenchmarkEdgeKeepAlive(b *testing.B) {
	body := []byte("hello from the origin\n")
	m := newMeshEdge(b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.Write(body)
	}))
	const conns = 50
	per := time.Second
	var direct, viaEdge, direct1, viaEdge1 loadResult
	var dials int64
	b.ResetTimer()
	for range b.N {
		direct = load(b, m.originAddr, m.host, conns, per)
		d0 := m.dials.Load()
		viaEdge = load(b, m.edgeAddr, m.host, conns, per)
		dials += m.dials.Load() - d0
		direct1 = load(b, m.originAddr, m.host, 1, per/2)
		viaEdge1 = load(b, m.edgeAddr, m.host, 1, per/2)
	}
	b.StopTimer()
	b.ReportMetric(direct.rps, "direct-req/s")
	b.ReportMetric(viaEdge.rps, "edge-req/s")
	b.ReportMetric(viaEdge.rps/direct.rps, "edge/direct")
	b.ReportMetric(float64(dials)/float64(b.N), "device-dials/run")
	b.ReportMetric(float64(viaEdge.p50.Microseconds()), "edge-p50-µs")
	b.ReportMetric(float64(viaEdge.p99.Microseconds()), "edge-p99-µs")
	b.ReportMetric(float64(direct.p99.Microseconds()), "direct-p99-µs")
	b.ReportMetric(float64((viaEdge1.p50 - direct1.p50).Microseconds()), "added-p50-µs/1conn")
	b.ReportMetric(float64((viaEdge1.p99 - direct1.p99).Microseconds()), "added-p99-µs/1conn")
}

// TestEdgeKeepAlive is a short run of the benchmark's path: requests go
// through the edge on reused connections (the edge dials the device about
// once per client connection, not per request) and all of them succeed.
func TestEdgeKeepAlive(t *testing.T) {
	m := newMeshEdge(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "host=%s", r.Host)
	}))
	const conns = 4
	d0 := m.dials.Load()
	r := load(t, m.edgeAddr, m.host, conns, 300*time.Millisecond)
	dials := m.dials.Load() - d0
	if r.requests < 4*conns {
		t.Fatalf("only %d requests in 300ms", r.requests)
	}
	// net/http's Transport may start a dial for a request and then hand
	// it a connection that came free meanwhile, keeping the new one idle:
	// a few dials more than connections are fine, one per request is not.
	if limit := 2 * conns; dials > int64(limit) {
		t.Errorf("%d requests on %d connections dialed the device %d times; want at most %d", r.requests, conns, dials, limit)
	}
}

// TestEdgeStreams checks that responses without a Content-Length (server-
// sent events, chunked streams) reach the client through edge and device
// as they are written, not when the handler returns.
func TestEdgeStreams(t *testing.T) {
	release := make(chan struct{})
	m := newMeshEdge(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/sse":
			w.Header().Set("Content-Type", "text/event-stream")
		case "/chunked":
		default:
			return // the readiness probe
		}
		fmt.Fprint(w, "first\n")
		http.NewResponseController(w).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
		}
		fmt.Fprint(w, "second\n")
	}))
	defer close(release)
	c := clientFor(m.edgeAddr, 1)
	defer c.CloseIdleConnections()
	for _, path := range []string{"/sse", "/chunked"} {
		resp, err := c.Get("http://" + m.host + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		line, err := bufio.NewReader(resp.Body).ReadString('\n')
		if err != nil || line != "first\n" {
			t.Fatalf("GET %s: first line = %q, %v", path, line, err)
		}
		resp.Body.Close()
	}
}
