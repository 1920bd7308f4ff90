package coordinator

import (
	"encoding/json"
	"fmt"
	"net/http"

	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// RouteQuota bounds what one node, and the nodes of one user together,
// may publish on the public edge: every edge holds every route, and the
// edge tcp and udp ports are shared by all networks, so without it one
// device could take every free port or make each edge hold megabytes of
// routes. A zero field means its default (DefaultRouteQuota); a negative
// one, no limit.
type RouteQuota struct {
	// NodeRoutes and UserRoutes are the most routes one node, and the
	// nodes of one user (wire.Node.User, in one network), may have
	// published. Tagged nodes without a user have only NodeRoutes.
	NodeRoutes, UserRoutes int
	// NodePorts and UserPorts are the most edge tcp and udp ports they
	// may hold (a pool's port counts for each node serving it).
	NodePorts, UserPorts int
	// RouteOptionBytes bounds the options of one route
	// (wire.RouteOptions, JSON-encoded); NodeOptionBytes and
	// UserOptionBytes the sum over all routes of a node and of a user.
	RouteOptionBytes, NodeOptionBytes, UserOptionBytes int
}

// DefaultRouteQuota is the quota of the zero RouteQuota's fields: far
// above what a device publishing its apps uses, far below what makes an
// edge's route list heavy (a hundred devices at their option limit add up
// to 25 MiB).
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
// if it would take the node or its user past es.cfg.quota. es.changeMu
// held, so the routes counted stay as they are until rt is added.
func (es *edgeRoutes) checkQuota(self *NodeRecord, nk key.NodePublic, rt, same, pool *memRoute) *apiError {
	q := es.cfg.quota
	size := optionBytes(rt.Options)
	if q.RouteOptionBytes > 0 && size > q.RouteOptionBytes {
		return errorf(http.StatusForbidden, wire.CodeQuotaExceeded,
			"route quota: the route's options take %d bytes, more than the %d one route may have", size, q.RouteOptionBytes)
	}
	user := self.Node.User
	s := es.core
	var node, usr usage
	s.mu.Lock()
	es.mu.Lock()
	for _, r := range es.routes {
		if same != nil && r.ID == same.ID {
			continue
		}
		if r.node == nk {
			node.add(r)
		}
		if user == "" {
			continue
		}
		if e := s.nodes[r.node]; e != nil && e.rec.NetworkID == self.NetworkID && e.rec.Node.User == user {
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
	check := func(who string, u usage, maxRoutes, maxPorts, maxBytes int) *apiError {
		switch {
		case maxRoutes > 0 && u.routes+1 > maxRoutes:
			return errorf(http.StatusForbidden, wire.CodeQuotaExceeded,
				"route quota: %s has %d routes published, the most allowed (%d); stop one first (beam expose stop NAME)", who, u.routes, maxRoutes)
		case maxBytes > 0 && u.optionBytes+size > maxBytes:
			return errorf(http.StatusForbidden, wire.CodeQuotaExceeded,
				"route quota: %s's routes have %d bytes of options, and this route's %d would pass the %d allowed", who, u.optionBytes, size, maxBytes)
		case maxPorts > 0 && port != nil && (port.port == 0 || !u.ports[*port]) && len(u.ports)+1 > maxPorts:
			return errorf(http.StatusForbidden, wire.CodeQuotaExceeded,
				"route quota: %s holds %d edge tcp/udp ports, the most allowed (%d); stop one first (beam expose stop NAME)", who, len(u.ports), maxPorts)
		}
		return nil
	}
	if aerr := check("this device", node, q.NodeRoutes, q.NodePorts, q.NodeOptionBytes); aerr != nil {
		return aerr
	}
	if user != "" {
		return check(fmt.Sprintf("user %s", user), usr, q.UserRoutes, q.UserPorts, q.UserOptionBytes)
	}
	return nil
}
