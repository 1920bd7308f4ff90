package dnsserver

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"testing"

	"github.com/miekg/dns"
)

// rebindUpstream answers A, AAAA and HTTPS queries for every name with an
// overlay address and a public one (and hints of both).
func rebindUpstream(w dns.ResponseWriter, req *dns.Msg, _ bool) {
	m := new(dns.Msg)
	m.SetReply(req)
	q := req.Question[0]
	switch q.Qtype {
	case dns.TypeA:
		m.Answer = append(m.Answer,
			&dns.A{Hdr: hdr(q.Name, dns.TypeA, 60), A: net.ParseIP("100.64.0.2")},
			&dns.A{Hdr: hdr(q.Name, dns.TypeA, 60), A: net.ParseIP("192.0.2.9")})
	case dns.TypeAAAA:
		m.Answer = append(m.Answer,
			&dns.AAAA{Hdr: hdr(q.Name, dns.TypeAAAA, 60), AAAA: net.ParseIP("fd7a:115c:a1e0::2")},
			&dns.AAAA{Hdr: hdr(q.Name, dns.TypeAAAA, 60), AAAA: net.ParseIP("2001:db8::9")})
	case dns.TypeHTTPS:
		m.Answer = append(m.Answer, &dns.HTTPS{SVCB: dns.SVCB{Hdr: hdr(q.Name, dns.TypeHTTPS, 60), Priority: 1, Target: ".", Value: []dns.SVCBKeyValue{
			&dns.SVCBIPv4Hint{Hint: []net.IP{net.ParseIP("100.64.0.2").To4()}},
			&dns.SVCBIPv6Hint{Hint: []net.IP{net.ParseIP("fd7a:115c:a1e0::2"), net.ParseIP("2001:db8::9")}},
		}}})
	}
	_ = w.WriteMsg(m)
}

// TestResolverRebinding: a resolver outside the overlay cannot give a name
// an overlay address (100.64.0.0/10 or the network's /48), through the DNS
// listener, the cache, or LookupNetIP (what the proxies dial); MagicDNS
// records and split-DNS resolvers on the overlay can.
func TestResolverRebinding(t *testing.T) {
	up := startUpstream(t, rebindUpstream)
	// The split-DNS resolver "on the overlay" is the same upstream, reached
	// through Dial.
	overlayResolver := netip.MustParseAddrPort("100.64.0.53:53")
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		if addr == overlayResolver.String() {
			addr = up.addr.String()
		}
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
	rec := testRecords(up.addr)
	rec.OverlayPrefixes = []netip.Prefix{netip.MustParsePrefix("fd7a:115c:a1e0::/48")}
	rec.Routes = map[string][]netip.AddrPort{"corp.example": {overlayResolver}}
	r, addr := newTestResolver(t, ResolverOptions{Dial: dial}, rec)

	tests := []struct {
		name  string
		qtype uint16
		want  []string
	}{
		{"rebind.example.", dns.TypeA, []string{"192.0.2.9"}},
		{"rebind.example.", dns.TypeAAAA, []string{"2001:db8::9"}},
		{"db.corp.example.", dns.TypeA, []string{"100.64.0.2", "192.0.2.9"}},
		{"db.corp.example.", dns.TypeAAAA, []string{"fd7a:115c:a1e0::2", "2001:db8::9"}},
		{"beta.default.beam.internal.", dns.TypeA, []string{"100.64.0.2"}},
	}
	for _, tt := range tests {
		t.Run(tt.name+dns.TypeToString[tt.qtype], func(t *testing.T) {
			for _, via := range []string{"udp", "tcp", "udp"} { // the last from the cache
				if got := addrsOf(query(t, via, addr, tt.name, tt.qtype)); !slices.Equal(got, tt.want) {
					t.Errorf("%s over %s: got %q, want %q", tt.name, via, got, tt.want)
				}
			}
		})
	}
	t.Run("LookupNetIP", func(t *testing.T) {
		got, err := r.LookupNetIP(t.Context(), "other.rebind.example")
		if err != nil {
			t.Fatal(err)
		}
		want := []netip.Addr{netip.MustParseAddr("192.0.2.9"), netip.MustParseAddr("2001:db8::9")}
		if !slices.Equal(got, want) {
			t.Errorf("LookupNetIP = %v, want %v", got, want)
		}
	})
	t.Run("HTTPS hints", func(t *testing.T) {
		m := query(t, "udp", addr, "rebind.example.", dns.TypeHTTPS)
		if len(m.Answer) != 1 {
			t.Fatalf("answer = %v, want one HTTPS record", m.Answer)
		}
		rr := m.Answer[0].(*dns.HTTPS)
		var hints []string
		for _, kv := range rr.Value {
			switch kv := kv.(type) {
			case *dns.SVCBIPv4Hint:
				for _, ip := range kv.Hint {
					hints = append(hints, ip.String())
				}
			case *dns.SVCBIPv6Hint:
				for _, ip := range kv.Hint {
					hints = append(hints, ip.String())
				}
			}
		}
		if want := []string{"2001:db8::9"}; !slices.Equal(hints, want) {
			t.Errorf("hints = %q, want %q", hints, want)
		}
	})
}
