//go:build !linux

package bind

import (
	"net"
	"net/netip"

	"golang.org/x/net/ipv6"
)

// xnetReceiver reads datagrams through x/net's ReadBatch (one datagram per
// call where the platform lacks recvmmsg).
type xnetReceiver struct {
	pc   batchConn
	msgs []ipv6.Message
}

func newReceiver(s *udpSocket, size int) (receiver, error) {
	r := &xnetReceiver{pc: s.pc, msgs: make([]ipv6.Message, size)}
	for i := range r.msgs {
		r.msgs[i].Buffers = make(net.Buffers, 1)
	}
	return r, nil
}

func (r *xnetReceiver) read(bufs [][]byte) (int, error) {
	n := min(len(bufs), len(r.msgs))
	for i := 0; i < n; i++ {
		r.msgs[i].Buffers[0] = bufs[i]
	}
	return r.pc.ReadBatch(r.msgs[:n], 0)
}

func (r *xnetReceiver) size(i int) int { return r.msgs[i].N }

// oversized reports nothing: without UDP_GRO the kernel never hands out
// more than one datagram per buffer.
func (r *xnetReceiver) oversized() (int, int) { return 0, 0 }

func (r *xnetReceiver) addr(i int) netip.AddrPort {
	ua, ok := r.msgs[i].Addr.(*net.UDPAddr)
	if !ok {
		return netip.AddrPort{}
	}
	return ua.AddrPort()
}
