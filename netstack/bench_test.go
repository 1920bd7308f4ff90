package netstack

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// transfer sends n bytes over c in 64 KiB writes, waits for the reader to
// count them all, and returns how long that took.
func transfer(tb testing.TB, c net.Conn, n int64, got <-chan int64) time.Duration {
	tb.Helper()
	buf := make([]byte, 64<<10)
	start := time.Now()
	for sent := int64(0); sent < n; {
		m := min(int64(len(buf)), n-sent)
		if _, err := c.Write(buf[:m]); err != nil {
			tb.Fatalf("write: %v", err)
		}
		sent += m
	}
	if r := <-got; r != n {
		tb.Fatalf("receiver counted %d bytes, want %d", r, n)
	}
	return time.Since(start)
}

// sink accepts one connection and reports, for each request on want, the
// byte count once that many bytes arrived.
func sink(tb testing.TB, ln net.Listener) (want chan<- int64, got <-chan int64) {
	w := make(chan int64)
	g := make(chan int64)
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 256<<10)
		for n := range w {
			var total int64
			for total < n {
				m, err := c.Read(buf)
				total += int64(m)
				if err != nil {
					break
				}
			}
			g <- total
		}
	}()
	tb.Cleanup(func() {
		close(w)
		ln.Close()
		<-done
	})
	return w, g
}

func mbits(n int64, d time.Duration) float64 { return float64(n) * 8 / d.Seconds() / 1e6 }

// BenchmarkTCPThroughput measures bulk TCP through the overlay between two
// engines against raw loopback TCP measured in the same run.
func BenchmarkTCPThroughput(b *testing.B) {
	for _, tc := range []struct {
		mtu int
		cc  string
	}{{1280, "cubic"}, {1280, "reno"}, {8000, "cubic"}, {32000, "cubic"}, {60000, "cubic"}} {
		b.Run(fmt.Sprintf("mtu=%d/cc=%s", tc.mtu, tc.cc), func(b *testing.B) {
			benchThroughput(b, tc.mtu, tc.cc)
		})
	}
}

func benchThroughput(b *testing.B, mtu int, cc string) {
	const chunk = 1 << 20
	const baseBytes = 256 << 20
	// Baseline: raw loopback TCP.
	rl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	rw, rg := sink(b, rl)
	rc, err := net.Dial("tcp", rl.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer rc.Close()
	rw <- baseBytes
	raw := mbits(baseBytes, transfer(b, rc, baseBytes, rg))

	nodes := newNodes(b, 2, func(_ int, o *Options) {
		o.MTU = mtu
		o.CongestionControl = cc
	})
	a, z := nodes[0], nodes[1]
	ln, err := z.e.Listen("tcp", fmt.Sprintf("%v:9000", z.v4))
	if err != nil {
		b.Fatal(err)
	}
	ow, og := sink(b, ln)
	oc, err := a.e.DialContext(context.Background(), "tcp", fmt.Sprintf("%v:9000", z.v4))
	if err != nil {
		b.Fatal(err)
	}
	defer oc.Close()
	// Warm up (handshake, window growth).
	ow <- 8 << 20
	transfer(b, oc, 8<<20, og)

	b.SetBytes(chunk)
	b.ResetTimer()
	total := int64(b.N) * chunk
	ow <- total
	cpu0 := cpuTime()
	d := transfer(b, oc, total, og)
	cpu := cpuTime() - cpu0
	b.StopTimer()
	b.ReportMetric(float64(cpu.Microseconds())/float64(total>>20), "cpu-us/MiB")
	overlay := mbits(total, d)
	b.ReportMetric(raw, "raw-Mbit/s")
	b.ReportMetric(overlay, "overlay-Mbit/s")
	b.ReportMetric(overlay/raw, "ratio")
}

// cpuTime returns the CPU time (user and system) the process used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// pingPong does n 1-byte round trips on c.
func pingPong(tb testing.TB, c net.Conn, n int) time.Duration {
	buf := []byte{1}
	start := time.Now()
	for range n {
		if _, err := c.Write(buf); err != nil {
			tb.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			tb.Fatal(err)
		}
	}
	return time.Since(start)
}

// BenchmarkTCPPingPong measures 1-byte TCP round trips over the overlay
// against loopback TCP measured in the same run.
func BenchmarkTCPPingPong(b *testing.B) {
	const baseN = 5000
	rl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	tcpEchoServer(b, rl)
	rc, err := net.Dial("tcp", rl.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer rc.Close()
	pingPong(b, rc, 100)
	raw := float64(pingPong(b, rc, baseN).Nanoseconds()) / baseN / 1e3

	nodes := newNodes(b, 2, nil)
	a, z := nodes[0], nodes[1]
	ln, err := z.e.Listen("tcp", ":7")
	if err != nil {
		b.Fatal(err)
	}
	tcpEchoServer(b, ln)
	oc, err := a.e.DialContext(context.Background(), "tcp", fmt.Sprintf("%v:7", z.v4))
	if err != nil {
		b.Fatal(err)
	}
	defer oc.Close()
	pingPong(b, oc, 100)
	b.ResetTimer()
	d := pingPong(b, oc, b.N)
	b.StopTimer()
	overlay := float64(d.Nanoseconds()) / float64(b.N) / 1e3
	b.ReportMetric(raw, "raw-us/rtt")
	b.ReportMetric(overlay, "overlay-us/rtt")
	b.ReportMetric(overlay/raw, "ratio")
}

// rssBytes returns the process's resident set size.
func rssBytes(tb testing.TB) uint64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		tb.Fatalf("read RSS: %v", err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				tb.Fatalf("parse VmRSS %q: %v", rest, err)
			}
			return kb << 10
		}
	}
	tb.Fatal("no VmRSS")
	return 0
}

func heapInuse() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

// idleMemory starts three engines, each with the other two as peers and
// sessions established, and returns the heap one engine holds and the
// process RSS.
func idleMemory(tb testing.TB) (perEngine int64, rss uint64) {
	before := heapInuse()
	nodes := newNodes(tb, 3, nil)
	for _, n := range nodes {
		ln, err := n.e.Listen("tcp", ":7")
		if err != nil {
			tb.Fatal(err)
		}
		tcpEchoServer(tb, ln)
	}
	for i, n := range nodes {
		for j, m := range nodes {
			if i != j {
				checkTCPEcho(tb, context.Background(), n, fmt.Sprintf("%v:7", m.v4))
			}
		}
	}
	return (int64(heapInuse()) - int64(before)) / 3, rssBytes(tb)
}

// BenchmarkIdleMemory reports the heap an idle engine with two peers
// (sessions established) holds, and the process RSS with three of them.
// The measurement is taken once; b.N does not scale it.
func BenchmarkIdleMemory(b *testing.B) {
	per, rss := idleMemory(b)
	for b.Loop() {
	}
	b.ReportMetric(float64(per)/(1<<20), "heap-MiB/engine")
	b.ReportMetric(float64(rss)/(1<<20), "process-RSS-MiB")
}

// TestIdleMemory bounds what an idle engine with two peers costs.
func TestIdleMemory(t *testing.T) {
	per, rss := idleMemory(t)
	t.Logf("idle engine with 2 peers: %.1f MiB heap; process RSS with 3 engines %.1f MiB", float64(per)/(1<<20), float64(rss)/(1<<20))
	if per > 12<<20 {
		t.Errorf("idle engine holds %.1f MiB of heap, want under 12 MiB", float64(per)/(1<<20))
	}
	// The race detector's shadow memory makes RSS meaningless under -race.
	if !raceEnabled && rss > 40<<20 {
		t.Errorf("process RSS with 3 idle engines is %.1f MiB, want under 40 MiB", float64(rss)/(1<<20))
	}
}
