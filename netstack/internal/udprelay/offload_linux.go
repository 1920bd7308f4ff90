package udprelay

import (
	"encoding/binary"
	"errors"
	"net"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// oobSize is the control buffer a read (UDP_GRO) or a write (UDP_SEGMENT)
// needs.
var oobSize = 2 * unix.CmsgSpace(4)

// enableGRO turns on UDP generic receive offload for c (Linux 5.0+): one
// read may then return many datagrams of one source, coalesced, with their
// size in a control message. It reports whether the kernel accepted.
func enableGRO(c *net.UDPConn) bool {
	return onSocket(c, func(fd int) error { return unix.SetsockoptInt(fd, unix.IPPROTO_UDP, unix.UDP_GRO, 1) })
}

// supportsGSO reports whether the kernel segments UDP for c (UDP_SEGMENT,
// Linux 4.18+).
func supportsGSO(c *net.UDPConn) bool {
	return onSocket(c, func(fd int) error {
		_, err := unix.GetsockoptInt(fd, unix.IPPROTO_UDP, unix.UDP_SEGMENT)
		return err
	})
}

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

// groSegmentSize returns the segment size a UDP_GRO control message in
// oob reports, or 0 if there is none (one datagram).
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

// gsoControl returns a UDP_SEGMENT control message for segments of size,
// in oob's space.
func gsoControl(oob []byte, size int) []byte {
	n := unix.CmsgSpace(2)
	oob = oob[:n]
	clear(oob)
	h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
	h.Level = unix.SOL_UDP
	h.Type = unix.UDP_SEGMENT
	h.SetLen(unix.CmsgLen(2))
	binary.NativeEndian.PutUint16(oob[unix.CmsgLen(0):], uint16(size))
	return oob
}

// gsoFailed reports whether err means the path cannot segment (EIO
// without checksum offload, EINVAL for an unsupported size).
func gsoFailed(err error) bool {
	var se *os.SyscallError
	return errors.As(err, &se) && (se.Err == unix.EIO || se.Err == unix.EINVAL)
}
