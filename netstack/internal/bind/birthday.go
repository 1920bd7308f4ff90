package bind

import (
	"errors"
	"maps"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"beam.dev/beam/netstack/internal/disco"
	"beam.dev/beam/types/key"
)

// Birthday probing: a direct path between a node behind an
// endpoint-dependent ("hard") NAT, which maps each destination to another
// public port, and a node behind an endpoint-independent ("easy") one. The
// easy side's public address is known (STUN), but the port the hard NAT
// picks towards it is not, so plain hole punching fails. Instead:
//
//   - The hard side (it knows it is hard from STUN, see SetHardNAT), when
//     it wants to reach a peer it has no direct path to, opens
//     birthdaySockets extra UDP sockets and pings the peer's public IPv4
//     addresses from each: its NAT opens that many random ports towards
//     the peer. Its call-me-maybe then names its public IP with port 0
//     (disco.CallMeMaybe.HardNAT): "probe my ports".
//   - The easy side, on such a call-me-maybe through the relay (the only
//     way a node asks to be probed: we never spray an address the peer
//     did not name, and only a public one that is the address of one of
//     the peer's endpoints from the coordinator, each IP at most once per
//     birthdayEvery), pings sprayProbes random ports of that IP, at most
//     sprayBatch every sprayEvery, for at most birthdayWindow, and stops
//     at the first pong. With 256 open ports out of the 64512 a NAT picks
//     from, n probes find one with probability 1-exp(-256*n/64512): half
//     the time within 175 probes, 98% within 1024, 99.97% within 2048.
//   - A probe that lands on an open port reaches the hard side's extra
//     socket, which answers (its NAT lets the answer out, and the easy
//     side's NAT lets it in: the easy side sent to that port). That
//     socket becomes the path: the others are closed, WireGuard packets
//     it receives go to wireguard-go through the relay receive function's
//     queue, and packets to the peer leave from it.
//
// Traffic goes through the relay meanwhile. Attempts are bounded: one per
// peer per birthdayEvery in each role, at most maxBirthdays at once.
const (
	birthdaySockets = 256
	// birthdayOpenEvery paces the hard side: one socket's pings per tick.
	birthdayOpenEvery = time.Millisecond
	sprayProbes       = 2048
	sprayBatch        = 8
	sprayEvery        = 8 * time.Millisecond
	// birthdayWindow bounds an attempt: the spray, and how long the hard
	// side's sockets wait for a probe.
	birthdayWindow = 10 * time.Second
	// birthdayEvery is the least time between two attempts for a peer.
	birthdayEvery = 30 * time.Second
	// birthdayProbeAfter is how long after the last probe of a peer
	// traffic to it starts an attempt (at once, rather than at the next
	// relayProbeEvery).
	birthdayProbeAfter = 250 * time.Millisecond
	// maxBirthdays bounds the attempts running at once in each role.
	maxBirthdays = 2
	// sprayPortMin is the lowest port sprayed: NATs map to 1024-65535.
	sprayPortMin = 1024
	// extraReadSize is the read buffer of an extra socket that is not
	// (yet) a path: disco messages only.
	extraReadSize = 2048
)

// cgnat is the shared address space of carrier-grade NATs (RFC 6598),
// never a public address.
var cgnat = netip.MustParsePrefix("100.64.0.0/10")

// birthdayState is a peer's birthday probing state.
type birthdayState struct {
	// opened is when the last attempt as the hard side began (unix
	// nanos); read without bmu to decide whether to start one.
	opened atomic.Int64
	// peerHard is when the peer last said it is behind a hard NAT too
	// (its call-me-maybe named a hard-NAT IP): probes cannot meet then.
	peerHard atomic.Int64
	// The following are guarded by Bind.bmu.
	socks    []*extraSock // the current attempt's sockets, or the winner
	won      *extraSock   // the socket the peer reached; nil if none
	sprayed  int64        // when the last spray began
	spraying bool
}

// extraSock is one extra UDP socket of birthday probing, for one peer.
type extraSock struct {
	conn   *net.UDPConn
	p      *peer
	opened int64 // the attempt it belongs to (birthdayState.opened)
	won    atomic.Bool
	closed atomic.Bool

	mu  sync.Mutex // guards eps
	eps map[netip.AddrPort]*Endpoint
}

func (s *extraSock) close() {
	if s.closed.CompareAndSwap(false, true) {
		s.conn.Close()
	}
}

// endpoint returns the socket's endpoint for the peer's address src,
// creating it (at most a few per socket) if create is set.
func (s *extraSock) endpoint(src netip.AddrPort, create bool) *Endpoint {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e := s.eps[src]; e != nil || !create || len(s.eps) >= 4 {
		return e
	}
	e := newEndpoint(s.p, src)
	e.sock = s
	s.eps[src] = e
	return e
}

// SetHardNAT tells the bind whether its NAT maps each destination to
// another port (STUN servers at different addresses saw different
// ports): ip is the public IPv4 address then, invalid otherwise or when
// unknown. Behind a hard NAT the bind takes the hard side of birthday
// probing with peers it has no direct path to.
func (b *Bind) SetHardNAT(ip netip.Addr) {
	if ip.IsValid() && !ip.Is4() {
		ip = netip.Addr{}
	}
	if old := b.hardNAT.Swap(&ip); old == nil || *old != ip {
		b.log.Info("NAT mapping", "varies_by_destination", ip.IsValid(), "public_ip", ip)
	}
}

// hard returns our public IP behind a hard NAT, or the zero Addr.
func (b *Bind) hard() netip.Addr {
	if ip := b.hardNAT.Load(); ip != nil {
		return *ip
	}
	return netip.Addr{}
}

// hasDirect reports whether p has a direct path that answered lately.
func hasDirect(p *peer, now int64) bool {
	best := p.best.Load()
	return best != nil && !best.isRelay() && fresh(best, now)
}

// wantBirthday reports whether sending to p should start birthday
// probing at once: we are behind a hard NAT, p has no direct path, and
// no attempt for p began within birthdayEvery.
func (b *Bind) wantBirthday(p *peer, now int64) bool {
	return !b.opts.RelayOnly && b.hard().IsValid() && !hasDirect(p, now) &&
		now-p.bday.opened.Load() >= int64(birthdayEvery) && now-p.bday.peerHard.Load() >= int64(birthdayEvery) &&
		p.disco.Load() != nil && b.relayRegionFor(p) != 0
}

// birthday starts (or continues) the hard side of birthday probing for
// p if we are behind a hard NAT, p has no direct path and we are trying
// to reach it (active: traffic or a ping). It returns our public IP to
// name in the call-me-maybe while an attempt runs, else the zero Addr.
func (b *Bind) birthday(p *peer, dp *discoPeer, now int64, active bool) netip.Addr {
	ip := b.hard()
	if !ip.IsValid() || b.opts.RelayOnly || hasDirect(p, now) || now-p.bday.peerHard.Load() < int64(birthdayEvery) {
		return netip.Addr{}
	}
	// Each socket pings the peer's public IPv4 addresses: a private,
	// loopback or link-local one would have another host of our own
	// network take hundreds of pings.
	var targets []netip.AddrPort
	for _, ap := range b.directAddrs(p) {
		if publicIPv4(ap.Addr()) {
			targets = append(targets, ap)
		}
	}
	st := &p.bday
	ps := b.peerList()
	b.bmu.Lock()
	opened := st.opened.Load()
	switch {
	case !b.bopen:
		b.bmu.Unlock()
		return netip.Addr{}
	case len(st.socks) > 0 && st.won == nil && now-opened < int64(birthdayWindow):
		b.bmu.Unlock()
		return ip // running: keep asking to be probed
	case !active || now-opened < int64(birthdayEvery):
		b.bmu.Unlock()
		return netip.Addr{}
	}
	// An attempt is due; whether it starts or not, the next is not
	// before birthdayEvery.
	st.opened.Store(now)
	if len(targets) == 0 || activeBirthdaysLocked(ps) >= maxBirthdays {
		b.bmu.Unlock()
		return netip.Addr{}
	}
	// A new attempt. An earlier winner no longer answers: drop it.
	old := st.socks
	st.socks, st.won = nil, nil
	stop := b.bstop
	b.bmu.Unlock()
	b.dropSocks(p, old)

	socks := make([]*extraSock, 0, birthdaySockets)
	la := &net.UDPAddr{}
	if b.opts.ListenAddr4.IsValid() {
		la.IP = b.opts.ListenAddr4.AsSlice()
	}
	var err error
	for range birthdaySockets {
		var c *net.UDPConn
		if c, err = net.ListenUDP("udp4", la); err != nil {
			break
		}
		socks = append(socks, &extraSock{conn: c, p: p, opened: now, eps: make(map[netip.AddrPort]*Endpoint)})
	}
	b.bmu.Lock()
	if !b.bopen || st.opened.Load() != now || len(socks) == 0 {
		b.bmu.Unlock()
		for _, s := range socks {
			s.close()
		}
		if err != nil {
			b.log.Warn("birthday probing: cannot open sockets", "peer", p.key.ShortString(), "err", err)
		}
		return netip.Addr{}
	}
	st.socks = socks
	for _, s := range socks {
		b.bwg.Go(func() { b.readExtra(s) })
	}
	b.bwg.Go(func() { b.birthdayPings(p, dp, socks, targets, now, stop) })
	b.bmu.Unlock()
	b.log.Info("birthday probing: opened ports towards peer", "peer", p.key.ShortString(), "ports", len(socks), "targets", len(targets), "err", err)
	return ip
}

// peerList returns the peers of the bind.
func (b *Bind) peerList() []*peer {
	b.mu.Lock()
	defer b.mu.Unlock()
	ps := make([]*peer, 0, len(b.peers))
	for _, pe := range b.peers {
		ps = append(ps, pe.p)
	}
	return ps
}

// activeBirthdaysLocked counts the hard-side attempts of ps still
// waiting for a probe (b.bmu held).
func activeBirthdaysLocked(ps []*peer) int {
	n := 0
	for _, p := range ps {
		if len(p.bday.socks) > 1 {
			n++
		}
	}
	return n
}

// birthdayPings pings targets from each of socks, paced, then waits out
// the attempt's window and closes its sockets if no probe reached one.
func (b *Bind) birthdayPings(p *peer, dp *discoPeer, socks []*extraSock, targets []netip.AddrPort, opened int64, stop chan struct{}) {
	tick := time.NewTicker(birthdayOpenEvery)
	defer tick.Stop()
	for _, s := range socks {
		if s.closed.Load() || s.won.Load() {
			continue
		}
		for _, t := range targets {
			b.pingVia(p, dp, s, t, 0, nil)
		}
		select {
		case <-stop:
			return
		case <-tick.C:
		}
	}
	wait := time.NewTimer(time.Duration(opened + int64(birthdayWindow) - time.Now().UnixNano()))
	defer wait.Stop()
	select {
	case <-stop:
		return
	case <-wait.C:
	}
	b.bmu.Lock()
	st := &p.bday
	var drop []*extraSock
	if st.opened.Load() == opened && st.won == nil {
		drop, st.socks = st.socks, nil
	}
	b.bmu.Unlock()
	if drop != nil {
		b.dropSocks(p, drop)
		b.log.Info("birthday probing: no probe reached our ports", "peer", p.key.ShortString(), "ports", len(drop), "window", birthdayWindow)
	}
}

// birthdayHit records that the peer reached extra socket s from src and
// returns s's endpoint for src; nil if s is not (or no longer) the
// peer's path. The first socket reached wins and the others are closed.
func (b *Bind) birthdayHit(s *extraSock, src netip.AddrPort) *Endpoint {
	if s.closed.Load() {
		return nil
	}
	p := s.p
	st := &p.bday
	var losers []*extraSock
	b.bmu.Lock()
	switch {
	case st.won == s:
	case st.won == nil && st.opened.Load() == s.opened:
		st.won = s
		s.won.Store(true)
		for _, o := range st.socks {
			if o != s {
				losers = append(losers, o)
			}
		}
		st.socks = []*extraSock{s}
	default:
		b.bmu.Unlock()
		return nil
	}
	b.bmu.Unlock()
	if losers != nil {
		b.dropSocks(p, losers)
		b.log.Info("birthday probing: peer reached one of our ports", "peer", p.key.ShortString(),
			"after", time.Duration(time.Now().UnixNano()-s.opened), "port", s.conn.LocalAddr().(*net.UDPAddr).Port, "from", src)
	}
	return s.endpoint(src, true)
}

// dropSocks closes socks; a path that ran over one of them is forgotten.
func (b *Bind) dropSocks(p *peer, socks []*extraSock) {
	for _, s := range socks {
		s.close()
		if best := p.best.Load(); best != nil && best.sock == s {
			p.best.CompareAndSwap(best, nil)
		}
	}
}

// stopBirthdays stops all birthday probing and closes the extra sockets
// (Close); it returns once their goroutines have exited.
func (b *Bind) stopBirthdays() {
	ps := b.peerList()
	b.bmu.Lock()
	b.bopen = false
	if b.bstop != nil {
		close(b.bstop)
		b.bstop = nil
	}
	drop := make(map[*peer][]*extraSock)
	for _, p := range ps {
		if len(p.bday.socks) > 0 {
			drop[p] = p.bday.socks
			p.bday.socks, p.bday.won = nil, nil
		}
	}
	b.bmu.Unlock()
	for p, socks := range drop {
		b.dropSocks(p, socks)
	}
	b.bwg.Wait()
}

// dropPeerSocksLocked closes the extra sockets of a removed peer (b.mu
// held).
func (b *Bind) dropPeerSocksLocked(p *peer) {
	b.bmu.Lock()
	socks := p.bday.socks
	p.bday.socks, p.bday.won = nil, nil
	b.bmu.Unlock()
	for _, s := range socks {
		s.close()
	}
}

// readExtra receives on an extra socket until it is closed: disco
// messages from its peer, and once the socket is the peer's path,
// WireGuard packets, which go to wireguard-go through the relay receive
// function's queue.
func (b *Bind) readExtra(s *extraSock) {
	buf := make([]byte, extraReadSize)
	for {
		if s.won.Load() && len(buf) < maxRelayed {
			buf = make([]byte, maxRelayed)
		}
		n, _, flags, src, err := s.conn.ReadMsgUDPAddrPort(buf, nil)
		if err != nil {
			if s.closed.Load() || errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		src = unmap(src)
		pkt := buf[:n]
		if flags&msgTrunc != 0 || b.opts.RelayOnly || b.fromHostForward(src) {
			continue
		}
		if f := b.testFilter.Load(); f != nil && !(*f)(src) {
			continue
		}
		if disco.IsPacket(pkt) {
			b.handleDisco(src, 0, key.NodePublic{}, pkt, s)
			continue
		}
		if !s.won.Load() {
			continue
		}
		e := s.endpoint(src, false)
		if e == nil {
			continue
		}
		if kind, _ := classify(pkt); kind == kindGarbage {
			continue
		}
		now := time.Now().UnixNano()
		p := s.p
		if !b.admitHandshake(p, e, pkt, now) {
			continue
		}
		e.lastRecv.Store(now)
		p.lastWGRecv.Store(now)
		p.traffic.received(pathDirect, n)
		b.noteTransport(p, pkt, now)
		if p.dualUntil.Load() != 0 && p.best.Load() == e {
			p.dualUntil.Store(0)
		}
		b.deliverQueued(e, pkt)
	}
}

// sendExtra writes bufs to dst from extra socket s.
func (b *Bind) sendExtra(s *extraSock, bufs [][]byte, dst netip.AddrPort) error {
	if b.opts.RelayOnly {
		return nil
	}
	if f := b.testFilter.Load(); f != nil && !(*f)(dst) {
		return nil
	}
	if s.closed.Load() {
		return net.ErrClosed
	}
	for _, pkt := range bufs {
		if _, err := s.conn.WriteToUDPAddrPort(pkt, dst); err != nil {
			return err
		}
	}
	return nil
}

// publicIPv4 reports whether a is an IPv4 address that birthday probing
// may send hundreds of packets to: not loopback, private (a host of our own
// network), link-local, CGNAT, unspecified, multicast or broadcast.
func publicIPv4(a netip.Addr) bool {
	a = a.Unmap()
	return a.Is4() && !a.IsLoopback() && !a.IsPrivate() && !a.IsLinkLocalUnicast() && !cgnat.Contains(a) &&
		!a.IsUnspecified() && !a.IsMulticast() && a != netip.AddrFrom4([4]byte{255, 255, 255, 255})
}

// maxSprayedIPs bounds Bind.sprayedIPs; entries older than birthdayEvery
// are dropped first.
const maxSprayedIPs = 1024

// maybeSpray starts the easy side of birthday probing for p, whose
// call-me-maybe named ips as public IPs behind a hard NAT: unless we are
// behind a hard NAT too (probes could not meet), p has a direct path, or
// p was sprayed within birthdayEvery. Only an IP of one of p's endpoints
// from the coordinator is sprayed, never one a peer merely names (a peer,
// or whoever replays its call-me-maybe, must not aim the spray at a host
// of its choice), and the same IP at most once per birthdayEvery whichever
// peer asks.
func (b *Bind) maybeSpray(p *peer, ips []netip.Addr, now int64) {
	p.bday.peerHard.Store(now)
	if b.opts.RelayOnly || b.hard().IsValid() || hasDirect(p, now) {
		return
	}
	var ip netip.Addr
	cands := *p.candidates.Load()
	for _, a := range ips {
		a = a.Unmap()
		if publicIPv4(a) && slices.ContainsFunc(cands, func(ap netip.AddrPort) bool { return ap.Addr() == a }) {
			ip = a
			break
		}
	}
	dp := p.disco.Load()
	if !ip.IsValid() || dp == nil {
		return
	}
	ps := b.peerList()
	b.bmu.Lock()
	defer b.bmu.Unlock()
	st := &p.bday
	if !b.bopen || st.spraying || now-st.sprayed < int64(birthdayEvery) || sprayingLocked(ps) >= maxBirthdays {
		return
	}
	if last, ok := b.sprayedIPs[ip]; ok && now-last < int64(birthdayEvery) {
		return
	}
	if b.sprayedIPs == nil {
		b.sprayedIPs = make(map[netip.Addr]int64)
	}
	if len(b.sprayedIPs) >= maxSprayedIPs {
		maps.DeleteFunc(b.sprayedIPs, func(_ netip.Addr, t int64) bool { return now-t >= int64(birthdayEvery) })
		if len(b.sprayedIPs) >= maxSprayedIPs {
			return // more IPs sprayed within birthdayEvery than any honest mesh asks for
		}
	}
	b.sprayedIPs[ip] = now
	st.spraying, st.sprayed = true, now
	stop := b.bstop
	b.bwg.Go(func() { b.birthdaySpray(p, dp, ip, now, stop) })
}

// sprayingLocked counts the sprays of ps running (b.bmu held).
func sprayingLocked(ps []*peer) int {
	n := 0
	for _, p := range ps {
		if p.bday.spraying {
			n++
		}
	}
	return n
}

// deliverQueued hands wireguard-go a packet that arrived over an extra
// socket, through the relay receive function's queue; dropped when the
// bind is closed or the queue is full.
func (b *Bind) deliverQueued(e *Endpoint, pkt []byte) {
	if b.rs.relay == nil || len(pkt) > maxRelayed {
		return
	}
	b.mu.Lock()
	open := b.relayClosed != nil
	b.mu.Unlock()
	if !open {
		return
	}
	buf := b.rs.copyPacket(pkt)
	select {
	case b.rs.queue <- relayed{e: e, buf: buf, n: len(pkt)}:
	default:
		b.rs.put(buf)
	}
}

// birthdaySpray pings sprayProbes random ports of ip, sprayBatch every
// sprayEvery, until a direct path to p answers, birthdayWindow passes or
// stop closes, and logs how it went.
func (b *Bind) birthdaySpray(p *peer, dp *discoPeer, ip netip.Addr, start int64, stop chan struct{}) {
	defer func() {
		b.bmu.Lock()
		p.bday.spraying = false
		b.bmu.Unlock()
	}()
	ports := make([]uint16, 1<<16-sprayPortMin)
	for i := range ports {
		ports[i] = uint16(sprayPortMin + i)
	}
	// A partial Fisher-Yates shuffle picks sprayProbes distinct ports.
	for i := range sprayProbes {
		j := i + rand.IntN(len(ports)-i)
		ports[i], ports[j] = ports[j], ports[i]
	}
	ports = ports[:sprayProbes]
	reached := func() bool {
		best := p.best.Load()
		return best != nil && !best.isRelay() && best.lastRecv.Load() >= start
	}
	tick := time.NewTicker(sprayEvery)
	defer tick.Stop()
	deadline := start + int64(birthdayWindow)
	sent := 0
	for !reached() && !p.removed.Load() && time.Now().UnixNano() < deadline {
		for j := 0; j < sprayBatch && sent < len(ports); j++ {
			b.ping(p, dp, netip.AddrPortFrom(ip, ports[sent]), 0, nil)
			sent++
		}
		select {
		case <-stop:
			return
		case <-tick.C:
		}
	}
	took := time.Duration(time.Now().UnixNano() - start)
	if best := p.best.Load(); reached() {
		b.log.Info("birthday probing: direct path found", "peer", p.key.ShortString(), "probes", sent, "took", took, "addr", best.src)
	} else {
		b.log.Info("birthday probing: no direct path", "peer", p.key.ShortString(), "probes", sent, "took", took)
	}
}
