// Package bind is Beam's magic WireGuard bind: a wireguard-go conn.Bind
// whose endpoints are peers (public keys), not addresses. wireguard-go
// hands Send a peer's Endpoint and the bind chooses, per packet, where the
// packet really goes; on receive the bind maps each datagram's source
// address back to the peer it belongs to.
//
// Paths. In this version the only path is direct UDP (an IPv4 and an IPv6
// socket on the same port). A peer's confirmed address ("best") is the
// address wireguard-go last authenticated a packet of that peer from: the
// bind learns it in Send, when wireguard-go starts using an Endpoint that
// carries a new source address (wireguard-go only switches a peer's
// endpoint after a packet decrypted or a handshake verified). Until an
// address is confirmed, or when the confirmed one has been silent for
// longer than WireGuard's rekey timeout, handshake initiations are sent
// to every candidate address so whichever answers wins.
//
// Attribution. A datagram from an address the bind does not know yet is
// tied to a peer by the receiver index it names (the bind remembers the
// sender index of each handshake message it sends for a peer) or, for a
// handshake initiation, by the initiator's static key, which the bind
// decrypts with the node key after checking mac1, at a bounded rate.
// Datagrams that are not WireGuard messages, or that no peer can be tied
// to, are dropped silently.
//
// Copies. A peer sends each handshake initiation over every path it may
// take, and again when we show we are up; of the copies that arrive,
// wireguard-go gets only the first, since two handled at once by its
// parallel handshake workers can both be answered, the second answer
// silently invalidating the first (initcopy.go). A copy of an initiation
// already answered gets the answer again.
//
// Lifecycle. wireguard-go calls Close then Open on every Up; after Close
// every ReceiveFunc returned by the previous Open returns net.ErrClosed.
//
// Relay. With Options.Relay set, Open also returns a relay ReceiveFunc,
// fed by DeliverRelayed; a peer with a home region is reached through the
// relay while no direct address is confirmed (or the confirmed one went
// stale), and handshake initiations go to the relay as well as to every
// candidate, so a direct path replaces the relay as soon as one answers.
//
// Disco. With Options.DiscoKey set, datagrams that start with the disco
// magic (package disco) are taken out of the receive path before the
// WireGuard check (on UDP and from the relay) and handled in disco.go:
// pings are answered with pongs over the same path, a pong confirms a
// direct address exactly as an authenticated WireGuard packet does, and a
// call-me-maybe (sent through the relay) makes the bind ping all the
// sender's endpoints at once, which is how two NATs get punched. Send
// decides per packet between the direct address and the relay (see
// route): direct once confirmed, both while a new path is untrusted, the
// relay when direct stops answering. Of two working direct paths the
// pongs' round trips decide: a clearly faster one wins, and IPv6 wins over
// IPv4 of about the same latency (betterPath), so two nodes behind IPv4
// NATs with global IPv6 use it. STUN answers are also taken out and
// handed to Options.OnSTUN.
//
// Lazy peers. With Options.WakePeer set, a peer starts asleep: the bind
// knows it (paths, disco, attribution) but wireguard-go does not, so it
// costs no X25519 there. The first WireGuard datagram tied to an asleep
// peer makes the receive goroutine call WakePeer before the datagram goes
// on, so wireguard-go has the peer when it reads the datagram. SetAwake
// records what the caller configured; UpdatePeers changes single peers
// without walking the others.
//
// Birthday probing (birthday.go) adds extra UDP sockets, per peer and
// short-lived, for a node behind a NAT that maps each destination to
// another port (SetHardNAT); the one a peer's probe reaches becomes that
// peer's path, its packets reaching wireguard-go through the relay
// ReceiveFunc's queue.
package bind

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"beam.dev/beam/netstack/internal/disco"
	"beam.dev/beam/netstack/internal/inflight"
	"beam.dev/beam/netstack/internal/udpoffload"
	"beam.dev/beam/netstack/internal/udprelay"
	"beam.dev/beam/types/key"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/time/rate"
	"golang.zx2c4.com/wireguard/conn"
)

const (
	// batchSize is how many datagrams one receive or send syscall moves.
	// wireguard-go keeps this many 64 KiB buffers per receive path, so it
	// is a memory/throughput trade: measured, 32 costs no throughput over
	// 128 and a quarter of the memory.
	batchSize = 32
	// staleAfter is how long a confirmed address may be silent before
	// handshake initiations are sprayed to every candidate again. It is
	// WireGuard's REKEY_TIMEOUT: a handshake unanswered for this long is
	// retried.
	staleAfter = 5 * time.Second
	// maxLearnedPerPeer bounds the addresses remembered per peer beyond
	// its advertised candidates.
	maxLearnedPerPeer = 8
	// maxAnon bounds remembered sources that sent a well-formed
	// initiation the bind could not attribute (see Options).
	maxAnon = 256
	// staleSessionEvery is the least time between two reports of one
	// peer to Options.OnStaleSession (wireguard-go sends at most one
	// initiation per RekeyTimeout, 5 s, anyway).
	staleSessionEvery = 5 * time.Second
	// refusedFor is how long an initiation from a key that is not a
	// peer makes SetPeers probe that key once it becomes one (the sender
	// resends it for a few seconds, see resendInit).
	refusedFor = 10 * time.Second
	// maxIndicesPerPeer is how many of our recent handshake sender
	// indices are remembered per peer.
	maxIndicesPerPeer = 4
	// socketBuffer is the UDP socket buffer size asked for.
	socketBuffer = 7 << 20
)

// Options configures a Bind.
type Options struct {
	// PrivateKey is the node key; required. The bind uses it to read the
	// initiator's identity from handshake initiations from new addresses.
	PrivateKey key.NodePrivate
	// Logger receives the bind's logs. Nil discards them.
	Logger *slog.Logger
	// ListenAddr4 and ListenAddr6 are the addresses the UDP sockets bind
	// to. Invalid (zero) means all addresses of that family.
	ListenAddr4, ListenAddr6 netip.Addr
	// Relay is the relay (DERP) path. Nil means peers are reached over
	// direct UDP only.
	Relay Relay
	// AttributionRate caps how many handshake initiations per second from
	// unknown addresses the bind decrypts to learn who sent them (each
	// costs an X25519 operation). Above it such initiations go to
	// wireguard-go unattributed, where its cookie mechanism applies. Zero
	// means 50.
	AttributionRate float64
	// DiscoKey is the node's disco key, which seals path discovery
	// messages (see package disco). Zero turns disco off: paths are then
	// learned only from WireGuard traffic.
	DiscoKey key.DiscoPrivate
	// OnSTUN, if set, receives the STUN messages that arrive on the UDP
	// sockets (answers to Binding requests sent with WriteTo). It runs on
	// a receive goroutine: it must be quick and must not keep pkt.
	OnSTUN func(pkt []byte, src netip.AddrPort)
	// OnStaleSession, if set, is called when a peer sends transport data
	// naming a receiver index this bind never handed out: a session the
	// peer keeps with an earlier process of this node, which this one
	// cannot decrypt. The caller starts a handshake, so the peer moves to
	// a new session at once instead of after WireGuard's 15 s without an
	// answer, and its connections to the old process learn they are gone
	// (the new stack resets them). It runs on a receive goroutine, must
	// not block, and is called at most once per staleSessionEvery per peer.
	OnStaleSession func(peer key.NodePublic)
	// WakePeer, if set, makes peers lazily configured: each peer starts
	// asleep (not configured in wireguard-go), and before a WireGuard
	// datagram of an asleep peer goes to wireguard-go, the receive
	// goroutine calls WakePeer with its key; WakePeer configures the
	// peer in wireguard-go and marks it awake (SetAwake) before it
	// returns, so even the handshake initiation that woke it is
	// accepted. It must not call into the bind's receive path and must
	// return promptly once the device is closing. Nil: every peer is
	// awake.
	WakePeer func(peer key.NodePublic)
	// RelayOnly makes the bind reach peers through the relay alone: it
	// sends them nothing over UDP (no WireGuard, no disco) and ignores
	// what they send it over UDP, as if a firewall dropped it. STUN still
	// works. A debugging and benchmarking aid (netstack's
	// BEAM_DEBUG_ALWAYS_RELAY); without a Relay, peers are unreachable.
	RelayOnly bool
	// FromHostForward, if not nil, reports whether src, a loopback source
	// address, is the host side of a flow the engine forwards from a peer
	// to the host's loopback. The bind drops such datagrams: a peer must
	// not reach the node's own socket through the node's forwarder. Nil
	// drops none.
	FromHostForward func(src netip.AddrPort) bool
	// Inbound, if set, counts the transport data packets the bind hands
	// wireguard-go (released when they reach the TUN); a receive waits
	// while it is full, leaving datagrams in the socket's buffer rather
	// than in wireguard-go's 64 KiB buffers (see package inflight).
	Inbound *inflight.Window
	// Outbound, if set, is released by the transport data packets sent
	// (counted when wireguard-go read them from the TUN).
	Outbound *inflight.Window
	// RelayServer, if set, is this node's peer relay server: peers'
	// disco Allocate requests for a session with another of our peers
	// are served by it (peerrelay.go). Nil: requests are ignored.
	RelayServer RelayServer
}

// PeerConfig is one peer the bind may send to.
type PeerConfig struct {
	// Key is the peer's public key.
	Key key.NodePublic
	// Endpoints are the peer's candidate UDP addresses.
	Endpoints []netip.AddrPort
	// HomeRegion is the peer's home relay region; 0 means none.
	HomeRegion int
	// DiscoKey is the peer's disco key; zero if unknown (then the peer
	// is never pinged and its disco messages are dropped).
	DiscoKey key.DiscoPublic
	// RelayServer: the peer offers a peer relay server, which may relay
	// between us and peers we have no direct path to.
	RelayServer bool
}

// Bind is the magic bind. Create it with New; it is safe for concurrent
// use, as conn.Bind requires.
type Bind struct {
	log     *slog.Logger
	opener  *initiationOpener
	limiter *rate.Limiter
	opts    Options

	// addrs maps a source address to its endpoint (addrtable.go). Its
	// parts are replaced whole (copy on write) under mu, and read
	// without locks on receive.
	addrs addrTable

	// sendPool holds *sendBatch values for Send.
	sendPool sync.Pool
	// rs is the relay path; rs.relay is nil without one.
	rs relayState
	// disco is the path discovery state.
	disco discoState
	// pr is the peer relay state (peerrelay.go).
	pr prState
	// lastSend is when Send last sent to a peer (unix nanos).
	lastSend atomic.Int64
	// oversized counts datagrams dropped because, split from a UDP_GRO
	// message, they were larger than wireguard-go's receive buffer;
	// oversizedLog is when that was last logged (unix nanos).
	oversized, oversizedLog atomic.Int64
	// testFilter, set only by tests, drops UDP datagrams to or from
	// addresses it refuses.
	testFilter atomic.Pointer[func(remote netip.AddrPort) bool]

	mu      sync.Mutex // guards the following fields
	peers   map[key.NodePublic]*peerEntry
	byDisco map[key.DiscoPublic]*peerEntry
	toProbe []*peer // new peers for ProbeNew
	indices map[uint32]*peer
	anon    map[netip.AddrPort]*Endpoint
	// refused maps keys that sent an initiation before they were peers
	// to when (unix nanos), so SetPeers probes them when they become
	// peers, asleep or not.
	refused map[key.NodePublic]int64
	v4, v6  *udpSocket
	port    uint16
	// relayClosed is closed by Close to stop the relay ReceiveFunc of
	// the current Open; nil while closed or without a relay.
	relayClosed chan struct{}

	// hardNAT is our public IPv4 address when our NAT maps each
	// destination to another port (see SetHardNAT); invalid otherwise.
	hardNAT atomic.Pointer[netip.Addr]
	// bwg counts the goroutines of birthday probing (socket readers,
	// probe senders); Close waits for them.
	bwg sync.WaitGroup
	// bmu guards bopen, bstop, sprayedIPs and every peer's bday.
	bmu        sync.Mutex
	bopen      bool                 // the bind is open: birthday probing may start
	bstop      chan struct{}        // closed by Close to stop probe senders
	sprayedIPs map[netip.Addr]int64 // when each IP was last sprayed, whichever peer named it
}

// peerEntry is the part of a peer's state guarded by Bind.mu.
type peerEntry struct {
	p       *peer
	eps     map[netip.AddrPort]*Endpoint // candidate and learned endpoints
	learned []netip.AddrPort             // learned addresses, oldest first
	cmm     []netip.AddrPort             // addresses from the peer's last call-me-maybe
	indices []uint32                     // our recent sender indices, oldest first
}

type batchConn interface {
	ReadBatch(ms []ipv6.Message, flags int) (int, error)
	WriteBatch(ms []ipv6.Message, flags int) (int, error)
}

// udpSocket is one open UDP socket of the bind.
type udpSocket struct {
	conn *net.UDPConn
	pc   batchConn
	gso  atomic.Bool // kernel UDP segmentation offload usable
	// gro is whether the kernel accepted UDP_GRO (generic receive
	// offload) for the socket; the receiver then splits what it reads.
	gro bool
	// closed is set by Close before the socket is closed.
	closed atomic.Bool
}

func newUDPSocket(c *net.UDPConn, pc batchConn) *udpSocket {
	s := &udpSocket{conn: c, pc: pc}
	s.gso.Store(udpoffload.SupportsGSO(c))
	s.gro = udpoffload.EnableGRO(c)
	return s
}

// sendBatch is the reusable state of one Send call.
type sendBatch struct {
	msgs []ipv6.Message
	ua   net.UDPAddr
	ip   [16]byte
}

// grow adds a message to sb.
func (sb *sendBatch) grow() {
	sb.msgs = append(sb.msgs, ipv6.Message{
		Buffers: make(net.Buffers, 0, maxGSOSegments),
		OOB:     make([]byte, 0, udpoffload.GSOControlSize),
	})
}

var _ conn.Bind = (*Bind)(nil)

// New returns a closed bind; wireguard-go opens it.
func New(opts Options) (*Bind, error) {
	if opts.PrivateKey.IsZero() {
		return nil, errors.New("bind: PrivateKey is required")
	}
	if opts.AttributionRate == 0 {
		opts.AttributionRate = 50
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	b := &Bind{
		log:     log,
		opener:  newInitiationOpener(opts.PrivateKey.Raw32(), opts.PrivateKey.Public().Raw32()),
		limiter: rate.NewLimiter(rate.Limit(opts.AttributionRate), int(opts.AttributionRate)+1),
		opts:    opts,
		peers:   make(map[key.NodePublic]*peerEntry),
		byDisco: make(map[key.DiscoPublic]*peerEntry),
		indices: make(map[uint32]*peer),
		anon:    make(map[netip.AddrPort]*Endpoint),
		refused: make(map[key.NodePublic]int64),
	}
	if opts.Relay != nil {
		b.rs.relay = opts.Relay
		b.rs.queue = make(chan relayed, relayQueueLen)
		b.rs.bufs.New = func() any {
			buf := make([]byte, 0, relayBuf)
			return &buf
		}
	}
	b.sendPool.New = func() any {
		sb := &sendBatch{}
		for range batchSize {
			sb.grow()
		}
		return sb
	}
	noSessions := make(map[uint32]*prSession)
	b.pr.sessions.Store(&noSessions)
	b.pr.bufs.New = func() any {
		buf := make([]byte, 0, relayBuf)
		return &buf
	}
	b.disco.pending = make(map[[12]byte]*pendingPing)
	b.disco.nodeKey = opts.PrivateKey.Public()
	if !opts.DiscoKey.IsZero() {
		b.disco.on = true
		b.disco.priv = opts.DiscoKey
		b.disco.pub = opts.DiscoKey.Public()
	}
	return b, nil
}

// SetPeers makes peers exactly the bind's peer table. Peers that stay keep
// their endpoints and confirmed address; removed peers stop being
// reachable and their datagrams are dropped. New peers with a disco key,
// and peers whose disco key changed, are probed by the next ProbeNew if
// they are awake (see SetAwake) or recently sent an initiation the bind
// could not attribute. Its cost grows with the whole table; UpdatePeers
// changes a few peers for the cost of those.
func (b *Bind) SetPeers(peers []PeerConfig) {
	b.mu.Lock()
	defer b.mu.Unlock()
	want := make(map[key.NodePublic]bool, len(peers))
	for _, pc := range peers {
		want[pc.Key] = true
	}
	for k, pe := range b.peers {
		if !want[k] {
			b.removePeerLocked(pe)
		}
	}
	for _, pc := range peers {
		b.setPeerLocked(pc)
	}
	b.rebuildLocked()
	b.rebuildSessionsLocked()
	b.peerRelayPeersChangedLocked()
}

// UpdatePeers changes the named peers and no other: each of set is added
// or updated as SetPeers would, and each of remove leaves the table (an
// unknown key is ignored). Its cost is that of the peers named plus one
// copy of the address table, so one peer's change in a netmap of
// thousands does not walk the thousands.
func (b *Bind) UpdatePeers(set []PeerConfig, remove []key.NodePublic) {
	b.mu.Lock()
	var ed tableEdit
	sessions := false // the peer relay session table may have changed
	for _, k := range remove {
		if pe := b.peers[k]; pe != nil {
			ed.drop(pe)
			b.removePeerLocked(pe)
			sessions = true
		}
	}
	var homed []*peer // peers whose relay region just became known
	for _, pc := range set {
		home := int32(0)
		if pe := b.peers[pc.Key]; pe != nil {
			ed.drop(pe)
			sessions = sessions || pe.p.relayServer.Load() != pc.RelayServer
			home = pe.p.home.Load()
		}
		pe := b.setPeerLocked(pc)
		ed.keep(pe)
		if home == 0 && pc.HomeRegion != 0 {
			homed = append(homed, pe.p)
		}
	}
	b.patchLocked(&ed)
	if sessions {
		b.rebuildSessionsLocked()
	}
	b.peerRelayPeersChangedLocked()
	b.mu.Unlock()
	// An initiation sent while the peer's region was unknown reached it
	// only if a direct address did (behind a hard NAT, none does): send
	// it through the region now rather than after WireGuard's retry.
	now := time.Now().UnixNano()
	for _, p := range homed {
		b.resendInit(p, now)
	}
}

// removePeerLocked takes pe out of the peer table (but not the address
// table: the caller rebuilds or patches it).
func (b *Bind) removePeerLocked(pe *peerEntry) {
	pe.p.removed.Store(true)
	b.dropPeerSocksLocked(pe.p)
	for _, idx := range pe.indices {
		delete(b.indices, idx)
	}
	if dp := pe.p.disco.Load(); dp != nil && b.byDisco[dp.key] == pe {
		delete(b.byDisco, dp.key)
	}
	delete(b.peers, pe.p.key)
}

// maxPeerEndpoints bounds the candidate endpoints kept (and probed) of
// one peer: the coordinator keeps at most 64 of a node's endpoints
// (wire.MaxEndpoints), and a peer's candidates are bounded here again so
// that an old or hostile coordinator cannot make the bind hold and ping
// thousands.
const maxPeerEndpoints = 64

// setPeerLocked adds pc to the peer table or updates its entry, and
// returns the entry; the caller rebuilds or patches the address table. A
// new peer starts asleep when Options.WakePeer is set.
func (b *Bind) setPeerLocked(pc PeerConfig) *peerEntry {
	k := pc.Key
	pe := b.peers[k]
	if pe == nil {
		p := &peer{key: k}
		p.canonical = newEndpoint(p, netip.AddrPort{})
		p.asleep.Store(b.opts.WakePeer != nil)
		pe = &peerEntry{p: p, eps: make(map[netip.AddrPort]*Endpoint)}
		b.peers[k] = pe
	}
	n := min(len(pc.Endpoints), maxPeerEndpoints)
	cands := make([]netip.AddrPort, 0, n)
	seen := make(map[netip.AddrPort]bool, n)
	for _, ap := range pc.Endpoints {
		if len(cands) == maxPeerEndpoints {
			break
		}
		ap = unmap(ap)
		if !ap.IsValid() || ap.Port() == 0 || ap.Addr().IsUnspecified() || ap.Addr().IsMulticast() || seen[ap] {
			continue
		}
		seen[ap] = true
		cands = append(cands, ap)
		if pe.eps[ap] == nil {
			pe.eps[ap] = newEndpoint(pe.p, ap)
		}
	}
	// Forget endpoints that are neither candidates nor learned.
	for ap, e := range pe.eps {
		if !seen[ap] && !contains(pe.learned, ap) && !contains(pe.cmm, ap) && !e.isRelay() {
			delete(pe.eps, ap)
		}
	}
	oldCands := pe.p.candidates.Load()
	pe.p.candidates.Store(&cands)
	pe.p.home.Store(int32(pc.HomeRegion))
	pe.p.relayServer.Store(pc.RelayServer)
	probe := false
	old := pe.p.disco.Load()
	switch {
	case pc.DiscoKey.IsZero():
		pe.p.disco.Store(nil)
	case b.disco.on && (old == nil || old.key != pc.DiscoKey):
		pe.p.disco.Store(b.newDiscoPeer(pc.DiscoKey))
		probe = true
	case old != nil && (oldCands == nil || !slices.Equal(*oldCands, cands)):
		// New addresses (the peer's STUN mapping arrived, or it
		// moved): try them now rather than at the next probe.
		probe = true
	}
	if old != nil && b.byDisco[old.key] == pe {
		delete(b.byDisco, old.key)
	}
	if dp := pe.p.disco.Load(); dp != nil {
		b.byDisco[dp.key] = pe
	}
	// A peer asleep has nothing to find a path for until traffic wakes
	// it, unless it tried to reach us before we knew it: then it waits
	// for a sign that we are up (see resendInit).
	if probe && (!pe.p.asleep.Load() || b.refusedLocked(k)) {
		b.toProbe = append(b.toProbe, pe.p)
	}
	return pe
}

// SetAwake marks peer k awake (configured in wireguard-go, which can take
// its datagrams) or asleep (not configured: its next WireGuard datagram
// goes to Options.WakePeer first). Unknown keys are ignored.
func (b *Bind) SetAwake(k key.NodePublic, awake bool) {
	b.mu.Lock()
	pe := b.peers[k]
	b.mu.Unlock()
	if pe != nil {
		pe.p.asleep.Store(!awake)
		if !awake {
			// wireguard-go forgot the peer and its session.
			pe.p.lastHandshake.Store(0)
			pe.p.lastRespSent.Store(0)
			pe.p.lastRespRecv.Store(0)
		}
	}
}

// LastActive returns when a WireGuard packet last went to or came from
// peer k (unix nanoseconds), or 0 if never or k is unknown.
func (b *Bind) LastActive(k key.NodePublic) int64 {
	b.mu.Lock()
	pe := b.peers[k]
	b.mu.Unlock()
	if pe == nil {
		return 0
	}
	return max(pe.p.lastSend.Load(), pe.p.lastWGRecv.Load())
}

// Session returns what the bind saw of wireguard-go's session with peer
// k (unix nanoseconds, 0 for never or an unknown k): when a handshake
// last completed (a response from the peer arrived, or a transport
// message after wireguard-go sent one; forgotten when the peer goes to
// sleep, see SetAwake), and when wireguard-go last sent the peer a
// transport message, which it does only with a session.
func (b *Bind) Session(k key.NodePublic) (handshake, dataSent int64) {
	b.mu.Lock()
	pe := b.peers[k]
	b.mu.Unlock()
	if pe == nil {
		return 0, 0
	}
	return pe.p.lastHandshake.Load(), pe.p.lastData.Load()
}

// noteHandshake records, for a WireGuard datagram pkt that came from p,
// a handshake that completed (see Session): a transport message after
// wireguard-go sent a response. A response that arrives is only noted
// (lastRespRecv): anyone can send one from the peer's address, and the
// bind cannot check it; noteSent takes the handshake as complete once
// wireguard-go, which did check it, sends a transport message after it.
func noteHandshake(p *peer, pkt []byte, now int64) {
	switch {
	case len(pkt) == responseSize && binary.LittleEndian.Uint32(pkt) == msgResponse:
		p.lastRespRecv.Store(now)
	case len(pkt) >= minTransportSize && binary.LittleEndian.Uint32(pkt) == msgTransport:
		if rs := p.lastRespSent.Load(); rs > p.lastHandshake.Load() {
			p.lastHandshake.Store(rs)
		}
	}
}

// noteSent records what wireguard-go's datagram first to p says of its
// session with p (see Session): a transport message means a session
// (lastData), and, after a response from p arrived, that wireguard-go
// accepted it (an initiator sends its first transport message, data or
// a keepalive, as soon as the handshake completes).
func noteSent(p *peer, first []byte, now int64) {
	switch {
	case len(first) >= minTransportSize && binary.LittleEndian.Uint32(first) == msgTransport:
		p.lastData.Store(now)
		if rr := p.lastRespRecv.Load(); rr > p.lastHandshake.Load() {
			p.lastHandshake.Store(rr)
		}
	case len(first) == responseSize && binary.LittleEndian.Uint32(first) == msgResponse:
		p.lastRespSent.Store(now)
	}
}

// wake hands p to Options.WakePeer if it is asleep, before one of its
// datagrams goes to wireguard-go. It runs on a receive goroutine.
func (b *Bind) wake(p *peer) {
	if p.asleep.Load() && !p.removed.Load() && b.opts.WakePeer != nil {
		b.opts.WakePeer(p.key)
	}
}

// refusedLocked reports whether k sent a handshake initiation the bind
// dropped because k was not a peer, within refusedFor.
func (b *Bind) refusedLocked(k key.NodePublic) bool {
	at, ok := b.refused[k]
	return ok && time.Now().UnixNano()-at <= int64(refusedFor)
}

// noteRefusedLocked records that k sent an initiation before it was a
// peer, keeping at most maxAnon such keys.
func (b *Bind) noteRefusedLocked(k key.NodePublic, now int64) {
	if len(b.refused) >= maxAnon {
		for rk, at := range b.refused {
			if now-at > int64(refusedFor) {
				delete(b.refused, rk)
			}
		}
		if len(b.refused) >= maxAnon {
			clear(b.refused)
		}
	}
	b.refused[k] = now
}

// ProbeNew probes the peers SetPeers added (or gave a new disco key):
// pings to their addresses and a call-me-maybe through the relay. That
// finds a direct path early, and tells a peer that sent us a handshake
// before it knew us that we are up now (see resendInit), so the caller
// must have configured the peers in wireguard-go first.
func (b *Bind) ProbeNew() {
	b.mu.Lock()
	ps := b.toProbe
	b.toProbe = nil
	b.mu.Unlock()
	now := time.Now().UnixNano()
	for _, p := range ps {
		b.probe(p, now)
	}
}

// learnLocked records that datagrams from ap belong to pe's peer and
// returns the endpoint for the pair.
func (b *Bind) learnLocked(pe *peerEntry, ap netip.AddrPort) *Endpoint {
	if e := pe.eps[ap]; e != nil {
		return e
	}
	var ed tableEdit
	if len(pe.learned) >= maxLearnedPerPeer {
		old := pe.learned[0]
		pe.learned = pe.learned[1:]
		if best := pe.p.best.Load(); best == nil || best.src != old {
			if e := pe.eps[old]; e != nil && !b.isCandidate(pe.p, old) && !contains(pe.cmm, old) {
				delete(pe.eps, old)
				ed.del = append(ed.del, e)
			}
		}
	}
	pe.learned = append(pe.learned, ap)
	e := newEndpoint(pe.p, ap)
	pe.eps[ap] = e
	delete(b.anon, ap)
	ed.add = append(ed.add, e)
	b.patchLocked(&ed)
	return e
}

func (b *Bind) isCandidate(p *peer, ap netip.AddrPort) bool {
	for _, c := range *p.candidates.Load() {
		if c == ap {
			return true
		}
	}
	return false
}

// PeerPath reports how the bind currently reaches k.
func (b *Bind) PeerPath(k key.NodePublic) PeerPath {
	b.mu.Lock()
	pe := b.peers[k]
	b.mu.Unlock()
	if pe == nil {
		return PeerPath{Path: "none"}
	}
	p := pe.p
	// Report the path the next packet would take. A direct path that is
	// silent only because nothing was sent over it (idle) is still the
	// path: traffic that resumes goes over it (see route).
	now := time.Now().UnixNano()
	direct, region := b.route(p, now, b.idleDirect(p, now), false)
	switch {
	case direct != nil:
		return PeerPath{Endpoint: direct.src, Path: "direct", LastRecv: direct.lastRecv.Load(), Latency: time.Duration(direct.latency.Load())}
	}
	if s, _ := b.peerRelayFor(p, now); s != nil {
		pp := PeerPath{Path: "peer-relay", Via: s.server.key, LastRecv: s.ep.lastRecv.Load(), Latency: time.Duration(s.ep.latency.Load())}
		if ap := s.addr.Load(); ap != nil {
			pp.Endpoint = *ap
		}
		return pp
	}
	switch {
	case region != 0:
		var last int64
		if best := p.best.Load(); best != nil && best.isRelay() {
			last = best.lastRecv.Load()
		}
		return PeerPath{Path: "relay", Region: region, LastRecv: last}
	}
	return PeerPath{Path: "none"}
}

// ParseEndpoint returns the canonical endpoint of the peer whose key is s
// in text form ("nodekey:..."). The peer must have been added with
// SetPeers first.
func (b *Bind) ParseEndpoint(s string) (conn.Endpoint, error) {
	k, err := key.ParseNodePublic(s)
	if err != nil {
		return nil, fmt.Errorf("bind: parse endpoint %q: %w", s, err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	pe := b.peers[k]
	if pe == nil {
		return nil, fmt.Errorf("bind: parse endpoint: unknown peer %s", k.ShortString())
	}
	return pe.p.canonical, nil
}

// LastSend returns when a packet was last sent to a peer; zero if never.
func (b *Bind) LastSend() time.Time {
	if t := b.lastSend.Load(); t != 0 {
		return time.Unix(0, t)
	}
	return time.Time{}
}

// BatchSize returns how many datagrams one ReceiveFunc call or one Send
// may carry.
func (b *Bind) BatchSize() int { return batchSize }

// SetMark does nothing; Beam does not use fwmarks.
func (b *Bind) SetMark(uint32) error { return nil }

// Families reports which of the bind's UDP sockets are open: a host
// without IPv6 (or with it disabled) has only the IPv4 one.
func (b *Bind) Families() (v4, v6 bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.v4 != nil, b.v6 != nil
}

// LocalPort returns the port the bind's sockets are bound to, or 0 when
// closed.
func (b *Bind) LocalPort() uint16 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.port
}

// Open binds an IPv4 and an IPv6 UDP socket on port (0 picks one free for
// both) and returns one ReceiveFunc per socket.
func (b *Bind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.v4 != nil || b.v6 != nil {
		return nil, 0, conn.ErrBindAlreadyOpen
	}
	var (
		v4, v6 *net.UDPConn
		err    error
	)
	for tries := 0; ; tries++ {
		p := port
		v4, p, err = listenUDP("udp4", b.opts.ListenAddr4, p)
		if err != nil && !errors.Is(err, syscall.EAFNOSUPPORT) {
			return nil, 0, fmt.Errorf("bind: listen udp4: %w", err)
		}
		v6, p, err = listenUDP("udp6", b.opts.ListenAddr6, p)
		if err != nil && port == 0 && errors.Is(err, syscall.EADDRINUSE) && tries < 100 {
			if v4 != nil {
				v4.Close()
			}
			continue
		}
		if err != nil && !errors.Is(err, syscall.EAFNOSUPPORT) && !errors.Is(err, syscall.EADDRNOTAVAIL) {
			if v4 != nil {
				v4.Close()
			}
			return nil, 0, fmt.Errorf("bind: listen udp6: %w", err)
		}
		port = p
		break
	}
	var fns []conn.ReceiveFunc
	if v4 != nil {
		b.v4 = newUDPSocket(v4, ipv4PacketConn{ipv4.NewPacketConn(v4)})
		fns = append(fns, b.makeReceiveIPv4(b.v4))
	}
	if v6 != nil {
		b.v6 = newUDPSocket(v6, ipv6.NewPacketConn(v6))
		fns = append(fns, b.makeReceiveIPv6(b.v6))
	}
	if len(fns) == 0 {
		return nil, 0, fmt.Errorf("bind: no UDP socket could be opened: %w", syscall.EAFNOSUPPORT)
	}
	if b.rs.relay != nil {
		b.relayClosed = make(chan struct{})
		fns = append(fns, b.makeReceiveDERP(b.relayClosed))
	}
	b.port = port
	b.bmu.Lock()
	b.bopen = true
	b.bstop = make(chan struct{})
	b.bmu.Unlock()
	return fns, port, nil
}

// ipv4PacketConn adapts ipv4.PacketConn to batchConn (ipv4.Message and
// ipv6.Message are the same type).
type ipv4PacketConn struct{ *ipv4.PacketConn }

func (c ipv4PacketConn) ReadBatch(ms []ipv6.Message, flags int) (int, error) {
	return c.PacketConn.ReadBatch(ms, flags)
}

func (c ipv4PacketConn) WriteBatch(ms []ipv6.Message, flags int) (int, error) {
	return c.PacketConn.WriteBatch(ms, flags)
}

func listenUDP(network string, addr netip.Addr, port uint16) (*net.UDPConn, uint16, error) {
	la := &net.UDPAddr{Port: int(port)}
	if addr.IsValid() {
		la.IP = addr.AsSlice()
	}
	c, err := net.ListenUDP(network, la)
	if err != nil {
		return nil, 0, err
	}
	setSocketBuffers(c, socketBuffer)
	return c, uint16(c.LocalAddr().(*net.UDPAddr).Port), nil
}

// Close closes the sockets; the ReceiveFuncs of the last Open return
// net.ErrClosed from then on. It may be called when already closed.
func (b *Bind) Close() error {
	b.stopBirthdays()
	b.mu.Lock()
	defer b.mu.Unlock()
	var errs []error
	if b.v4 != nil {
		b.v4.closed.Store(true)
		errs = append(errs, b.v4.conn.Close())
		b.v4 = nil
	}
	if b.v6 != nil {
		b.v6.closed.Store(true)
		errs = append(errs, b.v6.conn.Close())
		b.v6 = nil
	}
	if b.relayClosed != nil {
		close(b.relayClosed)
		b.relayClosed = nil
	drain:
		for {
			select {
			case r := <-b.rs.queue:
				b.rs.put(r.buf)
			default:
				break drain
			}
		}
	}
	b.port = 0
	return errors.Join(errs...)
}

func (b *Bind) makeReceiveIPv4(s *udpSocket) conn.ReceiveFunc { return b.makeReceive(s) }
func (b *Bind) makeReceiveIPv6(s *udpSocket) conn.ReceiveFunc { return b.makeReceive(s) }

// receiver reads batches of datagrams from one socket; rx_linux.go has
// the recvmmsg(2) one.
type receiver interface {
	// read fills bufs and returns how many datagrams arrived.
	read(bufs [][]byte) (int, error)
	// size and addr describe datagram i of the last read.
	size(i int) int
	addr(i int) netip.AddrPort
	// oversized reports how many datagrams of the last read were
	// dropped because, split from a UDP_GRO message, they did not fit
	// their buffer, and the size of the last of them.
	oversized() (count, size int)
}

// makeReceive returns the ReceiveFunc for s. wireguard-go calls each
// ReceiveFunc from a single goroutine, so its receiver is reused without
// locking.
func (b *Bind) makeReceive(s *udpSocket) conn.ReceiveFunc {
	r, err := newReceiver(s, batchSize)
	if err != nil {
		return func([][]byte, []int, []conn.Endpoint) (int, error) {
			return 0, fmt.Errorf("bind: receive: %w", err)
		}
	}
	wait := b.opts.Inbound.NewWaiter()
	return func(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		wait.Wait()
		got, err := r.read(bufs)
		if err != nil {
			return 0, err
		}
		data := 0
		if c, size := r.oversized(); c > 0 {
			b.noteOversized(c, size, len(bufs[0]))
		}
		now := time.Now().UnixNano()
		for i := 0; i < got; i++ {
			sizes[i] = 0
			eps[i] = nil
			n := r.size(i)
			src := unmap(r.addr(i))
			if n == 0 || !src.IsValid() {
				continue
			}
			if b.fromHostForward(src) {
				continue
			}
			pkt := bufs[i][:n]
			if f := b.testFilter.Load(); f != nil && !(*f)(src) {
				continue
			}
			if b.opts.RelayOnly && !isSTUNResponse(pkt) {
				continue
			}
			if udprelay.IsPacket(pkt) {
				if e, m := b.handlePeerRelay(src, pkt, now); e != nil {
					sizes[i], eps[i] = m, e
					if isData(pkt[:m]) {
						data++
					}
				}
				continue
			}
			if disco.IsPacket(pkt) {
				b.handleDisco(src, 0, key.NodePublic{}, pkt, nil)
				continue
			}
			if isSTUNResponse(pkt) {
				if b.opts.OnSTUN != nil {
					b.opts.OnSTUN(pkt, src)
				}
				continue
			}
			e := b.endpointFor(src, pkt)
			if e == nil {
				continue
			}
			e.lastRecv.Store(now)
			if p := e.peer; p != nil {
				if !b.admitHandshake(p, e, pkt, now) {
					continue
				}
				b.wake(p)
				p.lastWGRecv.Store(now)
				p.traffic.received(pathDirect, n)
				b.noteTransport(p, pkt, now)
				// WireGuard arriving over the direct path in use proves
				// it both ways (a pong proved the other way): stop
				// copying packets to the relay.
				if p.dualUntil.Load() != 0 && p.best.Load() == e {
					p.dualUntil.Store(0)
				}
			}
			sizes[i] = n
			eps[i] = e
			if isData(pkt) {
				data++
			}
		}
		b.opts.Inbound.Add(data)
		return got, nil
	}
}

// fromHostForward reports whether a datagram from src must be dropped:
// src is on loopback and the engine forwards a peer's flow from it
// (Options.FromHostForward).
func (b *Bind) fromHostForward(src netip.AddrPort) bool {
	return src.Addr().IsLoopback() && b.opts.FromHostForward != nil && b.opts.FromHostForward(src)
}

// isData reports whether pkt is WireGuard transport data carrying a packet
// (a keepalive is a bare header and tag).
func isData(pkt []byte) bool {
	return len(pkt) > minTransportSize && pkt[0] == msgTransport
}

// dataPackets counts the packets of bufs that isData.
func dataPackets(bufs [][]byte) int {
	n := 0
	for _, b := range bufs {
		if isData(b) {
			n++
		}
	}
	return n
}

// oversizedLogEvery is how often at most the bind logs datagrams dropped
// as larger than the receive buffer.
const oversizedLogEvery = time.Minute

// noteOversized counts count datagrams dropped as larger (the last size
// bytes) than the receive buffer (buf bytes) and logs it: the first time
// at once, then at most once per oversizedLogEvery.
func (b *Bind) noteOversized(count, size, buf int) {
	total := b.oversized.Add(int64(count))
	now := time.Now().UnixNano()
	last := b.oversizedLog.Load()
	if last != 0 && now-last < int64(oversizedLogEvery) || !b.oversizedLog.CompareAndSwap(last, now) {
		return
	}
	b.log.Warn("dropped UDP datagrams larger than the receive buffer after GRO splitting", "dropped_total", total, "size", size, "buffer", buf)
}

// OversizedDrops returns how many received UDP datagrams were dropped
// because, split from a UDP_GRO message, they were larger than the
// receive buffer.
func (b *Bind) OversizedDrops() int64 { return b.oversized.Load() }

// endpointFor ties a received datagram to an endpoint, or returns nil to
// drop it.
func (b *Bind) endpointFor(src netip.AddrPort, pkt []byte) *Endpoint {
	kind, receiver := classify(pkt)
	if kind == kindGarbage {
		return nil
	}
	if e := b.addrs.lookup(src); e != nil {
		return e
	}
	// A source we have not seen: find out whom it claims to be.
	switch kind {
	case kindReceiver:
		b.mu.Lock()
		defer b.mu.Unlock()
		if p := b.indices[receiver]; p != nil && !p.removed.Load() {
			return b.learnLocked(b.peers[p.key], src)
		}
		return b.anon[src]
	case kindInitiation:
		if !b.limiter.Allow() {
			return b.anonEndpoint(src)
		}
		static, ok := b.opener.open(pkt)
		if !ok {
			return nil
		}
		b.mu.Lock()
		defer b.mu.Unlock()
		k := key.NodePublicFromRaw32(static)
		if pe := b.peers[k]; pe != nil {
			return b.learnLocked(pe, src)
		}
		b.noteRefusedLocked(k, time.Now().UnixNano())
		return nil
	}
	return nil
}

// anonEndpoint returns an endpoint for a source no peer is tied to, so
// wireguard-go can judge the datagram itself.
func (b *Bind) anonEndpoint(src netip.AddrPort) *Endpoint {
	b.mu.Lock()
	defer b.mu.Unlock()
	if e := b.anon[src]; e != nil {
		return e
	}
	e := newEndpoint(nil, src)
	if len(b.anon) < maxAnon {
		b.anon[src] = e
	}
	return e
}

// Send sends bufs to the peer ep stands for, over the peer's current path.
func (b *Bind) Send(bufs [][]byte, ep conn.Endpoint) error {
	e, ok := ep.(*Endpoint)
	if !ok {
		return conn.ErrWrongEndpointType
	}
	if len(bufs) == 0 {
		return nil
	}
	// wireguard-go returns the packets' buffers to its pool once Send
	// returns.
	defer b.opts.Outbound.Done(dataPackets(bufs))
	p := e.peer
	first := bufs[0]
	// Cookie replies answer one datagram's source, whoever it claims to
	// be, and prove nothing about the peer: send them back where the
	// datagram came from and learn nothing.
	if p == nil || (len(first) == cookieReplySize && first[0] == msgCookie) {
		return b.sendBack(p, e, bufs)
	}
	if p.removed.Load() {
		return net.ErrClosed
	}
	p.noteResponse(first, e)
	// wireguard-go switched this peer to an endpoint with a new source:
	// it authenticated a packet from there, so that path is now best,
	// except that a relayed packet does not displace a direct address
	// that is still fresh, nor an IPv4 one a fresh IPv6 path (keepFor;
	// lastSendEp stays, so the switch happens once best goes stale).
	now := time.Now().UnixNano()
	if e.src.IsValid() && !e.isPeerRelay() && p.lastSendEp.Load() != e {
		if best := p.best.Load(); !keepFor(best, e, now) {
			p.lastSendEp.Store(e)
			if !e.isRelay() || best == nil || best.isRelay() || !fresh(best, now) {
				p.best.Store(e)
			}
		}
	}
	if idx, ok := senderIndex(first); ok {
		b.rememberIndex(p, idx)
	}
	best := p.best.Load()
	home := int(p.home.Load())
	idle := now-p.lastSend.Swap(now) > int64(staleAfter)
	b.lastSend.Store(now)
	noteSent(p, first, now)
	if isInitiation(first) {
		p.noteInitiation(first, now)
		if best == nil || best.isRelay() || !fresh(best, now) {
			p.traffic.sending(first, false, false)
			if p.disco.Load() != nil {
				b.maybeProbe(p, now, relayProbeEvery)
				b.maybeAllocate(p, now)
			}
			return b.spray(bufs, p, best, home)
		}
	}
	direct, region := b.route(p, now, idle, true)
	// A usable peer relay session carries what the relay region would:
	// alone, or with a copy through the region while it is quiet.
	var via *prSession
	if region != 0 || direct == nil {
		var withRelay bool
		if via, withRelay = b.peerRelayFor(p, now); via != nil && !withRelay {
			region = 0
		}
	}
	p.traffic.sendingVia(first, direct != nil, via != nil, region != 0)
	if p.disco.Load() != nil {
		switch {
		case direct != nil && fresh(direct, now):
			b.maybeHeartbeat(p, direct, now)
			every := directProbeEvery
			if quiet(p, direct, now) {
				// Look for another path before this one goes stale.
				every = relayProbeEvery
			}
			b.maybeProbe(p, now, every)
		case b.wantBirthday(p, now):
			// Behind a hard NAT: probe at once, opening ports for
			// birthday probing (birthday.go).
			if direct != nil {
				b.maybeHeartbeat(p, direct, now)
			}
			b.maybeProbe(p, now, birthdayProbeAfter)
		case direct != nil:
			// Stale but still in use (resuming after idle, or no
			// relay): check it now.
			b.maybeHeartbeat(p, direct, now)
			b.maybeProbe(p, now, relayProbeEvery)
		default:
			b.maybeProbe(p, now, relayProbeEvery)
		}
		if direct == nil || !fresh(direct, now) {
			b.maybeAllocate(p, now)
		}
		b.maybePingSession(p, now)
	}
	if via != nil {
		err := b.sendPeerRelay(via, bufs)
		if direct != nil {
			if derr := b.sendEp(p, bufs, direct); derr == nil {
				err = nil
			}
		}
		if region != 0 {
			if rerr := b.sendRelay(bufs, p, region); rerr == nil {
				err = nil
			}
		}
		return err
	}
	switch {
	case direct != nil && region != 0:
		err := b.sendEp(p, bufs, direct)
		if rerr := b.sendRelay(bufs, p, region); err != nil {
			return rerr
		}
		return nil
	case direct != nil:
		return b.sendEp(p, bufs, direct)
	case region != 0:
		return b.sendRelay(bufs, p, region)
	}
	cands := *p.candidates.Load()
	if len(cands) == 0 {
		return fmt.Errorf("bind: no path to peer %s", p.key.ShortString())
	}
	return b.sendDirect(p, bufs, cands[0])
}

// sendBack sends bufs back the way a datagram that arrived over e came: to
// e's address (from e's extra socket, if it has one), through e's relay
// region, or through p's peer relay session. p is e's peer, nil for a
// source no peer is tied to.
func (b *Bind) sendBack(p *peer, e *Endpoint, bufs [][]byte) error {
	if e.isPeerRelay() && p != nil {
		if s := p.pr.Load(); s != nil {
			return b.sendPeerRelay(s, bufs)
		}
		return errNoRelay
	}
	if e.isRelay() && p != nil {
		return b.sendRelay(bufs, p, int(e.src.Port()))
	}
	if !e.src.IsValid() {
		return errors.New("bind: endpoint without address")
	}
	if e.sock != nil {
		return b.sendExtra(e.sock, bufs, e.src)
	}
	return b.sendTo(bufs, e.src)
}

// route decides where packets to p go now: to a direct endpoint, through
// a relay region, or both (direct non-nil and region non-zero).
//
//   - A direct path that answered within suspectAfter carries the traffic
//     alone, except during dualWindow after it was confirmed, when the
//     relay carries a copy too.
//   - A direct path silent for longer, up to staleAfter, may have died:
//     both carry the traffic while heartbeat pings check it.
//   - A direct path silent for longer than staleAfter (it stopped
//     answering) gives way to the relay while pings check it; if the peer
//     was idle (resumed is true), the silence proves nothing, so both
//     carry the traffic for dualWindow (from now, if commit is true).
//   - Without a direct path, the relay; without a relay, the direct
//     address even if stale.
func (b *Bind) route(p *peer, now int64, resumed, commit bool) (direct *Endpoint, region int) {
	best := p.best.Load()
	region = b.relayRegionFor(p)
	if best == nil || best.isRelay() {
		return nil, region
	}
	if region == 0 {
		return best, 0
	}
	switch silence := now - best.lastRecv.Load(); {
	case silence <= int64(suspectAfter):
		if now < p.dualUntil.Load() {
			return best, region
		}
		return best, 0
	case silence <= int64(staleAfter):
		// Quiet while we send: the path may have died. The relay
		// carries a copy until it answers again (heartbeat pings
		// check it) or is declared stale.
		return best, region
	}
	if resumed {
		if commit {
			p.dualUntil.Store(now + int64(dualWindow))
		}
		return best, region
	}
	if now < p.dualUntil.Load() {
		return best, region
	}
	return nil, region
}

// idleDirect reports whether p's direct path is silent only because
// nothing asked it to speak: wireguard-go sent p nothing for staleAfter,
// and no ping to the path went unanswered for longer than suspectAfter.
// Such a path is still p's path (its NAT mappings may have lapsed, which
// the pings that go with resumed traffic find out and repair).
func (b *Bind) idleDirect(p *peer, now int64) bool {
	best := p.best.Load()
	if best == nil || best.isRelay() || now-p.lastSend.Load() <= int64(staleAfter) {
		return false
	}
	tried := p.lastDirectPing.Load()
	return tried <= best.lastRecv.Load() || now-tried <= int64(suspectAfter)
}

// isSTUNResponse reports whether pkt is a STUN Binding response. Its
// first two bytes (0x01 0x01 for success, 0x01 0x11 for error) never
// start a WireGuard message, whose second byte is zero.
func isSTUNResponse(pkt []byte) bool {
	return len(pkt) >= 20 && pkt[0] == 0x01 && (pkt[1] == 0x01 || pkt[1] == 0x11) &&
		pkt[4] == 0x21 && pkt[5] == 0x12 && pkt[6] == 0xa4 && pkt[7] == 0x42
}

// fresh reports whether a packet arrived over e within staleAfter.
func fresh(e *Endpoint, now int64) bool {
	return now-e.lastRecv.Load() <= int64(staleAfter)
}

// relayRegion is the region to relay through: the peer's home region if
// known, else the one its packets came through.
func relayRegion(e *Endpoint, home int) int {
	if home != 0 {
		return home
	}
	return int(e.src.Port())
}

// spray sends bufs to every path of p: its best address, every candidate
// address and its home relay. It succeeds if any send does.
func (b *Bind) spray(bufs [][]byte, p *peer, best *Endpoint, home int) error {
	var errs []error
	sent := false
	note := func(err error) {
		if err != nil {
			errs = append(errs, err)
		} else {
			sent = true
		}
	}
	if best != nil && !best.isRelay() {
		note(b.sendEp(p, bufs, best))
	}
	for _, ap := range *p.candidates.Load() {
		if best != nil && ap == best.src {
			continue
		}
		note(b.sendDirect(p, bufs, ap))
	}
	if b.rs.relay != nil && (home != 0 || (best != nil && best.isRelay())) {
		note(b.sendRelay(bufs, p, relayRegion(best, home)))
	}
	if s := p.pr.Load(); s != nil && s.addr.Load() != nil {
		note(b.sendPeerRelay(s, bufs))
	}
	if sent {
		return nil
	}
	if len(errs) == 0 {
		return fmt.Errorf("bind: no path to peer %s", p.key.ShortString())
	}
	return errors.Join(errs...)
}

// noteTransport reports p to Options.OnStaleSession if pkt is transport
// data naming a receiver index that is not one of ours for p.
func (b *Bind) noteTransport(p *peer, pkt []byte, now int64) {
	noteHandshake(p, pkt, now)
	if b.opts.OnStaleSession == nil || len(pkt) < minTransportSize || binary.LittleEndian.Uint32(pkt) != msgTransport {
		return
	}
	idx := binary.LittleEndian.Uint32(pkt[4:8])
	if idx == p.sessionIdx.Load() {
		return
	}
	last := p.lastStale.Load()
	if last != 0 && now-last < int64(staleSessionEvery) {
		return
	}
	b.mu.Lock()
	ours := b.indices[idx] == p
	b.mu.Unlock()
	if ours {
		p.sessionIdx.Store(idx)
		return
	}
	if !p.lastStale.CompareAndSwap(last, now) {
		return
	}
	b.opts.OnStaleSession(p.key)
}

func (b *Bind) rememberIndex(p *peer, idx uint32) {
	b.mu.Lock()
	defer b.mu.Unlock()
	pe := b.peers[p.key]
	if pe == nil || pe.p != p {
		return
	}
	if len(pe.indices) >= maxIndicesPerPeer {
		delete(b.indices, pe.indices[0])
		pe.indices = pe.indices[1:]
	}
	pe.indices = append(pe.indices, idx)
	b.indices[idx] = p
}

// SetUDPFilterForTest makes the bind drop UDP datagrams to and from the
// addresses allow refuses, as a firewall would; nil removes the filter.
// Only tests call it.
func (b *Bind) SetUDPFilterForTest(allow func(remote netip.AddrPort) bool) {
	if allow == nil {
		b.testFilter.Store(nil)
		return
	}
	b.testFilter.Store(&allow)
}

// sendEp sends bufs to p over the direct path e (from e's socket),
// counting them once sent.
func (b *Bind) sendEp(p *peer, bufs [][]byte, e *Endpoint) error {
	if e.sock == nil {
		return b.sendDirect(p, bufs, e.src)
	}
	err := b.sendExtra(e.sock, bufs, e.src)
	if err == nil && !b.opts.RelayOnly {
		p.traffic.sent(pathDirect, bufs)
	}
	return err
}

// sendTo writes bufs for a peer to dst with as few syscalls as
// possible; with Options.RelayOnly it drops them.
func (b *Bind) sendTo(bufs [][]byte, dst netip.AddrPort) error {
	if b.opts.RelayOnly {
		return nil
	}
	return b.writeUDP(bufs, dst)
}

// writeUDP writes bufs to dst with as few syscalls as possible.
func (b *Bind) writeUDP(bufs [][]byte, dst netip.AddrPort) error {
	if f := b.testFilter.Load(); f != nil && !(*f)(dst) {
		return nil
	}
	b.mu.Lock()
	s := b.v4
	if dst.Addr().Is6() {
		s = b.v6
	}
	b.mu.Unlock()
	if s == nil {
		return net.ErrClosed
	}
	sb := b.sendPool.Get().(*sendBatch)
	defer b.sendPool.Put(sb)
	if dst.Addr().Is4() {
		a := dst.Addr().As4()
		copy(sb.ip[:], a[:])
		sb.ua.IP = sb.ip[:4]
	} else {
		sb.ip = dst.Addr().As16()
		sb.ua.IP = sb.ip[:16]
	}
	sb.ua.Port = int(dst.Port())
	gso := s.gso.Load() && len(bufs) > 1
	err := b.writeBatch(s, sb, bufs, gso)
	if err != nil && gso && udpoffload.GSOFailed(err) {
		s.gso.Store(false)
		b.log.Info("UDP segmentation offload unavailable; sending datagrams one by one", "err", err)
		err = b.writeBatch(s, sb, bufs, false)
	}
	return err
}

// Limits of one UDP_SEGMENT send (the kernel's UDP_MAX_SEGMENTS, and the
// largest UDP payload over IPv4).
const (
	maxGSOSegments = 64
	maxGSOBytes    = 1<<16 - 1 - 20 - 8
)

// writeBatch sends bufs to sb.ua. With gso, runs of equal-size datagrams
// (a shorter one may end a run) go out as one message that the kernel
// splits, the datagrams gathered from bufs without copying.
func (b *Bind) writeBatch(s *udpSocket, sb *sendBatch, bufs [][]byte, gso bool) error {
	m := 0
	for i := 0; i < len(bufs); m++ {
		if m == len(sb.msgs) {
			// wireguard-go sends up to its TUN device's batch at once
			// (128 on a kernel TUN device with offloads), which may pass
			// BatchSize.
			sb.grow()
		}
		msg := &sb.msgs[m]
		msg.Addr = &sb.ua
		msg.Buffers = append(msg.Buffers[:0], bufs[i])
		msg.OOB = msg.OOB[:0]
		size, total := len(bufs[i]), len(bufs[i])
		i++
		if !gso {
			continue
		}
		for i < len(bufs) && len(msg.Buffers) < maxGSOSegments && total+len(bufs[i]) <= maxGSOBytes {
			l := len(bufs[i])
			if l > size {
				break
			}
			msg.Buffers = append(msg.Buffers, bufs[i])
			total += l
			i++
			if l < size {
				break
			}
		}
		if len(msg.Buffers) > 1 {
			msg.OOB = udpoffload.PutGSOSize(msg.OOB[:cap(msg.OOB)], uint16(size))
		}
	}
	msgs := sb.msgs[:m]
	var err error
	for len(msgs) > 0 {
		var w int
		w, err = s.pc.WriteBatch(msgs, 0)
		if err != nil {
			break
		}
		msgs = msgs[w:]
	}
	for i := range sb.msgs[:m] {
		clear(sb.msgs[i].Buffers)
		sb.msgs[i].Buffers = sb.msgs[i].Buffers[:0]
		sb.msgs[i].Addr = nil
	}
	return err
}

func unmap(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// DirectPingOutForTest reports whether a ping to peer k's direct path is
// unanswered. Only tests call it.
func (b *Bind) DirectPingOutForTest(k key.NodePublic) bool {
	b.mu.Lock()
	pe := b.peers[k]
	b.mu.Unlock()
	if pe == nil {
		return false
	}
	best := pe.p.best.Load()
	return best != nil && !best.isRelay() && pe.p.lastDirectPing.Load() > best.lastRecv.Load()
}

// AgeForTest moves every time the bind keeps about peer k (packets sent
// and received, pings, probes) d into the past, as if d had passed with
// nothing sent to or heard from k. Only tests call it.
func (b *Bind) AgeForTest(k key.NodePublic, d time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	pe := b.peers[k]
	if pe == nil {
		return
	}
	age := func(v *atomic.Int64) {
		if t := v.Load(); t != 0 {
			v.Store(t - int64(d))
		}
	}
	p := pe.p
	for _, v := range []*atomic.Int64{&p.lastWGRecv, &p.lastSend, &p.lastProbe, &p.lastHeartbeat,
		&p.lastReply, &p.lastDirectPing, &p.unansweredSince, &p.dualUntil, &p.lastStale} {
		age(v)
	}
	for _, e := range pe.eps {
		age(&e.lastRecv)
	}
	p.init.mu.Lock()
	if p.init.at != 0 {
		p.init.at -= int64(d)
	}
	p.init.mu.Unlock()
}
