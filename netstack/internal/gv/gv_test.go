package gv

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"gvisor.dev/gvisor/pkg/tcpip"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestErr(t *testing.T) {
	if Err(nil) != nil {
		t.Fatal("Err(nil) != nil")
	}
	for _, tc := range []struct {
		in   tcpip.Error
		want error
	}{
		{&tcpip.ErrConnectionRefused{}, syscall.ECONNREFUSED},
		{&tcpip.ErrConnectionReset{}, syscall.ECONNRESET},
		{&tcpip.ErrTimeout{}, os.ErrDeadlineExceeded},
		{&tcpip.ErrClosedForSend{}, net.ErrClosed},
		{&tcpip.ErrPortInUse{}, syscall.EADDRINUSE},
		{&tcpip.ErrHostUnreachable{}, syscall.EHOSTUNREACH},
		{&tcpip.ErrBadLocalAddress{}, syscall.EADDRNOTAVAIL},
		{&tcpip.ErrMalformedHeader{}, syscall.EIO},
	} {
		err := Err(tc.in)
		if !errors.Is(err, tc.want) {
			t.Errorf("Err(%T) = %v, want it to wrap %v", tc.in, err, tc.want)
		}
		if err.Error() != tc.in.String() {
			t.Errorf("Err(%T).Error() = %q, want %q", tc.in, err.Error(), tc.in.String())
		}
	}
}

// wire connects two stacks' TUNs back to back; the stacks are closed and
// the pumps stopped at the end of the test.
func wire(t *testing.T, a, b *Stack) { wireWith(t, a, b, nil) }

// wireWith is wire with a hook run after each batch of packets the pump
// moves from a to b (nil: none).
func wireWith(t *testing.T, a, b *Stack, afterAB func(pkts [][]byte)) {
	var wg sync.WaitGroup
	pump := func(from, to *TUN, after func([][]byte)) {
		defer wg.Done()
		bufs, sizes := readBufs(from)
		for {
			n, err := from.Read(bufs, sizes, 0)
			if err != nil {
				return
			}
			out := make([][]byte, n)
			for i := range n {
				out[i] = bufs[i][:sizes[i]]
			}
			if after != nil {
				after(out)
			}
			to.Write(out, 0)
		}
	}
	wg.Add(2)
	go pump(a.TUN(), b.TUN(), afterAB)
	go pump(b.TUN(), a.TUN(), nil)
	t.Cleanup(func() {
		a.Close()
		b.Close()
		wg.Wait()
	})
}

// readBufs returns buffers for one batch read from tun.
func readBufs(tun *TUN) ([][]byte, []int) {
	bufs := make([][]byte, tun.BatchSize())
	for i := range bufs {
		bufs[i] = make([]byte, 65536)
	}
	return bufs, make([]int, len(bufs))
}

// acceptAll listens on addr of st and returns a channel that receives
// everything the first connection accepted there sends, or nil if the
// accept fails. onRead, if not nil, sees the size of each read. The
// listener is closed at the end of the test.
func acceptAll(t *testing.T, st *Stack, addr string, onRead func(n int)) <-chan []byte {
	t.Helper()
	ln, err := st.ListenTCP(netip.MustParseAddrPort(addr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	got := make(chan []byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- nil
			return
		}
		defer c.Close()
		var r io.Reader = c
		if onRead != nil {
			r = io.TeeReader(c, writerFunc(func(p []byte) { onRead(len(p)) }))
		}
		data, _ := io.ReadAll(r)
		got <- data
	}()
	return got
}

// writerFunc is an io.Writer that hands each write to a function.
type writerFunc func(p []byte)

func (f writerFunc) Write(p []byte) (int, error) {
	f(p)
	return len(p), nil
}

func newStack(t *testing.T, addrs ...string) *Stack {
	st, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	var as []netip.Addr
	for _, a := range addrs {
		as = append(as, netip.MustParseAddr(a))
	}
	if err := st.SetAddresses(as); err != nil {
		t.Fatal(err)
	}
	return st
}

func TestStacksBackToBack(t *testing.T) {
	a := newStack(t, "100.64.0.1", "fd7a:115c:a1e0::1")
	var mu sync.Mutex
	var rejected []netip.AddrPort
	b, err := New(Options{HandleTCP: func(r *TCPRequest) {
		mu.Lock()
		rejected = append(rejected, r.Dst)
		mu.Unlock()
		r.Reject()
	}})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.SetAddresses([]netip.Addr{netip.MustParseAddr("100.64.0.2"), netip.MustParseAddr("fd7a:115c:a1e0::2")}); err != nil {
		t.Fatal(err)
	}
	wire(t, a, b)
	if !b.HasAddress(netip.MustParseAddr("100.64.0.2")) || b.HasAddress(netip.MustParseAddr("100.64.0.1")) {
		t.Fatal("HasAddress wrong")
	}

	ln, err := b.ListenTCP(netip.AddrPortFrom(netip.Addr{}, 80))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan []byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- nil
			return
		}
		data, _ := io.ReadAll(c)
		c.Close()
		done <- data
	}()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	// The dual-stack listener takes IPv4 too.
	c, err := a.DialTCP(ctx, netip.MustParseAddrPort("100.64.0.2:80"))
	if err != nil {
		t.Fatal(err)
	}
	payload := bytes.Repeat([]byte("beam"), 1<<18) // 1 MiB: many GRO batches
	if _, err := c.Write(payload); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if got := <-done; !bytes.Equal(got, payload) {
		t.Fatalf("received %d bytes, want %d identical", len(got), len(payload))
	}

	// No listener: the handler's Reject gives connection refused.
	_, err = a.DialTCP(ctx, netip.MustParseAddrPort("[fd7a:115c:a1e0::2]:81"))
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial unclaimed port: %v, want connection refused", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(rejected) != 1 || rejected[0] != netip.MustParseAddrPort("[fd7a:115c:a1e0::2]:81") {
		t.Fatalf("handler saw %v", rejected)
	}

	// Removing an address takes it away.
	if err := b.SetAddresses([]netip.Addr{netip.MustParseAddr("fd7a:115c:a1e0::2")}); err != nil {
		t.Fatal(err)
	}
	if b.HasAddress(netip.MustParseAddr("100.64.0.2")) {
		t.Fatal("address still present after removal")
	}
}
