package coordinator

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// Route is a published edge route as the store keeps it.
type Route struct {
	ID        int64
	NetworkID int64
	// NodeID is the node that serves the route.
	NodeID wire.NodeID
	// Host is the public name, lower case without trailing dot.
	Host string
	// Proto is "http", "tls", "tcp" or "udp".
	Proto string
	// PublicPort is the edge port of tcp and udp routes, 0 otherwise.
	PublicPort uint16
	// Port is the node's port the edge connects to.
	Port uint16
	// CustomDomain is set when Host is a verified custom domain.
	CustomDomain bool
	// Pool is set when the node agreed to share Host with other nodes of
	// its user or tag (wire.ExposeRequest.Pool).
	Pool bool
	// Upstream is where the node forwards the route (see
	// wire.ExposeRequest.Upstream); empty for its own port.
	Upstream string
	// Version names the stored route's last write (set by a store shared
	// by several coordinators; see EdgeAcks), "" if the store has none.
	Version string
	// Options is the route's policy, valid for Proto.
	Options   wire.RouteOptions
	CreatedAt time.Time
}

// RouteStore keeps edge routes. Deleting a node deletes its routes. A
// Store that implements it (and DomainStore) enables the public edge.
type RouteStore interface {
	// PutRoute inserts r, or replaces the route with the same node, host
	// and proto, and sets r.ID. A node that no longer exists fails.
	PutRoute(ctx context.Context, r *Route) error
	// DeleteRoutes deletes the routes with the given IDs; missing ones
	// are ignored.
	DeleteRoutes(ctx context.Context, ids []int64) error
	// Routes lists all routes.
	Routes(ctx context.Context) ([]*Route, error)
}

// Domain is a network's claim on a custom domain.
type Domain struct {
	NetworkID int64
	// Domain is lower case, without trailing dot.
	Domain string
	// Token is what the network publishes in DNS to prove control.
	Token string
	// VerifiedAt is when control was proved; zero means not yet.
	VerifiedAt time.Time
	CreatedAt  time.Time
}

// DomainStore keeps custom domain claims.
type DomainStore interface {
	// PutDomain inserts d or replaces the claim of d.NetworkID on d.Domain.
	PutDomain(ctx context.Context, d *Domain) error
	// Domains lists all claims.
	Domains(ctx context.Context) ([]*Domain, error)
	// DeleteDomain deletes the claim of networkID on domain; a missing
	// one is ignored.
	DeleteDomain(ctx context.Context, networkID int64, domain string) error
}

// Zone is the public DNS zone of the edge domain, where TXT records for
// ACME DNS-01 challenges go. beam.dev/beam/dnsserver.Zone implements it.
// Its methods may be called with the Server's locks held: they must not
// call back into it.
type Zone interface {
	// SetTXT sets the TXT records of the absolute name to values.
	SetTXT(name string, values []string) error
	// DeleteTXT removes the TXT records of name.
	DeleteTXT(name string) error
}

// PortRange is an inclusive range of edge ports; the zero value is empty.
type PortRange struct {
	First, Last uint16
}

// ParsePortRange parses "20000-20999" (or a single port "20000").
func ParsePortRange(s string) (PortRange, error) {
	lo, hi, ok := strings.Cut(strings.TrimSpace(s), "-")
	if !ok {
		hi = lo
	}
	a, err1 := strconv.ParseUint(strings.TrimSpace(lo), 10, 16)
	b, err2 := strconv.ParseUint(strings.TrimSpace(hi), 10, 16)
	if err1 != nil || err2 != nil || a == 0 || b < a {
		return PortRange{}, fmt.Errorf("%w: port range %q: want FIRST-LAST within 1-65535", ErrInvalid, s)
	}
	return PortRange{uint16(a), uint16(b)}, nil
}

// String returns "FIRST-LAST", or "" for the empty range.
func (r PortRange) String() string {
	if r.IsZero() {
		return ""
	}
	return fmt.Sprintf("%d-%d", r.First, r.Last)
}

// IsZero reports whether r is the empty range.
func (r PortRange) IsZero() bool { return r.First == 0 && r.Last == 0 }

// edgeConfig is the edge part of Options, normalized.
type edgeConfig struct {
	domain, host, httpURL string
	tcpPorts, udpPorts    PortRange
	portFree              func(proto string, port uint16) bool
	zone                  Zone
	lookupTXT             func(ctx context.Context, name string) ([]string, error)
	lookupCNAME           func(ctx context.Context, name string) (string, error)
	quota                 RouteQuota // defaults filled in
}

// memRoute is a route in memory with its node's key.
type memRoute struct {
	Route
	node key.NodePublic
}

// edgeRoutes is the coordinator's public-edge job: the routes nodes
// publish (expose.go, claim.go), custom domains (domains.go), the
// operator's DNS settings and the public zone's TXT records
// (dnsconfig.go, txt_node.go). It owns its state; nodes, networks and map
// streams belong to the core (Server), which it reads under Server.mu.
//
// Lock order: changeMu, then Server.persistMu, then Server.mu, then mu.
// mu is a leaf: nothing else is locked while it is held.
type edgeRoutes struct {
	core *Server
	cfg  edgeConfig
	// routeStore and domainStore are nil when the Store keeps no routes;
	// then the edge is disabled.
	routeStore  RouteStore
	domainStore DomainStore

	// changeMu serializes route and domain changes: ownership checks,
	// port allocation and their store writes. Nothing waits on the
	// network under it: custom domains' DNS lookups run before it is
	// taken (checkDomain, verifyDomain).
	changeMu sync.Mutex

	// proofFails limits nodes' proof checks of custom domains.
	proofFails proofFails

	dns atomic.Pointer[wire.DNSSettings] // never nil after New

	mu      sync.Mutex // guards the following fields
	routes  map[int64]*memRoute
	byNode  map[key.NodePublic][]*memRoute
	domains map[domainKey]*Domain
	// gen counts route changes and dnsGen DNS settings changes; streams
	// compare them to what they sent.
	gen    uint64
	dnsGen uint64
}

type domainKey struct {
	network int64
	domain  string
}

// newEdgeRoutes checks the edge options and finds the route stores.
func newEdgeRoutes(core *Server, opts Options) (*edgeRoutes, error) {
	c := edgeConfig{
		domain:      strings.ToLower(strings.Trim(opts.EdgeDomain, ".")),
		host:        strings.TrimSuffix(opts.EdgeHost, "."),
		httpURL:     opts.EdgeHTTPURL,
		tcpPorts:    opts.EdgeTCPPorts,
		udpPorts:    opts.EdgeUDPPorts,
		portFree:    opts.EdgePortFree,
		zone:        opts.Zone,
		lookupTXT:   opts.LookupTXT,
		lookupCNAME: opts.LookupCNAME,
		quota:       opts.RouteQuota.withDefaults(),
	}
	// "localhost" (one label) is allowed for local development: browsers
	// and curl resolve every *.localhost name to loopback.
	if c.domain != "" && c.domain != "localhost" && !isDomainName(c.domain) {
		return nil, fmt.Errorf("coordinator: edge domain %q is not a domain name", opts.EdgeDomain)
	}
	if c.host == "" {
		c.host = c.domain
	}
	for _, r := range []PortRange{c.tcpPorts, c.udpPorts} {
		if !r.IsZero() && (r.First == 0 || r.Last < r.First) {
			return nil, fmt.Errorf("coordinator: bad edge port range %d-%d", r.First, r.Last)
		}
	}
	if c.httpURL != "" && !strings.Contains(c.httpURL, "{host}") {
		return nil, fmt.Errorf("coordinator: edge HTTP URL template %q lacks {host}", c.httpURL)
	}
	if c.lookupTXT == nil {
		c.lookupTXT = net.DefaultResolver.LookupTXT
	}
	if c.lookupCNAME == nil {
		c.lookupCNAME = net.DefaultResolver.LookupCNAME
	}
	es := &edgeRoutes{
		core:    core,
		cfg:     c,
		routes:  make(map[int64]*memRoute),
		byNode:  make(map[key.NodePublic][]*memRoute),
		domains: make(map[domainKey]*Domain),
	}
	es.routeStore, _ = opts.Store.(RouteStore)
	es.domainStore, _ = opts.Store.(DomainStore)
	if es.routeStore == nil || es.domainStore == nil {
		es.routeStore, es.domainStore = nil, nil
		if c.domain != "" {
			return nil, errors.New("coordinator: the Store keeps no edge routes (RouteStore, DomainStore); cannot enable the edge")
		}
	}
	dns := &wire.DNSSettings{}
	if opts.DNS != nil {
		dns = cloneDNSSettings(opts.DNS)
	}
	es.dns.Store(dns)
	return es, nil
}

// load reads routes, domains and DNS settings from the store. Routes of
// nodes that are gone or expired are deleted. Called from New, after the
// core loaded the nodes.
func (es *edgeRoutes) load(ctx context.Context, dnsFromOptions bool) error {
	s := es.core
	if dnsFromOptions {
		if err := es.storeDNSSettings(ctx, es.dns.Load()); err != nil {
			return err
		}
	} else if b, err := s.store.Setting(ctx, dnsSetting); err == nil {
		d, err := ParseDNSSettings(b)
		if err != nil {
			return fmt.Errorf("coordinator: stored DNS settings: %w", err)
		}
		es.dns.Store(d)
	} else if !errors.Is(err, ErrNotFound) {
		return fmt.Errorf("coordinator: load DNS settings: %w", err)
	}
	if es.routeStore == nil {
		return nil
	}
	routes, err := es.routeStore.Routes(ctx)
	if err != nil {
		return fmt.Errorf("coordinator: load routes: %w", err)
	}
	domains, err := es.domainStore.Domains(ctx)
	if err != nil {
		return fmt.Errorf("coordinator: load domains: %w", err)
	}
	now := s.now()
	s.mu.Lock()
	byID := make(map[wire.NodeID]NodeRecord, len(s.nodes))
	for _, e := range s.nodes {
		byID[e.rec.Node.ID] = e.rec
	}
	s.mu.Unlock()
	es.mu.Lock()
	defer es.mu.Unlock()
	var stale []int64
	for _, r := range routes {
		rec, ok := byID[r.NodeID]
		if !ok || rec.Node.Expired(now) {
			stale = append(stale, r.ID)
			continue
		}
		es.addLocked(&memRoute{Route: *r, node: rec.Node.Key})
	}
	if len(stale) > 0 {
		if err := es.routeStore.DeleteRoutes(ctx, stale); err != nil {
			return fmt.Errorf("coordinator: delete stale routes: %w", err)
		}
	}
	for _, d := range domains {
		es.domains[domainKey{d.NetworkID, d.Domain}] = d
	}
	return nil
}

// addLocked indexes r, replacing a route with the same ID. es.mu held.
func (es *edgeRoutes) addLocked(r *memRoute) {
	if old := es.routes[r.ID]; old != nil {
		es.removeLocked(old)
	}
	es.routes[r.ID] = r
	es.byNode[r.node] = append(es.byNode[r.node], r)
	es.gen++
}

// removeLocked drops r from the index. es.mu held.
func (es *edgeRoutes) removeLocked(r *memRoute) {
	delete(es.routes, r.ID)
	rs := slices.DeleteFunc(es.byNode[r.node], func(x *memRoute) bool { return x.ID == r.ID })
	if len(rs) == 0 {
		delete(es.byNode, r.node)
	} else {
		es.byNode[r.node] = rs
	}
	es.gen++
}

// dropRoutesLocked removes every route of node e from memory and tells
// edges. With persist it also deletes them from the store, in the
// background (a removed node's routes go with its row). Server.mu held.
func (es *edgeRoutes) dropRoutesLocked(e *nodeEntry, persist bool) {
	s := es.core
	es.mu.Lock()
	rs := slices.Clone(es.byNode[e.rec.Node.Key])
	ids := make([]int64, len(rs))
	for i, r := range rs {
		ids[i] = r.ID
		es.removeLocked(r)
	}
	challenges := es.challengesGoneLocked(rs)
	es.mu.Unlock()
	if len(rs) == 0 {
		return
	}
	es.deleteChallenges(challenges)
	es.routesChangedLocked(e.rec.Node.Key)
	s.audit(context.Background(), actorCoordinator, "route.release", e.rec.Node.Name, fmt.Sprintf("%d routes with their node", len(ids)))
	s.logger.Info("edge routes withdrawn with their node", "node", e.rec.Node.Key.ShortString(), "name", e.rec.Node.Name, "routes", len(ids))
	if !persist || s.closed {
		return
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		ctx, cancel := context.WithTimeout(context.WithoutCancel(s.ctx), 30*time.Second)
		defer cancel()
		if err := es.routeStore.DeleteRoutes(ctx, ids); err != nil {
			s.logger.Warn("delete routes of expired node", "node", e.rec.Node.Key.ShortString(), "err", err)
		}
	}()
}

// routesChangedLocked wakes the streams that must see a route change:
// every edge (all routes, peers) and the nodes in changed (their routes,
// peers and filter). Server.mu held.
func (es *edgeRoutes) routesChangedLocked(changed ...key.NodePublic) {
	s := es.core
	for k, ss := range s.sessions {
		e := s.nodes[k]
		if (e != nil && e.rec.Node.Edge) || slices.Contains(changed, k) {
			ss.mark(k, true)
		}
	}
}

// needsFullLocked reports whether a change of node k must make the stream
// of self recompute everything: edges and nodes that serve routes see
// peers of other networks, and an edge in self's network must stay
// hidden from it. Server.mu held.
func (es *edgeRoutes) needsFullLocked(self, k key.NodePublic) bool {
	s := es.core
	if e := s.nodes[self]; e != nil && e.rec.Node.Edge {
		return true
	}
	if es.serves(self) {
		return true
	}
	e := s.nodes[k]
	return e != nil && e.rec.Node.Edge
}

// notifyEdgesLocked tells the streams outside networkID that see node k
// across networks: edges when k serves routes, serving nodes when k is an
// edge (and both when k is gone). Server.mu held.
func (es *edgeRoutes) notifyEdgesLocked(networkID int64, k key.NodePublic) {
	s := es.core
	e := s.nodes[k]
	isEdge := e == nil || e.rec.Node.Edge
	serves := e == nil || es.serves(k)
	if !isEdge && !serves {
		return
	}
	var mark []*session
	es.mu.Lock()
	for sk, ss := range s.sessions {
		if ss.networkID == networkID || sk == k {
			continue // notifyLocked marked it
		}
		se := s.nodes[sk]
		if se == nil {
			continue
		}
		if (serves && se.rec.Node.Edge) || (isEdge && len(es.byNode[sk]) > 0) {
			mark = append(mark, ss)
		}
	}
	es.mu.Unlock()
	for _, ss := range mark {
		ss.mark(k, true)
	}
}

// serves reports whether node k serves any route.
func (es *edgeRoutes) serves(k key.NodePublic) bool {
	es.mu.Lock()
	defer es.mu.Unlock()
	return len(es.byNode[k]) > 0
}

// nodeRoutes returns the routes node k serves.
func (es *edgeRoutes) nodeRoutes(k key.NodePublic) []*memRoute {
	es.mu.Lock()
	defer es.mu.Unlock()
	return slices.Clone(es.byNode[k])
}

// The map stream (stream.go) asks the edge job through these.

// needsFullLocked is edgeRoutes.needsFullLocked. Server.mu held.
func (s *Server) needsFullLocked(self, k key.NodePublic) bool { return s.edge.needsFullLocked(self, k) }

// notifyEdgesLocked is edgeRoutes.notifyEdgesLocked. Server.mu held.
func (s *Server) notifyEdgesLocked(networkID int64, k key.NodePublic) {
	s.edge.notifyEdgesLocked(networkID, k)
}

// addEdgePeers is edgeRoutes.addEdgePeers. Server.mu held.
func (s *Server) addEdgePeers(self *wire.Node, filter []wire.FilterRule, visible []*wire.Node, now time.Time) ([]wire.FilterRule, []*wire.Node) {
	return s.edge.addEdgePeers(self, filter, visible, now)
}

// fillExtras is edgeRoutes.fillExtras.
func (s *Server) fillExtras(ss *session, st *streamExtras, resp *wire.MapResponse) {
	s.edge.fillExtras(ss, st, resp)
}

// withDNSSettings is edgeRoutes.withDNSSettings.
func (s *Server) withDNSSettings(c *wire.DNSConfig) *wire.DNSConfig { return s.edge.withDNSSettings(c) }

// edgeDeliveryWait bounds how long an expose waits for the edges' map
// streams to carry the new route.
const edgeDeliveryWait = 2 * time.Second

// edgeWait is an edge's map stream and the mark count it must deliver.
type edgeWait struct {
	ss  *session
	gen uint64
}

// edgeSessionsLocked returns the map streams of edge nodes with their
// current mark counts. Server.mu held.
func (es *edgeRoutes) edgeSessionsLocked() []edgeWait {
	s := es.core
	var out []edgeWait
	for sk, ss := range s.sessions {
		if e := s.nodes[sk]; e != nil && e.rec.Node.Edge {
			out = append(out, edgeWait{ss, ss.generation()})
		}
	}
	return out
}

// addEdgePeers adjusts what self sees for the public edge, after policy:
//   - an edge sees exactly the nodes that serve routes, and accepts
//     nothing unsolicited (an empty, set filter);
//   - other nodes never see edges, except that a node serving routes sees
//     every edge and lets the edges' addresses reach its exposed ports
//     (TCP for http, tls and tcp routes, UDP for udp routes) and nothing
//     else: filter rules whose sources cover an edge address are narrowed
//     to the addresses of self's other peers.
//
// It does not modify filter or visible. Server.mu held.
func (es *edgeRoutes) addEdgePeers(self *wire.Node, filter []wire.FilterRule, visible []*wire.Node, now time.Time) ([]wire.FilterRule, []*wire.Node) {
	s := es.core
	if self.Edge {
		es.mu.Lock()
		serving := make([]key.NodePublic, 0, len(es.byNode))
		for k, rs := range es.byNode {
			if len(rs) > 0 {
				serving = append(serving, k)
			}
		}
		es.mu.Unlock()
		var out []*wire.Node
		for _, k := range serving {
			if e := s.nodes[k]; e != nil && !e.rec.Node.Expired(now) {
				out = append(out, s.viewLocked(e))
			}
		}
		return []wire.FilterRule{}, out
	}
	visible = slices.DeleteFunc(slices.Clone(visible), func(n *wire.Node) bool { return n != nil && n.Edge })
	routes := es.nodeRoutes(self.Key)
	if len(routes) == 0 {
		return filter, visible
	}
	var edges []*wire.Node
	var edgeSrc []netip.Prefix
	for _, e := range s.nodes {
		if e.rec.Node.Edge && !e.rec.Node.Expired(now) {
			v := s.viewLocked(e)
			edges = append(edges, v)
			edgeSrc = append(edgeSrc, v.Addresses...)
		}
	}
	if len(edges) == 0 {
		return filter, visible
	}
	slices.SortFunc(edgeSrc, netip.Prefix.Compare)

	// Narrow rules that would let edges in.
	var peerAddrs []netip.Prefix
	for _, n := range visible {
		if n != nil && n.Key != self.Key {
			peerAddrs = append(peerAddrs, n.Addresses...)
		}
	}
	slices.SortFunc(peerAddrs, netip.Prefix.Compare)
	out := make([]wire.FilterRule, 0, len(filter)+2)
	for _, r := range filter {
		if !overlapsAny(r.SrcIPs, edgeSrc) {
			out = append(out, r)
			continue
		}
		var src []netip.Prefix
		for _, p := range r.SrcIPs {
			if !overlapsAny([]netip.Prefix{p}, edgeSrc) {
				src = append(src, p)
				continue
			}
			for _, a := range peerAddrs {
				if p.Overlaps(a) && !slices.Contains(src, a) {
					src = append(src, a)
				}
			}
		}
		if len(src) > 0 {
			r.SrcIPs = src
			out = append(out, r)
		}
	}

	// Let edges reach the exposed ports.
	var tcpPorts, udpPorts []uint16
	for _, r := range routes {
		if r.Proto == "udp" {
			udpPorts = append(udpPorts, r.Port)
		} else {
			tcpPorts = append(tcpPorts, r.Port)
		}
	}
	for _, g := range []struct {
		proto int
		ports []uint16
	}{{6, tcpPorts}, {17, udpPorts}} {
		if len(g.ports) == 0 {
			continue
		}
		slices.Sort(g.ports)
		g.ports = slices.Compact(g.ports)
		var dst []wire.NetPortRange
		for _, a := range self.Addresses {
			for _, p := range g.ports {
				dst = append(dst, wire.NetPortRange{IP: a, First: p, Last: p})
			}
		}
		out = append(out, wire.FilterRule{SrcIPs: slices.Clone(edgeSrc), DstPorts: dst, Protos: []int{g.proto}})
	}
	return out, append(visible, edges...)
}

func overlapsAny(ps, qs []netip.Prefix) bool {
	for _, p := range ps {
		for _, q := range qs {
			if p.Overlaps(q) {
				return true
			}
		}
	}
	return false
}

// streamExtras is what a map stream last sent of the edge routes and DNS
// settings. Only the stream's handler goroutine uses it.
type streamExtras struct {
	init   bool
	dnsGen uint64
	gen    uint64
	routes []wire.EdgeRoute
}

// fillExtras adds to resp the node's edge routes (every route for an
// edge, its own for other nodes) and DNS config if they changed since
// st was last updated, and updates st.
func (es *edgeRoutes) fillExtras(ss *session, st *streamExtras, resp *wire.MapResponse) {
	s := es.core
	s.mu.Lock()
	defer s.mu.Unlock()
	es.fillExtrasLocked(ss, st, resp)
}

// fillExtrasLocked is fillExtras with Server.mu held, as a stream's delta
// holds it: one lock taken per delta rather than two, which counts when
// a change wakes thousands of streams at once.
func (es *edgeRoutes) fillExtrasLocked(ss *session, st *streamExtras, resp *wire.MapResponse) {
	s := es.core
	es.mu.Lock()
	dnsGen, gen := es.dnsGen, es.gen
	var rs []*memRoute
	e := s.nodes[ss.key]
	isEdge := e != nil && e.rec.Node.Edge
	if !st.init || gen != st.gen {
		if isEdge {
			rs = slices.Collect(maps.Values(es.routes))
		} else {
			rs = slices.Clone(es.byNode[ss.key])
		}
	}
	es.mu.Unlock()
	var routes []wire.EdgeRoute
	if !st.init || gen != st.gen {
		routes = es.wireRoutesLocked(rs)
		if isEdge {
			for i := range routes {
				routes[i].Upstream = "" // the serving node's business
			}
			if e.version < 11 {
				// It would not know the sign-in and serve the route open.
				routes = slices.DeleteFunc(routes, func(r wire.EdgeRoute) bool { return len(r.Options.OIDC) > 0 })
			}
		}
	}
	if !st.init || dnsGen != st.dnsGen {
		resp.DNS = s.dnsConfigLocked(ss.networkID)
	}
	// routes is never nil here when it was computed, so an emptied list is
	// sent as [] (wire.MapResponse.EdgeRoutes is omitzero) and clears the
	// node's routes; nil means unchanged.
	if (!st.init || gen != st.gen) && !slices.EqualFunc(routes, st.routes, edgeRouteEqual) {
		resp.EdgeRoutes = routes
		st.routes = routes
	}
	st.init, st.dnsGen, st.gen = true, dnsGen, gen
}

func edgeRouteEqual(a, b wire.EdgeRoute) bool {
	return a.Host == b.Host && a.Proto == b.Proto && a.PublicPort == b.PublicPort && a.Node == b.Node &&
		a.Target == b.Target && a.CustomDomain == b.CustomDomain && a.Pool == b.Pool && a.Upstream == b.Upstream && a.Options.Equal(b.Options)
}

// wireRoutesLocked returns rs as wire routes, sorted. Server.mu held.
func (es *edgeRoutes) wireRoutesLocked(rs []*memRoute) []wire.EdgeRoute {
	out := make([]wire.EdgeRoute, 0, len(rs))
	for _, r := range rs {
		if wr, ok := es.wireRouteLocked(r); ok {
			out = append(out, wr)
		}
	}
	slices.SortFunc(out, func(a, b wire.EdgeRoute) int {
		return cmp.Or(strings.Compare(a.Host, b.Host), strings.Compare(a.Proto, b.Proto), a.Target.Compare(b.Target))
	})
	return out
}

// wireRouteLocked returns r as the edge sees it; false if its node is gone. Server.mu held.
func (es *edgeRoutes) wireRouteLocked(r *memRoute) (wire.EdgeRoute, bool) {
	e := es.core.nodes[r.node]
	if e == nil {
		return wire.EdgeRoute{}, false
	}
	var v4 netip.Addr
	for _, p := range e.rec.Node.Addresses {
		if p.Addr().Is4() {
			v4 = p.Addr()
			break
		}
	}
	return wire.EdgeRoute{
		Host:         r.Host,
		Proto:        r.Proto,
		PublicPort:   r.PublicPort,
		Node:         r.node,
		Target:       netip.AddrPortFrom(v4, r.Port),
		CustomDomain: r.CustomDomain,
		Pool:         r.Pool,
		Upstream:     r.Upstream,
		Options:      r.Options.Clone(),
	}, true
}

// RouteFeed is what a store shared by several coordinators adds for
// routes: reading one route another coordinator wrote (see Change).
// sqlstore's Store implements it.
type RouteFeed interface {
	// RouteByID returns the route with id, or ErrNotFound.
	RouteByID(ctx context.Context, id int64) (*Route, error)
}

// EdgeAcks is what a store shared by several coordinators adds so that
// an expose on one coordinator waits for edges streaming from the others
// too: each coordinator records which of its edges were sent a route at
// which Version, and the one that wrote it reads those records.
// sqlstore's Store implements it on PostgreSQL.
type EdgeAcks interface {
	// AckRoute records that the edges were sent the route id at version.
	AckRoute(ctx context.Context, id int64, version string, edges []wire.NodeID) error
	// RouteAcks returns the edges recorded as sent the route id at
	// version.
	RouteAcks(ctx context.Context, id int64, version string) ([]wire.NodeID, error)
}

// ackRemoteRoute records, for the coordinator that wrote r, that the
// edges streaming here were sent it, once their streams have (bounded by
// edgeDeliveryWait). Server.mu held.
func (es *edgeRoutes) ackRemoteRouteLocked(r *Route) {
	s := es.core
	acks, ok := es.routeStore.(EdgeAcks)
	if !ok || r.Version == "" {
		return
	}
	edges := es.edgeSessionsLocked()
	if len(edges) == 0 {
		return
	}
	ids := make([]wire.NodeID, len(edges))
	for i, e := range edges {
		ids[i] = s.nodes[e.ss.key].rec.Node.ID
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		ctx, cancel := context.WithTimeout(s.ctx, edgeDeliveryWait)
		defer cancel()
		var sent []wire.NodeID
		for i, e := range edges {
			if e.ss.waitDelivered(ctx, e.gen) {
				sent = append(sent, ids[i])
			}
		}
		if len(sent) == 0 {
			return
		}
		if err := acks.AckRoute(ctx, r.ID, r.Version, sent); err != nil && s.ctx.Err() == nil {
			s.logger.Warn("record edges sent a route", "route", r.ID, "err", err)
		}
	}()
}

// waitRemoteEdges waits until every edge that streams from another
// coordinator was sent the route r as written, or ctx is done.
func (es *edgeRoutes) waitRemoteEdges(ctx context.Context, r *Route) {
	s := es.core
	acks, ok := es.routeStore.(EdgeAcks)
	if !ok || r.Version == "" {
		return
	}
	want := make(map[wire.NodeID]bool)
	s.mu.Lock()
	for _, e := range s.nodes {
		if e.rec.Node.Edge && e.remote == PresenceOnline {
			want[e.rec.Node.ID] = true
		}
	}
	s.mu.Unlock()
	if len(want) == 0 {
		return
	}
	tick := time.NewTicker(edgeAckPoll)
	defer tick.Stop()
	for {
		got, err := acks.RouteAcks(ctx, r.ID, r.Version)
		if err != nil {
			return // ctx done, or the store failed: the route is out anyway
		}
		n := 0
		for _, id := range got {
			if want[id] {
				n++
			}
		}
		if n == len(want) {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// edgeAckPoll is how often an expose looks for other coordinators'
// records of their edges sent its route.
const edgeAckPoll = 20 * time.Millisecond

// reloadRoute re-reads the route id, which another coordinator wrote,
// and brings memory and the streams in line with it.
func (es *edgeRoutes) reloadRoute(ctx context.Context, id int64) error {
	rf, ok := es.routeStore.(RouteFeed)
	if !ok {
		return es.reloadRoutes(ctx)
	}
	es.changeMu.Lock()
	defer es.changeMu.Unlock()
	r, err := rf.RouteByID(ctx, id)
	if err != nil && !errors.Is(err, ErrNotFound) {
		return fmt.Errorf("coordinator: read changed route: %w", err)
	}
	s := es.core
	s.mu.Lock()
	defer s.mu.Unlock()
	var nr *memRoute
	if r != nil {
		nr = es.memRouteLocked(r, nil)
	}
	es.applyRouteLocked(id, nr)
	if nr != nil {
		es.ackRemoteRouteLocked(r)
	}
	return nil
}

// reloadRoutes re-reads every route and brings memory and the streams in
// line with them, after the listener for other coordinators' changes
// (re)connected.
func (es *edgeRoutes) reloadRoutes(ctx context.Context) error {
	if es.routeStore == nil {
		return nil
	}
	es.changeMu.Lock()
	defer es.changeMu.Unlock()
	routes, err := es.routeStore.Routes(ctx)
	if err != nil {
		return fmt.Errorf("coordinator: reload routes: %w", err)
	}
	domains, err := es.domainStore.Domains(ctx)
	if err != nil {
		return fmt.Errorf("coordinator: reload domains: %w", err)
	}
	s := es.core
	s.mu.Lock()
	defer s.mu.Unlock()
	byID := make(map[wire.NodeID]key.NodePublic, len(s.nodes))
	for k, e := range s.nodes {
		byID[e.rec.Node.ID] = k
	}
	inStore := make(map[int64]bool, len(routes))
	for _, r := range routes {
		inStore[r.ID] = true
		es.applyRouteLocked(r.ID, es.memRouteLocked(r, byID))
	}
	es.mu.Lock()
	var gone []int64
	for id := range es.routes {
		if !inStore[id] {
			gone = append(gone, id)
		}
	}
	es.mu.Unlock()
	for _, id := range gone {
		es.applyRouteLocked(id, nil)
	}
	es.setDomains(domains)
	return nil
}

// memRouteLocked returns r with its node's key, or nil if this
// coordinator does not know the node or its key expired. byID, if not
// nil, maps node IDs to keys. Server.mu held.
func (es *edgeRoutes) memRouteLocked(r *Route, byID map[wire.NodeID]key.NodePublic) *memRoute {
	s := es.core
	var e *nodeEntry
	if byID != nil {
		e = s.nodes[byID[r.NodeID]]
	} else {
		for _, x := range s.nodes {
			if x.rec.Node.ID == r.NodeID {
				e = x
				break
			}
		}
	}
	if e == nil || e.rec.Node.ID != r.NodeID || e.rec.Node.Expired(s.now()) {
		return nil
	}
	return &memRoute{Route: *r, node: e.rec.Node.Key}
}

// applyRouteLocked makes r the route id in memory (nil: there is none)
// and wakes the streams that see the change. Server.mu held.
func (es *edgeRoutes) applyRouteLocked(id int64, r *memRoute) {
	s := es.core
	var changed []key.NodePublic
	var challenges []string
	es.mu.Lock()
	old := es.routes[id]
	switch {
	case r != nil && old != nil && memRouteEqual(r, old):
	case r != nil:
		es.addLocked(r)
		changed = append(changed, r.node)
		if old != nil && old.node != r.node {
			changed = append(changed, old.node)
		}
	case old != nil:
		es.removeLocked(old)
		changed = append(changed, old.node)
		challenges = es.challengesGoneLocked([]*memRoute{old})
	}
	es.mu.Unlock()
	es.deleteChallenges(challenges)
	if len(changed) == 0 {
		return
	}
	es.routesChangedLocked(changed...)
	for _, k := range changed {
		if e := s.nodes[k]; e != nil {
			es.notifyEdgesLocked(e.rec.NetworkID, k)
		}
	}
}

// memRouteEqual reports whether a and b are the same route.
func memRouteEqual(a, b *memRoute) bool {
	x, y := a.Route, b.Route
	return a.node == b.node && x.ID == y.ID && x.NetworkID == y.NetworkID && x.NodeID == y.NodeID &&
		x.Host == y.Host && x.Proto == y.Proto && x.PublicPort == y.PublicPort && x.Port == y.Port &&
		x.CustomDomain == y.CustomDomain && x.Pool == y.Pool && x.Upstream == y.Upstream &&
		x.Options.Equal(y.Options) && x.CreatedAt.Equal(y.CreatedAt)
}
