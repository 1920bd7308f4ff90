package netstack

import (
	"net"
	"net/netip"
	"sync"
)

// forwarded is the process-wide set of host-side local addresses of the
// connections and flows engines forward from the overlay to the host's
// loopback (see FromOverlay). A count per address: an address can be in
// use by a TCP connection and a UDP flow at once.
var forwarded struct {
	mu sync.Mutex // guards m
	m  map[netip.AddrPort]int
}

func addForwarded(ap netip.AddrPort) {
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	forwarded.mu.Lock()
	defer forwarded.mu.Unlock()
	if forwarded.m == nil {
		forwarded.m = make(map[netip.AddrPort]int)
	}
	forwarded.m[ap]++
}

func removeForwarded(ap netip.AddrPort) {
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	forwarded.mu.Lock()
	defer forwarded.mu.Unlock()
	if forwarded.m[ap] <= 1 {
		delete(forwarded.m, ap)
		return
	}
	forwarded.m[ap]--
}

// FromOverlay reports whether remote, the client address of a connection
// accepted (or a datagram received) on a host socket, is the host side of
// a connection or UDP flow that an Engine in this process forwards from a
// peer. A program's own loopback services that must not serve peers (a
// proxy that would dial on the node's behalf, a DNS listener) refuse such
// clients, in addition to listing themselves in Config.OwnListeners.
//
// An engine binds the host side of a forwarded TCP connection before
// connecting, so the address is known before the listener can accept it.
func FromOverlay(remote net.Addr) bool {
	ap, ok := addrPortOf(remote)
	if !ok {
		return false
	}
	forwarded.mu.Lock()
	defer forwarded.mu.Unlock()
	return forwarded.m[ap] > 0
}

// addrPortOf returns a's IP address (unmapped) and port, for TCP and UDP
// addresses.
func addrPortOf(a net.Addr) (netip.AddrPort, bool) {
	var ap netip.AddrPort
	switch a := a.(type) {
	case *net.TCPAddr:
		ap = a.AddrPort()
	case *net.UDPAddr:
		ap = a.AddrPort()
	case nil:
		return netip.AddrPort{}, false
	default:
		var err error
		if ap, err = netip.ParseAddrPort(a.String()); err != nil {
			return netip.AddrPort{}, false
		}
	}
	if !ap.IsValid() {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), true
}

// isForwarded reports whether ap is the host side of a forwarded
// connection or flow (FromOverlay for an address already unmapped).
func isForwarded(ap netip.AddrPort) bool {
	forwarded.mu.Lock()
	defer forwarded.mu.Unlock()
	return forwarded.m[ap] > 0
}
