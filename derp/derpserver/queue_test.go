package derpserver

import (
	"bytes"
	"testing"
)

func qpkt(i, size int) pkt {
	d := make([]byte, size)
	d[0], d[1] = byte(i>>8), byte(i)
	return pkt{data: d}
}

func qid(p pkt) int { return int(p.data[0])<<8 | int(p.data[1]) }

func TestPktQueueFIFOAndBounds(t *testing.T) {
	q := newPktQueue(4, 1<<20, nil)
	for i := range 3 {
		if d := q.push(qpkt(i, 100)); d != 0 {
			t.Fatalf("push %d dropped %d under the bound", i, d)
		}
	}
	if p, _ := q.pop(); qid(p) != 0 {
		t.Fatalf("pop = %d, want 0", qid(p))
	}
	// Over the packet bound: the oldest go first.
	dropped := 0
	for i := 3; i < 10; i++ {
		dropped += q.push(qpkt(i, 100))
	}
	if q.len() != 4 || dropped != 5 {
		t.Fatalf("len %d dropped %d, want 4 and 5", q.len(), dropped)
	}
	for want := 6; want < 10; want++ {
		p, ok := q.pop()
		if !ok || qid(p) != want {
			t.Fatalf("pop = %d, %v; want %d", qid(p), ok, want)
		}
	}
	if _, ok := q.pop(); ok {
		t.Fatal("pop on an empty queue succeeded")
	}

	// The byte bound: 3 packets of 400 bytes do not fit in 1000.
	q = newPktQueue(100, 1000, nil)
	q.push(qpkt(1, 400))
	q.push(qpkt(2, 400))
	if d := q.push(qpkt(3, 400)); d != 1 {
		t.Fatalf("push over the byte bound dropped %d, want 1", d)
	}
	if q.bytes != 800 || q.len() != 2 {
		t.Fatalf("bytes %d len %d, want 800 and 2", q.bytes, q.len())
	}
	// A packet larger than the bound on its own is kept, alone.
	if d := q.push(qpkt(4, 5000)); d != 2 || q.len() != 1 {
		t.Fatalf("oversized push dropped %d, len %d; want 2 and 1", d, q.len())
	}
	if p, _ := q.pop(); qid(p) != 4 || len(p.data) != 5000 {
		t.Fatal("oversized packet not delivered")
	}
}

// TestPktQueueBurstThenIdle checks that a queue absorbs a burst far deeper
// than the old fixed 32 slots, gives its memory back once drained, and
// keeps its storage bounded when it never drains completely.
func TestPktQueueBurstThenIdle(t *testing.T) {
	q := newPktQueue(4096, 2<<20, nil)
	for i := range 1500 {
		if d := q.push(qpkt(i, 1300)); d != 0 {
			t.Fatalf("burst packet %d dropped %d", i, d)
		}
	}
	for i := range 1500 {
		p, ok := q.pop()
		if !ok || qid(p) != i {
			t.Fatalf("pop %d = %d, %v", i, qid(p), ok)
		}
	}
	if q.items != nil || q.bytes != 0 {
		t.Fatalf("drained queue holds cap %d, %d bytes; want released storage", cap(q.items), q.bytes)
	}

	// Steady state with a backlog of 100: storage stays near the backlog.
	for i := range 100 {
		q.push(qpkt(i, 10))
	}
	for i := 100; i < 100000; i++ {
		q.push(qpkt(i%65536, 10))
		q.pop()
	}
	if q.len() != 100 || cap(q.items) > 1024 {
		t.Fatalf("len %d cap %d after a long steady backlog; want 100 and a small cap", q.len(), cap(q.items))
	}
}

func TestPktQueueReady(t *testing.T) {
	q := newPktQueue(8, 1<<20, nil)
	select {
	case <-q.ready:
		t.Fatal("empty queue signalled ready")
	default:
	}
	q.push(pkt{data: bytes.Repeat([]byte{1}, 10)})
	q.push(pkt{data: bytes.Repeat([]byte{2}, 10)})
	select {
	case <-q.ready:
	default:
		t.Fatal("push did not signal ready")
	}
}

// TestQueueBudget: queues sharing a budget hold at most about the budget
// together. While over it, a push drops its own queue's oldest packets,
// down to the new one; a closed queue gives its bytes back and drops what
// is pushed to it.
func TestQueueBudget(t *testing.T) {
	b := &queueBudget{max: 10_000}
	q1, q2 := newPktQueue(100, 1<<20, b), newPktQueue(100, 1<<20, b)
	for i := range 8 {
		if d := q1.push(qpkt(i, 1000)); d != 0 {
			t.Fatalf("push %d to q1 dropped %d under the budget", i, d)
		}
	}
	dropped := 0
	for i := range 5 {
		dropped += q2.push(qpkt(i, 1000))
	}
	if used := b.used.Load(); used != 10_000 || dropped != 3 || q2.len() != 2 {
		t.Fatalf("after q2's pushes: budget used %d, q2 dropped %d and holds %d; want 10000, 3, 2", used, dropped, q2.len())
	}
	// q1, which holds the most, pays when it is pushed to over the budget.
	if d := q1.push(qpkt(8, 4000)); d != 4 || q1.len() != 5 {
		t.Fatalf("a 4000-byte push to q1 over the budget dropped %d, left %d; want 4 dropped, 5 left", d, q1.len())
	}
	if p, _ := q1.pop(); qid(p) != 4 {
		t.Errorf("q1's oldest after the drop: %d, want 4", qid(p))
	}
	q1.close()
	if used := b.used.Load(); used != int64(q2.bytes) {
		t.Errorf("closed q1: budget used %d, want q2's %d bytes", used, q2.bytes)
	}
	if d := q1.push(qpkt(9, 100)); d != 1 || q1.len() != 0 {
		t.Errorf("push to a closed queue: dropped %d, holds %d; want dropped", d, q1.len())
	}
	for q2.len() > 0 {
		q2.pop()
	}
	if used := b.used.Load(); used != 0 {
		t.Errorf("budget used %d with every queue empty or closed, want 0", used)
	}
}
