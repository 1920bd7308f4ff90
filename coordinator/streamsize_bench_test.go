package coordinator_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"beam.dev/beam/coordinator"
	"beam.dev/beam/wire"
)

var streamHeapProfile = flag.String("streamheap.profile", "", "write BenchmarkStreamHeap's heap profile, taken when it measures the heap, to this file")

// BenchmarkStreamHeap registers N nodes, opens a map stream for each with
// readers that count frames and keep nothing, and reports the Go heap in
// use once every stream has its full map and the streams are quiet
// (heap-MB: the coordinator's, since the readers hold nothing), how long
// that took (stream-ms), and how long one more node's join takes to
// reach every stream (fanout-ms). It is a profiling aid for the map
// stream; BenchmarkCoordinatorScale measures the real process.
func BenchmarkStreamHeap(b *testing.B) {
	for _, n := range []int{1000, 2000, 4000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			for b.Loop() {
				benchStreamHeap(b, n)
			}
		})
	}
}

func benchStreamHeap(b *testing.B, n int) {
	b.StopTimer()
	c := startCoord(b, func(o *coordinator.Options) { o.KeepAliveInterval = time.Hour })
	ak := c.authKey(b, coordinator.AuthKeyOptions{Reusable: true})
	privs := registerMany(b, c, ak, "n", n)
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base := ms.HeapAlloc

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	frames := make([]atomic.Int64, n)
	var total atomic.Int64
	var wg sync.WaitGroup
	tr := &http.Transport{MaxIdleConnsPerHost: -1}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr}
	epoch := c.epoch(b)
	start := time.Now()
	for i, priv := range privs {
		wg.Go(func() {
			clear, _ := json.Marshal(&wire.MapRequest{Version: wire.CapabilityVersion, NodeKey: priv.Public(), Stream: true, Epoch: epoch, Timestamp: time.Now()})
			env, _ := json.Marshal(wire.Envelope{NodeKey: priv.Public(), Sealed: priv.SealTo(c.priv.Public(), clear)})
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, c.URL+"/machine/map", bytes.NewReader(env))
			resp, err := hc.Do(req)
			if err != nil {
				if ctx.Err() == nil {
					b.Errorf("open stream: %v", err)
				}
				return
			}
			defer resp.Body.Close()
			var hdr [4]byte
			for {
				if _, err := io.ReadFull(resp.Body, hdr[:]); err != nil {
					return
				}
				if _, err := io.CopyN(io.Discard, resp.Body, int64(binary.BigEndian.Uint32(hdr[:]))); err != nil {
					return
				}
				frames[i].Add(1)
				total.Add(1)
			}
		})
	}
	// Every stream has a frame, and then nothing moves for a while.
	quiet := func(limit time.Duration) {
		deadline := time.Now().Add(limit)
		last, since := int64(-1), time.Now()
		for {
			all := true
			for i := range frames {
				if frames[i].Load() == 0 {
					all = false
					break
				}
			}
			t := total.Load()
			if t != last {
				last, since = t, time.Now()
			}
			if all && time.Since(since) > time.Second {
				return
			}
			if time.Now().After(deadline) {
				b.Fatalf("streams did not settle in %v", limit)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	quiet(5 * time.Minute)
	streamDur := time.Since(start) - time.Second
	runtime.GC()
	runtime.ReadMemStats(&ms)
	heap := ms.HeapAlloc - base
	if *streamHeapProfile != "" {
		f, err := os.Create(fmt.Sprintf("%s.%d", *streamHeapProfile, n))
		if err != nil {
			b.Fatal(err)
		}
		pprof.WriteHeapProfile(f)
		f.Close()
	}

	before := make([]int64, n)
	for i := range frames {
		before[i] = frames[i].Load()
	}
	start = time.Now()
	newNode(b, c.URL).register(b, ak, "newcomer")
	for i := 0; i < n; {
		if frames[i].Load() > before[i] {
			i++
			continue
		}
		if time.Since(start) > time.Minute {
			b.Fatalf("join reached %d of %d streams in a minute", i, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
	fanout := time.Since(start)
	cancel()
	wg.Wait()
	c.stop()
	b.ReportMetric(float64(heap)/(1<<20), "heap-MB")
	b.ReportMetric(float64(streamDur.Milliseconds()), "stream-ms")
	b.ReportMetric(float64(fanout.Milliseconds()), "fanout-ms")
	b.StartTimer()
}
