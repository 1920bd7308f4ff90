package netstack

import (
	"encoding/hex"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"beam.dev/beam/netstack/internal/bind"
	"beam.dev/beam/types/key"
)

// Lazy peers. Every peer of the config is known to the bind (paths,
// disco, attribution of datagrams), but wireguard-go is given a peer only
// while there is traffic to or from it: adding a peer costs wireguard-go
// an X25519 operation (the static-static secret it precomputes), 1.2 s
// for a netmap of 5,000 peers, most of which a node never talks to.
// Tailscale's engine does the same ("trimmed" peers, noteRecvActivity).
//
// A peer asleep (not in wireguard-go) is woken, synchronously, before
// wireguard-go sees the packet that concerns it:
//   - outbound: a packet from the stack (or, in TUN mode, the host) to one
//     of the peer's addresses, seen as wireguard-go reads it
//     (Engine.noteOutbound); wireguard-go then finds the peer for it and
//     starts a handshake.
//   - inbound: a WireGuard datagram the bind ties to the peer (by its
//     source address, its receiver index, the relay that authenticated
//     it, or the initiator key of a handshake initiation), seen by the
//     receive goroutine before it hands the datagram over
//     (bind.Options.WakePeer); an initiation from a peer asleep is thus
//     accepted on the first try.
//
// A peer with no traffic for peerIdleAfter goes back to sleep. Peers whose
// allowed IPs include a prefix wider than one address (routes) are always
// in wireguard-go, since outbound packets are matched by exact address.
//
// Removing a peer from wireguard-go waits for its goroutines (peer.Stop),
// and its receive goroutine may be waiting for the TUN reader (a reply the
// stack sends inline, into a full outbound queue). So ps.mu is never held
// across a removal: the peers are marked leaving under ps.mu, removed with
// it released (ps.removing set), and the table is settled under ps.mu
// again. Meanwhile the TUN reader never waits: a packet for a peer asleep
// marks the peer wanted, and the removal adds it back when it is done
// (that packet itself is dropped by wireguard-go, as any sent to a peer
// not yet configured). Other wakes (inbound) wait for the removal, then
// add the peer before their datagram is delivered.
//
// One-peer changes. UpdatePeers (and Reconfig, which diffs the whole
// config first) touches only the peers that changed: one bind update and
// one device update (a UAPI "set" naming only those peers), so a change to
// one peer of thousands costs about what a netmap of one peer costs.

const (
	// peerIdleAfter is how long a peer stays in wireguard-go without
	// traffic (Tailscale's lazyPeerIdleThreshold). It is longer than
	// WireGuard's RejectAfterTime (3 minutes), so no session either side
	// outlives the peer's removal.
	peerIdleAfter = 5 * time.Minute
	// peerTrimEvery is how often peerLoop looks for idle peers.
	peerTrimEvery = 30 * time.Second
)

// peerTable is the engine's per-peer state (Engine.ps).
type peerTable struct {
	// asleep counts the peers not in wireguard-go; while it is zero,
	// outbound packets are not looked at.
	asleep atomic.Int64
	// byIP maps each single address (a /32 or /128 allowed IP) of a
	// peer that may sleep to its *enginePeer, for noteOutbound.
	byIP sync.Map
	// gateIP maps each single address of every peer to its
	// *enginePeer, for admit.
	gateIP sync.Map

	mu sync.Mutex // guards the following fields; taken after Engine.mu, before the bind's and the device's locks
	// closing is set by Close before the device closes: from then on,
	// nothing is added to the device (its Close waits for the goroutines
	// that wake peers).
	closing bool
	// removing is set while a removal runs without mu (see
	// removeLocked); removed is signalled when it ends. Nothing is
	// added to or read from the device while it is set.
	removing bool
	removed  sync.Cond
	// wanted are the peers an outbound packet met asleep while removing
	// was set; removeLocked adds them back.
	wanted []*enginePeer
	// onRemovingForTest, if set (only by tests), runs after a removal
	// released mu and before it calls into the device.
	onRemovingForTest func()
	// byKey holds every peer of the config. The map and each peer's cfg
	// and idx are written with Engine.mu held too.
	byKey map[key.NodePublic]*enginePeer
	// idleAfter is peerIdleAfter; tests shorten it.
	idleAfter time.Duration
	// eager puts every peer in wireguard-go at once (the debug knob
	// BEAM_DEBUG_LAZY_PEERS=0); by default peers are lazy.
	eager bool
}

// enginePeer is one peer of the config.
type enginePeer struct {
	key key.NodePublic
	cfg Peer
	// idx is the peer's index in Engine.cfg.Peers.
	idx int
	// pinned peers stay in wireguard-go (see noteOutbound).
	pinned bool
	// inDev is whether the peer is configured in wireguard-go; it
	// changes with peerTable.mu held.
	inDev atomic.Bool
	// wokeAt is when the peer last joined wireguard-go (unix nanos).
	wokeAt int64
	// lastOut is when noteOutbound last saw a packet to the peer (unix
	// nanos), so that trimIdlePeers keeps a peer whose packet raced
	// with its decision.
	lastOut atomic.Int64
	// wanted is whether the peer is in peerTable.wanted.
	wanted bool
	// gate counts the packets handed to wireguard-go without a session.
	gate noSessionGate
	// carried are the counters of the peer's earlier stays in
	// wireguard-go (RxBytes, TxBytes, LastHandshake), which a device
	// forgets with the peer.
	carried PeerStatus
}

func (ps *peerTable) init() {
	ps.byKey = make(map[key.NodePublic]*enginePeer)
	ps.removed.L = &ps.mu
	ps.idleAfter = peerIdleAfter
	ps.eager = !debugLazyPeers()
}

// UpdatePeers changes the named peers and leaves every other part of the
// config as it is: each of set is added, or replaces the peer with its key
// (a whole record, as in Config.Peers), and each of remove is dropped
// (unknown keys are ignored). Its cost is that of the peers named, so a
// netmap change to one peer is applied as one: one bind update and one
// device update naming that peer. Peers restarted (a new disco key) are
// handled as by Reconfig.
func (e *Engine) UpdatePeers(set []Peer, remove []key.NodePublic) error {
	if err := validatePeers(set); err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return errEngineClosed
	}
	return e.applyPeersLocked(set, remove)
}

// validatePeers checks peers as Reconfig does.
func validatePeers(peers []Peer) error {
	if err := validate(&Config{Peers: peers}); err != nil {
		return err
	}
	return nil
}

// samePeer reports whether a and b configure a peer identically.
func samePeer(a, b *Peer) bool {
	return a.Key == b.Key && a.DiscoKey == b.DiscoKey && a.HomeDERP == b.HomeDERP && a.RelayServer == b.RelayServer &&
		slices.Equal(a.AllowedIPs, b.AllowedIPs) && slices.Equal(a.Endpoints, b.Endpoints)
}

// diffPeersLocked returns the peers of cfg that are new or changed and the
// keys of current peers cfg leaves out.
func (e *Engine) diffPeersLocked(peers []Peer) (set []Peer, remove []key.NodePublic) {
	want := make(map[key.NodePublic]bool, len(peers))
	for i := range peers {
		p := &peers[i]
		want[p.Key] = true
		if ep := e.ps.byKey[p.Key]; ep == nil || !samePeer(&ep.cfg, p) {
			set = append(set, *p)
		}
	}
	for k := range e.ps.byKey {
		if !want[k] {
			remove = append(remove, k)
		}
	}
	return set, remove
}

// applyPeersLocked applies a change to the peer list (see UpdatePeers).
// e.mu is held.
func (e *Engine) applyPeersLocked(set []Peer, remove []key.NodePublic) error {
	if len(set) == 0 && len(remove) == 0 {
		return nil
	}
	// The bind must know new peers before wireguard-go parses their
	// endpoints; removed peers go from both.
	bps := make([]bind.PeerConfig, 0, len(set))
	for _, p := range set {
		bps = append(bps, bind.PeerConfig{Key: p.Key, Endpoints: p.Endpoints, HomeRegion: p.HomeDERP, DiscoKey: p.DiscoKey, RelayServer: p.RelayServer})
	}
	e.bind.UpdatePeers(bps, remove)

	ps := &e.ps
	ps.mu.Lock()
	ps.waitRemovedLocked()
	var (
		rm        strings.Builder
		sb        strings.Builder
		add       []*enginePeer
		restarted []Peer
	)
	for _, k := range remove {
		ep := ps.byKey[k]
		if ep == nil {
			continue
		}
		if ep.inDev.Load() {
			writeRemovePeer(&rm, k)
			ep.inDev.Store(false)
		} else {
			ps.asleep.Add(-1)
		}
		ps.unindex(ep)
		ps.gateUnindex(ep)
		delete(ps.byKey, k)
		last := len(e.cfg.Peers) - 1
		if ep.idx != last {
			moved := e.cfg.Peers[last]
			e.cfg.Peers[ep.idx] = moved
			ps.byKey[moved.Key].idx = ep.idx
		}
		e.cfg.Peers = e.cfg.Peers[:last]
	}
	for _, p := range set {
		ep := ps.byKey[p.Key]
		if ep == nil {
			ep = &enginePeer{key: p.Key, cfg: p, idx: len(e.cfg.Peers)}
			e.cfg.Peers = append(e.cfg.Peers, p)
			ps.byKey[p.Key] = ep
			ps.asleep.Add(1)
		} else {
			old := ep.cfg
			// A peer whose disco key changed is a new process of that
			// node (the key lives as long as the process): the
			// connections we had with its previous process are gone,
			// whether or not we send on them.
			if !old.DiscoKey.IsZero() && !p.DiscoKey.IsZero() && old.DiscoKey != p.DiscoKey {
				restarted = append(restarted, p)
			}
			if ep.inDev.Load() && !slices.Equal(old.AllowedIPs, p.AllowedIPs) {
				writeAllowedIPs(&sb, p, true)
			}
			ps.unindex(ep)
			ps.gateUnindex(ep)
			ep.cfg = p
			e.cfg.Peers[ep.idx] = p
		}
		ps.gateIndex(ep)
		ep.pinned = ps.eager || !singleAddrs(p.AllowedIPs)
		if !ep.pinned {
			ps.index(ep)
		} else if !ep.inDev.Load() {
			writeAllowedIPs(&sb, p, false)
			add = append(add, ep)
		}
	}
	if rm.Len() > 0 {
		// Removed peers are out of the table already: a wake meanwhile
		// finds none of them.
		if err := e.removeLocked(rm.String()); err != nil {
			ps.mu.Unlock()
			return fmt.Errorf("netstack: remove peers: %w", err)
		}
	}
	if sb.Len() > 0 {
		if err := e.dev.IpcSet(sb.String()); err != nil {
			ps.mu.Unlock()
			return fmt.Errorf("netstack: configure peers: %w", err)
		}
	}
	now := time.Now().UnixNano()
	for _, ep := range add {
		ep.inDev.Store(true)
		ep.wokeAt = now
		ps.asleep.Add(-1)
		e.bind.SetAwake(ep.key, true)
	}
	ps.mu.Unlock()

	for _, p := range restarted {
		e.wg.Add(1)
		go func() {
			defer e.wg.Done()
			e.peerRestarted(p)
		}()
	}
	// Only now that wireguard-go knows the awake peers may they learn we
	// are up (a handshake they answer must not be dropped).
	e.bind.ProbeNew()
	return nil
}

// singleAddrs reports whether every prefix of ps is a single address.
func singleAddrs(ps []netip.Prefix) bool {
	for _, p := range ps {
		if p.Bits() != p.Addr().BitLen() {
			return false
		}
	}
	return true
}

// index makes ep's addresses wake it (ps.mu held).
func (ps *peerTable) index(ep *enginePeer) {
	for _, pfx := range ep.cfg.AllowedIPs {
		if pfx.IsSingleIP() {
			ps.byIP.Store(pfx.Addr().Unmap(), ep)
		}
	}
}

// unindex undoes index (ps.mu held).
func (ps *peerTable) unindex(ep *enginePeer) {
	for _, pfx := range ep.cfg.AllowedIPs {
		ps.byIP.CompareAndDelete(pfx.Addr().Unmap(), ep)
	}
}

// gateIndex makes admit find ep by its addresses (ps.mu held).
func (ps *peerTable) gateIndex(ep *enginePeer) {
	for _, pfx := range ep.cfg.AllowedIPs {
		if pfx.IsSingleIP() {
			ps.gateIP.Store(pfx.Addr().Unmap(), ep)
		}
	}
}

// gateUnindex undoes gateIndex (ps.mu held).
func (ps *peerTable) gateUnindex(ep *enginePeer) {
	for _, pfx := range ep.cfg.AllowedIPs {
		ps.gateIP.CompareAndDelete(pfx.Addr().Unmap(), ep)
	}
}

// writeAllowedIPs writes the UAPI lines that configure p in the device:
// a new peer (addressed by its key, see the bind's ParseEndpoint) or, with
// update, only its allowed IPs.
func writeAllowedIPs(sb *strings.Builder, p Peer, update bool) {
	raw := p.Key.Raw32()
	fmt.Fprintf(sb, "public_key=%s\n", hex.EncodeToString(raw[:]))
	if update {
		sb.WriteString("update_only=true\n")
	} else {
		fmt.Fprintf(sb, "endpoint=%s\n", p.Key.String())
	}
	sb.WriteString("replace_allowed_ips=true\n")
	for _, ip := range p.AllowedIPs {
		fmt.Fprintf(sb, "allowed_ip=%s\n", ip.Masked())
	}
}

// writeRemovePeer writes the UAPI lines that remove k from the device.
func writeRemovePeer(sb *strings.Builder, k key.NodePublic) {
	raw := k.Raw32()
	fmt.Fprintf(sb, "public_key=%s\nremove=true\n", hex.EncodeToString(raw[:]))
}

// noteOutbound sees each IP packet about to reach wireguard-go from the
// stack or the host. It wakes the peer the packet is addressed to, if it
// is asleep, so wireguard-go finds the peer for it, and reports whether
// wireguard-go may have the packet (see admit).
func (e *Engine) noteOutbound(pkt []byte) bool {
	if len(pkt) < 20 {
		return true
	}
	var dst netip.Addr
	switch pkt[0] >> 4 {
	case 4:
		dst = netip.AddrFrom4([4]byte(pkt[16:20]))
	case 6:
		if len(pkt) < 40 {
			return true
		}
		dst = netip.AddrFrom16([16]byte(pkt[24:40]))
	default:
		return true
	}
	if e.ps.asleep.Load() != 0 {
		if v, ok := e.ps.byIP.Load(dst); ok {
			ep := v.(*enginePeer)
			// lastOut before inDev, as trimIdlePeers stores inDev before
			// it reads lastOut: either trim keeps the peer, or this sees
			// it gone.
			ep.lastOut.Store(time.Now().UnixNano())
			if !ep.inDev.Load() {
				e.wakeOutbound(ep)
			}
		}
	}
	v, ok := e.ps.gateIP.Load(dst)
	return !ok || e.admit(v.(*enginePeer))
}

// Packets for a peer without a session. wireguard-go keeps the packets it
// is given for a peer it has no session with until a handshake completes
// or, after 90 s of retries, it gives up: up to 128 batches of up to 32
// packets, each in a 64 KiB buffer (256 MiB), for each such peer. An
// application sending to a peer that is gone would pin that much memory.
// So the TUN reader hands wireguard-go at most Engine.noSessionBudget
// packets for a peer unless the bind saw a session (Bind.Session): a
// handshake recent enough that wireguard-go's keys from it are still
// valid, or a transport message wireguard-go sent since the count began.
// It drops the rest, but for one packet every noSessionRetry, which makes
// wireguard-go try a handshake again once the one before gave up. With
// a session wireguard-go sends what it gets rather than keeping it, so
// nothing is held back. A count older than noSessionForget is dropped:
// wireguard-go gave its packets up by then.
const (
	noSessionRetry  = 5 * time.Second // WireGuard's RekeyTimeout
	noSessionForget = 2 * time.Minute // WireGuard gives up after RekeyAttemptTime (90 s)
	// sessionLifetime is how long after a handshake wireguard-go sends
	// with its keys (RejectAfterTime, 180 s), less a margin.
	sessionLifetime = 179 * time.Second
	// noSessionSlack is how long before a count began a transport
	// message still shows a session. wireguard-go may take packets
	// faster than it sends them (the in-flight window forgets packets
	// after 10-20 ms; under load encryption lags): then the count runs
	// out before a send stamped after it began, and packets to a peer
	// with a session would be dropped. Once a session ends (no more
	// sends), at most the packets of this long pass beyond the budget.
	noSessionSlack = 100 * time.Millisecond
)

// noSessionGate is a peer's count of packets handed to wireguard-go (see
// admit). Only the TUN reader uses it.
type noSessionGate struct {
	handed atomic.Int64 // packets handed since start
	start  atomic.Int64 // when the count began (unix nanos)
	retry  atomic.Int64 // when a packet last went through a closed gate (unix nanos)
}

// admit reports whether the TUN reader may hand wireguard-go one more
// packet for ep (see noSessionGate). It runs on the TUN reader.
func (e *Engine) admit(ep *enginePeer) bool {
	g := &ep.gate
	if n := g.handed.Add(1); n <= int64(e.noSessionBudget) {
		if n == 1 {
			g.start.Store(time.Now().UnixNano())
		}
		return true
	}
	now := time.Now().UnixNano()
	// A session: a handshake recent enough that wireguard-go's keys from
	// it are valid, or a transport message sent since the count began (or
	// a little before it, noSessionSlack).
	hs, sent := e.bind.Session(ep.key)
	if start := g.start.Load(); now-hs < int64(sessionLifetime) || sent >= start-int64(noSessionSlack) || now-start > int64(noSessionForget) {
		g.start.Store(now)
		g.handed.Store(1)
		return true
	}
	if now-g.retry.Load() >= int64(noSessionRetry) {
		g.retry.Store(now)
		return true
	}
	e.noSessionDrops.Add(1)
	return false
}

// wakeOutbound wakes ep for a packet the TUN reader is about to hand
// wireguard-go. It never waits for a removal (which may wait for the TUN
// reader): while one runs, ep is marked wanted and added after it.
func (e *Engine) wakeOutbound(ep *enginePeer) {
	ps := &e.ps
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if ps.closing || ps.byKey[ep.key] != ep {
		return
	}
	if ps.removing {
		if !ep.inDev.Load() && !ep.wanted {
			ep.wanted = true
			ps.wanted = append(ps.wanted, ep)
		}
		return
	}
	e.wakeLocked(ep)
}

// waitRemovedLocked waits, with ps.mu held, until no removal runs.
func (ps *peerTable) waitRemovedLocked() {
	for ps.removing {
		ps.removed.Wait()
	}
}

// removeLocked runs the UAPI text rm, which removes peers from the
// device, without holding ps.mu (see the package comment on lazy peers),
// then adds back the peers an outbound packet wanted meanwhile. ps.mu is
// held on entry and on return, and no other removal runs.
func (e *Engine) removeLocked(rm string) error {
	ps := &e.ps
	ps.removing = true
	ps.mu.Unlock()
	if h := ps.onRemovingForTest; h != nil {
		h()
	}
	err := e.dev.IpcSet(rm)
	ps.mu.Lock()
	ps.removing = false
	ps.removed.Broadcast()
	wanted := ps.wanted
	ps.wanted = nil
	for _, ep := range wanted {
		ep.wanted = false
		if !ps.closing && ps.byKey[ep.key] == ep && !ep.inDev.Load() {
			e.wakeLocked(ep)
		}
	}
	return err
}

// wakePeer configures peer k in wireguard-go if it is asleep, and tells
// the bind it is awake. It runs on the goroutine that is about to hand
// wireguard-go a packet for or from k (see bind.Options.WakePeer).
func (e *Engine) wakePeer(k key.NodePublic) {
	ps := &e.ps
	ps.mu.Lock()
	defer ps.mu.Unlock()
	// The receive goroutine may wait for a removal: it does not hold
	// what the removal waits for.
	ps.waitRemovedLocked()
	if ps.closing {
		return
	}
	if ep := ps.byKey[k]; ep != nil {
		e.wakeLocked(ep)
	}
}

// wakeLocked configures ep in wireguard-go if it is asleep and tells the
// bind it is awake. ps.mu is held and no removal runs.
func (e *Engine) wakeLocked(ep *enginePeer) {
	ps := &e.ps
	k := ep.key
	if !ep.inDev.Load() {
		var sb strings.Builder
		writeAllowedIPs(&sb, ep.cfg, false)
		if err := e.dev.IpcSet(sb.String()); err != nil {
			e.log.Warn("configure peer", "peer", k.ShortString(), "err", err)
			return
		}
		ep.inDev.Store(true)
		ps.asleep.Add(-1)
		e.log.Debug("peer active; configured in WireGuard", "peer", k.ShortString())
	}
	ep.wokeAt = time.Now().UnixNano()
	e.bind.SetAwake(k, true)
}

// peerLoop puts idle peers to sleep every peerTrimEvery until the engine
// closes.
func (e *Engine) peerLoop() {
	t := time.NewTicker(peerTrimEvery)
	defer t.Stop()
	for {
		select {
		case <-e.ctx.Done():
			return
		case <-t.C:
			e.trimIdlePeers()
		}
	}
}

// trimIdlePeers removes from wireguard-go the peers that may sleep and
// had no traffic for ps.idleAfter, keeping their counters for Status.
func (e *Engine) trimIdlePeers() {
	ps := &e.ps
	ps.mu.Lock()
	defer ps.mu.Unlock()
	ps.waitRemovedLocked()
	if ps.closing {
		return
	}
	now := time.Now().UnixNano()
	isIdle := func(ep *enginePeer) bool {
		return now-max(ep.wokeAt, ep.lastOut.Load(), e.bind.LastActive(ep.key)) > int64(ps.idleAfter)
	}
	var idle []*enginePeer
	for _, ep := range ps.byKey {
		if !ep.pinned && ep.inDev.Load() && isIdle(ep) {
			idle = append(idle, ep)
		}
	}
	// Asleep first: a datagram from the peer from now on waits in
	// wakePeer until the peer is gone, then adds it back; a packet to it
	// marks it wanted. A packet noteOutbound saw before (its lastOut
	// stored before it read inDev) keeps the peer.
	for _, ep := range idle {
		e.bind.SetAwake(ep.key, false)
		ep.inDev.Store(false)
		ps.asleep.Add(1)
	}
	idle = slices.DeleteFunc(idle, func(ep *enginePeer) bool {
		if isIdle(ep) {
			return false
		}
		ep.inDev.Store(true)
		ps.asleep.Add(-1)
		e.bind.SetAwake(ep.key, true)
		return true
	})
	if len(idle) == 0 {
		return
	}
	text, err := e.dev.IpcGet()
	if err != nil {
		e.log.Warn("read device status", "err", err)
	}
	counters := parseUAPIPeers(text)
	var sb strings.Builder
	for _, ep := range idle {
		ep.carried = carry(ep.carried, counters[ep.key])
		writeRemovePeer(&sb, ep.key)
	}
	if err := e.removeLocked(sb.String()); err != nil {
		e.log.Warn("remove idle peers", "err", err)
		return
	}
	e.log.Debug("idle peers removed from WireGuard", "peers", len(idle))
}

// carry adds the device counters cur of a peer to those of its earlier
// stays in the device.
func carry(old, cur PeerStatus) PeerStatus {
	old.RxBytes += cur.RxBytes
	old.TxBytes += cur.TxBytes
	if !cur.LastHandshake.IsZero() {
		old.LastHandshake = cur.LastHandshake
	}
	return old
}

// closePeers stops peers from joining the device; Close calls it before
// closing the device.
func (e *Engine) closePeers() {
	e.ps.mu.Lock()
	e.ps.closing = true
	e.ps.mu.Unlock()
}

// carriedCounters returns the counters of the earlier device stays of the
// given peers.
func (e *Engine) carriedCounters() map[key.NodePublic]PeerStatus {
	e.ps.mu.Lock()
	defer e.ps.mu.Unlock()
	out := make(map[key.NodePublic]PeerStatus)
	for k, ep := range e.ps.byKey {
		if ep.carried != (PeerStatus{}) {
			out[k] = ep.carried
		}
	}
	return out
}
