// Package edgenode runs the public edge as a member of the mesh: it turns
// the edge routes a coordinator streams to an edge node into the edge's
// route table, pooling routes that share a name, and parses each route's
// policy options. It joins package edge (which knows nothing of the
// control protocol) to package wire (which knows nothing of HTTP).
package edgenode

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/time/rate"

	"beam.dev/beam/edge"
	"beam.dev/beam/wire"
)

// Routes converts the coordinator's routes into edge routes. Routes with
// the same host and protocol (or the same public port) become one pooled
// route with several targets; their options must agree, and the first
// route's options win otherwise. Routes whose options do not parse are
// skipped and reported in the returned error, which never stops the others.
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
		pol, err := ParsePolicy(r.Options)
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

// ParsePolicy parses a route's options (see wire.EdgeRoute.Options).
func ParsePolicy(opts map[string]string) (edge.Policy, error) {
	var p edge.Policy
	var errs []error
	for k, v := range opts {
		switch k {
		case "basic_auth":
			for _, pair := range splitList(v) {
				user, pass, ok := strings.Cut(pair, ":")
				if !ok || user == "" || pass == "" {
					errs = append(errs, fmt.Errorf("basic_auth: want user:pass, got %q", pair))
					continue
				}
				if !strings.HasPrefix(pass, "$2") && !strings.HasPrefix(pass, "sha256:") && !strings.HasPrefix(pass, "plain:") {
					pass = "plain:" + pass
				}
				p.BasicAuth = append(p.BasicAuth, edge.BasicAuthUser{User: user, Secret: pass})
			}
		case "allow_ip", "deny_ip":
			for _, s := range splitList(v) {
				pfx, err := parsePrefix(s)
				if err != nil {
					errs = append(errs, fmt.Errorf("%s: %w", k, err))
					continue
				}
				if k == "allow_ip" {
					p.AllowCIDRs = append(p.AllowCIDRs, pfx)
				} else {
					p.DenyCIDRs = append(p.DenyCIDRs, pfx)
				}
			}
		case "rate_limit":
			lim, burst, err := ParseRate(v)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			p.RateLimit, p.RateBurst = lim, burst
		case "header_add", "response_header_add":
			m := map[string]string{}
			for _, line := range strings.Split(v, "\n") {
				if strings.TrimSpace(line) == "" {
					continue
				}
				hk, hv, ok := strings.Cut(line, ":")
				if !ok || strings.TrimSpace(hk) == "" {
					errs = append(errs, fmt.Errorf("%s: want 'Name: value', got %q", k, line))
					continue
				}
				m[strings.TrimSpace(hk)] = strings.TrimSpace(hv)
			}
			if k == "header_add" {
				p.RequestHeaderAdd = m
			} else {
				p.ResponseHeaderAdd = m
			}
		case "header_remove":
			p.RequestHeaderRemove = splitList(v)
		case "response_header_remove":
			p.ResponseHeaderRemove = splitList(v)
		case "cors":
			p.CORSOrigins = splitList(v)
		case "proxy_protocol":
			switch v {
			case "", "none":
			case "v1", "1":
				p.ProxyProtocol = 1
			case "v2", "2":
				p.ProxyProtocol = 2
			default:
				errs = append(errs, fmt.Errorf("proxy_protocol: want v1 or v2, got %q", v))
			}
		default:
			errs = append(errs, fmt.Errorf("unknown option %q", k))
		}
	}
	return p, errors.Join(errs...)
}

// ParseRate parses "20/s", "600/m" or "5000/h" into a rate and a burst
// (the per-second rate rounded up, at least 1).
func ParseRate(s string) (rate.Limit, int, error) {
	n, unit, ok := strings.Cut(strings.TrimSpace(s), "/")
	if !ok {
		return 0, 0, fmt.Errorf("rate_limit: want N/s, N/m or N/h, got %q", s)
	}
	count, err := strconv.ParseFloat(n, 64)
	if err != nil || count <= 0 {
		return 0, 0, fmt.Errorf("rate_limit: bad count in %q", s)
	}
	var per float64
	switch unit {
	case "s", "sec", "second":
		per = 1
	case "m", "min", "minute":
		per = 60
	case "h", "hour":
		per = 3600
	default:
		return 0, 0, fmt.Errorf("rate_limit: bad unit in %q", s)
	}
	r := count / per
	return rate.Limit(r), max(1, int(count)), nil
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func parsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, err
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}
