package derpserver

import (
	"sync"

	"beam.dev/beam/derp"
	"beam.dev/beam/types/key"
)

// fairQueue is a mesh link's queue of packets to forward, shared by every
// client whose packets cross the link. Each source (node key) has its own
// FIFO, and the link takes turns between them by deficit round robin, so
// each source gets an equal share of the link's bytes whatever the size
// of its packets. It is bounded in packets and bytes in all; a push that
// goes over either bound drops the oldest packet of the pushing source if
// it holds at least an equal share of the bytes, else of the source
// holding the most. A client that floods the link thus loses its own
// packets, not those of a client sending at a modest pace.
//
// Like pktQueue, it holds storage only while packets wait.
type fairQueue struct {
	maxPkts  int
	maxBytes int
	ready    chan struct{} // 1-buffered: the queue may be non-empty

	mu     sync.Mutex // guards the fields below
	flows  map[key.NodePublic]*flow
	active []*flow // non-empty flows in turn order; active[next] is served next
	next   int
	pkts   int // packets queued in all flows
	bytes  int // their bytes
}

// flow is one source's packets in a fairQueue.
type flow struct {
	items    []pkt // items[head:] are queued, oldest first
	head     int
	bytes    int
	deficit  int  // bytes it may still send this turn
	credited bool // its turn has begun (deficit topped up)
}

// fairQuantum is what a flow may send per turn: one packet of the
// largest size, so every turn sends at least one packet.
const fairQuantum = derp.MaxPacketSize

func newFairQueue(maxPkts, maxBytes int) *fairQueue {
	return &fairQueue{maxPkts: maxPkts, maxBytes: maxBytes, ready: make(chan struct{}, 1), flows: make(map[key.NodePublic]*flow)}
}

// push queues p under its source, dropping the oldest packets of the
// largest flows while the queue is over a bound, and returns how many
// were dropped. It never blocks.
func (q *fairQueue) push(p pkt) (dropped int) {
	q.mu.Lock()
	f := q.flows[p.src]
	if f == nil {
		f = &flow{}
		q.flows[p.src] = f
		q.active = append(q.active, f)
	}
	f.items = append(f.items, p)
	f.bytes += len(p.data)
	q.pkts++
	q.bytes += len(p.data)
	for q.pkts > 1 && (q.pkts > q.maxPkts || q.bytes > q.maxBytes) {
		if f.head < len(f.items) && f.bytes*len(q.active) >= q.bytes {
			// The pushing flow holds at least its share: it pays,
			// without a search (the common case, a flood).
			q.takeLocked(f)
		} else {
			q.dropFromLargestLocked()
		}
		dropped++
	}
	q.mu.Unlock()
	q.signal()
	return dropped
}

// dropFromLargestLocked drops the oldest packet of the flow holding the
// most bytes. q.mu must be held and the queue non-empty.
func (q *fairQueue) dropFromLargestLocked() {
	var big *flow
	for _, f := range q.active {
		if big == nil || f.bytes > big.bytes {
			big = f
		}
	}
	q.takeLocked(big)
}

// takeLocked removes and returns f's oldest packet, and forgets f once it
// is empty. q.mu must be held.
func (q *fairQueue) takeLocked(f *flow) pkt {
	p := f.items[f.head]
	f.items[f.head] = pkt{}
	f.head++
	f.bytes -= len(p.data)
	q.pkts--
	q.bytes -= len(p.data)
	if f.head == len(f.items) {
		delete(q.flows, p.src)
		for i, a := range q.active {
			if a == f {
				q.active = append(q.active[:i], q.active[i+1:]...)
				if i < q.next {
					q.next--
				}
				break
			}
		}
		if q.next >= len(q.active) {
			q.next = 0
		}
		if len(q.active) == 0 {
			q.active = nil
		}
		return p
	}
	// Slide the live packets down once the dead prefix is the larger
	// part, so a flow that never drains does not grow without end.
	if f.head > releaseCap && f.head*2 > len(f.items) {
		n := copy(f.items, f.items[f.head:])
		clear(f.items[n:])
		f.items, f.head = f.items[:n], 0
	}
	return p
}

// signal marks the queue ready.
func (q *fairQueue) signal() {
	select {
	case q.ready <- struct{}{}:
	default:
	}
}

// pop removes and returns the next packet in deficit round robin order;
// ok is false if the queue is empty.
func (q *fairQueue) pop() (p pkt, ok bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(q.active) > 0 {
		f := q.active[q.next]
		if !f.credited {
			f.deficit += fairQuantum
			f.credited = true
		}
		if n := len(f.items[f.head].data); n <= f.deficit {
			f.deficit -= n
			return q.takeLocked(f), true
		}
		// Its turn is over: the rest of its deficit waits for the next.
		f.credited = false
		q.next = (q.next + 1) % len(q.active)
	}
	return pkt{}, false
}

// len returns the number of queued packets.
func (q *fairQueue) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.pkts
}
