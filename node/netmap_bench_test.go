package node

import (
	"fmt"
	"net/netip"
	"reflect"
	"testing"
	"time"

	"beam.dev/beam/netstack"
	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// benchNetMap returns a netmap of n peers with two addresses, two
// endpoints and a home relay each.
func benchNetMap(n int, now time.Time) *wire.NetMap {
	self := &wire.Node{Key: key.NewNode().Public(), Name: "self", Addresses: []netip.Prefix{netip.MustParsePrefix("100.64.0.1/32")}}
	peers := make([]*wire.Node, n)
	for i := range peers {
		peers[i] = &wire.Node{
			ID:   wire.NodeID(i + 2),
			Key:  key.NodePublicFromRaw32([32]byte{byte(i), byte(i >> 8), 1}),
			Name: fmt.Sprintf("peer-%d", i),
			Addresses: []netip.Prefix{
				netip.PrefixFrom(netip.AddrFrom4([4]byte{100, 65, byte(i >> 8), byte(i)}), 32),
				netip.PrefixFrom(netip.MustParseAddr(fmt.Sprintf("fd7a:115c:a1e0::%x", i+2)), 128),
			},
			Endpoints: []netip.AddrPort{
				netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 51, 100, byte(i)}), uint16(10000+i)),
				netip.AddrPortFrom(netip.AddrFrom4([4]byte{203, 0, 113, byte(i)}), uint16(20000+i)),
			},
			HomeDERP: 1,
		}
	}
	return (*wire.NetMap)(nil).Apply(&wire.MapResponse{Self: self, Peers: peers, DNS: &wire.DNSConfig{Domain: "default.beam.internal"}, ControlTime: now}, now)
}

// BenchmarkNetMapToEngine measures what the node does, at 5,000 peers,
// to turn a netmap in which one peer moved into what it hands the engine:
// "whole" builds the whole engine config and compares it with the last
// one (as the node did before UpdatePeers), "delta" builds the config
// without peers and the peer delta (what applyLocked does now). Both run
// once per netmap and once a second (expiry).
func BenchmarkNetMapToEngine(b *testing.B) {
	now := time.Now()
	nm := benchNetMap(5000, now)
	moved := *nm.Peers[100]
	moved.Endpoints = []netip.AddrPort{netip.MustParseAddrPort("192.0.2.1:1")}
	next := nm.Apply(&wire.MapResponse{PeersChanged: []*wire.Node{&moved}}, now)

	b.Run("whole", func(b *testing.B) {
		last := engineConfig(nm, now, false, nil)
		for b.Loop() {
			cfg := engineConfig(next, now, false, nil)
			if reflect.DeepEqual(last, cfg) {
				b.Fatal("configs equal")
			}
		}
	})
	b.Run("delta", func(b *testing.B) {
		last := engineBase(nm, false, nil, nil)
		cur := map[key.NodePublic]netstack.Peer{}
		for _, p := range engineConfig(nm, now, false, nil).Peers {
			cur[p.Key] = p
		}
		for b.Loop() {
			cfg := engineBase(next, false, nil, nil)
			if !reflect.DeepEqual(last, cfg) {
				b.Fatal("base configs differ")
			}
			if set, remove := peerChanges(next, now, cur); len(set) != 1 || len(remove) != 0 {
				b.Fatalf("delta: %d set, %d removed; want 1, 0", len(set), len(remove))
			}
		}
	})
}

// BenchmarkDNSRecords measures building the MagicDNS records of a 5,000
// peer netmap and comparing them with the last ones, as applyLocked does.
func BenchmarkDNSRecords(b *testing.B) {
	now := time.Now()
	nm := benchNetMap(5000, now)
	last := dnsRecords(nm, now, nil)
	for b.Loop() {
		if rec := dnsRecords(nm, now, nil); !reflect.DeepEqual(rec, last) {
			b.Fatal("records differ")
		}
	}
}
