package netstack

import (
	"fmt"
	"io"
	"net"
	"testing"
	"time"
)

// readGaps reads c to EOF and returns the byte count and the longest
// time between two reads that returned data.
func readGaps(c net.Conn) (n int64, maxGap time.Duration, err error) {
	buf := make([]byte, 256<<10)
	last := time.Now()
	for {
		m, err := c.Read(buf)
		if m > 0 {
			now := time.Now()
			maxGap = max(maxGap, now.Sub(last))
			last = now
			n += int64(m)
		}
		if err == io.EOF {
			return n, maxGap, nil
		}
		if err != nil {
			return n, maxGap, err
		}
	}
}

// hogCPU keeps n goroutines busy until the test ends, so the data plane
// competes for the process's CPUs the way it does on a loaded machine.
func hogCPU(t *testing.T, n int) {
	stop := make(chan struct{})
	done := make(chan struct{})
	for range n {
		go func() {
			defer func() { done <- struct{}{} }()
			x := uint64(1)
			for {
				select {
				case <-stop:
					return
				default:
				}
				for range 1 << 14 {
					x = x*6364136223846793005 + 1442695040888963407
				}
			}
		}()
	}
	t.Cleanup(func() {
		close(stop)
		for range n {
			<-done
		}
	})
}

// TestBulkTransferNoStall moves bulk data through the overlay between two
// engines while the process's CPUs are contended, and fails if the
// receiver ever waits more than maxStallGap for data. Before the link
// applied back-pressure, a full link queue dropped bursts of segments; the
// retransmission timeouts and their backoff that followed stalled
// transfers for seconds (once 113 s for 300 MiB).
func TestBulkTransferNoStall(t *testing.T) {
	size := int64(256 << 20)
	if raceEnabled {
		size = 32 << 20
	}
	// A machine busy with other work can deschedule the whole process for
	// a while, and ACKs delayed that long fire a spurious retransmission
	// timeout or two; a stall is a gap well beyond that. Measured under
	// -race: 0.11-0.22 s with the suite alone, up to 1.97 s with the
	// machine loaded six times over (6 timeouts in a row, no link drops).
	// The stalls this guards against lasted tens of seconds, and the link
	// drops that caused them are checked below on their own.
	const maxStallGap = 3 * time.Second
	nodes := newNodes(t, 2, nil)
	a, z := nodes[0], nodes[1]
	ln, err := z.e.Listen("tcp", fmt.Sprintf("%v:9000", z.v4))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type result struct {
		n   int64
		gap time.Duration
		err error
	}
	res := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			res <- result{err: err}
			return
		}
		defer c.Close()
		n, gap, err := readGaps(c)
		res <- result{n, gap, err}
	}()
	c, err := a.e.DialContext(t.Context(), "tcp", fmt.Sprintf("%v:9000", z.v4))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	hogCPU(t, 2)
	start := time.Now()
	buf := make([]byte, 64<<10)
	for sent := int64(0); sent < size; sent += int64(len(buf)) {
		if _, err := c.Write(buf); err != nil {
			t.Fatalf("write after %d bytes: %v", sent, err)
		}
	}
	if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		t.Fatalf("close write: %v", err)
	}
	r := <-res
	d := time.Since(start)
	as, zs := a.e.stack.Stats(), z.e.stack.Stats()
	t.Logf("%d MiB in %v (%.0f Mbit/s), longest read gap %v", r.n>>20, d.Round(time.Millisecond), mbits(r.n, d), r.gap)
	t.Logf("sender %+v; receiver %+v; no-session drops %d", as, zs, a.e.noSessionDrops.Load())
	if r.err != nil || r.n != size {
		t.Fatalf("received %d bytes (err %v), want %d", r.n, r.err, size)
	}
	if r.gap > maxStallGap {
		t.Errorf("longest gap between reads %v, want at most %v", r.gap, maxStallGap)
	}
	if as.LinkDrops != 0 {
		t.Errorf("sender's link dropped %d packets, want 0", as.LinkDrops)
	}
}
