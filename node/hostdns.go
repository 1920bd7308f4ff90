package node

import (
	"net/netip"
	"slices"

	"beam.dev/beam/dnsserver"
	"beam.dev/beam/hostdns"
)

// hostDNSConfig is what the host's resolver uses in kernel TUN mode:
// MagicDNS for the network's domain, its search domains and split-DNS
// routes. No domain yet: nothing (the resolver is left alone).
func hostDNSConfig(rec *dnsserver.Records) hostdns.Config {
	if rec == nil || rec.Domain == "" {
		return hostdns.Config{}
	}
	// dnsRecords dropped a domain or search domain that is not a DNS
	// name; split-DNS routes are checked here (checkDNSNames logs them).
	cfg := hostdns.Config{
		Nameservers:   []netip.Addr{MagicDNSIPv4},
		SearchDomains: slices.Clone(rec.SearchDomains),
		MatchDomains:  []string{rec.Domain},
	}
	if !slices.Contains(cfg.SearchDomains, rec.Domain) {
		cfg.SearchDomains = append([]string{rec.Domain}, cfg.SearchDomains...)
	}
	var routes []string
	for d := range rec.Routes {
		if hostdns.CheckDomain(d) == nil {
			routes = append(routes, d)
		}
	}
	slices.Sort(routes)
	cfg.MatchDomains = append(cfg.MatchDomains, routes...)
	return cfg
}

// startHostDNSLocked creates the host resolver manager in TUN mode. n.mu
// must be held.
func (n *Node) startHostDNSLocked() {
	if n.opts.TUN == "" || n.hostDNS != nil {
		return
	}
	m, err := hostdns.New(hostdns.Options{
		StateDir:  n.opts.StateDir,
		Interface: n.opts.TUN,
		Logger:    n.logger,
	})
	if err != nil {
		n.logger.Warn("host DNS not configured", "err", err)
		return
	}
	n.hostDNS = m
}

// applyHostDNSLocked points the host's resolver at MagicDNS (TUN mode).
func (n *Node) applyHostDNSLocked() {
	if n.hostDNS == nil {
		return
	}
	if err := n.hostDNS.Set(hostDNSConfig(n.lastRecords)); err != nil {
		n.logger.Warn("configure the host's resolver", "err", err)
	}
}

// stopHostDNSLocked restores the host's resolver.
func (n *Node) stopHostDNSLocked() {
	if n.hostDNS == nil {
		return
	}
	if err := n.hostDNS.Close(); err != nil {
		n.logger.Warn("restore the host's resolver", "err", err)
	}
	n.hostDNS = nil
}
