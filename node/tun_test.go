package node

import (
	"net/netip"
	"slices"
	"testing"

	"beam.dev/beam/dnsserver"
	"beam.dev/beam/hostdns"
	"beam.dev/beam/wire"
)

func TestOverlayRoutes(t *testing.T) {
	tests := []struct {
		name  string
		addrs []string
		want  []string
	}{
		{"both families", []string{"100.64.0.7/32", "fd7a:bea0:b0de::6440:7/128"}, []string{"100.64.0.0/10", "fd7a:bea0:b0de::/48"}},
		{"IPv4 only", []string{"100.100.1.2/32"}, []string{"100.64.0.0/10"}},
		{"IPv4 outside the overlay range", []string{"198.51.100.7/32"}, nil},
		{"none", nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			self := &wire.Node{}
			for _, a := range tt.addrs {
				self.Addresses = append(self.Addresses, netip.MustParsePrefix(a))
			}
			var got []string
			for _, p := range overlayRoutes(self) {
				got = append(got, p.String())
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("overlayRoutes(%v) = %v, want %v", tt.addrs, got, tt.want)
			}
		})
	}
}

func TestHostDNSConfig(t *testing.T) {
	if got := hostDNSConfig(&dnsserver.Records{}); len(got.Nameservers) != 0 {
		t.Errorf("no domain: %+v, want nothing to configure", got)
	}
	got := hostDNSConfig(&dnsserver.Records{
		Domain:        "net.beam.internal",
		SearchDomains: []string{"corp.example.com"},
		Routes:        map[string][]netip.AddrPort{"z.example.net": nil, "a.example.net": nil},
	})
	want := hostdns.Config{
		Nameservers:   []netip.Addr{MagicDNSIPv4},
		SearchDomains: []string{"net.beam.internal", "corp.example.com"},
		MatchDomains:  []string{"net.beam.internal", "a.example.net", "z.example.net"},
	}
	if !slices.Equal(got.Nameservers, want.Nameservers) || !slices.Equal(got.SearchDomains, want.SearchDomains) || !slices.Equal(got.MatchDomains, want.MatchDomains) {
		t.Errorf("hostDNSConfig = %+v, want %+v", got, want)
	}
}
