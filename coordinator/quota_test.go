package coordinator_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"beam.dev/beam/coordclient"
	"beam.dev/beam/coordinator"
	"beam.dev/beam/wire"
)

// headers returns route options with n bytes of header values.
func headers(n int) wire.RouteOptions {
	h := map[string]string{}
	for i := 0; n > 0; i++ {
		v := min(n, 4000)
		h[fmt.Sprintf("X-Big-%d", i)] = strings.Repeat("a", v)
		n -= v
	}
	return wire.RouteOptions{HeaderAdd: h}
}

// TestRouteQuota: a node, and the nodes of one user, cannot publish past
// the route count, edge port and option byte quotas; they get
// ErrQuotaExceeded naming the limit, and other nodes are not held back.
func TestRouteQuota(t *testing.T) {
	c := startCoord(t, func(o *coordinator.Options) {
		edgeOpts("20000-20009", "21000-21009")(o)
		o.RouteQuota = coordinator.RouteQuota{
			NodeRoutes: 3, UserRoutes: 4,
			NodePorts: 1, UserPorts: -1,
			RouteOptionBytes: 10_000, NodeOptionBytes: 15_000, UserOptionBytes: -1,
		}
	})
	ak := c.authKey(t, coordinator.AuthKeyOptions{Reusable: true})
	if _, err := c.Server.CreateUser(context.Background(), "ann@example.test"); err != nil {
		t.Fatal(err)
	}
	uk := c.authKey(t, coordinator.AuthKeyOptions{Reusable: true, User: "ann@example.test"})
	a, b := newNode(t, c.URL), newNode(t, c.URL)
	a.register(t, ak, "alpha")
	// beta on a key of its own: nodes of one key are charged together.
	b.register(t, c.authKey(t, coordinator.AuthKeyOptions{}), "beta")
	u1, u2 := newNode(t, c.URL), newNode(t, c.URL)
	u1.register(t, uk, "ann1")
	u2.register(t, uk, "ann2")
	refused := func(t *testing.T, n *node, req wire.ExposeRequest, want string) {
		t.Helper()
		_, err := n.Expose(context.Background(), req)
		if !errors.Is(err, coordclient.ErrQuotaExceeded) || !strings.Contains(err.Error(), want) {
			t.Fatalf("expose %s/%s = %v, want ErrQuotaExceeded saying %q", req.Name, req.Proto, err, want)
		}
	}

	t.Run("routes", func(t *testing.T) {
		for _, name := range []string{"r1", "r2", "r3"} {
			expose(t, a, wire.ExposeRequest{Name: name, Proto: "http", Port: 3000})
		}
		refused(t, a, wire.ExposeRequest{Name: "r4", Proto: "http", Port: 3000}, "the most allowed (3)")
		expose(t, a, wire.ExposeRequest{Name: "r3", Proto: "http", Port: 3000}) // a re-expose replaces
		expose(t, b, wire.ExposeRequest{Name: "b1", Proto: "http", Port: 3000}) // others are not held back
		if _, err := a.Expose(context.Background(), wire.ExposeRequest{Name: "r3", Proto: "http", Remove: true}); err != nil {
			t.Fatal(err)
		}
		expose(t, a, wire.ExposeRequest{Name: "r4", Proto: "http", Port: 3000})
	})
	t.Run("ports", func(t *testing.T) {
		expose(t, b, wire.ExposeRequest{Name: "db", Proto: "tcp", Port: 5432})
		expose(t, b, wire.ExposeRequest{Name: "db", Proto: "tcp", Port: 5432}) // keeps its port
		refused(t, b, wire.ExposeRequest{Name: "db2", Proto: "tcp", Port: 5433}, "1 edge tcp/udp ports")
		refused(t, b, wire.ExposeRequest{Name: "voice", Proto: "udp", Port: 5000}, "1 edge tcp/udp ports")
		if r := expose(t, u1, wire.ExposeRequest{Name: "u1db", Proto: "tcp", Port: 5432}); r.Route.PublicPort == 0 {
			t.Error("another node got no port")
		}
	})
	t.Run("option bytes", func(t *testing.T) {
		refused(t, b, wire.ExposeRequest{Name: "fat", Proto: "http", Port: 3000, Options: headers(12_000)}, "more than the 10000 one route may have")
		if _, err := b.Expose(context.Background(), wire.ExposeRequest{Name: "b1", Proto: "http", Remove: true}); err != nil {
			t.Fatal(err)
		}
		expose(t, b, wire.ExposeRequest{Name: "big1", Proto: "http", Port: 3000, Options: headers(9_000)})
		expose(t, b, wire.ExposeRequest{Name: "big1", Proto: "http", Port: 3000, Options: headers(9_500)}) // replaces its own bytes
		refused(t, b, wire.ExposeRequest{Name: "big2", Proto: "http", Port: 3000, Options: headers(9_500)}, "would pass the 15000 allowed")
	})
	t.Run("user", func(t *testing.T) {
		// ann1 has one route (u1db); ann2 three: the user's fourth.
		for _, name := range []string{"u2a", "u2b", "u2c"} {
			expose(t, u2, wire.ExposeRequest{Name: name, Proto: "http", Port: 3000})
		}
		refused(t, u1, wire.ExposeRequest{Name: "u1b", Proto: "http", Port: 3000}, "user ann@example.test has 4 routes published")
	})
}

// TestRouteQuotaAuthKeyAndNetwork: nodes without a user are charged
// together per auth key, with the user limits, and the nodes of one
// network together hold at most half of each edge port range (the
// default), so one reusable key cannot take a shared edge's ports. Only
// the per-node limit applied to them: three nodes of one key took every
// port of a 10-port range.
func TestRouteQuotaAuthKeyAndNetwork(t *testing.T) {
	c := startCoord(t, func(o *coordinator.Options) {
		edgeOpts("20000-20009", "21000-21009")(o)
		o.RouteQuota = coordinator.RouteQuota{NodeRoutes: 3, UserRoutes: 5, NodePorts: 3, UserPorts: 4}
	})
	ak := c.authKey(t, coordinator.AuthKeyOptions{Reusable: true})
	reg := func(key, name string) *node {
		n := newNode(t, c.URL)
		n.register(t, key, name)
		return n
	}
	k1, k2, k3 := reg(ak, "k1"), reg(ak, "k2"), reg(ak, "k3")
	refused := func(t *testing.T, n *node, req wire.ExposeRequest, want string) {
		t.Helper()
		_, err := n.Expose(context.Background(), req)
		if !errors.Is(err, coordclient.ErrQuotaExceeded) || !strings.Contains(err.Error(), want) {
			t.Fatalf("expose %s/%s = %v, want ErrQuotaExceeded saying %q", req.Name, req.Proto, err, want)
		}
	}

	t.Run("routes of one key", func(t *testing.T) {
		expose(t, k1, wire.ExposeRequest{Name: "h1", Proto: "http", Port: 3000})
		expose(t, k2, wire.ExposeRequest{Name: "h2", Proto: "http", Port: 3000})
		expose(t, k2, wire.ExposeRequest{Name: "h3", Proto: "http", Port: 3000})
		expose(t, k3, wire.ExposeRequest{Name: "h4", Proto: "http", Port: 3000})
		expose(t, k3, wire.ExposeRequest{Name: "h5", Proto: "http", Port: 3000})
		refused(t, k1, wire.ExposeRequest{Name: "h6", Proto: "http", Port: 3000}, "this device's auth key has 5 routes published")
		for _, h := range []string{"h1", "h2", "h3", "h4", "h5"} {
			if err := c.Server.RemoveRoutes(context.Background(), h+"."+edgeDomain); err != nil {
				t.Fatal(err)
			}
		}
	})
	t.Run("ports of one key", func(t *testing.T) {
		expose(t, k1, wire.ExposeRequest{Name: "t1", Proto: "tcp", Port: 22})
		expose(t, k1, wire.ExposeRequest{Name: "t2", Proto: "tcp", Port: 22})
		expose(t, k2, wire.ExposeRequest{Name: "t3", Proto: "tcp", Port: 22})
		expose(t, k3, wire.ExposeRequest{Name: "u1", Proto: "udp", Port: 53})
		refused(t, k3, wire.ExposeRequest{Name: "t4", Proto: "tcp", Port: 22}, "this device's auth key holds 4 edge tcp/udp ports")
		refused(t, k2, wire.ExposeRequest{Name: "u2", Proto: "udp", Port: 53}, "this device's auth key holds 4 edge tcp/udp ports")
	})
	t.Run("ports of one network", func(t *testing.T) {
		// Another key of the network: its own key quota, but the
		// network holds 3 of the 5 tcp ports (half of 10) it may.
		bk := c.authKey(t, coordinator.AuthKeyOptions{Reusable: true})
		b1, b2 := reg(bk, "b1"), reg(bk, "b2")
		expose(t, b1, wire.ExposeRequest{Name: "bt1", Proto: "tcp", Port: 22})
		expose(t, b1, wire.ExposeRequest{Name: "bt2", Proto: "tcp", Port: 22})
		refused(t, b2, wire.ExposeRequest{Name: "bt3", Proto: "tcp", Port: 22}, "network default holds 5 edge tcp ports, the most one network may (5)")
		// udp is counted apart, and other networks are not held back.
		expose(t, b2, wire.ExposeRequest{Name: "bu1", Proto: "udp", Port: 53})
		o := reg(c.authKey(t, coordinator.AuthKeyOptions{Network: "other"}), "o1")
		if r := expose(t, o, wire.ExposeRequest{Name: "ot1", Proto: "tcp", Port: 22}); r.Route.PublicPort == 0 {
			t.Error("another network got no port")
		}
	})
}

// TestEdgeRoutesPastOneFrame: routes of many nodes, within their quotas
// but together more than one map frame holds (wire.MaxFrameSize), reach
// an edge that streams while they are published and one that opens its
// stream after, and a removal reaches both. The whole list used to go in
// one frame, which failed every edge's stream.
func TestEdgeRoutesPastOneFrame(t *testing.T) {
	c := startCoord(t, func(o *coordinator.Options) {
		edgeOpts("", "")(o)
		o.RouteQuota = coordinator.RouteQuota{RouteOptionBytes: 300 << 10, NodeOptionBytes: -1, UserOptionBytes: -1}
	})
	ak := c.authKey(t, coordinator.AuthKeyOptions{Reusable: true})
	ek := c.authKey(t, coordinator.AuthKeyOptions{Network: "edges", Edge: true, Reusable: true})
	ed1 := newNode(t, c.URL)
	ed1.register(t, ek, "edge1")
	w1 := watch(t, ed1)
	w1.waitFor("edge1 full map", wait, func(nm *wire.NetMap) bool { return nm.Self != nil })

	const nodes, perNode, size = 4, 5, 250 << 10 // 5 MB of routes
	// Every change sends an edge the whole 5 MB list again; under the
	// race detector on a loaded 2-core machine one such map took 3.4 s,
	// so these waits allow more than stream_test.go's wait.
	const routesWait = 30 * time.Second
	big := headers(size)
	for i := range nodes {
		n := newNode(t, c.URL)
		n.register(t, ak, fmt.Sprintf("dev%d", i))
		for j := range perNode {
			expose(t, n, wire.ExposeRequest{Name: fmt.Sprintf("big%d-%d", i, j), Proto: "http", Port: 3000, Options: big})
		}
	}
	all := func(want int) func(nm *wire.NetMap) bool {
		last := -1
		return func(nm *wire.NetMap) bool {
			if len(nm.EdgeRoutes) != last {
				last = len(nm.EdgeRoutes)
				t.Logf("edge has %d routes", last)
			}
			if len(nm.EdgeRoutes) != want {
				return false
			}
			for _, r := range nm.EdgeRoutes {
				if !r.Options.Equal(big) {
					return false
				}
			}
			return true
		}
	}
	w1.waitFor("edge1 gets every route", routesWait, all(nodes*perNode))

	ed2 := newNode(t, c.URL)
	ed2.register(t, ek, "edge2")
	w2 := watch(t, ed2)
	w2.waitFor("edge2 gets every route in its first map", routesWait, all(nodes*perNode))

	if err := c.Server.RemoveRoutes(context.Background(), "big0-0."+edgeDomain); err != nil {
		t.Fatal(err)
	}
	w1.waitFor("edge1 sees the removal", routesWait, all(nodes*perNode-1))
	w2.waitFor("edge2 sees the removal", routesWait, all(nodes*perNode-1))
}
