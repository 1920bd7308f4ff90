package gv

import (
	"context"
	"sync"
	"sync/atomic"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// link is the stack's NIC: outbound packets wait in a queue bounded in
// bytes for the TUN reader (wireguard-go); inbound packets go straight to
// the stack's dispatcher.
//
// When the queue is full, WritePackets blocks until the reader makes room
// (or the link closes) instead of dropping. A drop here is invisible to
// gVisor: the NIC reports success, TCP only learns of the loss from
// missing ACKs, and a burst of tail drops (the reader is descheduled for a
// few milliseconds on a busy machine) ends in retransmission timeouts
// whose exponential backoff stalled transfers for seconds to minutes.
// Blocking the writer instead is the back-pressure a kernel gives a socket
// whose device queue is full: the sending goroutine waits, nothing is
// lost, and TCP's pacing follows how fast WireGuard actually drains.
//
// The bound is in bytes because with segmentation offload one queued TCP
// packet may carry 64 KiB. It is kept short so that a bulk sender's excess
// waits in its send buffer (untimed) rather than in the queue, where it
// would add to the round-trip time of every connection and make
// retransmission timeouts fire on ACKs that are merely late when the
// machine is busy.
//
// Writers that block are gVisor's TCP goroutines and the goroutines of
// applications writing to sockets; the reader never waits on them (it
// hands packets to wireguard-go, which encrypts and sends them on the
// bind), so blocking cannot deadlock. Close unblocks every writer.
type link struct {
	mtu     uint32
	gsoKind stack.SupportedGSO
	caps    stack.LinkEndpointCapabilities
	budget  int // queued bytes above which writers wait

	mu     sync.Mutex // guards the following fields
	room   sync.Cond  // signaled (with mu) when the reader takes packets or the link closes
	q      []*stack.PacketBuffer
	head   int // index in q of the oldest packet
	n      int // packets queued
	bytes  int // bytes queued
	closed bool

	ready chan struct{} // capacity 1: a packet was queued
	done  chan struct{} // closed by Close

	dmu sync.RWMutex // guards d
	d   stack.NetworkDispatcher

	// waits counts WritePackets calls that found the queue full and had
	// to wait; drops counts packets discarded because the link closed
	// (or, never expected, that the TUN reader could not segment).
	waits atomic.Uint64
	drops atomic.Uint64

	// onWaitForTest, if set (only by tests, with mu held or before any
	// traffic), runs each time a writer starts waiting for room.
	onWaitForTest func()
}

var (
	_ stack.LinkEndpoint = (*link)(nil)
	_ stack.GSOEndpoint  = (*link)(nil)
)

// newLink returns a link whose queue holds at least one packet and, past
// that, at most budget bytes.
func newLink(budget int, mtu uint32, caps stack.LinkEndpointCapabilities, gso stack.SupportedGSO) *link {
	l := &link{
		mtu:     mtu,
		gsoKind: gso,
		caps:    caps,
		budget:  budget,
		q:       make([]*stack.PacketBuffer, 64),
		ready:   make(chan struct{}, 1),
		done:    make(chan struct{}),
	}
	l.room.L = &l.mu
	return l
}

// WritePackets implements stack.LinkWriter. It queues every packet,
// waiting for room when the queue is full, and fails only once the link
// is closed.
func (l *link) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	n := 0
	l.mu.Lock()
	for _, pkt := range pkts.AsSlice() {
		size := pkt.Size()
		if !l.closed && l.n > 0 && l.bytes+size > l.budget {
			l.waits.Add(1)
			if l.onWaitForTest != nil {
				l.onWaitForTest()
			}
			for !l.closed && l.n > 0 && l.bytes+size > l.budget {
				l.room.Wait()
			}
		}
		if l.closed {
			break
		}
		l.pushLocked(pkt.IncRef(), size)
		n++
	}
	l.mu.Unlock()
	if n > 0 {
		select {
		case l.ready <- struct{}{}:
		default:
		}
	}
	if n < pkts.Len() {
		l.drops.Add(uint64(pkts.Len() - n))
		if n == 0 {
			return 0, &tcpip.ErrClosedForSend{}
		}
	}
	return n, nil
}

func (l *link) pushLocked(pkt *stack.PacketBuffer, size int) {
	if l.n == len(l.q) {
		q := make([]*stack.PacketBuffer, 2*len(l.q))
		for i := range l.n {
			q[i] = l.q[(l.head+i)%len(l.q)]
		}
		l.q, l.head = q, 0
	}
	l.q[(l.head+l.n)%len(l.q)] = pkt
	l.n++
	l.bytes += size
}

// read returns the next outbound packet, blocking until there is one. It
// returns nil once ctx is done or the link is closed.
func (l *link) read(ctx context.Context) *stack.PacketBuffer {
	for {
		if pkt := l.tryRead(); pkt != nil {
			return pkt
		}
		select {
		case <-l.ready:
		case <-ctx.Done():
			return nil
		case <-l.done:
			return nil
		}
	}
}

// tryRead returns the next outbound packet or nil if none is queued.
func (l *link) tryRead() *stack.PacketBuffer {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n == 0 {
		return nil
	}
	pkt := l.q[l.head]
	l.q[l.head] = nil
	l.head = (l.head + 1) % len(l.q)
	l.n--
	l.bytes -= pkt.Size()
	l.room.Broadcast()
	return pkt
}

// queued returns the number of outbound packets waiting.
func (l *link) queued() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.n
}

// Close implements stack.NetworkLinkEndpoint. It unblocks writers and
// discards queued packets; later writes fail. It is idempotent.
func (l *link) Close() {
	l.mu.Lock()
	if !l.closed {
		l.closed = true
		close(l.done)
	}
	l.room.Broadcast()
	l.mu.Unlock()
	for pkt := l.tryRead(); pkt != nil; pkt = l.tryRead() {
		pkt.DecRef()
		l.drops.Add(1)
	}
}

// Attach implements stack.NetworkLinkEndpoint.
func (l *link) Attach(d stack.NetworkDispatcher) {
	l.dmu.Lock()
	l.d = d
	l.dmu.Unlock()
}

func (l *link) dispatcher() stack.NetworkDispatcher {
	l.dmu.RLock()
	defer l.dmu.RUnlock()
	return l.d
}

// IsAttached implements stack.NetworkLinkEndpoint.
func (l *link) IsAttached() bool { return l.dispatcher() != nil }

// MTU implements stack.NetworkLinkEndpoint.
func (l *link) MTU() uint32 { return l.mtu }

// SetMTU implements stack.NetworkLinkEndpoint; the MTU is fixed at
// creation, so it does nothing.
func (l *link) SetMTU(uint32) {}

// MaxHeaderLength implements stack.NetworkLinkEndpoint: there is no link
// header.
func (*link) MaxHeaderLength() uint16 { return 0 }

// LinkAddress implements stack.NetworkLinkEndpoint: there is none.
func (*link) LinkAddress() tcpip.LinkAddress { return "" }

// SetLinkAddress implements stack.NetworkLinkEndpoint; it does nothing.
func (*link) SetLinkAddress(tcpip.LinkAddress) {}

// Capabilities implements stack.NetworkLinkEndpoint.
func (l *link) Capabilities() stack.LinkEndpointCapabilities { return l.caps }

// Wait implements stack.NetworkLinkEndpoint; the link has no goroutines.
func (*link) Wait() {}

// ARPHardwareType implements stack.NetworkLinkEndpoint.
func (*link) ARPHardwareType() header.ARPHardwareType { return header.ARPHardwareNone }

// AddHeader implements stack.NetworkLinkEndpoint; there is no header.
func (*link) AddHeader(*stack.PacketBuffer) {}

// ParseHeader implements stack.NetworkLinkEndpoint; there is no header.
func (*link) ParseHeader(*stack.PacketBuffer) bool { return true }

// SetOnCloseAction implements stack.NetworkLinkEndpoint.
func (*link) SetOnCloseAction(func()) {}

// GSOMaxSize implements stack.GSOEndpoint: the largest TCP packet the
// link takes for the TUN reader to segment (see segmenter).
func (*link) GSOMaxSize() uint32 { return 1<<16 - 1 }

// SupportedGSO implements stack.GSOEndpoint.
func (l *link) SupportedGSO() stack.SupportedGSO { return l.gsoKind }
