package edge

import (
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"
	"time"
)

func TestPoolFailoverAndRecovery(t *testing.T) {
	ov := newOverlay()
	e := newTestEdge(t, ov, Options{HealthInterval: 100 * time.Millisecond, DownFor: time.Second})
	names := []string{"m0", "m1", "m2"}
	var targets []netip.AddrPort
	var servers []*httptest.Server
	for _, n := range names {
		a, srv := origin(t, ov, nameHandler(n))
		targets = append(targets, a)
		servers = append(servers, srv)
	}
	setRoutes(t, e, httpRoute("pool", targets...))
	c := clientTo(serveHTTP(t, e))

	count := func(n int) map[string]int {
		t.Helper()
		got := map[string]int{}
		for range n {
			status, _, h := get(t, c, "http://pool.example.test/")
			if status != 200 {
				t.Fatalf("status %d, want 200 from a live member", status)
			}
			got[h.Get("X-Origin")]++
		}
		return got
	}
	if got := count(30); got["m0"] != 10 || got["m1"] != 10 || got["m2"] != 10 {
		t.Errorf("round robin over 3 members: %v, want 10 each", got)
	}

	// Kill m1: no request may fail, and it is marked down.
	servers[1].CloseClientConnections()
	servers[1].Close()
	if got := count(30); got["m1"] != 0 || got["m0"]+got["m2"] != 30 {
		t.Errorf("with m1 dead: %v, want everything on m0 and m2", got)
	}
	tg := e.routes.Load().targets[targets[1]]
	waitFor(t, 3*time.Second, "m1 marked down", func() bool { return tg.isDown(time.Now()) })

	// Revive m1 on a new port: the health checks put it back.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	revived := &http.Server{Handler: nameHandler("m1")}
	go revived.Serve(ln)
	defer revived.Close()
	ov.set(targets[1], ln.Addr().String())
	waitFor(t, 3*time.Second, "m1 back in the pool", func() bool { return !tg.isDown(time.Now()) })
	if got := count(30); got["m1"] == 0 {
		t.Errorf("after revival: %v, want m1 to get traffic", got)
	}

	// All down: 502.
	for _, srv := range servers {
		srv.Close()
	}
	revived.Close()
	ov.set(targets[1], closedPort(t))
	waitFor(t, 3*time.Second, "all members down", func() bool {
		status, _, _ := get(t, c, "http://pool.example.test/")
		return status == 502
	})
}

func TestPoolLeastConn(t *testing.T) {
	ov := newOverlay()
	e := newTestEdge(t, ov, Options{})
	block := make(chan struct{})
	started := make(chan struct{})
	slow, _ := origin(t, ov, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Origin", "slow")
		if r.URL.Path == "/hold" {
			started <- struct{}{}
			<-block
		}
	}))
	fast, _ := origin(t, ov, nameHandler("fast"))
	r := httpRoute("lc", slow, fast)
	r.Balance = LeastConn
	setRoutes(t, e, r)
	c := clientTo(serveHTTP(t, e))

	// Find which member the first request goes to; hold one on "slow".
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			status, _, h := get(t, c, "http://lc.example.test/hold")
			if status != 200 || h.Get("X-Origin") == "slow" {
				return
			}
		}
	}()
	<-started
	for i := range 5 {
		if _, _, h := get(t, c, "http://lc.example.test/"); h.Get("X-Origin") != "fast" {
			t.Errorf("request %d went to %q while slow is busy, want fast", i, h.Get("X-Origin"))
		}
	}
	close(block)
	<-done
}
