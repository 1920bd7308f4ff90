package localapi

import (
	"errors"
	"net"
	"strings"
	"syscall"

	"beam.dev/beam/dnsserver"
	"beam.dev/beam/node"
)

// userMessager is an error that says, for a user, what failed and what to
// do next (coordclient's errors, for one).
type userMessager interface {
	error
	UserMessage() string
}

// userMessage returns the sentence a user should read for err, or "" when
// none is known and the error's own text must do. It is the one place the
// daemon turns its errors into advice.
func userMessage(err error) string {
	switch {
	case errors.Is(err, node.ErrNotRunning):
		return "this node is not in the mesh: run beam up"
	case errors.Is(err, dnsserver.ErrNotFound):
		return "no such name in this network: beam status lists the peers (a new one appears within a second of joining)"
	}
	um, ok := errors.AsType[userMessager](err)
	if !ok {
		if errors.Is(err, syscall.ECONNREFUSED) {
			// The operation (dial beta:8000) is the error's first part.
			op, _, _ := strings.Cut(err.Error(), ": ")
			return op + ": connection refused: nothing listens on that port of the peer (peers reach its loopback, 127.0.0.1)"
		}
		return ""
	}
	m := um.UserMessage()
	// A network failure's own words ("connect: connection refused") tell
	// the user which of the possible causes it is.
	if oe, ok := errors.AsType[*net.OpError](err); ok && oe.Err != nil && m != "" {
		if head, tail, ok := strings.Cut(m, ": "); ok {
			return head + " (" + oe.Err.Error() + "): " + tail
		}
	}
	return m
}
