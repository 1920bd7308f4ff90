//go:build !linux

package derp

import (
	"syscall"
	"time"
)

// setUserTimeout does nothing where TCP_USER_TIMEOUT is not offered: a dead
// relay connection is found by the kernel's own retransmission limit.
func setUserTimeout(syscall.RawConn, time.Duration) {}
