package netstack

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"
)

// parseAddr parses "ip:port" (or ":port" when allowEmpty) for network,
// which must be one of tcp, tcp4, tcp6, udp, udp4, udp6.
func parseAddr(network, address string, allowEmpty bool) (proto string, ap netip.AddrPort, err error) {
	switch network {
	case "tcp", "tcp4", "tcp6":
		proto = "tcp"
	case "udp", "udp4", "udp6":
		proto = "udp"
	default:
		return "", ap, fmt.Errorf("netstack: unsupported network %q", network)
	}
	host, portStr, err := net.SplitHostPort(address)
	if err != nil {
		return "", ap, fmt.Errorf("netstack: address %q: %w", address, err)
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		return "", ap, fmt.Errorf("netstack: address %q: bad port", address)
	}
	var ip netip.Addr
	if host == "" {
		if !allowEmpty {
			return "", ap, fmt.Errorf("netstack: address %q: missing IP", address)
		}
	} else {
		ip, err = netip.ParseAddr(host)
		if err != nil {
			return "", ap, fmt.Errorf("netstack: address %q: host must be an IP literal: %w", address, err)
		}
		ip = ip.Unmap()
		if (network[len(network)-1] == '4' && !ip.Is4()) || (network[len(network)-1] == '6' && !ip.Is6()) {
			return "", ap, fmt.Errorf("netstack: address %q does not match network %q", address, network)
		}
	}
	return proto, netip.AddrPortFrom(ip, uint16(port)), nil
}

// DialContext connects to address on the overlay. network is "tcp",
// "tcp4", "tcp6", "udp", "udp4" or "udp6"; address is an IP literal and
// port ("100.64.0.2:80", "[fd7a:115c:a1e0::2]:53"). Errors unwrap to
// standard errors such as syscall.ECONNREFUSED.
func (e *Engine) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	proto, ap, err := parseAddr(network, address, false)
	if err != nil {
		return nil, err
	}
	if e.stack == nil {
		return tunDial(ctx, proto, ap)
	}
	if proto == "tcp" {
		return e.stack.DialTCP(ctx, ap)
	}
	return e.stack.DialUDP(ap)
}

// Listen listens for TCP connections inside the overlay on address (an IP
// literal and port; ":port" listens on every local address). A listener
// takes precedence over forwarding to the host for its address and port.
func (e *Engine) Listen(network, address string) (net.Listener, error) {
	proto, ap, err := parseAddr(network, address, true)
	if err != nil {
		return nil, err
	}
	if proto != "tcp" {
		return nil, fmt.Errorf("netstack: Listen: network %q is not TCP", network)
	}
	if e.stack == nil {
		ln, err := e.tunListen(proto, ap)
		if err != nil {
			return nil, err
		}
		return ln.(net.Listener), nil
	}
	return e.stack.ListenTCP(ap)
}

// ListenPacket opens a UDP socket inside the overlay on address (an IP
// literal and port; ":port" binds every local address). It takes
// precedence over forwarding to the host.
func (e *Engine) ListenPacket(network, address string) (net.PacketConn, error) {
	proto, ap, err := parseAddr(network, address, true)
	if err != nil {
		return nil, err
	}
	if proto != "udp" {
		return nil, fmt.Errorf("netstack: ListenPacket: network %q is not UDP", network)
	}
	if e.stack == nil {
		pc, err := e.tunListen(proto, ap)
		if err != nil {
			return nil, err
		}
		return pc.(net.PacketConn), nil
	}
	return e.stack.ListenUDP(ap)
}
