package wire

import "net/netip"

// The overlay's address ranges: the coordinator gives every node one
// IPv4 address in OverlayIPv4 (the shared address space of RFC 6598)
// and one IPv6 address in OverlayIPv6 (a ULA /48), and a node accepts no
// address of its own outside them. netstack, which may not import wire,
// keeps its own copy for the kernel TUN device.
var (
	OverlayIPv4 = netip.MustParsePrefix("100.64.0.0/10")
	OverlayIPv6 = netip.MustParsePrefix("fd7a:bea0:b0de::/48")
)
