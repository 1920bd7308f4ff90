package coordinator

import (
	"bufio"
	"context"
	"errors"
	"net/http"
	"net/netip"
	"reflect"
	"slices"
	"strconv"
	"sync"
	"time"

	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// deltaBatchDelay is how long a stream gathers changes before sending a delta.
const deltaBatchDelay = 25 * time.Millisecond

// session is one open map stream. Its handler goroutine owns the stream
// and everything it last sent; other goroutines only mark what changed
// and wake it.
type session struct {
	key       key.NodePublic
	networkID int64
	wake      chan struct{} // cap 1; a value means "look at pending"

	mu      sync.Mutex // guards the following fields
	pending map[key.NodePublic]struct{}
	full    bool // recompute everything (policy in use)
	derp    bool // send the DERP map
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
	return &session{key: nk, networkID: networkID, wake: make(chan struct{}, 1), pending: make(map[key.NodePublic]struct{}), sentC: make(chan struct{})}
}

func (ss *session) poke() {
	select {
	case ss.wake <- struct{}{}:
	default:
	}
}

func (ss *session) mark(k key.NodePublic, full bool) {
	ss.mu.Lock()
	ss.pending[k] = struct{}{}
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

// take returns and clears what changed since the last call; gen is the
// mark count it covers, for delivered.
func (ss *session) take() (pending map[key.NodePublic]struct{}, full, derp, ended bool, code wire.ErrorCode, msg string, gen uint64) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	pending, ss.pending = ss.pending, make(map[key.NodePublic]struct{})
	full, derp = ss.full, ss.derp
	ss.full, ss.derp = false, false
	return pending, full, derp, ss.ended, ss.endCode, ss.endMsg, ss.marks
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
// (joined, left, or any field). s.mu held.
func (s *Server) notifyLocked(networkID int64, k key.NodePublic) {
	aclFull := s.aclNotifyLocked(networkID, k)
	for _, ss := range s.sessions {
		if ss.networkID == networkID {
			ss.mark(k, s.policy != nil || aclFull || s.needsFullLocked(ss.key, k))
		}
	}
	s.notifyEdgesLocked(networkID, k)
}

// networkNodesLocked returns the views of all unexpired nodes of a network. s.mu held.
func (s *Server) networkNodesLocked(networkID int64, now time.Time) []*wire.Node {
	var all []*wire.Node
	for _, e := range s.nodes {
		if e.rec.NetworkID == networkID && !e.rec.Node.Expired(now) {
			all = append(all, s.viewLocked(e))
		}
	}
	return all
}

// peersLocked returns what self sees: its visible peers and its filter
// (from Options.Policy or the access policy, see aclLocked), adjusted for
// the public edge. s.mu held.
func (s *Server) peersLocked(self *wire.Node, networkID int64, now time.Time) (map[key.NodePublic]*wire.Node, []wire.FilterRule) {
	var filter []wire.FilterRule
	var visible []*wire.Node
	if s.policy != nil {
		filter, visible = s.policy(self, s.networkNodesLocked(networkID, now))
	} else {
		filter, visible = s.aclLocked(self, networkID, now)
	}
	filter, visible = s.addEdgePeers(self, filter, visible, now)
	peers := make(map[key.NodePublic]*wire.Node, len(visible))
	for _, n := range visible {
		if n != nil && n.Key != self.Key {
			peers[n.Key] = n
		}
	}
	return peers, filter
}

// defaultFilter is the filter without a policy: every overlay source
// address may reach all of self's ports. Only peers of self's network can
// deliver packets to it (nothing else is a WireGuard peer), so this is
// "everyone in the network", and it stays the same as peers come and go.
func defaultFilter(self *wire.Node) []wire.FilterRule {
	dst := make([]wire.NetPortRange, 0, len(self.Addresses))
	for _, a := range self.Addresses {
		dst = append(dst, wire.NetPortRange{IP: a, First: 0, Last: 65535})
	}
	return []wire.FilterRule{{SrcIPs: []netip.Prefix{CGNATPrefix, ULAPrefix}, DstPorts: dst}}
}

func (s *Server) dnsConfig(networkID int64) *wire.DNSConfig {
	s.mu.Lock()
	n := s.networks[networkID]
	s.mu.Unlock()
	return s.withDNSSettings(&wire.DNSConfig{Domain: n.Domain, SearchDomains: []string{n.Domain}})
}

func (s *Server) handleMap(w http.ResponseWriter, r *http.Request) {
	var req wire.MapRequest
	nk, aerr := s.readRequest(w, r, &req, func() (key.NodePublic, time.Time) { return req.NodeKey, req.Timestamp })
	if aerr != nil {
		writeError(w, aerr)
		return
	}
	now := s.now()
	s.mu.Lock()
	e := s.nodes[nk]
	var expired bool
	if e != nil {
		expired = e.rec.Node.Expired(now)
		e.version = req.Version
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
		n.Node.PeerRelay = req.PeerRelay
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
	s.serveStream(w, r, nk)
}

// serveStream runs one map stream until the node goes away, the
// coordinator closes, or the node is removed or expires.
func (s *Server) serveStream(w http.ResponseWriter, r *http.Request, nk key.NodePublic) {
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
	old := s.sessions[nk]
	s.sessions[nk] = ss
	e.offlineSince = time.Time{}
	if old != nil {
		old.end(wire.CodeForbidden, "replaced by a newer stream of the same node")
	} else {
		s.notifyLocked(e.rec.NetworkID, nk) // online
	}
	s.mu.Unlock()
	s.met.streamsOpened.Add(1)
	log.Debug("map stream opened")

	defer func() {
		now := s.now()
		s.mu.Lock()
		mine := s.sessions[nk] == ss
		if mine {
			delete(s.sessions, nk)
			if e := s.nodes[nk]; e != nil {
				e.offlineSince = now
				e.rec.Node.LastSeen = now
				s.notifyLocked(e.rec.NetworkID, nk) // offline
			}
		}
		s.mu.Unlock()
		if mine {
			if err := s.persist(context.WithoutCancel(r.Context()), nk); err != nil && !errors.Is(err, ErrNotFound) {
				log.Warn("persist last seen", "err", err)
			}
		}
		log.Debug("map stream closed")
	}()

	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set(wire.HeaderKeepAlive, strconv.FormatInt(s.keepAlive.Milliseconds(), 10))
	w.Header().Set("Trailer", wire.TrailerError)
	w.WriteHeader(http.StatusOK)
	bw := bufio.NewWriterSize(w, 32<<10)

	box := s.boxes.get(s.priv, nk) // one X25519 per stream, not per frame
	send := func(resp *wire.MapResponse) error {
		resp.ControlTime = s.now()
		b, err := jsonMarshal(resp)
		if err != nil {
			return err
		}
		sealed := box.Seal(b)
		if len(sealed) > wire.MaxFrameSize {
			return errors.New("map frame too large")
		}
		rc.SetWriteDeadline(time.Now().Add(max(2*s.keepAlive, 10*time.Second)))
		if err := writeFrame(bw, sealed); err != nil {
			return err
		}
		if err := bw.Flush(); err != nil {
			return err
		}
		return rc.Flush()
	}

	// State the handler last sent.
	var (
		sentSelf   *wire.Node
		sentPeers  map[key.NodePublic]*wire.Node
		sentFilter []wire.FilterRule
		sentExtra  streamExtras // edge routes and DNS settings
	)

	// The full map.
	{
		now := s.now()
		s.mu.Lock()
		e := s.nodes[nk]
		if e == nil {
			s.mu.Unlock()
			return
		}
		self := s.viewLocked(e)
		peers, filter := s.peersLocked(self, ss.networkID, now)
		gen0 := ss.generation() // marks happen under s.mu: this map covers them
		s.mu.Unlock()
		resp := &wire.MapResponse{
			Self:            self,
			Peers:           sortedPeers(peers),
			DERPMap:         s.derpMap.Load(),
			DNS:             s.dnsConfig(ss.networkID),
			PacketFilter:    filter,
			PacketFilterSet: true,
		}
		s.fillExtras(ss, &sentExtra, resp)
		if err := send(resp); err != nil {
			log.Debug("send full map", "err", err)
			return
		}
		ss.delivered(gen0)
		sentSelf, sentPeers, sentFilter = self, peers, filter
	}

	ka := time.NewTicker(s.keepAlive)
	defer ka.Stop()
	for {
		select {
		case <-s.ctx.Done():
			w.Header().Set(wire.TrailerError, string(wire.CodeUnavailable)+": coordinator is shutting down")
			return
		case <-r.Context().Done():
			return
		case <-ka.C:
			if err := send(&wire.MapResponse{KeepAlive: true}); err != nil {
				log.Debug("send keepalive", "err", err)
				return
			}
			continue
		case <-ss.wake:
		}
		// Gather a burst of changes (a restart brings every node back at
		// once) into one frame, unless the stream is ending.
		if !ss.isEnded() {
			batch := time.NewTimer(deltaBatchDelay)
			select {
			case <-batch.C:
			case <-s.ctx.Done():
			case <-r.Context().Done():
			}
			batch.Stop()
		}
		pending, full, derp, ended, code, msg, gen := ss.take()
		marked := ss.takeFirstMark()
		if ended {
			w.Header().Set(wire.TrailerError, string(code)+": "+msg)
			log.Info("ending map stream", "reason", code)
			return
		}
		resp, newSelf, newPeers, newFilter := s.delta(ss, sentSelf, sentPeers, sentFilter, pending, full)
		if newSelf == nil {
			continue // the node is gone; end() follows
		}
		if derp {
			resp.DERPMap = s.derpMap.Load()
			if resp.DERPMap == nil {
				resp.DERPMap = &wire.DERPMap{Regions: map[int]*wire.DERPRegion{}}
			}
		}
		s.fillExtras(ss, &sentExtra, resp)
		if resp.Self == nil && resp.Peers == nil && len(resp.PeersChanged) == 0 && len(resp.PeersRemoved) == 0 &&
			len(resp.PeersOnline) == 0 && resp.DERPMap == nil && !resp.PacketFilterSet && resp.DNS == nil && resp.EdgeRoutes == nil {
			ss.delivered(gen) // nothing this node sees changed
			continue
		}
		if err := send(resp); err != nil {
			log.Debug("send map delta", "err", err)
			return
		}
		ss.delivered(gen)
		s.observeFanout(marked)
		ka.Reset(s.keepAlive)
		sentSelf, sentPeers, sentFilter = newSelf, newPeers, newFilter
	}
}

// delta computes the MapResponse that brings a node from what it was last
// sent to now. pending are the keys that changed; full means look at all.
// It returns nil newSelf if the node itself is gone.
func (s *Server) delta(ss *session, sentSelf *wire.Node, sentPeers map[key.NodePublic]*wire.Node, sentFilter []wire.FilterRule,
	pending map[key.NodePublic]struct{}, full bool) (resp *wire.MapResponse, newSelf *wire.Node, newPeers map[key.NodePublic]*wire.Node, newFilter []wire.FilterRule) {
	resp = &wire.MapResponse{}
	now := s.now()
	var current map[key.NodePublic]*wire.Node
	var policyFilter []wire.FilterRule

	s.mu.Lock()
	e := s.nodes[ss.key]
	if e == nil || e.rec.Node.Expired(now) {
		s.mu.Unlock()
		return resp, nil, nil, nil
	}
	self := s.viewLocked(e)
	if full {
		current, policyFilter = s.peersLocked(self, ss.networkID, now)
	} else {
		current = make(map[key.NodePublic]*wire.Node, len(pending))
		for k := range pending {
			if k == ss.key {
				continue
			}
			if pe := s.nodes[k]; pe != nil && pe.rec.NetworkID == ss.networkID && !pe.rec.Node.Expired(now) &&
				s.mayPeerLocked(self, ss.networkID, k, now) {
				current[k] = s.viewLocked(pe)
			}
		}
	}
	s.mu.Unlock()

	if !nodeEqual(self, sentSelf) {
		resp.Self = self
	}
	newPeers = sentPeers
	cloned := false
	cow := func() {
		if !cloned {
			newPeers = make(map[key.NodePublic]*wire.Node, len(sentPeers)+1)
			for k, v := range sentPeers {
				newPeers[k] = v
			}
			cloned = true
		}
	}
	consider := func(k key.NodePublic) {
		cur, visible := current[k]
		old, had := sentPeers[k]
		switch {
		case !visible && had:
			resp.PeersRemoved = append(resp.PeersRemoved, k)
			cow()
			delete(newPeers, k)
		case visible && !had:
			resp.PeersChanged = append(resp.PeersChanged, cur)
			cow()
			newPeers[k] = cur
		case visible && had:
			if !nodeEqual(old, cur) {
				resp.PeersChanged = append(resp.PeersChanged, cur)
			} else if old.Online != cur.Online {
				if resp.PeersOnline == nil {
					resp.PeersOnline = make(map[key.NodePublic]bool)
				}
				resp.PeersOnline[k] = cur.Online
			} else {
				return
			}
			cow()
			newPeers[k] = cur
		}
	}
	if full {
		for k := range sentPeers {
			consider(k)
		}
		for k := range current {
			if _, had := sentPeers[k]; !had {
				consider(k)
			}
		}
	} else {
		for k := range pending {
			if k != ss.key {
				consider(k)
			}
		}
	}
	newFilter = sentFilter
	switch {
	case full:
		if !reflect.DeepEqual(policyFilter, sentFilter) {
			newFilter = policyFilter
			resp.PacketFilter, resp.PacketFilterSet = policyFilter, true
		}
	}
	return resp, self, newPeers, newFilter
}

func sortedPeers(m map[key.NodePublic]*wire.Node) []*wire.Node {
	out := make([]*wire.Node, 0, len(m))
	for _, n := range m {
		out = append(out, n)
	}
	slices.SortFunc(out, func(a, b *wire.Node) int {
		if a.Name != b.Name {
			if a.Name < b.Name {
				return -1
			}
			return 1
		}
		return int(a.ID - b.ID)
	})
	return out
}
