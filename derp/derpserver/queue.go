package derpserver

import (
	"sync"
	"sync/atomic"
)

// pktQueue is a client's FIFO of packets waiting to be written to it. It
// is bounded both in packets and in bytes; a push that goes over either
// bound drops the oldest packets (drop-oldest keeps the newest data, which
// is what a sender's congestion control is acting on). Its storage grows
// only while packets wait and is given back once the queue drains, so an
// idle client costs no queue memory however deep the bound.
//
// The bound has to hold a burst: when a sender's TCP connection to the
// relay recovers from a loss, the kernel releases everything queued behind
// the hole at once, and the relay reads it faster than the receiver's
// writer is scheduled. A queue of a few dozen packets turned each such
// release into a burst of drops that the tunnelled connections then had
// to recover from.
//
// The queues of a server's clients share a queueBudget: while the bytes
// queued for all clients together are over it, a push drops the oldest
// packets of its own queue first (down to the new one), so that many
// slow receivers cannot make the relay hold each one's full bound.
type pktQueue struct {
	maxPkts  int
	maxBytes int
	budget   *queueBudget  // nil: none
	ready    chan struct{} // 1-buffered: the queue may be non-empty

	mu     sync.Mutex // guards the fields below
	items  []pkt      // items[head:] are queued, oldest first
	head   int
	bytes  int  // sum of len(data) over items[head:]
	closed bool // its client is gone: pushes are dropped
}

// queueBudget bounds the bytes queued in a set of pktQueues together.
type queueBudget struct {
	max  int64
	used atomic.Int64
}

func (b *queueBudget) add(n int) {
	if b != nil {
		b.used.Add(int64(n))
	}
}

func (b *queueBudget) over() bool { return b != nil && b.used.Load() > b.max }

// releaseCap is the capacity above which a drained queue frees its slice.
const releaseCap = 64

func newPktQueue(maxPkts, maxBytes int, budget *queueBudget) *pktQueue {
	return &pktQueue{maxPkts: maxPkts, maxBytes: maxBytes, budget: budget, ready: make(chan struct{}, 1)}
}

// push appends p, dropping the oldest packets while the queue is over a
// bound, and returns how many were dropped. A packet larger than maxBytes
// on its own is still queued (alone). It never blocks.
func (q *pktQueue) push(p pkt) (dropped int) {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return 1
	}
	q.items = append(q.items, p)
	q.bytes += len(p.data)
	q.budget.add(len(p.data))
	for n := len(q.items) - q.head; n > 1 && (n > q.maxPkts || q.bytes > q.maxBytes || q.budget.over()); n-- {
		q.bytes -= len(q.items[q.head].data)
		q.budget.add(-len(q.items[q.head].data))
		q.items[q.head] = pkt{}
		q.head++
		dropped++
	}
	// Slide the live packets down once the dead prefix is the larger part,
	// so a queue that never fully drains does not grow without end.
	if q.head > releaseCap && q.head*2 > len(q.items) {
		n := copy(q.items, q.items[q.head:])
		clear(q.items[n:])
		q.items, q.head = q.items[:n], 0
	}
	q.mu.Unlock()
	q.signal()
	return dropped
}

// signal marks the queue ready, for a reader that stopped before it was
// empty as well as after a push.
func (q *pktQueue) signal() {
	select {
	case q.ready <- struct{}{}:
	default:
	}
}

// pop removes and returns the oldest packet; ok is false if the queue is
// empty.
func (q *pktQueue) pop() (p pkt, ok bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.head == len(q.items) {
		return pkt{}, false
	}
	p = q.items[q.head]
	q.items[q.head] = pkt{}
	q.head++
	q.bytes -= len(p.data)
	q.budget.add(-len(p.data))
	if q.head == len(q.items) {
		if cap(q.items) > releaseCap {
			q.items = nil
		} else {
			q.items = q.items[:0]
		}
		q.head = 0
	}
	return p, true
}

// len returns the number of queued packets.
func (q *pktQueue) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.items) - q.head
}

// close drops every queued packet and every later push, giving their
// bytes back to the budget: the client is gone.
func (q *pktQueue) close() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.closed = true
	q.budget.add(-q.bytes)
	q.items, q.head, q.bytes = nil, 0, 0
}
