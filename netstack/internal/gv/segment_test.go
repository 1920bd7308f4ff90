package gv

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net/netip"
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// checkPacket returns why pkt is not a well-formed IP packet of at most
// mtu bytes with correct IPv4 and TCP checksums, or "".
func checkPacket(pkt []byte, mtu int) string {
	if len(pkt) > mtu {
		return fmt.Sprintf("%d bytes, over the %d MTU", len(pkt), mtu)
	}
	var src, dst tcpip.Address
	var l4 []byte
	var proto uint8
	switch pkt[0] >> 4 {
	case 4:
		h := header.IPv4(pkt)
		if !h.IsValid(len(pkt)) || int(h.TotalLength()) != len(pkt) {
			return "bad IPv4 header or length"
		}
		if !h.IsChecksumValid() {
			return "bad IPv4 header checksum"
		}
		src, dst, l4, proto = h.SourceAddress(), h.DestinationAddress(), h.Payload(), h.Protocol()
	case 6:
		h := header.IPv6(pkt)
		if !h.IsValid(len(pkt)) || int(h.PayloadLength())+header.IPv6MinimumSize != len(pkt) {
			return "bad IPv6 header or length"
		}
		src, dst, l4, proto = h.SourceAddress(), h.DestinationAddress(), h.Payload(), h.NextHeader()
	default:
		return "not IP"
	}
	if proto != uint8(header.TCPProtocolNumber) {
		return ""
	}
	tcp := header.TCP(l4)
	payload := l4[tcp.DataOffset():]
	if !tcp.IsChecksumValid(src, dst, checksum.Checksum(payload, 0), uint16(len(payload))) {
		return fmt.Sprintf("bad TCP checksum (seq %d, %d payload bytes, flags %v)", tcp.SequenceNumber(), len(payload), tcp.Flags())
	}
	return ""
}

// TestSegmentation sends bulk TCP over both IP families and checks every
// packet on the wire: offloaded segments must come out of the TUN cut to
// the MTU with correct checksums (the receiving stack does not verify
// them: WireGuard already authenticated the packets), and the data must
// arrive intact.
func TestSegmentation(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mtu    int
		a, b   string
		dstStr string
	}{
		{"v4/mtu1280", 1280, "100.64.0.1", "100.64.0.2", "100.64.0.2:80"},
		{"v6/mtu1280", 1280, "fd7a:115c:a1e0::1", "fd7a:115c:a1e0::2", "[fd7a:115c:a1e0::2]:80"},
		{"v4/mtu9000", 9000, "100.64.0.1", "100.64.0.2", "100.64.0.2:80"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, err := New(Options{MTU: tc.mtu})
			if err != nil {
				t.Fatal(err)
			}
			b, err := New(Options{MTU: tc.mtu})
			if err != nil {
				t.Fatal(err)
			}
			if err := a.SetAddresses([]netip.Addr{netip.MustParseAddr(tc.a)}); err != nil {
				t.Fatal(err)
			}
			if err := b.SetAddresses([]netip.Addr{netip.MustParseAddr(tc.b)}); err != nil {
				t.Fatal(err)
			}
			var mu sync.Mutex // guards bad, pkts, maxLen
			var bad []string
			pkts, maxLen := 0, 0
			wireWith(t, a, b, func(batch [][]byte) {
				mu.Lock()
				defer mu.Unlock()
				for _, p := range batch {
					pkts++
					maxLen = max(maxLen, len(p))
					if why := checkPacket(p, tc.mtu); why != "" && len(bad) < 5 {
						bad = append(bad, why)
					}
				}
			})
			ln, err := b.ListenTCP(netip.MustParseAddrPort(tc.dstStr))
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			got := make(chan []byte, 1)
			go func() {
				c, err := ln.Accept()
				if err != nil {
					got <- nil
					return
				}
				defer c.Close()
				data, _ := io.ReadAll(c)
				got <- data
			}()
			ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
			defer cancel()
			c, err := a.DialTCP(ctx, netip.MustParseAddrPort(tc.dstStr))
			if err != nil {
				t.Fatal(err)
			}
			payload := make([]byte, 4<<20+777) // not a multiple of any MSS
			rand.Read(payload)
			if _, err := c.Write(payload); err != nil {
				t.Fatal(err)
			}
			c.Close()
			if data := <-got; !bytes.Equal(data, payload) {
				t.Fatalf("received %d bytes, want the %d sent", len(data), len(payload))
			}
			// The pump has seen every data packet by now (the receiver read
			// them), so bad and pkts are settled for the data. Later
			// packets (FIN, ACKs) may still race with this read; only the
			// data packets matter here and they are all counted.
			mu.Lock()
			defer mu.Unlock()
			if len(bad) > 0 {
				t.Errorf("bad packets from the TUN: %q", bad)
			}
			if minPkts := len(payload) / tc.mtu; pkts < minPkts {
				t.Errorf("%d packets carried %d bytes, want at least %d", pkts, len(payload), minPkts)
			}
			// gVisor's MSS leaves room for TCP options (timestamps, SACK).
			if maxLen < tc.mtu-80 {
				t.Errorf("largest packet %d bytes, want segments near the %d MTU", maxLen, tc.mtu)
			}
		})
	}
}
