package node

import (
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
