package coordinator_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"beam.dev/beam/coordclient"
	"beam.dev/beam/coordinator"
	"beam.dev/beam/wire"
	"github.com/prometheus/client_golang/prometheus"
)

// TestNodeRateLimit: a registered node past its own request rate gets
// 429 with a Retry-After, which coordclient waits before it sends the
// request again; another node, from the same address, has its own bucket.
func TestNodeRateLimit(t *testing.T) {
	c := startCoord(t, func(o *coordinator.Options) {
		edgeOpts("", "")(o)
		o.NodeRequestRate, o.NodeRequestBurst = 1, 3
	})
	ak := c.authKey(t, coordinator.AuthKeyOptions{Reusable: true})
	a, b := newNode(t, c.URL), newNode(t, c.URL)
	a.register(t, ak, "alpha")
	b.register(t, ak, "beta")
	call := func(n *node) time.Duration {
		t.Helper()
		start := time.Now()
		_, err := n.Expose(context.Background(), wire.ExposeRequest{Name: "none", Proto: "http", Remove: true})
		if !errors.Is(err, coordclient.ErrRouteNotFound) {
			t.Fatalf("expose remove: %v, want ErrRouteNotFound (the request served)", err)
		}
		return time.Since(start)
	}
	for range 3 {
		call(a)
	}
	if n := nodeRateLimited(t, c.Server); n != 0 {
		t.Errorf("beam_coordinator_node_rate_limited_total = %v within the burst, want 0", n)
	}
	// The fourth within the second: refused, retried after Retry-After (1 s).
	if d := call(a); d < 900*time.Millisecond {
		t.Errorf("alpha's request past its burst took %v, want it to wait the Retry-After of 1s", d)
	}
	if n := nodeRateLimited(t, c.Server); n < 1 {
		t.Errorf("beam_coordinator_node_rate_limited_total = %v after a refusal, want at least 1", n)
	}
	for i := range 3 {
		if d := call(b); d >= 900*time.Millisecond {
			t.Errorf("beta's request %d took %v: held back by alpha's limit", i, d)
		}
	}
}

// nodeRateLimited returns beam_coordinator_node_rate_limited_total of s.
func nodeRateLimited(t *testing.T, s *coordinator.Server) float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(s.Collector())
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather metrics: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "beam_coordinator_node_rate_limited_total" {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatal("no beam_coordinator_node_rate_limited_total")
	return 0
}
