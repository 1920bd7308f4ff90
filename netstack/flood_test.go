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

	// floodCount is the size of the flood the peer has to get through:
	// it dials once that many forged initiations are out and the engine
	// has shown it is under load (its first cookie reply), and the flood
	// goes on until its echo is back.
	const floodCount = 10000
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	floodCtx, stopFlood := context.WithCancel(ctx)
	defer stopFlood()
	var sent, cookies, other atomic.Int64
	counted := make(chan struct{})   // closed when sent reaches floodCount
	underLoad := make(chan struct{}) // closed at the first cookie reply
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
					if sent.Add(1) == floodCount {
						close(counted)
					}
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
				if cookies.Add(1) == 1 {
					close(underLoad)
				}
			} else {
				other.Add(1)
			}
		}
	}()
	// Let the flood build up to its count and put the engine under load
	// (about half a second at full rate, longer on a loaded machine or
	// under -race), then the real peer connects through it.
	for _, ev := range []chan struct{}{counted, underLoad} {
		select {
		case <-ev:
		case <-ctx.Done():
			t.Fatalf("after 40 s the flood sent %d of %d packets and got %d cookie replies", sent.Load(), floodCount, cookies.Load())
		}
	}
	start, before := time.Now(), sent.Load()
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
	took, during := time.Since(start), sent.Load()-before
	stopFlood()
	wg.Wait()
	t.Logf("peer connected and echoed in %v after %d forged initiations and during %d more (%d cookie replies, %d other answers)", took, before, during, cookies.Load(), other.Load())
	if during == 0 {
		t.Fatal("the flood sent nothing while the peer connected")
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
