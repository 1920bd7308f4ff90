// Package edgenode runs the public edge as a member of the mesh: it turns
// the edge routes a coordinator streams to an edge node into the edge's
// route table, pooling routes that share a name, and parses each route's
// typed policy options (wire.RouteOptions). It joins package edge (which knows nothing of the
// control protocol) to package wire (which knows nothing of HTTP).
package edgenode

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	"golang.org/x/time/rate"

	"beam.dev/beam/edge"
	"beam.dev/beam/wire"
)

// Routes converts the coordinator's routes into edge routes. Routes with
// the same host and protocol (or the same public port) become one pooled
// route with several targets; their options must agree, and the first
// route's options win otherwise. Routes whose options do not validate are
// skipped (not served without them) and reported in the returned error,
// which never stops the others.
func Routes(in []wire.EdgeRoute) ([]edge.Route, error) {
	type poolKey struct {
		host  string
		proto string
		port  uint16
	}
	var errs []error
	pools := map[poolKey]*edge.Route{}
	var order []poolKey
	for _, r := range in {
		k := poolKey{strings.ToLower(strings.TrimSuffix(r.Host, ".")), r.Proto, r.PublicPort}
		if r.Proto == "tcp" || r.Proto == "udp" {
			k.host = ""
		}
		if p, ok := pools[k]; ok {
			if !slices.Contains(p.Targets, r.Target) {
				p.Targets = append(p.Targets, r.Target)
			}
			continue
		}
		pol, err := Policy(r.Options, r.Proto)
		if err != nil {
			errs = append(errs, fmt.Errorf("route %s (%s): %w", r.Host, r.Proto, err))
			continue
		}
		er := &edge.Route{
			Host:         strings.ToLower(strings.TrimSuffix(r.Host, ".")),
			CustomDomain: r.CustomDomain,
			Proto:        edge.Proto(r.Proto),
			PublicPort:   r.PublicPort,
			Targets:      []netip.AddrPort{r.Target},
			Policy:       pol,
		}
		if er.Proto == edge.ProtoTCP || er.Proto == edge.ProtoUDP {
			er.Host = ""
		}
		pools[k] = er
		order = append(order, k)
	}
	out := make([]edge.Route, 0, len(order))
	for _, k := range order {
		r := *pools[k]
		slices.SortFunc(r.Targets, func(a, b netip.AddrPort) int { return a.Compare(b) })
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b edge.Route) int {
		return cmp.Or(cmp.Compare(a.Host, b.Host), cmp.Compare(a.Proto, b.Proto), cmp.Compare(a.PublicPort, b.PublicPort))
	})
	return out, errors.Join(errs...)
}

// Policy turns a route's options into the edge's policy for a route of
// proto. Options that do not validate (a coordinator of another version)
// are refused whole: a route must never run without a limit its owner
// asked for.
func Policy(o wire.RouteOptions, proto string) (edge.Policy, error) {
	if err := o.Validate(proto); err != nil {
		return edge.Policy{}, err
	}
	p := edge.Policy{
		AllowCIDRs:          slices.Clone(o.AllowIP),
		DenyCIDRs:           slices.Clone(o.DenyIP),
		RequestHeaderRemove: slices.Clone(o.HeaderRemove),
		CORSOrigins:         slices.Clone(o.CORS),
		ProxyProtocol:       o.ProxyProtocol,
		SignIn:              slices.Clone(o.OIDC),
	}
	for _, u := range o.BasicAuth {
		p.BasicAuth = append(p.BasicAuth, edge.BasicAuthUser{User: u.User, Secret: u.Secret})
	}
	if !o.RateLimit.IsZero() {
		// Bursts of one period's count, refilled at the average rate.
		p.RateLimit, p.RateBurst = rate.Limit(o.RateLimit.PerSecond()), o.RateLimit.Count
	}
	if len(o.HeaderAdd) > 0 {
		p.RequestHeaderAdd = maps.Clone(o.HeaderAdd)
	}
	return p, nil
}
