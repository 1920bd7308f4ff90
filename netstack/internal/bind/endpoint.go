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
	// notHereArmed is set while a PeerNotHere retry is pending.
	notHereArmed atomic.Bool
	// asleep is set while the peer is not configured in wireguard-go
	// (see Options.WakePeer and SetAwake).
	asleep atomic.Bool
	// home is the peer's home relay region; 0 means none.
	home atomic.Int32

	// disco is the peer's disco key; nil without one (no disco).
	disco atomic.Pointer[discoPeer]
	// lastWGRecv is when a WireGuard datagram from the peer last
	// arrived, over any path (unix nanos).
	lastWGRecv atomic.Int64
	// lastSend is when wireguard-go last sent to the peer.
	lastSend atomic.Int64
	// lastData is when wireguard-go last sent the peer a transport data
	// message (unix nanos): it had a session with it then.
	lastData atomic.Int64
	// lastHandshake is when a handshake with the peer last completed,
	// as the bind sees it (unix nanos; see noteHandshake and noteSent):
	// a response from the peer arrived (lastRespRecv) and wireguard-go
	// then sent a transport message, or a transport message arrived after
	// wireguard-go sent a response (lastRespSent). Zero while the peer
	// sleeps.
	lastHandshake, lastRespSent, lastRespRecv atomic.Int64
	// lastProbe, lastHeartbeat and lastReply rate-limit the pings of
	// probes, heartbeats and answers to pings from new addresses.
	lastProbe, lastHeartbeat, lastReply atomic.Int64
	// lastDirectPing is when a ping last went to the address of best
	// (unix nanos): a pong after it shows the path answers, none shows
	// it does not (see Bind.idleDirect).
	lastDirectPing atomic.Int64
	// unansweredSince is when the first ping to best's address since
	// best was last heard from went out (unix nanos); see quiet.
	unansweredSince atomic.Int64
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
	// initCopies keeps copies of one handshake message from reaching
	// wireguard-go twice (initcopy.go).
	initCopies initCopies

	// relayServer: the peer offers a peer relay server
	// (PeerConfig.RelayServer).
	relayServer atomic.Bool
	// pr is the session at a peer relay server that reaches this peer;
	// nil if none (peerrelay.go). Replaced under Bind.mu.
	pr atomic.Pointer[prSession]
	// lastAllocate is when a session was last asked for, allocTurn
	// rotates among servers, lastServeAllocate rate-limits the peer's
	// own requests to our server.
	lastAllocate, lastServeAllocate atomic.Int64
	allocTurn                       atomic.Uint32
	// allocServer is the server the last Allocate for a session with
	// this peer went to; an Allocation from it is taken within
	// allocateEvery of lastAllocate (once). Nil if none is awaited.
	allocServer atomic.Pointer[peer]
	// lastOffered is when this peer, as a relay server, last had an
	// Allocation nobody here asked for taken (at most one per
	// allocateEvery).
	lastOffered atomic.Int64
}

// PeerPath is the bind's view of how a peer is reached.
type PeerPath struct {
	// Endpoint is the address packets to the peer go to now; invalid if
	// none is confirmed.
	Endpoint netip.AddrPort
	// Path is "direct" once a UDP address is confirmed, "peer-relay"
	// while the peer is reached through a peer relay server (Via),
	// "relay" while it is reached through a relay region, else "none".
	Path string
	// Via is the peer relay server's node when Path is "peer-relay".
	Via key.NodePublic
	// Region is the relay region in use when Path is "relay".
	Region int
	// LastRecv is when a packet last arrived over Endpoint; zero if never.
	LastRecv int64
	// Latency is the round trip of the last disco pong over the direct
	// path; zero if unknown.
	Latency time.Duration
}

// Path preference between two working direct paths.
const (
	// fasterMin: a path replaces one of its own family (or an IPv4 path
	// an IPv6 one) only if its round trip is under 2/3 of the current
	// one's and shorter by fasterMin, so two paths of about the same
	// latency do not take turns.
	fasterMin = time.Millisecond
	// v6Slack and v6SlackRatio: an IPv6 path replaces an IPv4 one unless
	// it is slower by more than the larger of v6Slack and v6SlackRatio of
	// the IPv4 round trip. IPv6 has no NAT whose mapping can lapse or be
	// rebound, so it is the sturdier path at equal latency (Tailscale's
	// betterAddr prefers it likewise). The two rules leave a gap (an IPv4
	// path replaces an IPv6 one only if the IPv6 one is over 1.5 times
	// slower and 1 ms slower), so the choice does not flap.
	v6Slack      = time.Millisecond
	v6SlackRatio = 10 // percent
)

// betterPath reports whether the direct path to a, whose pong took aLat,
// should replace the current direct path to b, whose last pong took bLat
// (0 if it was never measured). Both are the peer's addresses. An unmeasured
// a is never better, except that IPv6 is preferred to IPv4 of unknown
// latency.
func betterPath(a netip.AddrPort, aLat time.Duration, b netip.AddrPort, bLat time.Duration) bool {
	if a == b {
		return false
	}
	if a.Addr().Is6() && b.Addr().Is4() {
		if bLat == 0 {
			return true
		}
		return aLat > 0 && aLat <= bLat+max(bLat*v6SlackRatio/100, v6Slack)
	}
	return aLat > 0 && bLat > 0 && aLat+aLat/2 < bLat && bLat-aLat > fasterMin
}

// quiet reports whether best, p's direct path, has left a ping unanswered
// for longer than suspectAfter: it may have died, and a probe of all of p's
// addresses looks for another (any that answers replaces it, see
// confirmDirect) before it goes stale.
func quiet(p *peer, best *Endpoint, now int64) bool {
	u := p.unansweredSince.Load()
	return u > best.lastRecv.Load() && now-u > int64(suspectAfter)
}

// keepFor reports whether best, p's direct path, should stay p's path
// although wireguard-go now sends to e, an IPv4 address it authenticated a
// packet from: best is IPv6, answered within staleAfter, and e is not
// clearly faster (see betterPath). Both sides prefer IPv6, but packets the
// peer sent over IPv4 before it switched arrive after we did; following
// them would switch both sides back.
func keepFor(best, e *Endpoint, now int64) bool {
	if best == nil || best.isRelay() || e.isRelay() || !best.src.Addr().Is6() || !e.src.Addr().Is4() || !fresh(best, now) {
		return false
	}
	return !betterPath(e.src, time.Duration(e.latency.Load()), best.src, time.Duration(best.latency.Load()))
}
