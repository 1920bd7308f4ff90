package cli

import (
	"context"
	"net"
	"net/netip"
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
	// listen on, on the address its route ports listen on (serverEdge).
	bindHost := serverBindHost(o)
	c.EdgePortFree = func(proto string, port uint16) bool { return portFree(bindHost, proto, port) }
	if o.Dev {
		c.EdgeHost = bindHost
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

// serverBindHost is the address beam server's edge listens on for tcp and
// udp route ports: in dev mode the loopback address of --http-addr (or
// 127.0.0.1), the host of the URLs it prints, so that routes published
// on a development machine stay on it; otherwise every address ("").
func serverBindHost(o *ServerOptions) string {
	if !o.Dev {
		return ""
	}
	if h, _, err := net.SplitHostPort(o.HTTPAddr); err == nil {
		if a, err := netip.ParseAddr(h); err == nil && a.Is4() && a.IsLoopback() {
			return a.String()
		}
	}
	return "127.0.0.1"
}

// portFree reports whether this host lets a program listen on port for
// proto ("tcp" or "udp") on host ("" for every address), by listening and
// closing.
func portFree(host, proto string, port uint16) bool {
	addr := net.JoinHostPort(host, strconv.Itoa(int(port)))
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
