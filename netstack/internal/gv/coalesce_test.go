package gv

import (
	"bytes"
	"encoding/binary"
	"math/bits"
	"testing"

	"github.com/google/go-cmp/cmp"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// captureDispatcher records the packets a coalescer delivers. It stands
// in for the stack so a test can see packet boundaries, which a real
// stack hides.
type captureDispatcher struct {
	pkts [][]byte
}

func (d *captureDispatcher) DeliverNetworkPacket(_ tcpip.NetworkProtocolNumber, pkt *stack.PacketBuffer) {
	d.pkts = append(d.pkts, pkt.ToView().ToSlice())
}

func (d *captureDispatcher) DeliverLinkPacket(tcpip.NetworkProtocolNumber, *stack.PacketBuffer) {}

// seg describes one TCP segment for tcpPacket.
type seg struct {
	v6      bool
	srcPort uint16
	seq     uint32
	ack     uint32
	flags   header.TCPFlags
	payload int
	tsVal   uint32
}

// tcpPacket builds an IP packet carrying s, with a timestamp option and
// payload bytes derived from the sequence number.
func tcpPacket(s seg) []byte {
	const tcpLen = header.TCPMinimumSize + 12
	ipLen := header.IPv4MinimumSize
	if s.v6 {
		ipLen = header.IPv6MinimumSize
	}
	b := make([]byte, ipLen+tcpLen+s.payload)
	if s.v6 {
		header.IPv6(b).Encode(&header.IPv6Fields{
			PayloadLength:     uint16(tcpLen + s.payload),
			TransportProtocol: header.TCPProtocolNumber,
			HopLimit:          64,
			SrcAddr:           tcpip.AddrFrom16([16]byte{0xfd, 15: 1}),
			DstAddr:           tcpip.AddrFrom16([16]byte{0xfd, 15: 2}),
		})
	} else {
		h := header.IPv4(b)
		h.Encode(&header.IPv4Fields{
			TotalLength: uint16(len(b)),
			TTL:         64,
			Protocol:    uint8(header.TCPProtocolNumber),
			SrcAddr:     tcpip.AddrFrom4([4]byte{100, 64, 0, 1}),
			DstAddr:     tcpip.AddrFrom4([4]byte{100, 64, 0, 2}),
		})
		h.SetChecksum(^h.CalculateChecksum())
	}
	tcp := header.TCP(b[ipLen:])
	tcp.Encode(&header.TCPFields{
		SrcPort:    s.srcPort,
		DstPort:    80,
		SeqNum:     s.seq,
		AckNum:     s.ack,
		DataOffset: tcpLen,
		Flags:      s.flags,
		WindowSize: 1000,
	})
	opts := tcp[header.TCPMinimumSize:tcpLen]
	opts[0], opts[1] = 1, 1
	header.EncodeTSOption(s.tsVal, 0, opts[2:])
	for i := range s.payload {
		b[ipLen+tcpLen+i] = byte(s.seq + uint32(i))
	}
	return b
}

// summary is what a test checks about a delivered packet.
type summary struct {
	V6      bool
	Port    uint16
	Seq     uint32
	Payload int
	Flags   string
}

func summarize(t *testing.T, pkt []byte) summary {
	t.Helper()
	v6 := pkt[0]>>4 == 6
	var tcp header.TCP
	if v6 {
		h := header.IPv6(pkt)
		if int(h.PayloadLength())+header.IPv6MinimumSize != len(pkt) {
			t.Fatalf("IPv6 payload length %d in a %d-byte packet", h.PayloadLength(), len(pkt))
		}
		tcp = h.Payload()
	} else {
		h := header.IPv4(pkt)
		if int(h.TotalLength()) != len(pkt) || !h.IsChecksumValid() {
			t.Fatalf("IPv4 header: total length %d in a %d-byte packet, checksum valid %v", h.TotalLength(), len(pkt), h.IsChecksumValid())
		}
		tcp = h.Payload()
	}
	payload := tcp.Payload()
	for i, c := range payload {
		if c != byte(tcp.SequenceNumber()+uint32(i)) {
			t.Fatalf("payload byte %d of segment at seq %d is %d, want %d", i, tcp.SequenceNumber(), c, byte(tcp.SequenceNumber()+uint32(i)))
		}
	}
	return summary{v6, tcp.SourcePort(), tcp.SequenceNumber(), len(payload), tcp.Flags().String()}
}

func TestCoalescer(t *testing.T) {
	const mss = 1000
	ack := header.TCPFlagAck
	psh := header.TCPFlagAck | header.TCPFlagPsh
	run := func(n int, s seg) []seg { // n full segments from s.seq
		var out []seg
		for i := range n {
			s2 := s
			s2.seq = s.seq + uint32(i*mss)
			s2.payload = mss
			out = append(out, s2)
		}
		return out
	}
	cat := func(ss ...[]seg) []seg {
		var out []seg
		for _, s := range ss {
			out = append(out, s...)
		}
		return out
	}
	for _, tc := range []struct {
		name string
		in   []seg
		want []summary
	}{
		{
			name: "run with short PSH tail",
			in:   cat(run(5, seg{srcPort: 1, seq: 100, flags: ack}), []seg{{srcPort: 1, seq: 5100, flags: psh, payload: 10}}),
			want: []summary{{Port: 1, Seq: 100, Payload: 5010, Flags: "   PA   "}},
		},
		{
			name: "IPv6 run",
			in:   run(3, seg{v6: true, srcPort: 1, seq: 7, flags: ack}),
			want: []summary{{V6: true, Port: 1, Seq: 7, Payload: 3000, Flags: "    A   "}},
		},
		{
			name: "segment after PSH starts a new run",
			in:   cat(run(2, seg{srcPort: 1, flags: psh}), run(2, seg{srcPort: 1, seq: 2000, flags: ack})),
			want: []summary{
				{Port: 1, Seq: 0, Payload: 1000, Flags: "   PA   "},
				{Port: 1, Seq: 1000, Payload: 1000, Flags: "   PA   "},
				{Port: 1, Seq: 2000, Payload: 2000, Flags: "    A   "},
			},
		},
		{
			name: "gap in sequence",
			in:   cat(run(2, seg{srcPort: 1, flags: ack}), run(2, seg{srcPort: 1, seq: 3000, flags: ack})),
			want: []summary{{Port: 1, Seq: 0, Payload: 2000, Flags: "    A   "}, {Port: 1, Seq: 3000, Payload: 2000, Flags: "    A   "}},
		},
		{
			name: "interleaved flows keep their order",
			in: []seg{
				{srcPort: 1, seq: 0, flags: ack, payload: mss},
				{srcPort: 2, seq: 0, flags: ack, payload: mss},
				{srcPort: 1, seq: mss, flags: ack, payload: mss},
			},
			want: []summary{
				{Port: 1, Seq: 0, Payload: mss, Flags: "    A   "},
				{Port: 2, Seq: 0, Payload: mss, Flags: "    A   "},
				{Port: 1, Seq: mss, Payload: mss, Flags: "    A   "},
			},
		},
		{
			name: "FIN and pure ACK pass through in order",
			in: cat(run(2, seg{srcPort: 1, flags: ack}), []seg{
				{srcPort: 1, seq: 2000, flags: header.TCPFlagAck | header.TCPFlagFin},
				{srcPort: 1, seq: 2001, flags: ack},
			}),
			want: []summary{
				{Port: 1, Seq: 0, Payload: 2000, Flags: "    A   "},
				{Port: 1, Seq: 2000, Flags: "F   A   "},
				{Port: 1, Seq: 2001, Flags: "    A   "},
			},
		},
		{
			name: "short segment ends the run",
			in: []seg{
				{srcPort: 1, seq: 0, flags: ack, payload: mss},
				{srcPort: 1, seq: mss, flags: ack, payload: 10},
				{srcPort: 1, seq: mss + 10, flags: ack, payload: mss},
			},
			want: []summary{
				{Port: 1, Seq: 0, Payload: mss + 10, Flags: "    A   "},
				{Port: 1, Seq: mss + 10, Payload: mss, Flags: "    A   "},
			},
		},
		{
			name: "different ACK or timestamp",
			in: []seg{
				{srcPort: 1, seq: 0, ack: 1, flags: ack, payload: mss},
				{srcPort: 1, seq: mss, ack: 2, flags: ack, payload: mss},
				{srcPort: 1, seq: 2 * mss, ack: 2, flags: ack, payload: mss, tsVal: 9},
			},
			want: []summary{
				{Port: 1, Seq: 0, Payload: mss, Flags: "    A   "},
				{Port: 1, Seq: mss, Payload: mss, Flags: "    A   "},
				{Port: 1, Seq: 2 * mss, Payload: mss, Flags: "    A   "},
			},
		},
		{
			name: "at most maxCoalesceSegs segments",
			in:   run(70, seg{srcPort: 1, flags: ack}),
			want: []summary{
				{Port: 1, Seq: 0, Payload: 64 * mss, Flags: "    A   "},
				{Port: 1, Seq: 64 * mss, Payload: 6 * mss, Flags: "    A   "},
			},
		},
		{
			name: "at most 64 KiB",
			in: []seg{
				{srcPort: 1, seq: 0, flags: ack, payload: 30000},
				{srcPort: 1, seq: 30000, flags: ack, payload: 30000},
				{srcPort: 1, seq: 60000, flags: ack, payload: 30000},
			},
			want: []summary{
				{Port: 1, Seq: 0, Payload: 60000, Flags: "    A   "},
				{Port: 1, Seq: 60000, Payload: 30000, Flags: "    A   "},
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := new(captureDispatcher)
			c := &coalescer{d: d, segs: make([][]byte, 0, maxCoalesceSegs)}
			for _, s := range tc.in {
				c.add(tcpPacket(s))
			}
			c.flush()
			var got []summary
			for _, p := range d.pkts {
				got = append(got, summarize(t, p))
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("delivered packets (-want +got):\n%s", diff)
			}
		})
	}
}

// FuzzCoalescer feeds arbitrary packets (each prefixed by a 2-byte
// length) to the coalescer: it must not panic, must deliver every packet
// that is not merged, and every merged packet must have consistent IP
// lengths.
func FuzzCoalescer(f *testing.F) {
	frame := func(pkts ...[]byte) []byte {
		var b []byte
		for _, p := range pkts {
			b = binary.BigEndian.AppendUint16(b, uint16(len(p)))
			b = append(b, p...)
		}
		return b
	}
	ack := header.TCPFlagAck
	// A mergeable run, the same over IPv6, and a run broken by a FIN.
	f.Add(frame(tcpPacket(seg{seq: 0, flags: ack, payload: 100}), tcpPacket(seg{seq: 100, flags: ack, payload: 100})))
	f.Add(frame(tcpPacket(seg{v6: true, flags: ack, payload: 50}), tcpPacket(seg{v6: true, seq: 50, flags: ack, payload: 7})))
	f.Add(frame(tcpPacket(seg{flags: ack, payload: 10}), tcpPacket(seg{seq: 10, flags: header.TCPFlagFin | ack})))
	f.Add([]byte{0, 1, 0x45})
	f.Fuzz(func(t *testing.T, data []byte) {
		d := new(captureDispatcher)
		c := &coalescer{d: d, segs: make([][]byte, 0, maxCoalesceSegs)}
		var in [][]byte
		for len(data) >= 2 {
			n := int(binary.BigEndian.Uint16(data))
			data = data[2:]
			if n == 0 || n > len(data) {
				break
			}
			pkt := bytes.Clone(data[:n])
			data = data[n:]
			if pkt[0]>>4 != 4 && pkt[0]>>4 != 6 {
				continue // Write drops these before the coalescer
			}
			in = append(in, pkt)
			c.add(pkt)
		}
		c.flush()
		if len(d.pkts) > len(in) {
			t.Fatalf("%d packets in, %d delivered", len(in), len(d.pkts))
		}
		total := 0
		for _, p := range in {
			total += len(p)
		}
		out := 0
		for _, p := range d.pkts {
			out += len(p)
		}
		if out > total {
			t.Fatalf("%d bytes in, %d delivered", total, out)
		}
		// A packet that was not passed through as it came is a merge,
		// which must be a well-formed TCP packet of at most 64 KiB.
		arrived := make(map[string]bool, len(in))
		for _, p := range in {
			arrived[string(p)] = true
		}
		for _, p := range d.pkts {
			if arrived[string(p)] {
				continue
			}
			if _, _, ok := tcpFlow(p); !ok || len(p) > maxCoalesce {
				t.Fatalf("merged packet of %d bytes is not a well-formed TCP packet: % x", len(p), p[:min(len(p), 60)])
			}
		}
	})
}

// TestPieceSize checks that the payload views of a merged packet add up
// to its payload and that the pooled chunks behind them (powers of two,
// cleared whole) exceed it by less than minPiece.
func TestPieceSize(t *testing.T) {
	for _, tc := range []struct{ rest, want int }{
		{1, 1}, {1023, 1023}, {1024, 1024}, {1025, 1024}, {39296, 32768}, {65535, 32768}, {65536, 65536}, {1 << 20, buffer.MaxChunkSize},
	} {
		if got := pieceSize(tc.rest); got != tc.want {
			t.Errorf("pieceSize(%d) = %d, want %d", tc.rest, got, tc.want)
		}
	}
	for size := 1; size <= maxCoalesce; size++ {
		cleared := 0
		for rest := size; rest > 0; {
			p := pieceSize(rest)
			if p <= 0 || p > rest {
				t.Fatalf("size %d: piece %d with %d left", size, p, rest)
			}
			cleared += max(64, 1<<bits.Len(uint(p-1))) // the chunk gVisor pools it in
			rest -= p
		}
		if cleared-size >= minPiece {
			t.Fatalf("size %d: chunks of %d bytes cleared, want under %d", size, cleared, size+minPiece)
		}
	}
}
