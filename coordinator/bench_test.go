package coordinator_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"beam.dev/beam/coordinator"
	"beam.dev/beam/wire"
)

// BenchmarkRegister1000 registers 1,000 nodes, opens a map stream for each
// (through coordclient, over loopback HTTP), then registers one more node
// and measures how long until every streaming node has seen it. It reports
// register-ms (all 1,000 registrations), stream-ms (until every stream has
// its full map and the join/online churn has settled) and fanout-ms (the
// new peer reaching all 1,000).
func BenchmarkRegister1000(b *testing.B) {
	const n = 1000
	for b.Loop() {
		b.StopTimer()
		c := startCoord(b, func(o *coordinator.Options) { o.KeepAliveInterval = 30 * time.Second })
		ak := c.authKey(b, coordinator.AuthKeyOptions{Reusable: true})
		nodes := make([]*node, n)
		for i := range nodes {
			nodes[i] = newNode(b, c.URL)
		}
		b.StartTimer()

		start := time.Now()
		var wg sync.WaitGroup
		work := make(chan int)
		for range 16 {
			wg.Go(func() {
				for i := range work {
					nodes[i].register(b, ak, fmt.Sprintf("n%d", i))
				}
			})
		}
		for i := range n {
			work <- i
		}
		close(work)
		wg.Wait()
		regDur := time.Since(start)

		// Every node streams and records the newest netmap.
		start = time.Now()
		ctx, cancel := context.WithCancel(context.Background())
		var mu sync.Mutex
		cond := sync.NewCond(&mu)
		latest := make([]*wire.NetMap, n)
		var runs sync.WaitGroup
		for i := range nodes {
			runs.Go(func() {
				nodes[i].Run(ctx, func(nm *wire.NetMap) {
					mu.Lock()
					latest[i] = nm
					cond.Broadcast()
					mu.Unlock()
				})
			})
		}
		waitAll := func(what string, ok func(*wire.NetMap) bool) {
			deadline := time.AfterFunc(60*time.Second, func() {
				mu.Lock()
				cond.Broadcast()
				mu.Unlock()
			})
			defer deadline.Stop()
			limit := time.Now().Add(60 * time.Second)
			mu.Lock()
			defer mu.Unlock()
			for {
				done := 0
				for _, nm := range latest {
					if nm != nil && ok(nm) {
						done++
					}
				}
				if done == n {
					return
				}
				if time.Now().After(limit) {
					b.Fatalf("%s: only %d of %d nodes got there", what, done, n)
				}
				cond.Wait()
			}
		}
		allOnline := func(nm *wire.NetMap) bool {
			if len(nm.Peers) != n-1 {
				return false
			}
			for _, p := range nm.Peers {
				if !p.Online {
					return false
				}
			}
			return true
		}
		waitAll("full maps with every peer online", allOnline)
		streamDur := time.Since(start)

		start = time.Now()
		newNode(b, c.URL).register(b, ak, "newcomer")
		waitAll("newcomer", func(nm *wire.NetMap) bool {
			for _, p := range nm.Peers {
				if p.Name == "newcomer" {
					return true
				}
			}
			return false
		})
		fanout := time.Since(start)
		b.StopTimer()
		cancel()
		runs.Wait()
		c.stop()
		b.ReportMetric(float64(regDur.Milliseconds()), "register-ms")
		b.ReportMetric(float64(streamDur.Milliseconds()), "stream-ms")
		b.ReportMetric(float64(fanout.Milliseconds()), "fanout-ms")
		b.StartTimer()
	}
}
