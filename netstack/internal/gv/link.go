package gv

import (
	"context"
	"sync"
	"sync/atomic"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// link is the stack's NIC: outbound packets wait in a bounded queue for
// the TUN reader (wireguard-go); inbound packets go straight to the
// stack's dispatcher.
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
// Writers that block are gVisor's TCP goroutines and the goroutines of
// applications writing to sockets; the reader never waits on them (it
// hands packets to wireguard-go, which encrypts and sends them on the
// bind), so blocking cannot deadlock. Close unblocks every writer.
type link struct {
	mtu     uint32
	gsoKind stack.SupportedGSO
	caps    stack.LinkEndpointCapabilities

	q    chan *stack.PacketBuffer // outbound packets, each holding one reference
	done chan struct{}            // closed by Close

	mu sync.RWMutex // guards d
	d  stack.NetworkDispatcher

	closeOnce sync.Once

	// waits counts WritePackets calls that found the queue full and had
	// to wait; drops counts packets discarded because the link closed.
	waits atomic.Uint64
	drops atomic.Uint64

	// testHookWait, if set (by tests, before any traffic), runs each time
	// a writer starts waiting for room.
	testHookWait func()
}

var (
	_ stack.LinkEndpoint = (*link)(nil)
	_ stack.GSOEndpoint  = (*link)(nil)
)

func newLink(queueLen int, mtu uint32, caps stack.LinkEndpointCapabilities, gso stack.SupportedGSO) *link {
	return &link{
		mtu:     mtu,
		gsoKind: gso,
		caps:    caps,
		q:       make(chan *stack.PacketBuffer, queueLen),
		done:    make(chan struct{}),
	}
}

// WritePackets implements stack.LinkWriter. It queues every packet,
// waiting for room when the queue is full, and fails only once the link
// is closed.
func (l *link) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	n := 0
	for _, pkt := range pkts.AsSlice() {
		select {
		case <-l.done:
			l.drops.Add(uint64(pkts.Len() - n))
			if n == 0 {
				return 0, &tcpip.ErrClosedForSend{}
			}
			return n, nil
		default:
		}
		pkt.IncRef()
		select {
		case l.q <- pkt:
		default:
			l.waits.Add(1)
			if l.testHookWait != nil {
				l.testHookWait()
			}
			select {
			case l.q <- pkt:
			case <-l.done:
				pkt.DecRef()
				l.drops.Add(uint64(pkts.Len() - n))
				if n == 0 {
					return 0, &tcpip.ErrClosedForSend{}
				}
				return n, nil
			}
		}
		n++
	}
	return n, nil
}

// read returns the next outbound packet, blocking until there is one. It
// returns nil once ctx is done or the link is closed.
func (l *link) read(ctx context.Context) *stack.PacketBuffer {
	select {
	case pkt := <-l.q:
		return pkt
	default:
	}
	select {
	case pkt := <-l.q:
		return pkt
	case <-ctx.Done():
		return nil
	case <-l.done:
		return nil
	}
}

// tryRead returns the next outbound packet or nil if none is queued.
func (l *link) tryRead() *stack.PacketBuffer {
	select {
	case pkt := <-l.q:
		return pkt
	default:
		return nil
	}
}

// queued returns the number of outbound packets waiting.
func (l *link) queued() int { return len(l.q) }

// Close implements stack.NetworkLinkEndpoint. It unblocks writers and
// discards queued packets; later writes fail. It is idempotent.
func (l *link) Close() {
	l.closeOnce.Do(func() { close(l.done) })
	for pkt := l.tryRead(); pkt != nil; pkt = l.tryRead() {
		pkt.DecRef()
		l.drops.Add(1)
	}
}

// Attach implements stack.NetworkLinkEndpoint.
func (l *link) Attach(d stack.NetworkDispatcher) {
	l.mu.Lock()
	l.d = d
	l.mu.Unlock()
}

func (l *link) dispatcher() stack.NetworkDispatcher {
	l.mu.RLock()
	defer l.mu.RUnlock()
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

// GSOMaxSize implements stack.GSOEndpoint.
func (*link) GSOMaxSize() uint32 { return 1 << 15 }

// SupportedGSO implements stack.GSOEndpoint.
func (l *link) SupportedGSO() stack.SupportedGSO { return l.gsoKind }
