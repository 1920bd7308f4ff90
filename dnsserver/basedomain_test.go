package dnsserver

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/miekg/dns"
)

// TestResolverBaseDomain: under BaseDomain only names with data are
// answered; the rest get NXDOMAIN and never reach the upstream, unless a
// split-DNS route under the base domain covers them. Outside it, and for
// bare names no search domain holds, the upstream answers.
func TestResolverBaseDomain(t *testing.T) {
	up := startUpstream(t, answerA("192.0.2.1", 60))
	lab := startUpstream(t, answerA("203.0.113.1", 60))
	rec := testRecords(up.addr)
	rec.BaseDomain = "beam.internal"
	rec.Routes = map[string][]netip.AddrPort{"lab.beam.internal": {lab.addr}}
	r, addr := newTestResolver(t, ResolverOptions{}, rec)

	for _, tt := range []struct {
		qname string
		want  []string
		rcode int
	}{
		{qname: "gamma.other.beam.internal.", want: []string{"100.64.0.3"}}, // has data
		{qname: "x.beam.internal.", rcode: dns.RcodeNameError},
		{qname: "x.third.beam.internal.", rcode: dns.RcodeNameError},
		{qname: "X.Third.BEAM.internal.", rcode: dns.RcodeNameError},
		{qname: "beam.internal."},                                        // parent of the domain: no data
		{qname: "box.lab.beam.internal.", want: []string{"203.0.113.1"}}, // a route under it
		{qname: "mallory.", want: []string{"192.0.2.1"}},
		{qname: "beam.internal.example.", want: []string{"192.0.2.1"}},
	} {
		t.Run(tt.qname, func(t *testing.T) {
			m := query(t, "udp", addr, tt.qname, dns.TypeA)
			if m.Rcode != tt.rcode {
				t.Fatalf("rcode = %s, want %s", dns.RcodeToString[m.Rcode], dns.RcodeToString[tt.rcode])
			}
			if got := addrsOf(m); !slices.Equal(got, tt.want) {
				t.Errorf("answers = %q, want %q", got, tt.want)
			}
		})
	}
	for _, n := range up.seen() {
		if dns.IsSubDomain("beam.internal.", dns.CanonicalName(n)) {
			t.Errorf("%q was forwarded upstream", n)
		}
	}
	if _, err := r.LookupNetIP(t.Context(), "x.third.beam.internal"); err == nil {
		t.Errorf("LookupNetIP(x.third.beam.internal) succeeded, want not found")
	}
}
