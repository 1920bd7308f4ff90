package coordinator

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// beforeTakeForTest, if set, is called by a stream's handler just
// before it takes what was marked for it. Only tests set it, through
// SetStreamHookForTest in export_test.go.
var beforeTakeForTest atomic.Pointer[func(key.NodePublic)]

// A stream gathers changes for minDeltaBatch before it sends a delta,
// and sends deltas no more often than every batchDelay: 25 ms, or 25 µs
// per open stream if more, up to 250 ms (at 10,000 streams). A change
// after a quiet spell so reaches every node within about 25 ms plus the
// time to write to all of them, and one soon after another within
// 250 ms plus that, while a burst of changes costs the coordinator at
// most about 40,000 delta frames a second however many nodes stream.
// (Peers coming online or going offline, the burst a restart brings,
// are paced further: onlineDelay.)
const (
	minDeltaBatch       = 25 * time.Millisecond
	deltaBatchPerStream = 25 * time.Microsecond
	maxDeltaBatch       = 250 * time.Millisecond
)

// A delta that only says which peers came online or went offline waits
// until onlineDelay has passed since the stream's last delta: 25 ms, or
// 1 ms per open stream if more, up to 5 s. Peers coming and going are a
// change for every other node, so when thousands of nodes (re)connect
// within seconds these deltas alone would be thousands of frames a
// second per thousand streams; held back, they cost the coordinator
// about a thousand frames a second however many nodes stream, and an
// online state is late by that delay at most. Changes of the network
// made meanwhile wait with them (so in such a burst a peer's new
// endpoints may be late by as much); those marked for the stream itself
// (routes, a new policy or relay map) do not.
const (
	onlinePerStream = time.Millisecond
	maxOnlineDelay  = 5 * time.Second
)

// onlineDelay returns the least time between a stream's last delta and
// one that only flips peers online or offline, while n streams are open.
func onlineDelay(n int) time.Duration {
	return min(max(minDeltaBatch, time.Duration(n)*onlinePerStream), maxOnlineDelay)
}

// mergeHeld adds to f the online flips held back, oldest first: those of
// peers f removes, sends whole or flips again are already stale. They
// are held as the views they came with, so that they go as f.online
// (by node ID to nodes that take it, wire.CompactFramesVersion).
func mergeHeld(f *mapFrame, held map[key.NodePublic]*peerView) {
	if len(held) == 0 {
		return
	}
	resp := f.resp
	for _, pv := range f.peers {
		delete(held, pv.node.Key)
	}
	for _, pv := range f.online {
		delete(held, pv.node.Key)
	}
	for _, k := range resp.PeersRemoved {
		delete(held, k)
	}
	for k := range resp.PeersOnline {
		delete(held, k)
	}
	for _, pv := range held {
		f.online = append(f.online, pv)
	}
}

// holdOnline adds the online flips of f to held.
func holdOnline(held map[key.NodePublic]*peerView, f *mapFrame) {
	for _, pv := range f.online {
		held[pv.node.Key] = pv
	}
}

// batchDelay returns the least time between two deltas of a stream while
// n streams are open.
func batchDelay(n int) time.Duration {
	return min(max(minDeltaBatch, time.Duration(n)*deltaBatchPerStream), maxDeltaBatch)
}

// session is one open map stream. Its handler goroutine owns the stream
// and everything it last sent; other goroutines only mark what changed
// and wake it.
type session struct {
	key       key.NodePublic
	networkID int64
	wake      chan struct{} // cap 1; a value means "look at what was marked"

	mu      sync.Mutex // guards the following fields
	full    bool       // recompute everything (policy in use)
	derp    bool       // send the DERP map
	ended   bool
	endCode wire.ErrorCode
	endMsg  string
	marks   uint64        // counts mark and markDERP calls
	sent    uint64        // marks covered by what the stream has written
	sentC   chan struct{} // closed and replaced when sent advances
	// firstMark is when the first change not yet taken was marked
	// (metrics.go); zero if none.
	firstMark time.Time
}

func newSession(nk key.NodePublic, networkID int64) *session {
	return &session{key: nk, networkID: networkID, wake: make(chan struct{}, 1), sentC: make(chan struct{})}
}

func (ss *session) poke() {
	select {
	case ss.wake <- struct{}{}:
	default:
	}
}

// mark wakes the stream for a change of node k, which the change log
// records; full asks it to recompute every peer and its filter.
func (ss *session) mark(k key.NodePublic, full bool) {
	ss.mu.Lock()
	ss.full = ss.full || full
	ss.marks++
	ss.noteMarkLocked()
	ss.mu.Unlock()
	ss.poke()
}

func (ss *session) markDERP() {
	ss.mu.Lock()
	ss.derp = true
	ss.marks++
	ss.noteMarkLocked()
	ss.mu.Unlock()
	ss.poke()
}

// end asks the stream to end, telling the node code and msg.
func (ss *session) end(code wire.ErrorCode, msg string) {
	ss.mu.Lock()
	if !ss.ended {
		ss.ended, ss.endCode, ss.endMsg = true, code, msg
		close(ss.sentC) // wake waitDelivered callers
		ss.sentC = make(chan struct{})
	}
	ss.mu.Unlock()
	ss.poke()
}

func (ss *session) isEnded() bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.ended
}

// take returns and clears what was marked since the last call; gen is
// the mark count it covers, for delivered.
func (ss *session) take() (full, derp, ended bool, code wire.ErrorCode, msg string, gen uint64) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	full, derp = ss.full, ss.derp
	ss.full, ss.derp = false, false
	return full, derp, ss.ended, ss.endCode, ss.endMsg, ss.marks
}

// generation returns the current mark count: once delivered reaches it,
// the node has been sent every change marked so far.
func (ss *session) generation() uint64 {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.marks
}

// delivered records that the stream has written everything up to mark
// gen, waking waitDelivered callers.
func (ss *session) delivered(gen uint64) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if gen > ss.sent {
		ss.sent = gen
		close(ss.sentC)
		ss.sentC = make(chan struct{})
	}
}

// waitDelivered waits until the stream has written the changes up to mark
// gen, the stream ends, or ctx is done; it reports whether they were
// written.
func (ss *session) waitDelivered(ctx context.Context, gen uint64) bool {
	for {
		ss.mu.Lock()
		sent, ended, c := ss.sent, ss.ended, ss.sentC
		ss.mu.Unlock()
		if sent >= gen {
			return true
		}
		if ended {
			return false
		}
		select {
		case <-c:
		case <-ctx.Done():
			return false
		}
	}
}

// notifyLocked tells every stream of the network that node k changed
// (joined, left, or any field): it logs the change and wakes them all by
// closing one channel (wakeNetworkLocked), so a change costs the same
// however many nodes stream; each stream then reads what changed from
// the change log. Server.mu held.
func (ms *streams) notifyLocked(networkID int64, k key.NodePublic) {
	s := ms.core
	ms.noteChangeLocked(k)
	aclFull := s.aclNotifyLocked(networkID, k)
	if e := s.nodes[k]; s.policy != nil || aclFull || (e != nil && e.rec.Node.Edge) {
		// Every stream of the network recomputes everything (delta); those
		// of edges and of nodes that serve routes always do.
		ms.fullVer[networkID] = ms.changeVer
		ms.structVer.Store(ms.changeVer)
	}
	ms.wakeNetworkLocked(networkID)
	s.notifyEdgesLocked(networkID, k)
}

// networkNodesLocked returns the shared views of all unexpired nodes of a
// network. Server.mu held.
func (ms *streams) networkNodesLocked(networkID int64, now time.Time) []*wire.Node {
	s := ms.core
	var all []*wire.Node
	for _, e := range s.nodes {
		if e.rec.NetworkID == networkID && !e.rec.Node.Expired(now) {
			all = append(all, ms.sharedNodeLocked(e))
		}
	}
	return all
}

// peersLocked returns what self sees: its visible peers (as a list and
// as a set of slots) and its filter (from Options.Policy or the access
// policy, see aclLocked), adjusted for the public edge. Server.mu held.
func (ms *streams) peersLocked(self *wire.Node, networkID int64, now time.Time) (peerList, peerSet, []wire.FilterRule) {
	s := ms.core
	if ms.sharesPeersLocked(self.Key, self.Edge) {
		// The common case, once per full map and so once per peer per
		// node: what aclLocked and addEdgePeers would give (the access
		// policy's peers but edges, no filter: filterLocked makes it),
		// from the list shared by the nodes that see the same.
		sp := ms.sharedPeersLocked(self.Key, networkID, now)
		if sp == nil {
			return peerList{}, nil, []wire.FilterRule{}
		}
		set := slices.Clone(sp.set)
		l := peerList{all: sp.peers, shared: sp}
		if ps := ms.peerStates[self.Key]; ps != nil && set.has(ps.slot) {
			set.remove(ps.slot)
			l.skip = ps
		}
		return l, set, []wire.FilterRule{}
	}
	var filter []wire.FilterRule
	var visible []*wire.Node
	if s.policy != nil {
		filter, visible = s.policy(self, ms.networkNodesLocked(networkID, now))
	} else {
		filter, visible = s.aclLocked(self, networkID, now)
	}
	filter, visible = s.addEdgePeers(self, filter, visible, now)
	peers := make([]*peerState, 0, len(visible))
	set := make(peerSet, (len(ms.peerSlots)+63)/64)
	for _, n := range visible {
		if n == nil || n.Key == self.Key {
			continue
		}
		if ps := ms.peerLocked(n.Key); ps != nil && ps.view != nil && !set.has(ps.slot) {
			set.add(ps.slot)
			peers = append(peers, ps)
		}
	}
	return peerList{all: peers}, set, filter
}

func (ms *streams) dnsConfig(networkID int64) *wire.DNSConfig {
	s := ms.core
	s.mu.Lock()
	defer s.mu.Unlock()
	return ms.dnsConfigLocked(networkID)
}

// dnsConfigLocked is dnsConfig with Server.mu held.
func (ms *streams) dnsConfigLocked(networkID int64) *wire.DNSConfig {
	s := ms.core
	n := s.networks[networkID]
	return s.withDNSSettings(&wire.DNSConfig{Domain: n.Domain, SearchDomains: []string{n.Domain}})
}

func (ms *streams) handleMap(w http.ResponseWriter, r *http.Request) {
	s := ms.core
	var req wire.MapRequest
	nk, aerr := s.readRequest(w, r, &req, func() (key.NodePublic, time.Time) { return req.NodeKey, req.Timestamp })
	if aerr != nil {
		writeError(w, aerr)
		return
	}
	cleanMapRequest(&req)
	s.fan.ensureNode(r.Context(), nk) // registered through another coordinator
	now := s.now()
	s.mu.Lock()
	e := s.nodes[nk]
	var expired bool
	if e != nil {
		expired = e.rec.Node.Expired(now)
		e.version = req.Version
		e.peerRelayAsked = req.PeerRelay
	}
	s.mu.Unlock()
	if e == nil {
		writeError(w, errorf(http.StatusForbidden, wire.CodeNodeNotRegistered, "node not registered"))
		return
	}
	if expired {
		writeError(w, errorf(http.StatusForbidden, wire.CodeNodeExpired, "node key expired"))
		return
	}
	if _, aerr := s.updateSelf(context.WithoutCancel(r.Context()), nk, func(n *NodeRecord) {
		if !req.DiscoKey.IsZero() {
			n.Node.DiscoKey = req.DiscoKey
		}
		if req.Endpoints != nil || !req.Stream {
			n.Node.Endpoints = slices.Clone(req.Endpoints)
		}
		n.Node.HomeDERP = req.HomeDERP
		// Only a node the policy designates relays for its peers (a
		// relay sees who talks to whom); others' offers are dropped.
		n.Node.PeerRelay = 0
		if req.PeerRelay != 0 && s.currentPolicy().MayPeerRelay(&n.Node) {
			n.Node.PeerRelay = req.PeerRelay
		}
		if req.Hostname != "" {
			n.Node.Hostname = req.Hostname
		}
	}); aerr != nil {
		writeError(w, aerr)
		return
	}
	if !req.Stream {
		s.writeSealed(w, nk, &wire.MapResponse{ControlTime: s.now()})
		return
	}
	var resume *wire.PeersDigest
	if req.Version >= resumeVersion {
		resume = req.Peers
	}
	ms.serveStream(w, r, nk, req.Version >= splitFramesVersion, formFor(req.Version), req.Version >= wire.BlockedFramesVersion, resume)
}

// Shutdown tells each node when to come back (wire.TrailerRetryAfter):
// after restartGrace, about what a restarting coordinator takes to
// listen again, plus a random share of a spread of a millisecond per
// open stream, bounded by minRestartSpread and maxRestartSpread, so that
// nodes return at about a thousand a second rather than all at once.
const (
	restartGrace     = 500 * time.Millisecond
	minRestartSpread = time.Second
	maxRestartSpread = 10 * time.Second
)

// shutdownRetryAfter returns the wait a stream ending on shutdown tells
// its node.
func (ms *streams) shutdownRetryAfter() time.Duration {
	s := ms.core
	s.mu.Lock()
	n := len(ms.sessions)
	s.mu.Unlock()
	spread := min(max(time.Duration(n)*time.Millisecond, minRestartSpread), maxRestartSpread)
	return restartGrace + rand.N(spread)
}

// splitFramesVersion is the first wire.CapabilityVersion whose nodes
// reassemble a message split across frames (wire.MapResponse.More).
const splitFramesVersion = 13

// resumeVersion is the first wire.CapabilityVersion whose nodes resume
// their peers (wire.MapRequest.Peers, wire.MapResponse.PeersKept).
const resumeVersion = 15

// sentState is what a map stream last sent. Only its handler goroutine
// uses it.
type sentState struct {
	self *wire.Node
	// peers are the slots of the peers the node has, each counted in
	// its peerState.refs (holdLocked; delta keeps the count) so that
	// no other node takes the slot meanwhile; ver is the change count
	// they were sent as of: a peer whose view changed after ver is
	// sent again.
	peers  peerSet
	ver    uint64
	filter *streamFilter
	extras streamExtras // edge routes and DNS settings
	// shared is the shared peer list deltas last looked visibility up
	// in (sharedPeers), if still valid.
	shared *sharedPeers
	// wake is closed at the network's first change after ver.
	wake *netWake
	// batch is the least time between two deltas (batchDelay); open
	// the number of streams open when it was set.
	batch time.Duration
	open  int
}

// serveStream runs one map stream until the node goes away, the
// coordinator closes, or the node is removed or expires. split says
// whether the node reassembles messages split across frames, form
// how it takes map frames (JSON, binary or compact); resume, if
// not nil, is the digest of the peers the node holds: when it is that
// of the peers the node would get, the first message keeps them
// (wire.MapResponse.PeersKept) instead of sending them. blocked says
// whether the node takes blocked map frames (wire.BlockedMapFrame): it
// gets them if its stream is bound to its request, and its full map
// comes of a shared peer list.
func (ms *streams) serveStream(w http.ResponseWriter, r *http.Request, nk key.NodePublic, split bool, form wireForm, blocked bool, resume *wire.PeersDigest) {
	bin := form.binary()
	s := ms.core
	log := s.logger.With("node", nk.ShortString())
	rc := http.NewResponseController(w)

	s.mu.Lock()
	e := s.nodes[nk]
	if e == nil {
		s.mu.Unlock()
		writeError(w, errorf(http.StatusForbidden, wire.CodeNodeNotRegistered, "node not registered"))
		return
	}
	ss := newSession(nk, e.rec.NetworkID)
	old := ms.sessions[nk]
	ms.sessions[nk] = ss
	e.offlineSince = time.Time{}
	e.remote = PresenceNone // its stream state is this coordinator's now (fanout.go)
	graced := e.grace
	e.grace = false
	if old == nil {
		ms.open.Add(1)
	}
	switch {
	case old != nil:
		old.end(wire.CodeForbidden, "replaced by a newer stream of the same node")
	case graced:
		// Online already for its peers (grace.go): no change for them.
	default:
		ms.notifyLocked(e.rec.NetworkID, nk) // online
	}
	id := e.rec.Node.ID
	s.mu.Unlock()
	s.fan.streamChanged(id, true)
	s.met.streamsOpened.Add(1)
	log.Debug("map stream opened")

	defer func() {
		now := s.now()
		s.mu.Lock()
		mine := ms.sessions[nk] == ss
		if mine {
			delete(ms.sessions, nk)
			ms.open.Add(-1)
			if e := s.nodes[nk]; e != nil {
				e.offlineSince = now
				e.rec.Node.LastSeen = now
				if s.ctx.Err() == nil {
					ms.notifyLocked(e.rec.NetworkID, nk) // offline
				}
				// At a shutdown every stream is ending: the others'
				// nodes must not hear of this one as going offline.
				// (Other coordinators on a shared store learn of it
				// from streamChanged.)
			}
		}
		s.mu.Unlock()
		// At a shutdown on a store of its own the node is in the record
		// of streaming nodes (grace.go), and its last seen is written if
		// it does not come back: thousands of writes would hold up the
		// exit, and so the nodes' return.
		shutdown := s.ctx.Err() != nil && s.fan.feed == nil
		if mine {
			s.fan.streamChanged(id, false)
		}
		if mine && !shutdown {
			if err := s.persist(context.WithoutCancel(r.Context()), nk, false); err != nil && !errors.Is(err, ErrNotFound) {
				log.Warn("persist last seen", "err", err)
			}
		}
		log.Debug("map stream closed")
	}()

	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set(wire.HeaderKeepAlive, strconv.FormatInt(s.keepAlive.Milliseconds(), 10))
	w.Header().Add("Trailer", wire.TrailerError)
	w.Header().Add("Trailer", wire.TrailerRetryAfter)
	w.Header().Add("Trailer", wire.TrailerErrorSealed)
	w.WriteHeader(http.StatusOK)
	// Small, as every streaming node has one: a frame larger than the
	// buffer goes to the connection directly. A message of several
	// frames (a full map) goes instead through a big buffer (big), lent
	// by bigWriters for that message alone, if one is free.
	bw := bufio.NewWriterSize(w, 4<<10)
	var big *bufio.Writer
	defer func() {
		if big != nil {
			bigWriters.put(big)
		}
	}()

	box := s.frameSealer(w, nk) // bound to the request and numbered (bind.go)
	blocked = blocked && bin && split && box.bound
	// Each write must finish within writeWindow; the deadline is moved
	// on once less than half of it is left, not at every frame.
	writeWindow := max(2*s.keepAlive, 10*time.Second)
	var deadline time.Time
	sendFrame := func(f *mapFrame) error {
		f.resp.ControlTime = s.now()
		bodies, err := f.encode(split, form)
		if err != nil {
			return err
		}
		if now := time.Now(); deadline.Sub(now) < writeWindow/2 {
			deadline = now.Add(writeWindow)
			rc.SetWriteDeadline(deadline)
		}
		if big == nil && (f.more || len(bodies)+len(f.blocks) > 1) && bw.Buffered() == 0 {
			big = bigWriters.get(w)
		}
		out := bw
		if big != nil {
			out = big
		}
		for _, b := range bodies {
			// The frame: its length, then the sealed body, built in one
			// reusable buffer and written at once.
			fr := getBody(4 + key.SealOverhead + len(b))
			fr = box.SealAppend(append(fr, 0, 0, 0, 0), b)
			putBody(b)
			n := len(fr) - 4
			if n > wire.MaxFrameSize {
				putBody(fr)
				return errFrameTooLarge
			}
			binary.BigEndian.PutUint32(fr, uint32(n))
			_, err := out.Write(fr)
			putBody(fr)
			if err != nil {
				return err
			}
		}
		// The sealed blocks a blocked map frame names follow it, each
		// a frame of its own, shared by every stream that sends it.
		for _, b := range f.blocks {
			if len(b)-4 > wire.MaxFrameSize {
				return errFrameTooLarge
			}
			if _, err := out.Write(b); err != nil {
				return err
			}
		}
		f.blocks = nil
		if f.more {
			// More of the message follows at once: leave what is
			// buffered (a frame's tail) to go with it.
			return nil
		}
		err = out.Flush()
		if big != nil {
			bigWriters.put(big)
			big = nil
		}
		if err != nil {
			return err
		}
		return rc.Flush()
	}
	// send sends f, and after it the parts of an edge's routes that
	// need frames of their own (splitRoutes).
	rs := &routeSplit{log: log}
	send := func(f *mapFrame) error {
		err := s.edge.sendSplit(nk, f, sendFrame, rs)
		if errors.Is(err, errFrameTooLarge) {
			log.Error("map message too large for the node's frames: ending its stream", "err", err)
		}
		return err
	}

	var st sentState
	defer func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		ms.releaseLocked(st.peers)
	}()

	// The full map.
	{
		now := s.now()
		s.mu.Lock()
		e := s.nodes[nk]
		if e == nil {
			s.mu.Unlock()
			return
		}
		self := ms.sharedNodeLocked(e)
		peers, set, computed := ms.peersLocked(self, ss.networkID, now)
		ms.holdLocked(set)
		st.peers = set // held from now on, sent or not
		filter := s.filterLocked(self, ss.networkID, now, computed)
		filterSets := filter.fullSets()
		var kept bool
		var offline []key.NodePublic
		if resume != nil {
			var d wire.PeersDigest
			d, offline = ms.resumeLocked(peers)
			kept = d == *resume
		}
		var views []*peerView
		var chunks []*fullChunk
		if split && !kept && peers.shared != nil {
			chunks = peers.shared.chunksLocked(ms)
		}
		if !split && !kept {
			views = make([]*peerView, 0, peers.len())
			peers.each(func(ps *peerState) { views = append(views, ps.view) })
		}
		ver := ms.changeVer
		st.wake, st.open = ms.netWakeLocked(ss.networkID), int(ms.open.Load())
		st.batch = batchDelay(st.open)
		gen0 := ss.generation() // marks happen under s.mu: this map covers them
		s.mu.Unlock()
		f := &mapFrame{resp: &wire.MapResponse{
			Self:            self,
			DERPMap:         s.derpMap.Load(),
			DNS:             ms.dnsConfig(ss.networkID),
			PacketFilter:    filter.rules,
			PacketFilterSet: true,
			FilterSets:      filterSets,
		}, peers: views, full: true}
		if kept {
			f.resp.PeersKept, f.resp.PeersOffline, f.full = true, offline, false
			f.resp.ControlTime = s.now()
			if !f.fitsOneFrame(form) {
				// The list of peers offline does not fit a frame (tens of
				// thousands of them), and a resumed message is never
				// split: a full map is.
				f.resp.PeersKept, f.resp.PeersOffline, f.full = false, nil, true
				kept = false
			}
		}
		s.fillExtras(ss, &st.extras, f.resp)
		var err error
		if chunks != nil {
			selfSlot := -1
			if peers.skip != nil {
				selfSlot = peers.skip.slot
			}
			err = sendChunks(send, f, chunks, nk, selfSlot, blocked)
		} else if split && !kept {
			batch := fullMapBatch
			if bin {
				batch = fullMapBatchBinary
			}
			err = ms.sendFullMap(send, f, set, batch)
		} else {
			err = send(f)
		}
		if err != nil {
			log.Debug("send full map", "err", err)
			return
		}
		ss.delivered(gen0)
		st.self, st.peers, st.ver, st.filter, st.shared = self, set, ver, filter, peers.shared
	}

	// endShutdown ends the stream as the coordinator shuts down,
	// telling the node when to come back.
	endShutdown := func() {
		w.Header().Set(wire.TrailerError, string(wire.CodeUnavailable)+": coordinator is shutting down")
		w.Header().Set(wire.TrailerRetryAfter, strconv.FormatInt(ms.shutdownRetryAfter().Milliseconds(), 10))
	}
	ka := time.NewTicker(s.keepAlive)
	defer ka.Stop()
	var netChanged time.Time // when the change that woke the stream was made
	lastDelta := time.Now()  // the full map counts as one
	// Online flips held back (onlineDelay), when the first of them was
	// made, and the timer that sends them.
	var held map[key.NodePublic]*peerView
	var heldMarked time.Time
	var heldTimer *time.Timer
	var heldC <-chan time.Time
	var heldDue bool // the timer went off: the next delta goes at once
	defer func() {
		if heldTimer != nil {
			heldTimer.Stop()
		}
	}()
	for {
		// While online flips are held, the network's changes wait for
		// them (heldC): a burst of joins then costs each stream one delta
		// per onlineDelay, not one per batchDelay.
		netC := st.wake.c
		if heldC != nil {
			netC = nil
		}
		select {
		case <-s.ctx.Done():
			endShutdown()
			return
		case <-r.Context().Done():
			return
		case <-ka.C:
			if err := send(&mapFrame{resp: &wire.MapResponse{KeepAlive: true}}); err != nil {
				log.Debug("send keepalive", "err", err)
				return
			}
			continue
		case <-ss.wake:
		case <-netC:
			netChanged = st.wake.at
			if ms.structVer.Load() <= st.ver {
				// Only peers came online or went offline since the last
				// delta: in a burst of them, wait for onlineDelay before
				// computing anything, instead of computing a delta under
				// the server lock only to hold it (every stream wakes at
				// each change of the network).
				if due := lastDelta.Add(onlineDelay(int(ms.open.Load()))); time.Now().Before(due) {
					if heldMarked.IsZero() || netChanged.Before(heldMarked) {
						heldMarked = netChanged
					}
					netChanged = time.Time{}
					if heldTimer == nil {
						heldTimer = time.NewTimer(time.Until(due))
					} else {
						heldTimer.Reset(time.Until(due))
					}
					heldC = heldTimer.C
					continue
				}
			}
		case <-heldC:
			heldC = nil
			if ms.structVer.Load() <= st.ver {
				// Still only online flips. Streams opened since the
				// timer was set lengthen onlineDelay: in a connect burst
				// wait on without computing anything, rather than
				// compute a delta only to hold it.
				if due := lastDelta.Add(onlineDelay(int(ms.open.Load()))); time.Now().Before(due) {
					heldTimer.Reset(time.Until(due))
					heldC = heldTimer.C
					continue
				}
			}
			heldDue = true
		}
		// Gather a burst of changes (a restart brings every node back at
		// once) into one frame, unless the stream is ending.
		if !ss.isEnded() {
			batch := time.NewTimer(max(minDeltaBatch, time.Until(lastDelta.Add(st.batch))))
			select {
			case <-batch.C:
			case <-s.ctx.Done():
			case <-r.Context().Done():
			}
			batch.Stop()
		}
		if h := beforeTakeForTest.Load(); h != nil {
			(*h)(nk)
		}
		full, derp, ended, code, msg, gen := ss.take()
		marked := ss.takeFirstMark()
		if !netChanged.IsZero() && (marked.IsZero() || netChanged.Before(marked)) {
			marked = netChanged
		}
		netChanged = time.Time{}
		if ended {
			w.Header().Set(wire.TrailerError, string(code)+": "+msg)
			box.sealTrailer(w.Header(), string(code)+": "+msg)
			log.Info("ending map stream", "reason", code)
			return
		}
		f := ms.delta(ss, &st, full)
		sendNow := heldDue
		heldDue = false
		if f == nil {
			continue // the node is gone; end() follows
		}
		resp := f.resp
		if derp {
			resp.DERPMap = s.derpMap.Load()
			if resp.DERPMap == nil {
				resp.DERPMap = &wire.DERPMap{Regions: map[int]*wire.DERPRegion{}}
			}
		}
		onlineOnly := resp.Self == nil && len(f.peers) == 0 && len(resp.PeersRemoved) == 0 &&
			resp.DERPMap == nil && !resp.PacketFilterSet && len(resp.FilterSetChanges) == 0 && resp.DNS == nil && resp.EdgeRoutes == nil
		if onlineOnly && f.onlineStates().len() > 0 && !sendNow {
			if due := lastDelta.Add(onlineDelay(st.open)); time.Now().Before(due) {
				// Only peers coming and going: hold them until due.
				if held == nil {
					held = make(map[key.NodePublic]*peerView)
				}
				holdOnline(held, f)
				putOnline(f)
				if heldMarked.IsZero() || (!marked.IsZero() && marked.Before(heldMarked)) {
					heldMarked = marked
				}
				if heldC == nil {
					if heldTimer == nil {
						heldTimer = time.NewTimer(time.Until(due))
					} else {
						heldTimer.Reset(time.Until(due))
					}
					heldC = heldTimer.C
				}
				continue
			}
		}
		if len(held) > 0 || !heldMarked.IsZero() {
			mergeHeld(f, held)
			if !heldMarked.IsZero() && (marked.IsZero() || heldMarked.Before(marked)) {
				marked = heldMarked
			}
			held, heldMarked = nil, time.Time{}
			if heldC != nil {
				heldTimer.Stop()
				heldC = nil
			}
		}
		if onlineOnly && f.onlineStates().len() == 0 {
			ss.delivered(gen) // nothing this node sees changed
			continue
		}
		if err := send(f); err != nil {
			log.Debug("send map delta", "err", err)
			return
		}
		putOnline(f)
		ss.delivered(gen)
		s.observeFanout(marked)
		ka.Reset(s.keepAlive)
		lastDelta = time.Now()
	}
}

// peersDigest returns the digest of peers (wire.PeersDigest) from the
// hashes their views hold.
func peersDigest(peers peerList) wire.PeersDigest {
	d := wire.PeersDigest{Count: peers.len()}
	peers.each(func(ps *peerState) { d.Sum.Add(ps.view.hash) })
	return d
}

// fullMapBatch is how many peers each frame of a full map sent in pieces
// carries (about 40 KB of JSON); fullMapBatchBinary the same in binary
// map frames (about 35 KB of peer records), so that a frame's fixed costs
// (its seal, the write) are spread over as many bytes.
const (
	fullMapBatch       = 64
	fullMapBatchBinary = 192
)

// sendFullMap sends the full map f, whose peers are those in set, as
// frames of batchSize peers joined by More (the first also carries
// f's other fields). A node that reads slowly, or not yet, so makes its
// stream hold one frame rather than the whole map, which for thousands of
// streams opening at once is the difference between megabytes and
// gigabytes. Views are read as each frame is built, so some may be newer
// than the map's change count; the deltas after it send them again at
// worst.
func (ms *streams) sendFullMap(send func(*mapFrame) error, f *mapFrame, set peerSet, batchSize int) error {
	s := ms.core
	batch := make([]*peerView, 0, batchSize)
	next := set.next(0)
	for {
		batch = batch[:0]
		s.mu.Lock()
		for ; next >= 0 && len(batch) < batchSize; next = set.next(next + 1) {
			if pv := ms.peerSlots[next].view; pv != nil {
				batch = append(batch, pv)
			}
		}
		s.mu.Unlock()
		f.peers, f.full, f.more = batch, true, next >= 0
		if err := send(f); err != nil {
			return err
		}
		if next < 0 {
			return nil
		}
		f = &mapFrame{resp: &wire.MapResponse{}}
	}
}

// onlineBufs holds slices that deltas gather their online flips in
// (mapFrame.online), each a *[]*peerView: in a connect burst a stream's
// delta carries thousands, and growing a new slice for each was a tenth
// of delta's cost.
var onlineBufs sync.Pool

// putOnline gives the slice of f's online flips back for reuse by the
// next delta; f must not be used after.
func putOnline(f *mapFrame) {
	if cap(f.online) == 0 {
		return
	}
	clear(f.online) // what lies past its length is clear already
	b := f.online[:0]
	f.online = nil
	onlineBufs.Put(&b)
}

// delta computes the message that brings a node from what it was last
// sent (st) to now, and updates st to what the message makes it: it looks
// at the nodes the change log holds after st.ver, or with full at every
// peer. Changes happen under Server.mu, which delta holds, so st.ver
// becomes the change count it saw all of. It returns nil if the node
// itself is gone. A stream that fails to send the message ends, so st
// may run ahead of what was written.
func (ms *streams) delta(ss *session, st *sentState, full bool) *mapFrame {
	s := ms.core
	f := &mapFrame{resp: &wire.MapResponse{}}
	if b, ok := onlineBufs.Get().(*[]*peerView); ok {
		f.online = *b
	}
	resp := f.resp
	now := s.now()

	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.nodes[ss.key]
	if e == nil || e.rec.Node.Expired(now) {
		return nil
	}
	self := ms.sharedNodeLocked(e)
	switch {
	case st.ver < ms.changesBase:
		full = true // the change log no longer reaches back to st.ver
	case st.ver < ms.changeVer && (s.policy != nil || s.needsFullLocked(ss.key, ss.key)):
		// Every change is a full recompute for this stream (a PolicyFunc,
		// an edge, a node serving routes); one marked after take is
		// already in the log.
		full = true
	case st.ver < ms.fullVer[ss.networkID]:
		full = true // a change every stream of the network recomputes for
	}
	consider := func(ps *peerState, visible bool) {
		had := st.peers.has(ps.slot)
		switch {
		case !visible && had:
			resp.PeersRemoved = append(resp.PeersRemoved, ps.key)
			st.peers.remove(ps.slot)
			ps.refs--
			ms.dropLocked(ps)
		case visible && !had:
			f.peers = append(f.peers, ps.view)
			st.peers.add(ps.slot)
			ps.refs++
		case visible && had:
			switch pv := ps.view; {
			case pv.changed > st.ver:
				f.peers = append(f.peers, pv)
			case pv.online > st.ver:
				f.online = append(f.online, pv)
			}
		}
	}
	var computed []wire.FilterRule
	if full {
		var peers peerList
		var set peerSet
		peers, set, computed = ms.peersLocked(self, ss.networkID, now)
		st.peers.each(func(i int) {
			if !set.has(i) {
				consider(ms.peerSlots[i], false)
			}
		})
		peers.each(func(ps *peerState) { consider(ps, true) })
	} else {
		// Whether a changed node is visible: one bit of the shared list
		// if self has one, else asked of the node and the policy.
		var shared *sharedPeers
		if ms.sharesPeersLocked(ss.key, self.Edge) {
			if st.shared == nil || !st.shared.validLocked(ms, ss.networkID, now) {
				st.shared = ms.sharedPeersLocked(ss.key, ss.networkID, now)
			}
			shared = st.shared
		}
		selfSlot := -1
		if ps := ms.peerStates[ss.key]; ps != nil {
			selfSlot = ps.slot
		}
		ms.changedSinceLocked(st.ver, func(slot int, sv *slotView) {
			if slot == selfSlot {
				return
			}
			pv := sv.view
			if pv != nil && (sv.networkID != ss.networkID || sv.edge) {
				return // seen across networks or as an edge: changes of these come with full
			}
			var visible bool
			switch {
			case pv == nil:
			case shared != nil:
				visible = shared.set.has(slot)
				if visible && st.peers.has(slot) {
					// The common case, a change of a peer the node
					// has, taken from the slot's view alone.
					switch {
					case sv.changed > st.ver:
						f.peers = append(f.peers, pv)
					case sv.online > st.ver:
						f.online = append(f.online, pv)
					}
					return
				}
			default:
				k := ms.peerSlots[slot].key
				pe := s.nodes[k]
				visible = pe != nil && !pe.rec.Node.Expired(now) && s.mayPeerLocked(self, ss.networkID, k, now)
			}
			consider(ms.peerSlots[slot], visible)
		})
	}
	st.filter = s.filterDeltaLocked(self, ss.networkID, now, st.filter, full, computed, resp)
	s.edge.fillExtrasLocked(ss, &st.extras, resp)
	if !nodeEqual(self, st.self) {
		resp.Self = self
	}
	st.self, st.ver = self, ms.changeVer
	st.wake, st.open = ms.netWakeLocked(ss.networkID), int(ms.open.Load())
	st.batch = batchDelay(st.open)
	return f
}
