package cli

import (
	"context"
	"net"
	"strconv"

	"beam.dev/beam/coordinator"
	"beam.dev/beam/dnsserver"
)

// serverEdgeOptions fills in the coordinator's edge settings for beam
// server: the edge domain, its port ranges, the public zone for ACME and
// ownership records, and (in dev mode) http://NAME.localhost:PORT URLs.
func serverEdgeOptions(c *coordinator.Options, o *ServerOptions, zone *dnsserver.Zone) error {
	c.EdgeDomain = o.Domain
	var err error
	if o.TCPPorts != "" {
		if c.EdgeTCPPorts, err = coordinator.ParsePortRange(o.TCPPorts); err != nil {
			return err
		}
	}
	if o.UDPPorts != "" {
		if c.EdgeUDPPorts, err = coordinator.ParsePortRange(o.UDPPorts); err != nil {
			return err
		}
	}
	if zone != nil {
		c.Zone = zone
	}
	// The edge runs in this process: hand out only public ports it can
	// listen on (it listens on every address, as probed here).
	c.EdgePortFree = portFree
	if o.Dev {
		c.EdgeHost = "127.0.0.1"
		if _, port, err := net.SplitHostPort(o.HTTPAddr); err == nil {
			c.EdgeHTTPURL = "http://{host}:" + port
		}
	} else if o.HTTPSAddr == "" || o.ACMECA == "" {
		// No TLS at the edge: URLs are plain HTTP.
		if _, port, err := net.SplitHostPort(o.HTTPAddr); err == nil && port != "80" {
			c.EdgeHTTPURL = "http://{host}:" + port
		} else {
			c.EdgeHTTPURL = "http://{host}"
		}
	} else if _, port, err := net.SplitHostPort(o.HTTPSAddr); err == nil && port != "443" {
		if _, perr := strconv.Atoi(port); perr == nil {
			c.EdgeHTTPURL = "https://{host}:" + port
		}
	}
	return nil
}

// serverEdgeAuthKey creates the auth key the in-process edge joins with.
func serverEdgeAuthKey(ctx context.Context, coord *coordinator.Server) (string, error) {
	return coord.CreateAuthKey(ctx, coordinator.AuthKeyOptions{Reusable: true, Edge: true})
}

// portFree reports whether this host lets a program listen on port for
// proto ("tcp" or "udp") on every address, by listening and closing.
func portFree(proto string, port uint16) bool {
	addr := ":" + strconv.Itoa(int(port))
	if proto == "udp" {
		c, err := net.ListenPacket("udp", addr)
		if err != nil {
			return false
		}
		c.Close()
		return true
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return false
	}
	ln.Close()
	return true
}
