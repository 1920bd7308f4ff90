package derpserver

import (
	"testing"

	"beam.dev/beam/types/key"
)

// TestFairQueue: a flow's packets leave in order; flows take turns by
// bytes (a flow of small packets sends a full quantum's worth per turn of
// one big packet); over the bound, the flow holding the most bytes loses
// its oldest packet, however the packets arrived; a drained queue keeps
// no flows.
func TestFairQueue(t *testing.T) {
	big, small := key.NewNode().Public(), key.NewNode().Public()
	mk := func(src key.NodePublic, i, size int) pkt {
		p := qpkt(i, size)
		p.src = src
		return p
	}
	q := newFairQueue(1000, 10*fairQuantum)
	for i := range 4 {
		q.push(mk(big, i, fairQuantum))
	}
	for i := range 200 {
		q.push(mk(small, i, 1000))
	}
	// First turn: big (first to arrive) sends one packet; then small
	// sends fairQuantum/1000 packets; then big again.
	var order []key.NodePublic
	var ids []int
	for range 1 + fairQuantum/1000 + 1 {
		p, ok := q.pop()
		if !ok {
			t.Fatal("queue empty early")
		}
		order = append(order, p.src)
		ids = append(ids, qid(p))
	}
	if order[0] != big || order[len(order)-1] != big || ids[len(ids)-1] != 1 {
		t.Errorf("turns: first %v last %v (id %d), want big, then small's quantum, then big's second packet", order[0] == big, order[len(order)-1] == big, ids[len(ids)-1])
	}
	for i, src := range order[1 : len(order)-1] {
		if src != small || ids[i+1] != i {
			t.Fatalf("packet %d of small's turn: small=%v id %d, want small's packet %d", i, src == small, ids[i+1], i)
		}
	}

	// Over the byte bound: big holds the most and pays, even when small
	// pushes.
	q = newFairQueue(1000, 4*fairQuantum)
	for i := range 3 {
		q.push(mk(big, i, fairQuantum))
	}
	q.push(mk(small, 0, 1000))
	if d := q.push(mk(small, 1, fairQuantum)); d != 1 {
		t.Fatalf("push over the bound dropped %d, want 1", d)
	}
	if f := q.flows[big]; f == nil || f.bytes != 2*fairQuantum || qid(f.items[f.head]) != 1 {
		t.Fatalf("big's flow after the drop: %+v, want its oldest packet gone", f)
	}
	if f := q.flows[small]; f == nil || len(f.items)-f.head != 2 {
		t.Fatalf("small's flow after the drop: %+v, want both packets", f)
	}
	for {
		if _, ok := q.pop(); !ok {
			break
		}
	}
	if q.len() != 0 || len(q.flows) != 0 || len(q.active) != 0 || q.bytes != 0 {
		t.Errorf("drained queue holds %d packets, %d flows, %d active, %d bytes", q.len(), len(q.flows), len(q.active), q.bytes)
	}
}
