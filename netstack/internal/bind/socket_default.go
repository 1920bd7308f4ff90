//go:build !linux

package bind

import "net"

// setSocketBuffers asks for size-byte socket buffers.
func setSocketBuffers(c *net.UDPConn, size int) {
	_ = c.SetReadBuffer(size)
	_ = c.SetWriteBuffer(size)
}
