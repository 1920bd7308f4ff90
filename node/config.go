package node

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"beam.dev/beam/dnsserver"
	"beam.dev/beam/hostdns"
	"beam.dev/beam/netstack"
	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// MagicDNSIPv4 is the address every node serves MagicDNS on inside its
// own netstack, as in other overlay networks.
var MagicDNSIPv4 = netip.MustParseAddr("100.100.100.100")

// overlayULA is the overlay's IPv6 range, where the coordinator gives
// every node an address.
var overlayULA = wire.OverlayIPv6

// errSelfAddress means the netmap gave the node an address outside the
// overlay's ranges.
var errSelfAddress = errors.New("node: the coordinator assigned an address outside the overlay (100.64.0.0/10, fd7a:bea0:b0de::/48)")

// checkSelfAddresses returns an error wrapping errSelfAddress unless
// every address of self is a single address in 100.64.0.0/10 or
// overlayULA. In kernel TUN mode the addresses (and the ranges routed
// with them) go onto the host's interface, where 8.8.8.8 would take the
// host's traffic to that address into the overlay.
func checkSelfAddresses(self *wire.Node) error {
	for _, p := range self.Addresses {
		a := p.Addr()
		if !a.IsValid() || p.Bits() != a.BitLen() || !(cgnat.Contains(a) || overlayULA.Contains(a)) {
			return fmt.Errorf("%w: %s; the netmap's addresses are refused", errSelfAddress, p)
		}
	}
	return nil
}

// selfAddresses returns self's addresses if checkSelfAddresses accepts
// them all, else none.
func selfAddresses(self *wire.Node) []netip.Prefix {
	if self == nil || checkSelfAddresses(self) != nil {
		return nil
	}
	return self.Addresses
}

// magicDNSIPv6 returns the IPv6 MagicDNS address for a node: ::53 in the
// /48 of the node's overlay IPv6 address, or an invalid Addr if it has none.
func magicDNSIPv6(self *wire.Node) netip.Addr {
	for _, p := range selfAddresses(self) {
		if p.Addr().Is6() {
			pfx, err := p.Addr().Prefix(48)
			if err != nil {
				return netip.Addr{}
			}
			a := pfx.Addr().As16()
			a[15] = 0x53
			return netip.AddrFrom16(a)
		}
	}
	return netip.Addr{}
}

// overlayRoutes returns the overlay's ranges as seen from self, for the
// engine's routes in kernel TUN mode: 100.64.0.0/10 if self has an IPv4
// address in it, and the overlay's /48 if self has an IPv6 address in it;
// none if checkSelfAddresses refuses self's addresses.
func overlayRoutes(self *wire.Node) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range selfAddresses(self) {
		a := p.Addr().Unmap()
		switch {
		case a.Is4() && cgnat.Contains(a):
			if !slices.Contains(out, cgnat) {
				out = append(out, cgnat)
			}
		case a.Is6() && overlayULA.Contains(a):
			if !slices.Contains(out, overlayULA) {
				out = append(out, overlayULA)
			}
		}
	}
	return out
}

// engineConfig turns a netmap into the engine's configuration. Peers whose
// key has expired (judged on the coordinator's clock, corrected for skew)
// are left out, and an expired self gets no peers at all: expiry holds even
// while the coordinator is unreachable.
func engineConfig(nm *wire.NetMap, localNow time.Time, shieldsUp bool, allowInbound []uint16) netstack.Config {
	cfg := engineBase(nm, shieldsUp, allowInbound, nil)
	forEnginePeer(nm, localNow, func(p *wire.Node) {
		cfg.Peers = append(cfg.Peers, enginePeer(p))
	})
	return cfg
}

// engineBase is engineConfig without the peers. fc converts the filter,
// reusing what did not change since its last call; nil converts it anew.
func engineBase(nm *wire.NetMap, shieldsUp bool, allowInbound []uint16, fc *filterCache) netstack.Config {
	cfg := netstack.Config{ServiceAddrs: []netip.Addr{MagicDNSIPv4}}
	if nm == nil || nm.Self == nil {
		return cfg
	}
	cfg.Addresses = append(cfg.Addresses, selfAddresses(nm.Self)...)
	cfg.Routes = overlayRoutes(nm.Self)
	if a := magicDNSIPv6(nm.Self); a.IsValid() {
		cfg.ServiceAddrs = append(cfg.ServiceAddrs, a)
	}
	cfg.ShieldsUp = shieldsUp
	cfg.AllowInbound = allowInbound
	// The coordinator always sends the filter its policy compiles for this
	// node; an empty one arrives as an absent JSON field (nil here) and
	// means nothing may open a flow to this node, never "accept all".
	if fc == nil {
		fc = &filterCache{}
	}
	cfg.Filter = fc.convert(nm.PacketFilter, nm.FilterSets)
	cfg.DERPMap, cfg.HomeDERP = derpConfig(nm.DERPMap)
	return cfg
}

// forEnginePeer calls fn for each peer of nm that the engine gets: none if
// self has expired, else every unexpired peer with an address.
func forEnginePeer(nm *wire.NetMap, localNow time.Time, fn func(*wire.Node)) {
	if nm == nil || nm.Self == nil {
		return
	}
	now := nm.ControlNow(localNow)
	if nm.Self.Expired(now) {
		return
	}
	for _, p := range nm.Peers {
		if p.Expired(now) || len(p.Addresses) == 0 {
			continue
		}
		fn(p)
	}
}

// enginePeer is the engine's view of peer p.
func enginePeer(p *wire.Node) netstack.Peer {
	return netstack.Peer{
		Key:        p.Key,
		DiscoKey:   p.DiscoKey,
		AllowedIPs: append([]netip.Prefix(nil), p.Addresses...),
		Endpoints:  append([]netip.AddrPort(nil), p.Endpoints...),
		HomeDERP:   p.HomeDERP,
		// A peer relay server on the peer: the coordinator's policy
		// gave us the node, so we may relay through it.
		RelayServer: p.PeerRelay != 0,
	}
}

// isEnginePeer reports whether ep is what enginePeer makes of p.
func isEnginePeer(ep *netstack.Peer, p *wire.Node) bool {
	return ep.Key == p.Key && ep.DiscoKey == p.DiscoKey && ep.HomeDERP == p.HomeDERP && ep.RelayServer == (p.PeerRelay != 0) &&
		slices.Equal(ep.AllowedIPs, p.Addresses) && slices.Equal(ep.Endpoints, p.Endpoints)
}

// peerChanges compares the peers the engine has (cur) with those nm gives
// it, as engineConfig would, and returns the new or changed ones and the
// keys of those that go. It allocates only for what changed, so a netmap
// that changes one peer of thousands costs a walk of the netmap, not a
// rebuild of every peer.
func peerChanges(nm *wire.NetMap, localNow time.Time, cur map[key.NodePublic]netstack.Peer) (set []netstack.Peer, remove []key.NodePublic) {
	kept := 0
	forEnginePeer(nm, localNow, func(p *wire.Node) {
		ep, ok := cur[p.Key]
		if ok {
			kept++
			if isEnginePeer(&ep, p) {
				return
			}
		}
		set = append(set, enginePeer(p))
	})
	if kept == len(cur) {
		return set, remove
	}
	present := make(map[key.NodePublic]bool, kept)
	forEnginePeer(nm, localNow, func(p *wire.Node) { present[p.Key] = true })
	for k := range cur {
		if !present[k] {
			remove = append(remove, k)
		}
	}
	return set, remove
}

// derpConfig returns the engine's relay map (per region, the URLs of its
// relaying nodes and the STUN addresses of all its nodes) and a hint
// for this node's home region: the lowest region ID with a relay, so every
// node of a one-region deployment homes on the same relay. The engine
// stays connected to the hint and may choose a faster home by latency.
func derpConfig(dm *wire.DERPMap) (map[int]netstack.DERPRegion, int) {
	if dm == nil || len(dm.Regions) == 0 {
		return nil, 0
	}
	out := map[int]netstack.DERPRegion{}
	home := 0
	for id, r := range dm.Regions {
		if r == nil {
			continue
		}
		var reg netstack.DERPRegion
		for _, n := range r.Nodes {
			if n == nil {
				continue
			}
			if n.STUNAddr != "" {
				reg.STUNAddrs = append(reg.STUNAddrs, n.STUNAddr)
				if host, _, err := net.SplitHostPort(n.STUNAddr); err == nil && n.STUNAltPort != 0 {
					reg.STUNAddrs = append(reg.STUNAddrs, net.JoinHostPort(host, strconv.Itoa(int(n.STUNAltPort))))
				}
			}
			if !n.STUNOnly && n.URL != "" {
				reg.URLs = append(reg.URLs, n.URL)
			}
		}
		if len(reg.URLs) == 0 && len(reg.STUNAddrs) == 0 {
			continue
		}
		out[id] = reg
		if len(reg.URLs) > 0 && (home == 0 || id < home) {
			home = id
		}
	}
	if len(out) == 0 {
		return nil, 0
	}
	return out, home
}

// nextExpiry returns when (on the local clock) the first key of nm that
// is still valid at localNow expires, the node's own or a peer's, or an
// hour from localNow if that is sooner.
func nextExpiry(nm *wire.NetMap, localNow time.Time) time.Time {
	next := localNow.Add(time.Hour)
	if nm == nil {
		return next
	}
	now := nm.ControlNow(localNow)
	next = expiryBefore(next, nm.Self, now, localNow)
	for _, p := range nm.Peers {
		next = expiryBefore(next, p, now, localNow)
	}
	return next
}

// expiryBefore returns when n's key expires on the local clock, if it is
// valid at now (the coordinator's clock at localNow) and expires before
// next; else next.
func expiryBefore(next time.Time, n *wire.Node, now, localNow time.Time) time.Time {
	if n != nil && !n.KeyExpiry.IsZero() && n.KeyExpiry.After(now) {
		if t := localNow.Add(n.KeyExpiry.Sub(now)); t.Before(next) {
			return t
		}
	}
	return next
}

// deltaApplies reports whether what was derived from the netmap old at
// some time (the engine's peers, the MagicDNS records) may be brought up
// to date with nm by looking only at the peers nm.PeerChanges(old)
// reports: both have a self with the same key expiry and the same clock
// skew (within a second), and no key valid then has expired by localNow
// (until, from nextExpiry, is before it), and self's key has not expired.
// The caller checks what else it depends on.
func deltaApplies(old, nm *wire.NetMap, localNow, until time.Time) bool {
	if old == nil || nm == nil || old.Self == nil || nm.Self == nil || !localNow.Before(until) {
		return false
	}
	if old.Self != nm.Self && !old.Self.KeyExpiry.Equal(nm.Self.KeyExpiry) {
		return false
	}
	skew := old.ControlNow(localNow).Sub(nm.ControlNow(localNow))
	// An expired self has no peers at all; a walk finds that at once.
	return skew < time.Second && skew > -time.Second && !nm.Self.Expired(nm.ControlNow(localNow))
}

// peerDelta is peerChanges for a netmap nm made from old by deltas, when
// deltaApplies(old, nm, localNow, until) and cur holds the engine's peers
// for old: it looks at the peers that changed alone. It also returns
// until lowered to the first expiry among them.
func peerDelta(old, nm *wire.NetMap, localNow, until time.Time, cur map[key.NodePublic]netstack.Peer) (set []netstack.Peer, remove []key.NodePublic, next time.Time) {
	now := nm.ControlNow(localNow)
	nm.PeerChanges(old, func(was, p *wire.Node) {
		if p != nil {
			until = expiryBefore(until, p, now, localNow)
			if !p.Expired(now) && len(p.Addresses) > 0 {
				if ep, ok := cur[p.Key]; !ok || !isEnginePeer(&ep, p) {
					set = append(set, enginePeer(p))
				}
				return
			}
			was = p
		}
		if _, ok := cur[was.Key]; ok {
			remove = append(remove, was.Key)
		}
	})
	return set, remove, until
}

// recordsDelta returns the MagicDNS host changes (for
// Resolver.UpdateHosts) that bring rec, the records dnsRecords made of
// old, up to date with nm, made from old by deltas, and until lowered to
// the first expiry among the changed peers. It looks at the peers that
// changed alone. ok is false when the records must be rebuilt instead:
// deltaApplies does not hold, the DNS settings or self changed, or a
// changed peer's name is also another host's.
func recordsDelta(old, nm *wire.NetMap, rec *dnsserver.Records, localNow, until time.Time) (changes map[string][]netip.Addr, next time.Time, ok bool) {
	if rec == nil || !deltaApplies(old, nm, localNow, until) || old.DNS != nm.DNS || !sameNamed(old.Self, nm.Self) {
		return nil, until, false
	}
	now := nm.ControlNow(localNow)
	ok = true
	cur := func(name string) []netip.Addr {
		if as, seen := changes[name]; seen {
			return as
		}
		return rec.Hosts[name]
	}
	nm.PeerChanges(old, func(was, p *wire.Node) {
		if !ok || sameNamed(was, p) {
			return
		}
		if changes == nil {
			changes = map[string][]netip.Addr{}
		}
		// was's addresses must be its name's alone, and p's name must
		// have none but p's: a host of one node each.
		if was != nil && !was.Expired(now) && len(was.Addresses) > 0 {
			if name := hostName(was, rec.Domain); name != "" {
				if !slices.Equal(cur(name), prefixAddrs(was.Addresses)) {
					ok = false
					return
				}
				changes[name] = nil
			}
		}
		if p != nil {
			until = expiryBefore(until, p, now, localNow)
			if !p.Expired(now) && len(p.Addresses) > 0 {
				if name := hostName(p, rec.Domain); name != "" {
					if len(cur(name)) > 0 {
						ok = false
						return
					}
					changes[name] = prefixAddrs(p.Addresses)
				}
			}
		}
	})
	return changes, until, ok
}

// sameNamed reports whether a and b give the same MagicDNS records.
func sameNamed(a, b *wire.Node) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Name == b.Name && a.DNSName == b.DNSName && slices.Equal(a.Addresses, b.Addresses) && a.KeyExpiry.Equal(b.KeyExpiry)
}

// hostName is n's name in the MagicDNS records of domain: its DNSName, or
// its Name under domain; "" for none.
func hostName(n *wire.Node, domain string) string {
	name := strings.TrimSuffix(strings.ToLower(n.DNSName), ".")
	if name == "" {
		if n.Name == "" || domain == "" {
			return ""
		}
		name = n.Name + "." + domain
	}
	return name
}

// dnsRecords turns a netmap into the MagicDNS records: every visible,
// unexpired peer and the node itself, by full name, plus the coordinator's
// extra records and split routes.
func dnsRecords(nm *wire.NetMap, localNow time.Time, upstreams []netip.AddrPort) *dnsserver.Records {
	rec := &dnsserver.Records{
		Hosts:     map[string][]netip.Addr{},
		TXT:       map[string][]string{},
		Upstreams: upstreams,
	}
	if nm == nil || nm.Self == nil {
		return rec
	}
	for _, p := range selfAddresses(nm.Self) {
		if p.Addr().Is6() {
			if pfx, err := p.Addr().Prefix(48); err == nil {
				rec.OverlayPrefixes = append(rec.OverlayPrefixes, pfx) // as isOverlay
			}
		}
	}
	if nm.DNS != nil {
		// Names that are not DNS names (checkDNSNames says why; the node
		// logs it) are dropped: they would reach the host's resolver
		// configuration in kernel TUN mode.
		if hostdns.CheckDomain(nm.DNS.Domain) == nil {
			rec.Domain = strings.TrimSuffix(strings.ToLower(nm.DNS.Domain), ".")
		}
		for _, d := range nm.DNS.SearchDomains {
			if hostdns.CheckDomain(d) == nil {
				rec.SearchDomains = append(rec.SearchDomains, d)
			}
		}
		if len(nm.DNS.Nameservers) > 0 {
			rec.Upstreams = nm.DNS.Nameservers
		}
		if len(nm.DNS.Routes) > 0 {
			rec.Routes = nm.DNS.Routes
		}
		for _, r := range nm.DNS.ExtraRecords {
			name := strings.TrimSuffix(strings.ToLower(r.Name), ".")
			switch strings.ToUpper(r.Type) {
			case "TXT":
				rec.TXT[name] = append(rec.TXT[name], r.Value)
			default:
				if a, err := netip.ParseAddr(r.Value); err == nil {
					rec.Hosts[name] = append(rec.Hosts[name], a)
				}
			}
		}
	}
	// A network's domain is NETWORK.BASE (coordinator ensureNetwork):
	// the rest of BASE, the other networks' names, is answered locally.
	if _, base, ok := strings.Cut(rec.Domain, "."); ok && base != "" {
		rec.BaseDomain = base
	}
	if rec.Domain != "" && len(rec.SearchDomains) == 0 {
		rec.SearchDomains = []string{rec.Domain}
	}
	now := nm.ControlNow(localNow)
	add := func(n *wire.Node) {
		name := hostName(n, rec.Domain)
		if name == "" {
			return
		}
		for _, p := range n.Addresses {
			rec.Hosts[name] = append(rec.Hosts[name], p.Addr())
		}
	}
	add(nm.Self)
	if !nm.Self.Expired(now) {
		for _, p := range nm.Peers {
			if !p.Expired(now) {
				add(p)
			}
		}
	}
	return rec
}

// checkDNSNames returns why names of d are dropped: the domain, search
// domains and split-DNS route domains that hostdns.CheckDomain refuses.
// An empty domain is no problem (MagicDNS is off).
func checkDNSNames(d *wire.DNSConfig) []error {
	if d == nil {
		return nil
	}
	var errs []error
	if d.Domain != "" {
		if err := hostdns.CheckDomain(d.Domain); err != nil {
			errs = append(errs, fmt.Errorf("domain dropped: %w", err))
		}
	}
	for _, s := range d.SearchDomains {
		if err := hostdns.CheckDomain(s); err != nil {
			errs = append(errs, fmt.Errorf("search domain dropped: %w", err))
		}
	}
	for r := range d.Routes {
		if err := hostdns.CheckDomain(r); err != nil {
			errs = append(errs, fmt.Errorf("split-DNS route left out of the host's resolver: %w", err))
		}
	}
	return errs
}

// checkNetMapLocked logs what of the netmap the node refuses (self
// addresses outside the overlay, names that are not DNS names), once per
// change. n.mu held.
func (n *Node) checkNetMapLocked() {
	var errs []error
	if nm := n.netmap; nm != nil {
		if nm.Self != nil {
			if err := checkSelfAddresses(nm.Self); err != nil {
				errs = append(errs, err)
			}
		}
		errs = append(errs, checkDNSNames(nm.DNS)...)
	}
	msg := ""
	if err := errors.Join(errs...); err != nil {
		msg = err.Error()
	}
	if msg != n.netmapProblem {
		n.netmapProblem = msg
		if msg != "" {
			n.logger.Error("netmap from the coordinator refused in part", "err", errors.Join(errs...))
		}
	}
}
