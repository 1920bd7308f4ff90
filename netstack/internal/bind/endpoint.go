package bind

import (
	"net/netip"
	"sync/atomic"
	"time"

	"beam.dev/beam/types/key"
	"golang.zx2c4.com/wireguard/conn"
)

// Endpoint is what wireguard-go sees as a peer's address. Its identity for
// sending is the peer (its public key): Send ignores the address and
// picks the peer's current path. Endpoints returned by a ReceiveFunc also
// carry the real source address of the datagram, which wireguard-go uses
// for cookies (DstToBytes) and rate limiting (DstIP), so its under-load
// protection keeps working per source address.
//
// The bind keeps one Endpoint per (peer, address) and one canonical
// Endpoint per peer (no address, from ParseEndpoint), so receiving does
// not allocate.
type Endpoint struct {
	peer     *peer          // nil: a source no known peer can be tied to
	src      netip.AddrPort // datagram source; invalid for a canonical endpoint
	srcBytes []byte         // src in binary form, for DstToBytes
	lastRecv atomic.Int64   // unix nanos of the last datagram (or pong) from src
	latency  atomic.Int64   // round trip of the last pong from src, nanos; 0 if unknown
	// sock is the extra socket (birthday probing, birthday.go) the path
	// runs over; nil for the bind's own sockets.
	sock *extraSock
}

var _ conn.Endpoint = (*Endpoint)(nil)

func newEndpoint(p *peer, src netip.AddrPort) *Endpoint {
	e := &Endpoint{peer: p, src: src}
	if src.IsValid() {
		e.srcBytes, _ = src.MarshalBinary()
	} else if p != nil {
		raw := p.key.Raw32()
		e.srcBytes = raw[:]
	}
	return e
}

// ClearSrc does nothing: the bind always picks the source itself.
func (e *Endpoint) ClearSrc() {}

// SrcToString returns "": there is no sticky source address.
func (e *Endpoint) SrcToString() string { return "" }

// DstToString returns the peer's key in text form, the form ParseEndpoint
// accepts, or for a source no peer is tied to, that address.
func (e *Endpoint) DstToString() string {
	if e.peer == nil {
		return e.src.String()
	}
	return e.peer.key.String()
}

// DstToBytes returns the datagram source address (or, for a canonical
// endpoint, the peer key) for wireguard-go's mac2 cookie computation.
func (e *Endpoint) DstToBytes() []byte { return e.srcBytes }

// DstIP returns the datagram source IP, used by wireguard-go's handshake
// rate limiter. It is invalid for a canonical endpoint.
func (e *Endpoint) DstIP() netip.Addr { return e.src.Addr() }

// SrcIP returns the zero Addr: there is no sticky source address.
func (e *Endpoint) SrcIP() netip.Addr { return netip.Addr{} }

// peer is the bind's state for one WireGuard peer.
type peer struct {
	key       key.NodePublic
	canonical *Endpoint

	// candidates are the peer's advertised UDP endpoints, replaced
	// whole on SetPeers.
	candidates atomic.Pointer[[]netip.AddrPort]
	// best is the endpoint of the address the peer was last
	// authenticated from (learned in Send, see Bind.Send); nil until then.
	best atomic.Pointer[Endpoint]
	// lastSendEp is the last endpoint wireguard-go handed to Send; a
	// change means wireguard-go accepted a packet from a new address.
	lastSendEp atomic.Pointer[Endpoint]
	// removed is set once the peer left the bind's table.
	removed atomic.Bool
	// home is the peer's home relay region; 0 means none.
	home atomic.Int32

	// disco is the peer's disco key; nil without one (no disco).
	disco atomic.Pointer[discoPeer]
	// lastWGRecv is when a WireGuard datagram from the peer last
	// arrived, over any path (unix nanos).
	lastWGRecv atomic.Int64
	// lastSend is when wireguard-go last sent to the peer.
	lastSend atomic.Int64
	// lastProbe, lastHeartbeat and lastReply rate-limit the pings of
	// probes, heartbeats and answers to pings from new addresses.
	lastProbe, lastHeartbeat, lastReply atomic.Int64
	// lastDirectPing is when a ping last went to the address of best
	// (unix nanos): a pong after it shows the path answers, none shows
	// it does not (see Bind.idleDirect).
	lastDirectPing atomic.Int64
	// dualUntil: until then, packets to the peer go over both its direct
	// path and the relay (a new or reawakened direct path is not trusted
	// yet).
	dualUntil atomic.Int64
	// init is the last handshake initiation sent to the peer.
	init initState
	// bday is the peer's birthday probing state (birthday.go), guarded
	// by Bind.bmu.
	bday birthdayState
	// sessionIdx is a receiver index the peer's transport data named
	// that is ours (the fast path of noteTransport); lastStale is when
	// the peer was last reported to Options.OnStaleSession (unix nanos).
	sessionIdx atomic.Uint32
	lastStale  atomic.Int64
	// traffic counts datagrams per path (traffic.go).
	traffic traffic
}

// PeerPath is the bind's view of how a peer is reached.
type PeerPath struct {
	// Endpoint is the address packets to the peer go to now; invalid if
	// none is confirmed.
	Endpoint netip.AddrPort
	// Path is "direct" once a UDP address is confirmed, "relay" while
	// the peer is reached through a relay, else "none".
	Path string
	// Region is the relay region in use when Path is "relay".
	Region int
	// LastRecv is when a packet last arrived over Endpoint; zero if never.
	LastRecv int64
	// Latency is the round trip of the last disco pong over the direct
	// path; zero if unknown.
	Latency time.Duration
}
