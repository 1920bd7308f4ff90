//go:build unix

package netstack

import (
	"fmt"
	"net/netip"
	"syscall"
)

// bindLoopback binds the socket fd of a connection being dialed (network
// "tcp4" or "tcp6") to the loopback address of its family and an
// ephemeral port, and returns that address. Called from a dialer's
// Control, before connect, so the host side of a forwarded connection is
// registered (addForwarded) before the host's listener can accept it.
func bindLoopback(network string, fd uintptr) (netip.AddrPort, error) {
	var sa syscall.Sockaddr = &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}
	if network == "tcp6" {
		sa = &syscall.SockaddrInet6{Addr: netip.IPv6Loopback().As16()}
	}
	if err := syscall.Bind(int(fd), sa); err != nil {
		return netip.AddrPort{}, fmt.Errorf("bind host side: %w", err)
	}
	got, err := syscall.Getsockname(int(fd))
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("host side address: %w", err)
	}
	switch got := got.(type) {
	case *syscall.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(got.Addr), uint16(got.Port)), nil
	case *syscall.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(got.Addr).Unmap(), uint16(got.Port)), nil
	}
	return netip.AddrPort{}, fmt.Errorf("host side address: unexpected %T", got)
}
