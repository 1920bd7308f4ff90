package edge

import (
	"net"
	"strings"
	"testing"
	"time"
)

// TestMaxConns holds MaxConns idle connections open from two client
// addresses: the next is closed at once, and a slot freed is taken again.
func TestMaxConns(t *testing.T) {
	e := newTestEdge(t, newOverlay(), Options{MaxConns: 4, MaxConnsPerClient: 3})
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
	closedSoon := func(c net.Conn) bool {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err := c.Read(make([]byte, 1))
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			return false
		}
		return err != nil
	}
	var held []net.Conn
	for _, src := range []string{"127.0.0.1", "127.0.0.1", "127.0.0.2", "127.0.0.2"} {
		held = append(held, dialFrom(src))
	}
	waitFor(t, 5*time.Second, "four connections admitted", func() bool { return e.conns.Load() == 4 })
	if over := dialFrom("127.0.0.3"); !closedSoon(over) {
		t.Fatal("a fifth connection over MaxConns 4 stayed open")
	}
	held[0].Close()
	waitFor(t, 5*time.Second, "a slot freed", func() bool { return e.conns.Load() == 3 })
	c := dialFrom("127.0.0.3")
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("GET / HTTP/1.1\r\nHost: nothing." + testDomain + "\r\nConnection: close\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 64)
	n, _ := c.Read(b)
	if !strings.HasPrefix(string(b[:n]), "HTTP/1.1 404") {
		t.Fatalf("a connection in the freed slot got %q, want an answer (404)", b[:n])
	}
}
