package expose

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
)

// addrlessConn is a connection whose addresses are gone once it is
// closed, as the netstack's are (gonet returns nil once the endpoint is
// closed or reset).
type addrlessConn struct {
	net.Conn
	closed atomic.Bool
	gone   bool // no address even before Close: reset at once
}

func (c *addrlessConn) Close() error {
	c.closed.Store(true)
	return c.Conn.Close()
}

func (c *addrlessConn) RemoteAddr() net.Addr {
	if c.gone || c.closed.Load() {
		return nil
	}
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2), Port: 40000}
}

func (c *addrlessConn) LocalAddr() net.Addr {
	if c.gone || c.closed.Load() {
		return nil
	}
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 3), Port: 443}
}

// TestSpliceWithoutAddresses: a spliced connection whose client has no
// address any more, once closed (captured for the inspector after) or
// from the start (a peer that reset at once), is relayed and recorded
// without taking the daemon down; a peer without an address gets a
// PROXY header that names no client.
func TestSpliceWithoutAddresses(t *testing.T) {
	for _, gone := range []bool{false, true} {
		client, peer := net.Pipe()
		app, appPeer := net.Pipe()
		c := &addrlessConn{Conn: client, gone: gone}
		var recorded atomic.Pointer[Exchange]
		x := &exposeRelay{
			port:    443,
			dial:    func(context.Context) (net.Conn, error) { return app, nil },
			capture: func() int { return 1 << 10 },
			record:  func(e *Exchange) { recorded.Store(e) },
			logger:  slog.New(slog.DiscardHandler),
		}
		edges := []netip.Addr{netip.MustParseAddr("127.0.0.1")}
		x.edges.Store(&edges)
		rc := newRelayConn(x, c)
		if rc.fromEdge() {
			t.Errorf("gone %v: a client without an address taken for an edge", gone)
		}
		hdr := peerProxyHeader(1, c)
		done := make(chan struct{})
		go func() {
			defer close(done)
			rc.spliceRaw(t.Context(), hdr)
		}()
		got := make([]byte, len(hdr))
		if _, err := io.ReadFull(appPeer, got); err != nil || string(got) != string(hdr) {
			t.Fatalf("gone %v: the app got %q (%v), want the header %q", gone, got, err, hdr)
		}
		if want := "PROXY TCP4 127.0.0.2 127.0.0.3 40000 443\r\n"; !gone && string(hdr) != want {
			t.Errorf("header %q, want %q", hdr, want)
		}
		if gone && string(hdr) != "PROXY UNKNOWN\r\n" {
			t.Errorf("a peer without an address: header %q, want one that names no client", hdr)
		}
		appPeer.Close()
		peer.Close()
		<-done
		e := recorded.Load()
		if e == nil {
			t.Fatalf("gone %v: nothing recorded", gone)
		}
		if want := map[bool]string{false: "127.0.0.2:40000", true: ""}[gone]; e.Client != want {
			t.Errorf("gone %v: recorded client %q, want %q", gone, e.Client, want)
		}
	}
}
