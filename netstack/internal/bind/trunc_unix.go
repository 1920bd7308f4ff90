//go:build unix

package bind

import "syscall"

// msgTrunc is the receive flag that says a datagram did not fit the buffer.
const msgTrunc = syscall.MSG_TRUNC
