package node_test

import (
	"errors"
	"net"
	"strconv"
	"strings"
	"testing"

	"beam.dev/beam/beamtest/harness"
	"beam.dev/beam/coordinator"
	"beam.dev/beam/localapi/apitype"
	"beam.dev/beam/node"
)

// TestExposeBadInput refuses what cannot be published: bad ports and
// protocols, a node not in the mesh, a coordinator without an edge, and
// withdrawing a route the node does not serve.
func TestExposeBadInput(t *testing.T) {
	idle := idleNode(t)
	for _, tc := range []struct {
		name string
		req  apitype.ExposeRequest
		want string
	}{
		{"port 0", apitype.ExposeRequest{Port: 0}, "port"},
		{"unknown protocol", apitype.ExposeRequest{Port: 80, Proto: "quic"}, `unknown protocol "quic"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := idle.Expose(opCtx(t), tc.req)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Expose(%+v) = %+v, %v; want an error saying %q", tc.req, r, err, tc.want)
			}
		})
	}
	if _, err := idle.Expose(opCtx(t), apitype.ExposeRequest{Port: 80}); !errors.Is(err, node.ErrNotRunning) {
		t.Errorf("Expose on a node never brought up = %v, want ErrNotRunning", err)
	}
	if err := idle.Unexpose(opCtx(t), "web", ""); !errors.Is(err, node.ErrNotRunning) {
		t.Errorf("Unexpose on a node never brought up = %v, want ErrNotRunning", err)
	}
	if got := idle.ExposedRoutes(); len(got) != 0 {
		t.Errorf("ExposedRoutes of a node never brought up = %v, want none", got)
	}

	// A coordinator without an edge domain publishes nothing.
	noEdge := harness.NewCluster(t, harness.Options{}).AddNode("alpha", "")
	if r, err := noEdge.Expose(opCtx(t), apitype.ExposeRequest{Port: 80}); err == nil {
		t.Errorf("Expose without an edge = %+v, want an error", r)
	}
	if err := noEdge.Unexpose(opCtx(t), "alpha", ""); !errors.Is(err, node.ErrNoSuchRoute) {
		t.Errorf("Unexpose of nothing = %v, want ErrNoSuchRoute", err)
	}
}

// TestExposeAndUnexpose publishes an HTTP and a TCP route, lists them,
// warns about a port nothing listens on, and withdraws them by label and
// by tcp:PORT.
func TestExposeAndUnexpose(t *testing.T) {
	c := harness.NewCluster(t, harness.Options{EdgeDomain: "example.test", EdgeTCPPorts: coordinator.PortRange{First: 20000, Last: 20009}})
	alpha := c.AddNode("alpha", "")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := uint16(ln.Addr().(*net.TCPAddr).Port)

	web, err := alpha.Expose(opCtx(t), apitype.ExposeRequest{Port: port, Name: "web"})
	if err != nil {
		t.Fatal(err)
	}
	if web.Host != "web.example.test" || !strings.Contains(web.URL, "web.example.test") || web.Proto != "http" || web.Port != port || web.Warning != "" {
		t.Errorf("Expose http = %+v, want web.example.test for port %d without a warning", web, port)
	}
	ln.Close() // nothing listens on port from here on
	raw, err := alpha.Expose(opCtx(t), apitype.ExposeRequest{Port: port, Name: "raw", Proto: "tcp"})
	if err != nil {
		t.Fatal(err)
	}
	if raw.PublicPort < 20000 || raw.PublicPort > 20009 || !strings.Contains(raw.Warning, "nothing is listening") {
		t.Errorf("Expose tcp = %+v, want a public port in 20000-20009 and a warning that nothing listens", raw)
	}
	routes := alpha.ExposedRoutes()
	if len(routes) != 2 {
		t.Fatalf("ExposedRoutes = %+v, want the two routes", routes)
	}
	for _, r := range routes {
		if r.Port != port {
			t.Errorf("route %+v, want local port %d", r, port)
		}
	}

	for _, tc := range []struct{ name, proto string }{
		{"nosuch", ""},
		{"web", "tcp"}, // web is an http route
		{"tcp:1", ""},
		{"", ""},
	} {
		if err := alpha.Unexpose(opCtx(t), tc.name, tc.proto); !errors.Is(err, node.ErrNoSuchRoute) {
			t.Errorf("Unexpose(%q, %q) = %v, want ErrNoSuchRoute", tc.name, tc.proto, err)
		}
	}
	if n := len(alpha.ExposedRoutes()); n != 2 {
		t.Fatalf("refused withdrawals left %d routes, want 2", n)
	}

	if err := alpha.Unexpose(opCtx(t), "WEB", ""); err != nil {
		t.Fatalf("Unexpose by label: %v", err)
	}
	if routes := alpha.ExposedRoutes(); len(routes) != 1 || routes[0].Proto != "tcp" {
		t.Fatalf("after withdrawing web: %+v, want only the tcp route", routes)
	}
	if err := alpha.Unexpose(opCtx(t), "web", ""); !errors.Is(err, node.ErrNoSuchRoute) {
		t.Errorf("second Unexpose of web = %v, want ErrNoSuchRoute", err)
	}
	if err := alpha.Unexpose(opCtx(t), "tcp:"+strconv.Itoa(int(raw.PublicPort)), ""); err != nil {
		t.Fatalf("Unexpose tcp:%d: %v", raw.PublicPort, err)
	}
	if routes := alpha.ExposedRoutes(); len(routes) != 0 {
		t.Errorf("after withdrawing both: %+v, want none", routes)
	}
}
