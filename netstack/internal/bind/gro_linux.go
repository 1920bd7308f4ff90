package bind

import (
	"encoding/binary"
	"net"

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
	return onSocket(c, func(fd int) error { return unix.SetsockoptInt(fd, unix.IPPROTO_UDP, unix.UDP_GRO, 1) })
}

// groSegmentSize returns the segment size a UDP_GRO control message in
// oob reports, or 0 if there is none (the message is one datagram). The
// kernel writes an int; a 2-byte value (as some kernels' users expect) is
// read too. Malformed control data yields 0.
func groSegmentSize(oob []byte) int {
	for len(oob) >= unix.SizeofCmsghdr {
		hdr, data, rest, err := unix.ParseOneSocketControlMessage(oob)
		if err != nil {
			return 0
		}
		if hdr.Level == unix.SOL_UDP && hdr.Type == unix.UDP_GRO {
			switch {
			case len(data) >= 4:
				return max(int(int32(binary.NativeEndian.Uint32(data))), 0)
			case len(data) >= 2:
				return int(binary.NativeEndian.Uint16(data))
			}
			return 0
		}
		oob = rest
	}
	return 0
}
