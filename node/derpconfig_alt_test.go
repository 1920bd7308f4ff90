package node

import (
	"slices"
	"testing"

	"beam.dev/beam/wire"
)

// TestDERPConfigSTUNAltPort checks that a relay's second STUN port is
// asked on its STUN host, after the first.
func TestDERPConfigSTUNAltPort(t *testing.T) {
	dm := &wire.DERPMap{Regions: map[int]*wire.DERPRegion{1: {RegionID: 1, Nodes: []*wire.DERPNode{
		{Name: "a", URL: "http://r1.example.test", STUNAddr: "r1.example.test:3478", STUNAltPort: 3479},
		{Name: "b", URL: "http://[2001:db8::1]", STUNAddr: "[2001:db8::1]:3478"},
	}}}}
	got, _ := derpConfig(dm)
	want := []string{"r1.example.test:3478", "r1.example.test:3479", "[2001:db8::1]:3478"}
	if !slices.Equal(got[1].STUNAddrs, want) {
		t.Errorf("STUNAddrs = %q, want %q", got[1].STUNAddrs, want)
	}
}
