package bind

import "net/netip"

// groMsg is one message as the kernel returned it: n bytes, which UDP
// generic receive offload (UDP_GRO) may have coalesced from several
// datagrams of one source. Every datagram in it is seg bytes long except
// the last, which may be shorter; seg 0 means the message is a single
// datagram.
type groMsg struct {
	n   int
	seg int
	src netip.AddrPort
}

// groSplitter hands out, one at a time and in order, the datagrams of the
// messages one receive syscall returned, so that each reaches wireguard-go
// (and the disco and STUN checks) on its own. It is not safe for
// concurrent use; each receive path owns one.
type groSplitter struct {
	// bufs[i] holds message i; msgs[i] describes it.
	bufs [][]byte
	msgs []groMsg
	// cur is the message the next datagram comes from and off its
	// offset there; cur == len(msgs) when all were handed out.
	cur, off int
}

// reset makes the first count messages of s.bufs the ones to split.
func (s *groSplitter) reset(count int) {
	s.msgs = s.msgs[:count]
	s.cur, s.off = 0, 0
}

// pending reports whether datagrams remain.
func (s *groSplitter) pending() bool { return s.cur < len(s.msgs) }

// drop forgets the datagrams that remain.
func (s *groSplitter) drop() { s.cur, s.off = len(s.msgs), 0 }

// next returns the next datagram and its source; pending must be true. A
// segment size that is not positive, or not below the message size, is
// taken to mean one datagram: the kernel never sends such a size for a
// coalesced message, so the message is passed on whole rather than cut.
// An empty message yields one empty datagram.
func (s *groSplitter) next() ([]byte, netip.AddrPort) {
	m := &s.msgs[s.cur]
	n := min(m.n, len(s.bufs[s.cur]))
	l := n - s.off
	if m.seg > 0 && m.seg < n && l > m.seg {
		l = m.seg
	}
	pkt := s.bufs[s.cur][s.off : s.off+l]
	s.off += l
	if s.off >= n {
		s.cur++
		s.off = 0
	}
	return pkt, m.src
}
