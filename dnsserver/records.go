package dnsserver

import (
	"cmp"
	"net/netip"
	"slices"
	"strings"

	"github.com/miekg/dns"
)

// LocalTTL is the TTL, in seconds, of every answer the Resolver gives from Records.
// It is short so that stub caches follow SetRecords quickly; the Resolver itself
// answers from the new snapshot at once.
const LocalTTL = 10

// Records is the data MagicDNS answers from. A Records value handed to
// Resolver.SetRecords must not be modified afterwards.
type Records struct {
	// Domain is the network's domain, e.g. "default.beam.internal" (no trailing dot).
	// Names under it that are not in Hosts or TXT get NXDOMAIN and are never
	// forwarded. Empty means the Resolver is authoritative for no domain.
	Domain string

	// BaseDomain is the parent of every network's domain ("beam.internal").
	// Names under it that are not in Hosts or TXT get NXDOMAIN and are never
	// forwarded (unless a Route under it covers them): another network's
	// names, or names of peers this node may not see, must neither leak to
	// an upstream nor be answered (shadowed) by one. Empty means none.
	BaseDomain string

	// SearchDomains are tried, after Domain, for single-label queries ("beta.").
	// A single-label name none of them holds is forwarded like any other
	// name, as Tailscale's MagicDNS does: it may be a LAN name ("printer")
	// that only the upstream knows.
	SearchDomains []string

	// Hosts maps a lower-case FQDN without trailing dot
	// ("beta.default.beam.internal") to its addresses, answered as A and AAAA.
	// Every address also gets a PTR record back to the name.
	Hosts map[string][]netip.Addr

	// TXT maps a lower-case FQDN without trailing dot to static TXT strings.
	TXT map[string][]string

	// Routes is split DNS: a domain suffix ("corp.example.com") mapped to the
	// resolvers that answer names under it, reached through ResolverOptions.Dial.
	// The longest matching suffix wins. A suffix with no resolvers is answered
	// locally with NXDOMAIN (never forwarded). "." may be used for the default,
	// overriding Upstreams.
	Routes map[string][]netip.AddrPort

	// Upstreams are the resolvers for every name that neither Domain nor Routes
	// covers, tried in order. Empty means such queries get REFUSED.
	Upstreams []netip.AddrPort

	// ReversePrefixes are the address ranges whose reverse (PTR) names are
	// answered only locally: NXDOMAIN when no host has the address, never
	// forwarded. 100.64.0.0/10 and the /48 of every IPv6 host address are always
	// included.
	ReversePrefixes []netip.Prefix

	// OverlayPrefixes are the overlay's address ranges beside 100.64.0.0/10,
	// which is always one (the node passes its network's IPv6 /48). An
	// answer from a resolver outside them loses every address record that
	// points into them: a public name must not lead a browser's page (DNS
	// rebinding) or anything else that trusts names into the mesh. Hosts
	// and resolvers on the overlay (split DNS) may answer overlay addresses.
	OverlayPrefixes []netip.Prefix
}

// route is one split-DNS entry of a snapshot.
type route struct {
	suffix    string // lower-case FQDN with trailing dot; "." for the default
	resolvers []netip.AddrPort
}

// snapshot is the immutable, lookup-ready form of a Records value.
type snapshot struct {
	domain  string   // lower-case FQDN with trailing dot, or "" for none
	base    string   // BaseDomain: lower-case FQDN with trailing dot, or "" for none
	search  []string // Domain first, then SearchDomains; FQDNs, deduplicated
	hosts   shardMap[string, []netip.Addr]
	txt     map[string][]string
	names   shardMap[string, int32] // every name with data, and every ancestor of one under domain: how many names with data it covers
	ptr     shardMap[netip.Addr, []string]
	revPfx  []netip.Prefix
	overlay []netip.Prefix // 100.64.0.0/10 and Records.OverlayPrefixes
	routes  []route        // sorted by suffix length, longest first; includes "." for Upstreams
	soa     *dns.SOA
	forward bool // some route or upstream exists
}

var cgnatPrefix = netip.MustParsePrefix("100.64.0.0/10")

// canonical returns name as a lower-case FQDN with trailing dot.
func canonical(name string) string {
	return strings.ToLower(dns.Fqdn(name))
}

// newSnapshot builds the lookup form of rec. serial becomes the SOA serial.
func newSnapshot(rec *Records, serial uint32) *snapshot {
	if rec == nil {
		rec = &Records{}
	}
	s := &snapshot{txt: make(map[string][]string, len(rec.TXT))}
	he, ne, pe := &shardEdit[string, []netip.Addr]{s: &s.hosts}, &shardEdit[string, int32]{s: &s.names}, &shardEdit[netip.Addr, []string]{s: &s.ptr}
	if d := strings.Trim(rec.Domain, "."); d != "" {
		s.domain = canonical(d)
		s.search = append(s.search, s.domain)
		ne.set(s.domain, 1)
	}
	if d := strings.Trim(rec.BaseDomain, "."); d != "" {
		s.base = canonical(d)
	}
	for _, d := range rec.SearchDomains {
		if d = strings.Trim(d, "."); d == "" {
			continue
		}
		if d = canonical(d); !slices.Contains(s.search, d) {
			s.search = append(s.search, d)
		}
	}
	s.revPfx = append(s.revPfx, cgnatPrefix)
	s.overlay = append(s.overlay, cgnatPrefix)
	for _, p := range rec.OverlayPrefixes {
		if p.IsValid() {
			s.overlay = append(s.overlay, p.Masked())
		}
	}
	for _, p := range rec.ReversePrefixes {
		if p.IsValid() {
			s.revPfx = append(s.revPfx, p.Masked())
		}
	}
	for name, addrs := range rec.Hosts {
		fq := canonical(name)
		for _, a := range addrs {
			if !a.IsValid() {
				continue
			}
			a = a.Unmap().WithZone("")
			he.set(fq, append(s.hosts.get(fq), a))
			if ps := s.ptr.get(a); !slices.Contains(ps, fq) {
				pe.set(a, append(ps, fq))
			}
			if a.Is6() {
				p, _ := a.Prefix(48)
				if !slices.Contains(s.revPfx, p) {
					s.revPfx = append(s.revPfx, p)
				}
			}
		}
		s.addName(ne, fq, 1)
	}
	for name, vals := range rec.TXT {
		fq := canonical(name)
		s.txt[fq] = append(s.txt[fq], vals...)
		s.addName(ne, fq, 1)
	}
	for _, m := range s.ptr.m {
		for _, hosts := range m {
			slices.Sort(hosts)
		}
	}
	if len(rec.Upstreams) > 0 {
		s.routes = append(s.routes, route{suffix: ".", resolvers: slices.Clone(rec.Upstreams)})
	}
	for suffix, res := range rec.Routes {
		suffix = canonical(strings.Trim(suffix, "."))
		if i := slices.IndexFunc(s.routes, func(r route) bool { return r.suffix == suffix }); i >= 0 {
			s.routes[i].resolvers = slices.Clone(res)
			continue
		}
		s.routes = append(s.routes, route{suffix: suffix, resolvers: slices.Clone(res)})
	}
	slices.SortFunc(s.routes, func(a, b route) int {
		return cmp.Or(cmp.Compare(dns.CountLabel(b.suffix), dns.CountLabel(a.suffix)), strings.Compare(a.suffix, b.suffix))
	})
	for _, r := range s.routes {
		if len(r.resolvers) > 0 {
			s.forward = true
		}
	}
	if s.domain != "" {
		s.soa = &dns.SOA{
			Hdr:     dns.RR_Header{Name: s.domain, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: LocalTTL},
			Ns:      s.domain,
			Mbox:    "hostmaster." + s.domain,
			Serial:  serial,
			Refresh: 3600,
			Retry:   600,
			Expire:  86400,
			Minttl:  LocalTTL,
		}
	}
	return s
}

// addName counts d (1 or -1) names with data for fq and, when it lies
// under the domain, for each of its ancestors down to the domain (empty
// non-terminals exist: they answer NOERROR, not NXDOMAIN). A name whose
// count drops to 0 goes.
func (s *snapshot) addName(e *shardEdit[string, int32], fq string, d int32) {
	count := func(name string) {
		if c := s.names.get(name) + d; c > 0 {
			e.set(name, c)
		} else {
			e.del(name)
		}
	}
	count(fq)
	if s.domain == "" || !dns.IsSubDomain(s.domain, fq) {
		return
	}
	for name := fq; name != s.domain; {
		i, end := dns.NextLabel(name, 0)
		if end {
			break
		}
		name = name[i:]
		if name != s.domain {
			count(name)
		}
	}
}

// withHosts returns s with the addresses of the hosts named in hosts
// replaced (see Resolver.UpdateHosts). Only the shards of the names and
// addresses that change are copied.
func (s *snapshot) withHosts(hosts map[string][]netip.Addr, serial uint32) *snapshot {
	n := *s
	he, ne, pe := &shardEdit[string, []netip.Addr]{s: &n.hosts}, &shardEdit[string, int32]{s: &n.names}, &shardEdit[netip.Addr, []string]{s: &n.ptr}
	for name, addrs := range hosts {
		fq := canonical(name)
		old := n.hosts.get(fq)
		var next []netip.Addr
		for _, a := range addrs {
			if a.IsValid() {
				next = append(next, a.Unmap().WithZone(""))
			}
		}
		for _, a := range old {
			ps := n.ptr.get(a)
			if i := slices.Index(ps, fq); i >= 0 {
				if ps = slices.Delete(slices.Clone(ps), i, i+1); len(ps) == 0 {
					pe.del(a)
				} else {
					pe.set(a, ps)
				}
			}
		}
		for _, a := range next {
			if ps := n.ptr.get(a); !slices.Contains(ps, fq) {
				ps = append(slices.Clone(ps), fq)
				slices.Sort(ps)
				pe.set(a, ps)
			}
			if a.Is6() {
				if p, _ := a.Prefix(48); !slices.Contains(n.revPfx, p) {
					n.revPfx = append(slices.Clip(n.revPfx), p)
				}
			}
		}
		switch {
		case len(next) == 0 && len(old) > 0:
			he.del(fq)
			n.addName(ne, fq, -1)
		case len(next) > 0:
			he.set(fq, next)
			if len(old) == 0 {
				n.addName(ne, fq, 1)
			}
		}
	}
	if s.soa != nil {
		soa := *s.soa
		soa.Serial = serial
		n.soa = &soa
	}
	return &n
}

// inDomain reports whether the canonical name fq is the domain or under it.
func (s *snapshot) inDomain(fq string) bool {
	return s.domain != "" && dns.IsSubDomain(s.domain, fq)
}

// underBase reports whether the canonical name fq is the base domain or
// under it, and no route under the base domain covers it: a name
// answered only locally.
func (s *snapshot) underBase(fq string) bool {
	if s.base == "" || !dns.IsSubDomain(s.base, fq) {
		return false
	}
	rt, ok := s.routeFor(fq)
	return !ok || !dns.IsSubDomain(s.base, rt.suffix)
}

// routeFor returns the longest route whose suffix covers the canonical name fq.
func (s *snapshot) routeFor(fq string) (route, bool) {
	for _, r := range s.routes {
		if dns.IsSubDomain(r.suffix, fq) {
			return r, true
		}
	}
	return route{}, false
}

// isOverlay reports whether a is in one of the overlay's ranges.
func (s *snapshot) isOverlay(a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range s.overlay {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// isLocalReverse reports whether a is in a range whose PTR names are answered only locally.
func (s *snapshot) isLocalReverse(a netip.Addr) bool {
	for _, p := range s.revPfx {
		if p.Contains(a) {
			return true
		}
	}
	return false
}
