package node

import (
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"beam.dev/beam/wire"
)

// TestFilterSetsMatchExpanded checks that a filter naming address sets
// admits exactly what the same filter with its sets expanded does, on
// random packets, and that a set the netmap lacks admits nothing.
func TestFilterSetsMatchExpanded(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	total := 0
	addr := func() netip.Addr {
		if rng.IntN(2) == 0 {
			return netip.AddrFrom4([4]byte{100, 64, 0, byte(rng.IntN(64))})
		}
		return netip.AddrFrom16([16]byte{0xfd, 0x7a, 0xbe, 0xa0, 0xb0, 0xde, 15: byte(rng.IntN(64))})
	}
	host := func(a netip.Addr) netip.Prefix { return netip.PrefixFrom(a, a.BitLen()) }
	for round := range 50 {
		sets := map[string][]netip.Prefix{}
		for _, name := range []string{"group:eng", "tag:db", "autogroup:self:alice/group:eng"} {
			for range rng.IntN(40) {
				sets[name] = append(sets[name], host(addr()))
			}
		}
		self := []netip.Addr{addr(), addr()}
		var rules []wire.FilterRule
		for range 1 + rng.IntN(4) {
			r := wire.FilterRule{Protos: [][]int{nil, {6}, {17}, {1, 58}}[rng.IntN(4)]}
			for range rng.IntN(3) {
				r.SrcSets = append(r.SrcSets, []string{"group:eng", "tag:db", "autogroup:self:alice/group:eng", "missing"}[rng.IntN(4)])
			}
			if rng.IntN(3) == 0 {
				r.SrcIPs = append(r.SrcIPs, host(addr()), netip.MustParsePrefix("100.64.0.32/27"))
			}
			for _, a := range self {
				first := uint16(rng.IntN(100))
				r.DstPorts = append(r.DstPorts, wire.NetPortRange{IP: host(a), First: first, Last: first + uint16(rng.IntN(50))})
			}
			rules = append(rules, r)
		}
		withSets := convertFilter(rules, sets)
		nm := &wire.NetMap{PacketFilter: rules, FilterSets: sets}
		expanded := convertFilter(nm.ExpandedFilter(), nil)
		accepted := 0
		for range 500 {
			src, dst := addr(), self[rng.IntN(2)]
			proto := []uint8{6, 17, 1, 58, 47}[rng.IntN(5)]
			port := uint16(rng.IntN(160))
			got, want := withSets.Allows(src, dst, proto, port), expanded.Allows(src, dst, proto, port)
			if got != want {
				t.Fatalf("round %d: %v -> %v proto %d port %d: filter over sets says %v, expanded %v\nrules %+v\nsets %v",
					round, src, dst, proto, port, got, want, rules, sets)
			}
			if got {
				accepted++
			}
		}
		total += accepted
	}
	if total < 500 || total > 50*500-500 {
		t.Fatalf("%d of %d random packets accepted; the test needs both answers", total, 50*500)
	}
	missing := convertFilter([]wire.FilterRule{{SrcSets: []string{"missing"}, DstPorts: []wire.NetPortRange{{IP: netip.MustParsePrefix("100.64.0.1/32"), Last: 65535}}}}, nil)
	if missing.Allows(netip.MustParseAddr("100.64.0.2"), netip.MustParseAddr("100.64.0.1"), 6, 22) {
		t.Error("a rule naming a set the netmap lacks admits a packet")
	}
}

// TestFilterCache checks that applyLocked's filter conversion reuses what
// did not change: the same filter when nothing did, and the engine's set
// of every set but the one a change touched.
func TestFilterCache(t *testing.T) {
	p := netip.MustParsePrefix
	now := time.Now()
	dst := []wire.NetPortRange{{IP: p("100.64.0.1/32"), First: 22, Last: 22}}
	nm := (*wire.NetMap)(nil).Apply(&wire.MapResponse{
		Self:            &wire.Node{Name: "db"},
		PacketFilter:    []wire.FilterRule{{SrcSets: []string{"group:eng"}, DstPorts: dst}, {SrcSets: []string{"tag:ci"}, DstPorts: dst}},
		PacketFilterSet: true,
		FilterSets:      map[string][]netip.Prefix{"group:eng": {p("100.64.0.2/32")}, "tag:ci": {p("100.64.0.3/32")}},
	}, now)
	var fc filterCache
	f1 := fc.convert(nm.PacketFilter, nm.FilterSets)
	// A netmap delta that leaves the filter alone (a peer's endpoints).
	nm = nm.Apply(&wire.MapResponse{PeersChanged: []*wire.Node{{Name: "x"}}}, now)
	if f2 := fc.convert(nm.PacketFilter, nm.FilterSets); f2 != f1 {
		t.Fatal("unchanged filter converted to a new value")
	}
	// One node joins group:eng.
	nm = nm.Apply(&wire.MapResponse{FilterSetChanges: []wire.FilterSetChange{{Name: "group:eng", Add: []netip.Prefix{p("100.64.0.4/32")}}}}, now)
	f3 := fc.convert(nm.PacketFilter, nm.FilterSets)
	if f3 == f1 {
		t.Fatal("a set change did not change the filter")
	}
	if f3.Rules[1].SrcSets[0] != f1.Rules[1].SrcSets[0] {
		t.Error("tag:ci's set was rebuilt although only group:eng changed")
	}
	if !f3.Allows(netip.MustParseAddr("100.64.0.4"), netip.MustParseAddr("100.64.0.1"), 6, 22) {
		t.Error("the joined node is not admitted")
	}
	if f1.Allows(netip.MustParseAddr("100.64.0.4"), netip.MustParseAddr("100.64.0.1"), 6, 22) {
		t.Error("the earlier filter changed")
	}
}
