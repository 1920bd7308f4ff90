//go:build unix

package privsock

import "syscall"

// restrictUmask sets the process umask to 0177 and returns a func that
// restores it.
func restrictUmask() func() {
	old := syscall.Umask(0o177)
	return func() { syscall.Umask(old) }
}
