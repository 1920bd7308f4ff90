package coordinator

import (
	"encoding/json"
	"fmt"
	"net/http"

	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// RouteQuota bounds what one node, the nodes of one user together, and
// those of one network, may publish on the public edge: every edge holds
// every route, and the edge tcp and udp ports are shared by all networks,
// so without it one device could take every free port or make each edge
// hold megabytes of routes. A zero field means its default
// (DefaultRouteQuota); a negative one, no limit.
type RouteQuota struct {
	// NodeRoutes and UserRoutes are the most routes one node, and the
	// nodes of one user (wire.Node.User, in one network), may have
	// published. Nodes without a user (tagged, or registered with a key
	// of no user) are charged together per auth key
	// (NodeRecord.AuthKeyID) with the user limits: a reusable key
	// registers any number of nodes.
	NodeRoutes, UserRoutes int
	// NodePorts and UserPorts are the most edge tcp and udp ports they
	// may hold (a pool's port counts for each node serving it).
	NodePorts, UserPorts int
	// NetworkPorts is the most edge ports of each protocol (tcp, udp)
	// the nodes of one network may hold together; zero means half of
	// that protocol's range (rounded up), so that no network takes a
	// shared edge's whole range.
	NetworkPorts int
	// RouteOptionBytes bounds the options of one route
	// (wire.RouteOptions, JSON-encoded); NodeOptionBytes and
	// UserOptionBytes the sum over all routes of a node and of a user.
	RouteOptionBytes, NodeOptionBytes, UserOptionBytes int
}

// DefaultRouteQuota is the quota of the zero RouteQuota's fields: far
// above what a device publishing its apps uses, far below what makes an
// edge's route list heavy (a hundred devices at their option limit add up
// to 25 MiB). Its NetworkPorts, zero, is half of each port range.
var DefaultRouteQuota = RouteQuota{
	NodeRoutes: 32, UserRoutes: 128,
	NodePorts: 4, UserPorts: 16,
	RouteOptionBytes: 64 << 10, NodeOptionBytes: 256 << 10, UserOptionBytes: 1 << 20,
}

// withDefaults returns q with zero fields set to DefaultRouteQuota's.
func (q RouteQuota) withDefaults() RouteQuota {
	d := DefaultRouteQuota
	for _, f := range []struct {
		v   *int
		def int
	}{
		{&q.NodeRoutes, d.NodeRoutes}, {&q.UserRoutes, d.UserRoutes},
		{&q.NodePorts, d.NodePorts}, {&q.UserPorts, d.UserPorts},
		{&q.RouteOptionBytes, d.RouteOptionBytes}, {&q.NodeOptionBytes, d.NodeOptionBytes}, {&q.UserOptionBytes, d.UserOptionBytes},
	} {
		if *f.v == 0 {
			*f.v = f.def
		}
	}
	return q
}

// optionBytes is the size of o as routes carry it.
func optionBytes(o wire.RouteOptions) int {
	b, err := json.Marshal(o)
	if err != nil {
		return 0 // Validate passed: not reached
	}
	return len(b)
}

// usage is what a node or a user has published.
type usage struct {
	routes, optionBytes int
	ports               map[portKey]bool
}

type portKey struct {
	proto string
	port  uint16
}

func (u *usage) add(r *memRoute) {
	u.routes++
	u.optionBytes += optionBytes(r.Options)
	if r.PublicPort != 0 {
		if u.ports == nil {
			u.ports = map[portKey]bool{}
		}
		u.ports[portKey{r.Proto, r.PublicPort}] = true
	}
}

// checkQuota refuses the new route rt of node self (key nk), which
// replaces same (nil for none) and shares pool's port (nil for none),
// if it would take the node, its user (or, without one, its auth key) or
// its network past es.cfg.quota. es.changeMu held, so the routes counted
// stay as they are until rt is added.
func (es *edgeRoutes) checkQuota(self *NodeRecord, nk key.NodePublic, rt, same, pool *memRoute) *apiError {
	q := es.cfg.quota
	size := optionBytes(rt.Options)
	if q.RouteOptionBytes > 0 && size > q.RouteOptionBytes {
		return errorf(http.StatusForbidden, wire.CodeQuotaExceeded,
			"route quota: the route's options take %d bytes, more than the %d one route may have", size, q.RouteOptionBytes)
	}
	// The nodes charged together with self: those of its user or, for a
	// node of none, those of its auth key.
	user, authKey := self.Node.User, self.AuthKeyID
	var owner string
	switch {
	case user != "":
		owner = fmt.Sprintf("user %s", user)
	case authKey != 0:
		owner = "this device's auth key"
	}
	s := es.core
	var node, usr, network usage
	var networkName string
	s.mu.Lock()
	if n := s.networks[self.NetworkID]; n != nil {
		networkName = n.Name
	}
	es.mu.Lock()
	for _, r := range es.routes {
		if same != nil && r.ID == same.ID {
			continue
		}
		if r.node == nk {
			node.add(r)
		}
		e := s.nodes[r.node]
		if e == nil || e.rec.NetworkID != self.NetworkID {
			continue
		}
		network.add(r)
		switch {
		case owner == "":
		case user != "" && e.rec.Node.User == user,
			user == "" && e.rec.Node.User == "" && e.rec.AuthKeyID == authKey:
			usr.add(r)
		}
	}
	es.mu.Unlock()
	s.mu.Unlock()
	// The new route's port: a re-expose keeps its own, a pool member
	// shares the pool's, else it takes a new one.
	var port *portKey
	switch {
	case rt.Proto != "tcp" && rt.Proto != "udp":
	case same != nil:
		port = &portKey{rt.Proto, same.PublicPort}
	case pool != nil:
		port = &portKey{rt.Proto, pool.PublicPort}
	default:
		port = &portKey{rt.Proto, 0}
	}
	newPort := func(u usage) bool { return port != nil && (port.port == 0 || !u.ports[*port]) }
	check := func(who string, u usage, maxRoutes, maxPorts, maxBytes int) *apiError {
		switch {
		case maxRoutes > 0 && u.routes+1 > maxRoutes:
			return errorf(http.StatusForbidden, wire.CodeQuotaExceeded,
				"route quota: %s has %d routes published, the most allowed (%d); stop one first (beam expose stop NAME)", who, u.routes, maxRoutes)
		case maxBytes > 0 && u.optionBytes+size > maxBytes:
			return errorf(http.StatusForbidden, wire.CodeQuotaExceeded,
				"route quota: %s's routes have %d bytes of options, and this route's %d would pass the %d allowed", who, u.optionBytes, size, maxBytes)
		case maxPorts > 0 && newPort(u) && len(u.ports)+1 > maxPorts:
			return errorf(http.StatusForbidden, wire.CodeQuotaExceeded,
				"route quota: %s holds %d edge tcp/udp ports, the most allowed (%d); stop one first (beam expose stop NAME)", who, len(u.ports), maxPorts)
		}
		return nil
	}
	if aerr := check("this device", node, q.NodeRoutes, q.NodePorts, q.NodeOptionBytes); aerr != nil {
		return aerr
	}
	if owner != "" {
		if aerr := check(owner, usr, q.UserRoutes, q.UserPorts, q.UserOptionBytes); aerr != nil {
			return aerr
		}
	}
	if limit := es.networkPorts(rt.Proto); limit > 0 && newPort(network) {
		held := 0
		for p := range network.ports {
			if p.proto == rt.Proto {
				held++
			}
		}
		if held+1 > limit {
			return errorf(http.StatusForbidden, wire.CodeQuotaExceeded,
				"route quota: network %s holds %d edge %s ports, the most one network may (%d), so that others on this edge get some; stop one first (beam expose stop NAME)", networkName, held, rt.Proto, limit)
		}
	}
	return nil
}

// networkPorts is the most edge ports of proto ("tcp" or "udp") one
// network may hold, 0 for no limit.
func (es *edgeRoutes) networkPorts(proto string) int {
	q := es.cfg.quota
	rng := es.cfg.tcpPorts
	if proto == "udp" {
		rng = es.cfg.udpPorts
	}
	switch {
	case q.NetworkPorts < 0 || rng.IsZero():
		return 0
	case q.NetworkPorts > 0:
		return q.NetworkPorts
	}
	return (int(rng.Last) - int(rng.First) + 2) / 2
}
