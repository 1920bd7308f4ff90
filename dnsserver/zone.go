package dnsserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/time/rate"
)

// TTLs of the authoritative zone, in seconds.
const (
	// ZoneTTL is the TTL of A, AAAA and TXT answers, and the SOA's negative TTL:
	// short, so edge changes and ACME challenges are seen soon.
	ZoneTTL = 60
	// zoneApexTTL is the TTL of the SOA and NS records.
	zoneApexTTL = 3600
)

// ErrOutsideZone is returned by Zone.SetTXT and DeleteTXT for a name that is not
// the origin or under it.
var ErrOutsideZone = errors.New("dnsserver: name outside the zone")

// ZoneOptions configures a Zone.
type ZoneOptions struct {
	// Origin is the zone's apex, e.g. "example.test". Required.
	Origin string

	// NS are the zone's name servers (host names). Empty means "ns1.<Origin>".
	// Names under Origin resolve, like every one-label name, to EdgeAddrs.
	NS []string

	// EdgeAddrs are the addresses of the apex and of every "*.<Origin>" name.
	EdgeAddrs []netip.Addr

	// Hostmaster is the SOA contact, as a mail address ("hostmaster@example.test")
	// or in SOA form. Empty means "hostmaster.<Origin>".
	Hostmaster string

	// Logger receives the zone's logs. Nil means discard.
	Logger *slog.Logger

	// AllowSource reports whether a client may query; refused clients get
	// REFUSED. Nil allows every source (a public zone).
	AllowSource func(netip.Addr) bool

	// RateLimit is the per-source query rate and Burst its bucket size; zero means
	// DefaultRateLimit and DefaultBurst, rate.Inf no limit. Over UDP, queries over
	// the limit are dropped; over TCP, refused and the connection closed.
	RateLimit rate.Limit
	Burst     int

	// Now is the clock for rate limits and the initial SOA serial. Nil means time.Now.
	Now func() time.Time
}

// Zone is the authoritative server for the edge domain. It is safe for concurrent
// use; the zero value is not usable, see NewZone.
type Zone struct {
	origin string // canonical
	fe     *frontend

	mu    sync.Mutex                // serialises writers of state
	state atomic.Pointer[zoneState] // immutable; replaced whole on every change
}

// zoneState is one immutable version of the zone's data.
type zoneState struct {
	soa   *dns.SOA
	ns    []string // canonical
	edges []netip.Addr
	txt   map[string][]string // canonical name -> values
	names map[string]bool     // TXT names and their ancestors below the origin
}

// NewZone returns a Zone serving opts.Origin. It panics if Origin is not a valid
// domain name (a programmer error: configs validate it first).
func NewZone(opts ZoneOptions) *Zone {
	origin := canonical(strings.Trim(opts.Origin, "."))
	if _, ok := dns.IsDomainName(origin); !ok || origin == "." {
		panic(fmt.Sprintf("dnsserver: invalid zone origin %q", opts.Origin))
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	z := &Zone{
		origin: origin,
		fe:     newFrontend(logger.With("component", "dnszone", "zone", origin), opts.AllowSource, opts.RateLimit, opts.Burst, now),
	}
	var ns []string
	for _, n := range opts.NS {
		if n = strings.Trim(n, "."); n != "" {
			ns = append(ns, canonical(n))
		}
	}
	if len(ns) == 0 {
		ns = []string{"ns1." + origin}
	}
	mbox := "hostmaster." + origin
	if hm := strings.Trim(opts.Hostmaster, "."); hm != "" {
		if local, domain, ok := strings.Cut(hm, "@"); ok {
			hm = strings.ReplaceAll(local, ".", `\.`) + "." + domain
		}
		mbox = canonical(hm)
	}
	st := &zoneState{
		soa: &dns.SOA{
			Hdr: hdr(origin, dns.TypeSOA, zoneApexTTL), Ns: ns[0], Mbox: mbox,
			Serial: uint32(now().Unix()), Refresh: 3600, Retry: 600, Expire: 1209600, Minttl: ZoneTTL,
		},
		ns:    ns,
		edges: cleanAddrs(opts.EdgeAddrs),
		txt:   map[string][]string{},
		names: map[string]bool{},
	}
	z.state.Store(st)
	return z
}

func cleanAddrs(in []netip.Addr) []netip.Addr {
	var out []netip.Addr
	for _, a := range in {
		if a.IsValid() {
			out = append(out, a.Unmap().WithZone(""))
		}
	}
	return out
}

// update applies f to a copy of the state, bumps the SOA serial and publishes it.
func (z *Zone) update(f func(st *zoneState)) {
	z.mu.Lock()
	defer z.mu.Unlock()
	old := z.state.Load()
	st := &zoneState{
		soa:   dns.Copy(old.soa).(*dns.SOA),
		ns:    old.ns,
		edges: old.edges,
		txt:   maps.Clone(old.txt),
	}
	st.soa.Serial++
	f(st)
	st.names = make(map[string]bool, 2*len(st.txt))
	for name := range st.txt {
		for n := name; n != z.origin; {
			st.names[n] = true
			i, end := dns.NextLabel(n, 0)
			if end {
				break
			}
			n = n[i:]
		}
	}
	z.state.Store(st)
}

// zoneName returns the canonical form of name if it is in the zone.
func (z *Zone) zoneName(name string) (string, error) {
	fq := canonical(strings.TrimSuffix(name, "."))
	if _, ok := dns.IsDomainName(fq); !ok || !dns.IsSubDomain(z.origin, fq) {
		return "", fmt.Errorf("%w: %q", ErrOutsideZone, name)
	}
	return fq, nil
}

// SetTXT sets the TXT records of name (absolute, e.g.
// "_acme-challenge.app.example.test") to values, replacing any before; no values
// deletes them. It takes effect at once.
func (z *Zone) SetTXT(name string, values []string) error {
	fq, err := z.zoneName(name)
	if err != nil {
		return err
	}
	if len(values) == 0 {
		return z.DeleteTXT(name)
	}
	values = slices.Clone(values)
	z.update(func(st *zoneState) { st.txt[fq] = values })
	return nil
}

// DeleteTXT removes the TXT records of name. It takes effect at once.
func (z *Zone) DeleteTXT(name string) error {
	fq, err := z.zoneName(name)
	if err != nil {
		return err
	}
	z.update(func(st *zoneState) { delete(st.txt, fq) })
	return nil
}

// SetEdgeAddrs replaces the addresses the apex and "*.<origin>" names resolve to.
func (z *Zone) SetEdgeAddrs(addrs []netip.Addr) {
	addrs = cleanAddrs(addrs)
	z.update(func(st *zoneState) { st.edges = addrs })
}

// ServeDNS answers one query; it implements dns.Handler.
func (z *Zone) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	z.fe.serve(w, req, func(q *request) *dns.Msg {
		return z.answer(q.msg.Question[0].Name, q.name, q.qtype)
	})
}

// ServePacket answers queries arriving on pc until ctx is done or pc is closed;
// see Resolver.ServePacket.
func (z *Zone) ServePacket(ctx context.Context, pc net.PacketConn) error {
	return serve(ctx, &dns.Server{PacketConn: pc, Handler: z, UDPSize: maxQuerySize})
}

// ServeStream answers queries over TCP connections from ln until ctx is done or
// ln is closed; see Resolver.ServeStream.
func (z *Zone) ServeStream(ctx context.Context, ln net.Listener) error {
	return serve(ctx, &dns.Server{Listener: newLimitListener(ln, maxStreamConns, zoneStreamConnsPerSource), Handler: z})
}

// answer returns the reply body for (qname, qtype); name is qname canonical.
func (z *Zone) answer(qname, name string, qtype uint16) *dns.Msg {
	if !dns.IsSubDomain(z.origin, name) {
		return replyRcode(dns.RcodeRefused) // not an open resolver
	}
	st := z.state.Load()
	depth := dns.CountLabel(name) - dns.CountLabel(z.origin)
	apex := depth == 0
	if !apex && depth != 1 && !st.names[name] {
		m := &dns.Msg{MsgHdr: dns.MsgHdr{Authoritative: true, Rcode: dns.RcodeNameError}}
		m.Ns = []dns.RR{dns.Copy(st.soa)}
		return m
	}
	m := &dns.Msg{MsgHdr: dns.MsgHdr{Authoritative: true}}
	edges := apex || depth == 1 // the apex and the one-label wildcard
	switch qtype {
	case dns.TypeANY:
		return replyAny(qname, ZoneTTL)
	case dns.TypeA, dns.TypeAAAA:
		if edges {
			for _, a := range st.edges {
				if a.Is4() && qtype == dns.TypeA {
					m.Answer = append(m.Answer, &dns.A{Hdr: hdr(qname, dns.TypeA, ZoneTTL), A: a.AsSlice()})
				} else if a.Is6() && qtype == dns.TypeAAAA {
					m.Answer = append(m.Answer, &dns.AAAA{Hdr: hdr(qname, dns.TypeAAAA, ZoneTTL), AAAA: a.AsSlice()})
				}
			}
		}
	case dns.TypeTXT:
		for _, v := range st.txt[name] {
			m.Answer = append(m.Answer, &dns.TXT{Hdr: hdr(qname, dns.TypeTXT, ZoneTTL), Txt: splitTXT(v)})
		}
	case dns.TypeSOA:
		if apex {
			soa := dns.Copy(st.soa)
			soa.Header().Name = qname
			m.Answer = append(m.Answer, soa)
		}
	case dns.TypeNS:
		if apex {
			for _, n := range st.ns {
				m.Answer = append(m.Answer, &dns.NS{Hdr: hdr(qname, dns.TypeNS, zoneApexTTL), Ns: n})
				if dns.IsSubDomain(z.origin, n) && dns.CountLabel(n)-dns.CountLabel(z.origin) == 1 {
					m.Extra = append(m.Extra, z.glue(st, n)...)
				}
			}
		}
	}
	if len(m.Answer) == 0 {
		m.Ns = []dns.RR{dns.Copy(st.soa)}
	}
	return m
}

// glue returns the address records of the in-zone name server n.
func (z *Zone) glue(st *zoneState, n string) []dns.RR {
	var out []dns.RR
	for _, a := range st.edges {
		if a.Is4() {
			out = append(out, &dns.A{Hdr: hdr(n, dns.TypeA, ZoneTTL), A: a.AsSlice()})
		} else {
			out = append(out, &dns.AAAA{Hdr: hdr(n, dns.TypeAAAA, ZoneTTL), AAAA: a.AsSlice()})
		}
	}
	return out
}
