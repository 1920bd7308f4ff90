package bind

import (
	"encoding/binary"
	"net"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// mmsghdr is struct mmsghdr from recvmmsg(2); Go pads it like C does.
type mmsghdr struct {
	hdr unix.Msghdr
	n   uint32
}

// batchReceiver reads datagrams with recvmmsg(2) into caller buffers
// without allocating: headers, iovecs and address buffers are allocated
// once, and the RawConn callback is a method value bound once. One
// batchReceiver serves one goroutine.
type batchReceiver struct {
	rc    syscall.RawConn
	hdrs  []mmsghdr
	iovs  []unix.Iovec
	names []unix.RawSockaddrInet6
	addrs []netip.AddrPort
	sizes []int

	// state of the call in progress, for readF
	count int
	got   int
	errno syscall.Errno
	readF func(fd uintptr) bool
}

func newBatchReceiver(c *net.UDPConn, size int) (*batchReceiver, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	r := &batchReceiver{
		rc:    rc,
		hdrs:  make([]mmsghdr, size),
		iovs:  make([]unix.Iovec, size),
		names: make([]unix.RawSockaddrInet6, size),
		addrs: make([]netip.AddrPort, size),
		sizes: make([]int, size),
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

// read fills bufs with up to len(bufs) datagrams and returns how many
// arrived; r.sizes and r.addrs describe them.
func (r *batchReceiver) read(bufs [][]byte) (int, error) {
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
		r.hdrs[i].n = 0
	}
	r.count = count
	if err := r.rc.Read(r.readF); err != nil {
		return 0, err
	}
	if r.errno != 0 {
		return 0, &net.OpError{Op: "read", Net: "udp", Err: r.errno}
	}
	for i := 0; i < r.got; i++ {
		r.sizes[i] = int(r.hdrs[i].n)
		r.addrs[i] = sockaddrToAddrPort(&r.names[i])
	}
	return r.got, nil
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

func newReceiver(s *udpSocket, size int) (receiver, error) { return newBatchReceiver(s.conn, size) }

func (r *batchReceiver) size(i int) int            { return r.sizes[i] }
func (r *batchReceiver) addr(i int) netip.AddrPort { return r.addrs[i] }
