//go:build unix

package cli

import "syscall"

// detachAttr starts a child in its own session, so it outlives the
// terminal that ran beam up.
func detachAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setsid: true} }
