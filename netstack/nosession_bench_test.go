package netstack

import (
	"fmt"
	"testing"
)

// BenchmarkNoSessionBacklog reports the heap an engine holds after
// sending 20,000 UDP datagrams of 1,200 bytes to a peer that never
// answers (its engine is closed, so no WireGuard session forms), and the
// process RSS before and after. wireguard-go stages a peer's packets
// until a handshake completes, up to 128 batches of up to 32 packets,
// each in a 64 KiB buffer from its pool, and the in-flight window forgets
// them after a period (see package inflight), so they are outside its
// bound: measured 222 MiB of heap and 23 MiB more RSS. The engine now
// hands wireguard-go at most noSessionBudget packets for a peer without a
// session (see admit): 8.1 MiB of heap. The measurement is taken once;
// b.N does not scale it; dropped is the datagrams the engine dropped.
func BenchmarkNoSessionBacklog(b *testing.B) {
	nodes := newNodes(b, 2, nil)
	a, gone := nodes[0], nodes[1]
	gone.e.Close()
	before, rss0 := heapInuse(), rssBytes(b)
	c, err := a.e.DialContext(b.Context(), "udp", fmt.Sprintf("%v:9", gone.v4))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	pkt := make([]byte, 1200)
	for i := range 20000 {
		if _, err := c.Write(pkt); err != nil {
			b.Fatalf("write %d: %v", i, err)
		}
	}
	heap, rss := int64(heapInuse())-int64(before), rssBytes(b)
	dropped := a.e.noSessionDrops.Load()
	for b.Loop() {
	}
	b.ReportMetric(float64(heap)/(1<<20), "heap-MiB")
	b.ReportMetric(float64(rss0)/(1<<20), "RSS-before-MiB")
	b.ReportMetric(float64(rss)/(1<<20), "RSS-after-MiB")
	b.ReportMetric(float64(dropped), "dropped")
}
