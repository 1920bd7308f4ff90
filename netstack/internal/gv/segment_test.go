package gv

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
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
			got := acceptAll(t, b, tc.dstStr, nil)
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

// TestSegmenterHeaders cuts crafted offload packets and checks each
// segment's headers against ones built from scratch: IPv4 with options
// and an ID that wraps, and IPv6, with checksums that must verify.
func TestSegmenterHeaders(t *testing.T) {
	payload := make([]byte, 2*1000+333)
	rand.Read(payload)
	for _, tc := range []struct {
		name string
		v6   bool
	}{{"v4 options id wrap", false}, {"v6", true}} {
		t.Run(tc.name, func(t *testing.T) {
			var ip []byte
			if tc.v6 {
				ip = make([]byte, header.IPv6MinimumSize)
				header.IPv6(ip).Encode(&header.IPv6Fields{
					PayloadLength:     uint16(header.TCPMinimumSize + len(payload)),
					TransportProtocol: header.TCPProtocolNumber,
					HopLimit:          64,
					SrcAddr:           tcpip.AddrFrom16Slice(netip.MustParseAddr("fd7a:115c:a1e0::1").AsSlice()),
					DstAddr:           tcpip.AddrFrom16Slice(netip.MustParseAddr("fd7a:115c:a1e0::2").AsSlice()),
				})
			} else {
				ip = make([]byte, header.IPv4MinimumSize+4)
				header.IPv4(ip).Encode(&header.IPv4Fields{
					TotalLength: uint16(len(ip) + header.TCPMinimumSize + len(payload)),
					ID:          0xfffe,
					TTL:         64,
					Protocol:    uint8(header.TCPProtocolNumber),
					SrcAddr:     tcpip.AddrFrom4([4]byte{100, 64, 0, 1}),
					DstAddr:     tcpip.AddrFrom4([4]byte{100, 64, 0, 2}),
					Options:     header.IPv4OptionsSerializer{&header.IPv4SerializableListEndOption{}},
				})
				if header.IPv4(ip).HeaderLength() != 24 {
					t.Fatalf("IPv4 header of %d bytes, want 24", header.IPv4(ip).HeaderLength())
				}
			}
			tcp := make([]byte, header.TCPMinimumSize)
			header.TCP(tcp).Encode(&header.TCPFields{
				SrcPort: 40000, DstPort: 80, SeqNum: 0xffffff00, AckNum: 7,
				DataOffset: header.TCPMinimumSize, Flags: header.TCPFlagAck | header.TCPFlagPsh, WindowSize: 1000,
			})
			pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{
				Payload: buffer.MakeWithData(append(append(append([]byte(nil), ip...), tcp...), payload...)),
			})
			pkt.GSOOptions = stack.GSO{Type: stack.GSOTCPv4, MSS: 1000}
			var s segmenter
			if !s.start(pkt) {
				t.Fatal("start refused the packet")
			}
			var got []byte
			for i := 0; !s.done(); i++ {
				buf := make([]byte, 2048)
				n := s.next(buf)
				seg := buf[:n]
				if why := checkPacket(seg, 1100); why != "" {
					t.Fatalf("segment %d: %s", i, why)
				}
				hl := len(ip)
				if tc.v6 {
					if c := header.IPv6(seg); c.HopLimit() != 64 {
						t.Errorf("segment %d: hop limit %d, want 64", i, c.HopLimit())
					}
				} else if id := header.IPv4(seg).ID(); id != uint16(0xfffe+i) {
					t.Errorf("segment %d: IPv4 ID %#x, want %#x", i, id, uint16(0xfffe+i))
				}
				th := header.TCP(seg[hl:])
				if want := uint32(0xffffff00) + uint32(i*1000); th.SequenceNumber() != want {
					t.Errorf("segment %d: seq %#x, want %#x", i, th.SequenceNumber(), want)
				}
				last := s.done()
				if psh := th.Flags()&header.TCPFlagPsh != 0; psh != last {
					t.Errorf("segment %d: PSH %v, want %v", i, psh, last)
				}
				got = append(got, seg[hl+header.TCPMinimumSize:]...)
			}
			if !bytes.Equal(got, payload) {
				t.Fatalf("segments carry %d bytes, want the %d sent", len(got), len(payload))
			}
		})
	}
}
