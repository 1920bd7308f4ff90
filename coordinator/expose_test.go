package coordinator_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"beam.dev/beam/coordclient"
	"beam.dev/beam/coordinator"
	"beam.dev/beam/dnsserver"
	"beam.dev/beam/wire"
)

const edgeDomain = "example.test"

// edgeOpts configures a coordinator with a public edge.
func edgeOpts(tcp, udp string) func(*coordinator.Options) {
	return func(o *coordinator.Options) {
		o.EdgeDomain = edgeDomain
		o.EdgeHost = "edge.example.test"
		if tcp != "" {
			o.EdgeTCPPorts, _ = coordinator.ParsePortRange(tcp)
		}
		if udp != "" {
			o.EdgeUDPPorts, _ = coordinator.ParsePortRange(udp)
		}
	}
}

func expose(t testing.TB, n *node, req wire.ExposeRequest) *wire.ExposeResponse {
	t.Helper()
	resp, err := n.Expose(context.Background(), req)
	if err != nil {
		t.Fatalf("expose %+v: %v", req, err)
	}
	return resp
}

func v4(n *wire.Node) netip.Addr {
	for _, p := range n.Addresses {
		if p.Addr().Is4() {
			return p.Addr()
		}
	}
	return netip.Addr{}
}

// filterAllowsProto is filterAllows for one IP protocol.
func filterAllowsProto(rules []wire.FilterRule, src, dst netip.Addr, port uint16, proto int) bool {
	for _, r := range rules {
		if len(r.Protos) > 0 && !slices.Contains(r.Protos, proto) {
			continue
		}
		if filterAllows([]wire.FilterRule{r}, src, dst, port) {
			return true
		}
	}
	return false
}

func hasRoute(rs []wire.EdgeRoute, host, proto string, target netip.AddrPort) bool {
	return slices.ContainsFunc(rs, func(r wire.EdgeRoute) bool {
		return r.Host == host && r.Proto == proto && r.Target == target
	})
}

func TestExposeProtos(t *testing.T) {
	c := startCoord(t, func(o *coordinator.Options) {
		edgeOpts("20000-20009", "21000-21009")(o)
		o.EdgeHTTPURL = "http://{host}:18081"
	})
	a := newNode(t, c.URL)
	reg := a.register(t, c.authKey(t, coordinator.AuthKeyOptions{}), "alpha")
	addr := v4(reg.Node)
	tests := []struct {
		req        wire.ExposeRequest
		host, url  string
		publicPort uint16
	}{
		{wire.ExposeRequest{Proto: "http", Port: 3000}, "alpha.example.test", "http://alpha.example.test:18081", 0},
		{wire.ExposeRequest{Name: "Secure", Proto: "tls", Port: 8443}, "secure.example.test", "https://secure.example.test", 0},
		{wire.ExposeRequest{Name: "db", Proto: "tcp", Port: 5432}, "db.example.test", "tcp://edge.example.test:20000", 20000},
		{wire.ExposeRequest{Name: "game", Proto: "udp", Port: 27015}, "game.example.test", "udp://edge.example.test:21000", 21000},
	}
	for _, tt := range tests {
		t.Run(tt.req.Proto, func(t *testing.T) {
			resp := expose(t, a, tt.req)
			want := wire.EdgeRoute{Host: tt.host, Proto: tt.req.Proto, PublicPort: tt.publicPort, Node: a.NodeKey(),
				Target: netip.AddrPortFrom(addr, tt.req.Port)}
			if resp.Route == nil || resp.Route.Host != want.Host || resp.Route.Proto != want.Proto ||
				resp.Route.PublicPort != want.PublicPort || resp.Route.Node != want.Node || resp.Route.Target != want.Target {
				t.Errorf("route = %+v, want %+v", resp.Route, want)
			}
			if resp.URL != tt.url {
				t.Errorf("URL = %q, want %q", resp.URL, tt.url)
			}
		})
	}
	if got := len(c.Server.Routes(context.Background())); got != len(tests) {
		t.Errorf("admin lists %d routes, want %d", got, len(tests))
	}
	// Options reach the route; options the edge could not enforce and
	// bad requests do not.
	auth := wire.RouteOptions{BasicAuth: []wire.BasicAuthUser{{User: "u", Secret: "plain:p"}}}
	resp := expose(t, a, wire.ExposeRequest{Proto: "http", Port: 3000, Options: auth})
	if !resp.Route.Options.Equal(auth) {
		t.Errorf("options = %+v, want %+v", resp.Route.Options, auth)
	}
	// A rate that is no rate does not even decode.
	for _, r := range []wire.Rate{{Count: 0, Per: time.Second}, {Count: 5, Per: 3 * time.Second}} {
		_, err := a.Expose(context.Background(), wire.ExposeRequest{Proto: "http", Port: 3000, Options: wire.RouteOptions{RateLimit: r}})
		if err == nil || !strings.Contains(err.Error(), "rate") {
			t.Errorf("expose with rate %+v = %v, want an error about the rate", r, err)
		}
	}
	for _, bad := range []wire.ExposeRequest{
		{Proto: "http", Port: 3000, Options: wire.RouteOptions{AllowIP: []netip.Prefix{{}}}},
		{Proto: "http", Port: 3000, Options: wire.RouteOptions{AllowIP: []netip.Prefix{netip.MustParsePrefix("192.0.2.1/24")}}},
		{Proto: "http", Port: 3000, Options: wire.RouteOptions{BasicAuth: []wire.BasicAuthUser{{User: "u", Secret: "hunter2"}}}},
		{Proto: "tcp", Port: 3000, Options: auth},
		{Proto: "http", Port: 3000, Options: wire.RouteOptions{ProxyProtocol: 2}},
		{Proto: "http", Port: 3000, Options: wire.RouteOptions{HeaderAdd: map[string]string{"X-A": "a\nb"}}},
		{Proto: "gopher", Port: 70},
		{Proto: "http", Port: 0},
	} {
		if _, err := a.Expose(context.Background(), bad); !errors.Is(err, coordclient.ErrNameInvalid) {
			t.Errorf("expose %+v = %v, want ErrNameInvalid", bad, err)
		}
	}
}

func TestExposeEdgeStream(t *testing.T) {
	c := startCoord(t, edgeOpts("20000-20009", "21000-21009"))
	ak := c.authKey(t, coordinator.AuthKeyOptions{Reusable: true})
	a, b := newNode(t, c.URL), newNode(t, c.URL)
	a.register(t, ak, "alpha")
	b.register(t, ak, "beta")
	ed := newNode(t, c.URL)
	edReg := ed.register(t, c.authKey(t, coordinator.AuthKeyOptions{Network: "edges", Edge: true}), "edge1")
	if !edReg.Node.Edge {
		t.Fatal("node registered with an edge key is not an edge")
	}
	edgeAddr := v4(edReg.Node)

	we, wa, wb := watch(t, ed), watch(t, a), watch(t, b)
	nm := we.waitFor("edge full map", wait, func(nm *wire.NetMap) bool { return nm.Self != nil })
	if len(nm.Peers) != 0 || len(nm.EdgeRoutes) != 0 {
		t.Fatalf("edge sees peers %v routes %v before any route", nm.Peers, nm.EdgeRoutes)
	}
	if len(nm.ExpandedFilter()) != 0 {
		t.Fatalf("edge filter = %+v, want empty", nm.ExpandedFilter())
	}
	nma := wa.waitFor("alpha sees beta", wait, func(nm *wire.NetMap) bool { return peerNamed(nm, "beta") != nil })
	if peerNamed(nma, "edge1") != nil {
		t.Fatal("alpha sees the edge before serving a route")
	}
	alphaAddr := v4(nma.Self)

	start := time.Now()
	expose(t, a, wire.ExposeRequest{Proto: "http", Port: 3000, Upstream: "https://localhost:3000"})
	expose(t, a, wire.ExposeRequest{Name: "voice", Proto: "udp", Port: 5000})
	nm = we.waitFor("edge gets routes", wait, func(nm *wire.NetMap) bool {
		return hasRoute(nm.EdgeRoutes, "alpha.example.test", "http", netip.AddrPortFrom(alphaAddr, 3000)) &&
			hasRoute(nm.EdgeRoutes, "voice.example.test", "udp", netip.AddrPortFrom(alphaAddr, 5000)) &&
			peerNamed(nm, "alpha") != nil
	})
	if d := time.Since(start); d > time.Second {
		t.Errorf("routes took %v to reach the edge, want under a second", d)
	}
	for _, r := range nm.EdgeRoutes {
		if r.Upstream != "" {
			t.Errorf("the edge sees the device's upstream %q of %s", r.Upstream, r.Host)
		}
	}
	if peerNamed(nm, "beta") != nil || len(nm.Peers) != 1 {
		t.Errorf("edge peers = %v, want only alpha", nm.Peers)
	}
	if len(nm.ExpandedFilter()) != 0 {
		t.Errorf("edge filter = %+v, want empty", nm.ExpandedFilter())
	}

	// The serving node sees the edge and lets it reach only the exposed ports.
	nma = wa.waitFor("alpha sees the edge", wait, func(nm *wire.NetMap) bool {
		// Both routes (3000/tcp and 5000/udp) may arrive in separate deltas.
		return peerNamed(nm, "edge1") != nil && filterAllowsProto(nm.ExpandedFilter(), edgeAddr, alphaAddr, 3000, 6) &&
			filterAllowsProto(nm.ExpandedFilter(), edgeAddr, alphaAddr, 5000, 17) && len(nm.EdgeRoutes) == 2
	})
	checks := []struct {
		src   netip.Addr
		port  uint16
		proto int
		want  bool
	}{
		{edgeAddr, 3000, 6, true},
		{edgeAddr, 5000, 17, true},
		{edgeAddr, 5000, 6, false},
		{edgeAddr, 3000, 17, false},
		{edgeAddr, 22, 6, false},
		{v4(peerNamed(nma, "beta")), 22, 6, true},
		{v4(peerNamed(nma, "beta")), 3000, 6, true},
	}
	for _, ch := range checks {
		if got := filterAllowsProto(nma.ExpandedFilter(), ch.src, alphaAddr, ch.port, ch.proto); got != ch.want {
			t.Errorf("alpha filter from %v to port %d/%d = %v, want %v (filter %+v)", ch.src, ch.port, ch.proto, got, ch.want, nma.ExpandedFilter())
		}
	}
	if len(nma.EdgeRoutes) != 2 {
		t.Errorf("alpha's own routes = %+v, want 2", nma.EdgeRoutes)
	}
	// Other nodes never see the edge.
	nmb := wb.waitFor("beta map", wait, func(nm *wire.NetMap) bool { return peerNamed(nm, "alpha") != nil })
	if peerNamed(nmb, "edge1") != nil {
		t.Error("beta sees the edge")
	}

	// Withdrawing one route reaches the edge within a second too.
	start = time.Now()
	if _, err := a.Expose(context.Background(), wire.ExposeRequest{Name: "voice", Proto: "udp", Remove: true}); err != nil {
		t.Fatal(err)
	}
	we.waitFor("udp route gone", wait, func(nm *wire.NetMap) bool {
		return len(nm.EdgeRoutes) == 1 && nm.EdgeRoutes[0].Proto == "http"
	})
	if d := time.Since(start); d > time.Second {
		t.Errorf("removal took %v to reach the edge", d)
	}
	wa.waitFor("udp port closed to the edge", wait, func(nm *wire.NetMap) bool {
		return !filterAllowsProto(nm.ExpandedFilter(), edgeAddr, alphaAddr, 5000, 17) && filterAllowsProto(nm.ExpandedFilter(), edgeAddr, alphaAddr, 3000, 6)
	})

	// Endpoint changes of the serving node reach the edge across networks.
	eps := []netip.AddrPort{netip.MustParseAddrPort("192.0.2.7:41641")}
	a.SetEndpoints(eps, 1)
	we.waitFor("alpha endpoints at the edge", wait, func(nm *wire.NetMap) bool {
		p := peerNamed(nm, "alpha")
		return p != nil && slices.Equal(p.Endpoints, eps)
	})

	// An edge may not expose ports.
	if _, err := ed.Expose(context.Background(), wire.ExposeRequest{Proto: "http", Port: 80}); !errors.Is(err, coordclient.ErrForbidden) {
		t.Errorf("edge expose = %v, want ErrForbidden", err)
	}
}

func TestExposeNameOwnership(t *testing.T) {
	c := startCoord(t, edgeOpts("20000-20009", ""))
	ctx := context.Background()
	if err := c.Server.SetPolicy(ctx, []byte(`{
		"tagOwners": {"tag:web": []},
		"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],
		"expose": [{"src": ["*"], "names": ["*"]}],
	}`)); err != nil {
		t.Fatal(err)
	}
	for _, u := range []string{"alice", "bob"} {
		if _, err := c.Server.CreateUser(ctx, u); err != nil {
			t.Fatal(err)
		}
	}
	reg := func(opts coordinator.AuthKeyOptions, name string) *node {
		n := newNode(t, c.URL)
		n.register(t, c.authKey(t, opts), name)
		return n
	}
	a1 := reg(coordinator.AuthKeyOptions{User: "alice"}, "one")
	a2 := reg(coordinator.AuthKeyOptions{User: "alice"}, "two")
	bob := reg(coordinator.AuthKeyOptions{User: "bob"}, "bob")
	web1 := reg(coordinator.AuthKeyOptions{Tags: []string{"tag:web"}}, "web1")
	web2 := reg(coordinator.AuthKeyOptions{Tags: []string{"tag:web"}}, "web2")
	other := reg(coordinator.AuthKeyOptions{Network: "other"}, "bee")

	expose(t, a1, wire.ExposeRequest{Name: "app", Proto: "http", Port: 3000, Options: wire.RouteOptions{BasicAuth: []wire.BasicAuthUser{{User: "u", Secret: "plain:p"}}}})
	for _, name := range []string{"app", "APP", "app.", "App.Example.Test."} {
		_, err := other.Expose(ctx, wire.ExposeRequest{Name: name, Proto: "http", Port: 80})
		if !errors.Is(err, coordclient.ErrNameTaken) || !strings.Contains(err.Error(), "name app.example.test is taken by another network") {
			t.Errorf("other network exposing %q = %v, want ErrNameTaken", name, err)
		}
	}
	// Another protocol on the same name is still the same name.
	if _, err := other.Expose(ctx, wire.ExposeRequest{Name: "app", Proto: "tcp", Port: 80}); !errors.Is(err, coordclient.ErrNameTaken) {
		t.Errorf("other network, other proto = %v, want ErrNameTaken", err)
	}

	// Within the network, a name served by one node is refused to every
	// other, naming the owner, unless both asked for a pool and share a
	// user or tag.
	refused := []struct {
		name string
		n    *node
		req  wire.ExposeRequest
	}{
		{"same user without pool", a2, wire.ExposeRequest{Name: "app", Proto: "http", Port: 3001}},
		{"other user", bob, wire.ExposeRequest{Name: "app", Proto: "http", Port: 8001}},
		{"other user with pool, owner without", bob, wire.ExposeRequest{Name: "app", Proto: "http", Port: 8001, Pool: true}},
		{"same user with pool, owner without", a2, wire.ExposeRequest{Name: "app", Proto: "http", Port: 3001, Pool: true}},
		{"other proto", bob, wire.ExposeRequest{Name: "app", Proto: "tcp", Port: 8001}},
		{"tls on the name", bob, wire.ExposeRequest{Name: "App", Proto: "tls", Port: 8443}},
	}
	for _, tt := range refused {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.n.Expose(ctx, tt.req)
			if !errors.Is(err, coordclient.ErrNameTaken) || !strings.Contains(err.Error(), "node one (user alice)") {
				t.Errorf("expose = %v, want ErrNameTaken naming node one (user alice)", err)
			}
		})
	}
	if got := c.Server.Routes(ctx); len(got) != 1 || got[0].NodeName != "one" {
		t.Fatalf("routes after refusals = %+v, want only one's", got)
	}
	// Nor may the refused node prove control of the name for a certificate.
	if err := bob.SetTXT(ctx, "_acme-challenge.app.example.test", []string{"x"}); !errors.Is(err, coordclient.ErrForbidden) {
		t.Errorf("non-owner SetTXT = %v, want ErrForbidden", err)
	}

	// Pools: every member asks, and they share a user or a tag.
	expose(t, a1, wire.ExposeRequest{Name: "shop", Proto: "http", Port: 3000, Pool: true})
	if r := expose(t, a2, wire.ExposeRequest{Name: "Shop.", Proto: "http", Port: 3001, Pool: true}); r.Route.Host != "shop.example.test" || !r.Route.Pool {
		t.Fatalf("pool member route = %+v", r.Route)
	}
	for _, n := range []*node{bob, web1} {
		if _, err := n.Expose(ctx, wire.ExposeRequest{Name: "shop", Proto: "http", Port: 80, Pool: true}); !errors.Is(err, coordclient.ErrNameTaken) ||
			!strings.Contains(err.Error(), "one user or one tag") {
			t.Errorf("outsider joining the pool = %v, want ErrNameTaken", err)
		}
	}
	// tcp pools share the public port; tagged nodes pool by tag.
	t1 := expose(t, web1, wire.ExposeRequest{Name: "db", Proto: "tcp", Port: 5432, Pool: true})
	t2 := expose(t, web2, wire.ExposeRequest{Name: "db", Proto: "tcp", Port: 5432, Pool: true})
	if t1.Route.PublicPort == 0 || t1.Route.PublicPort != t2.Route.PublicPort {
		t.Errorf("tcp pool ports %d and %d, want one shared port", t1.Route.PublicPort, t2.Route.PublicPort)
	}

	// Once the owner's routes are gone, the name is free again.
	if err := c.Server.RemoveRoutes(ctx, "app.example.test"); err != nil {
		t.Fatal(err)
	}
	expose(t, bob, wire.ExposeRequest{Name: "app", Proto: "http", Port: 80})
}

// TestExposeRoutesIndependent checks that each expose of one device owns
// its route: a second one under the default name gets the next name, under
// an explicit name it is refused, and a re-expose of the same port keeps
// the route.
func TestExposeRoutesIndependent(t *testing.T) {
	c := startCoord(t, edgeOpts("20000-20009", "21000-21009"))
	ctx := context.Background()
	a := newNode(t, c.URL)
	a.register(t, c.authKey(t, coordinator.AuthKeyOptions{}), "alpha")

	hosts := []struct {
		req  wire.ExposeRequest
		host string
		port uint16
	}{
		{wire.ExposeRequest{Proto: "http", Port: 3000}, "alpha.example.test", 0},
		{wire.ExposeRequest{Proto: "http", Port: 4000}, "alpha-2.example.test", 0},
		{wire.ExposeRequest{Proto: "http", Port: 3000}, "alpha.example.test", 0}, // re-expose
		{wire.ExposeRequest{Proto: "http", Port: 5000}, "alpha-3.example.test", 0},
		{wire.ExposeRequest{Proto: "tcp", Port: 5432}, "alpha.example.test", 20000},
		{wire.ExposeRequest{Proto: "tcp", Port: 6379}, "alpha-2.example.test", 20001},
		{wire.ExposeRequest{Proto: "tcp", Port: 5432}, "alpha.example.test", 20000},
		{wire.ExposeRequest{Proto: "udp", Port: 53}, "alpha.example.test", 21000},
	}
	for _, tt := range hosts {
		r := expose(t, a, tt.req).Route
		if r.Host != tt.host || r.PublicPort != tt.port {
			t.Errorf("expose %s %d = %s port %d, want %s port %d", tt.req.Proto, tt.req.Port, r.Host, r.PublicPort, tt.host, tt.port)
		}
	}
	if got := len(c.Server.Routes(ctx)); got != 6 {
		t.Errorf("%d routes, want 6", got)
	}
	// An explicit name already used for another port is refused with a hint.
	expose(t, a, wire.ExposeRequest{Name: "app", Proto: "http", Port: 3000})
	_, err := a.Expose(ctx, wire.ExposeRequest{Name: "app", Proto: "http", Port: 4000})
	if !errors.Is(err, coordclient.ErrNameTaken) || !strings.Contains(err.Error(), "beam expose stop app") {
		t.Errorf("second route on an explicit name = %v, want ErrNameTaken with a hint", err)
	}
	// Upstreams: http only, host:port or https://host:port with the
	// route's port, one per port of the device.
	for _, bad := range []wire.ExposeRequest{
		{Name: "up", Proto: "udp", Port: 80, Upstream: "127.0.0.2:80"},
		{Name: "up", Proto: "tcp", Port: 80, Upstream: "https://127.0.0.2:80"},
		{Name: "up", Proto: "http", Port: 80, Upstream: "127.0.0.2"},
		{Name: "up", Proto: "http", Port: 80, Upstream: "127.0.0.2:81"},
		{Name: "up", Proto: "http", Port: 80, Upstream: "ftp://127.0.0.2:80"},
		{Name: "up", Proto: "http", Port: 80, Upstream: "a b:80"},
		{Name: "up", Proto: "http", Port: 80, Upstream: ":80"},
	} {
		if _, err := a.Expose(ctx, bad); !errors.Is(err, coordclient.ErrNameInvalid) {
			t.Errorf("expose with upstream %q (%s) = %v, want ErrNameInvalid", bad.Upstream, bad.Proto, err)
		}
	}
	if r := expose(t, a, wire.ExposeRequest{Name: "lan", Proto: "http", Port: 80, Upstream: "127.0.0.2:80"}).Route; r.Upstream != "127.0.0.2:80" {
		t.Errorf("route upstream = %q, want 127.0.0.2:80", r.Upstream)
	}
	for _, proto := range []string{"http", "tcp"} {
		if _, err := a.Expose(ctx, wire.ExposeRequest{Name: "lan2", Proto: proto, Port: 80, Upstream: "127.0.0.3:80"}); !errors.Is(err, coordclient.ErrNameTaken) ||
			!strings.Contains(err.Error(), "already forwards lan.example.test to 127.0.0.2:80") {
			t.Errorf("second upstream on port 80 (%s) = %v, want ErrNameTaken naming the first", proto, err)
		}
	}
	if r := expose(t, a, wire.ExposeRequest{Name: "ssh", Proto: "tcp", Port: 22, Upstream: "127.0.0.2:22"}).Route; r.Upstream != "127.0.0.2:22" || r.PublicPort == 0 {
		t.Errorf("tcp route with an upstream = %+v", r)
	}
	// Withdrawing the tcp route leaves the udp and http routes of the name.
	if _, err := a.Expose(ctx, wire.ExposeRequest{Proto: "tcp", Remove: true}); err != nil {
		t.Fatal(err)
	}
	var protos []string
	for _, r := range c.Server.Routes(ctx) {
		if r.Host == "alpha.example.test" {
			protos = append(protos, r.Proto)
		}
	}
	if !slices.Equal(protos, []string{"http", "udp"}) {
		t.Errorf("alpha's routes after removing tcp = %v, want [http udp]", protos)
	}
}

func TestExposeReservedNames(t *testing.T) {
	c := startCoord(t, edgeOpts("", ""))
	a := newNode(t, c.URL)
	a.register(t, c.authKey(t, coordinator.AuthKeyOptions{}), "alpha")
	tests := []struct {
		name string
		want error
	}{
		{"www", coordclient.ErrNameReserved},
		{"WWW.", coordclient.ErrNameReserved},
		{"edge", coordclient.ErrNameReserved},
		{"api", coordclient.ErrNameReserved},
		{"_acme-challenge", coordclient.ErrNameReserved},
		{"_x", coordclient.ErrNameReserved},
		{"example.test", coordclient.ErrNameReserved},
		{"Example.Test.", coordclient.ErrNameReserved},
		{"*", coordclient.ErrNameInvalid},
		{"*.app", coordclient.ErrNameInvalid},
		{"a.b", coordclient.ErrNameInvalid},
		{"-x", coordclient.ErrNameInvalid},
		{"x_y", coordclient.ErrNameInvalid},
		{strings.Repeat("a", 64), coordclient.ErrNameInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := a.Expose(context.Background(), wire.ExposeRequest{Name: tt.name, Proto: "http", Port: 80})
			if !errors.Is(err, tt.want) {
				t.Errorf("expose %q = %v, want %v", tt.name, err, tt.want)
			}
		})
	}
	// Custom domains: no wildcards, nothing under the edge domain.
	for _, d := range []string{"*.shop.example.com", "app.example.test", "shop"} {
		if _, err := a.Expose(context.Background(), wire.ExposeRequest{CustomDomain: d, Proto: "http", Port: 80}); !errors.Is(err, coordclient.ErrNameInvalid) {
			t.Errorf("custom domain %q = %v, want ErrNameInvalid", d, err)
		}
	}
	// tcp needs a port range.
	if _, err := a.Expose(context.Background(), wire.ExposeRequest{Proto: "tcp", Port: 22}); !errors.Is(err, coordclient.ErrEdgeDisabled) {
		t.Errorf("tcp without ports = %v, want ErrEdgeDisabled", err)
	}
}

func TestExposeDisabled(t *testing.T) {
	c := startCoord(t, nil)
	a := newNode(t, c.URL)
	a.register(t, c.authKey(t, coordinator.AuthKeyOptions{}), "alpha")
	if _, err := a.Expose(context.Background(), wire.ExposeRequest{Proto: "http", Port: 80}); !errors.Is(err, coordclient.ErrEdgeDisabled) {
		t.Errorf("expose without edge domain = %v, want ErrEdgeDisabled", err)
	}
}

// TestExposeSkipsHeldPorts: a port the edge's host reports held by
// another program (Options.EdgePortFree) is not handed out; when every
// free one is held, the error says so.
func TestExposeSkipsHeldPorts(t *testing.T) {
	var (
		mu    sync.Mutex
		asked []string
	)
	c := startCoord(t, func(o *coordinator.Options) {
		edgeOpts("20000-20002", "20000-20000")(o)
		o.EdgePortFree = func(proto string, port uint16) bool {
			mu.Lock()
			defer mu.Unlock()
			asked = append(asked, fmt.Sprintf("%s/%d", proto, port))
			return port != 20000 // held by another program
		}
	})
	ak := c.authKey(t, coordinator.AuthKeyOptions{Reusable: true})
	a := newNode(t, c.URL)
	a.register(t, ak, "alpha")
	if p := expose(t, a, wire.ExposeRequest{Name: "one", Proto: "tcp", Port: 22}).Route.PublicPort; p != 20001 {
		t.Errorf("first tcp port = %d, want 20001 (20000 is held)", p)
	}
	if p := expose(t, a, wire.ExposeRequest{Name: "two", Proto: "tcp", Port: 22}).Route.PublicPort; p != 20002 {
		t.Errorf("second tcp port = %d, want 20002", p)
	}
	_, err := a.Expose(context.Background(), wire.ExposeRequest{Name: "dns", Proto: "udp", Port: 53})
	if !errors.Is(err, coordclient.ErrPortsExhausted) || !strings.Contains(err.Error(), "other programs") {
		t.Fatalf("udp route on a held port = %v, want ErrPortsExhausted naming other programs", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if want := "udp/20000"; !slices.Contains(asked, want) {
		t.Errorf("probed %v, want %s among them", asked, want)
	}
}

func TestExposePorts(t *testing.T) {
	c := startCoord(t, func(o *coordinator.Options) {
		edgeOpts("20000-20001", "20000-20000")(o)
		o.RouteQuota.NetworkPorts = -1 // one network may take every port
	})
	ak := c.authKey(t, coordinator.AuthKeyOptions{Reusable: true})
	a, b := newNode(t, c.URL), newNode(t, c.URL)
	a.register(t, ak, "alpha")
	b.register(t, ak, "beta")

	p1 := expose(t, a, wire.ExposeRequest{Name: "one", Proto: "tcp", Port: 22}).Route.PublicPort
	p2 := expose(t, b, wire.ExposeRequest{Name: "two", Proto: "tcp", Port: 22}).Route.PublicPort
	if p1 != 20000 || p2 != 20001 {
		t.Fatalf("ports %d, %d; want 20000, 20001", p1, p2)
	}
	// Re-exposing keeps the port.
	if p := expose(t, a, wire.ExposeRequest{Name: "one", Proto: "tcp", Port: 22}).Route.PublicPort; p != p1 {
		t.Errorf("re-expose got port %d, want %d", p, p1)
	}
	// udp has its own range.
	if p := expose(t, a, wire.ExposeRequest{Name: "one", Proto: "udp", Port: 53}).Route.PublicPort; p != 20000 {
		t.Errorf("udp port = %d, want 20000", p)
	}
	_, err := b.Expose(context.Background(), wire.ExposeRequest{Name: "three", Proto: "tcp", Port: 22})
	if !errors.Is(err, coordclient.ErrPortsExhausted) || !strings.Contains(err.Error(), "20000-20001") {
		t.Fatalf("third tcp route = %v, want ErrPortsExhausted naming the range", err)
	}
	if _, err := b.Expose(context.Background(), wire.ExposeRequest{Name: "again", Proto: "udp", Port: 53}); !errors.Is(err, coordclient.ErrPortsExhausted) {
		t.Fatalf("second udp route = %v, want ErrPortsExhausted", err)
	}
	// Withdrawing frees the port.
	if _, err := b.Expose(context.Background(), wire.ExposeRequest{Name: "two", Proto: "tcp", Remove: true}); err != nil {
		t.Fatal(err)
	}
	if p := expose(t, b, wire.ExposeRequest{Name: "three", Proto: "tcp", Port: 22}).Route.PublicPort; p != 20001 {
		t.Errorf("after removal got port %d, want 20001", p)
	}
	// Removing what does not exist says so.
	if _, err := b.Expose(context.Background(), wire.ExposeRequest{Name: "nope", Proto: "tcp", Remove: true}); !errors.Is(err, coordclient.ErrRouteNotFound) {
		t.Errorf("remove of a missing route = %v, want ErrRouteNotFound", err)
	}
}

func routeHosts(c *coord) []string {
	var out []string
	for _, r := range c.Server.Routes(context.Background()) {
		out = append(out, r.Host)
	}
	return out
}

func TestRoutesFollowNodeLifecycle(t *testing.T) {
	c := startCoord(t, func(o *coordinator.Options) {
		edgeOpts("20000-20009", "")(o)
		// Long enough that the ephemeral node, watched from its
		// registration on, is not collected before the test lets it go
		// on a loaded machine; short enough to wait for its removal.
		o.EphemeralTimeout = 500 * time.Millisecond
	})
	ak := c.authKey(t, coordinator.AuthKeyOptions{Reusable: true})
	nodes := map[string]*node{}
	for _, name := range []string{"removed", "expired", "loggedout", "kept"} {
		n := newNode(t, c.URL)
		n.register(t, ak, name)
		expose(t, n, wire.ExposeRequest{Proto: "http", Port: 80})
		nodes[name] = n
	}
	eph := newNode(t, c.URL)
	eph.register(t, c.authKey(t, coordinator.AuthKeyOptions{Ephemeral: true}), "eph")
	// The ephemeral node streams at once: one that never connects is
	// collected after EphemeralTimeout, which a loaded machine can spend
	// before the steps below are done.
	we := watch(t, eph)
	we.waitFor("eph map", wait, func(nm *wire.NetMap) bool { return nm.Self != nil })
	expose(t, eph, wire.ExposeRequest{Proto: "tcp", Port: 22})
	if got := len(routeHosts(c)); got != 5 {
		t.Fatalf("routes = %v", routeHosts(c))
	}
	ed := newNode(t, c.URL)
	ed.register(t, c.authKey(t, coordinator.AuthKeyOptions{Edge: true}), "edge")
	wed := watch(t, ed)
	wed.waitFor("five routes", wait, func(nm *wire.NetMap) bool { return len(nm.EdgeRoutes) == 5 && len(nm.Peers) == 5 })
	ctx := context.Background()
	if err := c.Server.RemoveNode(ctx, "removed"); err != nil {
		t.Fatal(err)
	}
	if err := c.Server.ExpireNode(ctx, "expired"); err != nil {
		t.Fatal(err)
	}
	if _, err := nodes["loggedout"].Register(ctx, coordclient.RegisterParams{Logout: true}); err != nil {
		t.Fatal(err)
	}
	// The ephemeral node goes offline after one stream and is deleted.
	we.stop()
	wed.waitFor("only kept's route and peer", wait, func(nm *wire.NetMap) bool {
		return len(nm.EdgeRoutes) == 1 && nm.EdgeRoutes[0].Host == "kept.example.test" && len(nm.Peers) == 1 && peerNamed(nm, "kept") != nil
	})
	if got, want := routeHosts(c), []string{"kept.example.test"}; !slices.Equal(got, want) {
		t.Fatalf("routes = %v, want %v", got, want)
	}
	// The names are free again: for the expired node's new registration and across restarts.
	c.restart()
	if got, want := routeHosts(c), []string{"kept.example.test"}; !slices.Equal(got, want) {
		t.Fatalf("routes after restart = %v, want %v", got, want)
	}
}

func TestRoutesSurviveRestart(t *testing.T) {
	c := startCoord(t, edgeOpts("20000-20009", ""))
	a := newNode(t, c.URL)
	a.register(t, c.authKey(t, coordinator.AuthKeyOptions{}), "alpha")
	expose(t, a, wire.ExposeRequest{Proto: "http", Port: 3000, Options: wire.RouteOptions{RateLimit: wire.Rate{Count: 20, Per: time.Second}}})
	db := expose(t, a, wire.ExposeRequest{Name: "db", Proto: "tcp", Port: 5432})
	before := c.Server.Routes(context.Background())

	c.restart()
	after := c.Server.Routes(context.Background())
	if len(after) != 2 {
		t.Fatalf("routes after restart = %+v", after)
	}
	for i := range before {
		b, a := before[i], after[i]
		if b.Host != a.Host || b.Proto != a.Proto || b.PublicPort != a.PublicPort || b.Target != a.Target ||
			!b.Options.Equal(a.Options) || a.Options.RateLimit.String() != map[int]string{0: "20/s", 1: ""}[i] || b.URL != a.URL {
			t.Errorf("route %d: before %+v, after %+v", i, b, a)
		}
	}
	// An edge joining after the restart gets them, and re-exposing keeps the port.
	ed := newNode(t, c.URL)
	ed.register(t, c.authKey(t, coordinator.AuthKeyOptions{Edge: true}), "edge")
	we := watch(t, ed)
	we.waitFor("routes at the edge", wait, func(nm *wire.NetMap) bool { return len(nm.EdgeRoutes) == 2 && peerNamed(nm, "alpha") != nil })
	if p := expose(t, a, wire.ExposeRequest{Name: "db", Proto: "tcp", Port: 5432}).Route.PublicPort; p != db.Route.PublicPort {
		t.Errorf("port after restart = %d, want %d", p, db.Route.PublicPort)
	}
}

// testDNS is an authoritative DNS server on loopback with TXT and CNAME
// records tests can change.
type testDNS struct {
	addr string
	mu   sync.Mutex
	txt  map[string][]string
	cn   map[string]string
}

func startTestDNS(t *testing.T) *testDNS {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	td := &testDNS{addr: pc.LocalAddr().String(), txt: map[string][]string{}, cn: map[string]string{}}
	started := make(chan struct{})
	srv := &dns.Server{PacketConn: pc, Handler: td, NotifyStartedFunc: func() { close(started) }}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.ActivateAndServe()
	}()
	<-started
	t.Cleanup(func() {
		srv.Shutdown()
		<-done
	})
	return td
}

func (td *testDNS) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	q := req.Question[0]
	name := strings.ToLower(strings.TrimSuffix(q.Name, "."))
	td.mu.Lock()
	txt, cname := td.txt[name], td.cn[name]
	td.mu.Unlock()
	switch {
	case cname != "":
		m.Answer = append(m.Answer, &dns.CNAME{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeCNAME, Class: dns.ClassINET, Ttl: 1}, Target: dns.Fqdn(cname)})
	case q.Qtype == dns.TypeTXT && len(txt) > 0:
		for _, v := range txt { // one record per value
			m.Answer = append(m.Answer, &dns.TXT{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 1}, Txt: []string{v}})
		}
	case len(txt) == 0:
		m.Rcode = dns.RcodeNameError
	}
	w.WriteMsg(m)
}

func (td *testDNS) set(name string, txt ...string) {
	td.mu.Lock()
	td.txt[name] = txt
	td.mu.Unlock()
}

func (td *testDNS) resolver() *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "udp", td.addr)
	}}
}

func TestCustomDomain(t *testing.T) {
	td := startTestDNS(t)
	c := startCoord(t, func(o *coordinator.Options) {
		edgeOpts("", "")(o)
		o.LookupTXT = td.resolver().LookupTXT
		o.LookupCNAME = td.resolver().LookupCNAME
	})
	a := newNode(t, c.URL)
	a.register(t, c.authKey(t, coordinator.AuthKeyOptions{}), "alpha")
	b := newNode(t, c.URL)
	b.register(t, c.authKey(t, coordinator.AuthKeyOptions{Network: "other"}), "bee")
	req := wire.ExposeRequest{CustomDomain: "Shop.Example.COM.", Proto: "http", Port: 3000}

	_, err := a.Expose(context.Background(), req)
	if !errors.Is(err, coordclient.ErrDomainNotVerified) || !strings.Contains(err.Error(), "_beam-challenge.shop.example.com") {
		t.Fatalf("expose before proof = %v, want ErrDomainNotVerified naming the TXT record", err)
	}
	admin := coordclient.NewAdmin(c.URL, testToken, nil)
	st, err := admin.VerifyDomain(context.Background(), "shop.example.com", "")
	if err != nil {
		t.Fatal(err)
	}
	if st.Verified || st.Token == "" || st.TXTName != "_beam-challenge.shop.example.com" || st.Network != "default" || st.Problem == "" {
		t.Fatalf("status before proof = %+v", st)
	}
	// A wrong token is not a proof; the other network's token is not ours.
	td.set("_beam-challenge.shop.example.com", "beam-verify-wrong")
	if st, err := admin.VerifyDomain(context.Background(), "shop.example.com", ""); err != nil || st.Verified {
		t.Fatalf("verify with wrong token = %+v, %v", st, err)
	}
	td.set("_beam-challenge.shop.example.com", "unrelated", st.Token)
	st2, err := admin.VerifyDomain(context.Background(), "shop.example.com", "")
	if err != nil || !st2.Verified || st2.Token != st.Token {
		t.Fatalf("verify after proof = %+v, %v", st2, err)
	}
	resp := expose(t, a, req)
	if resp.Route.Host != "shop.example.com" || !resp.Route.CustomDomain || resp.URL != "https://shop.example.com" {
		t.Fatalf("custom route = %+v, URL %q", resp.Route, resp.URL)
	}
	// The other network has no proof (and the name is taken anyway).
	if _, err := b.Expose(context.Background(), req); !errors.Is(err, coordclient.ErrNameTaken) {
		t.Errorf("other network = %v, want ErrNameTaken", err)
	}
	if st, err := admin.VerifyDomain(context.Background(), "shop.example.com", "other"); err != nil || st.Verified {
		t.Errorf("other network's claim = %+v, %v; want unverified", st, err)
	}

	// A CNAME to a name the network exposes proves control as well.
	expose(t, a, wire.ExposeRequest{Name: "alpha", Proto: "http", Port: 3000})
	td.mu.Lock()
	td.cn["www.shop2.example.com"] = "alpha.example.test"
	td.mu.Unlock()
	expose(t, a, wire.ExposeRequest{CustomDomain: "www.shop2.example.com", Proto: "http", Port: 3000})
	// ... but not for a network that does not expose that name.
	td.mu.Lock()
	td.cn["shop3.example.com"] = "alpha.example.test"
	td.mu.Unlock()
	if _, err := b.Expose(context.Background(), wire.ExposeRequest{CustomDomain: "shop3.example.com", Proto: "http", Port: 80}); !errors.Is(err, coordclient.ErrDomainNotVerified) {
		t.Errorf("CNAME to another network's name = %v, want ErrDomainNotVerified", err)
	}
}

// startZone serves a real public zone on loopback and returns it with a
// query function.
func startZone(t *testing.T) (*dnsserver.Zone, func(name string) []string) {
	t.Helper()
	z := dnsserver.NewZone(dnsserver.ZoneOptions{Origin: edgeDomain, EdgeAddrs: []netip.Addr{netip.MustParseAddr("192.0.2.80")}})
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		z.ServePacket(ctx, pc)
	}()
	t.Cleanup(func() {
		cancel()
		pc.Close()
		<-done
	})
	query := func(name string) []string {
		t.Helper()
		m := new(dns.Msg)
		m.SetQuestion(dns.Fqdn(name), dns.TypeTXT)
		cl := &dns.Client{Timeout: 2 * time.Second}
		r, _, err := cl.Exchange(m, pc.LocalAddr().String())
		if err != nil {
			t.Fatalf("query %s: %v", name, err)
		}
		var out []string
		for _, rr := range r.Answer {
			if txt, ok := rr.(*dns.TXT); ok {
				out = append(out, txt.Txt...)
			}
		}
		return out
	}
	return z, query
}

func TestZoneTXT(t *testing.T) {
	z, query := startZone(t)
	c := startCoord(t, func(o *coordinator.Options) {
		edgeOpts("", "")(o)
		o.Zone = z
	})
	a := newNode(t, c.URL)
	a.register(t, c.authKey(t, coordinator.AuthKeyOptions{}), "alpha")
	ed := newNode(t, c.URL)
	ed.register(t, c.authKey(t, coordinator.AuthKeyOptions{Edge: true}), "edge")
	ctx := context.Background()

	const name = "_acme-challenge.app.example.test"
	if err := a.SetTXT(ctx, name, []string{"x"}); !errors.Is(err, coordclient.ErrForbidden) {
		t.Fatalf("non-edge SetTXT = %v, want ErrForbidden", err)
	}
	if got := query(name); len(got) != 0 {
		t.Fatalf("zone has %v after a refused request", got)
	}
	if err := ed.SetTXT(ctx, name, []string{"token-1"}); err != nil {
		t.Fatal(err)
	}
	if got := query(name); !slices.Equal(got, []string{"token-1"}) {
		t.Fatalf("zone TXT = %v, want [token-1]", got)
	}
	if err := ed.SetTXT(ctx, "_ACME-challenge.Example.Test.", []string{"wild"}); err != nil {
		t.Fatalf("apex challenge: %v", err)
	}
	for _, bad := range []string{"app.example.test", "_acme-challenge.a.b.example.test", "_acme-challenge.unverified.example.com", "_beam-challenge.app.example.test"} {
		if err := ed.SetTXT(ctx, bad, []string{"x"}); !errors.Is(err, coordclient.ErrForbidden) {
			t.Errorf("edge SetTXT %q = %v, want ErrForbidden", bad, err)
		}
	}
	if err := ed.SetTXT(ctx, name, nil); err != nil {
		t.Fatal(err)
	}
	if got := query(name); len(got) != 0 {
		t.Fatalf("zone TXT after delete = %v", got)
	}

	// The admin API sets any name in the zone, and only in the zone.
	admin := coordclient.NewAdmin(c.URL, testToken, nil)
	if err := admin.SetTXT(ctx, "note.example.test", []string{"hello", "world"}); err != nil {
		t.Fatal(err)
	}
	if got := query("note.example.test"); !slices.Equal(got, []string{"hello", "world"}) {
		t.Fatalf("zone TXT via admin = %v", got)
	}
	if err := admin.DeleteTXT(ctx, "note.example.test"); err != nil {
		t.Fatal(err)
	}
	if got := query("note.example.test"); len(got) != 0 {
		t.Fatalf("zone TXT after admin delete = %v", got)
	}
	if err := admin.SetTXT(ctx, "note.elsewhere.test", []string{"x"}); err == nil {
		t.Error("admin SetTXT outside the zone succeeded")
	}
}

func TestZoneTXTWithoutZone(t *testing.T) {
	c := startCoord(t, edgeOpts("", ""))
	admin := coordclient.NewAdmin(c.URL, testToken, nil)
	if err := admin.SetTXT(context.Background(), "x.example.test", []string{"v"}); !errors.Is(err, coordclient.ErrEdgeDisabled) {
		t.Errorf("SetTXT without a zone = %v, want ErrEdgeDisabled", err)
	}
}

func TestDNSConfigReachesNodes(t *testing.T) {
	initial, err := coordinator.ParseDNSSettings([]byte(`{"nameservers": ["192.0.2.53:53"]}`))
	if err != nil {
		t.Fatal(err)
	}
	c := startCoord(t, func(o *coordinator.Options) { o.DNS = initial })
	a := newNode(t, c.URL)
	a.register(t, c.authKey(t, coordinator.AuthKeyOptions{}), "alpha")
	wa := watch(t, a)
	nm := wa.waitFor("full map", wait, func(nm *wire.NetMap) bool { return nm.DNS != nil })
	if !slices.Equal(nm.DNS.Nameservers, []netip.AddrPort{netip.MustParseAddrPort("192.0.2.53:53")}) || nm.DNS.Domain != "default.beam.internal" {
		t.Fatalf("DNS = %+v", nm.DNS)
	}

	admin := coordclient.NewAdmin(c.URL, testToken, nil)
	start := time.Now()
	got, err := admin.SetDNSConfig(context.Background(), []byte(`{"nameservers": ["198.51.100.53:53"],
		"routes": {"Corp.Example.": ["100.64.0.9:53"]},
		"extra_records": [{"name": "db.default.beam.internal", "type": "A", "value": "100.64.0.9"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Routes["corp.example"]) != 1 {
		t.Errorf("stored routes = %v, want the suffix normalized", got.Routes)
	}
	nm = wa.waitFor("new DNS config", wait, func(nm *wire.NetMap) bool {
		return nm.DNS != nil && len(nm.DNS.ExtraRecords) == 1
	})
	if d := time.Since(start); d > time.Second {
		t.Errorf("DNS change took %v to reach the node", d)
	}
	want := &wire.DNSConfig{
		Domain:        "default.beam.internal",
		SearchDomains: []string{"default.beam.internal"},
		Nameservers:   []netip.AddrPort{netip.MustParseAddrPort("198.51.100.53:53")},
		Routes:        map[string][]netip.AddrPort{"corp.example": {netip.MustParseAddrPort("100.64.0.9:53")}},
		ExtraRecords:  []wire.DNSRecord{{Name: "db.default.beam.internal", Type: "A", Value: "100.64.0.9"}},
	}
	if g := nm.DNS; g.Domain != want.Domain || !slices.Equal(g.SearchDomains, want.SearchDomains) || !slices.Equal(g.Nameservers, want.Nameservers) ||
		!slices.Equal(g.Routes["corp.example"], want.Routes["corp.example"]) || len(g.Routes) != 1 || !slices.Equal(g.ExtraRecords, want.ExtraRecords) {
		t.Errorf("DNS = %+v, want %+v", g, want)
	}

	// Bad documents are refused whole.
	for _, bad := range []string{
		`{"nameserver": ["192.0.2.53:53"]}`,
		`{"nameservers": ["192.0.2.53"]}`,
		`{"extra_records": [{"name": "x.test", "type": "A", "value": "2001:db8::1"}]}`,
		`{"extra_records": [{"name": "x.test", "type": "MX", "value": "x"}]}`,
		`{"routes": {"corp.example": []}}`,
	} {
		if _, err := admin.SetDNSConfig(context.Background(), []byte(bad)); err == nil {
			t.Errorf("SetDNSConfig(%s) succeeded", bad)
		}
	}
	// The settings survive a restart (Options.DNS is nil the second time).
	c.mod = nil
	c.restart()
	if d := c.Server.DNSSettings(); len(d.ExtraRecords) != 1 || d.Nameservers[0] != netip.MustParseAddrPort("198.51.100.53:53") {
		t.Errorf("DNS settings after restart = %+v", d)
	}
}

func TestOverlayAddressesUniqueAcrossNetworks(t *testing.T) {
	c := startCoord(t, nil)
	seen := map[netip.Addr]string{}
	for i, network := range []string{"default", "red", "blue", "red", "blue"} {
		n := newNode(t, c.URL)
		r := n.register(t, c.authKey(t, coordinator.AuthKeyOptions{Network: network}), "n")
		for _, p := range r.Node.Addresses {
			if prev, ok := seen[p.Addr()]; ok {
				t.Fatalf("node %d in %s got %v, already given to %s", i, network, p.Addr(), prev)
			}
			seen[p.Addr()] = network
		}
	}
}

// A policy that admits the whole overlay must not admit the edge beyond
// the exposed ports.
func TestEdgeFilterNarrowsWidePolicy(t *testing.T) {
	c := startCoord(t, func(o *coordinator.Options) {
		edgeOpts("", "")(o)
		o.Policy = func(self *wire.Node, all []*wire.Node) ([]wire.FilterRule, []*wire.Node) {
			var dst []wire.NetPortRange
			for _, a := range self.Addresses {
				dst = append(dst, wire.NetPortRange{IP: a, First: 0, Last: 65535})
			}
			return []wire.FilterRule{{SrcIPs: []netip.Prefix{coordinator.CGNATPrefix, coordinator.ULAPrefix}, DstPorts: dst}}, all
		}
	})
	ak := c.authKey(t, coordinator.AuthKeyOptions{Reusable: true})
	a, b, ed := newNode(t, c.URL), newNode(t, c.URL), newNode(t, c.URL)
	a.register(t, ak, "alpha")
	b.register(t, ak, "beta")
	// The edge is in the same network: the policy sees it in all.
	edgeAddr := v4(ed.register(t, c.authKey(t, coordinator.AuthKeyOptions{Edge: true}), "edge").Node)
	wa, wb := watch(t, a), watch(t, b)
	wb.waitFor("beta map", wait, func(nm *wire.NetMap) bool { return peerNamed(nm, "alpha") != nil })
	expose(t, a, wire.ExposeRequest{Proto: "http", Port: 8080})
	nm := wa.waitFor("edge admitted", wait, func(nm *wire.NetMap) bool {
		return peerNamed(nm, "edge") != nil && filterAllowsProto(nm.ExpandedFilter(), edgeAddr, v4(nm.Self), 8080, 6)
	})
	self := v4(nm.Self)
	if filterAllowsProto(nm.ExpandedFilter(), edgeAddr, self, 22, 6) || filterAllowsProto(nm.ExpandedFilter(), edgeAddr, self, 8080, 17) {
		t.Errorf("edge reaches more than tcp/8080: %+v", nm.ExpandedFilter())
	}
	if !filterAllowsProto(nm.ExpandedFilter(), v4(peerNamed(nm, "beta")), self, 22, 6) {
		t.Errorf("beta lost access: %+v", nm.ExpandedFilter())
	}
	if nmb := wb.waitFor("beta map", wait, func(nm *wire.NetMap) bool { return true }); peerNamed(nmb, "edge") != nil {
		t.Error("beta sees the edge")
	}
	// A node joining later is admitted by the narrowed rule too.
	n3 := newNode(t, c.URL)
	n3.register(t, ak, "gamma")
	wa.waitFor("gamma admitted", wait, func(nm *wire.NetMap) bool {
		p := peerNamed(nm, "gamma")
		return p != nil && filterAllowsProto(nm.ExpandedFilter(), v4(p), self, 22, 6)
	})
}
