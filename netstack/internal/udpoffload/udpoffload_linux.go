package udpoffload

import (
	"encoding/binary"
	"errors"
	"net"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// GROControlSize is the control buffer each received message needs: room
// for the UDP_GRO message (an int) and one more small one.
var GROControlSize = 2 * unix.CmsgSpace(4)

// GSOControlSize is the control buffer one UDP_SEGMENT message needs.
var GSOControlSize = unix.CmsgSpace(2)

// EnableGRO turns on UDP generic receive offload for c (UDP_GRO, Linux
// 5.0+): the kernel may then hand one read many datagrams of one source,
// coalesced, with their size in a UDP_GRO control message. Over loopback
// it also keeps a UDP_SEGMENT send whole instead of cutting it into
// datagrams. It reports whether the kernel accepted.
func EnableGRO(c *net.UDPConn) bool {
	return onSocket(c, func(fd int) error { return unix.SetsockoptInt(fd, unix.IPPROTO_UDP, unix.UDP_GRO, 1) })
}

// SupportsGSO reports whether the kernel segments UDP for c (UDP_SEGMENT,
// Linux 4.18+): one sendmsg then carries many equal-size datagrams.
func SupportsGSO(c *net.UDPConn) bool {
	return onSocket(c, func(fd int) error {
		_, err := unix.GetsockoptInt(fd, unix.IPPROTO_UDP, unix.UDP_SEGMENT)
		return err
	})
}

// onSocket runs f on c's descriptor and reports whether it succeeded.
func onSocket(c *net.UDPConn, f func(fd int) error) bool {
	rc, err := c.SyscallConn()
	if err != nil {
		return false
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = f(int(fd)) }); err != nil {
		return false
	}
	return ferr == nil
}

// GROSegmentSize returns the segment size a UDP_GRO control message in
// oob reports, or 0 if there is none (the message is one datagram). The
// kernel writes an int; a 2-byte value (as some kernels' users expect) is
// read too. Malformed control data yields 0.
func GROSegmentSize(oob []byte) int {
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

// PutGSOSize writes a UDP_SEGMENT control message for segments of size
// into oob (which must hold GSOControlSize bytes) and returns it.
func PutGSOSize(oob []byte, size uint16) []byte {
	oob = oob[:GSOControlSize]
	clear(oob)
	h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
	h.Level = unix.SOL_UDP
	h.Type = unix.UDP_SEGMENT
	h.SetLen(unix.CmsgLen(2))
	binary.NativeEndian.PutUint16(oob[unix.CmsgLen(0):], size)
	return oob
}

// GSOFailed reports whether err means the path cannot segment (EIO
// without checksum offload, EINVAL for an unsupported size), so sending
// must fall back to one datagram per message.
func GSOFailed(err error) bool {
	var se *os.SyscallError
	return errors.As(err, &se) && (se.Err == unix.EIO || se.Err == unix.EINVAL)
}
