package derp

import (
	"context"
	"net"
	"syscall"
	"testing"
	"time"

	"beam.dev/beam/internal/tcpcc"
	"golang.org/x/sys/unix"
)

// TestDialAsksForBBR checks that the default dialer of relay connections
// (plain and WebSocket) asks the kernel for BBR, and gets it where the
// kernel offers it, and that a caller's own DialContext is used as is.
func TestDialAsksForBBR(t *testing.T) {
	want := tcpcc.Default()
	if tcpcc.Grantable(tcpcc.Preferred) {
		want = tcpcc.Preferred
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	c, err := dialContext(ClientOptions{})(context.Background(), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got, err := tcpcc.Of(c); err != nil || got != want {
		t.Errorf("relay connection congestion control = %q, %v; want %q", got, err, want)
	}
	// A relay connection whose path died (a NAT that forgot it) ends after
	// relayUserTimeout of unacknowledged data, not the kernel's minutes.
	rc, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var ms int
	var gerr error
	rc.Control(func(fd uintptr) { ms, gerr = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT) })
	if gerr != nil || time.Duration(ms)*time.Millisecond != relayUserTimeout {
		t.Errorf("relay connection TCP_USER_TIMEOUT = %d ms, %v; want %v", ms, gerr, relayUserTimeout)
	}

	called := false
	own := func(ctx context.Context, network, addr string) (net.Conn, error) {
		called = true
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	}
	c2, err := dialContext(ClientOptions{DialContext: own})(context.Background(), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c2.Close()
	if !called {
		t.Error("ClientOptions.DialContext was not used")
	}
}
