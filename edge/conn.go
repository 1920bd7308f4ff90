package edge

import (
	"crypto/tls"
	"errors"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
)

// addrOf returns the IP and port of a net.Addr (zero if unknown).
func addrOf(a net.Addr) netip.AddrPort {
	switch a := a.(type) {
	case *net.TCPAddr:
		return a.AddrPort()
	case *net.UDPAddr:
		return a.AddrPort()
	}
	if a == nil {
		return netip.AddrPort{}
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

// admitConn applies the connection caps (MaxConnsPerClient, then
// MaxConns, which may push out a connection of the biggest holder to
// make room) to a freshly accepted connection. It returns nil (having
// closed c) when they refuse it; otherwise a conn that frees its slots
// when closed or pushed out. Every connection is counted, even without
// caps, so caps set later (SetLimits) count those already open.
func (e *Edge) admitConn(c net.Conn) net.Conn {
	ip := addrOf(c.RemoteAddr()).Addr()
	if !e.clients.acquire(ip) {
		e.met.connRefused()
		c.Close()
		return nil
	}
	nc := e.conns.Admit(c, func() { e.met.connClosed(); e.clients.release(ip) })
	if nc == nil {
		e.clients.release(ip)
		e.met.connRefused()
		return nil
	}
	e.met.connOpened()
	return nc
}

// prefixConn replays already-read bytes before reading from Conn.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// h1Conn is a client connection as handed to the HTTP server. It watches
// the bytes of request heads for a header block with both Content-Length
// and Transfer-Encoding, which net/http would accept (dropping
// Content-Length) but which we refuse as request smuggling; see
// smuggleScanner. When it wraps a TLS conn it exposes the TLS state so
// net/http still fills Request.TLS.
type h1Conn struct {
	net.Conn
	scan    smuggleScanner
	suspect atomic.Bool
	gone    goneWatch
	// ahead holds what a small read (see Read) took from Conn beyond
	// what it returned, in the pooled buf; reads return it first.
	ahead []byte
	buf   *[readAheadSize]byte
}

// readAheadSize is the buffer of a small read: room for a request head
// as clients send them.
const readAheadSize = 4 << 10

var readAheadBufs = sync.Pool{New: func() any { return new([readAheadSize]byte) }}

// h1TLSConn is an h1Conn over TLS.
type h1TLSConn struct {
	*h1Conn
	tls *tls.Conn
}

// Read reads what a small read took ahead first. A small read is how
// net/http watches the connection while a handler runs: it reads one
// byte, and when a keep-alive client sends its next request as soon as
// the response is in (wrk, benchmarks, browsers on a busy page), that
// byte is the request's first, read in a system call of its own, and the
// rest in another. Reading the whole head in the first spares the
// second.
func (c *h1Conn) Read(p []byte) (int, error) {
	var n int
	var err error
	switch {
	case len(c.ahead) > 0:
		n = copy(p, c.ahead)
		c.ahead = c.ahead[n:]
		if len(c.ahead) == 0 {
			c.releaseAhead()
		}
		// The bytes were scanned when they were read.
		return n, nil
	case len(p) > 0 && len(p) < 64:
		if c.buf == nil {
			c.buf = readAheadBufs.Get().(*[readAheadSize]byte)
		}
		var m int
		m, err = c.Conn.Read(c.buf[:])
		if m > 0 && c.scan.feed(c.buf[:m]) {
			c.suspect.Store(true)
		}
		n = copy(p, c.buf[:m])
		if c.ahead = c.buf[n:m]; len(c.ahead) == 0 {
			c.releaseAhead()
		}
	default:
		n, err = c.Conn.Read(p)
		if n > 0 && c.scan.feed(p[:n]) {
			c.suspect.Store(true)
		}
	}
	if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		c.gone.readFailed()
	}
	return n, err
}

// releaseAhead returns the read-ahead buffer to its pool.
func (c *h1Conn) releaseAhead() {
	if c.buf != nil {
		readAheadBufs.Put(c.buf)
		c.buf, c.ahead = nil, nil
	}
}

// goneWatch closes the device connection that a request of a client
// connection is under way on (the lean path, plain.go) once a read from
// the client fails: the client went away. While a handler runs, net/http
// reads the connection in the background for this, and cancels the
// request's context when the read fails, but only after it returns;
// watching the context instead costs every request an AfterFunc (five
// allocations, an insert into the context's children and a removal).
// Deadlines do not count: net/http ends its background read with one
// after each request.
type goneWatch struct {
	gone atomic.Bool
	cur  atomic.Pointer[upstream] // the device connection to close
}

func (g *goneWatch) readFailed() {
	g.gone.Store(true)
	if u := g.cur.Swap(nil); u != nil {
		u.c.Close()
	}
}

// watch closes u when the client goes away, until unwatch. It reports
// false if the client is gone already.
func (g *goneWatch) watch(u *upstream) bool {
	g.cur.Store(u)
	if g.gone.Load() {
		g.cur.CompareAndSwap(u, nil)
		return false
	}
	return true
}

// unwatch stops watching for u and reports whether the client is still
// there: false if its going closed u.
func (g *goneWatch) unwatch(u *upstream) bool {
	return g.cur.CompareAndSwap(u, nil)
}

// ConnectionState lets net/http set Request.TLS for HTTP/1.1 over TLS.
func (c h1TLSConn) ConnectionState() tls.ConnectionState {
	return c.tls.ConnectionState()
}

// smuggleScanner is a streaming scanner of header lines. It reports when a
// block of lines (between empty lines) holds both a Content-Length and a
// Transfer-Encoding field. Body bytes pass through it too; a body that
// itself looks like such a request head is a smuggling probe, so refusing
// the connection's next chunked request is the intended outcome.
type smuggleScanner struct {
	line    [20]byte // start of the current line, lower-cased
	n       int      // bytes of the current line seen (may exceed len(line))
	sawCL   bool
	sawTE   bool
	flagged bool
}

// feed scans p and reports whether a suspicious block has been seen so far.
func (s *smuggleScanner) feed(p []byte) bool {
	for _, b := range p {
		if b == '\n' {
			s.endLine()
			continue
		}
		if s.n < len(s.line) {
			if b >= 'A' && b <= 'Z' {
				b += 'a' - 'A'
			}
			s.line[s.n] = b
		}
		s.n++
	}
	return s.flagged
}

func (s *smuggleScanner) endLine() {
	l := s.line[:min(s.n, len(s.line))]
	if len(l) > 0 && l[len(l)-1] == '\r' && s.n <= len(s.line) {
		l = l[:len(l)-1]
	}
	switch {
	case len(l) == 0:
		if s.sawCL && s.sawTE {
			s.flagged = true
		}
		s.sawCL, s.sawTE = false, false
	case hasFieldName(l, "content-length"):
		s.sawCL = true
	case hasFieldName(l, "transfer-encoding"):
		s.sawTE = true
	}
	s.n = 0
}

// hasFieldName reports whether line starts with name followed by optional
// whitespace and a colon.
func hasFieldName(line []byte, name string) bool {
	if len(line) < len(name) || string(line[:len(name)]) != name {
		return false
	}
	for _, b := range line[len(name):] {
		switch b {
		case ':':
			return true
		case ' ', '\t':
		default:
			return false
		}
	}
	return false
}

// chanListener is a net.Listener fed by the TLS accept loop.
type chanListener struct {
	addr   net.Addr
	ch     chan net.Conn
	done   chan struct{}
	closed sync.Once
}

func newChanListener(addr net.Addr) *chanListener {
	return &chanListener{addr: addr, ch: make(chan net.Conn), done: make(chan struct{})}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// push hands c to the server, closing it if the listener is closed.
func (l *chanListener) push(c net.Conn) {
	select {
	case l.ch <- c:
	case <-l.done:
		c.Close()
	}
}

func (l *chanListener) Close() error {
	l.closed.Do(func() { close(l.done) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return l.addr }
