package coordinator

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// Reserved labels under the edge domain, besides the apex and names
// starting with "_".
var reservedLabels = map[string]bool{"www": true, "edge": true, "api": true}

// isLabel reports whether l is a lower-case DNS label of letters, digits
// and inner hyphens.
func isLabel(l string) bool {
	if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
		return false
	}
	for i := 0; i < len(l); i++ {
		c := l[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// isACELabel reports whether the label l has "--" as its third and
// fourth characters: "xn--" (punycode, an internationalized name that a
// browser shows in another script, so "xn--80ak6aa92e" reads as a Latin
// word spelled in Cyrillic) and the other forms RFC 5891 (section 4.2.3.1)
// reserves. Such a name under the operator's edge domain could pass for
// another, so public route names may not be one.
func isACELabel(l string) bool { return len(l) >= 4 && l[2:4] == "--" }

// isDomainName reports whether d (lower case, no trailing dot) is a
// domain of at least two labels, each allowed by isLabel.
func isDomainName(d string) bool {
	if len(d) > 253 {
		return false
	}
	labels := strings.Split(d, ".")
	if len(labels) < 2 {
		return false
	}
	for _, l := range labels {
		if !isLabel(l) {
			return false
		}
	}
	return true
}

// publicHost returns the public host for the label name (or a full name
// under the edge domain), lower case: "app" -> "app.example.test".
func (es *edgeRoutes) publicHost(name string) (string, *apiError) {
	d := es.cfg.domain
	n := strings.ToLower(strings.TrimSuffix(strings.TrimSpace(name), "."))
	if n == d || n == "" {
		return "", errorf(http.StatusBadRequest, wire.CodeNameReserved, "the apex %s is reserved", d)
	}
	if label, ok := strings.CutSuffix(n, "."+d); ok {
		n = label
	}
	switch {
	case strings.Contains(n, "*"):
		return "", errorf(http.StatusBadRequest, wire.CodeNameInvalid, "wildcard names are not allowed: %q", name)
	case strings.HasPrefix(n, "_") || reservedLabels[n]:
		return "", errorf(http.StatusBadRequest, wire.CodeNameReserved, "name %q is reserved", n)
	case strings.Contains(n, "."):
		return "", errorf(http.StatusBadRequest, wire.CodeNameInvalid, "name %q must be one DNS label (or a custom domain)", name)
	case !isLabel(n):
		return "", errorf(http.StatusBadRequest, wire.CodeNameInvalid, "name %q is not a DNS label (a-z, 0-9 and inner '-', at most 63)", name)
	case isACELabel(n):
		return "", errorf(http.StatusBadRequest, wire.CodeNameReserved, "name %q is reserved: labels with \"--\" as their third and fourth characters (xn-- punycode and other reserved forms) could pass for another name under %s", n, d)
	}
	return n + "." + d, nil
}

// customHost checks a custom domain's form.
func (es *edgeRoutes) customHost(domain string) (string, *apiError) {
	d := strings.ToLower(strings.TrimSuffix(strings.TrimSpace(domain), "."))
	edge := es.cfg.domain
	base := es.core.baseDomain
	switch {
	case strings.Contains(d, "*"):
		return "", errorf(http.StatusBadRequest, wire.CodeNameInvalid, "wildcard domains are not allowed: %q", domain)
	case strings.HasPrefix(d, "_") || strings.Contains(d, "._"):
		return "", errorf(http.StatusBadRequest, wire.CodeNameReserved, "domain %q is reserved", d)
	case !isDomainName(d):
		return "", errorf(http.StatusBadRequest, wire.CodeNameInvalid, "custom domain %q is not a domain name", domain)
	case d == edge || strings.HasSuffix(d, "."+edge):
		return "", errorf(http.StatusBadRequest, wire.CodeNameInvalid, "%s is under the edge domain; pass its first label as the name instead", d)
	case d == base || strings.HasSuffix(d, "."+base):
		return "", errorf(http.StatusBadRequest, wire.CodeNameInvalid, "%s is under the overlay domain", d)
	}
	return d, nil
}

// checkExpose validates the fields of an ExposeRequest that need no state.
func checkExpose(req *wire.ExposeRequest) *apiError {
	if req.Remove {
		switch req.Proto {
		case "", "http", "tls", "tcp", "udp":
			return nil
		}
		return errorf(http.StatusBadRequest, wire.CodeNameInvalid, "proto %q: want http, tls, tcp or udp", req.Proto)
	}
	switch req.Proto {
	case "http", "tls", "tcp", "udp":
	default:
		return errorf(http.StatusBadRequest, wire.CodeNameInvalid, "proto %q: want http, tls, tcp or udp", req.Proto)
	}
	if req.Port == 0 {
		return errorf(http.StatusBadRequest, wire.CodeNameInvalid, "port must be 1-65535")
	}
	if aerr := checkUpstream(req); aerr != nil {
		return aerr
	}
	if err := req.Options.Validate(req.Proto); err != nil {
		return errorf(http.StatusBadRequest, wire.CodeNameInvalid, "route options: %s", strings.ReplaceAll(err.Error(), "\n", "; "))
	}
	return nil
}

// maxUpstreamLen bounds ExposeRequest.Upstream: "https://", a DNS name
// and a port.
const maxUpstreamLen = 8 + 253 + 6

// checkUpstream checks the form of req.Upstream: "host:port" or, for
// http routes, "https://host:port", with req.Port as the port; only http
// and tcp routes have one.
func checkUpstream(req *wire.ExposeRequest) *apiError {
	if req.Upstream == "" {
		return nil
	}
	switch {
	case req.Proto != "http" && req.Proto != "tcp":
		return errorf(http.StatusBadRequest, wire.CodeNameInvalid, "only http and tcp routes forward to an upstream other than the device's own port")
	case req.Proto == "tcp" && strings.HasPrefix(req.Upstream, "https://"):
		return errorf(http.StatusBadRequest, wire.CodeNameInvalid, "a tcp route copies bytes as they are: its upstream is host:port, not %s", req.Upstream)
	}
	hp := strings.TrimPrefix(req.Upstream, "https://")
	host, port, err := net.SplitHostPort(hp)
	switch {
	case len(req.Upstream) > maxUpstreamLen:
		return errorf(http.StatusBadRequest, wire.CodeNameInvalid, "upstream longer than %d bytes", maxUpstreamLen)
	case err != nil || host == "" || strings.ContainsAny(host, " /?#@\\\x00\r\n\t"):
		return errorf(http.StatusBadRequest, wire.CodeNameInvalid, "upstream %q: want host:port or https://host:port", req.Upstream)
	case port != strconv.Itoa(int(req.Port)):
		return errorf(http.StatusBadRequest, wire.CodeNameInvalid, "upstream %q: its port must be the route's port %d", req.Upstream, req.Port)
	}
	return nil
}

// routeURL is what users open for r.
func (es *edgeRoutes) routeURL(r *memRoute) string {
	c := es.cfg
	switch r.Proto {
	case "http":
		if c.httpURL != "" {
			return strings.ReplaceAll(c.httpURL, "{host}", r.Host)
		}
		return "https://" + r.Host
	case "tls":
		return "https://" + r.Host
	}
	h := c.host
	if a, err := netip.ParseAddr(h); err == nil && a.Is6() {
		h = "[" + h + "]"
	}
	return r.Proto + "://" + h + ":" + strconv.Itoa(int(r.PublicPort))
}

func (es *edgeRoutes) handleExpose(w http.ResponseWriter, r *http.Request) {
	s := es.core
	var req wire.ExposeRequest
	nk, aerr := s.readRequest(w, r, &req, func() (key.NodePublic, time.Time) { return req.NodeKey, req.Timestamp })
	if aerr != nil {
		writeError(w, aerr)
		return
	}
	resp, stored, aerr := es.expose(context.WithoutCancel(r.Context()), nk, &req)
	if aerr != nil {
		if aerr.status >= 500 && aerr.code == wire.CodeInternal {
			s.logger.Warn("expose failed", "node", nk.ShortString(), "err", aerr)
		}
		writeError(w, aerr)
		return
	}
	if resp.Route != nil {
		// Answer once the edges have been sent the route, so the URL
		// works as soon as the device prints it. Waited for here, not
		// under the edge's change lock, and bounded: a stuck edge stream
		// must hold up neither this device nor other changes.
		s.mu.Lock()
		edges := es.edgeSessionsLocked()
		s.mu.Unlock()
		ctx, cancel := context.WithTimeout(r.Context(), edgeDeliveryWait)
		for _, e := range edges {
			e.ss.waitDelivered(ctx, e.gen)
		}
		// Edges streaming from other coordinators: each records those
		// of its edges it sent the route (ackRemoteRouteLocked).
		if stored != nil {
			es.waitRemoteEdges(ctx, stored)
		}
		cancel()
	}
	s.writeSealed(w, nk, resp)
}

// exposer returns node nk's entry and a copy of its record if it may
// publish routes at now: registered, unexpired and not an edge.
func (es *edgeRoutes) exposer(nk key.NodePublic, now time.Time) (*nodeEntry, NodeRecord, *apiError) {
	s := es.core
	s.mu.Lock()
	e := s.nodes[nk]
	var self NodeRecord
	if e != nil {
		self = e.rec
	}
	s.mu.Unlock()
	switch {
	case e == nil:
		return nil, self, errorf(http.StatusForbidden, wire.CodeNodeNotRegistered, "node not registered")
	case self.Node.Expired(now):
		return nil, self, errorf(http.StatusForbidden, wire.CodeNodeExpired, "node key expired")
	case self.Node.Edge:
		return nil, self, errorf(http.StatusForbidden, wire.CodeForbidden, "edge nodes cannot expose ports")
	}
	return e, self, nil
}

// expose publishes or withdraws a route of node nk; stored is the route
// published, as stored.
func (es *edgeRoutes) expose(ctx context.Context, nk key.NodePublic, req *wire.ExposeRequest) (resp *wire.ExposeResponse, stored *Route, aerr *apiError) {
	s := es.core
	if es.cfg.domain == "" {
		return nil, nil, errorf(http.StatusNotImplemented, wire.CodeEdgeDisabled, "this coordinator has no public edge (no edge domain configured)")
	}
	if aerr := checkExpose(req); aerr != nil {
		return nil, nil, aerr
	}
	var proof *proofCheck
	if req.CustomDomain != "" && !req.Remove {
		// The proof of control is looked up in DNS before changeMu: a
		// resolver that never answers must hold up no other change. What
		// needs no DNS is checked first, and everything again under
		// changeMu.
		_, self, aerr := es.exposer(nk, s.now())
		if aerr != nil {
			return nil, nil, aerr
		}
		c, aerr := es.claim(&self, nk, req)
		if aerr != nil {
			return nil, nil, aerr
		}
		if proof, aerr = es.checkDomain(ctx, nk, self.NetworkID, c.host); aerr != nil {
			return nil, nil, aerr
		}
	}
	es.changeMu.Lock()
	defer es.changeMu.Unlock()

	now := s.now()
	e, self, aerr := es.exposer(nk, now)
	if aerr != nil {
		return nil, nil, aerr
	}

	custom := req.CustomDomain != ""
	if req.Remove {
		var host string
		var aerr *apiError
		if custom {
			host, aerr = es.customHost(req.CustomDomain)
		} else {
			name := req.Name
			if name == "" {
				name = self.Node.Name
			}
			host, aerr = es.publicHost(name)
		}
		if aerr != nil {
			return nil, nil, aerr
		}
		resp, aerr = es.unexposeLocked(ctx, e, host, req.Proto)
		return resp, nil, aerr
	}
	c, aerr := es.claim(&self, nk, req)
	if aerr != nil {
		return nil, nil, aerr
	}
	host := c.host
	if custom {
		if proof.networkID != self.NetworkID || proof.domain != host {
			return nil, nil, notVerified(host, "the node changed networks during the check")
		}
		if aerr := es.requireVerifiedLocked(ctx, proof); aerr != nil {
			return nil, nil, aerr
		}
	}

	rt := &memRoute{Route: Route{
		NetworkID:    self.NetworkID,
		NodeID:       self.Node.ID,
		Host:         host,
		Proto:        req.Proto,
		Port:         req.Port,
		CustomDomain: custom,
		Pool:         req.Pool,
		Upstream:     req.Upstream,
		Options:      req.Options.Clone(),
		CreatedAt:    now,
	}, node: nk}
	if c.same != nil {
		rt.ID, rt.CreatedAt = c.same.ID, c.same.CreatedAt
	}
	if aerr := es.checkQuota(&self, nk, rt, c.same, c.pool); aerr != nil {
		return nil, nil, aerr
	}
	if req.Proto == "tcp" || req.Proto == "udp" {
		rng := es.cfg.tcpPorts
		if req.Proto == "udp" {
			rng = es.cfg.udpPorts
		}
		switch {
		case rng.IsZero():
			return nil, nil, errorf(http.StatusNotImplemented, wire.CodeEdgeProtoNotAllowed, "this edge serves no %s routes (no %s port range configured)", req.Proto, req.Proto)
		case c.same != nil:
			rt.PublicPort = c.same.PublicPort // a re-expose keeps its port
		case c.pool != nil:
			rt.PublicPort = c.pool.PublicPort // pool members share the port
		default:
			es.mu.Lock()
			used := map[uint16]bool{}
			for _, r := range es.routes {
				if r.Proto == req.Proto && r.PublicPort != 0 {
					used[r.PublicPort] = true
				}
			}
			es.mu.Unlock()
			held := 0 // by another program on the edge's host
			for p := int(rng.First); p <= int(rng.Last); p++ {
				if used[uint16(p)] {
					continue
				}
				if es.cfg.portFree != nil && !es.cfg.portFree(req.Proto, uint16(p)) {
					held++
					continue
				}
				rt.PublicPort = uint16(p)
				break
			}
			if rt.PublicPort == 0 {
				msg := fmt.Sprintf("all %d edge %s ports (%s) are in use", int(rng.Last)-int(rng.First)+1, req.Proto, rng)
				if held > 0 {
					msg += fmt.Sprintf(" (%d of them by other programs on the edge's host)", held)
				}
				return nil, nil, errorf(http.StatusServiceUnavailable, wire.CodePortsExhausted, "%s", msg)
			}
		}
	}
	if err := es.routeStore.PutRoute(ctx, &rt.Route); err != nil {
		s.logger.Error("store route", "host", host, "err", err)
		return nil, nil, errorf(http.StatusInternalServerError, wire.CodeInternal, "store error")
	}
	put := rt.Route
	s.mu.Lock()
	if cur := s.nodes[nk]; cur != e || cur.rec.Node.Expired(now) {
		// The node went away while we wrote; its routes go too.
		s.mu.Unlock()
		es.routeStore.DeleteRoutes(ctx, []int64{rt.ID})
		return nil, nil, errorf(http.StatusForbidden, wire.CodeNodeNotRegistered, "node not registered")
	}
	es.mu.Lock()
	es.addLocked(rt)
	es.mu.Unlock()
	es.routesChangedLocked(nk)
	es.notifyEdgesLocked(self.NetworkID, nk)
	wr, _ := es.wireRouteLocked(rt)
	s.mu.Unlock()
	s.audit(ctx, actorNode(self.Node.Name), "route.claim", host, fmt.Sprintf("%s port %d public port %d", req.Proto, req.Port, rt.PublicPort))
	s.logger.Info("edge route published", "node", nk.ShortString(), "name", self.Node.Name, "host", host, "proto", req.Proto, "port", req.Port, "public_port", rt.PublicPort)
	resp = &wire.ExposeResponse{Route: &wr, URL: es.routeURL(rt)}
	if rt.Proto == "tls" && wr.CustomDomain {
		resp.ACMEChallengeCNAME = ACMEChallengeCNAME(host, es.cfg.domain)
	}
	return resp, &put, nil
}

// unexposeLocked withdraws node e's routes for host (and proto, if not
// empty). es.changeMu held.
func (es *edgeRoutes) unexposeLocked(ctx context.Context, e *nodeEntry, host, proto string) (*wire.ExposeResponse, *apiError) {
	s := es.core
	var gone []*memRoute
	for _, r := range es.nodeRoutes(e.rec.Node.Key) {
		if r.Host == host && (proto == "" || r.Proto == proto) {
			gone = append(gone, r)
		}
	}
	if len(gone) == 0 {
		what := host
		if proto != "" {
			what += " (" + proto + ")"
		}
		return nil, errorf(http.StatusNotFound, wire.CodeRouteNotFound, "this node does not serve %s", what)
	}
	if aerr := es.deleteRoutesLocked(ctx, gone); aerr != nil {
		return nil, aerr
	}
	s.audit(ctx, actorNode(e.rec.Node.Name), "route.release", host, proto)
	s.logger.Info("edge route withdrawn", "node", e.rec.Node.Key.ShortString(), "host", host, "proto", proto)
	return &wire.ExposeResponse{}, nil
}

// deleteRoutesLocked deletes rs from the store and memory. es.changeMu held.
func (es *edgeRoutes) deleteRoutesLocked(ctx context.Context, rs []*memRoute) *apiError {
	s := es.core
	ids := make([]int64, len(rs))
	for i, r := range rs {
		ids[i] = r.ID
	}
	if err := es.routeStore.DeleteRoutes(ctx, ids); err != nil {
		s.logger.Error("delete routes", "err", err)
		return errorf(http.StatusInternalServerError, wire.CodeInternal, "store error")
	}
	s.mu.Lock()
	var nodes []key.NodePublic
	es.mu.Lock()
	for _, r := range rs {
		if es.routes[r.ID] == r {
			es.removeLocked(r)
			nodes = append(nodes, r.node)
		}
	}
	challenges := es.challengesGoneLocked(rs)
	es.mu.Unlock()
	es.deleteChallenges(challenges)
	es.routesChangedLocked(nodes...)
	for _, k := range nodes {
		if e := s.nodes[k]; e != nil {
			es.notifyEdgesLocked(e.rec.NetworkID, k)
		}
	}
	s.mu.Unlock()
	return nil
}

// Routes lists every published route, sorted by host, proto and node.
func (s *Server) Routes(ctx context.Context) []wire.RouteInfo { return s.edge.list() }

// list lists every published route, sorted by host, proto and node.
func (es *edgeRoutes) list() []wire.RouteInfo {
	s := es.core
	s.mu.Lock()
	defer s.mu.Unlock()
	es.mu.Lock()
	rs := slices.Collect(maps.Values(es.routes))
	es.mu.Unlock()
	out := make([]wire.RouteInfo, 0, len(rs))
	for _, r := range rs {
		wr, ok := es.wireRouteLocked(r)
		if !ok {
			continue
		}
		ri := wire.RouteInfo{EdgeRoute: wr, Port: r.Port, URL: es.routeURL(r), CreatedAt: r.CreatedAt}
		if n := s.networks[r.NetworkID]; n != nil {
			ri.Network = n.Name
		}
		if e := s.nodes[r.node]; e != nil {
			ri.NodeName = e.rec.Node.Name
		}
		out = append(out, ri)
	}
	slices.SortFunc(out, func(a, b wire.RouteInfo) int {
		if c := strings.Compare(a.Host, b.Host); c != 0 {
			return c
		}
		if c := strings.Compare(a.Proto, b.Proto); c != 0 {
			return c
		}
		return strings.Compare(a.NodeName, b.NodeName)
	})
	return out
}

// RemoveRoutes withdraws every route of host (any node, any proto). It
// returns an error wrapping ErrNotFound if there is none.
func (s *Server) RemoveRoutes(ctx context.Context, host string) error {
	return s.edge.remove(ctx, host)
}

// remove withdraws every route of host (any node, any proto).
func (es *edgeRoutes) remove(ctx context.Context, host string) error {
	s := es.core
	host = strings.ToLower(strings.TrimSuffix(strings.TrimSpace(host), "."))
	es.changeMu.Lock()
	defer es.changeMu.Unlock()
	es.mu.Lock()
	var gone []*memRoute
	for _, r := range es.routes {
		if r.Host == host {
			gone = append(gone, r)
		}
	}
	es.mu.Unlock()
	if len(gone) == 0 {
		return fmt.Errorf("%w: no route for %s", ErrNotFound, host)
	}
	if aerr := es.deleteRoutesLocked(ctx, gone); aerr != nil {
		return aerr
	}
	s.audit(ctx, actorAdmin, "route.release", host, fmt.Sprintf("%d routes", len(gone)))
	s.logger.Info("edge routes removed by an admin", "host", host, "routes", len(gone))
	return nil
}

var errEdgeDisabled = errors.New("coordinator: no public edge configured")
