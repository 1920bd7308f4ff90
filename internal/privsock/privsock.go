// Package privsock listens on Unix sockets that only the current user may
// connect to.
package privsock

import "net"

// Listen listens on a Unix socket at path that is created readable and
// writable by the current user only (no window in which others may
// connect, where the platform has a umask).
func Listen(path string) (net.Listener, error) {
	restore := restrictUmask()
	ln, err := net.Listen("unix", path)
	restore()
	return ln, err
}
