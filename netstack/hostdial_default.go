//go:build !unix

package netstack

import (
	"errors"
	"net/netip"
)

// bindLoopback is not available here: the host side of a forwarded TCP
// connection is registered only once the dial returns (see dialHost).
func bindLoopback(network string, fd uintptr) (netip.AddrPort, error) {
	return netip.AddrPort{}, errors.ErrUnsupported
}
