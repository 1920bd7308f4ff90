package connlimit

import (
	"net"
	"net/netip"
	"testing"
	"time"
)

func TestCounter(t *testing.T) {
	a, b := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	v6a, v6b := netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("2001:db8::2")
	c := NewCounter(Limits{Max: 4, PerSource: 2})
	for _, tc := range []struct {
		src  netip.Addr
		want bool
	}{
		{a, true}, {a, true}, {a, false}, // per source
		{v6a, true}, {v6b, true}, {v6a, false}, // one /64
		{b, false}, // the total is 4

	} {
		if got := c.Acquire(tc.src); got != tc.want {
			t.Errorf("Acquire(%v) = %v, want %v (open %d)", tc.src, got, tc.want, c.Open())
		}
	}
	c.Release(a)
	if !c.Acquire(b) {
		t.Error("Acquire(b) after a release = false, want true")
	}
	if got := c.Acquire(netip.MustParseAddr("192.0.2.3")); got {
		t.Error("Acquire over the total = true, want false")
	}
	if got, want := c.Refused(), int64(4); got != want {
		t.Errorf("Refused() = %d, want %d", got, want)
	}
}

func TestListener(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := NewCounter(Limits{Max: 2})
	l := Listener(ln, c)
	defer l.Close()
	accepted := make(chan net.Conn, 4)
	go func() {
		for {
			nc, err := l.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- nc
		}
	}()
	var clients []net.Conn
	for range 3 {
		nc, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		clients = append(clients, nc)
	}
	first, second := <-accepted, <-accepted
	// The third is closed by the listener: its client reads EOF.
	clients[2].SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := clients[2].Read(make([]byte, 1)); err == nil {
		t.Fatalf("the connection over the cap read %d bytes, want it closed", n)
	}
	if got := c.Open(); got != 2 {
		t.Fatalf("Open() = %d, want 2", got)
	}
	first.Close()
	first.Close() // a second Close frees nothing more
	if got := c.Open(); got != 1 {
		t.Fatalf("Open() after a Close = %d, want 1", got)
	}
	nc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	third := <-accepted
	third.Close()
	second.Close()
	if got := c.Open(); got != 0 {
		t.Fatalf("Open() after closing all = %d, want 0", got)
	}
}
