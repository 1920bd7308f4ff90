package netstack

import (
	"errors"
	"net/netip"
	"testing"
)

// TestSetAddrsRefusesOutsideOverlay: in kernel TUN mode the node's
// addresses and the overlay's ranges go onto the host's device; an address
// or route outside 100.64.0.0/10 and the overlay's ULA /48 (a netmap that
// names 8.8.8.8 as the node's address would take the host's traffic to
// it) is refused before any ip command runs.
func TestSetAddrsRefusesOutsideOverlay(t *testing.T) {
	overlay := []netip.Prefix{netip.MustParsePrefix("100.64.0.0/10"), netip.MustParsePrefix("fd7a:bea0:b0de::/48")}
	tests := []struct {
		name   string
		addrs  []string
		routes []netip.Prefix
		ok     bool
	}{
		{"overlay", []string{"100.64.0.7", "100.100.100.100", "fd7a:bea0:b0de::6440:7", "fd7a:bea0:b0de::53"}, overlay, true},
		{"mapped IPv4", []string{"::ffff:100.64.0.7"}, nil, true},
		{"public address", []string{"100.64.0.7", "8.8.8.8"}, overlay, false},
		{"IPv6 outside the ULA", []string{"2001:db8::1"}, nil, false},
		{"route wider than the overlay", []string{"100.64.0.7"}, []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}, false},
		{"route outside", []string{"100.64.0.7"}, []netip.Prefix{netip.MustParsePrefix("8.8.8.0/24")}, false},
		{"another /48", []string{"100.64.0.7"}, []netip.Prefix{netip.MustParsePrefix("fd00:1::/48")}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var addrs []netip.Addr
			for _, a := range tt.addrs {
				addrs = append(addrs, netip.MustParseAddr(a))
			}
			err := checkHostRanges(addrs, tt.routes)
			if (err == nil) != tt.ok {
				t.Fatalf("checkHostRanges = %v, want ok %v", err, tt.ok)
			}
			if tt.ok {
				return
			}
			// A device that does not exist: an ip command would fail with
			// another error.
			h := &linuxHostNet{name: "beamnodev0", addrs: map[netip.Addr]bool{}, routes: map[netip.Prefix]netip.Addr{}}
			if err := h.setAddrs(addrs, tt.routes, addrs); !errors.Is(err, errHostRange) {
				t.Errorf("setAddrs = %v, want errHostRange", err)
			}
			if len(h.addrs) != 0 || len(h.routes) != 0 {
				t.Errorf("setAddrs of refused addresses set %v and %v", h.addrs, h.routes)
			}
		})
	}
}
