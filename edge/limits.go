package edge

import (
	"time"

	"beam.dev/beam/internal/connlimit"
)

// Limits are the caps SetLimits changes on a running edge. Zero means the
// default and negative means none, as in Options.
type Limits struct {
	// MaxConns is as Options.MaxConns.
	MaxConns int
	// MaxConnsPerClient is as Options.MaxConnsPerClient.
	MaxConnsPerClient int
	// BodyTimeout is as Options.BodyTimeout.
	BodyTimeout time.Duration
}

// SetLimits replaces the connection caps and the body timeout of a
// running edge without touching its connections: the caps apply to
// connections accepted from now on (under a lowered MaxConns, each one
// admitted pushes one out, so the count does not grow; over a lowered
// MaxConnsPerClient, a client gets none until enough have closed), the
// body timeout to requests that start from now on.
func (e *Edge) SetLimits(l Limits) {
	switch {
	case l.MaxConns == 0:
		l.MaxConns = DefaultMaxConns
	case l.MaxConns < 0:
		l.MaxConns = 0 // no cap: connlimit takes only a positive one
	}
	if l.MaxConnsPerClient == 0 {
		l.MaxConnsPerClient = DefaultMaxConnsPerClient
	}
	if l.BodyTimeout == 0 {
		l.BodyTimeout = DefaultBodyTimeout
	}
	e.conns.SetLimits(connlimit.Limits{Max: l.MaxConns})
	e.clients.setMax(l.MaxConnsPerClient)
	e.bodyTimeout.Store(int64(l.BodyTimeout))
}
