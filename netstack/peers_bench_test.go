package netstack

import (
	"fmt"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"beam.dev/beam/types/key"
)

// benchPeers returns n peers as a netmap of n nodes gives them: two
// overlay addresses (outside those newNodes gives), two endpoints, a
// disco key and a home relay each. The endpoints are unused loopback
// ports: what the engine sends to peers it probes stays on this machine.
func benchPeers(n int) []Peer {
	peers := make([]Peer, n)
	for i := range peers {
		peers[i] = Peer{
			Key:      key.NewNode().Public(),
			DiscoKey: key.NewDisco().Public(),
			AllowedIPs: []netip.Prefix{
				netip.PrefixFrom(netip.AddrFrom4([4]byte{100, 96 + byte(i>>16), byte(i >> 8), byte(i)}), 32),
				netip.PrefixFrom(netip.MustParseAddr(fmt.Sprintf("fd7a:115c:a1e0:1::%x", i+1)), 128),
			},
			Endpoints: []netip.AddrPort{
				netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 1, byte(i >> 8), byte(i)}), 9),
				netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 2, byte(i >> 8), byte(i)}), 9),
			},
			HomeDERP: 1,
		}
	}
	return peers
}

// benchPeerCount is the netmap size of BenchmarkPeerConfig: the issue
// measured 1.2 s per full map and 11 ms per one-peer change at 5,000.
const benchPeerCount = 5000

// BenchmarkPeerConfig measures applying peers to an engine at
// benchPeerCount peers: a full map on an engine with none ("ms/full-map"),
// and a change to one peer's endpoints given as a whole config to
// Reconfig ("ms/one-peer-reconfig") or as that peer alone to UpdatePeers
// ("ms/one-peer-update"), and what a full map costs in heap and
// goroutines. The engine's peers are asleep (see peers.go) unless
// BEAM_DEBUG_LAZY_PEERS=0 (then they are configured at once).
func BenchmarkPeerConfig(b *testing.B) {
	n := newNodes(b, 1, nil)[0]
	peers := benchPeers(benchPeerCount)
	base := n.cfg
	full := base
	full.Peers = peers

	b.Run("full-map", func(b *testing.B) {
		if err := n.e.Reconfig(base); err != nil {
			b.Fatal(err)
		}
		heap0, g0 := heapInuse(), runtime.NumGoroutine()
		var total time.Duration
		for b.Loop() {
			if err := n.e.Reconfig(base); err != nil {
				b.Fatal(err)
			}
			start := time.Now()
			if err := n.e.Reconfig(full); err != nil {
				b.Fatal(err)
			}
			total += time.Since(start)
		}
		b.ReportMetric(float64(total.Microseconds())/1000/float64(b.N), "ms/full-map")
		// What the peers cost while configured: heap and goroutines
		// (wireguard-go runs two per peer in its device).
		b.ReportMetric(float64(int64(heapInuse())-int64(heap0))/(1<<20), "heap-MiB/full-map")
		b.ReportMetric(float64(runtime.NumGoroutine()-g0), "goroutines/full-map")
	})
	b.Run("one-peer-reconfig", func(b *testing.B) {
		if err := n.e.Reconfig(full); err != nil {
			b.Fatal(err)
		}
		cfg := full
		cfg.Peers = append([]Peer(nil), peers...)
		var total time.Duration
		i := 0
		for b.Loop() {
			p := &cfg.Peers[i%len(cfg.Peers)]
			p.Endpoints = []netip.AddrPort{netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 3, 0, byte(i)}), 9)}
			i++
			start := time.Now()
			if err := n.e.Reconfig(cfg); err != nil {
				b.Fatal(err)
			}
			total += time.Since(start)
		}
		b.ReportMetric(float64(total.Microseconds())/1000/float64(b.N), "ms/one-peer-reconfig")
	})
	b.Run("one-peer-update", func(b *testing.B) {
		if err := n.e.Reconfig(full); err != nil {
			b.Fatal(err)
		}
		var total time.Duration
		i := 0
		for b.Loop() {
			p := peers[i%len(peers)]
			p.Endpoints = []netip.AddrPort{netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 3, 0, byte(i)}), 9)}
			i++
			start := time.Now()
			if err := n.e.UpdatePeers([]Peer{p}, nil); err != nil {
				b.Fatal(err)
			}
			total += time.Since(start)
		}
		b.ReportMetric(float64(total.Microseconds())/1000/float64(b.N), "ms/one-peer-update")
	})
}
