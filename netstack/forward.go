package netstack

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

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
	if !e.track(nil) {
		r.Drop()
		return
	}
	defer e.untrack(nil)
	d := net.Dialer{Timeout: e.opts.HostDialTimeout}
	hc, err := d.DialContext(e.ctx, "tcp", hostAddr(r.Dst).String())
	if err != nil {
		r.Reject()
		return
	}
	oc, err := r.Accept()
	if err != nil {
		hc.Close()
		e.log.Debug("accept forwarded connection", "src", r.Src, "dst", r.Dst, "err", err)
		return
	}
	e.proxyTCP(oc, hc)
}

// proxyTCP copies both ways between a and b until both directions end,
// passing half-closes through.
func (e *Engine) proxyTCP(a, b net.Conn) {
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
		copyHalf(b, a)
	}()
	copyHalf(a, b)
	wg.Wait()
	e.removeActive(a)
	e.removeActive(b)
	a.Close()
	b.Close()
}

type closeWriter interface{ CloseWrite() error }

// copyHalf copies src to dst, then half-closes dst (or closes both if a
// half-close is not possible).
func copyHalf(dst, src net.Conn) {
	buf := make([]byte, 64<<10)
	_, err := io.CopyBuffer(dst, src, buf)
	if cw, ok := dst.(closeWriter); ok && err == nil {
		cw.CloseWrite()
		return
	}
	dst.Close()
	src.Close()
}

// handleUDP starts forwarding a new inbound UDP flow to the host. It runs
// on the packet path and must not block.
func (e *Engine) handleUDP(r *gv.UDPRequest) {
	if !e.isOverlay(r.Dst.Addr()) {
		return
	}
	if int(e.udpFlows.Add(1)) > e.opts.MaxUDPFlows {
		e.udpFlows.Add(-1)
		return
	}
	hc, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(hostAddr(r.Dst)))
	if err != nil {
		e.udpFlows.Add(-1)
		return
	}
	oc, err := r.Accept()
	if err != nil {
		hc.Close()
		e.udpFlows.Add(-1)
		return
	}
	if !e.track(nil) {
		hc.Close()
		oc.Close()
		e.udpFlows.Add(-1)
		return
	}
	go func() {
		defer e.untrack(nil)
		defer e.udpFlows.Add(-1)
		e.proxyUDP(oc, hc)
	}()
}

// proxyUDP relays datagrams between the overlay flow and its host socket
// until the flow has been idle for UDPIdleTimeout or the engine closes.
func (e *Engine) proxyUDP(oc net.Conn, hc *net.UDPConn) {
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
	idle := e.opts.UDPIdleTimeout
	var last lastActive
	last.touch()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		relayUDP(hc, oc, idle, &last)
		oc.Close()
		hc.Close()
	}()
	relayUDP(oc, hc, idle, &last)
	oc.Close()
	hc.Close()
	wg.Wait()
	e.removeActive(oc)
	e.removeActive(hc)
}

// lastActive is the last time a datagram moved in either direction.
type lastActive struct {
	mu sync.Mutex // guards t
	t  time.Time
}

func (l *lastActive) touch() {
	l.mu.Lock()
	l.t = time.Now()
	l.mu.Unlock()
}

func (l *lastActive) since() time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	return time.Since(l.t)
}

// relayUDP copies datagrams from src to dst until an error, or until no
// datagram moved either way for idle.
func relayUDP(dst, src net.Conn, idle time.Duration, last *lastActive) {
	buf := make([]byte, 64<<10)
	for {
		src.SetReadDeadline(time.Now().Add(idle))
		n, err := src.Read(buf)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				if last.since() < idle {
					continue
				}
			}
			return
		}
		last.touch()
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
