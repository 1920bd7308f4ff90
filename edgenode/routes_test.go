package edgenode

import (
	"net/netip"
	"testing"

	"golang.org/x/time/rate"

	"beam.dev/beam/edge"
	"beam.dev/beam/wire"
)

func TestRoutesPool(t *testing.T) {
	a := netip.MustParseAddrPort("100.64.0.2:3000")
	b := netip.MustParseAddrPort("100.64.0.3:3000")
	got, err := Routes([]wire.EdgeRoute{
		{Host: "App.Example.Test.", Proto: "http", Target: a, Options: map[string]string{"basic_auth": "u:p"}},
		{Host: "app.example.test", Proto: "http", Target: b},
		{Proto: "tcp", PublicPort: 20001, Target: netip.MustParseAddrPort("100.64.0.2:5432"), Options: map[string]string{"proxy_protocol": "v2"}},
		{Host: "bad.example.test", Proto: "http", Target: a, Options: map[string]string{"nope": "1"}},
	})
	if err == nil {
		t.Fatal("want an error for the unknown option")
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

func TestParsePolicy(t *testing.T) {
	p, err := ParsePolicy(map[string]string{
		"allow_ip":      "192.0.2.0/24, 198.51.100.7",
		"deny_ip":       "203.0.113.0/24",
		"rate_limit":    "120/m",
		"header_add":    "X-A: 1\nX-B: two",
		"header_remove": "Cookie",
		"cors":          "https://a.test,https://b.test",
	})
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
	for _, bad := range []map[string]string{
		{"rate_limit": "fast"}, {"rate_limit": "0/s"}, {"allow_ip": "nope"}, {"basic_auth": "nopass"}, {"proxy_protocol": "v3"}, {"header_add": "novalue"},
	} {
		if _, err := ParsePolicy(bad); err == nil {
			t.Errorf("ParsePolicy(%v) = nil error", bad)
		}
	}
}
