package bind

import (
	"errors"
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// gsoControlSize is the control buffer one UDP_SEGMENT message needs.
var gsoControlSize = unix.CmsgSpace(2)

// supportsGSO reports whether the kernel segments UDP for c (UDP_SEGMENT,
// Linux 4.18+): one sendmsg then carries many equal-size datagrams.
func supportsGSO(c *net.UDPConn) bool {
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

// putGSOSize writes a UDP_SEGMENT control message for segments of size
// into oob (which must hold gsoControlSize bytes) and returns it.
func putGSOSize(oob []byte, size uint16) []byte {
	oob = oob[:gsoControlSize]
	clear(oob)
	h := (*unix.Cmsghdr)(unsafePointer(&oob[0]))
	h.Level = unix.SOL_UDP
	h.Type = unix.UDP_SEGMENT
	h.SetLen(unix.CmsgLen(2))
	d := oob[unix.CmsgLen(0):]
	*(*uint16)(unsafePointer(&d[0])) = size
	return oob
}

// gsoFailed reports whether err means the path cannot do UDP
// segmentation offload (EIO without checksum offload), so sending must
// fall back to one datagram per message.
func gsoFailed(err error) bool {
	var se *os.SyscallError
	return errors.As(err, &se) && se.Err == unix.EIO
}
