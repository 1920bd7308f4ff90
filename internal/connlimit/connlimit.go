// Package connlimit bounds the connections a server holds: in all, so a
// flood cannot take every file descriptor of a process that runs other
// servers too, and per source address, so one address cannot take them
// all. It also reads the process's descriptor limit those bounds are
// derived from.
package connlimit

import (
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
)

// Limits caps concurrent connections. A zero or negative field means no
// cap.
type Limits struct {
	// Max caps the connections of every listener sharing the Limits.
	Max int
	// PerSource caps the connections of one source address (IPv6: one
	// /64).
	PerSource int
}

// Counter counts connections against Limits. It is safe for concurrent
// use; one Counter may be shared by several listeners.
type Counter struct {
	lim     Limits
	refused atomic.Int64

	mu    sync.Mutex // guards total and per
	total int
	per   map[netip.Addr]int
}

// NewCounter returns a Counter enforcing lim.
func NewCounter(lim Limits) *Counter {
	return &Counter{lim: lim, per: map[netip.Addr]int{}}
}

// Acquire takes a slot for a connection from src, reporting false when a
// cap is reached. Every true must be matched by one Release(src).
func (c *Counter) Acquire(src netip.Addr) bool {
	k := SourceKey(src)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.lim.Max > 0 && c.total >= c.lim.Max || c.lim.PerSource > 0 && c.per[k] >= c.lim.PerSource {
		c.refused.Add(1)
		return false
	}
	c.total++
	c.per[k]++
	return true
}

// Release frees a slot Acquire took for src.
func (c *Counter) Release(src netip.Addr) {
	k := SourceKey(src)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.total--
	if c.per[k] <= 1 {
		delete(c.per, k)
	} else {
		c.per[k]--
	}
}

// Open returns the number of connections holding a slot.
func (c *Counter) Open() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.total
}

// Refused returns how many connections were refused so far.
func (c *Counter) Refused() int64 { return c.refused.Load() }

// SourceKey groups addresses for the per-source cap: an IPv4 address, or
// the /64 of an IPv6 one.
func SourceKey(a netip.Addr) netip.Addr {
	a = a.Unmap()
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.Addr()
	}
	return a
}

// Listener wraps ln: connections over the Counter's caps are closed as
// soon as they are accepted, and Accept goes on with the next one.
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
		src := sourceOf(nc.RemoteAddr())
		if !l.c.Acquire(src) {
			nc.Close()
			continue
		}
		return &conn{Conn: nc, c: l.c, src: src}, nil
	}
}

// conn frees its slot once, on the first Close.
type conn struct {
	net.Conn
	c    *Counter
	src  netip.Addr
	once sync.Once
}

func (c *conn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.c.Release(c.src) })
	return err
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
