package node

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"beam.dev/beam/wire"
)

// TestDNSNamesChecked: a netmap's domain, search domains and split-DNS
// routes that are not DNS names never reach the host's resolver: a
// newline in a search domain would have added a nameserver and options to
// the managed resolv.conf.
func TestDNSNamesChecked(t *testing.T) {
	const inject = "net.beam.internal\nnameserver 203.0.113.66\noptions ndots:15 rotate"
	self := &wire.Node{Name: "a", Addresses: []netip.Prefix{netip.MustParsePrefix("100.64.0.1/32")}}
	nm := &wire.NetMap{Self: self, DNS: &wire.DNSConfig{
		Domain:        "net.beam.internal",
		SearchDomains: []string{inject, "corp.example.com", "-x"},
		Routes:        map[string][]netip.AddrPort{"a.example.net": nil, "b example.net": nil},
	}}
	cfg := hostDNSConfig(dnsRecords(nm, time.Now(), nil))
	if want := []string{"net.beam.internal", "corp.example.com"}; !slices.Equal(cfg.SearchDomains, want) {
		t.Errorf("search domains = %q, want %q", cfg.SearchDomains, want)
	}
	if want := []string{"net.beam.internal", "a.example.net"}; !slices.Equal(cfg.MatchDomains, want) {
		t.Errorf("match domains = %q, want %q", cfg.MatchDomains, want)
	}
	if errs := checkDNSNames(nm.DNS); len(errs) != 3 {
		t.Errorf("checkDNSNames = %v, want 3 problems", errs)
	}

	nm.DNS = &wire.DNSConfig{Domain: inject}
	rec := dnsRecords(nm, time.Now(), nil)
	if rec.Domain != "" || len(rec.SearchDomains) != 0 {
		t.Errorf("records of a bad domain: domain %q, search %q; want neither", rec.Domain, rec.SearchDomains)
	}
	if cfg := hostDNSConfig(rec); len(cfg.Nameservers) != 0 {
		t.Errorf("host DNS config for a bad domain = %+v, want nothing configured", cfg)
	}
	for _, d := range append(hostDNSConfig(rec).SearchDomains, rec.Domain) {
		if strings.ContainsAny(d, "\n ") {
			t.Errorf("name %q reached the host", d)
		}
	}
}

// TestSelfAddressesChecked: self addresses outside 100.64.0.0/10 and the
// overlay's ULA /48 are refused, all of them: in kernel TUN mode they (and
// the ranges routed with them) would go onto the host's interface.
func TestSelfAddressesChecked(t *testing.T) {
	tests := []struct {
		name  string
		addrs []string
		ok    bool
	}{
		{"overlay", []string{"100.64.0.7/32", "fd7a:bea0:b0de::6440:7/128"}, true},
		{"public IPv4", []string{"8.8.8.8/32", "fd7a:bea0:b0de::6440:7/128"}, false},
		{"documentation IPv4", []string{"198.51.100.7/32"}, false},
		{"IPv6 outside the ULA", []string{"100.64.0.7/32", "2001:db8::1/128"}, false},
		{"other ULA", []string{"fd00::1/128"}, false},
		{"a range, not an address", []string{"100.64.0.0/10"}, false},
		{"MagicDNS's address", []string{"100.100.100.100/32"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			self := &wire.Node{Name: "a"}
			for _, a := range tt.addrs {
				self.Addresses = append(self.Addresses, netip.MustParsePrefix(a))
			}
			err := checkSelfAddresses(self)
			if (err == nil) != tt.ok || (err != nil && !errors.Is(err, errSelfAddress)) {
				t.Fatalf("checkSelfAddresses(%v) = %v, want ok %v", tt.addrs, err, tt.ok)
			}
			cfg := engineBase(&wire.NetMap{Self: self}, false, nil, nil)
			if tt.ok {
				if len(cfg.Addresses) != len(tt.addrs) {
					t.Errorf("engine addresses = %v, want %v", cfg.Addresses, tt.addrs)
				}
				return
			}
			if len(cfg.Addresses) != 0 || len(cfg.Routes) != 0 || len(cfg.ServiceAddrs) != 1 {
				t.Errorf("engine config of refused addresses: addresses %v, routes %v, service %v; want none but MagicDNS's IPv4", cfg.Addresses, cfg.Routes, cfg.ServiceAddrs)
			}
			if rec := dnsRecords(&wire.NetMap{Self: self}, time.Now(), nil); len(rec.OverlayPrefixes) != 0 {
				t.Errorf("overlay prefixes of refused addresses = %v, want none", rec.OverlayPrefixes)
			}
		})
	}
}
