package bind

import (
	"encoding/binary"
	"net"
	"net/netip"
	"sync/atomic"
	"syscall"
	"unsafe"

	"beam.dev/beam/netstack/internal/udpoffload"
	"golang.org/x/sys/unix"
)

// mmsghdr is struct mmsghdr from recvmmsg(2); Go pads it like C does.
type mmsghdr struct {
	hdr unix.Msghdr
	n   uint32
}

// groStageMsgs is how many coalesced messages one recvmmsg(2) reads when
// UDP_GRO is on; each takes a 64 KiB staging buffer.
const groStageMsgs = 4

// groStageSize holds the largest message UDP_GRO builds (64 KiB).
const groStageSize = 1 << 16

// batchReceiver reads datagrams with recvmmsg(2) without allocating:
// headers, iovecs and address buffers are allocated once, and the RawConn
// callback is a method value bound once. One batchReceiver serves one
// goroutine.
//
// Without UDP_GRO it reads straight into the caller's buffers, one
// datagram each. With UDP_GRO it reads up to groStageMsgs messages into
// its own 64 KiB staging buffers and copies the datagrams they hold, one
// per caller buffer; datagrams that do not fit wait for the next read,
// which returns them without a syscall.
type batchReceiver struct {
	rc     syscall.RawConn
	closed *atomic.Bool // the socket's: set by Bind.Close
	hdrs   []mmsghdr
	iovs   []unix.Iovec
	names  []unix.RawSockaddrInet6
	addrs  []netip.AddrPort
	sizes  []int

	// UDP_GRO state; gro is false when the kernel refused it.
	gro   bool
	oob   []byte // udpoffload.GROControlSize bytes per message
	split groSplitter
	// tooBig counts the datagrams of the last read that did not fit the
	// caller's buffer after splitting, tooBigLen the size of the last.
	tooBig, tooBigLen int

	// state of the call in progress, for readF
	count int
	got   int
	errno syscall.Errno
	readF func(fd uintptr) bool
}

func newBatchReceiver(s *udpSocket, size int) (*batchReceiver, error) {
	rc, err := s.conn.SyscallConn()
	if err != nil {
		return nil, err
	}
	msgs := size
	if s.gro {
		msgs = groStageMsgs
	}
	r := &batchReceiver{
		rc:     rc,
		closed: &s.closed,
		hdrs:   make([]mmsghdr, msgs),
		iovs:   make([]unix.Iovec, msgs),
		names:  make([]unix.RawSockaddrInet6, msgs),
		addrs:  make([]netip.AddrPort, size),
		sizes:  make([]int, size),
		gro:    s.gro,
	}
	if r.gro {
		r.oob = make([]byte, msgs*udpoffload.GROControlSize)
		r.split.bufs = make([][]byte, msgs)
		for i := range r.split.bufs {
			r.split.bufs[i] = make([]byte, groStageSize)
		}
		r.split.msgs = make([]groMsg, 0, msgs)
	}
	r.readF = r.recvmmsg
	return r, nil
}

func (r *batchReceiver) recvmmsg(fd uintptr) bool {
	n, _, errno := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&r.hdrs[0])), uintptr(r.count), unix.MSG_DONTWAIT, 0, 0)
	if errno == unix.EAGAIN || errno == unix.EWOULDBLOCK || errno == unix.EINTR {
		return false
	}
	r.got, r.errno = int(n), errno
	return true
}

// recv reads up to len(bufs) messages into bufs, with oobSize bytes of
// control data each when oobSize > 0, and returns how many arrived.
func (r *batchReceiver) recv(bufs [][]byte, oobSize int) (int, error) {
	count := min(len(bufs), len(r.hdrs))
	for i := 0; i < count; i++ {
		r.iovs[i].Base = unsafe.SliceData(bufs[i])
		r.iovs[i].SetLen(len(bufs[i]))
		h := &r.hdrs[i].hdr
		*h = unix.Msghdr{}
		h.Name = (*byte)(unsafe.Pointer(&r.names[i]))
		h.Namelen = unix.SizeofSockaddrInet6
		h.Iov = &r.iovs[i]
		h.SetIovlen(1)
		if oobSize > 0 {
			h.Control = &r.oob[i*oobSize]
			h.SetControllen(oobSize)
		}
		r.hdrs[i].n = 0
	}
	r.count = count
	if err := r.rc.Read(r.readF); err != nil {
		return 0, err
	}
	if r.errno != 0 {
		return 0, &net.OpError{Op: "read", Net: "udp", Err: r.errno}
	}
	return r.got, nil
}

// read fills bufs with up to len(bufs) datagrams and returns how many
// arrived; r.sizes and r.addrs describe them.
func (r *batchReceiver) read(bufs [][]byte) (int, error) {
	if !r.gro {
		got, err := r.recv(bufs[:min(len(bufs), len(r.sizes))], 0)
		for i := 0; i < got; i++ {
			r.sizes[i] = int(r.hdrs[i].n)
			r.addrs[i] = sockaddrToAddrPort(&r.names[i])
		}
		return got, err
	}
	if !r.split.pending() {
		got, err := r.recv(r.split.bufs, udpoffload.GROControlSize)
		if err != nil {
			return 0, err
		}
		r.split.reset(got)
		for i := 0; i < got; i++ {
			h := &r.hdrs[i]
			oob := r.oob[i*udpoffload.GROControlSize:][:min(int(h.hdr.Controllen), udpoffload.GROControlSize)]
			r.split.msgs[i] = groMsg{
				n:   int(h.n),
				seg: udpoffload.GROSegmentSize(oob),
				src: sockaddrToAddrPort(&r.names[i]),
			}
		}
	} else if r.closed.Load() {
		// Datagrams read before Close are not handed out after it.
		r.split.drop()
		return 0, net.ErrClosed
	}
	n := 0
	r.tooBig = 0
	for ; n < len(bufs) && n < len(r.sizes) && r.split.pending(); n++ {
		pkt, src := r.split.next()
		r.addrs[n] = src
		if len(pkt) > len(bufs[n]) {
			// Does not fit: dropped, as a truncated read would be, and
			// reported through oversized.
			r.sizes[n] = 0
			r.tooBig++
			r.tooBigLen = len(pkt)
			continue
		}
		r.sizes[n] = copy(bufs[n], pkt)
	}
	return n, nil
}

func sockaddrToAddrPort(sa *unix.RawSockaddrInet6) netip.AddrPort {
	switch sa.Family {
	case unix.AF_INET:
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa4.Port))[:])
		return netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), port)
	case unix.AF_INET6:
		port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:])
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), port)
	}
	return netip.AddrPort{}
}

func newReceiver(s *udpSocket, size int) (receiver, error) { return newBatchReceiver(s, size) }

func (r *batchReceiver) size(i int) int            { return r.sizes[i] }
func (r *batchReceiver) oversized() (int, int)     { return r.tooBig, r.tooBigLen }
func (r *batchReceiver) addr(i int) netip.AddrPort { return r.addrs[i] }
