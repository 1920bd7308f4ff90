package netstack

import (
	"beam.dev/beam/types/key"
)

// PathTraffic counts the WireGuard datagrams exchanged with a peer over
// one path (WireGuard's overhead included).
type PathTraffic struct {
	RxBytes, RxPackets uint64
	TxBytes, TxPackets uint64
}

// PeerTraffic is a snapshot of the data-path counters of one peer. The
// counters are kept per peer with atomic adds where datagrams are sent
// and received, and read here without stopping the data path.
type PeerTraffic struct {
	// Direct counts datagrams over UDP straight to the peer, Relay those
	// through a relay region.
	Direct, Relay PathTraffic
	// PeerRelay counts datagrams through peer relay servers.
	PeerRelay PathTraffic
	// HandshakesInitiated and HandshakesAnswered count the handshake
	// initiations and responses sent to the peer, retries included.
	HandshakesInitiated, HandshakesAnswered uint64
	// PathChanges counts switches of the peer's primary path between
	// direct, peer relay and relay.
	PathChanges uint64
}

// PeerTraffic returns the counters of peer k; zero if k is not a peer.
func (e *Engine) PeerTraffic(k key.NodePublic) PeerTraffic {
	t := e.bind.PeerTraffic(k)
	return PeerTraffic{
		Direct:              PathTraffic(t.Direct),
		Relay:               PathTraffic(t.Relay),
		PeerRelay:           PathTraffic(t.PeerRelay),
		HandshakesInitiated: t.HandshakesInitiated,
		HandshakesAnswered:  t.HandshakesAnswered,
		PathChanges:         t.PathChanges,
	}
}
