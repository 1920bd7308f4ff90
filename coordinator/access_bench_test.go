package coordinator_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"beam.dev/beam/coordinator"
	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// countingStreams opens the map streams of nodes and counts the frames
// and bytes they receive, without opening the frames: the cost measured
// is the coordinator's.
type countingStreams struct {
	frames, bytes atomic.Int64
	mu            sync.Mutex
	cond          *sync.Cond
	cancel        context.CancelFunc
	wg            sync.WaitGroup
}

func openCountingStreams(b *testing.B, c *coord, nodes []*node) *countingStreams {
	cs := &countingStreams{}
	cs.cond = sync.NewCond(&cs.mu)
	ctx, cancel := context.WithCancel(context.Background())
	cs.cancel = cancel
	mk := c.priv.Public()
	tr := &http.Transport{MaxIdleConnsPerHost: len(nodes), MaxConnsPerHost: 0}
	hc := &http.Client{Transport: tr}
	epoch := c.epoch(b)
	for _, n := range nodes {
		clear, _ := json.Marshal(wire.MapRequest{Version: wire.CapabilityVersion, NodeKey: n.priv.Public(), DiscoKey: key.NewDisco().Public(), Stream: true, Epoch: epoch, Timestamp: time.Now()})
		body, _ := json.Marshal(wire.Envelope{NodeKey: n.priv.Public(), Sealed: n.priv.SealTo(mk, clear)})
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, c.URL+"/machine/map", bytes.NewReader(body))
		resp, err := hc.Do(req)
		if err != nil || resp.StatusCode != http.StatusOK {
			b.Fatalf("open map stream: %v %v", err, resp)
		}
		cs.wg.Go(func() {
			defer resp.Body.Close()
			var hdr [4]byte
			buf := make([]byte, 64<<10)
			for {
				if _, err := io.ReadFull(resp.Body, hdr[:]); err != nil {
					return
				}
				size := int64(binary.BigEndian.Uint32(hdr[:]))
				if _, err := io.CopyBuffer(io.Discard, io.LimitReader(resp.Body, size), buf); err != nil {
					return
				}
				cs.bytes.Add(4 + size)
				cs.frames.Add(1)
				cs.mu.Lock()
				cs.cond.Broadcast()
				cs.mu.Unlock()
			}
		})
	}
	return cs
}

// waitFrames waits until the streams have received n frames in all.
func (cs *countingStreams) waitFrames(b *testing.B, n int64) {
	timer := time.AfterFunc(120*time.Second, func() {
		cs.mu.Lock()
		cs.cond.Broadcast()
		cs.mu.Unlock()
	})
	defer timer.Stop()
	limit := time.Now().Add(120 * time.Second)
	cs.mu.Lock()
	defer cs.mu.Unlock()
	for cs.frames.Load() < n {
		if time.Now().After(limit) {
			b.Fatalf("streams got %d frames, want %d", cs.frames.Load(), n)
		}
		cs.cond.Wait()
	}
}

func (cs *countingStreams) close() {
	cs.cancel()
	cs.wg.Wait()
}

// BenchmarkPolicyJoin streams N nodes of group:eng under a policy that
// lets the group reach each other on port 22 (and one tag:db node
// outside it), so every node's filter admits every other eng node and
// every node sees every join, then measures
// joins: the bytes each streaming node receives per join (filter-B/node:
// the frame, which holds the joined peer too) and the process CPU time
// per join (cpu-ms/join: the coordinator's work, as the streams only
// count bytes).
func BenchmarkPolicyJoin(b *testing.B) {
	for _, n := range []int{300, 1000} {
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) {
			c := startCoord(b, func(o *coordinator.Options) { o.KeepAliveInterval = 10 * time.Minute })
			setupACL(b, c, `{
				"groups": {"group:eng": ["alice"]},
				"tagOwners": {"tag:db": []},
				"acls": [{"action": "accept", "src": ["group:eng"], "dst": ["group:eng:22", "tag:db:5432"]}],
			}`, "alice")
			engKey := c.authKey(b, coordinator.AuthKeyOptions{Reusable: true, User: "alice"})
			// One node outside the group, so the group is not everyone.
			newNode(b, c.URL).register(b, c.authKey(b, coordinator.AuthKeyOptions{Tags: []string{"tag:db"}}), "db")
			nodes := make([]*node, n)
			var wg sync.WaitGroup
			work := make(chan int)
			for range 8 {
				wg.Go(func() {
					for i := range work {
						nodes[i] = newNode(b, c.URL)
						nodes[i].register(b, engKey, fmt.Sprintf("eng%d", i))
					}
				})
			}
			for i := range n {
				work <- i
			}
			close(work)
			wg.Wait()
			cs := openCountingStreams(b, c, nodes)
			defer cs.close()
			cs.waitFrames(b, int64(n)) // the full maps
			// Each stream coming online was a change every other stream
			// hears of; let those settle.
			want := int64(n)
			for {
				time.Sleep(500 * time.Millisecond)
				if got := cs.frames.Load(); got == want {
					break
				} else {
					want = got
				}
			}

			joiners := make([]*node, b.N)
			for i := range joiners {
				joiners[i] = newNode(b, c.URL)
			}
			frames0, bytes0, cpu0 := cs.frames.Load(), cs.bytes.Load(), cpuTime()
			b.ResetTimer()
			for i := range b.N {
				joiners[i].register(b, engKey, fmt.Sprintf("late%d", i))
				cs.waitFrames(b, frames0+int64((i+1)*n))
			}
			b.StopTimer()
			cpu := cpuTime() - cpu0
			b.ReportMetric(float64(cs.bytes.Load()-bytes0)/float64(b.N*n), "filter-B/node")
			b.ReportMetric(float64(cpu.Microseconds())/1000/float64(b.N), "cpu-ms/join")
		})
	}
}

// BenchmarkPolicyJoinSim measures a join under a policy at 1,000 and
// 4,000 nodes without real streams: every node has a simulated stream
// (StreamSim) that runs the delta and encoding a stream goroutine would,
// without sealing or writing, so the numbers are the coordinator's
// access and delta work. Every node's filter admits every other node
// (group:eng reaches group:eng on port 22; one tag:db node is outside
// the group). It reports the encoded bytes each node would receive per
// join (B/node/join) and the process CPU time per join (cpu-ms/join:
// registering the joiner over HTTP plus every stream's delta), first for
// nodes of version 11, which get every filter expanded as all nodes did
// before filters over sets, then for current nodes, with their ratios to
// the version 11 run of the same size (x-bytes, x-cpu).
func BenchmarkPolicyJoinSim(b *testing.B) {
	type cost struct{ bytes, cpu float64 }
	baseline := map[int]cost{}
	for _, n := range []int{1000, 4000} {
		for _, version := range []int{11, wire.CapabilityVersion} {
			b.Run(fmt.Sprintf("nodes=%d/version=%d", n, version), func(b *testing.B) {
				c := startCoord(b, func(o *coordinator.Options) { o.KeepAliveInterval = 10 * time.Minute })
				setupACL(b, c, `{
					"groups": {"group:eng": ["alice"]},
					"tagOwners": {"tag:db": []},
					"acls": [{"action": "accept", "src": ["group:eng"], "dst": ["group:eng:22", "tag:db:5432"]}],
				}`, "alice")
				engKey := c.authKey(b, coordinator.AuthKeyOptions{Reusable: true, User: "alice"})
				// One node outside the group, so the group is not everyone.
				newNode(b, c.URL).register(b, c.authKey(b, coordinator.AuthKeyOptions{Tags: []string{"tag:db"}}), "db")
				registerMany(b, c, engKey, "eng", n)
				sim, err := c.Server.NewStreamSimForTest(version)
				if err != nil {
					b.Fatal(err)
				}
				defer sim.Close()
				joiners := make([]*node, b.N)
				for i := range joiners {
					joiners[i] = newNode(b, c.URL)
				}
				var frames, bytes int
				cpu0 := cpuTime()
				b.ResetTimer()
				for i := range b.N {
					joiners[i].register(b, engKey, fmt.Sprintf("late%d", i))
					f, by, err := sim.Step()
					if err != nil {
						b.Fatal(err)
					}
					frames, bytes = frames+f, bytes+by
				}
				b.StopTimer()
				cpu := cpuTime() - cpu0
				if frames < b.N*n { // every eng node and the db node
					b.Fatalf("%d frames for %d joins of %d nodes, want one per node per join", frames, b.N, n)
				}
				got := cost{float64(bytes) / float64(frames), float64(cpu.Microseconds()) / 1000 / float64(b.N)}
				b.ReportMetric(got.bytes, "B/node/join")
				b.ReportMetric(got.cpu, "cpu-ms/join")
				if version == 11 {
					baseline[n] = got
				} else if base, ok := baseline[n]; ok {
					b.ReportMetric(got.bytes/base.bytes, "x-bytes")
					b.ReportMetric(got.cpu/base.cpu, "x-cpu")
				}
			})
		}
	}
}
