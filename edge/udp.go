package edge

import (
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

// udpFlow is one client address's association with a device target.
type udpFlow struct {
	client     net.Addr
	key        netip.AddrPort
	conn       net.Conn // connected overlay UDP socket
	target     *target
	lastActive atomic.Int64 // unix nanoseconds of the last datagram either way
}

func (f *udpFlow) touch(now time.Time) { f.lastActive.Store(now.UnixNano()) }

// ServeUDP relays datagrams for the udp route whose PublicPort is port
// between clients on pc and the route's target, until ctx is canceled or
// the Edge is closed; it then closes pc and every flow and returns. Each
// client address gets its own overlay socket (Options.Dial "udp"), so
// replies go back to the client that caused them; a flow expires after
// Options.UDPIdleTimeout without traffic. Datagram boundaries are kept.
// The route's CIDR policy applies to every datagram and its rate limit to
// new flows; flows count toward MaxConnsPerClient. pc is owned by the call.
func (e *Edge) ServeUDP(ctx context.Context, port uint16, pc net.PacketConn) error {
	ctx, cancel := e.serveContext(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { pc.Close() })
	defer stop()

	var (
		wg    sync.WaitGroup
		mu    sync.Mutex // guards flows
		flows = map[netip.AddrPort]*udpFlow{}
	)
	remove := func(f *udpFlow) {
		mu.Lock()
		if flows[f.key] == f {
			delete(flows, f.key)
			e.clients.release(f.key.Addr())
		}
		mu.Unlock()
		f.conn.Close()
	}
	defer func() {
		mu.Lock()
		all := make([]*udpFlow, 0, len(flows))
		for _, f := range flows {
			all = append(all, f)
		}
		mu.Unlock()
		for _, f := range all {
			remove(f)
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
		mu.Lock()
		f := flows[src]
		nflows := len(flows)
		mu.Unlock()
		rt := e.routes.Load().udp[port]
		if rt == nil || !rt.policy.admitted(src.Addr()) {
			if f != nil {
				remove(f)
			}
			continue
		}
		if f == nil {
			if nflows >= e.opts.MaxUDPFlows || rt.policy.allowRate(src.Addr(), now) > 0 {
				continue
			}
			if f = e.newUDPFlow(ctx, rt, addr, src); f == nil {
				continue
			}
			mu.Lock()
			flows[src] = f
			mu.Unlock()
			wg.Go(func() {
				e.udpReturnLoop(pc, f)
				remove(f)
			})
		}
		f.touch(now)
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
		f.touch(time.Now())
		return f
	}
}

// udpReturnLoop copies datagrams from the device back to the flow's client
// until the flow idles out or its socket fails.
func (e *Edge) udpReturnLoop(pc net.PacketConn, f *udpFlow) {
	buf := make([]byte, 64<<10)
	idle := e.opts.UDPIdleTimeout
	for {
		f.conn.SetReadDeadline(time.Unix(0, f.lastActive.Load()).Add(idle))
		n, err := f.conn.Read(buf)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) &&
				time.Since(time.Unix(0, f.lastActive.Load())) < idle {
				continue // traffic toward the device kept it alive
			}
			return
		}
		f.touch(time.Now())
		if _, err := pc.WriteTo(buf[:n], f.client); err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			e.log.Debug("udp write to client", "client", f.client, "err", err)
		}
	}
}
