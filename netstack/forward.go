package netstack

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"time"

	"beam.dev/beam/internal/streamcopy"
	"beam.dev/beam/netstack/internal/gv"
)

// hostAddr is where an inbound flow to dst is forwarded on this host: the
// loopback address of dst's family, same port.
func hostAddr(dst netip.AddrPort) netip.AddrPort {
	if dst.Addr().Unmap().Is4() {
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), dst.Port())
	}
	return netip.AddrPortFrom(netip.IPv6Loopback(), dst.Port())
}

// handleTCP forwards an inbound TCP connection that no engine listener
// claimed to the host. It runs on a goroutine gVisor starts per SYN; the
// SYN is answered only once the host port accepted (so a closed host port
// gives the peer a clean RST).
func (e *Engine) handleTCP(r *gv.TCPRequest) {
	if !e.isOverlay(r.Dst.Addr()) {
		// A service address without a listener, or an address we no
		// longer have: never forward.
		r.Drop()
		return
	}
	if e.opts.NoHostForward {
		r.Reject()
		return
	}
	host := hostAddr(r.Dst)
	if e.isOwnListener(host) {
		e.refuseOwn("tcp", r.Src, host)
		r.Reject()
		return
	}
	src := r.Src.Addr().Unmap()
	if !e.tcpConns.acquire(src, e.isEdge(src)) {
		r.Reject()
		return
	}
	defer e.tcpConns.release(src)
	if !e.track(nil) {
		r.Drop()
		return
	}
	defer e.untrack(nil)
	hc, release, err := e.dialHost(host)
	if err != nil {
		r.Reject()
		return
	}
	defer release()
	oc, err := r.Accept()
	if err != nil {
		hc.Close()
		e.log.Debug("accept forwarded connection", "src", r.Src, "dst", r.Dst, "err", err)
		return
	}
	f := Flow{Proto: "tcp", Src: r.Src, Dst: r.Dst, Start: time.Now()}
	e.flowEvent(f)
	f.FromPeer, f.ToPeer = e.proxyTCP(oc, hc)
	f.End = time.Now()
	e.flowEvent(f)
}

// Flow is an inbound TCP connection or UDP flow that the engine forwarded
// to the host (see Options.OnFlow).
type Flow struct {
	Proto    string         // "tcp" or "udp"
	Src, Dst netip.AddrPort // the peer's address and the node's
	Start    time.Time
	End      time.Time // zero while the flow lasts
	// FromPeer and ToPeer count the bytes (UDP: payload bytes) each way,
	// once the flow ended.
	FromPeer, ToPeer int64
}

func (e *Engine) flowEvent(f Flow) {
	if e.opts.OnFlow != nil {
		e.opts.OnFlow(f)
	}
}

// dialHost connects to host, on the host's loopback, for a forwarded
// connection, and registers the connection's local address as one the
// overlay owns (see FromOverlay) until release is called. Where the
// platform allows, the address is bound and registered before connecting,
// so the host's listener cannot accept the connection first.
func (e *Engine) dialHost(host netip.AddrPort) (c net.Conn, release func(), err error) {
	var bound netip.AddrPort
	d := net.Dialer{
		Timeout: e.opts.HostDialTimeout,
		Control: func(network, _ string, rc syscall.RawConn) error {
			if bound.IsValid() {
				removeForwarded(bound)
				bound = netip.AddrPort{}
			}
			var berr error
			if err := rc.Control(func(fd uintptr) { bound, berr = bindLoopback(network, fd) }); err != nil {
				return err
			}
			if errors.Is(berr, errors.ErrUnsupported) {
				return nil
			}
			if berr != nil {
				return berr
			}
			addForwarded(bound)
			return nil
		},
	}
	hc, err := d.DialContext(e.ctx, "tcp", host.String())
	if err != nil {
		if bound.IsValid() {
			removeForwarded(bound)
		}
		return nil, nil, err
	}
	if !bound.IsValid() {
		bound, _ = addrPortOf(hc.LocalAddr())
		addForwarded(bound)
	}
	return hc, func() { removeForwarded(bound) }, nil
}

// isOwnListener reports whether host is one of Config.OwnListeners (an
// unspecified address in the list stands for every address of its port).
func (e *Engine) isOwnListener(host netip.AddrPort) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.own) == 0 {
		return false
	}
	return e.own[host] ||
		e.own[netip.AddrPortFrom(netip.IPv4Unspecified(), host.Port())] ||
		e.own[netip.AddrPortFrom(netip.IPv6Unspecified(), host.Port())]
}

// refuseOwn counts an inbound connection or flow refused because it would
// reach one of the node's own listeners, and logs it at most every few
// seconds (a peer can send such SYNs and datagrams as fast as it likes).
func (e *Engine) refuseOwn(proto string, src, host netip.AddrPort) {
	n := e.ownRefused.Add(1)
	now := time.Now().UnixNano()
	last := e.ownLogAt.Load()
	if now-last < int64(ownLogInterval) || !e.ownLogAt.CompareAndSwap(last, now) {
		return
	}
	e.log.Warn("refused a peer's connection to one of the node's own listeners", "proto", proto, "src", src, "host", host, "refused_total", n)
}

// ownLogInterval is the least time between two refuseOwn logs.
const ownLogInterval = 10 * time.Second

// proxyTCP copies both ways between a and b until both directions end,
// passing half-closes through.
func (e *Engine) proxyTCP(a, b net.Conn) (ab, ba int64) {
	if !e.addActive(a) {
		a.Close()
		b.Close()
		return
	}
	if !e.addActive(b) {
		e.removeActive(a)
		a.Close()
		b.Close()
		return
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		ab = copyHalf(b, a)
	}()
	ba = copyHalf(a, b)
	wg.Wait()
	e.removeActive(a)
	e.removeActive(b)
	a.Close()
	b.Close()
	return ab, ba
}

type closeWriter interface{ CloseWrite() error }

// copyHalf copies src to dst, then half-closes dst (or closes both if a
// half-close is not possible). It returns the bytes copied.
func copyHalf(dst, src net.Conn) int64 {
	n, err := streamcopy.Copy(dst, src)
	if cw, ok := dst.(closeWriter); ok && err == nil {
		cw.CloseWrite()
		return n
	}
	dst.Close()
	src.Close()
	return n
}

// handleUDP starts forwarding a new inbound UDP flow to the host. It runs
// on the packet path and must not block.
func (e *Engine) handleUDP(r *gv.UDPRequest) {
	if !e.isOverlay(r.Dst.Addr()) || e.opts.NoHostForward {
		return
	}
	host := hostAddr(r.Dst)
	if e.isOwnListener(host) {
		e.refuseOwn("udp", r.Src, host)
		return
	}
	src := r.Src.Addr().Unmap()
	if !e.udpFlows.acquire(src, e.isEdge(src)) {
		return
	}
	hc, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(host))
	if err != nil {
		e.udpFlows.release(src)
		return
	}
	// Nothing was sent yet: registered before the host socket can see a
	// datagram from it.
	local, _ := addrPortOf(hc.LocalAddr())
	addForwarded(local)
	oc, err := r.Accept()
	if err != nil {
		hc.Close()
		removeForwarded(local)
		e.udpFlows.release(src)
		return
	}
	if !e.track(nil) {
		hc.Close()
		oc.Close()
		removeForwarded(local)
		e.udpFlows.release(src)
		return
	}
	go func() {
		defer e.untrack(nil)
		defer e.udpFlows.release(src)
		defer removeForwarded(local)
		f := Flow{Proto: "udp", Src: r.Src, Dst: r.Dst, Start: time.Now()}
		e.flowEvent(f)
		f.FromPeer, f.ToPeer = e.proxyUDP(oc, hc)
		f.End = time.Now()
		e.flowEvent(f)
	}()
}

// proxyUDP relays datagrams between the overlay flow and its host socket
// until the flow has been idle for UDPIdleTimeout (UDPUnrepliedTimeout
// while the host socket never answered) or the engine closes.
func (e *Engine) proxyUDP(oc net.Conn, hc *net.UDPConn) (in, out int64) {
	if !e.addActive(oc) {
		oc.Close()
		hc.Close()
		return
	}
	if !e.addActive(hc) {
		e.removeActive(oc)
		oc.Close()
		hc.Close()
		return
	}
	last := lastActive{idle: e.opts.UDPIdleTimeout, unreplied: e.opts.UDPUnrepliedTimeout}
	last.touch(false)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		in = relayUDP(hc, oc, &last, false)
		oc.Close()
		hc.Close()
	}()
	out = relayUDP(oc, hc, &last, true)
	oc.Close()
	hc.Close()
	wg.Wait()
	e.removeActive(oc)
	e.removeActive(hc)
	return in, out
}

// lastActive is the last time a datagram moved in either direction, and
// whether the host ever answered.
type lastActive struct {
	idle, unreplied time.Duration // how long the flow may stay idle, once answered and before

	mu      sync.Mutex // guards t and replied
	t       time.Time
	replied bool
}

// touch records a datagram, from the host if reply.
func (l *lastActive) touch(reply bool) {
	l.mu.Lock()
	l.t = time.Now()
	l.replied = l.replied || reply
	l.mu.Unlock()
}

// left returns how much longer the flow may stay idle; <= 0 when it has
// been idle too long.
func (l *lastActive) left() time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	limit := l.unreplied
	if l.replied {
		limit = l.idle
	}
	return limit - time.Since(l.t)
}

// relayUDP copies datagrams from src (the host's socket if reply) to dst
// until an error, or until the flow has been idle too long (see
// lastActive.left).
func relayUDP(dst, src net.Conn, last *lastActive, reply bool) (total int64) {
	buf := make([]byte, 64<<10)
	for {
		left := last.left()
		if left <= 0 {
			return total
		}
		src.SetReadDeadline(time.Now().Add(left))
		n, err := src.Read(buf)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				continue // the loop's check decides
			}
			return total
		}
		total += int64(n)
		last.touch(reply)
		if _, err := dst.Write(buf[:n]); err != nil && !isTransientUDP(err) {
			return
		}
	}
}

// isTransientUDP reports errors after which a UDP relay keeps going (a
// host port that is not listening yet answers with ICMP unreachable).
func isTransientUDP(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe) && !errors.Is(err, net.ErrClosed)
}
