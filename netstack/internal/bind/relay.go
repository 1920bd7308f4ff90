package bind

import (
	"errors"
	"net"
	"net/netip"
	"sync"
	"time"

	"beam.dev/beam/netstack/internal/disco"
	"beam.dev/beam/types/key"
	"golang.zx2c4.com/wireguard/conn"
)

// Relay is the relay (DERP) path: packets to a peer that has no confirmed
// direct address go through the peer's home relay region. The netstack
// package implements it over derp.Client; the bind only calls Send, from
// wireguard-go's sending goroutines, so Send must not block for long.
// Packets arriving from a relay are handed to Bind.DeliverRelayed.
type Relay interface {
	// Send passes pkts to dst through relay region, in order (a batch of
	// wireguard-go's, or a single disco message). It must not keep them.
	Send(region int, dst key.NodePublic, pkts [][]byte) error
}

// relayAddrBase is the pseudo address relay endpoints carry (port = relay
// region), so wireguard-go's cookies and rate limits see one stable
// source per relay path. 127.3.3.40 is never a real peer address here.
var relayAddrBase = netip.AddrFrom4([4]byte{127, 3, 3, 40})

// relayQueueLen bounds relayed packets waiting for wireguard-go. The
// relay ReceiveFunc waits while the inbound window is full, so the queue
// has to absorb what arrives meanwhile; a packet that finds it full is
// dropped after it already crossed the relay. Its buffers fit the packet
// (see relayBuf), so a full queue holds about 2 MiB.
const relayQueueLen = 1024

// relayed is one packet from a relay, waiting for the relay ReceiveFunc.
type relayed struct {
	e   *Endpoint
	buf *[]byte
	n   int
}

// relayState is the relay path's part of a Bind.
type relayState struct {
	relay Relay
	queue chan relayed // DeliverRelayed -> the relay ReceiveFunc
	bufs  sync.Pool    // of *[]byte of relayBuf bytes
}

// maxRelayed is the largest packet taken from a relay.
const maxRelayed = 64 << 10

// relayBuf is the size of the pooled buffers relayed packets wait in:
// every packet of an overlay MTU up to 1,968 bytes. Larger ones get a
// buffer of their own (until the queue had pooled 64 KiB buffers for all,
// 16 MiB of heap when full).
const relayBuf = 2 << 10

// copyPacket returns a buffer holding a copy of pkt: a pooled one if it
// fits.
func (rs *relayState) copyPacket(pkt []byte) *[]byte {
	if len(pkt) > relayBuf {
		buf := append([]byte(nil), pkt...)
		return &buf
	}
	buf := rs.bufs.Get().(*[]byte)
	*buf = append((*buf)[:0], pkt...)
	return buf
}

// put returns a buffer of copyPacket's to the pool, if it came from it.
func (rs *relayState) put(buf *[]byte) {
	if cap(*buf) == relayBuf {
		rs.bufs.Put(buf)
	}
}

func (e *Endpoint) isRelay() bool { return e.src.Addr() == relayAddrBase }

// relayEndpointLocked returns pe's endpoint for packets relayed through
// region.
func (pe *peerEntry) relayEndpointLocked(region int) *Endpoint {
	ap := netip.AddrPortFrom(relayAddrBase, uint16(region))
	if e := pe.eps[ap]; e != nil {
		return e
	}
	e := newEndpoint(pe.p, ap)
	pe.eps[ap] = e
	return e
}

// DeliverRelayed hands wireguard-go a packet that arrived from src
// through relay region. It copies pkt and never blocks: when the bind is
// closed, src is not a peer, pkt is not WireGuard, or the queue is full,
// the packet is dropped. The relay server authenticated src, so the
// packet is tied to that peer directly.
func (b *Bind) DeliverRelayed(region int, src key.NodePublic, pkt []byte) {
	if b.rs.relay == nil || len(pkt) > maxRelayed {
		return
	}
	if disco.IsPacket(pkt) {
		b.handleDisco(netip.AddrPortFrom(relayAddrBase, uint16(region)), region, src, pkt, nil)
		return
	}
	if kind, _ := classify(pkt); kind == kindGarbage {
		return
	}
	b.mu.Lock()
	pe := b.peers[src]
	open := b.relayClosed != nil
	var e *Endpoint
	if pe != nil && open {
		e = pe.relayEndpointLocked(region)
	}
	b.mu.Unlock()
	if e == nil {
		return
	}
	now := time.Now().UnixNano()
	if !b.admitHandshake(pe.p, e, pkt, now) {
		return
	}
	pe.p.lastWGRecv.Store(now)
	b.noteTransport(pe.p, pkt, now)
	buf := b.rs.copyPacket(pkt)
	select {
	case b.rs.queue <- relayed{e: e, buf: buf, n: len(pkt)}:
		pe.p.traffic.received(pathRelay, len(pkt))
	default:
		b.rs.put(buf)
	}
}

// makeReceiveDERP returns the relay ReceiveFunc of one Open; it returns
// net.ErrClosed once closed is closed (by Close).
func (b *Bind) makeReceiveDERP(closed <-chan struct{}) conn.ReceiveFunc {
	wait := b.opts.Inbound.NewWaiter()
	return func(bufs [][]byte, sizes []int, eps []conn.Endpoint) (n int, err error) {
		wait.Wait()
		defer func() {
			data := 0
			for i := range n {
				if isData(bufs[i][:sizes[i]]) {
					data++
				}
			}
			b.opts.Inbound.Add(data)
		}()
		var r relayed
		select {
		case r = <-b.rs.queue:
		case <-closed:
			return 0, net.ErrClosed
		}
		for {
			if p := r.e.peer; p != nil {
				b.wake(p)
			}
			sizes[n] = copy(bufs[n], (*r.buf)[:r.n])
			eps[n] = r.e
			b.rs.put(r.buf)
			n++
			if n == len(bufs) {
				return n, nil
			}
			select {
			case r = <-b.rs.queue:
			default:
				return n, nil
			}
		}
	}
}

// sendRelay sends bufs to p through its home region.
func (b *Bind) sendRelay(bufs [][]byte, p *peer, region int) error {
	if b.rs.relay == nil || region == 0 {
		return errNoRelay
	}
	if err := b.rs.relay.Send(region, p.key, bufs); err != nil {
		return err
	}
	for _, pkt := range bufs {
		if !disco.IsPacket(pkt) {
			p.traffic.sentOne(pathRelay, len(pkt))
		}
	}
	return nil
}

var errNoRelay = errors.New("bind: no relay path")
