package node

import (
	"net/netip"
	"slices"
	"testing"

	"beam.dev/beam/wire"
)

// TestServerListeners: the ports of the servers a node uses on its own
// host (loopback, localhost, unspecified) are its own listeners on every
// address; servers elsewhere are not.
func TestServerListeners(t *testing.T) {
	any := func(p uint16) netip.AddrPort { return netip.AddrPortFrom(netip.IPv4Unspecified(), p) }
	dm := &wire.DERPMap{Regions: map[int]*wire.DERPRegion{
		1: {Nodes: []*wire.DERPNode{{URL: "http://127.0.0.1:7001", STUNAddr: "127.0.0.1:7002", STUNAltPort: 7003}}},
		2: {Nodes: []*wire.DERPNode{{URL: "https://relay.example.com", STUNAddr: "192.0.2.1:3478"}}},
	}}
	for _, tc := range []struct {
		name  string
		coord string
		dm    *wire.DERPMap
		want  []netip.AddrPort
	}{
		{"loopback coordinator", "http://127.0.0.1:7000", nil, []netip.AddrPort{any(7000)}},
		{"localhost and IPv6", "http://localhost:7000, http://[::1]:7005/", nil, []netip.AddrPort{any(7000), any(7005)}},
		{"default port", "http://localhost", nil, []netip.AddrPort{any(80)}},
		{"remote coordinator", "https://coord.example.com:443,http://192.0.2.1:7000", nil, nil},
		{"relays", "https://coord.example.com", dm, []netip.AddrPort{any(7001), any(7002), any(7003)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := serverListeners(tc.coord, tc.dm); !slices.Equal(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}
