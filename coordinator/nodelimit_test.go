package coordinator_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"beam.dev/beam/coordclient"
	"beam.dev/beam/coordinator"
	"beam.dev/beam/wire"
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
	// The fourth within the second: refused, retried after Retry-After (1 s).
	if d := call(a); d < 900*time.Millisecond {
		t.Errorf("alpha's request past its burst took %v, want it to wait the Retry-After of 1s", d)
	}
	for i := range 3 {
		if d := call(b); d >= 900*time.Millisecond {
			t.Errorf("beta's request %d took %v: held back by alpha's limit", i, d)
		}
	}
}
