package bind

import (
	"bytes"
	"crypto/rand"
	"errors"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"beam.dev/beam/netstack/internal/disco"
	"beam.dev/beam/netstack/internal/udprelay"
	"beam.dev/beam/types/key"
)

// UDP peer relays: the middle tier between a direct path and the TCP
// relay (DERP). A peer with no direct path, while traffic flows, asks a
// node that offers a peer relay server (PeerConfig.RelayServer) for a
// session with that peer (disco Allocate, through whatever path reaches
// the server's node). The server answers both peers with an Allocation;
// each binds its address at the server's relay socket (BindRelay,
// Challenge, Answer, see package udprelay) and pings the other through
// it. A pong through the session makes it usable: the relay's copy of
// the traffic then goes through the session instead of DERP (see route
// in Send), until a direct path is confirmed (probing goes on as on
// DERP) or the session stops answering (then DERP again). WireGuard stays
// end to end: the server forwards sealed packets it cannot read.
//
// Policy: a server relays only between two of its own peers (which the
// coordinator's policy gave it), and a peer binds only for a session with
// one of its own peers, so the relay carries nothing the two peers'
// netmaps do not already allow between them.

// Peer relay timing.
const (
	// allocateEvery is how often at most a peer without a usable session
	// asks a server for one.
	allocateEvery = 5 * time.Second
	// bindEvery is how often an unbound session resends BindRelay, and
	// a bound one unconfirmed pings the peer through it.
	bindEvery = time.Second
	// sessionSetup is how long a session may take to carry a pong.
	sessionSetup = 15 * time.Second
	// sessionDead is how long a confirmed session may be silent before
	// it is dropped (a new one is asked for when traffic needs one).
	sessionDead = 30 * time.Second
	// sessionActive is how long after the last traffic with its peer a
	// session keeps being pinged.
	sessionActive = time.Minute
	// serveAllocateEvery bounds how often one peer's Allocate is served.
	serveAllocateEvery = 200 * time.Millisecond
)

// peerRelayAddr is the pseudo address of peer relay endpoints (port: the
// low 16 bits of the session ID); never a real peer address here.
var peerRelayAddr = netip.AddrFrom4([4]byte{127, 3, 3, 41})

// RelayServer is the peer relay server of this node, if it offers one
// (package udprelay implements it).
type RelayServer interface {
	// Allocate returns the session between peers a (the one asking) and
	// b, node and disco keys as the peer table has them.
	Allocate(a, b udprelay.Party) (*disco.Allocation, error)
	// Retain ends at once the sessions with a peer for which keep
	// reports false.
	Retain(keep func(udprelay.Party) bool) int
}

// prSession is a session at a peer relay server to reach one peer.
type prSession struct {
	vni    uint32
	p      *peer // the peer reached through it
	server *peer // the relay server's node
	sdisco discoPeer
	pdisco key.DiscoPublic  // p's disco key when the session was made
	addrs  []netip.AddrPort // the server's addresses to bind to
	// ep is the endpoint wireguard-go sees packets through the session
	// from; its lastRecv and latency are the session's.
	ep      *Endpoint
	created int64
	// addr is the server address that answered BindRelay; nil until then.
	addr atomic.Pointer[netip.AddrPort]
	// confirmed is when a pong first came through the session (0: not yet).
	confirmed atomic.Int64
	// lastBind and lastPing rate-limit BindRelay and pings.
	lastBind, lastPing atomic.Int64
	// pingBack is set while a ping answering the peer's is scheduled.
	pingBack atomic.Bool
}

func (e *Endpoint) isPeerRelay() bool { return e.src.Addr() == peerRelayAddr }

// prState is the peer relay part of a Bind.
type prState struct {
	// sessions maps a session ID to its session; replaced whole under
	// Bind.mu, read without locks on receive.
	sessions atomic.Pointer[map[uint32]*prSession]
	bufs     sync.Pool // of *[]byte, for packets with the header
	// withheld is set while this node's relay server is not offered to
	// its peers (the policy does not designate it): Allocates are
	// refused. See SetRelayOffered.
	withheld atomic.Bool
}

// SetRelayOffered says whether this node's peer relay server
// (Options.RelayServer) is offered to its peers, as its netmap says (the
// policy designates it): while it is not, Allocate requests are refused,
// so a peer acting on an older netmap gets no session. On until set.
// Withdrawing it ends the server's sessions at once.
func (b *Bind) SetRelayOffered(on bool) {
	if b.opts.RelayServer == nil {
		b.pr.withheld.Store(!on)
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.pr.withheld.Swap(!on) == !on {
		return
	}
	if on {
		b.log.Info("peer relay server offered to peers (the policy designates this node)")
		return
	}
	b.log.Info("peer relay server not offered: the policy's peerRelays does not name this node; allocations refused, sessions ended")
	b.retainServedLocked()
}

// peerRelayPeersChangedLocked follows a change of the peer table
// (SetPeers, UpdatePeers): the relay server's sessions with peers no
// longer served end (retainServedLocked), and so do this node's sessions
// with a peer, or through a server, whose disco key changed: the process
// at that end is gone (and the server released the session), so the
// traffic goes through DERP now rather than once the session stops
// answering. b.mu is held.
func (b *Bind) peerRelayPeersChangedLocked() {
	b.retainServedLocked()
	tbl := b.pr.sessions.Load()
	if tbl == nil {
		return
	}
	stale := false
	for _, s := range *tbl {
		dp, sd := s.p.disco.Load(), s.server.disco.Load()
		if dp == nil || dp.key != s.pdisco || sd == nil || sd.key != s.sdisco.key {
			if s.p.pr.CompareAndSwap(s, nil) {
				stale = true
				b.log.Info("peer relay session dropped: a disco key changed", "peer", s.p.key.ShortString(), "server", s.server.key.ShortString(), "vni", s.vni)
			}
		}
	}
	if stale {
		b.rebuildSessionsLocked()
	}
}

// retainServedLocked ends the relay server's sessions (Options.RelayServer)
// with a node that is no longer a peer with that disco key: removed from
// the netmap (or no longer visible under the policy), or restarted with a
// new disco key; all of them while the relay is not offered
// (SetRelayOffered). peerRelayPeersChangedLocked and SetRelayOffered call it,
// and serveAllocate when the table changed during its Allocate; b.mu is
// held.
func (b *Bind) retainServedLocked() {
	if b.opts.RelayServer == nil {
		return
	}
	withheld := b.pr.withheld.Load()
	n := b.opts.RelayServer.Retain(func(p udprelay.Party) bool {
		if withheld {
			return false
		}
		pe := b.peers[p.Node]
		if pe == nil {
			return false
		}
		dp := pe.p.disco.Load()
		return dp != nil && dp.key == p.Disco
	})
	if n > 0 {
		b.log.Info("peer relay: ended sessions with peers no longer served (left the netmap, new disco key, or relay not offered)", "sessions", n)
	}
}

// usable reports how s may carry traffic at now: alone (silent for less
// than suspectAfter), with a copy through DERP (up to staleAfter), or
// not at all.
func (s *prSession) usable(now int64) (ok, withRelay bool) {
	if s == nil || s.confirmed.Load() == 0 || s.addr.Load() == nil {
		return false, false
	}
	switch silence := now - s.ep.lastRecv.Load(); {
	case silence <= int64(suspectAfter):
		return true, false
	case silence <= int64(staleAfter):
		return true, true
	}
	return false, false
}

// peerRelayFor returns the session that carries traffic to p now and
// whether DERP should carry a copy; nil if none is usable.
func (b *Bind) peerRelayFor(p *peer, now int64) (*prSession, bool) {
	s := p.pr.Load()
	ok, withRelay := s.usable(now)
	if !ok {
		return nil, false
	}
	return s, withRelay
}

// sendPeerRelay sends bufs to s's peer through the session (with the
// peer relay header), counting WireGuard datagrams.
func (b *Bind) sendPeerRelay(s *prSession, bufs [][]byte) error {
	ap := s.addr.Load()
	if ap == nil {
		return errNoRelay
	}
	out := make([][]byte, len(bufs))
	held := make([]*[]byte, len(bufs))
	for i, pkt := range bufs {
		bp := b.pr.bufs.Get().(*[]byte)
		*bp = udprelay.AppendHeader((*bp)[:0], udprelay.TypeData, s.vni)
		*bp = append(*bp, pkt...)
		out[i], held[i] = *bp, bp
	}
	err := b.sendTo(out, *ap)
	for _, bp := range held {
		if cap(*bp) <= 4<<10 {
			b.pr.bufs.Put(bp)
		}
	}
	if err == nil && !b.opts.RelayOnly {
		for _, pkt := range bufs {
			if !disco.IsPacket(pkt) {
				s.p.traffic.sentOne(pathPeerRelay, len(pkt))
			}
		}
	}
	return err
}

// sendControl sends m to s's server, sealed with its disco key, to dst.
func (b *Bind) sendControl(s *prSession, dst netip.AddrPort, m disco.Message) error {
	pkt := udprelay.AppendHeader(make([]byte, 0, 128), udprelay.TypeControl, s.vni)
	pkt = disco.AppendPacket(pkt, b.disco.pub, s.sdisco.shared(), m)
	return b.sendTo([][]byte{pkt}, dst)
}

// sendDiscoTo sends a disco message to p over its current path: a fresh
// direct one, else its relay region.
func (b *Bind) sendDiscoTo(p *peer, dp *discoPeer, m disco.Message) error {
	pkt := b.discoPacket(dp, m)
	now := time.Now().UnixNano()
	if best := p.best.Load(); best != nil && !best.isRelay() && fresh(best, now) {
		return b.sendEp(p, [][]byte{pkt}, best)
	}
	if region := b.relayRegionFor(p); region != 0 {
		return b.sendRelay([][]byte{pkt}, p, region)
	}
	return errNoRelay
}

// maybeAllocate asks a peer relay server for a session with p, if p has
// no session being set up or usable and none was asked for within
// allocateEvery. Servers are tried in turn.
func (b *Bind) maybeAllocate(p *peer, now int64) {
	dp := p.disco.Load()
	if dp == nil || !b.disco.on {
		return
	}
	if s := p.pr.Load(); s != nil {
		if ok, _ := s.usable(now); ok || s.confirmed.Load() == 0 && now-s.created < int64(sessionSetup) {
			return
		}
	}
	last := p.lastAllocate.Load()
	if now-last < int64(allocateEvery) || !p.lastAllocate.CompareAndSwap(last, now) {
		return
	}
	b.mu.Lock()
	var servers []*peer
	for _, pe := range b.peers {
		if pe.p != p && pe.p.relayServer.Load() && pe.p.disco.Load() != nil {
			servers = append(servers, pe.p)
		}
	}
	b.mu.Unlock()
	if len(servers) == 0 {
		return
	}
	// Map order is random; take the server with the lowest key after the
	// turn, so the choice is stable and both peers of a pair agree.
	sortPeers(servers)
	srv := servers[int(p.allocTurn.Add(1)-1)%len(servers)]
	p.allocServer.Store(srv)
	b.sendAllocate(p, srv, now, 0)
}

// allocateRetries are the waits before asking a server again when its
// Allocation has not come (the ask or the answer was lost: the server's
// node, just joined, may have had no path to us or to the other peer
// yet, or not know the other peer yet); then allocateEvery applies.
// Bounded: at most len(allocateRetries) quick retries per ask.
var allocateRetries = [...]time.Duration{250 * time.Millisecond, 500 * time.Millisecond, time.Second}

// sendAllocate sends srv an Allocate for a session with p, ask number
// try+1 of the one made at asked (p.lastAllocate), and schedules the next
// quick retry.
func (b *Bind) sendAllocate(p, srv *peer, asked int64, try int) {
	dp, sd := p.disco.Load(), srv.disco.Load()
	if dp == nil || sd == nil {
		return
	}
	if err := b.sendDiscoTo(srv, sd, &disco.Allocate{Peer: dp.key}); err != nil {
		b.log.Debug("ask for a peer relay session", "peer", p.key.ShortString(), "server", srv.key.ShortString(), "try", try+1, "err", err)
	} else {
		b.log.Debug("asked for a peer relay session", "peer", p.key.ShortString(), "server", srv.key.ShortString(), "try", try+1)
	}
	if try >= len(allocateRetries) {
		return
	}
	time.AfterFunc(allocateRetries[try], func() {
		// Still waiting: no Allocation from srv taken (allocServer
		// is cleared when one is), no newer ask, no session.
		if p.removed.Load() || srv.removed.Load() || p.allocServer.Load() != srv || p.pr.Load() != nil || p.lastAllocate.Load() != asked {
			return
		}
		b.sendAllocate(p, srv, asked, try+1)
	})
}

// allocationRetries are the waits before sending an Allocation again to
// a peer there was no path to (this node, or the peer, just joined and
// neither a direct path nor the peer's relay region is known yet).
var allocationRetries = [...]time.Duration{100 * time.Millisecond, 250 * time.Millisecond, 500 * time.Millisecond}

// sendAllocation sends al to p (attempt try+1), and again after
// allocationRetries while there is no path to p.
func (b *Bind) sendAllocation(p *peer, dp *discoPeer, al *disco.Allocation, try int) {
	err := b.sendDiscoTo(p, dp, al)
	if err == nil {
		return
	}
	b.log.Debug("peer relay: send allocation", "peer", p.key.ShortString(), "vni", al.VNI, "try", try+1, "err", err)
	if try >= len(allocationRetries) {
		return
	}
	time.AfterFunc(allocationRetries[try], func() {
		if cur := p.disco.Load(); p.removed.Load() || cur == nil || cur.key != dp.key {
			return
		}
		b.sendAllocation(p, dp, al, try+1)
	})
}

func sortPeers(ps []*peer) {
	slices.SortFunc(ps, func(a, b *peer) int {
		ka, kb := a.key.Raw32(), b.key.Raw32()
		return bytes.Compare(ka[:], kb[:])
	})
}

// serveAllocate answers a peer's Allocate when this node runs a peer
// relay server: it serves only a pair of its own peers, and sends the
// allocation to both.
func (b *Bind) serveAllocate(p *peer, dp *discoPeer, m *disco.Allocate, now int64) {
	if b.opts.RelayServer == nil || b.pr.withheld.Load() {
		return
	}
	last := p.lastServeAllocate.Load()
	if now-last < int64(serveAllocateEvery) || !p.lastServeAllocate.CompareAndSwap(last, now) {
		return
	}
	// current reports whether both are still peers with those disco
	// keys and the relay is offered; b.mu is held.
	var ope *peerEntry
	var odp *discoPeer
	current := func() bool {
		ope = b.byDisco[m.Peer]
		if ope == nil || ope.p == p || ope.p.removed.Load() || p.removed.Load() || b.pr.withheld.Load() {
			return false
		}
		cur := p.disco.Load()
		odp = ope.p.disco.Load()
		return cur != nil && cur.key == dp.key && odp != nil
	}
	b.mu.Lock()
	ok := current()
	b.mu.Unlock()
	if !ok {
		b.log.Debug("peer relay: refused a session with a node that is not our peer", "peer", p.key.ShortString())
		return
	}
	a, o := udprelay.Party{Node: p.key, Disco: dp.key}, udprelay.Party{Node: ope.p.key, Disco: odp.key}
	al, err := b.opts.RelayServer.Allocate(a, o)
	if err != nil {
		b.log.Info("peer relay: session refused", "peer", p.key.ShortString(), "other", ope.p.key.ShortString(), "err", err)
		return
	}
	// The peer table may have changed while the server allocated (not
	// under b.mu: the server's Addrs may take other locks). A change
	// after this check releases the session itself (retainServedLocked,
	// under b.mu); one before it is caught here.
	b.mu.Lock()
	ok = current() && odp.key == o.Disco && ope.p.key == o.Node
	if !ok {
		b.retainServedLocked()
	}
	b.mu.Unlock()
	if !ok {
		return
	}
	b.sendAllocation(p, dp, al, 0)
	b.sendAllocation(ope.p, odp, al, 0)
}

// maxSessionAddrs bounds the server addresses a session binds to.
const maxSessionAddrs = 4

// takeAllocation handles an Allocation from srv, a peer that offers a
// peer relay server: a session to the other peer it names.
//
// An Allocation makes this node send BindRelay to the addresses it
// names, every bindEvery for up to sessionSetup, so a node could use
// Allocations to steer its peers' UDP at anyone. Hence an Allocation is
// taken only if this node asked srv for a session with that peer within
// allocateEvery (once per ask), or else (this node is the other peer of
// the pair) while it has traffic with that peer, at most one per server
// per allocateEvery; only addresses on
// the IPs of srv's own endpoints (from the netmap) are kept; and a
// confirmed, usable session is never replaced by a new one.
func (b *Bind) takeAllocation(srv *peer, sdp *discoPeer, m *disco.Allocation, now int64) {
	if !srv.relayServer.Load() || len(m.Addrs) == 0 {
		return
	}
	var other key.DiscoPublic
	switch b.disco.pub {
	case m.Peers[0]:
		other = m.Peers[1]
	case m.Peers[1]:
		other = m.Peers[0]
	default:
		return
	}
	b.mu.Lock()
	ope := b.byDisco[other]
	b.mu.Unlock()
	if ope == nil || ope.p == srv || ope.p.removed.Load() {
		return
	}
	p := ope.p
	if old := p.pr.Load(); old != nil {
		if ok, _ := old.usable(now); ok {
			return // a working session stays
		}
		if old.vni == m.VNI && old.server == srv && old.confirmed.Load() == 0 && now-old.created < int64(sessionSetup) {
			return // already binding
		}
	}
	addrs := serverAddrs(srv, m.Addrs)
	if len(addrs) == 0 {
		b.log.Debug("peer relay: allocation with no address of the server's", "peer", p.key.ShortString(), "server", srv.key.ShortString())
		return
	}
	if !b.allocationWanted(p, srv, now) {
		b.log.Debug("peer relay: allocation not asked for", "peer", p.key.ShortString(), "server", srv.key.ShortString())
		return
	}
	s := &prSession{
		vni: m.VNI, p: p, server: srv, sdisco: *sdp, pdisco: other, addrs: addrs, created: now,
		ep: newEndpoint(p, netip.AddrPortFrom(peerRelayAddr, uint16(m.VNI))),
	}
	b.mu.Lock()
	if b.peers[p.key] != ope {
		b.mu.Unlock()
		return
	}
	p.pr.Store(s)
	b.rebuildSessionsLocked()
	b.mu.Unlock()
	b.log.Info("peer relay session offered", "peer", p.key.ShortString(), "server", srv.key.ShortString(), "vni", m.VNI)
	b.bindSession(s, now)
}

// allocationWanted reports whether an Allocation from srv for a session
// with p may be taken at now, and uses up what allowed it: this node's
// own Allocate to srv for p within allocateEvery, else (p asked) traffic
// with p within sessionActive and srv's allowance of one such
// Allocation per allocateEvery.
func (b *Bind) allocationWanted(p, srv *peer, now int64) bool {
	if now-p.lastAllocate.Load() <= int64(allocateEvery) && p.allocServer.CompareAndSwap(srv, nil) {
		return true
	}
	if now-max(p.lastSend.Load(), p.lastWGRecv.Load()) >= int64(sessionActive) {
		return false
	}
	last := srv.lastOffered.Load()
	return now-last >= int64(allocateEvery) && srv.lastOffered.CompareAndSwap(last, now)
}

// serverAddrs returns the addresses of as on the IPs of srv's endpoints
// (at most maxSessionAddrs, without duplicates).
func serverAddrs(srv *peer, as []netip.AddrPort) []netip.AddrPort {
	var ips []netip.Addr
	if c := srv.candidates.Load(); c != nil {
		for _, ap := range *c {
			ips = append(ips, ap.Addr())
		}
	}
	var addrs []netip.AddrPort
	for _, ap := range as {
		ap = unmap(ap)
		if !ap.IsValid() || ap.Port() == 0 || ap.Addr().IsUnspecified() || !slices.Contains(ips, ap.Addr()) || slices.Contains(addrs, ap) {
			continue
		}
		if addrs = append(addrs, ap); len(addrs) == maxSessionAddrs {
			break
		}
	}
	return addrs
}

// rebuildSessionsLocked publishes the session table from the peers.
func (b *Bind) rebuildSessionsLocked() {
	m := make(map[uint32]*prSession)
	for _, pe := range b.peers {
		if s := pe.p.pr.Load(); s != nil {
			if s.server.removed.Load() || !s.server.relayServer.Load() {
				pe.p.pr.Store(nil)
				continue
			}
			m[s.vni] = s
		}
	}
	b.pr.sessions.Store(&m)
}

// bindSession sends BindRelay to each of the server's addresses.
func (b *Bind) bindSession(s *prSession, now int64) {
	s.lastBind.Store(now)
	for _, ap := range s.addrs {
		b.sendControl(s, ap, &disco.BindRelay{VNI: s.vni})
	}
}

// pingSession pings s's peer through the session.
func (b *Bind) pingSession(s *prSession, res chan PingResult) error {
	dp := s.p.disco.Load()
	if dp == nil {
		return errors.New("bind: peer has no disco key")
	}
	var tx [12]byte
	rand.Read(tx[:])
	now := time.Now().UnixNano()
	s.lastPing.Store(now)
	pp := &pendingPing{p: s.p, via: s, at: now, res: res}
	b.disco.mu.Lock()
	if len(b.disco.pending) >= maxPendingPings {
		b.disco.mu.Unlock()
		return errors.New("bind: too many pings in flight")
	}
	b.disco.pending[tx] = pp
	b.disco.mu.Unlock()
	return b.sendPeerRelay(s, [][]byte{b.discoPacket(dp, &disco.Ping{TxID: tx, NodeKey: b.disco.nodeKey})})
}

// maybePingSession pings p through its session if it has been quiet for
// heartbeatAfter, at most every bindEvery: traffic that resumes checks it.
func (b *Bind) maybePingSession(p *peer, now int64) {
	s := p.pr.Load()
	if s == nil || s.addr.Load() == nil || now-s.ep.lastRecv.Load() < int64(heartbeatAfter) {
		return
	}
	last := s.lastPing.Load()
	if now-last < int64(bindEvery) || !s.lastPing.CompareAndSwap(last, now) {
		return
	}
	b.pingSession(s, nil)
}

// pingBackGap is the least time between two pings through a session
// that answer the peer's pings.
const pingBackGap = 20 * time.Millisecond

// pingBackSession pings s's peer after a ping from it came through s
// while s is unconfirmed: at once, or pingBackGap after our last ping.
// That ping of ours may have reached the server before the peer was
// bound there, which drops it; without one sent after the peer's, we
// would wait for Maintain's next ping (a second or two) to confirm the
// session the peer already uses.
func (b *Bind) pingBackSession(s *prSession, now int64) {
	wait := s.lastPing.Load() + int64(pingBackGap) - now
	if wait <= 0 {
		b.pingSession(s, nil)
		return
	}
	if !s.pingBack.CompareAndSwap(false, true) {
		return
	}
	time.AfterFunc(time.Duration(wait), func() {
		s.pingBack.Store(false)
		if s.confirmed.Load() == 0 && s.p.pr.Load() == s && !s.p.removed.Load() {
			b.pingSession(s, nil)
		}
	})
}

// maintainPeerRelay keeps p's session going (Maintain calls it): binds
// again while unbound, pings the peer through it while unconfirmed or
// quiet and traffic flows, and drops it when it died.
func (b *Bind) maintainPeerRelay(p *peer, now int64) {
	s := p.pr.Load()
	if s == nil {
		return
	}
	conf := s.confirmed.Load()
	dead := conf == 0 && now-s.created > int64(sessionSetup) ||
		conf != 0 && now-s.ep.lastRecv.Load() > int64(sessionDead)
	if dead {
		b.mu.Lock()
		if p.pr.CompareAndSwap(s, nil) {
			b.rebuildSessionsLocked()
		}
		b.mu.Unlock()
		b.log.Info("peer relay session dropped", "peer", p.key.ShortString(), "vni", s.vni)
		return
	}
	if s.addr.Load() == nil {
		if now-s.lastBind.Load() >= int64(bindEvery) {
			b.bindSession(s, now)
		}
		return
	}
	active := now-max(p.lastSend.Load(), p.lastWGRecv.Load()) < int64(sessionActive)
	quietFor := now - s.ep.lastRecv.Load()
	if (conf == 0 || active && quietFor >= int64(heartbeatAfter)) && now-s.lastPing.Load() >= int64(bindEvery) {
		if conf != 0 && quietFor > int64(suspectAfter) {
			// The server may have lost our binding (it restarted,
			// or our NAT mapping changed): bind again.
			b.bindSession(s, now)
		}
		b.pingSession(s, nil)
	}
}

// handlePeerRelay handles a peer relay packet from src. For WireGuard
// from the session's peer it moves the packet to the front of pkt and
// returns the session's endpoint and the packet's length; otherwise nil.
func (b *Bind) handlePeerRelay(src netip.AddrPort, pkt []byte, now int64) (*Endpoint, int) {
	typ, vni, ok := udprelay.ParseHeader(pkt)
	if !ok || !b.disco.on {
		return nil, 0
	}
	tbl := b.pr.sessions.Load()
	if tbl == nil {
		return nil, 0
	}
	s := (*tbl)[vni]
	if s == nil || s.p.removed.Load() {
		return nil, 0
	}
	inner := pkt[udprelay.HeaderLen:]
	if typ == udprelay.TypeControl {
		b.handleControl(s, src, inner, now)
		return nil, 0
	}
	if ap := s.addr.Load(); ap == nil || *ap != src {
		return nil, 0
	}
	if disco.IsPacket(inner) {
		b.handleSessionDisco(s, inner, now)
		return nil, 0
	}
	if kind, _ := classify(inner); kind == kindGarbage {
		return nil, 0
	}
	p := s.p
	if !b.admitHandshake(p, s.ep, inner, now) {
		return nil, 0
	}
	b.wake(p)
	s.ep.lastRecv.Store(now)
	p.lastWGRecv.Store(now)
	p.traffic.received(pathPeerRelay, len(inner))
	b.noteTransport(p, inner, now)
	n := copy(pkt, inner)
	return s.ep, n
}

// handleControl handles a disco packet from s's server: a Challenge from
// one of its addresses, which this node answers from the same socket.
func (b *Bind) handleControl(s *prSession, src netip.AddrPort, pkt []byte, now int64) {
	sender, sealed, ok := disco.Sender(pkt)
	if !ok || sender != s.sdisco.key {
		return
	}
	known := false
	for _, ap := range s.addrs {
		known = known || ap == src
	}
	if !known {
		return
	}
	m, err := disco.Open(s.sdisco.shared(), sealed)
	if err != nil {
		return
	}
	ch, ok := m.(*disco.Challenge)
	if !ok || ch.VNI != s.vni {
		return
	}
	// The first of the server's addresses to answer is the session's;
	// binding more than one would leave the server forwarding to an
	// address of ours other than the one we take its packets from.
	if !s.addr.CompareAndSwap(nil, &src) {
		if old := s.addr.Load(); *old != src {
			return
		}
	} else {
		b.log.Debug("peer relay session bound", "peer", s.p.key.ShortString(), "server", src.String(), "vni", s.vni)
	}
	b.sendControl(s, src, &disco.Answer{VNI: s.vni, Challenge: ch.Challenge})
	// Ping the peer through it: once the peer has bound too, the pong
	// comes back and the session is in use.
	if now-s.lastPing.Load() >= int64(bindEvery)/4 {
		b.pingSession(s, nil)
	}
}

// handleSessionDisco handles a disco packet from s's peer that came
// through the session: pings are answered through it, and a pong
// confirms it.
func (b *Bind) handleSessionDisco(s *prSession, pkt []byte, now int64) {
	p := s.p
	dp := p.disco.Load()
	sender, sealed, ok := disco.Sender(pkt)
	if !ok || dp == nil || sender != dp.key {
		return
	}
	m, err := disco.Open(dp.shared(), sealed)
	if err != nil {
		return
	}
	switch m := m.(type) {
	case *disco.Ping:
		if m.NodeKey != p.key {
			return
		}
		s.ep.lastRecv.Store(now)
		b.sendPeerRelay(s, [][]byte{b.discoPacket(dp, &disco.Pong{TxID: m.TxID})})
		// The peer reaches us through it; make sure we reach it too.
		if s.confirmed.Load() == 0 {
			b.pingBackSession(s, now)
		}
	case *disco.Pong:
		pp := b.takePending(m.TxID, func(pp *pendingPing) bool { return pp.via == s })
		if pp == nil {
			return
		}
		lat := time.Duration(now - pp.at)
		s.ep.lastRecv.Store(now)
		s.ep.latency.Store(int64(lat))
		if s.confirmed.CompareAndSwap(0, now) {
			b.log.Info("peer relay path confirmed", "peer", p.key.ShortString(), "server", s.server.key.ShortString(), "latency", lat)
		}
		if pp.res != nil {
			r := PingResult{Latency: lat, Path: "peer-relay", Via: s.server.key}
			if ap := s.addr.Load(); ap != nil {
				r.Endpoint = *ap
			}
			select {
			case pp.res <- r:
			default:
			}
		}
		b.resendInit(p, now)
	}
}
