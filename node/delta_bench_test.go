package node

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"beam.dev/beam/netstack"
	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// benchDeltaNode returns a node whose engine is configured with a netmap
// of n peers (benchNetMap's, plus a filter admitting every peer through
// one address set, as a policy of one group compiles to), and that
// netmap.
func benchDeltaNode(b *testing.B, n int) (*Node, *wire.NetMap) {
	b.Helper()
	nd, err := New(Options{StateDir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { nd.Close() })
	e, err := netstack.New(netstack.Options{PrivateKey: key.NewNode(), ListenPort: 0})
	if err != nil {
		b.Fatal(err)
	}
	now := time.Now()
	nm := benchNetMap(n, now)
	set := make([]netip.Prefix, 0, n)
	for _, p := range nm.Peers {
		set = append(set, p.Addresses[0])
	}
	nm = nm.Apply(&wire.MapResponse{
		PacketFilterSet: true,
		PacketFilter:    []wire.FilterRule{{SrcSets: []string{"group:all"}, DstPorts: []wire.NetPortRange{{IP: netip.MustParsePrefix("0.0.0.0/0"), First: 0, Last: 65535}}}},
		FilterSets:      map[string][]netip.Prefix{"group:all": set},
	}, now)
	nd.mu.Lock()
	nd.engine = e
	nd.netmap = nm
	nd.applyLocked()
	nd.mu.Unlock()
	return nd, nm
}

// receive does what the node does with one MapResponse from its stream:
// the control client applies it to the netmap it holds (coordclient.Run),
// and the node hands the result to the engine and MagicDNS (onNetMap).
func (n *Node) receive(nm *wire.NetMap, mr *wire.MapResponse) *wire.NetMap {
	nm = nm.Apply(mr, time.Now())
	n.mu.Lock()
	n.netmap = nm
	n.applyLocked()
	n.mu.Unlock()
	return nm
}

// BenchmarkPeerDelta measures a one-peer change at 1,000, 5,000 and
// 10,000 peers from the node receiving the MapResponse to the engine
// (bind and WireGuard) reconfigured, MagicDNS records and the packet
// filter included: an endpoint change, a new peer (with the filter set
// change that admits it), a removed peer (likewise) and an online flip.
// Each op is one change; the benchmark undoes add and remove outside the
// timer.
func BenchmarkPeerDelta(b *testing.B) {
	for _, n := range []int{1000, 5000, 10000} {
		b.Run(fmt.Sprintf("peers=%d/endpoint", n), func(b *testing.B) {
			nd, nm := benchDeltaNode(b, n)
			p := *nm.Peers[n/2]
			eps := [2][]netip.AddrPort{{netip.MustParseAddrPort("192.0.2.1:1")}, p.Endpoints}
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				q := p
				q.Endpoints = eps[i%2]
				i++
				nm = nd.receive(nm, &wire.MapResponse{PeersChanged: []*wire.Node{&q}})
			}
		})
		b.Run(fmt.Sprintf("peers=%d/online", n), func(b *testing.B) {
			nd, nm := benchDeltaNode(b, n)
			k := nm.Peers[n/2].Key
			b.ReportAllocs()
			on := true
			for b.Loop() {
				nm = nd.receive(nm, &wire.MapResponse{PeersOnline: map[key.NodePublic]bool{k: on}})
				on = !on
			}
		})
		newPeer := func(i int) *wire.Node {
			return &wire.Node{
				ID:        wire.NodeID(1_000_000 + i),
				Key:       key.NodePublicFromRaw32([32]byte{byte(i), byte(i >> 8), byte(i >> 16), 2}),
				Name:      fmt.Sprintf("new-%d", i),
				Addresses: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{100, 66, byte(i >> 8), byte(i)}), 32)},
				Endpoints: []netip.AddrPort{netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 51, 100, byte(i)}), 41641)},
				HomeDERP:  1,
			}
		}
		add := func(p *wire.Node) *wire.MapResponse {
			return &wire.MapResponse{PeersChanged: []*wire.Node{p},
				FilterSetChanges: []wire.FilterSetChange{{Name: "group:all", Add: p.Addresses[:1]}}}
		}
		remove := func(p *wire.Node) *wire.MapResponse {
			return &wire.MapResponse{PeersRemoved: []key.NodePublic{p.Key},
				FilterSetChanges: []wire.FilterSetChange{{Name: "group:all", Remove: p.Addresses[:1]}}}
		}
		b.Run(fmt.Sprintf("peers=%d/add", n), func(b *testing.B) {
			nd, nm := benchDeltaNode(b, n)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				p := newPeer(i)
				i++
				nm = nd.receive(nm, add(p))
				b.StopTimer()
				nm = nd.receive(nm, remove(p))
				b.StartTimer()
			}
		})
		b.Run(fmt.Sprintf("peers=%d/remove", n), func(b *testing.B) {
			nd, nm := benchDeltaNode(b, n)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				b.StopTimer()
				p := newPeer(i)
				i++
				nm = nd.receive(nm, add(p))
				b.StartTimer()
				nm = nd.receive(nm, remove(p))
			}
		})
	}
}
