package dnsserver

import (
	"net"
	"net/netip"
	"testing"

	"github.com/miekg/dns"
	"golang.org/x/time/rate"
)

// captureWriter is a dns.ResponseWriter that keeps what the handler writes.
type captureWriter struct {
	remote net.Addr
	out    [][]byte
}

func (w *captureWriter) LocalAddr() net.Addr {
	return &net.UDPAddr{IP: net.IPv4(100, 100, 100, 100), Port: 53}
}
func (w *captureWriter) RemoteAddr() net.Addr { return w.remote }
func (w *captureWriter) WriteMsg(m *dns.Msg) error {
	b, err := m.Pack()
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}
func (w *captureWriter) Write(b []byte) (int, error) {
	w.out = append(w.out, append([]byte(nil), b...))
	return len(b), nil
}
func (w *captureWriter) Close() error        { return nil }
func (w *captureWriter) TsigStatus() error   { return nil }
func (w *captureWriter) TsigTimersOnly(bool) {}
func (w *captureWriter) Hijack()             {}

var _ dns.ResponseWriter = (*captureWriter)(nil)

// FuzzServeDNS feeds raw bytes as a query, unpacked the way the miekg/dns server
// does, to the Resolver (no upstreams: nothing leaves the process) and the Zone.
// Neither may panic, and every UDP reply must fit the size the query allows and
// parse back.
func FuzzServeDNS(f *testing.F) {
	seed := func(name string, qtype uint16, edns uint16) []byte {
		m := new(dns.Msg)
		m.SetQuestion(name, qtype)
		if edns != 0 {
			m.SetEdns0(edns, true)
		}
		b, err := m.Pack()
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	f.Add(seed("beta.", dns.TypeA, 0))                               // short name, plain
	f.Add(seed("many.default.beam.internal.", dns.TypeA, 0))         // big answer, 512 limit
	f.Add(seed("many.", dns.TypeA, 700))                             // big answer, EDNS limit
	f.Add(seed("many.", dns.TypeAAAA, 4096))                         // big answer, clamped
	f.Add(seed("big.default.beam.internal.", dns.TypeTXT, 0))        // long TXT
	f.Add(seed("2.0.64.100.in-addr.arpa.", dns.TypePTR, 1232))       // PTR
	f.Add(seed("app.example.test.", dns.TypeA, 0))                   // zone wildcard
	f.Add(seed("example.test.", dns.TypeNS, 512))                    // zone apex with glue
	f.Add(seed("www.example.com.", dns.TypeANY, 0))                  // ANY
	f.Add(seed("x.blocked.example.", dns.TypeA, 0))                  // split route to nowhere
	f.Add([]byte{0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1}) // root A, minimal
	f.Add([]byte{0xff, 0xff, 0x80})                                  // short garbage

	rec := testRecords()
	var many []netip.Addr
	for i := range 120 {
		many = append(many, netip.AddrFrom4([4]byte{100, 64, 3, byte(i)}), netip.AddrFrom16([16]byte{0xfd, 15: byte(i)}))
	}
	rec.Hosts["many.default.beam.internal"] = many
	rec.TXT["big.default.beam.internal"] = []string{string(make([]byte, 2000))}
	rec.Routes = map[string][]netip.AddrPort{"blocked.example": nil}
	r := NewResolver(ResolverOptions{RateLimit: rate.Inf})
	r.SetRecords(rec)
	z := NewZone(ZoneOptions{Origin: "example.test", RateLimit: rate.Inf, EdgeAddrs: many[:40]})
	_ = z.SetTXT("_acme-challenge.app.example.test", []string{"tok"})

	udp := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5353}
	tcp := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 5353}
	f.Fuzz(func(t *testing.T, b []byte) {
		req := new(dns.Msg)
		if req.Unpack(b) != nil {
			return // the server answers FORMERR or nothing before the handler
		}
		for _, h := range []dns.Handler{r, z} {
			for _, remote := range []net.Addr{udp, tcp} {
				w := &captureWriter{remote: remote}
				h.ServeDNS(w, req.Copy())
				if len(w.out) > 1 {
					t.Fatalf("%d replies to one query", len(w.out))
				}
				if len(w.out) == 0 {
					continue
				}
				limit := maxTCPSize
				if remote == udp {
					limit = udpLimit(req)
				}
				if n := len(w.out[0]); n > limit {
					t.Fatalf("reply over %s is %d bytes, query allows %d", remote.Network(), n, limit)
				}
				resp := new(dns.Msg)
				if err := resp.Unpack(w.out[0]); err != nil {
					t.Fatalf("reply does not parse: %v", err)
				}
				if resp.Id != req.Id || !resp.Response {
					t.Fatalf("reply id %d response=%v, want id %d and QR", resp.Id, resp.Response, req.Id)
				}
			}
		}
	})
}

// FuzzParseReverse checks that every name parseReverse accepts is exactly the
// reverse name of the address it returns.
func FuzzParseReverse(f *testing.F) {
	f.Add("4.3.2.1.in-addr.arpa.")
	f.Add("1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.e.1.a.c.5.1.1.a.7.d.f.ip6.arpa.")
	f.Add("256.1.1.1.in-addr.arpa.")
	f.Add("01.1.1.1.in-addr.arpa.")
	f.Fuzz(func(t *testing.T, name string) {
		a, ok := parseReverse(name)
		if !ok {
			return
		}
		want, err := dns.ReverseAddr(a.String())
		if err != nil {
			t.Fatal(err)
		}
		if want != name {
			t.Fatalf("parseReverse(%q) = %v, whose reverse name is %q", name, a, want)
		}
	})
}
