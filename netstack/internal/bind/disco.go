package bind

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"beam.dev/beam/netstack/internal/disco"
	"beam.dev/beam/types/key"
)

// Path discovery timing.
const (
	// heartbeatAfter is how long a direct path may be silent while we
	// send before it is pinged.
	heartbeatAfter = 500 * time.Millisecond
	// heartbeatEvery bounds heartbeat pings per peer.
	heartbeatEvery = 500 * time.Millisecond
	// suspectAfter is how long a direct path may be silent while we send
	// before the relay carries a copy of the traffic (see Bind.route).
	suspectAfter = time.Second
	// relayProbeEvery is how often a peer reached through the relay has
	// its direct addresses pinged (and is sent a call-me-maybe) while we
	// send to it.
	relayProbeEvery = 3 * time.Second
	// directProbeEvery is how often a peer with a direct path has all
	// its addresses pinged again while we send to it, to find a better
	// one.
	directProbeEvery = 30 * time.Second
	// dualWindow is how long after a path change packets go over both
	// the new direct path and the relay, so none are lost if the new
	// path turns out one-way.
	dualWindow = 1500 * time.Millisecond
	// replyPingEvery bounds the pings sent back to a peer whose ping
	// arrived over an unconfirmed address.
	replyPingEvery = 500 * time.Millisecond
	// pingTimeout is how long a ping waits for its pong.
	pingTimeout = 5 * time.Second
	// maxPendingPings bounds pings waiting for a pong (room for two
	// birthday sprays, see birthday.go, and everything else).
	maxPendingPings = 8192
	// maxProbeAddrs bounds the addresses one probe pings.
	maxProbeAddrs = 32
	// maxInitResends and resendInitEvery bound how often one handshake
	// initiation is sent again (see resendInit).
	maxInitResends  = 4
	resendInitEvery = 100 * time.Millisecond
	// initRetryAfter is how long an initiation may go unanswered
	// before Maintain sends it again.
	initRetryAfter = time.Second
)

// discoPeer is a peer's disco key and the box key shared with it.
type discoPeer struct {
	key key.DiscoPublic
	// shared returns the box key, computed on first use: it costs an
	// X25519 operation, and most peers of a large netmap never exchange
	// a disco message with this node.
	shared func() key.DiscoShared
}

// newDiscoPeer returns the disco state for a peer with disco key k.
func (b *Bind) newDiscoPeer(k key.DiscoPublic) *discoPeer {
	priv := b.disco.priv
	return &discoPeer{key: k, shared: sync.OnceValue(func() key.DiscoShared { return priv.Shared(k) })}
}

// discoState is the disco part of a Bind.
type discoState struct {
	on       bool
	priv     key.DiscoPrivate
	pub      key.DiscoPublic
	nodeKey  key.NodePublic
	localEps atomic.Pointer[[]netip.AddrPort] // ours, for call-me-maybe

	mu      sync.Mutex // guards the following
	pending map[[12]byte]*pendingPing
}

// pendingPing is a ping waiting for its pong.
type pendingPing struct {
	p      *peer
	sock   *extraSock     // the extra socket it went out of; nil for the bind's own
	via    *prSession     // the peer relay session it went through; nil if none
	dst    netip.AddrPort // direct destination; invalid if sent through a relay
	region int            // relay region when dst is invalid
	at     int64          // unix nanos sent
	res    chan PingResult
}

// PingResult is the answer to Bind.Ping.
type PingResult struct {
	// Latency is the round-trip time of the ping.
	Latency time.Duration
	// Path is "direct", "peer-relay" or "relay": the path the pong came
	// back over.
	Path string
	// Via is the peer relay server's node for a "peer-relay" path.
	Via key.NodePublic
	// Endpoint is the peer's address for a direct path.
	Endpoint netip.AddrPort
	// Region is the relay region for a relayed path.
	Region int
}

// initState is the last handshake initiation sent to a peer, kept so it
// can be sent again the moment the peer shows it is up (see resendInit).
type initState struct {
	mu       sync.Mutex // guards the following
	pkt      []byte
	at       int64
	resent   int   // times pkt was sent again
	resentAt int64 // when it last was
	// answered is set once a handshake response or cookie reply naming
	// pkt's sender index arrived (see noteAnswer).
	answered bool
}

// DiscoPublic returns the bind's disco public key; zero when disco is off.
func (b *Bind) DiscoPublic() key.DiscoPublic { return b.disco.pub }

// SetLocalEndpoints sets the node's own endpoints, which call-me-maybe
// messages tell peers to ping.
func (b *Bind) SetLocalEndpoints(eps []netip.AddrPort) {
	c := append([]netip.AddrPort(nil), eps...)
	b.disco.localEps.Store(&c)
}

// WriteTo sends one datagram from the bind's UDP socket of dst's family
// (for STUN, so the mapping learned is the one WireGuard uses).
func (b *Bind) WriteTo(pkt []byte, dst netip.AddrPort) error {
	return b.writeUDP([][]byte{pkt}, unmap(dst))
}

// Maintain drops pings that went unanswered, sends again handshake
// initiations unanswered for a second (a lost initiation would otherwise
// cost WireGuard's 5 s retry) and pings direct paths that went quiet
// while traffic flows (see watchDirect); the engine calls it about once a
// second.
func (b *Bind) Maintain() {
	now := time.Now().UnixNano()
	b.disco.mu.Lock()
	for id, pp := range b.disco.pending {
		if now-pp.at > int64(pingTimeout) {
			delete(b.disco.pending, id)
		}
	}
	b.disco.mu.Unlock()
	b.mu.Lock()
	ps := make([]*peer, 0, len(b.peers))
	for _, pe := range b.peers {
		ps = append(ps, pe.p)
	}
	b.mu.Unlock()
	for _, p := range ps {
		p.init.mu.Lock()
		waiting := p.init.pkt != nil && now-p.init.at >= int64(initRetryAfter) && now-p.init.resentAt >= int64(initRetryAfter)
		p.init.mu.Unlock()
		if waiting {
			b.resendInit(p, now)
		}
		b.watchDirect(p, now)
		b.maintainPeerRelay(p, now)
	}
}

// watchDirect checks p's direct path when it went quiet while WireGuard
// traffic flows to or from p. Send does this for packets we send; this
// covers the side that only receives (or waits for a retransmission):
// when both NATs forget their mappings, each NAT drops the other side's
// packets as unsolicited until its own host sends something out, and a
// host that nothing reaches sends nothing. A heartbeat ping reopens our
// NAT towards the peer, which is sending to us; silent past
// suspectAfter, the peer is also probed, whose call-me-maybe through the
// relay also reopens our relay connection if the NAT forgot it too.
func (b *Bind) watchDirect(p *peer, now int64) {
	if p.disco.Load() == nil || p.removed.Load() {
		return
	}
	best := p.best.Load()
	if best == nil || best.isRelay() {
		return
	}
	if now-max(p.lastWGRecv.Load(), p.lastSend.Load()) > int64(staleAfter) {
		return // idle: the silence proves nothing
	}
	silence := now - best.lastRecv.Load()
	if silence <= int64(staleAfter) {
		b.maybeHeartbeat(p, best, now)
	}
	if silence > int64(suspectAfter) {
		b.maybeProbe(p, now, relayProbeEvery)
	}
}

// discoPacket seals m for dp.
func (b *Bind) discoPacket(dp *discoPeer, m disco.Message) []byte {
	return disco.AppendPacket(make([]byte, 0, 128), b.disco.pub, dp.shared(), m)
}

// ping sends a ping to p at dst, or through relay region when dst is
// invalid, and registers it; res, if non-nil, receives the result.
func (b *Bind) ping(p *peer, dp *discoPeer, dst netip.AddrPort, region int, res chan PingResult) error {
	return b.pingVia(p, dp, nil, dst, region, res)
}

// pingEp pings p over the direct path e.
func (b *Bind) pingEp(p *peer, dp *discoPeer, e *Endpoint, res chan PingResult) error {
	return b.pingVia(p, dp, e.sock, e.src, 0, res)
}

// pingVia is ping out of the extra socket sock (nil: the bind's own).
func (b *Bind) pingVia(p *peer, dp *discoPeer, sock *extraSock, dst netip.AddrPort, region int, res chan PingResult) error {
	var tx [12]byte
	rand.Read(tx[:])
	pp := &pendingPing{p: p, sock: sock, dst: dst, region: region, at: time.Now().UnixNano(), res: res}
	b.disco.mu.Lock()
	if len(b.disco.pending) >= maxPendingPings {
		b.disco.mu.Unlock()
		return errors.New("bind: too many pings in flight")
	}
	b.disco.pending[tx] = pp
	b.disco.mu.Unlock()
	pkt := b.discoPacket(dp, &disco.Ping{TxID: tx, NodeKey: b.disco.nodeKey})
	if dst.IsValid() {
		if best := p.best.Load(); best != nil && best.src == dst && best.sock == sock {
			p.lastDirectPing.Store(pp.at)
			if u := p.unansweredSince.Load(); u <= best.lastRecv.Load() {
				p.unansweredSince.CompareAndSwap(u, pp.at)
			}
		}
		if sock != nil {
			return b.sendExtra(sock, [][]byte{pkt}, dst)
		}
		return b.sendTo([][]byte{pkt}, dst)
	}
	return b.sendRelay([][]byte{pkt}, p, region)
}

// directAddrs returns the addresses a probe of p pings: its candidates,
// the addresses its call-me-maybe named and the ones learned from it.
func (b *Bind) directAddrs(p *peer) []netip.AddrPort {
	out := append([]netip.AddrPort(nil), *p.candidates.Load()...)
	b.mu.Lock()
	if pe := b.peers[p.key]; pe != nil && pe.p == p {
		out = append(out, pe.cmm...)
		out = append(out, pe.learned...)
	}
	b.mu.Unlock()
	seen := make(map[netip.AddrPort]bool, len(out))
	res := out[:0]
	for _, ap := range out {
		if !seen[ap] && ap.IsValid() {
			seen[ap] = true
			res = append(res, ap)
		}
	}
	if len(res) > maxProbeAddrs {
		res = res[:maxProbeAddrs]
	}
	return res
}

// probe pings every direct address of p and, through the relay, asks p to
// ping ours (call-me-maybe), so both NATs open at about the same time.
func (b *Bind) probe(p *peer, now int64) { b.probeFor(p, now, nil) }

// probeFor is probe whose pongs also go to res, if non-nil.
func (b *Bind) probeFor(p *peer, now int64, res chan PingResult) {
	dp := p.disco.Load()
	if dp == nil || p.removed.Load() {
		return
	}
	p.lastProbe.Store(now)
	for _, ap := range b.directAddrs(p) {
		b.ping(p, dp, ap, 0, res)
	}
	if region := b.relayRegionFor(p); region != 0 {
		var eps []netip.AddrPort
		if l := b.disco.localEps.Load(); l != nil {
			eps = *l
		}
		cmm := &disco.CallMeMaybe{Endpoints: eps}
		// Behind a hard NAT, open many ports towards the peer first and
		// ask it to probe ours (birthday.go).
		active := res != nil || now-p.lastSend.Load() < int64(staleAfter)
		if ip := b.birthday(p, dp, now, active); ip.IsValid() {
			cmm.HardNAT = []netip.Addr{ip}
		}
		b.sendRelay([][]byte{b.discoPacket(dp, cmm)}, p, region)
	}
}

// maybeProbe probes p if it was last probed more than every ago.
func (b *Bind) maybeProbe(p *peer, now int64, every time.Duration) {
	last := p.lastProbe.Load()
	if now-last < int64(every) || !p.lastProbe.CompareAndSwap(last, now) {
		return
	}
	b.probe(p, now)
}

// maybeHeartbeat pings p's direct path best if nothing came over it for
// heartbeatAfter, at most every heartbeatEvery.
func (b *Bind) maybeHeartbeat(p *peer, best *Endpoint, now int64) {
	if now-best.lastRecv.Load() < int64(heartbeatAfter) {
		return
	}
	last := p.lastHeartbeat.Load()
	if now-last < int64(heartbeatEvery) || !p.lastHeartbeat.CompareAndSwap(last, now) {
		return
	}
	if dp := p.disco.Load(); dp != nil {
		b.pingEp(p, dp, best, nil)
	}
}

// relayRegionFor is the relay region to reach p through, or 0.
func (b *Bind) relayRegionFor(p *peer) int {
	if b.rs.relay == nil {
		return 0
	}
	if home := int(p.home.Load()); home != 0 {
		return home
	}
	if best := p.best.Load(); best != nil && best.isRelay() {
		return int(best.src.Port())
	}
	return 0
}

// handleDisco processes a disco packet from src: a UDP source (on the
// extra socket sock, if not nil), or (region non-zero) the relay region it
// came through, sent by the node relaySrc (which the relay authenticated).
func (b *Bind) handleDisco(src netip.AddrPort, region int, relaySrc key.NodePublic, pkt []byte, sock *extraSock) {
	if !b.disco.on {
		return
	}
	sender, sealed, ok := disco.Sender(pkt)
	if !ok {
		return
	}
	b.mu.Lock()
	pe := b.byDisco[sender]
	b.mu.Unlock()
	if pe == nil {
		return
	}
	p := pe.p
	dp := p.disco.Load()
	if dp == nil || dp.key != sender || p.removed.Load() {
		return
	}
	if region != 0 && relaySrc != p.key || sock != nil && sock.p != p {
		return
	}
	m, err := disco.Open(dp.shared(), sealed)
	if err != nil {
		return
	}
	now := time.Now().UnixNano()
	switch m := m.(type) {
	case *disco.Ping:
		if m.NodeKey != p.key {
			return
		}
		pong := b.discoPacket(dp, &disco.Pong{TxID: m.TxID, Src: src})
		switch {
		case region != 0:
			b.sendRelay([][]byte{b.discoPacket(dp, &disco.Pong{TxID: m.TxID})}, p, region)
		case sock != nil:
			// Birthday probing found a port of ours the peer reaches.
			e := b.birthdayHit(sock, src)
			if e == nil {
				return
			}
			b.sendExtra(sock, [][]byte{pong}, src)
			if best := p.best.Load(); best != e || !fresh(best, now) {
				last := p.lastReply.Load()
				if now-last >= int64(replyPingEvery) && p.lastReply.CompareAndSwap(last, now) {
					b.pingEp(p, dp, e, nil)
				}
			}
		default:
			// Packets from src are this peer's from now on.
			b.mu.Lock()
			if cur := b.peers[p.key]; cur == pe {
				b.learnLocked(pe, src)
			}
			b.mu.Unlock()
			b.sendTo([][]byte{pong}, src)
			// The ping opened the way from src to us; ping back so the
			// peer's NAT lets our pings in and we confirm src too.
			if best := p.best.Load(); best == nil || best.isRelay() || !fresh(best, now) {
				last := p.lastReply.Load()
				if now-last >= int64(replyPingEvery) && p.lastReply.CompareAndSwap(last, now) {
					b.ping(p, dp, src, 0, nil)
				}
			}
		}
	case *disco.Pong:
		pp := b.takePending(m.TxID, func(pp *pendingPing) bool {
			return pp.p == p && pp.sock == sock && pp.via == nil && (pp.dst == src || (region != 0 && !pp.dst.IsValid()))
		})
		if pp == nil {
			return
		}
		lat := time.Duration(now - pp.at)
		res := PingResult{Latency: lat}
		if region == 0 {
			b.confirmDirect(pe, src, sock, lat, now)
			res.Path, res.Endpoint = "direct", src
		} else {
			res.Path, res.Region = "relay", region
		}
		if pp.res != nil {
			select {
			case pp.res <- res:
			default:
			}
		}
	case *disco.CallMeMaybe:
		eps := make([]netip.AddrPort, 0, len(m.Endpoints))
		for _, ap := range m.Endpoints {
			if ap = unmap(ap); ap.IsValid() && ap.Port() != 0 {
				eps = append(eps, ap)
			}
		}
		b.mu.Lock()
		if cur := b.peers[p.key]; cur == pe {
			b.setCMMLocked(pe, eps)
		}
		b.mu.Unlock()
		for _, ap := range eps {
			b.ping(p, dp, ap, 0, nil)
		}
		if region != 0 && len(m.HardNAT) > 0 {
			b.maybeSpray(p, m.HardNAT, now)
		}
	case *disco.Allocate:
		b.serveAllocate(p, dp, m, now)
		return
	case *disco.Allocation:
		b.takeAllocation(p, dp, m, now)
		return
	case *disco.BindRelay, *disco.Challenge, *disco.Answer:
		return // only on a relay socket
	}
	b.resendInit(p, now)
}

// setCMMLocked records the endpoints a peer's call-me-maybe named, so
// packets from them are tied to the peer.
func (b *Bind) setCMMLocked(pe *peerEntry, eps []netip.AddrPort) {
	if len(eps) > maxProbeAddrs {
		eps = eps[:maxProbeAddrs]
	}
	var ed tableEdit
	ed.drop(pe)
	keep := make(map[netip.AddrPort]bool, len(eps))
	for _, ap := range eps {
		keep[ap] = true
	}
	for _, ap := range pe.cmm {
		if !keep[ap] && !b.isCandidate(pe.p, ap) && !contains(pe.learned, ap) {
			if best := pe.p.best.Load(); best == nil || best.src != ap {
				delete(pe.eps, ap)
			}
		}
	}
	pe.cmm = eps
	for _, ap := range eps {
		if pe.eps[ap] == nil {
			pe.eps[ap] = newEndpoint(pe.p, ap)
		}
	}
	ed.keep(pe)
	b.patchLocked(&ed)
}

func contains(s []netip.AddrPort, ap netip.AddrPort) bool {
	for _, x := range s {
		if x == ap {
			return true
		}
	}
	return false
}

// confirmDirect records that a pong came back from ap after lat and makes
// ap the peer's path if it is the first working direct path, the current
// one has stopped answering (quiet), or it is better than the current one
// (clearly faster, or IPv6 about as fast as IPv4: see betterPath).
func (b *Bind) confirmDirect(pe *peerEntry, ap netip.AddrPort, sock *extraSock, lat time.Duration, now int64) {
	p := pe.p
	var e *Endpoint
	if sock != nil {
		if e = b.birthdayHit(sock, ap); e == nil {
			return
		}
	} else {
		b.mu.Lock()
		if b.peers[p.key] != pe {
			b.mu.Unlock()
			return
		}
		e = b.learnLocked(pe, ap)
		b.mu.Unlock()
	}
	e.lastRecv.Store(now)
	e.latency.Store(int64(lat))
	best := p.best.Load()
	switch {
	case best == e:
		return
	case best == nil || best.isRelay() || !fresh(best, now) || quiet(p, best, now):
		if p.best.CompareAndSwap(best, e) {
			p.dualUntil.Store(now + int64(dualWindow))
			b.log.Info("direct path confirmed", "peer", p.key.ShortString(), "addr", ap.String(), "latency", lat)
		}
	default:
		bl := time.Duration(best.latency.Load())
		if betterPath(ap, lat, best.src, bl) {
			if p.best.CompareAndSwap(best, e) {
				b.log.Info("better direct path", "peer", p.key.ShortString(), "addr", ap.String(), "latency", lat, "was", best.src.String(), "was_latency", bl)
			}
		}
	}
}

// resendInit sends the peer's last handshake initiation again if it is
// recent and went unanswered: the peer just showed it is up (it sent disco),
// so it probably dropped the first copy while it did not know us yet, and
// wireguard-go would wait REKEY_TIMEOUT (5 s) before retrying. A copy the
// peer already answered makes its bind send the answer again (initcopy.go):
// ours was lost. A disco message can also be old (sent before the peer
// forgot and re-learned us), so an initiation is resent up to
// maxInitResends times, resendInitEvery apart. Only an answer to it counts
// as one: other WireGuard traffic from the peer (data of a session this
// node's previous process had, which is what makes a restarted node
// start a handshake) does not.
func (b *Bind) resendInit(p *peer, now int64) {
	p.init.mu.Lock()
	pkt := p.init.pkt
	ok := pkt != nil && p.init.resent < maxInitResends && now-p.init.resentAt >= int64(resendInitEvery) &&
		now-p.init.at < int64(staleAfter) && !p.init.answered
	if ok {
		p.init.resent++
		p.init.resentAt = now
	}
	p.init.mu.Unlock()
	if ok {
		b.log.Debug("peer is up; resending handshake initiation", "peer", p.key.ShortString())
		b.spray([][]byte{pkt}, p, p.best.Load(), b.relayRegionFor(p))
	}
}

// noteInitiation remembers an initiation wireguard-go sends to p.
func (p *peer) noteInitiation(pkt []byte, now int64) {
	p.init.mu.Lock()
	p.init.pkt = append(p.init.pkt[:0], pkt...)
	p.init.at = now
	p.init.resent = 0
	p.init.resentAt = 0
	p.init.answered = false
	p.init.mu.Unlock()
}

// noteAnswer marks p's last initiation answered if pkt, a WireGuard
// datagram from p, is a handshake response or cookie reply to it.
func (p *peer) noteAnswer(pkt []byte) {
	var receiver []byte
	switch {
	case len(pkt) == responseSize && binary.LittleEndian.Uint32(pkt) == msgResponse:
		receiver = pkt[8:12]
	case len(pkt) == cookieReplySize && binary.LittleEndian.Uint32(pkt) == msgCookie:
		receiver = pkt[4:8]
	default:
		return
	}
	p.init.mu.Lock()
	if len(p.init.pkt) == initiationSize && bytes.Equal(p.init.pkt[4:8], receiver) {
		p.init.answered = true
	}
	p.init.mu.Unlock()
}

// initWaiting reports whether p's last initiation went unanswered.
func (p *peer) initWaiting() bool {
	p.init.mu.Lock()
	defer p.init.mu.Unlock()
	return p.init.pkt != nil && !p.init.answered
}

// Timing of Bind.Ping.
const (
	// pingRetryFirst and pingRetryMax: an unanswered Ping sends its
	// pings again after pingRetryFirst, then at doubling intervals up to
	// pingRetryMax, so a ping sent before the peer knew us (or before
	// its address or relay region reached us) is answered soon after.
	pingRetryFirst = 100 * time.Millisecond
	pingRetryMax   = time.Second
	// pingDirectGrace is how long, beyond the relay's round trip, Ping
	// waits after a pong through the relay for one over a direct path.
	pingDirectGrace = 50 * time.Millisecond
	// maxPingResults bounds the pongs one Ping keeps; it needs the first
	// direct one and the first relayed one, and later ones are dropped.
	maxPingResults = 16
)

// Ping sends disco pings to peer k and waits for a pong, or ctx. A direct
// path in use (answering within staleAfter) is pinged alone. Otherwise
// every path is tried at once: the direct address last used, every
// candidate address, the peer's relay, and a call-me-maybe through the
// relay so the peer pings back (an idle path's NAT mappings may have
// lapsed). A pong over a direct path wins; a relayed one is reported if
// no direct pong follows within the relay's round trip plus
// pingDirectGrace. Unanswered pings are sent again, backing off from
// pingRetryFirst to pingRetryMax, each time to the paths known then.
func (b *Bind) Ping(ctx context.Context, k key.NodePublic) (PingResult, error) {
	b.mu.Lock()
	pe := b.peers[k]
	b.mu.Unlock()
	if pe == nil {
		return PingResult{}, fmt.Errorf("bind: unknown peer %s", k.ShortString())
	}
	p := pe.p
	if p.disco.Load() == nil || !b.disco.on {
		return PingResult{}, fmt.Errorf("bind: peer %s has no disco key", k.ShortString())
	}
	res := make(chan PingResult, maxPingResults)
	if err := b.pingRound(p, res); err != nil {
		return PingResult{}, fmt.Errorf("bind: ping: %w", err)
	}
	retry := time.NewTimer(pingRetryFirst)
	defer retry.Stop()
	wait := pingRetryFirst
	var (
		relayed *PingResult
		grace   <-chan time.Time
	)
	for {
		select {
		case r := <-res:
			if r.Path == "direct" {
				return r, nil
			}
			if relayed != nil && relayed.Path == "relay" && r.Path == "peer-relay" {
				relayed = &r
			}
			if relayed == nil {
				relayed = &r
				t := time.NewTimer(r.Latency + pingDirectGrace)
				defer t.Stop()
				grace = t.C
			}
		case <-grace:
			return *relayed, nil
		case <-retry.C:
			if relayed == nil {
				b.pingRound(p, res)
				wait = min(2*wait, pingRetryMax)
				retry.Reset(wait)
			}
		case <-ctx.Done():
			if relayed != nil {
				return *relayed, nil
			}
			return PingResult{}, ctx.Err()
		}
	}
}

// pingRound sends one round of Ping's pings to p (see Ping), their pongs
// going to res. It fails only if no path to p is known.
func (b *Bind) pingRound(p *peer, res chan PingResult) error {
	dp := p.disco.Load()
	if dp == nil || p.removed.Load() {
		return fmt.Errorf("peer %s is gone", p.key.ShortString())
	}
	now := time.Now().UnixNano()
	best := p.best.Load()
	if best != nil && !best.isRelay() && fresh(best, now) {
		return b.ping(p, dp, best.src, 0, res)
	}
	if s := p.pr.Load(); s != nil && s.addr.Load() != nil {
		b.pingSession(s, res)
	}
	region := b.relayRegionFor(p)
	addrs := b.directAddrs(p)
	if best != nil && !best.isRelay() && !slices.Contains(addrs, best.src) {
		b.ping(p, dp, best.src, 0, res)
		addrs = append(addrs, best.src)
	}
	if len(addrs) == 0 && region == 0 {
		return fmt.Errorf("no path to peer %s", p.key.ShortString())
	}
	// The direct addresses, and a call-me-maybe through the relay.
	b.probeFor(p, now, res)
	if region != 0 {
		b.ping(p, dp, netip.AddrPort{}, region, res)
	}
	return nil
}

// takePending removes and returns the ping a pong with tx answers, if
// there is one and match accepts it (the pong came the way the ping
// went); else it returns nil and leaves the ping waiting.
func (b *Bind) takePending(tx [12]byte, match func(*pendingPing) bool) *pendingPing {
	b.disco.mu.Lock()
	defer b.disco.mu.Unlock()
	pp := b.disco.pending[tx]
	if pp == nil || !match(pp) {
		return nil
	}
	delete(b.disco.pending, tx)
	return pp
}
