package coordinator_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"beam.dev/beam/coordinator"
	"beam.dev/beam/coordinator/policy"
	"beam.dev/beam/wire"
)

// benchPolicy returns a policy of 200 rules over 10 users and 10 tags;
// version v shifts which tag each user reaches and on which port, so
// every node's peers or filter change between versions.
func benchPolicy(v int) string {
	var b strings.Builder
	b.WriteString(`{"tagOwners": {`)
	for t := range 10 {
		fmt.Fprintf(&b, `"tag:svc%d": [],`, t)
	}
	b.WriteString(`}, "acls": [`)
	for i := range 200 {
		fmt.Fprintf(&b, `{"action": "accept", "src": ["user%d"], "dst": ["tag:svc%d:%d"]},`, i%10, (i+v)%10, 1000+i+v)
	}
	b.WriteString(`]}`)
	return b.String()
}

// BenchmarkPolicyChange1000 streams 1,000 nodes (900 of 10 users, 100
// with 10 tags) under a 200-rule policy, then applies a changed policy
// and measures until every node has its new peers and filter. It reports
// compile-ms (parsing the policy and computing every node's filter and
// peers, as the coordinator does) and deliver-ms (SetPolicy until all
// 1,000 streams have the change).
func BenchmarkPolicyChange1000(b *testing.B) {
	const n = 1000
	for b.Loop() {
		b.StopTimer()
		c := startCoord(b, func(o *coordinator.Options) { o.KeepAliveInterval = 30 * time.Second })
		users := make([]string, 10)
		for i := range users {
			users[i] = fmt.Sprintf("user%d", i)
		}
		setupACL(b, c, benchPolicy(0), users...)
		keys := make([]string, 20)
		for i := range 10 {
			keys[i] = c.authKey(b, coordinator.AuthKeyOptions{Reusable: true, User: users[i]})
			keys[10+i] = c.authKey(b, coordinator.AuthKeyOptions{Reusable: true, Tags: []string{fmt.Sprintf("tag:svc%d", i)}})
		}
		nodes := make([]*node, n)
		var wg sync.WaitGroup
		work := make(chan int)
		for range 16 {
			wg.Go(func() {
				for i := range work {
					nodes[i] = newNode(b, c.URL)
					k := keys[i%10]
					if i >= 900 {
						k = keys[10+i%10]
					}
					nodes[i].register(b, k, fmt.Sprintf("n%d", i))
				}
			})
		}
		for i := range n {
			work <- i
		}
		close(work)
		wg.Wait()

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
		// want reports whether node i's netmap reflects policy version v.
		want := func(i, v int, nm *wire.NetMap) bool {
			if i < 900 { // user i%10 sees exactly the nodes of tag:svc((i+v)%10)
				seen := 0
				for _, p := range nm.Peers {
					if len(p.Tags) != 1 || p.Tags[0] != fmt.Sprintf("tag:svc%d", (i%10+v)%10) {
						return false
					}
					seen++
				}
				return seen == 10
			}
			t := i % 10 // reached from user (t-v) mod 10 on port 1000+r+v, r ≡ t-v (mod 10)
			r := ((t-v)%10 + 10) % 10
			for _, f := range nm.ExpandedFilter() {
				for _, d := range f.DstPorts {
					if d.First == uint16(1000+r+v) {
						return true
					}
				}
			}
			return false
		}
		waitAll := func(what string, v int) {
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
				for i, nm := range latest {
					if nm != nil && want(i, v, nm) {
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
		waitAll("initial policy", 0)

		// Compile as the coordinator does: parse, compile, every node's share.
		all, _ := c.Server.Nodes(context.Background())
		start := time.Now()
		p, err := policy.Parse([]byte(benchPolicy(1)))
		if err != nil {
			b.Fatal(err)
		}
		comp := p.Compile(all)
		for _, nd := range all {
			comp.For(nd.Key)
		}
		compileDur := time.Since(start)

		b.StartTimer()
		start = time.Now()
		if err := c.Server.SetPolicy(context.Background(), []byte(benchPolicy(1))); err != nil {
			b.Fatal(err)
		}
		waitAll("changed policy", 1)
		deliver := time.Since(start)
		b.StopTimer()
		cancel()
		runs.Wait()
		c.stop()
		b.ReportMetric(float64(compileDur.Microseconds())/1000, "compile-ms")
		b.ReportMetric(float64(deliver.Milliseconds()), "deliver-ms")
		b.StartTimer()
	}
}
