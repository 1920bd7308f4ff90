package dnsserver

import (
	"errors"
	"net/netip"
	"slices"
	"testing"

	"github.com/miekg/dns"
)

func newTestZone(t testing.TB) (*Zone, string) {
	t.Helper()
	z := NewZone(ZoneOptions{
		Origin:     "Example.Test.",
		NS:         []string{"ns1.example.test", "ns.other.example"},
		EdgeAddrs:  []netip.Addr{netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("2001:db8::10")},
		Hostmaster: "dns.admin@example.test",
	})
	return z, startServer(t, z)
}

func TestZoneAnswers(t *testing.T) {
	z, addr := newTestZone(t)
	if err := z.SetTXT("_acme-challenge.app.example.test", []string{"token-1", "token-2"}); err != nil {
		t.Fatal(err)
	}
	if err := z.SetTXT("example.test.", []string{"v=spf1 -all"}); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name    string
		qname   string
		qtype   uint16
		rcode   int
		want    []string
		soaInNs bool
	}{
		{name: "apex A", qname: "example.test.", qtype: dns.TypeA, want: []string{"192.0.2.10"}},
		{name: "apex AAAA", qname: "example.test.", qtype: dns.TypeAAAA, want: []string{"2001:db8::10"}},
		{name: "apex TXT", qname: "example.test.", qtype: dns.TypeTXT, want: []string{"v=spf1 -all"}},
		{name: "wildcard A", qname: "app.example.test.", qtype: dns.TypeA, want: []string{"192.0.2.10"}},
		{name: "wildcard mixed case", qname: "APP.Example.test.", qtype: dns.TypeA, want: []string{"192.0.2.10"}},
		{name: "wildcard AAAA", qname: "x-1.example.test.", qtype: dns.TypeAAAA, want: []string{"2001:db8::10"}},
		{name: "wildcard MX nodata", qname: "app.example.test.", qtype: dns.TypeMX, soaInNs: true},
		{name: "acme TXT", qname: "_acme-challenge.app.example.test.", qtype: dns.TypeTXT, want: []string{"token-1", "token-2"}},
		{name: "acme A nodata", qname: "_acme-challenge.app.example.test.", qtype: dns.TypeA, soaInNs: true},
		{name: "two labels NXDOMAIN", qname: "a.b.example.test.", qtype: dns.TypeA, rcode: dns.RcodeNameError, soaInNs: true},
		{name: "unset TXT NXDOMAIN", qname: "_acme-challenge.other.example.test.", qtype: dns.TypeTXT, rcode: dns.RcodeNameError, soaInNs: true},
	}
	for _, netw := range []string{"udp", "tcp"} {
		for _, tt := range tests {
			t.Run(netw+"/"+tt.name, func(t *testing.T) {
				m := query(t, netw, addr, tt.qname, tt.qtype)
				if m.Rcode != tt.rcode {
					t.Fatalf("rcode = %s, want %s", dns.RcodeToString[m.Rcode], dns.RcodeToString[tt.rcode])
				}
				if !m.Authoritative {
					t.Error("AA not set")
				}
				if m.RecursionAvailable {
					t.Error("RA set by an authoritative-only server")
				}
				if got := addrsOf(m); !slices.Equal(got, tt.want) {
					t.Errorf("answers = %q, want %q", got, tt.want)
				}
				for _, rr := range m.Answer {
					if rr.Header().Name != tt.qname {
						t.Errorf("owner %q, want %q", rr.Header().Name, tt.qname)
					}
				}
				if tt.soaInNs && (len(m.Ns) != 1 || m.Ns[0].Header().Rrtype != dns.TypeSOA) {
					t.Errorf("authority = %v, want the SOA", m.Ns)
				}
			})
		}
	}

	t.Run("SOA", func(t *testing.T) {
		m := query(t, "udp", addr, "example.test.", dns.TypeSOA)
		if len(m.Answer) != 1 {
			t.Fatalf("answer = %v", m.Answer)
		}
		soa := m.Answer[0].(*dns.SOA)
		if soa.Ns != "ns1.example.test." || soa.Mbox != `dns\.admin.example.test.` || soa.Minttl != ZoneTTL {
			t.Errorf("SOA = %v", soa)
		}
	})
	t.Run("NS with glue", func(t *testing.T) {
		m := query(t, "udp", addr, "example.test.", dns.TypeNS)
		var ns []string
		for _, rr := range m.Answer {
			ns = append(ns, rr.(*dns.NS).Ns)
		}
		if want := []string{"ns1.example.test.", "ns.other.example."}; !slices.Equal(ns, want) {
			t.Errorf("NS = %q, want %q", ns, want)
		}
		if len(m.Extra) != 2 || m.Extra[0].Header().Name != "ns1.example.test." {
			t.Errorf("glue = %v, want A and AAAA of ns1.example.test.", m.Extra)
		}
	})
	t.Run("REFUSED outside origin", func(t *testing.T) {
		for _, name := range []string{"www.example.com.", "test.", "notexample.test.", "."} {
			m := query(t, "udp", addr, name, dns.TypeA)
			if m.Rcode != dns.RcodeRefused || m.Authoritative || len(m.Answer) != 0 {
				t.Errorf("%s: rcode %s AA=%v answers %d; want REFUSED, no AA, no answers", name, dns.RcodeToString[m.Rcode], m.Authoritative, len(m.Answer))
			}
		}
	})
	t.Run("ANY", func(t *testing.T) {
		m := query(t, "tcp", addr, "app.example.test.", dns.TypeANY)
		if len(m.Answer) != 1 || m.Answer[0].Header().Rrtype != dns.TypeHINFO {
			t.Errorf("ANY = %v, want one HINFO", m.Answer)
		}
	})
}

func TestZoneUpdates(t *testing.T) {
	z, addr := newTestZone(t)
	serial := func() uint32 {
		return query(t, "udp", addr, "example.test.", dns.TypeSOA).Answer[0].(*dns.SOA).Serial
	}
	s0 := serial()

	const name = "_acme-challenge.shop.example.test."
	if m := query(t, "udp", addr, name, dns.TypeTXT); m.Rcode != dns.RcodeNameError {
		t.Fatalf("before set: rcode %s", dns.RcodeToString[m.Rcode])
	}
	if err := z.SetTXT(name, []string{"abc"}); err != nil {
		t.Fatal(err)
	}
	if got := addrsOf(query(t, "udp", addr, name, dns.TypeTXT)); !slices.Equal(got, []string{"abc"}) {
		t.Errorf("after set: %q", got)
	}
	if err := z.SetTXT(name, []string{"def"}); err != nil {
		t.Fatal(err)
	}
	if got := addrsOf(query(t, "udp", addr, name, dns.TypeTXT)); !slices.Equal(got, []string{"def"}) {
		t.Errorf("after replace: %q", got)
	}
	if err := z.DeleteTXT("_ACME-challenge.shop.example.test"); err != nil {
		t.Fatal(err)
	}
	if m := query(t, "udp", addr, name, dns.TypeTXT); m.Rcode != dns.RcodeNameError {
		t.Errorf("after delete: rcode %s, want NXDOMAIN", dns.RcodeToString[m.Rcode])
	}
	if s1 := serial(); s1 <= s0 {
		t.Errorf("SOA serial %d -> %d, want it to grow on changes", s0, s1)
	}

	z.SetEdgeAddrs([]netip.Addr{netip.MustParseAddr("203.0.113.5")})
	if got := addrsOf(query(t, "udp", addr, "app.example.test.", dns.TypeA)); !slices.Equal(got, []string{"203.0.113.5"}) {
		t.Errorf("after SetEdgeAddrs: %q", got)
	}
	if got := addrsOf(query(t, "udp", addr, "app.example.test.", dns.TypeAAAA)); len(got) != 0 {
		t.Errorf("AAAA after SetEdgeAddrs without v6: %q", got)
	}

	for _, bad := range []string{"www.example.com", "example.testing", "a..example.test"} {
		if err := z.SetTXT(bad, []string{"x"}); !errors.Is(err, ErrOutsideZone) {
			t.Errorf("SetTXT(%q) = %v, want ErrOutsideZone", bad, err)
		}
	}
}
