// Package udprelay is the server side of Beam's UDP peer relays: a node
// (one the policy lets both peers see, started with --relay-server)
// forwards UDP between two peers that cannot reach each other directly,
// a middle tier between a direct path and the TCP relay (DERP).
//
// A session is set up in three steps, all of them disco messages (package
// disco) sealed between a peer's disco key and the server's:
//
//  1. Allocate: peer A asks the server, over whatever path it has to the
//     server's node, for a session with peer B. The server's node serves
//     only pairs of its own peers (the caller checks that, see the bind);
//     the server answers both A and B with an Allocation: the session ID
//     (VNI) and the addresses of the relay socket. There is one session
//     per pair of nodes (node keys): a peer's new disco key (a new
//     process, or any map request that sets one) replaces the pair's
//     session rather than adding one.
//  2. Bind: each peer sends BindRelay to the relay socket, the server
//     answers with a Challenge (a MAC of the session, the side, that address
//     and the time, so the server keeps no state per request) to the address the request came
//     from, and the peer repeats it in an Answer from that address. Only
//     then is the address bound: spoofing a source address, or replaying
//     another peer's messages, binds nothing.
//  3. Forward: once both sides are bound, datagrams with the session's
//     header (see header.go) from one bound address go unchanged to the
//     other. They are the peers' WireGuard packets (end to end: the server
//     has no key to read them) and their disco pings through the relay.
//
// Bounds: MaxSessions in all and MaxSessionsPerPeer per peer (per node
// key, whatever disco keys it takes; a session counts against the peer
// that asked for it, and against the other only once that one binds it,
// so a node cannot use up the sessions of a peer the policy never lets
// it see, which never binds), a packet and a byte rate per
// session, and sessions idle for IdleTimeout (or not bound by both peers
// within BindTimeout, or with one side silent for 30 s however much the
// other sends) expire. Retain ends at once the sessions of peers
// the server's node no longer has (removed from its netmap, out of the
// policy, or with another disco key): their packets are dropped from then
// on.
package udprelay

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"beam.dev/beam/netstack/internal/disco"
	"beam.dev/beam/netstack/internal/udpoffload"
	"beam.dev/beam/types/key"
	"golang.org/x/time/rate"
)

// Defaults of Options.
const (
	DefaultMaxSessions        = 1024
	DefaultMaxSessionsPerPeer = 32
	DefaultPacketsPerSecond   = 100_000
	DefaultBytesPerSecond     = 128 << 20
	DefaultIdleTimeout        = 2 * time.Minute
	DefaultBindTimeout        = 30 * time.Second
	// challengeTimeout is how long a Challenge may wait for its Answer
	// (between one and two of these).
	challengeTimeout = 10 * time.Second
	// controlRate and controlBurst bound the control packets per second
	// the server opens for one side of one session (a peer sends about
	// one BindRelay and one Answer per second per address). Packets for
	// no session, or sealed by a key that is not one of its peers, are
	// dropped before any limiter, so junk from elsewhere cannot use up a
	// session's allowance, let alone every session's.
	controlRate  = 10
	controlBurst = 20
	// sideTimeout ends a bound session one of whose peers has sent
	// nothing on it for this long (or IdleTimeout, if shorter), however
	// much the other sends. A peer that no longer has the other as a
	// peer (the policy or its netmap removed it) drops its session at
	// once; without this the other could keep forwarding to its address
	// for as long as it liked. A peer in a session sends at least every
	// 10 s while it receives (WireGuard's keepalive, the bind's pings
	// when a session is quiet), and drops a session silent for 30 s.
	sideTimeout = 30 * time.Second
)

// ErrRefused is returned by Allocate when a bound would be exceeded.
var ErrRefused = errors.New("udprelay: session refused")

// Options configures a Server.
type Options struct {
	// DiscoKey is the server node's disco key; required.
	DiscoKey key.DiscoPrivate
	// Addrs returns the addresses of the relay socket peers should bind
	// to (the node's public IPs with the relay port); required.
	Addrs func() []netip.AddrPort
	// MaxSessions bounds sessions in all. Zero means DefaultMaxSessions.
	MaxSessions int
	// MaxSessionsPerPeer bounds the sessions one peer (node key) takes
	// part in: those it asked for and those it bound. A session another
	// peer asked for does not count against a peer until that peer binds
	// it, so peers it never agreed to cannot use up its sessions. Zero
	// means DefaultMaxSessionsPerPeer.
	MaxSessionsPerPeer int
	// PacketsPerSecond and BytesPerSecond bound what one session
	// forwards (both directions together, with a burst of a tenth of a
	// second); packets above them are dropped. Zero means
	// DefaultPacketsPerSecond and DefaultBytesPerSecond.
	PacketsPerSecond, BytesPerSecond int
	// IdleTimeout expires a session that forwarded nothing for this
	// long. Zero means DefaultIdleTimeout.
	IdleTimeout time.Duration
	// BindTimeout expires a session both peers have not bound within
	// this long after it was allocated. Zero means DefaultBindTimeout.
	BindTimeout time.Duration
	// Logger receives the server's logs. Nil discards them.
	Logger *slog.Logger
	// Now is the clock. Nil means time.Now.
	Now func() time.Time
}

// Stats are a server's counters.
type Stats struct {
	// Sessions is the number of live sessions; Bound of them have both
	// sides bound.
	Sessions, Bound int
	// Allocated counts sessions created, Refused allocations (and binds
	// of a peer's first address to a session) refused by a bound, Expired sessions that timed out, Released sessions ended
	// because a peer left or took a new disco key (Retain, Allocate).
	Allocated, Refused, Expired, Released uint64
	// Binds counts addresses bound (a peer that moves binds again).
	Binds uint64
	// Packets and Bytes count what was forwarded.
	Packets, Bytes uint64
	// DroppedRate counts packets over a session's rate; DroppedOther
	// packets for no session, from an address not bound to it, before
	// the other side bound, or not understood.
	DroppedRate, DroppedOther uint64
}

// Server is a peer relay server. Create it with New, feed it a socket
// with Serve and sessions with Allocate.
type Server struct {
	opts Options
	log  *slog.Logger
	// unpaddedLogged is set once an unpadded BindRelay was logged.
	unpaddedLogged atomic.Bool
	// secret keys the challenges (see challenge).
	secret [32]byte

	allocated, refused, expired, released, binds atomic.Uint64
	packets, bytes                               atomic.Uint64
	droppedRate, droppedOther                    atomic.Uint64

	mu        sync.Mutex // guards the following
	sessions  map[uint32]*session
	byPair    map[[2]key.NodePublic]*session
	perPeer   map[key.NodePublic]int
	lastSweep time.Time
}

// session is one pair's relay session, guarded by Server.mu.
type session struct {
	vni uint32
	// nodes are the pair's node keys (in pairOf's order) and peers their
	// disco keys, side by side.
	nodes  [2]key.NodePublic
	peers  [2]key.DiscoPublic
	shared [2]key.DiscoShared
	bound  [2]netip.AddrPort
	// counted is whether the session counts against each side's
	// MaxSessionsPerPeer (Server.perPeer): a side counts once it asked
	// for the session (Allocate) or bound an address to it.
	counted    [2]bool
	created    time.Time
	lastActive time.Time
	// lastFrom is when each side was last heard on its bound address
	// (see sideTimeout).
	lastFrom [2]time.Time
	pps, bps *rate.Limiter
	// control bounds the control packets opened per side (see
	// controlRate).
	control [2]*rate.Limiter
}

func (s *session) isBound() bool { return s.bound[0].IsValid() && s.bound[1].IsValid() }

// Limits are a server's bounds on sessions and their traffic (see
// Options, whose fields of the same names they are). Zero fields mean
// the defaults.
type Limits struct {
	MaxSessions, MaxSessionsPerPeer  int
	PacketsPerSecond, BytesPerSecond int
}

// withDefaults returns l with its zero (or negative) fields set to the
// defaults.
func (l Limits) withDefaults() Limits {
	if l.MaxSessions <= 0 {
		l.MaxSessions = DefaultMaxSessions
	}
	if l.MaxSessionsPerPeer <= 0 {
		l.MaxSessionsPerPeer = DefaultMaxSessionsPerPeer
	}
	if l.PacketsPerSecond <= 0 {
		l.PacketsPerSecond = DefaultPacketsPerSecond
	}
	if l.BytesPerSecond <= 0 {
		l.BytesPerSecond = DefaultBytesPerSecond
	}
	return l
}

func (o *Options) limits() Limits {
	return Limits{MaxSessions: o.MaxSessions, MaxSessionsPerPeer: o.MaxSessionsPerPeer, PacketsPerSecond: o.PacketsPerSecond, BytesPerSecond: o.BytesPerSecond}
}

func (o *Options) setLimits(l Limits) {
	o.MaxSessions, o.MaxSessionsPerPeer, o.PacketsPerSecond, o.BytesPerSecond = l.MaxSessions, l.MaxSessionsPerPeer, l.PacketsPerSecond, l.BytesPerSecond
}

// New returns a server with no sessions.
func New(opts Options) (*Server, error) {
	if opts.DiscoKey.IsZero() {
		return nil, errors.New("udprelay: DiscoKey is required")
	}
	if opts.Addrs == nil {
		return nil, errors.New("udprelay: Addrs is required")
	}
	opts.setLimits(opts.limits().withDefaults())
	if opts.IdleTimeout <= 0 {
		opts.IdleTimeout = DefaultIdleTimeout
	}
	if opts.BindTimeout <= 0 {
		opts.BindTimeout = DefaultBindTimeout
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{
		opts:     opts,
		log:      log.With("component", "udprelay"),
		sessions: make(map[uint32]*session),
		byPair:   make(map[[2]key.NodePublic]*session),
		perPeer:  make(map[key.NodePublic]int),
	}
	rand.Read(s.secret[:])
	return s, nil
}

// challenge is the challenge for side i of session vni binding src in
// time slot epoch (of challengeTimeout): a MAC, so the server keeps no
// state per request, and a peer that sends BindRelay to several of the
// server's addresses can answer any of them.
func (s *Server) challenge(vni uint32, i int, src netip.AddrPort, epoch int64) [32]byte {
	m := hmac.New(sha256.New, s.secret[:])
	var b [4 + 1 + 8 + 18]byte
	binary.BigEndian.PutUint32(b[0:], vni)
	b[4] = byte(i)
	binary.BigEndian.PutUint64(b[5:], uint64(epoch))
	ip := src.Addr().As16()
	copy(b[13:], ip[:])
	binary.BigEndian.PutUint16(b[29:], src.Port())
	m.Write(b[:])
	return [32]byte(m.Sum(nil))
}

// Limits returns the bounds in force (defaults filled in).
func (s *Server) Limits() Limits {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.opts.limits()
}

// SetLimits changes the bounds at once (zero fields: the defaults). Live
// sessions take the new rates; sessions beyond new count bounds stay
// until they expire, and new ones are refused until there is room.
func (s *Server) SetLimits(l Limits) {
	l = l.withDefaults()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.opts.setLimits(l)
	now := s.opts.Now()
	for _, se := range s.sessions {
		se.pps.SetLimitAt(now, rate.Limit(l.PacketsPerSecond))
		se.pps.SetBurstAt(now, packetBurst(l.PacketsPerSecond))
		se.bps.SetLimitAt(now, rate.Limit(l.BytesPerSecond))
		se.bps.SetBurstAt(now, byteBurst(l.BytesPerSecond))
	}
}

// packetBurst and byteBurst are a session's bursts: a tenth of a
// second's worth, at least 64 packets and 64 KiB.
func packetBurst(pps int) int { return max(pps/10, 64) }
func byteBurst(bps int) int   { return max(bps/10, 1<<16) }

// DiscoPublic returns the server's disco public key.
func (s *Server) DiscoPublic() key.DiscoPublic { return s.opts.DiscoKey.Public() }

// Party is one peer of a session: its node key and its current disco key
// (as the server's node's netmap has them).
type Party struct {
	Node  key.NodePublic
	Disco key.DiscoPublic
}

func (p Party) String() string { return p.Node.ShortString() + "/" + p.Disco.ShortString() }

// pairOf returns a and b ordered by node key.
func pairOf(a, b Party) [2]Party {
	ra, rb := a.Node.Raw32(), b.Node.Raw32()
	if bytes.Compare(ra[:], rb[:]) > 0 {
		a, b = b, a
	}
	return [2]Party{a, b}
}

// Allocate returns the session between peers a (the one asking) and b,
// creating it if there is none. The caller has checked that both are
// peers the server's node may relay for, with those disco keys. A session
// of the same two nodes with other disco keys is released first: it was
// a previous process's, and a node cannot add sessions by taking new
// disco keys.
func (s *Server) Allocate(a, b Party) (*disco.Allocation, error) {
	if a.Node == b.Node || a.Disco == b.Disco || a.Node.IsZero() || b.Node.IsZero() || a.Disco.IsZero() || b.Disco.IsZero() {
		return nil, fmt.Errorf("%w: not a pair of peers", ErrRefused)
	}
	now := s.opts.Now()
	pair := pairOf(a, b)
	nodes := [2]key.NodePublic{pair[0].Node, pair[1].Node}
	discos := [2]key.DiscoPublic{pair[0].Disco, pair[1].Disco}
	s.mu.Lock()
	s.sweepLocked(now)
	se := s.byPair[nodes]
	if se != nil && se.peers != discos {
		s.releaseLocked(se, "a peer's disco key changed")
		se = nil
	}
	// The asker's side; the session counts against it from now on.
	ai := 0
	if nodes[1] == a.Node {
		ai = 1
	}
	// perPeer counts only the sessions a peer asked for or bound, so
	// b's count is its own doing: sessions others asked for with b,
	// which b may never see (the policy lets the server's node see
	// both, not b see a), do not use up b's sessions.
	full := s.perPeer[a.Node] >= s.opts.MaxSessionsPerPeer
	if se == nil {
		full = full || s.perPeer[b.Node] >= s.opts.MaxSessionsPerPeer
		if len(s.sessions) >= s.opts.MaxSessions {
			s.mu.Unlock()
			s.refused.Add(1)
			return nil, fmt.Errorf("%w: %d sessions", ErrRefused, s.opts.MaxSessions)
		}
	}
	if full && (se == nil || !se.counted[ai]) {
		s.mu.Unlock()
		s.refused.Add(1)
		return nil, fmt.Errorf("%w: %d sessions per peer", ErrRefused, s.opts.MaxSessionsPerPeer)
	}
	if se == nil {
		se = &session{
			vni:     s.newVNILocked(),
			nodes:   nodes,
			peers:   discos,
			shared:  [2]key.DiscoShared{s.opts.DiscoKey.Shared(discos[0]), s.opts.DiscoKey.Shared(discos[1])},
			created: now,
			pps:     rate.NewLimiter(rate.Limit(s.opts.PacketsPerSecond), packetBurst(s.opts.PacketsPerSecond)),
			bps:     rate.NewLimiter(rate.Limit(s.opts.BytesPerSecond), byteBurst(s.opts.BytesPerSecond)),
			control: [2]*rate.Limiter{rate.NewLimiter(controlRate, controlBurst), rate.NewLimiter(controlRate, controlBurst)},
		}
		s.sessions[se.vni] = se
		s.byPair[nodes] = se
		s.allocated.Add(1)
		s.log.Info("peer relay session allocated", "vni", se.vni, "peer_a", pair[0].String(), "peer_b", pair[1].String())
	}
	s.countLocked(se, ai)
	se.lastActive = now
	vni := se.vni
	s.mu.Unlock()
	return &disco.Allocation{VNI: vni, Peers: discos, Addrs: s.opts.Addrs()}, nil
}

// Retain releases at once every session with a peer for which keep
// reports false: the server's node no longer has that node as a peer
// with that disco key (it left the netmap, the policy no longer lets
// the node see it, or it took a new disco key), or no longer offers the
// relay at all. Their packets are dropped from then on. It returns the
// number of sessions released.
func (s *Server) Retain(keep func(Party) bool) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, se := range s.sessions {
		if !keep(Party{se.nodes[0], se.peers[0]}) || !keep(Party{se.nodes[1], se.peers[1]}) {
			s.releaseLocked(se, "a peer is no longer served")
			n++
		}
	}
	return n
}

// newVNILocked returns an unused non-zero session ID.
func (s *Server) newVNILocked() uint32 {
	var b [4]byte
	for {
		rand.Read(b[:])
		if v := binary.BigEndian.Uint32(b[:]); v != 0 && s.sessions[v] == nil {
			return v
		}
	}
}

// sweepLocked expires idle sessions, at most once a second.
func (s *Server) sweepLocked(now time.Time) {
	if now.Sub(s.lastSweep) < time.Second && !s.lastSweep.IsZero() {
		return
	}
	s.lastSweep = now
	for _, se := range s.sessions {
		if s.expiredLocked(se, now) {
			s.dropLocked(se)
			s.expired.Add(1)
			s.log.Info("peer relay session expired", "vni", se.vni)
		}
	}
}

func (s *Server) expiredLocked(se *session, now time.Time) bool {
	if !se.isBound() {
		return now.Sub(se.created) > s.opts.BindTimeout || now.Sub(se.lastActive) > s.opts.IdleTimeout
	}
	side := min(sideTimeout, s.opts.IdleTimeout)
	return now.Sub(se.lastActive) > s.opts.IdleTimeout || now.Sub(se.lastFrom[0]) > side || now.Sub(se.lastFrom[1]) > side
}

// countLocked counts se against side i's MaxSessionsPerPeer, if it does
// not count already.
func (s *Server) countLocked(se *session, i int) {
	if !se.counted[i] {
		se.counted[i] = true
		s.perPeer[se.nodes[i]]++
	}
}

// dropLocked forgets se.
func (s *Server) dropLocked(se *session) {
	delete(s.sessions, se.vni)
	delete(s.byPair, se.nodes)
	for i, k := range se.nodes {
		if !se.counted[i] {
			continue
		}
		if s.perPeer[k]--; s.perPeer[k] <= 0 {
			delete(s.perPeer, k)
		}
	}
}

// releaseLocked ends se before its time, for why.
func (s *Server) releaseLocked(se *session, why string) {
	s.dropLocked(se)
	s.released.Add(1)
	s.log.Info("peer relay session released", "vni", se.vni, "why", why,
		"peer_a", Party{se.nodes[0], se.peers[0]}.String(), "peer_b", Party{se.nodes[1], se.peers[1]}.String())
}

// Stats returns the server's counters.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	s.lastSweep = time.Time{}
	s.sweepLocked(s.opts.Now())
	st := Stats{Sessions: len(s.sessions)}
	for _, se := range s.sessions {
		if se.isBound() {
			st.Bound++
		}
	}
	s.mu.Unlock()
	st.Allocated, st.Refused, st.Expired, st.Released = s.allocated.Load(), s.refused.Load(), s.expired.Load(), s.released.Load()
	st.Binds, st.Packets, st.Bytes = s.binds.Load(), s.packets.Load(), s.bytes.Load()
	st.DroppedRate, st.DroppedOther = s.droppedRate.Load(), s.droppedOther.Load()
	return st
}

// maxPacket is the largest datagram read.
const maxPacket = 64 << 10

// Serve reads and forwards datagrams on conn until conn is closed (then it
// returns nil). The caller owns conn; one Serve at a time. On Linux the
// socket reads with UDP_GRO and forwards runs of datagrams with
// UDP_SEGMENT: one system call each way for many of a session's packets.
func (s *Server) Serve(conn *net.UDPConn) error {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() { s.sweepLoop(done) })
	defer func() {
		close(done)
		wg.Wait()
	}()
	gro := udpoffload.EnableGRO(conn)
	w := &writer{conn: conn, gso: udpoffload.SupportsGSO(conn), oob: make([]byte, udpoffload.GROControlSize)}
	buf := make([]byte, maxPacket)
	oob := make([]byte, udpoffload.GROControlSize)
	for {
		n, oobn, _, src, err := conn.ReadMsgUDPAddrPort(buf, oob)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			// Timeouts, and ICMP errors surfacing as read errors.
			s.log.Debug("read", "err", err)
			continue
		}
		seg := n
		if gro {
			if g := udpoffload.GROSegmentSize(oob[:oobn]); g > 0 && g < n {
				seg = g
			}
		}
		s.handleBatch(w, buf[:n], seg, netip.AddrPortFrom(src.Addr().Unmap(), src.Port()))
	}
}

// sweepLoop expires idle sessions while nothing arrives.
func (s *Server) sweepLoop(done <-chan struct{}) {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-t.C:
			s.mu.Lock()
			s.sweepLocked(s.opts.Now())
			s.mu.Unlock()
		}
	}
}

// writer sends forwarded datagrams, runs of them at once where it can.
type writer struct {
	conn *net.UDPConn
	gso  bool
	oob  []byte
}

// send writes b, datagrams of seg bytes (the last may be shorter), to dst.
func (w *writer) send(b []byte, seg int, dst netip.AddrPort) error {
	if len(b) <= seg || !w.gso {
		for len(b) > 0 {
			n := min(seg, len(b))
			if _, err := w.conn.WriteToUDPAddrPort(b[:n], dst); err != nil {
				return err
			}
			b = b[n:]
		}
		return nil
	}
	_, _, err := w.conn.WriteMsgUDPAddrPort(b, udpoffload.PutGSOSize(w.oob[:cap(w.oob)], uint16(seg)), dst)
	if err != nil && udpoffload.GSOFailed(err) {
		w.gso = false
		return w.send(b, seg, dst)
	}
	return err
}

// handle processes one datagram from src.
func (s *Server) handle(conn *net.UDPConn, pkt []byte, src netip.AddrPort) {
	s.handleBatch(&writer{conn: conn}, pkt, len(pkt), src)
}

// handleBatch processes the datagrams of buf, each seg bytes (the last may
// be shorter), all from src: consecutive ones for the same destination go
// out in one send.
func (s *Server) handleBatch(w *writer, buf []byte, seg int, src netip.AddrPort) {
	if seg <= 0 {
		return
	}
	now := s.opts.Now()
	var (
		runStart, runEnd int // buf[runStart:runEnd] goes to runDst
		runDst           netip.AddrPort
		runN             int
	)
	flush := func() {
		if runEnd > runStart {
			// Counted before the send, so a peer that received a packet
			// sees it counted.
			s.packets.Add(uint64(runN))
			s.bytes.Add(uint64(runEnd - runStart))
			w.send(buf[runStart:runEnd], seg, runDst)
		}
		runStart, runEnd, runN = 0, 0, 0
	}
	for off := 0; off < len(buf); off += seg {
		pkt := buf[off:min(off+seg, len(buf))]
		typ, vni, ok := ParseHeader(pkt)
		if !ok {
			s.droppedOther.Add(1)
			continue
		}
		if typ == TypeControl {
			s.handleControl(w.conn, vni, pkt[HeaderLen:], src)
			continue
		}
		dst, ok := s.forward(vni, src, len(pkt), now)
		if !ok {
			continue
		}
		if runEnd != off || dst != runDst {
			flush()
			runStart, runDst = off, dst
		}
		runEnd = off + len(pkt)
		runN++
	}
	flush()
}

// forward decides where a data packet of n bytes from src for session vni
// goes; ok is false if it is dropped (and counted).
func (s *Server) forward(vni uint32, src netip.AddrPort, n int, now time.Time) (dst netip.AddrPort, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	se := s.sessions[vni]
	if se == nil || s.expiredLocked(se, now) || !src.IsValid() {
		s.droppedOther.Add(1)
		return dst, false
	}
	switch src {
	case se.bound[0]:
		dst = se.bound[1]
		se.lastFrom[0] = now
	case se.bound[1]:
		dst = se.bound[0]
		se.lastFrom[1] = now
	}
	if !dst.IsValid() {
		s.droppedOther.Add(1)
		return dst, false
	}
	if !se.pps.AllowN(now, 1) || !se.bps.AllowN(now, n) {
		s.droppedRate.Add(1)
		return dst, false
	}
	se.lastActive = now
	return dst, true
}

// handleControl processes a disco packet to the server for session vni.
func (s *Server) handleControl(conn *net.UDPConn, vni uint32, pkt []byte, src netip.AddrPort) {
	sender, sealed, ok := disco.Sender(pkt)
	if !ok {
		s.droppedOther.Add(1)
		return
	}
	now := s.opts.Now()
	s.mu.Lock()
	se := s.sessions[vni]
	i := -1
	if se != nil && !s.expiredLocked(se, now) {
		for j, k := range se.peers {
			if k == sender {
				i = j
			}
		}
	}
	if i < 0 {
		s.mu.Unlock()
		s.droppedOther.Add(1)
		return
	}
	shared := se.shared[i]
	s.mu.Unlock()
	// Opened before the side's control limiter is charged: the sender
	// key and the VNI travel in clear, so a limiter charged by packets
	// that do not open would let anyone who saw one packet starve the
	// real peer of its Challenge. Opening is a cheap symmetric check.
	m, err := disco.Open(shared, sealed)
	if err != nil {
		s.droppedOther.Add(1)
		return
	}
	s.mu.Lock()
	allowed := s.sessions[vni] == se && se.control[i].AllowN(now, 1)
	s.mu.Unlock()
	if !allowed {
		s.droppedOther.Add(1)
		return
	}
	switch m := m.(type) {
	case *disco.BindRelay:
		if m.VNI != vni {
			s.droppedOther.Add(1)
			return
		}
		c := s.challenge(vni, i, src, now.UnixNano()/int64(challengeTimeout))
		out := AppendHeader(make([]byte, 0, 128), TypeControl, vni)
		out = disco.AppendPacket(out, s.opts.DiscoKey.Public(), shared, &disco.Challenge{VNI: vni, Challenge: c})
		// The Challenge goes to whatever source the request claims:
		// it must be no larger than the request (BindRelay is padded).
		if HeaderLen+len(pkt) < len(out) {
			s.droppedOther.Add(1)
			if s.unpaddedLogged.CompareAndSwap(false, true) {
				s.log.Info("peer relay: unpadded BindRelay refused (the peer runs an earlier build; it must be updated)", "vni", vni, "peer", sender.ShortString())
			}
			return
		}
		conn.WriteToUDPAddrPort(out, src)
	case *disco.Answer:
		// The challenge of this slot or the one before.
		epoch := now.UnixNano() / int64(challengeTimeout)
		c0, c1 := s.challenge(vni, i, src, epoch), s.challenge(vni, i, src, epoch-1)
		okAnswer := m.VNI == vni && (subtle.ConstantTimeCompare(m.Challenge[:], c0[:]) == 1 ||
			subtle.ConstantTimeCompare(m.Challenge[:], c1[:]) == 1)
		moved, full := false, false
		if okAnswer {
			s.mu.Lock()
			okAnswer = s.sessions[vni] == se
			// A side that did not ask for the session counts from its
			// first bind, within its bound.
			full = okAnswer && !se.counted[i] && s.perPeer[se.nodes[i]] >= s.opts.MaxSessionsPerPeer
			okAnswer = okAnswer && !full
			if okAnswer {
				s.countLocked(se, i)
				moved = se.bound[i] != src
				wasBound := se.isBound()
				se.bound[i] = src
				se.lastActive = now
				se.lastFrom[i] = now
				if !wasBound && se.isBound() {
					// The other side could send nothing until now.
					se.lastFrom[1-i] = now
				}
			}
			s.mu.Unlock()
		}
		if full {
			s.refused.Add(1)
			s.log.Info("peer relay bind refused: the peer has its sessions", "vni", vni, "peer", sender.ShortString(), "max", s.opts.MaxSessionsPerPeer)
			return
		}
		if !okAnswer {
			s.droppedOther.Add(1)
			return
		}
		if moved {
			// A peer binding the same address again (to check the
			// binding) is not news.
			s.binds.Add(1)
			s.log.Info("peer relay address bound", "vni", vni, "peer", sender.ShortString(), "addr", src.String())
		}
	default:
		s.droppedOther.Add(1)
	}
}
