package edge

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// The reply budget of a UDP flow. Only a datagram from the client proves
// (weakly: its source may be forged) that the client wants traffic, so
// each one lets the device send back udpReplyFactor times its size, and
// what the device sends past that is dropped: one forged datagram buys a
// bounded reply, never a stream. Sizes count udpHeaderBytes per datagram
// (IPv4 + UDP headers), so empty datagrams are not free. Unspent credit
// adds up to udpMaxReplyCredit, so a burst of questions can be answered
// together and a reply may come late.
//
// The factor leaves room for the uses a UDP route carries: a DNS answer
// to a question (a 40-byte question grants 4 KB), a QUIC server's first
// flight (the client pads its first datagram to 1200 bytes), game state
// after input, and downloads under QUIC or WireGuard, whose receivers
// acknowledge about every second datagram (about 25 to 45 bytes back per
// acknowledgment byte). A device that streams to a client which never
// answers gets 64 times the keepalives' size and no more.
const (
	udpReplyFactor    = 64
	udpHeaderBytes    = 28
	udpMaxReplyCredit = 1 << 20
)

// udpFlow is one client address's association with a device target.
type udpFlow struct {
	client     net.Addr
	key        netip.AddrPort
	conn       net.Conn // connected overlay UDP socket
	target     *target
	lastClient atomic.Int64  // unix nanoseconds of the last datagram from the client
	credit     atomic.Int64  // bytes the device may still send back; see udpReplyFactor
	replied    atomic.Bool   // the device has sent something; set by udpTable.replied
	capped     bool          // a reply was dropped (logged once); only udpReturnLoop uses it
	elem       *list.Element // in udpTable.unreplied or .replied; guarded by udpTable.mu
}

// fromClient records a datagram of n bytes from the client at now: it
// keeps the flow alive and grants the device reply credit.
func (f *udpFlow) fromClient(now time.Time, n int) {
	f.lastClient.Store(now.UnixNano())
	grant := int64(udpReplyFactor * (n + udpHeaderBytes))
	for {
		c := f.credit.Load()
		if f.credit.CompareAndSwap(c, min(c+grant, udpMaxReplyCredit)) {
			return
		}
	}
}

// spend takes the credit for a reply of n bytes, reporting false (and
// taking nothing) when there is not enough.
func (f *udpFlow) spend(n int) bool {
	cost := int64(n + udpHeaderBytes)
	for {
		c := f.credit.Load()
		if c < cost {
			return false
		}
		if f.credit.CompareAndSwap(c, c-cost) {
			return true
		}
	}
}

// expiry is when the flow ends unless the client sends again.
func (f *udpFlow) expiry(idle time.Duration) time.Time {
	return time.Unix(0, f.lastClient.Load()).Add(idle)
}

// ServeUDP relays datagrams for the udp route whose PublicPort is port
// between clients on pc and the route's target, until ctx is canceled or
// the Edge is closed; it then closes pc and every flow and returns. Each
// client address gets its own overlay socket (Options.Dial "udp"), so
// replies go back to the client that caused them; a flow expires
// Options.UDPIdleTimeout after the client's last datagram (after
// udpUnrepliedTimeout if the device never answered it), and the device may
// send back only a bounded multiple of what the client sent (see
// udpReplyFactor). Datagram boundaries are kept. The route's CIDR policy
// applies to every datagram and its rate limit to new flows; flows count
// toward MaxConnsPerClient. A new flow is never refused for want of room:
// it pushes out an older one (see udpTable). pc is owned by the call.
func (e *Edge) ServeUDP(ctx context.Context, port uint16, pc net.PacketConn) error {
	ctx, cancel := e.serveContext(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { pc.Close() })
	defer stop()

	var wg sync.WaitGroup
	tab := newUDPTable(e.opts.MaxUDPFlows, udpMaxFlowsPerClient)
	drop := func(f *udpFlow) {
		e.clients.release(f.key.Addr())
		f.conn.Close()
	}
	remove := func(f *udpFlow) {
		if tab.remove(f) {
			e.clients.release(f.key.Addr())
		}
		f.conn.Close()
	}
	defer func() {
		for _, f := range tab.removeAll() {
			drop(f)
		}
		wg.Wait()
	}()

	buf := make([]byte, 64<<10)
	for {
		n, addr, err := pc.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil {
				pc.Close()
				return e.stopErr(ctx)
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("edge: read udp/%d: %w", port, err)
			}
			e.log.Debug("udp read", "port", port, "err", err)
			continue
		}
		now := time.Now()
		src := addrOf(addr)
		f := tab.get(src)
		rt := e.routes.Load().udp[port]
		if rt == nil || !rt.policy.admitted(src.Addr()) {
			if f != nil {
				remove(f)
			}
			continue
		}
		if f == nil {
			if rt.policy.allowRate(src.Addr(), now) > 0 {
				continue
			}
			for _, old := range tab.makeRoom(src) {
				drop(old)
			}
			if f = e.newUDPFlow(ctx, rt, addr, src); f == nil {
				continue
			}
			tab.add(f)
			wg.Go(func() {
				e.udpReturnLoop(pc, tab, f)
				remove(f)
			})
		}
		f.fromClient(now, n)
		if _, err := f.conn.Write(buf[:n]); err != nil {
			e.log.Debug("udp write to device", "target", f.target.addr, "err", err)
		}
	}
}

// newUDPFlow dials a target for a new client flow, or returns nil.
func (e *Edge) newUDPFlow(ctx context.Context, rt *route, addr net.Addr, src netip.AddrPort) *udpFlow {
	if !e.clients.acquire(src.Addr()) {
		return nil
	}
	skip := map[*target]bool{}
	for {
		t, err := rt.pick(time.Now(), skip)
		if err != nil {
			e.clients.release(src.Addr())
			return nil
		}
		c, err := e.dialTarget(ctx, "udp", t)
		if err != nil {
			e.log.Debug("udp dial", "target", t.addr, "err", err)
			skip[t] = true
			continue
		}
		f := &udpFlow{client: addr, key: src, conn: c, target: t}
		f.lastClient.Store(time.Now().UnixNano())
		return f
	}
}

// udpReturnLoop copies datagrams from the device back to the flow's client,
// within the flow's reply credit, until the client has been silent for
// the idle timeout or the flow's socket fails. Traffic from the device
// does not keep a flow alive.
func (e *Edge) udpReturnLoop(pc net.PacketConn, tab *udpTable, f *udpFlow) {
	buf := make([]byte, 64<<10)
	for {
		idle := e.opts.UDPIdleTimeout
		if !f.replied.Load() {
			idle = min(idle, udpUnrepliedTimeout)
		}
		f.conn.SetReadDeadline(f.expiry(idle))
		n, err := f.conn.Read(buf)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) && time.Now().Before(f.expiry(idle)) {
				continue // the client sent again meanwhile
			}
			return
		}
		if time.Now().After(f.expiry(idle)) {
			return
		}
		if !f.replied.Load() {
			tab.replied(f)
		}
		if !f.spend(n) {
			if !f.capped {
				f.capped = true
				e.log.Debug("udp reply over the client's credit dropped", "client", f.client, "target", f.target.addr)
			}
			continue
		}
		if _, err := pc.WriteTo(buf[:n], f.client); err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			e.log.Debug("udp write to client", "client", f.client, "err", err)
		}
	}
}
