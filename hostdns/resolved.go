package hostdns

import (
	"strings"
)

// setResolvedLocked gives the device's link in systemd-resolved the
// nameservers and domains of cfg, and takes it out of the default route so
// only the match domains go to MagicDNS.
func (m *Manager) setResolvedLocked(cfg Config) error {
	if m.rec == nil {
		rec := &record{Mode: ModeResolved, Interface: m.opts.Interface}
		if err := writeRecord(m.opts.StateDir, rec); err != nil {
			return err
		}
		m.rec = rec
	}
	for _, args := range resolvedCommands(m.opts.Interface, cfg) {
		if err := m.resolvectl(args...); err != nil {
			if args[0] == "default-route" {
				// systemd before 246 has no per-link default route; its
				// links with only routing domains are not default anyway.
				m.log.Debug("resolvectl default-route not supported", "err", err)
				continue
			}
			return err
		}
	}
	m.log.Info("systemd-resolved sends the overlay's names to MagicDNS", "interface", m.opts.Interface, "domains", cfg.MatchDomains)
	return nil
}

// resolvedCommands are the resolvectl argument lists that configure iface
// for cfg: search domains as they are, match domains as routing-only
// domains (~name).
func resolvedCommands(iface string, cfg Config) [][]string {
	dns := []string{"dns", iface}
	for _, a := range cfg.Nameservers {
		dns = append(dns, a.String())
	}
	domain := []string{"domain", iface}
	for _, d := range cfg.SearchDomains {
		domain = append(domain, strings.TrimSuffix(d, "."))
	}
	for _, d := range cfg.MatchDomains {
		d = strings.TrimSuffix(d, ".")
		if !containsFold(cfg.SearchDomains, d) {
			domain = append(domain, "~"+d)
		}
	}
	return [][]string{dns, domain, {"default-route", iface, "false"}}
}
