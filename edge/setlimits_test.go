package edge

import (
	"context"
	"net"
	"testing"
	"time"
)

// TestSetLimits: a running edge takes new caps for the connections it
// accepts next, keeping those it has.
func TestSetLimits(t *testing.T) {
	e, err := New(Options{Domain: "example.test", MaxConns: 2, MaxConnsPerClient: -1, Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
		return nil, net.ErrClosed
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	var open []net.Conn
	admit := func() bool {
		c1, c2 := net.Pipe()
		t.Cleanup(func() { c1.Close(); c2.Close() })
		c := e.admitConn(&addrConn{Conn: c1, remote: &net.TCPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 1}})
		if c != nil {
			open = append(open, c)
		}
		return c != nil
	}
	for i, want := range []bool{true, true, false} {
		if got := admit(); got != want {
			t.Fatalf("conn %d under MaxConns 2: admitted %v, want %v", i, got, want)
		}
	}
	e.SetLimits(Limits{MaxConns: 3, MaxConnsPerClient: -1, BodyTimeout: time.Second})
	if !admit() || admit() {
		t.Fatal("after raising MaxConns to 3: want one more conn admitted, then refused")
	}
	if got := time.Duration(e.bodyTimeout.Load()); got != time.Second {
		t.Errorf("body timeout %v, want 1s", got)
	}
	// A per-client cap of 1 set now counts the 3 open conns of that client.
	e.SetLimits(Limits{MaxConns: -1, MaxConnsPerClient: 1})
	if admit() {
		t.Fatal("client with 3 open conns admitted under a per-client cap of 1")
	}
	for _, c := range open {
		c.Close()
	}
	if !admit() {
		t.Fatal("after its conns closed, the client is refused")
	}
}

// addrConn gives a pipe a remote address.
type addrConn struct {
	net.Conn
	remote net.Addr
}

func (c *addrConn) RemoteAddr() net.Addr { return c.remote }
