package edgenode

import (
	"net/netip"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"beam.dev/beam/edge"
	"beam.dev/beam/wire"
)

func TestRoutesPool(t *testing.T) {
	a := netip.MustParseAddrPort("100.64.0.2:3000")
	b := netip.MustParseAddrPort("100.64.0.3:3000")
	auth := wire.RouteOptions{BasicAuth: []wire.BasicAuthUser{{User: "u", Secret: "plain:p"}}}
	got, err := Routes([]wire.EdgeRoute{
		{Host: "App.Example.Test.", Proto: "http", Target: a, Options: auth},
		{Host: "app.example.test", Proto: "http", Target: b},
		{Proto: "tcp", PublicPort: 20001, Target: netip.MustParseAddrPort("100.64.0.2:5432"), Options: wire.RouteOptions{ProxyProtocol: 2}},
		// A limit the edge cannot enforce: the route is not served
		// without it.
		{Host: "bad.example.test", Proto: "http", Target: a, Options: wire.RouteOptions{RateLimit: wire.Rate{Count: 0, Per: time.Second}}},
	})
	if err == nil {
		t.Fatal("want an error for the bad rate limit")
	}
	if len(got) != 2 {
		t.Fatalf("got %d routes, want 2: %+v", len(got), got)
	}
	if got[1].Host != "app.example.test" || len(got[1].Targets) != 2 || len(got[1].Policy.BasicAuth) != 1 || got[1].Policy.BasicAuth[0].Secret != "plain:p" {
		t.Fatalf("pooled http route = %+v", got[1])
	}
	if got[0].Proto != edge.ProtoTCP || got[0].Host != "" || got[0].Policy.ProxyProtocol != 2 {
		t.Fatalf("tcp route = %+v", got[0])
	}
}

func TestPolicy(t *testing.T) {
	p, err := Policy(wire.RouteOptions{
		AllowIP:      []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("198.51.100.7/32")},
		DenyIP:       []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")},
		RateLimit:    wire.Rate{Count: 120, Per: time.Minute},
		HeaderAdd:    map[string]string{"X-A": "1", "X-B": "two"},
		HeaderRemove: []string{"Cookie"},
		CORS:         []string{"https://a.test", "https://b.test"},
	}, "http")
	if err != nil {
		t.Fatal(err)
	}
	if len(p.AllowCIDRs) != 2 || p.AllowCIDRs[1] != netip.MustParsePrefix("198.51.100.7/32") || len(p.DenyCIDRs) != 1 {
		t.Fatalf("cidrs = %v %v", p.AllowCIDRs, p.DenyCIDRs)
	}
	if p.RateLimit != rate.Limit(2) || p.RateBurst != 120 {
		t.Fatalf("rate = %v burst %d", p.RateLimit, p.RateBurst)
	}
	if p.RequestHeaderAdd["X-B"] != "two" || len(p.RequestHeaderRemove) != 1 || len(p.CORSOrigins) != 2 {
		t.Fatalf("policy = %+v", p)
	}
	// Every problem is refused, never dropped.
	for name, bad := range map[string]struct {
		o     wire.RouteOptions
		proto string
	}{
		"zero rate":        {wire.RouteOptions{RateLimit: wire.Rate{Count: 0, Per: time.Second}}, "http"},
		"odd period":       {wire.RouteOptions{RateLimit: wire.Rate{Count: 3, Per: 2 * time.Second}}, "http"},
		"invalid prefix":   {wire.RouteOptions{AllowIP: []netip.Prefix{{}}}, "http"},
		"bad secret":       {wire.RouteOptions{BasicAuth: []wire.BasicAuthUser{{User: "u", Secret: "p"}}}, "http"},
		"auth on tcp":      {wire.RouteOptions{BasicAuth: []wire.BasicAuthUser{{User: "u", Secret: "plain:p"}}}, "tcp"},
		"proxy v3":         {wire.RouteOptions{ProxyProtocol: 3}, "tcp"},
		"proxy on http":    {wire.RouteOptions{ProxyProtocol: 1}, "http"},
		"header injection": {wire.RouteOptions{HeaderAdd: map[string]string{"X-A": "1\r\nX-B: 2"}}, "http"},
	} {
		if _, err := Policy(bad.o, bad.proto); err == nil {
			t.Errorf("%s: Policy(%+v, %s) = nil error", name, bad.o, bad.proto)
		}
	}
}
