package gv

import (
	"errors"
	"net"
	"os"
	"syscall"

	"gvisor.dev/gvisor/pkg/tcpip"
)

// Error is a gVisor error converted to Go's error conventions. It unwraps to
// the closest standard error (a syscall.Errno, net.ErrClosed or
// os.ErrDeadlineExceeded) so callers can test it with errors.Is.
type Error struct {
	msg string
	std error
}

// Error returns gVisor's text for the error.
func (e *Error) Error() string { return e.msg }

// Unwrap returns the standard error closest to the gVisor error.
func (e *Error) Unwrap() error { return e.std }

// Timeout reports whether the error is a timeout, for net.Error users.
func (e *Error) Timeout() bool { return errors.Is(e.std, os.ErrDeadlineExceeded) }

// Err converts a tcpip.Error, which does not implement error (see gVisor's
// pkg/tcpip/errors.go), into an error. A nil tcpip.Error yields nil. This is
// the only place in Beam where that conversion happens.
func Err(e tcpip.Error) error {
	if e == nil {
		return nil
	}
	var std error
	switch e.(type) {
	case *tcpip.ErrConnectionRefused:
		std = syscall.ECONNREFUSED
	case *tcpip.ErrConnectionReset:
		std = syscall.ECONNRESET
	case *tcpip.ErrConnectionAborted:
		std = syscall.ECONNABORTED
	case *tcpip.ErrTimeout:
		std = os.ErrDeadlineExceeded
	case *tcpip.ErrClosedForSend, *tcpip.ErrClosedForReceive, *tcpip.ErrInvalidEndpointState:
		std = net.ErrClosed
	case *tcpip.ErrPortInUse, *tcpip.ErrDuplicateAddress:
		std = syscall.EADDRINUSE
	case *tcpip.ErrBadLocalAddress, *tcpip.ErrNoPortAvailable:
		std = syscall.EADDRNOTAVAIL
	case *tcpip.ErrNotConnected:
		std = syscall.ENOTCONN
	case *tcpip.ErrHostUnreachable, *tcpip.ErrNetworkUnreachable, *tcpip.ErrHostDown:
		std = syscall.EHOSTUNREACH
	case *tcpip.ErrWouldBlock:
		std = syscall.EAGAIN
	case *tcpip.ErrMessageTooLong:
		std = syscall.EMSGSIZE
	case *tcpip.ErrNoBufferSpace:
		std = syscall.ENOBUFS
	case *tcpip.ErrNotSupported, *tcpip.ErrUnknownProtocol:
		std = syscall.EOPNOTSUPP
	case *tcpip.ErrInvalidOptionValue, *tcpip.ErrBadAddress:
		std = syscall.EINVAL
	case *tcpip.ErrAborted:
		std = syscall.ECONNABORTED
	default:
		std = syscall.EIO
	}
	return &Error{msg: e.String(), std: std}
}
