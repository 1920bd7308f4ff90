package gv

import (
	"bytes"
	"encoding/binary"
	"math/bits"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// coalescer merges consecutive inbound TCP segments of one connection
// (receive offload, like Linux GRO) before the stack sees them: the
// payloads of a run are copied once into one buffer behind the first
// segment's headers, and the stack parses, routes and queues one packet
// instead of one per segment. Anything that cannot join the run (another
// flow, a gap in sequence, different ACK, window or TCP options, a flag
// other than ACK and PSH, a short segment followed by another) ends it, so
// the stack still sees every byte in order.
//
// A coalescer is used by one Write at a time; the slices it holds point
// into that Write's buffers.
type coalescer struct {
	d stack.NetworkDispatcher

	segs   [][]byte // the run's packets; segs[0] supplies the headers
	size   int      // payload bytes in the run
	hl     int      // IP plus TCP header length of segs[0]
	ipLen  int
	mss    int    // payload size of segs[0]; all but the last match it
	next   uint32 // sequence number the next segment must carry
	pushed bool   // the last segment had PSH: the run is complete

	hdr [maxSegHeaders]byte // scratch for the merged packet's headers
}

// A merged packet holds at most maxCoalesceSegs segments and
// maxCoalesce bytes (an IPv4 total length is 16 bits).
const (
	maxCoalesce     = 1<<16 - 1
	maxCoalesceSegs = 64
)

// tcpFlow parses pkt as a coalescing candidate: an IPv4 packet without
// options or fragmentation, or an IPv6 packet whose next header is TCP,
// carrying a TCP segment with payload and no flags but ACK and PSH. It
// returns the IP and TCP header lengths, or ok false.
func tcpFlow(pkt []byte) (ipLen, tcpLen int, ok bool) {
	switch pkt[0] >> 4 {
	case 4:
		h := header.IPv4(pkt)
		if len(pkt) < header.IPv4MinimumSize || h.HeaderLength() != header.IPv4MinimumSize ||
			int(h.TotalLength()) != len(pkt) || h.Protocol() != uint8(header.TCPProtocolNumber) ||
			h.More() || h.FragmentOffset() != 0 {
			return 0, 0, false
		}
		ipLen = header.IPv4MinimumSize
	case 6:
		h := header.IPv6(pkt)
		if len(pkt) < header.IPv6MinimumSize || int(h.PayloadLength())+header.IPv6MinimumSize != len(pkt) ||
			h.NextHeader() != uint8(header.TCPProtocolNumber) {
			return 0, 0, false
		}
		ipLen = header.IPv6MinimumSize
	default:
		return 0, 0, false
	}
	if len(pkt) < ipLen+header.TCPMinimumSize {
		return 0, 0, false
	}
	tcp := header.TCP(pkt[ipLen:])
	tcpLen = int(tcp.DataOffset())
	if tcpLen < header.TCPMinimumSize || ipLen+tcpLen >= len(pkt) {
		return 0, 0, false // malformed, or no payload
	}
	if tcp.Flags()&^(header.TCPFlagAck|header.TCPFlagPsh) != 0 || tcp.Flags()&header.TCPFlagAck == 0 {
		return 0, 0, false
	}
	return ipLen, tcpLen, true
}

// add hands pkt to the stack, merging it into the current run when it
// continues it.
func (c *coalescer) add(pkt []byte) {
	ipLen, tcpLen, ok := tcpFlow(pkt)
	if !ok {
		c.flush()
		c.deliver(pkt)
		return
	}
	if len(c.segs) > 0 && !c.joins(pkt, ipLen, tcpLen) {
		c.flush()
	}
	payload := len(pkt) - ipLen - tcpLen
	tcp := header.TCP(pkt[ipLen:])
	if len(c.segs) == 0 {
		c.hl, c.ipLen, c.mss = ipLen+tcpLen, ipLen, payload
	}
	c.segs = append(c.segs, pkt)
	c.size += payload
	c.next = tcp.SequenceNumber() + uint32(payload)
	c.pushed = tcp.Flags()&header.TCPFlagPsh != 0
}

// joins reports whether pkt (a candidate) continues the current run.
func (c *coalescer) joins(pkt []byte, ipLen, tcpLen int) bool {
	first := c.segs[0]
	last := c.segs[len(c.segs)-1]
	payload := len(pkt) - ipLen - tcpLen
	if c.pushed || ipLen != c.ipLen || ipLen+tcpLen != c.hl ||
		len(last)-c.hl != c.mss || payload > c.mss ||
		c.hl+c.size+payload > maxCoalesce || len(c.segs) >= maxCoalesceSegs {
		return false
	}
	// The IP headers must match but for length, ID and checksum.
	if ipLen == header.IPv4MinimumSize {
		if first[1] != pkt[1] || !bytes.Equal(first[6:10], pkt[6:10]) || !bytes.Equal(first[12:20], pkt[12:20]) {
			return false // TOS, flags, TTL, protocol, addresses
		}
	} else if !bytes.Equal(first[:4], pkt[:4]) || !bytes.Equal(first[6:40], pkt[6:40]) {
		return false // class, flow label, hop limit, addresses
	}
	a, b := header.TCP(first[ipLen:]), header.TCP(pkt[ipLen:])
	return b.SequenceNumber() == c.next &&
		binary.BigEndian.Uint32(first[ipLen:]) == binary.BigEndian.Uint32(pkt[ipLen:]) && // ports
		a.AckNumber() == b.AckNumber() && a.WindowSize() == b.WindowSize() &&
		bytes.Equal(first[ipLen+header.TCPMinimumSize:c.hl], pkt[ipLen+header.TCPMinimumSize:c.hl]) // options
}

// flush hands the current run to the stack as one packet.
//
// The headers go in a buffer view of their own, apart from the payload:
// gVisor's IPv4 receive path copies the whole first chunk of every packet
// (it pulls the header up while holding a second reference to it), which
// is cheap for 64 bytes of headers and not for 64 KiB of data.
func (c *coalescer) flush() {
	if len(c.segs) == 0 {
		return
	}
	hdr := c.hdr[:c.hl]
	copy(hdr, c.segs[0])
	if len(c.segs) > 1 {
		n := c.hl + c.size
		if c.ipLen == header.IPv4MinimumSize {
			h := header.IPv4(hdr)
			h.SetTotalLength(uint16(n))
			h.SetChecksum(0)
			h.SetChecksum(^h.CalculateChecksum())
		} else {
			binary.BigEndian.PutUint16(hdr[4:], uint16(n-header.IPv6MinimumSize))
		}
		if c.pushed {
			tcp := header.TCP(hdr[c.ipLen:])
			tcp.SetFlags(uint8(tcp.Flags() | header.TCPFlagPsh))
		}
	}
	buf := buffer.MakeWithView(buffer.NewViewWithData(hdr))
	c.appendPayload(&buf)
	c.dispatch(buf, hdr[0]>>4)
	clear(c.segs)
	c.segs = c.segs[:0]
	c.size = 0
	c.pushed = false
}

// minPiece is the smallest payload view appendPayload cuts off before the
// last one.
const minPiece = 1 << 10

// appendPayload copies the run's payloads into views appended to buf.
//
// gVisor takes a view's memory from pools of power-of-two chunks and
// clears the whole chunk first, so one view for a 40 KiB run clears
// 64 KiB. The payload goes instead into views of the largest power of two
// that fits what is left, down to minPiece, and a last view for the rest:
// what is cleared is then within 1 KiB of what is written.
func (c *coalescer) appendPayload(buf *buffer.Buffer) {
	rest := c.size
	var v *buffer.View
	for _, s := range c.segs {
		p := s[c.hl:]
		for len(p) > 0 {
			if v == nil || v.AvailableSize() == 0 {
				if v != nil {
					buf.Append(v)
				}
				v = buffer.NewView(pieceSize(rest))
			}
			n := min(len(p), v.AvailableSize())
			v.Write(p[:n])
			p = p[n:]
			rest -= n
		}
	}
	if v != nil {
		buf.Append(v)
	}
}

// pieceSize returns the size of the next payload view when rest bytes
// remain: the largest power of two not above rest (and not above gVisor's
// largest pooled chunk), or rest itself below minPiece.
func pieceSize(rest int) int {
	if rest < minPiece {
		return rest
	}
	return min(1<<(bits.Len(uint(rest))-1), buffer.MaxChunkSize)
}

// deliver hands one packet to the stack as it is.
func (c *coalescer) deliver(pkt []byte) {
	c.dispatch(buffer.MakeWithData(pkt), pkt[0]>>4)
}

func (c *coalescer) dispatch(payload buffer.Buffer, version byte) {
	pb := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: payload})
	var proto tcpip.NetworkProtocolNumber = header.IPv4ProtocolNumber
	if version == 6 {
		proto = header.IPv6ProtocolNumber
	}
	pb.NetworkProtocolNumber = proto
	// WireGuard authenticated the packet; see CapabilityRXChecksumOffload.
	// (A merged packet's TCP checksum covers only its first segment.)
	pb.RXChecksumValidated = true
	c.d.DeliverNetworkPacket(proto, pb)
	pb.DecRef()
}
