package bind

import (
	"encoding/binary"
	"net"
	"unsafe"

	"golang.org/x/sys/unix"
)

// groControlSize is the control buffer each received message gets: room
// for the UDP_GRO message (an int) and one more small one.
var groControlSize = 2 * unix.CmsgSpace(4)

// enableGRO turns on UDP generic receive offload for c (UDP_GRO, Linux
// 5.0+): the kernel may then hand one read many datagrams of one source,
// coalesced, with their size in a UDP_GRO control message. Over loopback
// it also keeps a UDP_SEGMENT send whole instead of cutting it into
// datagrams. It reports whether the kernel accepted.
func enableGRO(c *net.UDPConn) bool {
	rc, err := c.SyscallConn()
	if err != nil {
		return false
	}
	ok := false
	rc.Control(func(fd uintptr) {
		ok = unix.SetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_GRO, 1) == nil
	})
	return ok
}

// Layout of struct cmsghdr: cmsg_len (size_t), cmsg_level (int),
// cmsg_type (int), then the data at the aligned header size.
const (
	cmsgLevelOff = unsafe.Offsetof(unix.Cmsghdr{}.Level)
	cmsgTypeOff  = unsafe.Offsetof(unix.Cmsghdr{}.Type)
	cmsgLenSize  = unsafe.Sizeof(unix.Cmsghdr{}.Len)
)

// groSegmentSize returns the segment size a UDP_GRO control message in
// oob reports, or 0 if there is none (the message is one datagram). The
// kernel writes an int; a 2-byte value (as some kernels' users expect) is
// read too. Malformed control data yields 0.
func groSegmentSize(oob []byte) int {
	ne := binary.NativeEndian
	for len(oob) >= unix.SizeofCmsghdr {
		var l uint64
		if cmsgLenSize == 8 {
			l = ne.Uint64(oob)
		} else {
			l = uint64(ne.Uint32(oob))
		}
		if l < uint64(unix.SizeofCmsghdr) || l > uint64(len(oob)) {
			return 0
		}
		level := int32(ne.Uint32(oob[cmsgLevelOff:]))
		typ := int32(ne.Uint32(oob[cmsgTypeOff:]))
		if level == unix.SOL_UDP && typ == unix.UDP_GRO {
			data := oob[unix.SizeofCmsghdr:l]
			switch {
			case len(data) >= 4:
				return max(int(int32(ne.Uint32(data))), 0)
			case len(data) >= 2:
				return int(ne.Uint16(data))
			}
			return 0
		}
		next := unix.CmsgSpace(int(l) - unix.SizeofCmsghdr)
		if next > len(oob) {
			return 0
		}
		oob = oob[next:]
	}
	return 0
}
