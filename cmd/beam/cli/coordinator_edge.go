package cli

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"beam.dev/beam/configs"
	"beam.dev/beam/coordinator"
)

// CoordinatorEdgeOptions are the public edge and DNS flags of beam coordinator.
type CoordinatorEdgeOptions = configs.CoordinatorEdge

// bindCoordinatorEdgeFlags adds the edge and DNS flags to cmd.
func bindCoordinatorEdgeFlags(cmd *cobra.Command, o *CoordinatorEdgeOptions, def CoordinatorEdgeOptions) {
	fl := cmd.Flags()
	fl.StringVar(&o.Domain, "edge-domain", "", "public edge domain: exposed ports get NAME.DOMAIN (empty: no beam expose)")
	fl.StringVar(&o.Host, "edge-host", "", "edge host name in tcp:// and udp:// URLs (default: --edge-domain)")
	fl.StringVar(&o.TCPPorts, "edge-tcp-ports", def.TCPPorts, "edge ports for tcp routes (FIRST-LAST; empty: none)")
	fl.StringVar(&o.UDPPorts, "edge-udp-ports", def.UDPPorts, "edge ports for udp routes (FIRST-LAST; empty: none)")
	fl.StringVar(&o.HTTPURL, "edge-http-url", "", "URL template of http routes, e.g. http://{host}:18081 (default https://{host})")
	fl.StringVar(&o.DNSConfigFile, "dns-config", "", "JSON file of DNS settings for every node (nameservers, routes, extra_records)")
}

// applyCoordinatorEdge sets the edge and DNS fields of c.
func applyCoordinatorEdge(o *CoordinatorEdgeOptions, c *coordinator.Options) error {
	c.EdgeDomain, c.EdgeHost, c.EdgeHTTPURL = o.Domain, o.Host, o.HTTPURL
	for _, p := range []struct {
		flag, val string
		dst       *coordinator.PortRange
	}{{"--edge-tcp-ports", o.TCPPorts, &c.EdgeTCPPorts}, {"--edge-udp-ports", o.UDPPorts, &c.EdgeUDPPorts}} {
		if p.val == "" {
			continue
		}
		r, err := coordinator.ParsePortRange(p.val)
		if err != nil {
			return fmt.Errorf("bad %s %q: want FIRST-LAST, e.g. 20000-20999", p.flag, p.val)
		}
		*p.dst = r
	}
	if o.DNSConfigFile != "" {
		b, err := os.ReadFile(o.DNSConfigFile)
		if err != nil {
			return fmt.Errorf("read --dns-config: %w", err)
		}
		d, err := coordinator.ParseDNSSettings(b)
		if err != nil {
			return fmt.Errorf("--dns-config %s: %w", o.DNSConfigFile, err)
		}
		c.DNS = d
	}
	return nil
}
