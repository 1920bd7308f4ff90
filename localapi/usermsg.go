package localapi

import (
	"errors"

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
	if um, ok := errors.AsType[userMessager](err); ok {
		return um.UserMessage()
	}
	return ""
}
