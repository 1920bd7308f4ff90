package node

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"beam.dev/beam/expose"
	"beam.dev/beam/localapi/apitype"
	"beam.dev/beam/netstack"
	"beam.dev/beam/wire"
)

// exposer is the part of the control client that publishes routes.
// *coordclient.Client implements it.
type exposer interface {
	Expose(ctx context.Context, req wire.ExposeRequest) (*wire.ExposeResponse, error)
}

// ErrNoSuchRoute is returned by Unexpose for a route this node does not serve.
var ErrNoSuchRoute = errors.New("no such published route")

// Expose publishes a local port of this device on the public edge.
func (n *Node) Expose(ctx context.Context, req apitype.ExposeRequest) (*apitype.ExposeResponse, error) {
	if req.Port == 0 {
		return nil, errors.New("expose: port must be between 1 and 65535")
	}
	if req.Proto == "" {
		req.Proto = "http"
	}
	switch req.Proto {
	case "http", "tls", "tcp", "udp":
	default:
		return nil, fmt.Errorf("expose: unknown protocol %q (want http, tls, tcp or udp)", req.Proto)
	}
	if req.Upstream != "" && req.Proto != "http" && (req.Proto != "tcp" || strings.HasPrefix(req.Upstream, "https://")) {
		return nil, fmt.Errorf("expose: %s routes forward to a port of this device or, for tcp, another host:port; not %s", req.Proto, req.Upstream)
	}
	n.mu.Lock()
	s, nm := n.sess, n.netmap
	n.mu.Unlock()
	if s == nil || nm == nil || nm.Self == nil {
		return nil, ErrNotRunning
	}
	ex, ok := any(s.client).(exposer)
	if !ok {
		return nil, errors.New("expose: this build's control client cannot publish routes")
	}
	resp, err := ex.Expose(ctx, wire.ExposeRequest{
		Name:         req.Name,
		CustomDomain: req.Domain,
		Proto:        req.Proto,
		Port:         req.Port,
		Options:      req.Options,
		Pool:         req.Pool,
		Upstream:     req.Upstream,
	})
	if err != nil {
		return nil, fmt.Errorf("expose: %w", err)
	}
	if resp.Error != "" {
		return nil, fmt.Errorf("expose: %s", resp.Error)
	}
	n.mu.Lock()
	if req.Inspect {
		delete(n.uninspected, req.Port)
	} else {
		if n.uninspected == nil {
			n.uninspected = map[uint16]bool{}
		}
		n.uninspected[req.Port] = true
	}
	n.mu.Unlock()
	up := expose.AppAddr(req.Port, req.Upstream)
	out := &apitype.ExposeResponse{URL: resp.URL, Proto: req.Proto, Port: req.Port, Upstream: up.String(), ACMEChallengeCNAME: resp.ACMEChallengeCNAME}
	if resp.Route != nil {
		out.Host, out.PublicPort = resp.Route.Host, resp.Route.PublicPort
		// Apply the route locally at once rather than waiting for the stream.
		n.mu.Lock()
		if n.netmap != nil && !slices.ContainsFunc(n.netmap.EdgeRoutes, func(r wire.EdgeRoute) bool { return sameRoute(r, *resp.Route) }) {
			nm := *n.netmap // values are never modified: share them
			nm.EdgeRoutes = append(slices.Clip(nm.EdgeRoutes), *resp.Route)
			n.netmap = &nm
			n.applyLocked()
		}
		n.mu.Unlock()
	}
	if resp.Route != nil {
		// The coordinator fans the route out to edges and to this node in
		// the same round: once this node's stream carries it, the edges
		// have it too (give up waiting after a few seconds).
		wctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		route := *resp.Route
		n.waitStreamNetMap(wctx, func(nm *wire.NetMap) bool {
			return slices.ContainsFunc(nm.EdgeRoutes, func(r wire.EdgeRoute) bool { return sameRoute(r, route) })
		})
		cancel()
	}
	if req.Proto != "udp" && !up.Listening(ctx) {
		out.Warning = fmt.Sprintf("nothing is listening on %s yet; the route stays up and works once your app starts", up)
		if req.Upstream == "" {
			out.Warning = fmt.Sprintf("nothing is listening on port %d of this device yet; the route stays up and works once your app starts", req.Port)
		}
	}
	if req.Inspect {
		if u, err := n.ensureInspector(); err != nil {
			out.Warning = strings.TrimPrefix(out.Warning+"; no request inspector: "+err.Error(), "; ")
		} else {
			out.InspectURL = u
		}
	}
	return out, nil
}

func sameRoute(a, b wire.EdgeRoute) bool {
	return a.Host == b.Host && a.Proto == b.Proto && a.PublicPort == b.PublicPort && a.Node == b.Node && a.Target == b.Target
}

// Unexpose withdraws one of this device's routes. name is the route's
// host, its first label, or "tcp:PORT"/"udp:PORT" (public port); a
// non-empty proto limits it to the route of that protocol.
func (n *Node) Unexpose(ctx context.Context, name, proto string) error {
	n.mu.Lock()
	s := n.sess
	routes := n.ownRoutesLocked()
	n.mu.Unlock()
	if s == nil {
		return ErrNotRunning
	}
	var match []wire.EdgeRoute
	for _, r := range routes {
		label, _, _ := strings.Cut(r.Host, ".")
		pp := r.Proto + ":" + strconv.Itoa(int(r.PublicPort))
		if proto != "" && r.Proto != proto {
			continue
		}
		if strings.EqualFold(name, r.Host) || strings.EqualFold(name, label) || name == pp {
			match = append(match, r)
		}
	}
	if len(match) == 0 {
		return fmt.Errorf("%w: %s", ErrNoSuchRoute, name)
	}
	ex, ok := any(s.client).(exposer)
	if !ok {
		return errors.New("expose: this build's control client cannot publish routes")
	}
	for _, r := range match {
		req := wire.ExposeRequest{Proto: r.Proto, Port: r.Target.Port(), Remove: true}
		if r.CustomDomain {
			req.CustomDomain = r.Host
		} else {
			req.Name, _, _ = strings.Cut(r.Host, ".")
		}
		resp, err := ex.Expose(ctx, req)
		if err != nil {
			return fmt.Errorf("unexpose %s: %w", r.Host, err)
		}
		if resp.Error != "" {
			return fmt.Errorf("unexpose %s: %s", r.Host, resp.Error)
		}
	}
	n.mu.Lock()
	if n.netmap != nil {
		nm := *n.netmap // values are never modified: share them
		nm.EdgeRoutes = slices.DeleteFunc(slices.Clone(nm.EdgeRoutes), func(r wire.EdgeRoute) bool {
			return slices.ContainsFunc(match, func(m wire.EdgeRoute) bool { return sameRoute(r, m) })
		})
		n.netmap = &nm
		n.applyLocked()
	}
	n.mu.Unlock()
	return nil
}

// routeGonePoll is how often WaitRouteGone looks again when no netmap
// arrives: leaving the network (down, logout, removal) sends none.
const routeGonePoll = time.Second

// WaitRouteGone waits until route r of this device (matched by host,
// protocol and public port) is no longer published, and says why. It
// returns "" when ctx ends first. A route not yet in the coordinator's
// map counts as gone only once it has been seen there.
func (n *Node) WaitRouteGone(ctx context.Context, r apitype.Route) string {
	t := time.NewTicker(routeGonePoll)
	defer t.Stop()
	seen := false
	for {
		n.mu.Lock()
		running := n.sess != nil && n.netmap != nil
		var in bool
		if nm := n.streamNM; nm != nil && nm.Self != nil {
			in = slices.ContainsFunc(nm.EdgeRoutes, func(w wire.EdgeRoute) bool {
				return w.Node == nm.Self.Key && strings.EqualFold(w.Host, r.Host) && w.Proto == r.Proto && w.PublicPort == r.PublicPort
			})
		}
		if n.nmChanged == nil {
			n.nmChanged = make(chan struct{})
		}
		ch := n.nmChanged
		n.mu.Unlock()
		switch {
		case !running:
			return "this device left the network (beam down, logout, or its removal by an admin)"
		case in:
			seen = true
		case seen:
			return "the route was withdrawn (beam expose stop, an admin, or the removal of this device)"
		}
		select {
		case <-ctx.Done():
			return ""
		case <-ch:
		case <-t.C:
		}
	}
}

// ExposedRoutes lists the routes this device serves.
func (n *Node) ExposedRoutes() []apitype.Route {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := []apitype.Route{}
	for _, r := range n.ownRoutesLocked() {
		out = append(out, apitype.Route{Host: r.Host, Proto: r.Proto, PublicPort: r.PublicPort, Port: r.Target.Port(), Upstream: r.Upstream, Options: r.Options.Clone()})
	}
	return out
}

// ownRoutesLocked returns the netmap's routes served by this node.
func (n *Node) ownRoutesLocked() []wire.EdgeRoute {
	if n.netmap == nil || n.netmap.Self == nil {
		return nil
	}
	var out []wire.EdgeRoute
	for _, r := range n.netmap.EdgeRoutes {
		if r.Node == n.netmap.Self.Key {
			out = append(out, r)
		}
	}
	return out
}

// exposedPortsLocked returns the local ports of this node's routes, which
// stay open to peers even with shields up.
func (n *Node) exposedPortsLocked() []uint16 {
	var ports []uint16
	for _, r := range n.ownRoutesLocked() {
		if p := r.Target.Port(); !slices.Contains(ports, p) {
			ports = append(ports, p)
		}
	}
	slices.Sort(ports)
	return ports
}

// WatchRequests returns a channel of requests served through this
// device's HTTP routes until ctx ends. Slow readers miss lines rather than
// slowing requests down.
func (n *Node) WatchRequests(ctx context.Context) <-chan apitype.RequestLog {
	return n.exp.Watch(ctx)
}

// syncExposeLocked hands this node's own routes to the device side of
// expose, which listens for them inside the engine. n.mu held.
func (n *Node) syncExposeLocked(cfg netstack.Config) {
	ec := expose.Config{Addrs: cfg.Addresses, Edges: n.edgeAddrsLocked()}
	if !cfg.ShieldsUp && !n.opts.NoHostForward {
		own := cfg.OwnListeners
		ec.PeerReachesHost = func(port uint16) bool {
			return !slices.ContainsFunc(own, func(a netip.AddrPort) bool { return a.Port() == port })
		}
	}
	if n.engine != nil {
		ec.Net = n.engine
	}
	for _, r := range n.ownRoutesLocked() {
		ec.Routes = append(ec.Routes, expose.Route{Proto: r.Proto, Host: r.Host, Port: r.Target.Port(), Upstream: r.Upstream, ProxyProtocol: r.Options.ProxyProtocol, NoInspect: n.uninspected[r.Target.Port()], App: n.routeApps[r.Target.Port()]})
	}
	n.exp.Sync(ec)
}

// edgeAddrsLocked returns the overlay addresses of the edge nodes of the
// current netmap.
func (n *Node) edgeAddrsLocked() []netip.Addr {
	if n.netmap == nil {
		return nil
	}
	if n.netmap == n.edgeNM {
		return n.edgeAddrs
	}
	// A netmap made from the last by deltas that change no edge node
	// has the same edges: look at the peers that changed alone.
	again := n.edgeNM == nil
	if !again {
		n.netmap.PeerChanges(n.edgeNM, func(was, now *wire.Node) {
			again = again || (was != nil && was.Edge) || (now != nil && now.Edge)
		})
	}
	if again {
		n.edgeAddrs = edgeAddrs(n.netmap)
	}
	n.edgeNM = n.netmap
	return n.edgeAddrs
}

// edgeAddrs returns the overlay addresses of nm's edge nodes.
func edgeAddrs(nm *wire.NetMap) []netip.Addr {
	var out []netip.Addr
	for _, p := range nm.Peers {
		if p.Edge {
			for _, pfx := range p.Addresses {
				out = append(out, pfx.Addr())
			}
		}
	}
	return out
}

// txtSetter is the part of the control client an edge uses to publish
// ACME DNS-01 records in the coordinator's public zone.
type txtSetter interface {
	SetTXT(ctx context.Context, name string, values []string) error
}

// SetTXT asks the coordinator to publish (or, with no values, delete) a
// TXT record in its public zone. Edge nodes may set the _acme-challenge
// names of their domains; other nodes only those of their own tls routes.
func (n *Node) SetTXT(ctx context.Context, name string, values []string) error {
	n.mu.Lock()
	s := n.sess
	n.mu.Unlock()
	if s == nil {
		return ErrNotRunning
	}
	ts, ok := any(s.client).(txtSetter)
	if !ok {
		return errors.New("this build's control client cannot set TXT records")
	}
	return ts.SetTXT(ctx, name, values)
}

// errNoControl is returned while the node has no control session.
var errNoControl = errors.New("node: not connected to the coordinator")

// setTXTNow is SetTXT through the current control client, without n.mu:
// the device side of tls routes calls it while n.mu may be held.
func (n *Node) setTXTNow(ctx context.Context, name string, values []string) error {
	c := n.curClient.Load()
	if c == nil {
		return errNoControl
	}
	return c.SetTXT(ctx, name, values)
}
