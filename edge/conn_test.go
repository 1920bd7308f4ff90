package edge

import (
	"io"
	"net"
	"strings"
	"testing"
)

// countingConn counts the reads of the connection under it.
type countingConn struct {
	net.Conn
	reads int
}

func (c *countingConn) Read(p []byte) (int, error) {
	c.reads++
	return c.Conn.Read(p)
}

// TestH1ConnReadAhead checks that a one-byte read, as net/http's watch of
// a connection during a handler makes, takes the rest of the request
// head with it: the read that follows needs no read of its own from the
// connection, gets the bytes in order, and they are scanned for request
// smuggling once.
func TestH1ConnReadAhead(t *testing.T) {
	client, server := net.Pipe()
	defer client.Close()
	cc := &countingConn{Conn: server}
	c := &h1Conn{Conn: cc}
	defer c.Close()
	const req = "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n"
	go io.WriteString(client, req)
	var one [1]byte
	if n, err := c.Read(one[:]); n != 1 || err != nil || one[0] != 'G' {
		t.Fatalf("one-byte read: %d %q %v, want 1 \"G\" nil", n, one[:n], err)
	}
	rest := make([]byte, 4096)
	n, err := c.Read(rest)
	if err != nil || string(rest[:n]) != req[1:] {
		t.Fatalf("read after it: %q %v, want %q", rest[:n], err, req[1:])
	}
	if cc.reads != 1 {
		t.Errorf("%d reads of the connection, want 1", cc.reads)
	}
	if !c.suspect.Load() {
		t.Error("the head with Content-Length and Transfer-Encoding is not flagged")
	}
	if c.buf != nil || len(c.ahead) != 0 {
		t.Error("the read-ahead buffer is kept after it was read")
	}
	// Reads of ordinary size go straight to the connection.
	go io.WriteString(client, strings.Repeat("x", 100))
	if n, err := c.Read(rest); n != 100 || err != nil {
		t.Fatalf("read: %d %v, want 100 nil", n, err)
	}
	if cc.reads != 2 || c.buf != nil {
		t.Errorf("%d reads of the connection and buffer %v, want 2 and none", cc.reads, c.buf != nil)
	}
}

// TestReuseUpstreamAllocs checks that taking a kept-alive connection to a
// device from the pool and putting it back allocates nothing.
func TestReuseUpstreamAllocs(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	tg := &target{}
	u := &upstream{c: tg.track(a).(*targetConn)}
	tg.putUpstream(u)
	e := &Edge{}
	ctx := t.Context()
	got := testing.AllocsPerRun(100, func() {
		v, reused, err := e.getUpstream(ctx, tg, false)
		if err != nil || !reused || v != u {
			t.Fatalf("getUpstream: %p %v %v, want the idle connection %p", v, reused, err, u)
		}
		tg.putUpstream(v)
	})
	if got != 0 {
		t.Errorf("reusing a connection: %v allocations, want 0", got)
	}
}
