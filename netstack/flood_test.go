package netstack

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/device"
)

// TestHandshakeFlood floods an engine's WireGuard port with handshake
// initiations that carry a valid MAC1 (an attacker who knows the node's
// public key can compute it) from an address that is no peer's, and
// checks that a real peer still completes its handshake and moves data
// during the flood, and that the engine never answers the attacker with
// anything but (at most) cookie replies.
func TestHandshakeFlood(t *testing.T) {
	nodes := newNodes(t, 2, nil)
	a, b := nodes[0], nodes[1]
	ln, err := b.e.Listen("tcp", ":7")
	if err != nil {
		t.Fatal(err)
	}
	tcpEchoServer(t, ln)

	var cg device.CookieGenerator
	cg.Init(device.NoisePublicKey(b.key.Public().Raw32()))
	target := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), b.e.LocalPort())
	atk, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer atk.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	floodCtx, stopFlood := context.WithCancel(ctx)
	var sent, cookies, other atomic.Int64
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { // the flood
		defer wg.Done()
		// About 20,000 initiations a second: more than the handshake
		// workers can check on two shared cores, bounded so the test
		// machine stays usable.
		msg := make([]byte, device.MessageInitiationSize)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for floodCtx.Err() == nil {
			for range 200 {
				rand.Read(msg)
				binary.LittleEndian.PutUint32(msg[:4], device.MessageInitiationType)
				cg.AddMacs(msg)
				if _, err := atk.WriteToUDPAddrPort(msg, target); err == nil {
					sent.Add(1)
				}
			}
			select {
			case <-floodCtx.Done():
			case <-tick.C:
			}
		}
	}()
	go func() { // what comes back to the attacker
		defer wg.Done()
		buf := make([]byte, 2048)
		for {
			atk.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			n, _, err := atk.ReadFromUDPAddrPort(buf)
			if err != nil {
				if floodCtx.Err() != nil {
					return
				}
				continue
			}
			if n == device.MessageCookieReplySize && binary.LittleEndian.Uint32(buf[:4]) == device.MessageCookieReplyType {
				cookies.Add(1)
			} else {
				other.Add(1)
			}
		}
	}()
	// Let the flood build up, then the real peer connects through it.
	time.Sleep(300 * time.Millisecond)
	start := time.Now()
	c, err := a.e.DialContext(ctx, "tcp", netip.AddrPortFrom(b.v4, 7).String())
	if err != nil {
		t.Fatalf("dial during the flood: %v", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	want := []byte("through the flood")
	got := make([]byte, len(want))
	if _, err := c.Write(want); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, got); err != nil || string(got) != string(want) {
		t.Fatalf("echo during the flood: %q, %v", got, err)
	}
	took := time.Since(start)
	stopFlood()
	wg.Wait()
	t.Logf("peer connected and echoed in %v while %d forged initiations were sent (%d cookie replies, %d other answers)", took, sent.Load(), cookies.Load(), other.Load())
	if sent.Load() < 10000 {
		t.Fatalf("flood sent only %d packets", sent.Load())
	}
	if cookies.Load() == 0 {
		t.Fatal("no cookie replies under flood: wireguard-go's cookie mechanism is not reached through the bind")
	}
	// Under load WireGuard answers the peer's first initiation with a
	// cookie and the peer retries with it after its 5 s rekey timeout.
	if took > 25*time.Second {
		t.Fatalf("the peer needed %v to connect during the flood", took)
	}
	if other.Load() != 0 {
		t.Fatalf("the engine answered forged initiations with %d packets that are not cookie replies", other.Load())
	}
}
