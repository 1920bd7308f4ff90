package bind

import (
	"encoding/binary"
	"net/netip"
	"sync/atomic"

	"beam.dev/beam/types/key"
)

// Path indexes of the traffic counters.
const (
	pathDirect = 0 // UDP straight to the peer
	pathRelay  = 1 // through a relay region
	// pathPeerRelay is through a peer relay server (peerrelay.go).
	pathPeerRelay = 2
	numPaths      = 3
)

// traffic counts one peer's WireGuard datagrams per path. Every field is
// its own atomic, updated where the datagram is sent or handed to
// wireguard-go: no lock and no allocation on the packet path. A peer that
// leaves the bind's table takes its counters with it; one that comes back
// starts from zero (a counter reset, which Prometheus understands).
type traffic struct {
	rxBytes, rxPackets [numPaths]atomic.Uint64
	txBytes, txPackets [numPaths]atomic.Uint64
	// initiated and answered count the handshake initiations and
	// responses wireguard-go sent to the peer (retries included).
	initiated, answered atomic.Uint64
	// path is the last primary path packets to the peer took (0 none
	// yet, 1 direct, 2 relay, 3 peer relay); pathChanges counts its
	// changes.
	path        atomic.Uint32
	pathChanges atomic.Uint64
}

// received counts one datagram of n bytes from the peer over path.
func (t *traffic) received(path, n int) {
	t.rxBytes[path].Add(uint64(n))
	t.rxPackets[path].Add(1)
}

// sent counts bufs, sent to the peer over path.
func (t *traffic) sent(path int, bufs [][]byte) {
	var n uint64
	for _, b := range bufs {
		n += uint64(len(b))
	}
	t.txBytes[path].Add(n)
	t.txPackets[path].Add(uint64(len(bufs)))
}

// sentOne counts one datagram of n bytes, sent to the peer over path.
func (t *traffic) sentOne(path, n int) {
	t.txBytes[path].Add(uint64(n))
	t.txPackets[path].Add(1)
}

// sending notes the first datagram of a batch wireguard-go hands to Send
// and the primary path the batch takes (direct if it goes direct at all,
// else the peer relay if it goes there).
func (t *traffic) sending(first []byte, direct, relay bool) {
	t.sendingVia(first, direct, false, relay)
}

// sendingVia is sending with the peer relay path.
func (t *traffic) sendingVia(first []byte, direct, peerRelay, relay bool) {
	if len(first) >= 4 {
		switch binary.LittleEndian.Uint32(first) {
		case msgInitiation:
			t.initiated.Add(1)
		case msgResponse:
			t.answered.Add(1)
		}
	}
	var cur uint32
	switch {
	case direct:
		cur = 1
	case peerRelay:
		cur = 3
	case relay:
		cur = 2
	default:
		return
	}
	if old := t.path.Load(); old != cur && t.path.CompareAndSwap(old, cur) && old != 0 {
		t.pathChanges.Add(1)
	}
}

// sendDirect sends bufs to p at dst over UDP, counting them once sent.
func (b *Bind) sendDirect(p *peer, bufs [][]byte, dst netip.AddrPort) error {
	err := b.sendTo(bufs, dst)
	if err == nil && !b.opts.RelayOnly {
		p.traffic.sent(pathDirect, bufs)
	}
	return err
}

// PathTraffic counts the WireGuard datagrams exchanged with a peer over
// one path, WireGuard's own overhead included.
type PathTraffic struct {
	RxBytes, RxPackets uint64
	TxBytes, TxPackets uint64
}

// Traffic is a snapshot of the counters of one peer.
type Traffic struct {
	Direct, Relay PathTraffic
	// PeerRelay is through peer relay servers.
	PeerRelay PathTraffic
	// HandshakesInitiated and HandshakesAnswered count the handshake
	// initiations and responses sent to the peer.
	HandshakesInitiated, HandshakesAnswered uint64
	// PathChanges counts switches of the peer's primary path between
	// direct, peer relay and relay.
	PathChanges uint64
}

// PeerTraffic returns k's counters; zero if k is not a peer.
func (b *Bind) PeerTraffic(k key.NodePublic) Traffic {
	b.mu.Lock()
	pe := b.peers[k]
	b.mu.Unlock()
	if pe == nil {
		return Traffic{}
	}
	t := &pe.p.traffic
	path := func(i int) PathTraffic {
		return PathTraffic{
			RxBytes: t.rxBytes[i].Load(), RxPackets: t.rxPackets[i].Load(),
			TxBytes: t.txBytes[i].Load(), TxPackets: t.txPackets[i].Load(),
		}
	}
	return Traffic{
		Direct:              path(pathDirect),
		Relay:               path(pathRelay),
		PeerRelay:           path(pathPeerRelay),
		HandshakesInitiated: t.initiated.Load(),
		HandshakesAnswered:  t.answered.Load(),
		PathChanges:         t.pathChanges.Load(),
	}
}
