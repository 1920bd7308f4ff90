package coordinator

import (
	"context"
	"encoding/binary"
	"errors"
	"time"

	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// Online grace after a restart. A coordinator that shuts down (Close)
// tells each streaming node when to come back (wire.TrailerRetryAfter,
// restartGrace plus up to maxRestartSpread) and records which nodes were
// streaming (onlineSetting). The next start on the same store shows
// those nodes online for onlineGrace, as their peers last saw them: a
// node coming back within it is no change for anyone, where it used to
// be an offline and an online flip for every peer. Once the grace ends,
// the nodes that did not come back go offline, all at once (one delta
// per stream). The record is also written every onlineRecordEvery while
// the coordinator runs, so that after a crash (kill -9, the machine
// going down) the nodes streaming up to that much before it get the same
// grace; they come back on their own backoff rather than at a time the
// coordinator set, and those not seen again go offline when it ends. A
// node that began to stream after the last write is offline until it
// streams again, as every node was after a crash before.
//
// With a store shared by several coordinators (NodeFeed, PostgreSQL) the
// store keeps each node's stream state per coordinator, and the grace
// goes through it instead: a coordinator that shuts down leaves the
// states of the streams its shutdown ended, and records that it stopped
// (NodeFeed.StopBeating) until onlineGrace from then; every coordinator,
// its own next start included (loadOnline reads them before it serves),
// shows those nodes online meanwhile, and the first heartbeat after the
// grace drops the states of those that did not stream again (offline).
// A crash leaves no such record: its nodes are unknown (fanout.go), as
// for any coordinator that stops beating.

// onlineSetting names the record of the nodes streaming at the last
// Close, or the last onlineRecordEvery before a crash: the time (8 bytes, big-endian Unix nanoseconds), then each
// node's ID (8 bytes, big-endian). Empty after a start has read it.
const onlineSetting = "online_at_shutdown"

// onlineGrace is how long after a start the nodes streaming at the last
// shutdown stay online without a stream: the longest retry-after, plus
// the longest backoff of a node that came back before the coordinator
// listened again (30 s in coordclient; with 5,000 nodes the old process
// took seconds to exit and some nodes were in backoff for 20 s), plus a
// margin. Options.OnlineGrace replaces it; tests lower it.
var onlineGrace = restartGrace + maxRestartSpread + 35*time.Second

// onlineRecordEvery is how often a running coordinator records which
// nodes stream. Tests lower it.
var onlineRecordEvery = 30 * time.Second

// maxOnlineRecordAge is the oldest shutdown record a start honours:
// nodes that have not heard from their coordinator for longer are not
// assumed to be still up.
const maxOnlineRecordAge = 10 * time.Minute

// recordOnline stores which nodes stream now, for the next start. Close
// calls it before it ends the streams, and onlineLoop every
// onlineRecordEvery.
func (s *Server) recordOnline(ctx context.Context) {
	if s.fan.feed != nil {
		return
	}
	s.mu.Lock()
	b := binary.BigEndian.AppendUint64(make([]byte, 0, 8+8*len(s.sessions)), uint64(s.now().UnixNano()))
	for k := range s.sessions {
		if e := s.nodes[k]; e != nil {
			b = binary.BigEndian.AppendUint64(b, uint64(e.rec.Node.ID))
		}
	}
	s.mu.Unlock()
	if err := s.store.SetSetting(ctx, onlineSetting, b); err != nil {
		s.logger.Warn("record streaming nodes for the next start", "err", err)
	}
}

// loadOnline reads the record of the nodes streaming at the last
// shutdown and puts them in grace (nodeEntry.grace). It returns when the
// grace ends; zero if there was no record. Called by load, before the
// Server runs; graceLoop then clears the record, so that a crash later
// does not find it.
func (s *Server) loadOnline(ctx context.Context, now time.Time) (time.Time, error) {
	if s.fan.feed != nil {
		return time.Time{}, s.loadRemoteOnline(ctx)
	}
	b, err := s.store.Setting(ctx, onlineSetting)
	if errors.Is(err, ErrNotFound) || (err == nil && len(b) < 8) {
		return time.Time{}, nil
	}
	if err != nil {
		return time.Time{}, err
	}
	at := time.Unix(0, int64(binary.BigEndian.Uint64(b)))
	ids := make(map[wire.NodeID]bool, (len(b)-8)/8)
	for b = b[8:]; len(b) >= 8; b = b[8:] {
		ids[wire.NodeID(binary.BigEndian.Uint64(b))] = true
	}
	s.onlineRecord = true
	if age := now.Sub(at); age < 0 || age > maxOnlineRecordAge {
		if age < 0 {
			return time.Time{}, nil // written by a clock that ran ahead
		}
		// Too old to assume its nodes are still up; but they were seen
		// when it was written, and the shutdown wrote no last seen:
		// onlineLoop persists it.
		for _, e := range s.nodes {
			if ids[e.rec.Node.ID] && e.rec.Node.LastSeen.Before(at) {
				e.rec.Node.LastSeen = at
				s.seenAtRecord = append(s.seenAtRecord, e.rec.Node.Key)
			}
		}
		return time.Time{}, nil
	}
	s.graceFrom = at
	n := 0
	for _, e := range s.nodes {
		if ids[e.rec.Node.ID] && !e.rec.Node.Expired(now) {
			e.grace, e.offlineSince = true, time.Time{}
			n++
		}
	}
	s.logger.Info("nodes streaming at shutdown stay online while they come back", "nodes", n, "grace", s.onlineGrace)
	return now.Add(s.onlineGrace), nil
}

// loadRemoteOnline reads which nodes stream from other coordinators on
// a shared store, or did from one that shut down and whose grace runs,
// before the Server serves: a node that comes back at once must not get
// a first map that shows its peers offline until the listener resyncs.
func (s *Server) loadRemoteOnline(ctx context.Context) error {
	remote, err := s.fan.feed.RemoteOnline(ctx)
	if err != nil {
		return err
	}
	n := 0
	for _, e := range s.nodes {
		if p := remote[e.rec.Node.ID]; p != PresenceNone {
			e.remote, e.offlineSince = p, time.Time{}
			n++
		}
	}
	if n > 0 {
		s.logger.Info("nodes streaming from other coordinators, or from one that shut down and asked them back", "nodes", n)
	}
	return nil
}

// onlineLoop clears the record of the nodes streaming at the last
// shutdown (if there was one: a start that writes to the store before it
// serves would keep the nodes it asked to come back waiting), persists
// the last seen of the nodes of a record too old for a grace, ends the
// online grace at until (zero: none), and records the streaming nodes
// every onlineRecordEvery, until the Server closes.
func (s *Server) onlineLoop(until time.Time) {
	defer s.wg.Done()
	if s.onlineRecord {
		ctx, cancel := context.WithTimeout(s.ctx, 10*time.Second)
		if err := s.store.SetSetting(ctx, onlineSetting, []byte{}); err != nil && s.ctx.Err() == nil {
			s.logger.Warn("clear the record of streaming nodes", "err", err)
		}
		for _, k := range s.seenAtRecord {
			if err := s.persist(ctx, k, false); err != nil && !errors.Is(err, ErrNotFound) && s.ctx.Err() == nil {
				s.logger.Warn("persist last seen", "node", k.ShortString(), "err", err)
			}
		}
		s.seenAtRecord = nil
		cancel()
	}
	var graceC <-chan time.Time
	if !until.IsZero() {
		t := time.NewTimer(until.Sub(s.now()))
		defer t.Stop()
		graceC = t.C
	}
	rec := time.NewTicker(onlineRecordEvery)
	defer rec.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-graceC:
			graceC = nil
			s.endGrace()
		case <-rec.C:
			ctx, cancel := context.WithTimeout(s.ctx, 10*time.Second)
			s.recordOnline(ctx)
			cancel()
		}
	}
}

// endGrace ends the online grace: the nodes still in it go offline,
// last seen when the record was written (their streams' ends at the
// shutdown wrote nothing).
func (s *Server) endGrace() {
	now := s.now()
	var gone []key.NodePublic
	s.mu.Lock()
	for k, e := range s.nodes {
		if !e.grace {
			continue
		}
		e.grace = false
		if s.sessions[k] == nil {
			e.offlineSince = now
			if e.rec.Node.LastSeen.Before(s.graceFrom) {
				e.rec.Node.LastSeen = s.graceFrom
			}
			s.notifyLocked(e.rec.NetworkID, k) // offline
			gone = append(gone, k)
		}
	}
	s.mu.Unlock()
	s.logger.Info("online grace over", "offline", len(gone))
	for _, k := range gone {
		if err := s.persist(s.ctx, k, false); err != nil && !errors.Is(err, ErrNotFound) && s.ctx.Err() == nil {
			s.logger.Warn("persist last seen", "node", k.ShortString(), "err", err)
		}
	}
}
