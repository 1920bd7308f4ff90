package bind

import (
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"beam.dev/beam/types/key"
	"golang.zx2c4.com/wireguard/conn"
)

// TestDropsHostForwarded: a datagram from a host address the engine
// forwards a peer's flow from (Options.FromHostForward) is dropped; the
// same datagram from another loopback socket is handled.
func TestDropsHostForwarded(t *testing.T) {
	listen := func() *net.UDPConn {
		pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { pc.Close() })
		return pc
	}
	fwd, other := listen(), listen()
	fwdAP := fwd.LocalAddr().(*net.UDPAddr).AddrPort()
	var (
		mu   sync.Mutex
		from []netip.AddrPort
	)
	b, err := New(Options{
		PrivateKey: key.NewNode(),
		DiscoKey:   key.NewDisco(),
		OnSTUN: func(_ []byte, src netip.AddrPort) {
			mu.Lock()
			defer mu.Unlock()
			from = append(from, src)
		},
		FromHostForward: func(src netip.AddrPort) bool { return src == fwdAP },
	})
	if err != nil {
		t.Fatal(err)
	}
	fns, port, err := b.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	b.v4.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	stun := []byte{0x01, 0x01, 0, 0, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}
	dst := net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), port))
	// The forwarded one first: by the time the other's arrives, it was read.
	if _, err := fwd.WriteToUDP(stun, dst); err != nil {
		t.Fatal(err)
	}
	if _, err := other.WriteToUDP(stun, dst); err != nil {
		t.Fatal(err)
	}
	bufs := [][]byte{make([]byte, 2048), make([]byte, 2048)}
	sizes, eps := make([]int, 2), make([]conn.Endpoint, 2)
	for {
		mu.Lock()
		n := len(from)
		mu.Unlock()
		if n > 0 {
			break
		}
		if _, err := fns[0](bufs, sizes, eps); err != nil {
			t.Fatalf("receive: %v", err)
		}
	}
	want := []netip.AddrPort{other.LocalAddr().(*net.UDPAddr).AddrPort()}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(from, want) {
		t.Errorf("STUN responses handled from %v, want only %v (not the forwarded %v)", from, want, fwdAP)
	}
}
