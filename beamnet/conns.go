package beamnet

import (
	"context"
	"net"
	"sync"
)

// connSet dials connections and closes those still open when closeAll is
// called: the Server's connections to the coordinator, so that none (and
// no goroutine of its HTTP transport) outlives Close, even one the
// transport was still putting back in its idle pool.
type connSet struct {
	d net.Dialer

	mu     sync.Mutex // guards the following fields
	conns  map[*trackedConn]struct{}
	closed bool
}

func (cs *connSet) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	c, err := cs.d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	tc := &trackedConn{Conn: c, cs: cs}
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.closed {
		c.Close()
		return nil, net.ErrClosed
	}
	if cs.conns == nil {
		cs.conns = map[*trackedConn]struct{}{}
	}
	cs.conns[tc] = struct{}{}
	return tc, nil
}

// closeAll closes every open connection; later dials fail.
func (cs *connSet) closeAll() {
	cs.mu.Lock()
	conns := cs.conns
	cs.conns, cs.closed = nil, true
	cs.mu.Unlock()
	for c := range conns {
		c.Conn.Close()
	}
}

// trackedConn is a connection of a connSet.
type trackedConn struct {
	net.Conn
	cs *connSet
}

func (c *trackedConn) Close() error {
	c.cs.mu.Lock()
	delete(c.cs.conns, c)
	c.cs.mu.Unlock()
	return c.Conn.Close()
}
