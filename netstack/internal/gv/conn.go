package gv

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"

	"beam.dev/beam/third_party/gvisor/tcp"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// listenBacklog matches the common Linux somaxconn default.
const listenBacklog = 4096

// DialTCP opens a TCP connection from the stack to dst. Errors unwrap to
// the standard errors Err produces (syscall.ECONNREFUSED and so on) or to
// ctx's error.
func (st *Stack) DialTCP(ctx context.Context, dst netip.AddrPort) (net.Conn, error) {
	fa, proto := toFull(dst)
	var wq waiter.Queue
	ep, terr := st.s.NewEndpoint(tcp.ProtocolNumber, proto, &wq)
	if terr != nil {
		return nil, opError("dial", "tcp", dst, Err(terr))
	}
	we, ch := waiter.NewChannelEntry(waiter.WritableEvents)
	wq.EventRegister(&we)
	defer wq.EventUnregister(&we)
	if err := ctx.Err(); err != nil {
		ep.Close()
		return nil, opError("dial", "tcp", dst, err)
	}
	terr = ep.Connect(fa)
	if _, ok := terr.(*tcpip.ErrConnectStarted); ok {
		select {
		case <-ctx.Done():
			ep.Close()
			return nil, opError("dial", "tcp", dst, ctx.Err())
		case <-ch:
		}
		terr = ep.LastError()
	}
	if terr != nil {
		ep.Close()
		return nil, opError("dial", "tcp", dst, Err(terr))
	}
	return gonet.NewTCPConn(&wq, ep), nil
}

// DialUDP returns a UDP socket in the stack connected to dst.
func (st *Stack) DialUDP(dst netip.AddrPort) (net.Conn, error) {
	fa, proto := toFull(dst)
	c, err := st.udpEndpoint(proto, nil, &fa)
	if err != nil {
		return nil, opError("dial", "udp", dst, err)
	}
	return c, nil
}

// ListenTCP listens for TCP connections on addr inside the stack. An
// unspecified or invalid address listens on every local address of both
// families (the endpoint is a dual-stack IPv6 one).
func (st *Stack) ListenTCP(addr netip.AddrPort) (net.Listener, error) {
	fa, proto := toFull(addr)
	dual := !addr.Addr().IsValid() || addr.Addr().IsUnspecified()
	if dual {
		proto = ipv6.ProtocolNumber
	}
	var wq waiter.Queue
	ep, terr := st.s.NewEndpoint(tcp.ProtocolNumber, proto, &wq)
	if terr != nil {
		return nil, opError("listen", "tcp", addr, Err(terr))
	}
	if dual {
		ep.SocketOptions().SetV6Only(false)
	}
	if terr := ep.Bind(fa); terr != nil {
		ep.Close()
		return nil, opError("listen", "tcp", addr, Err(terr))
	}
	if terr := ep.Listen(listenBacklog); terr != nil {
		ep.Close()
		return nil, opError("listen", "tcp", addr, Err(terr))
	}
	return &tcpListener{TCPListener: gonet.NewTCPListener(st.s, &wq, ep)}, nil
}

// tcpListener is a gonet listener whose Accept, once Close was called,
// fails with an error matching net.ErrClosed, as a net.TCPListener's does
// (servers such as http.Server tell a closed listener by it); gonet's says
// "endpoint is in invalid state".
type tcpListener struct {
	*gonet.TCPListener
	closed atomic.Bool
}

func (l *tcpListener) Accept() (net.Conn, error) {
	c, err := l.TCPListener.Accept()
	if err != nil && l.closed.Load() {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.Addr(), Err: net.ErrClosed}
	}
	return c, err
}

func (l *tcpListener) Close() error {
	l.closed.Store(true)
	return l.TCPListener.Close()
}

// ListenUDP opens an unconnected UDP socket bound to addr inside the
// stack; an unspecified address binds every local address of both
// families.
func (st *Stack) ListenUDP(addr netip.AddrPort) (net.PacketConn, error) {
	fa, proto := toFull(addr)
	if !addr.Addr().IsValid() || addr.Addr().IsUnspecified() {
		proto = ipv6.ProtocolNumber
	}
	c, err := st.udpEndpoint(proto, &fa, nil)
	if err != nil {
		return nil, opError("listen", "udp", addr, err)
	}
	return c, nil
}

func (st *Stack) udpEndpoint(proto tcpip.NetworkProtocolNumber, laddr, raddr *tcpip.FullAddress) (*gonet.UDPConn, error) {
	var wq waiter.Queue
	ep, terr := st.s.NewEndpoint(udp.ProtocolNumber, proto, &wq)
	if terr != nil {
		return nil, Err(terr)
	}
	if proto == ipv6.ProtocolNumber && laddr != nil && laddr.Addr.Len() == 0 {
		ep.SocketOptions().SetV6Only(false)
	}
	if laddr != nil {
		if terr := ep.Bind(*laddr); terr != nil {
			ep.Close()
			return nil, Err(terr)
		}
	}
	if raddr != nil {
		if terr := ep.Connect(*raddr); terr != nil {
			ep.Close()
			return nil, Err(terr)
		}
	}
	return gonet.NewUDPConn(&wq, ep), nil
}

func opError(op, network string, addr netip.AddrPort, err error) error {
	var a net.Addr
	if network == "tcp" {
		a = net.TCPAddrFromAddrPort(addr)
	} else {
		a = net.UDPAddrFromAddrPort(addr)
	}
	return &net.OpError{Op: op, Net: network, Addr: a, Err: err}
}

// TCPRequest is an inbound TCP connection attempt (a SYN) that no local
// listener claimed. Exactly one of Accept, Reject or Drop must be called.
type TCPRequest struct {
	st *Stack
	r  *tcp.ForwarderRequest
	// Src is the remote (peer) address and port.
	Src netip.AddrPort
	// Dst is the local address and port the peer connected to.
	Dst netip.AddrPort
}

func newTCPRequest(st *Stack, r *tcp.ForwarderRequest) *TCPRequest {
	id := r.ID()
	return &TCPRequest{
		st:  st,
		r:   r,
		Src: netip.AddrPortFrom(toAddr(id.RemoteAddress), id.RemotePort),
		Dst: netip.AddrPortFrom(toAddr(id.LocalAddress), id.LocalPort),
	}
}

// Accept completes the three-way handshake and returns the connection.
func (q *TCPRequest) Accept() (net.Conn, error) {
	var wq waiter.Queue
	ep, terr := q.r.CreateEndpoint(&wq)
	q.r.Complete(false)
	if terr != nil {
		return nil, fmt.Errorf("gv: accept %v -> %v: %w", q.Src, q.Dst, Err(terr))
	}
	return gonet.NewTCPConn(&wq, ep), nil
}

// Reject answers the SYN with a RST, so the peer sees "connection refused".
func (q *TCPRequest) Reject() { q.r.Complete(true) }

// Drop ignores the SYN; the peer's connect eventually times out.
func (q *TCPRequest) Drop() { q.r.Complete(false) }

// UDPRequest is the first datagram of an inbound UDP flow that no local
// socket claimed.
type UDPRequest struct {
	st *Stack
	r  *udp.ForwarderRequest
	// Src is the remote (peer) address and port.
	Src netip.AddrPort
	// Dst is the local address and port the datagram was sent to.
	Dst netip.AddrPort
}

func newUDPRequest(st *Stack, r *udp.ForwarderRequest) *UDPRequest {
	id := r.ID()
	return &UDPRequest{
		st:  st,
		r:   r,
		Src: netip.AddrPortFrom(toAddr(id.RemoteAddress), id.RemotePort),
		Dst: netip.AddrPortFrom(toAddr(id.LocalAddress), id.LocalPort),
	}
}

// Accept creates a socket connected to the flow's peer; it receives this
// datagram and the flow's later ones. Not calling Accept drops the
// datagram.
func (q *UDPRequest) Accept() (net.Conn, error) {
	var wq waiter.Queue
	ep, terr := q.r.CreateEndpoint(&wq)
	if terr != nil {
		return nil, fmt.Errorf("gv: accept udp %v -> %v: %w", q.Src, q.Dst, Err(terr))
	}
	return gonet.NewUDPConn(&wq, ep), nil
}
