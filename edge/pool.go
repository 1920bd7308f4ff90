package edge

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// target is the shared runtime state of one device address:port. It
// outlives routing snapshots, so health survives SetRoutes.
type target struct {
	addr      netip.AddrPort
	downUntil atomic.Int64 // unix nanoseconds; skipped in pools while in the future
	active    atomic.Int64 // requests and connections under way
	removed   atomic.Bool  // no route has the target any more

	mu    sync.Mutex // guards conns and idle
	conns map[*targetConn]struct{}
	idle  []*upstream // kept-alive HTTP/1.1 connections (plain.go), the most recent last
}

// targetConn is a connection to a target, closed by closeConns when the
// target leaves the routes or its device stops answering: requests under
// way then fail at once instead of hanging on a peer that is gone.
type targetConn struct {
	net.Conn
	t      *target
	once   sync.Once
	closed atomic.Bool
}

func (c *targetConn) Close() error {
	c.closed.Store(true)
	c.once.Do(func() {
		c.t.mu.Lock()
		delete(c.t.conns, c)
		c.t.mu.Unlock()
	})
	return c.Conn.Close()
}

// CloseWrite half-closes the connection when the underlying one can.
func (c *targetConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Close()
}

// track registers c as a connection to t.
func (t *target) track(c net.Conn) net.Conn {
	tc := &targetConn{Conn: c, t: t}
	t.mu.Lock()
	if t.conns == nil {
		t.conns = map[*targetConn]struct{}{}
	}
	t.conns[tc] = struct{}{}
	t.mu.Unlock()
	return tc
}

// remove marks t as gone from the routes and closes its connections,
// including one whose dial completes meanwhile (see Edge.dialTarget).
func (t *target) remove() {
	t.removed.Store(true)
	t.closeConns()
}

// closeConns closes every connection to t.
func (t *target) closeConns() {
	t.mu.Lock()
	conns := make([]*targetConn, 0, len(t.conns))
	for c := range t.conns {
		conns = append(conns, c)
	}
	clear(t.idle)
	t.idle = t.idle[:0]
	t.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
}

func (t *target) markDown(until time.Time) { t.downUntil.Store(until.UnixNano()) }
func (t *target) markUp()                  { t.downUntil.Store(0) }
func (t *target) isDown(now time.Time) bool {
	return t.downUntil.Load() > now.UnixNano()
}

// errAllDown is returned when every member of a route is marked down.
var errAllDown = errors.New("edge: every target of the route is down")

// pick chooses a target for a new request or connection, skipping members
// in skip and, in pools, members marked down. A single-target route always
// returns its target (a failed dial then says why).
func (rt *route) pick(now time.Time, skip map[*target]bool) (*target, error) {
	if len(rt.targets) == 1 {
		if skip[rt.targets[0]] {
			return nil, errAllDown
		}
		return rt.targets[0], nil
	}
	usable := func(t *target) bool { return !skip[t] && !t.isDown(now) }
	if rt.Balance == LeastConn {
		var best *target
		for _, t := range rt.targets {
			if usable(t) && (best == nil || t.active.Load() < best.active.Load()) {
				best = t
			}
		}
		if best == nil {
			return nil, errAllDown
		}
		return best, nil
	}
	n := uint64(len(rt.targets))
	start := rt.rr.Add(1) - 1
	for i := range n {
		if t := rt.targets[(start+i)%n]; usable(t) {
			return t, nil
		}
	}
	return nil, errAllDown
}

// healthLoop dials the members of every pool each HealthInterval, marking
// them up or down.
func (e *Edge) healthLoop() {
	tick := time.NewTicker(e.opts.HealthInterval)
	defer tick.Stop()
	for {
		select {
		case <-e.ctx.Done():
			return
		case <-tick.C:
		}
		e.checkPools()
	}
}

func (e *Edge) checkPools() {
	tb := e.routes.Load()
	seen := map[*target]bool{}
	var list []*target
	add := func(rt *route) {
		if len(rt.targets) < 2 || rt.Proto == ProtoUDP {
			return
		}
		for _, t := range rt.targets {
			if !seen[t] {
				seen[t] = true
				list = append(list, t)
			}
		}
	}
	for _, rt := range tb.hosts {
		add(rt)
	}
	for _, rt := range tb.tcp {
		add(rt)
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for _, t := range list {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			ctx, cancel := context.WithTimeout(e.ctx, e.opts.HealthInterval)
			defer cancel()
			c, err := e.opts.Dial(ctx, "tcp", t.addr.String())
			if err != nil {
				if e.ctx.Err() == nil {
					if !t.isDown(time.Now()) {
						e.log.Info("pool member down", "target", t.addr, "err", err)
					}
					t.markDown(time.Now().Add(e.opts.DownFor))
					// The device stopped answering: fail what is under way
					// to it so clients retry on another member.
					t.closeConns()
				}
				return
			}
			c.Close()
			if t.isDown(time.Now()) {
				e.log.Info("pool member up", "target", t.addr)
			}
			t.markUp()
		})
	}
	wg.Wait()
}

// janitorLoop drops idle per-client rate limiters and the connections
// to targets idle for longer than idleConnTimeout.
func (e *Edge) janitorLoop() {
	tick := time.NewTicker(time.Minute)
	defer tick.Stop()
	for {
		select {
		case <-e.ctx.Done():
			return
		case now := <-tick.C:
			e.mu.Lock()
			for _, l := range e.limiters {
				l.prune(now)
			}
			targets := make([]*target, 0, len(e.targets))
			for _, t := range e.targets {
				targets = append(targets, t)
			}
			e.mu.Unlock()
			for _, t := range targets {
				t.pruneIdle(now.Add(-idleConnTimeout))
			}
		}
	}
}
