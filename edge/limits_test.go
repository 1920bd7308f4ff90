package edge

import (
	"net"
	"strings"
	"testing"
	"time"
)

// TestMaxConns holds MaxConns idle connections open from two client
// addresses. A newcomer from a third is served, pushing out the oldest
// connection of a biggest holder; that holder's own newcomer is closed
// at once; and a slot freed is taken again.
func TestMaxConns(t *testing.T) {
	// Idle connections stay until pushed out.
	e := newTestEdge(t, newOverlay(), Options{MaxConns: 4, MaxConnsPerClient: 3, ReadHeaderTimeout: time.Minute})
	addr := serveHTTP(t, e)
	dialFrom := func(src string) net.Conn {
		t.Helper()
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
		c, err := d.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	// closedWithin reports whether the edge closes c within d.
	closedWithin := func(c net.Conn, d time.Duration) bool {
		c.SetReadDeadline(time.Now().Add(d))
		_, err := c.Read(make([]byte, 1))
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			return false
		}
		return err != nil
	}
	served := func(c net.Conn) bool {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write([]byte("GET / HTTP/1.1\r\nHost: nothing." + testDomain + "\r\n\r\n")); err != nil {
			return false
		}
		b := make([]byte, 4096)
		n, _ := c.Read(b)
		return strings.HasPrefix(string(b[:n]), "HTTP/1.1 404")
	}
	var held []net.Conn
	for _, src := range []string{"127.0.0.1", "127.0.0.1", "127.0.0.2", "127.0.0.2"} {
		held = append(held, dialFrom(src))
		// One at a time, so that the oldest of each address is known.
		waitFor(t, 5*time.Second, "the connection admitted", func() bool { return e.conns.Open() == len(held) })
	}
	c := dialFrom("127.0.0.3")
	if !served(c) {
		t.Fatal("a newcomer from a third address at the full MaxConns 4 was not served")
	}
	// It pushed out the oldest of one of the two holders of two, before
	// it was served.
	closed0, closed2 := closedWithin(held[0], 200*time.Millisecond), closedWithin(held[2], 200*time.Millisecond)
	if closed0 == closed2 {
		t.Fatalf("oldest connections of 127.0.0.1 and .2 closed: %v, %v; want exactly one pushed out", closed0, closed2)
	}
	if closedWithin(held[1], 200*time.Millisecond) || closedWithin(held[3], 200*time.Millisecond) {
		t.Fatal("a second connection of a holder was pushed out")
	}
	if got := e.conns.Open(); got != 4 {
		t.Fatalf("%d connections open, want 4", got)
	}
	// The address still holding two is the biggest holder: its newcomer
	// is closed at once.
	big := "127.0.0.2"
	if closed2 {
		big = "127.0.0.1"
	}
	if !closedWithin(dialFrom(big), 5*time.Second) {
		t.Fatalf("a newcomer of the biggest holder %s stayed open", big)
	}
	// A slot freed is taken again, pushing no one out.
	c.Close()
	waitFor(t, 5*time.Second, "a slot freed", func() bool { return e.conns.Open() == 3 })
	if !served(dialFrom(big)) {
		t.Fatal("a connection in the freed slot was not served")
	}
	if got := e.conns.PushedOut(); got != 1 {
		t.Errorf("%d connections pushed out, want 1", got)
	}
}
