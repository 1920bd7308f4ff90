// Package connlimit bounds the connections a server holds: in all, so a
// flood cannot take every file descriptor of a process that runs other
// servers too, and, if asked, per source address. When the bound in all
// is reached, a newcomer is not simply refused, or a few addresses that
// fill it would lock everyone else out: it pushes out a connection of
// the source holding the most, unless its own source would then hold as
// many. A flood from a few addresses then pushes out its own connections,
// never those of an address holding no more than its fair share.
package connlimit

import (
	"container/list"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
)

// Limits caps concurrent connections. A zero or negative field means no
// cap.
type Limits struct {
	// Max caps the connections of every listener sharing the Counter.
	// Once it is reached, a newcomer pushes out the oldest connection of
	// the group (an IPv4 address, an IPv6 /48) holding the most, if its
	// own group, with it, would still hold fewer; otherwise it is
	// refused.
	Max int
	// PerSource caps the connections of one source address (IPv6: one
	// /64); a newcomer over it is refused.
	PerSource int
}

// Counter counts connections against Limits and closes those it pushes
// out. It is safe for concurrent use; one Counter may be shared by
// several listeners.
//
// Connections are counted per source (SourceKey) for Limits.PerSource,
// and per group (groupKey: an IPv4 address, an IPv6 /48) to find the
// biggest holder when Limits.Max is reached; a flood from one IPv6
// network is one holder however many /64s it spreads over.
type Counter struct {
	refused   atomic.Int64
	pushedOut atomic.Int64

	mu     sync.Mutex // guards the following fields
	lim    Limits
	total  int
	per    map[netip.Addr]int    // by SourceKey
	groups map[netip.Addr]*group // by groupKey
	// byCount[n] heads the list of groups holding n connections, linked
	// by group.prev and next; most is the highest n with a group (0 if
	// none). Counts move by one, so most is kept in constant time.
	byCount []*group
	most    int
}

// group is the connections of one groupKey.
type group struct {
	conns      list.List // of *conn, oldest first
	prev, next *group    // in Counter.byCount[conns.Len()]
}

// NewCounter returns a Counter enforcing lim.
func NewCounter(lim Limits) *Counter {
	return &Counter{lim: lim, per: map[netip.Addr]int{}, groups: map[netip.Addr]*group{}}
}

// SetLimits replaces the caps. Connections already open are kept: under
// a lowered Max, each newcomer that gets in pushes one out, so the count
// does not grow but does not fall by itself either.
func (c *Counter) SetLimits(lim Limits) {
	c.mu.Lock()
	c.lim = lim
	c.mu.Unlock()
}

// Admit takes a slot for nc, counted against the source of its remote
// address, and returns nc wrapped: its first Close frees the slot. If
// the caps refuse nc, Admit closes it and returns nil. To make room it
// may push out another connection it admitted: that one is closed (its
// underlying net.Conn, so a server blocked reading or writing it wakes
// up) and its slot freed at once.
//
// release, if not nil, runs once when the returned connection gives up
// its slot: on its first Close, or when it is pushed out.
func (c *Counter) Admit(nc net.Conn, release func()) net.Conn {
	src := sourceOf(nc.RemoteAddr())
	cc := &conn{Conn: nc, c: c, src: SourceKey(src), grp: groupKey(src), release: release}
	c.mu.Lock()
	out, ok := c.admitLocked(cc)
	c.mu.Unlock()
	if !ok {
		c.refused.Add(1)
		nc.Close()
		return nil
	}
	if out != nil {
		c.pushedOut.Add(1)
		out.Conn.Close()
		out.released()
	}
	return cc
}

// admitLocked counts cc in, reporting false if the caps refuse it, and
// returns the connection it pushed out to make room, if any, already
// counted out. c.mu held.
func (c *Counter) admitLocked(cc *conn) (out *conn, ok bool) {
	if c.lim.PerSource > 0 && c.per[cc.src] >= c.lim.PerSource {
		return nil, false
	}
	if c.lim.Max > 0 && c.total >= c.lim.Max {
		n := 0
		if g := c.groups[cc.grp]; g != nil {
			n = g.conns.Len()
		}
		// Only a group that would still hold fewer than the biggest
		// holder may push one of its connections out: the biggest
		// holder's own newcomers are refused, and two groups never take
		// turns pushing each other out.
		if n+1 >= c.most {
			return nil, false
		}
		out = c.byCount[c.most].conns.Front().Value.(*conn)
		c.removeLocked(out)
	}
	c.total++
	c.per[cc.src]++
	g := c.groups[cc.grp]
	if g == nil {
		g = &group{}
		c.groups[cc.grp] = g
	} else {
		c.unlinkLocked(g)
	}
	cc.elem = g.conns.PushBack(cc)
	c.linkLocked(g)
	return out, true
}

// removeLocked counts cc out, if it still holds a slot. c.mu held.
func (c *Counter) removeLocked(cc *conn) {
	if cc.elem == nil {
		return
	}
	c.total--
	if c.per[cc.src] <= 1 {
		delete(c.per, cc.src)
	} else {
		c.per[cc.src]--
	}
	g := c.groups[cc.grp]
	c.unlinkLocked(g)
	g.conns.Remove(cc.elem)
	cc.elem = nil
	if g.conns.Len() == 0 {
		delete(c.groups, cc.grp)
	} else {
		c.linkLocked(g)
	}
	// A count moves by one: if none is left at most, the group that was
	// there is now at most-1 (or gone, when most was 1).
	if c.most > 0 && c.byCount[c.most] == nil {
		c.most--
	}
}

// linkLocked enters g in the list of its count. c.mu held.
func (c *Counter) linkLocked(g *group) {
	n := g.conns.Len()
	for len(c.byCount) <= n {
		c.byCount = append(c.byCount, nil)
	}
	g.prev, g.next = nil, c.byCount[n]
	if g.next != nil {
		g.next.prev = g
	}
	c.byCount[n] = g
	c.most = max(c.most, n)
}

// unlinkLocked takes g out of the list of its count; the caller
// changes the count and links it again (or drops it). c.mu held.
func (c *Counter) unlinkLocked(g *group) {
	if g.prev != nil {
		g.prev.next = g.next
	} else {
		c.byCount[g.conns.Len()] = g.next
	}
	if g.next != nil {
		g.next.prev = g.prev
	}
	g.prev, g.next = nil, nil
}

// Open returns the number of connections holding a slot.
func (c *Counter) Open() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.total
}

// Refused returns how many connections were refused so far.
func (c *Counter) Refused() int64 { return c.refused.Load() }

// PushedOut returns how many connections were pushed out so far to make
// room for newcomers.
func (c *Counter) PushedOut() int64 { return c.pushedOut.Load() }

// SourceKey groups addresses for the per-source cap: an IPv4 address, or
// the /64 of an IPv6 one.
func SourceKey(a netip.Addr) netip.Addr {
	return prefixAddr(a, 64)
}

// groupKey groups addresses to find the biggest holder: an IPv4 address,
// or the /48 of an IPv6 one (a site; one holder can spread over its
// /64s at will).
func groupKey(a netip.Addr) netip.Addr {
	return prefixAddr(a, 48)
}

// prefixAddr returns a unmapped, masked to bits if it is IPv6.
func prefixAddr(a netip.Addr, bits int) netip.Addr {
	a = a.Unmap()
	if a.Is6() {
		p, _ := a.Prefix(bits)
		return p.Addr()
	}
	return a
}

// Listener wraps ln: each accepted connection is admitted by the
// Counter (Admit); those it refuses are closed as soon as they are
// accepted, and Accept goes on with the next one.
func Listener(ln net.Listener, c *Counter) net.Listener {
	return &listener{Listener: ln, c: c}
}

type listener struct {
	net.Listener
	c *Counter
}

func (l *listener) Accept() (net.Conn, error) {
	for {
		nc, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if cc := l.c.Admit(nc, nil); cc != nil {
			return cc, nil
		}
	}
}

// conn frees its slot once: on the first Close, or when pushed out.
// A server that takes it over from HTTP (Hijack) gets this conn back,
// so it stays counted, and can be pushed out, until closed.
type conn struct {
	net.Conn
	c        *Counter
	src, grp netip.Addr
	release  func()
	once     sync.Once
	elem     *list.Element // in its group's conns; nil once counted out (guarded by c.mu)
}

func (cc *conn) Close() error {
	err := cc.Conn.Close()
	cc.c.mu.Lock()
	cc.c.removeLocked(cc)
	cc.c.mu.Unlock()
	cc.released()
	return err
}

// NetConn returns the wrapped conn, as tls.Conn.NetConn does (copying
// between bare TCP conns lets the kernel splice). Closing that one does
// not free the slot: only this conn's Close, or a push-out, does.
func (cc *conn) NetConn() net.Conn { return cc.Conn }

// released runs the release func, once.
func (cc *conn) released() {
	cc.once.Do(func() {
		if cc.release != nil {
			cc.release()
		}
	})
}

// sourceOf returns the IP of a remote address; the zero Addr (one shared
// bucket) if it has none.
func sourceOf(a net.Addr) netip.Addr {
	switch a := a.(type) {
	case *net.TCPAddr:
		return a.AddrPort().Addr()
	case nil:
		return netip.Addr{}
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr()
}
