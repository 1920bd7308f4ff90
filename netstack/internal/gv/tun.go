package gv

import (
	"context"
	"os"
	"sync"

	"beam.dev/beam/netstack/internal/inflight"
	"golang.zx2c4.com/wireguard/tun"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// tunBatchSize is how many packets one Read hands wireguard-go at most:
// more than a 64 KiB segment from the stack cuts into (51 at MTU 1280), so
// one such segment goes out in one Read, one hand-off to wireguard-go's
// encryption and sending goroutines and one sendmmsg, instead of two of
// each; on a busy machine each hand-off can cost a thread's sleep and
// wakeup. wireguard-go keeps this many 64 KiB buffers for its TUN reader
// (the bind's own, smaller batch sizes its receive paths' buffers).
//
// Two real daemons, one bulk stream through the SOCKS5 proxy to the far
// node's forward, four runs of interleaved rounds against 32 on 2 cores at
// load 25-34: daemon CPU per GiB 14.1/16.7, 11.7/10.7, 8.4/9.8 and
// 10.6/11.4 s, context switches 13-20% fewer in three; the Go heap the
// transfers of TestDaemonMemory took 47-51 MiB. 128 did better in some
// runs but took up to 63 MiB of heap.
const tunBatchSize = 64

// TUN is the stack's link layer seen as a wireguard-go tun.Device: Read
// returns IP packets the stack sends, Write injects IP packets into the
// stack. Read and Write may be called concurrently.
type TUN struct {
	ep       *link
	mtu      int
	inbound  func([]byte) bool
	outbound func([]byte) bool
	events   chan tun.Event
	ctx      context.Context // canceled by Close; unblocks Read
	cancel   context.CancelFunc

	coalescers sync.Pool // of *coalescer: one per concurrent Write

	// outWin counts the packets Read hands wireguard-go until the bind
	// sent them; inWin is released by the packets Write takes. Either
	// may be nil (see package inflight).
	outWin, inWin *inflight.Window

	readMu   sync.Mutex // serializes Read; guards seg and readWait
	seg      segmenter
	readWait *inflight.Waiter

	closeOnce sync.Once
}

var _ tun.Device = (*TUN)(nil)

func newTUN(ep *link, mtu int, inbound func([]byte) bool, outbound func([]byte) bool, outWin, inWin *inflight.Window) *TUN {
	ctx, cancel := context.WithCancel(context.Background())
	t := &TUN{
		ep:       ep,
		mtu:      mtu,
		inbound:  inbound,
		outbound: outbound,
		events:   make(chan tun.Event, 1),
		ctx:      ctx,
		cancel:   cancel,
		outWin:   outWin,
		inWin:    inWin,
		readWait: outWin.NewWaiter(),
	}
	t.coalescers.New = func() any {
		return &coalescer{segs: make([][]byte, 0, maxCoalesceSegs)}
	}
	t.events <- tun.EventUp
	return t
}

// File returns nil: there is no file descriptor behind this device.
func (t *TUN) File() *os.File { return nil }

// Name returns "beam".
func (t *TUN) Name() (string, error) { return "beam", nil }

// MTU returns the link MTU.
func (t *TUN) MTU() (int, error) { return t.mtu, nil }

// Events returns the device's event channel (one EventUp, closed on Close).
func (t *TUN) Events() <-chan tun.Event { return t.events }

// BatchSize returns the most packets one Read returns.
func (t *TUN) BatchSize() int { return tunBatchSize }

// Read blocks for one outbound packet, then takes more that are already
// queued, without blocking, until bufs are full. A TCP packet larger than
// the MTU (segmentation offload) is cut into MTU-sized packets; if bufs
// fill up part way through one, the next Read continues it. While the
// outbound window is full, Read waits first. Read returns os.ErrClosed
// after Close.
func (t *TUN) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	t.readMu.Lock()
	defer t.readMu.Unlock()
	t.readWait.Wait()
	n := 0
	for n < len(bufs) {
		if t.seg.done() {
			var pkt *stack.PacketBuffer
			if n == 0 {
				pkt = t.ep.read(t.ctx)
				if pkt == nil {
					return 0, os.ErrClosed
				}
			} else if pkt = t.ep.tryRead(); pkt == nil {
				break
			}
			if pkt.GSOOptions.Type == stack.GSONone {
				sizes[n] = copyPacket(bufs[n][offset:], pkt)
				pkt.DecRef()
				n++
				continue
			}
			if !t.seg.start(pkt) {
				t.ep.drops.Add(1)
				continue
			}
		}
		sizes[n] = t.seg.next(bufs[n][offset:])
		n++
	}
	handed := n
	if t.outbound != nil {
		for i := range n {
			if !t.outbound(bufs[i][offset : offset+sizes[i]]) {
				sizes[i] = 0 // wireguard-go skips it
				handed--
			}
		}
	}
	t.outWin.Add(handed)
	return n, nil
}

// copyPacket copies pkt's bytes into dst without allocating and returns
// the number of bytes copied.
func copyPacket(dst []byte, pkt *stack.PacketBuffer) int {
	vl, off := pkt.AsViewList()
	n := 0
	for v := vl.Front(); v != nil; v = v.Next() {
		s := v.AsSlice()
		if off >= len(s) {
			off -= len(s)
			continue
		}
		n += copy(dst[n:], s[off:])
		off = 0
	}
	return n
}

// Write injects each IP packet bufs[i][offset:] into the stack. Packets the
// Inbound hook refuses and packets of unknown IP version are dropped.
// Consecutive TCP segments of one connection are merged (see coalescer) so
// the stack processes them as one packet.
func (t *TUN) Write(bufs [][]byte, offset int) (int, error) {
	t.inWin.Done(len(bufs))
	if t.ctx.Err() != nil {
		return 0, os.ErrClosed
	}
	d := t.ep.dispatcher()
	if d == nil {
		return len(bufs), nil
	}
	c := t.coalescers.Get().(*coalescer)
	c.d = d
	for _, b := range bufs {
		pkt := b[offset:]
		if len(pkt) == 0 || (pkt[0]>>4 != 4 && pkt[0]>>4 != 6) {
			continue
		}
		if t.inbound != nil && !t.inbound(pkt) {
			continue
		}
		c.add(pkt)
	}
	c.flush()
	c.d = nil
	t.coalescers.Put(c)
	return len(bufs), nil
}

// Close stops the device: Read returns os.ErrClosed, Events is closed and
// the stack's outbound packets are discarded from then on. It is
// idempotent.
func (t *TUN) Close() error {
	t.closeOnce.Do(func() {
		t.cancel()
		close(t.events)
		// Nobody reads the link any more: release senders waiting for
		// room (gVisor goroutines that may hold endpoint locks the
		// stack's Close needs) and fail later sends.
		t.ep.Close()
		t.readMu.Lock()
		t.seg.reset()
		t.readMu.Unlock()
	})
	return nil
}
