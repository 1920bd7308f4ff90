package gv

import (
	"encoding/binary"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// The link offers gVisor "host" segmentation offload: TCP hands it one
// packet of up to 64 KiB with a TCP checksum over the pseudo-header only
// (Linux's CHECKSUM_PARTIAL), and the TUN reader cuts it into MSS-sized
// packets straight into wireguard-go's buffers, finishing every checksum.
// gVisor then builds, routes and queues one packet where it used to do all
// of that for each of ~50 MTU-sized ones.

// maxSegHeaders bounds an IP plus TCP header: 60 + 60 bytes.
const maxSegHeaders = 120

// segmenter holds the outbound packet the TUN reader is cutting up, so a
// Read whose buffers run out continues it in the next Read. It belongs to
// the reader (TUN.readMu).
type segmenter struct {
	pkt *stack.PacketBuffer // nil when idle

	// Where the next payload byte is: view and offset in it.
	v   *buffer.View
	off int

	hdr     [maxSegHeaders]byte // the packet's IP and TCP headers
	ipLen   int
	tcpLen  int
	v6      bool
	payload int // payload bytes not yet emitted
	mss     int
	seg     int // index of the next segment

	// Checksums every segment starts from, computed once per packet:
	// ipSum is the IPv4 header's sum with total length, ID and checksum
	// zeroed; pseudoSum is the TCP pseudo-header's sum without the
	// length.
	ipSum     uint16
	pseudoSum uint16
}

// start takes pkt (and its reference). It reports false, releasing pkt,
// if pkt is not an IP packet carrying a whole TCP header.
func (s *segmenter) start(pkt *stack.PacketBuffer) bool {
	vl, off := pkt.AsViewList()
	s.pkt, s.v, s.off = pkt, vl.Front(), off
	size := pkt.Size()
	n := s.read(s.hdr[:min(size, maxSegHeaders)])
	h := s.hdr[:n]
	ok := false
	switch {
	case n >= header.IPv4MinimumSize && h[0]>>4 == 4:
		s.v6 = false
		s.ipLen = int(h[0]&0xf) * 4
		ok = s.ipLen >= header.IPv4MinimumSize && header.IPv4(h).Protocol() == uint8(header.TCPProtocolNumber)
	case n >= header.IPv6MinimumSize && h[0]>>4 == 6:
		s.v6 = true
		s.ipLen = header.IPv6MinimumSize
		ok = header.IPv6(h).NextHeader() == uint8(header.TCPProtocolNumber)
	}
	if ok && n >= s.ipLen+header.TCPMinimumSize {
		s.tcpLen = int(header.TCP(h[s.ipLen:]).DataOffset())
		ok = s.tcpLen >= header.TCPMinimumSize && s.ipLen+s.tcpLen <= n
	} else {
		ok = false
	}
	if !ok {
		s.reset()
		return false
	}
	// The header copy read past the headers into the payload; rewind.
	vl, off = pkt.AsViewList()
	s.v, s.off = vl.Front(), off
	s.skip(s.ipLen + s.tcpLen)
	s.payload = size - s.ipLen - s.tcpLen
	s.mss = s.payload
	if pkt.GSOOptions.Type != stack.GSONone && int(pkt.GSOOptions.MSS) > 0 && int(pkt.GSOOptions.MSS) < s.payload {
		s.mss = int(pkt.GSOOptions.MSS)
	}
	s.seg = 0
	hdr := s.hdr[:s.ipLen]
	if s.v6 {
		s.pseudoSum = checksum.Checksum(hdr[8:40], uint16(header.TCPProtocolNumber))
	} else {
		s.pseudoSum = checksum.Checksum(hdr[12:20], uint16(header.TCPProtocolNumber))
		var ip [60]byte
		copy(ip[:], hdr)
		clear(ip[2:6])   // total length, ID
		clear(ip[10:12]) // checksum
		s.ipSum = checksum.Checksum(ip[:s.ipLen], 0)
	}
	return true
}

func (s *segmenter) reset() {
	if s.pkt != nil {
		s.pkt.DecRef()
	}
	*s = segmenter{}
}

// read copies the next len(dst) packet bytes (fewer at the end) into dst.
func (s *segmenter) read(dst []byte) int {
	n := 0
	for n < len(dst) && s.v != nil {
		b := s.v.AsSlice()
		if s.off >= len(b) {
			s.v, s.off = s.v.Next(), 0
			continue
		}
		c := copy(dst[n:], b[s.off:])
		n += c
		s.off += c
	}
	return n
}

// skip advances past n packet bytes.
func (s *segmenter) skip(n int) {
	for n > 0 && s.v != nil {
		rest := s.v.Size() - s.off
		if rest > n {
			s.off += n
			return
		}
		n -= rest
		s.v, s.off = s.v.Next(), 0
	}
}

// done reports whether every segment has been emitted.
func (s *segmenter) done() bool { return s.pkt == nil }

// next writes the next segment into dst, which must hold an MTU-sized
// packet, and returns its length. After the last segment it releases the
// packet.
func (s *segmenter) next(dst []byte) int {
	seg := min(s.mss, s.payload)
	hl := s.ipLen + s.tcpLen
	copy(dst, s.hdr[:hl])
	n := hl + s.read(dst[hl:hl+seg])
	s.payload -= seg
	last := s.payload == 0
	first := s.seg == 0

	ip := dst[:s.ipLen]
	if s.v6 {
		binary.BigEndian.PutUint16(ip[4:], uint16(n-s.ipLen))
	} else {
		// The header is the template's but for length, ID and checksum,
		// so its checksum is the template's sum plus those two fields.
		id := binary.BigEndian.Uint16(ip[4:]) + uint16(s.seg)
		binary.BigEndian.PutUint16(ip[2:], uint16(n))
		binary.BigEndian.PutUint16(ip[4:], id)
		binary.BigEndian.PutUint16(ip[10:], ^checksum.Combine(checksum.Combine(s.ipSum, uint16(n)), id))
	}
	tcp := header.TCP(dst[s.ipLen:n])
	tcp.SetSequenceNumber(tcp.SequenceNumber() + uint32(s.seg*s.mss))
	if flags := tcp.Flags(); !last || !first {
		if !last {
			flags &^= header.TCPFlagFin | header.TCPFlagPsh
		}
		if !first {
			flags &^= header.TCPFlagCwr
		}
		tcp.SetFlags(uint8(flags))
	}
	tcp.SetChecksum(0)
	tcp.SetChecksum(^checksum.Checksum(tcp, checksum.Combine(s.pseudoSum, uint16(len(tcp)))))

	s.seg++
	if last {
		s.reset()
	}
	return n
}
