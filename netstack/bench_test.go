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
	"sync"
	"syscall"
	"testing"
	"time"
)

// counter is the receiving end of a bulk transfer: it reads one
// connection continuously and counts the bytes, so a sender that writes
// for a fixed time never waits on a reader that does not know how much
// to expect.
type counter struct {
	mu    sync.Mutex
	moved sync.Cond // broadcast (with mu) after each read
	total int64
	err   error
}

// wait blocks until at least n bytes have arrived in total and returns
// the count, or fails tb if the connection ended first.
func (k *counter) wait(tb testing.TB, n int64) int64 {
	tb.Helper()
	k.mu.Lock()
	defer k.mu.Unlock()
	for k.total < n && k.err == nil {
		k.moved.Wait()
	}
	if k.total < n {
		tb.Fatalf("receiver counted %d bytes, want %d: %v", k.total, n, k.err)
	}
	return k.total
}

// sink accepts one connection on ln and counts what arrives on it until
// it ends or the benchmark is cleaned up.
func sink(tb testing.TB, ln net.Listener) *counter {
	k := &counter{}
	k.moved.L = &k.mu
	var conn net.Conn
	var cmu sync.Mutex
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			k.mu.Lock()
			k.err = err
			k.moved.Broadcast()
			k.mu.Unlock()
			return
		}
		cmu.Lock()
		conn = c
		cmu.Unlock()
		defer c.Close()
		buf := make([]byte, 256<<10)
		for {
			m, err := c.Read(buf)
			k.mu.Lock()
			k.total += int64(m)
			if err != nil {
				k.err = err
			}
			k.moved.Broadcast()
			k.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	tb.Cleanup(func() {
		ln.Close()
		cmu.Lock()
		if conn != nil {
			conn.Close()
		}
		cmu.Unlock()
		<-done
	})
	return k
}

// stream is one side of the throughput comparison: a connection, the
// counter at its far end and what has been sent on it so far.
type stream struct {
	c    net.Conn
	k    *counter
	sent int64
	buf  []byte
}

func newStream(c net.Conn, k *counter) *stream {
	return &stream{c: c, k: k, buf: make([]byte, 64<<10)}
}

// sendBytes writes n bytes in 64 KiB writes and returns how long it took
// until the receiver had counted them all.
func (s *stream) sendBytes(tb testing.TB, n int64) time.Duration {
	tb.Helper()
	start := time.Now()
	for end := s.sent + n; s.sent < end; {
		m := min(int64(len(s.buf)), end-s.sent)
		if _, err := s.c.Write(s.buf[:m]); err != nil {
			tb.Fatalf("write: %v", err)
		}
		s.sent += m
	}
	s.k.wait(tb, s.sent)
	return time.Since(start)
}

// sendFor writes in 64 KiB writes until d has passed, and returns the
// bytes written and how long it took until the receiver had counted them
// all.
func (s *stream) sendFor(tb testing.TB, d time.Duration) (int64, time.Duration) {
	tb.Helper()
	start := time.Now()
	from := s.sent
	for time.Since(start) < d {
		if _, err := s.c.Write(s.buf); err != nil {
			tb.Fatalf("write: %v", err)
		}
		s.sent += int64(len(s.buf))
	}
	s.k.wait(tb, s.sent)
	return s.sent - from, time.Since(start)
}

func mbits(n int64, d time.Duration) float64 { return float64(n) * 8 / d.Seconds() / 1e6 }

// BenchmarkTCPThroughput measures bulk TCP through the overlay between two
// engines against raw loopback TCP measured in the same run.
func BenchmarkTCPThroughput(b *testing.B) {
	for _, tc := range []struct {
		mtu int
		cc  string
	}{{1280, "bbr"}, {1280, "cubic"}, {1280, "reno"}, {8000, "bbr"}, {8000, "cubic"}, {32000, "cubic"}, {60000, "cubic"}} {
		b.Run(fmt.Sprintf("mtu=%d/cc=%s", tc.mtu, tc.cc), func(b *testing.B) {
			benchThroughput(b, tc.mtu, tc.cc)
		})
	}
}

// benchThroughput sends b.N MiB through the overlay and compares it with
// raw loopback TCP measured under the same conditions: the overlay bytes
// go in up to throughputRounds rounds, and after each overlay round the
// raw connection sends for as long as that round took. On a shared
// machine load comes and goes within a run; interleaving short rounds of
// equal duration exposes both sides to the same load, where a single
// baseline transfer before the overlay run did not. Every round counts:
// each side's throughput is its total bytes over its total time. The
// benchmark's time, MB/s and cpu-us/MiB cover the overlay rounds only.
//
// Rounds are kept short (15 MiB at 300x): TCP that has sent nothing for a
// retransmission timeout (200 ms at least) restarts from its initial
// window (RFC 5681), so raw rounds much longer than that would cost the
// overlay its window at every round, which no bulk transfer pays.
func benchThroughput(b *testing.B, mtu int, cc string) {
	const chunk = 1 << 20
	const throughputRounds = 20
	rl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	rk := sink(b, rl)
	rc, err := net.Dial("tcp", rl.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer rc.Close()
	raw := newStream(rc, rk)

	nodes := newNodes(b, 2, func(_ int, o *Options) {
		o.MTU = mtu
		o.CongestionControl = cc
	})
	a, z := nodes[0], nodes[1]
	ln, err := z.e.Listen("tcp", fmt.Sprintf("%v:9000", z.v4))
	if err != nil {
		b.Fatal(err)
	}
	ok := sink(b, ln)
	oc, err := a.e.DialContext(context.Background(), "tcp", fmt.Sprintf("%v:9000", z.v4))
	if err != nil {
		b.Fatal(err)
	}
	defer oc.Close()
	overlay := newStream(oc, ok)
	// Warm up (handshake, window growth) both.
	raw.sendBytes(b, 8<<20)
	overlay.sendBytes(b, 8<<20)

	b.SetBytes(chunk)
	b.ResetTimer()
	total := int64(b.N) * chunk
	rounds := int64(min(b.N, throughputRounds))
	var cpu, od, rd time.Duration
	var rawBytes int64
	for i := range rounds {
		n := total / rounds
		if i < total%rounds {
			n++
		}
		cpu0 := cpuTime()
		d := overlay.sendBytes(b, n)
		cpu += cpuTime() - cpu0
		od += d
		b.StopTimer()
		rn, d := raw.sendFor(b, d)
		rawBytes += rn
		rd += d
		b.StartTimer()
	}
	b.StopTimer()
	b.ReportMetric(float64(cpu.Microseconds())/float64(total>>20), "cpu-us/MiB")
	ombit, rmbit := mbits(total, od), mbits(rawBytes, rd)
	b.ReportMetric(rmbit, "raw-Mbit/s")
	b.ReportMetric(ombit, "overlay-Mbit/s")
	b.ReportMetric(ombit/rmbit, "ratio")
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
