package bind

import (
	"net"

	"golang.org/x/sys/unix"
)

// setSocketBuffers asks for size-byte socket buffers, forcing past the
// system maximum when the process may (CAP_NET_ADMIN), since a userspace
// WireGuard moves many datagrams between reads.
func setSocketBuffers(c *net.UDPConn, size int) {
	_ = c.SetReadBuffer(size)
	_ = c.SetWriteBuffer(size)
	rc, err := c.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) {
		_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, size)
		_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, size)
	})
}
