package coordinator

import (
	"context"
	"encoding/binary"
	"errors"
	"time"

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
// per stream). After a crash nothing was recorded, and every node is
// offline until it streams again, as before.
//
// Only a coordinator with a store of its own does this: with several on
// one database (NodeFeed), a node's online state is the one the store
// keeps per coordinator, and the nodes of one going away stream from the
// others.

// onlineSetting names the record of the nodes streaming at the last
// Close: the time (8 bytes, big-endian Unix nanoseconds), then each
// node's ID (8 bytes, big-endian). Empty after a start has read it.
const onlineSetting = "online_at_shutdown"

// onlineGrace is how long after a start the nodes streaming at the last
// shutdown stay online without a stream: the longest retry-after plus a
// margin for a loaded coordinator. Tests lower it.
var onlineGrace = restartGrace + maxRestartSpread + 10*time.Second

// maxOnlineRecordAge is the oldest shutdown record a start honours:
// nodes that have not heard from their coordinator for longer are not
// assumed to be still up.
const maxOnlineRecordAge = 10 * time.Minute

// recordOnline stores which nodes stream now, for the next start. Close
// calls it before it ends the streams.
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
		return time.Time{}, nil
	}
	b, err := s.store.Setting(ctx, onlineSetting)
	if errors.Is(err, ErrNotFound) || (err == nil && len(b) < 8) {
		return time.Time{}, nil
	}
	if err != nil {
		return time.Time{}, err
	}
	at := time.Unix(0, int64(binary.BigEndian.Uint64(b)))
	if age := now.Sub(at); age < 0 || age > maxOnlineRecordAge {
		return time.Time{}, nil
	}
	ids := make(map[wire.NodeID]bool, (len(b)-8)/8)
	for b = b[8:]; len(b) >= 8; b = b[8:] {
		ids[wire.NodeID(binary.BigEndian.Uint64(b))] = true
	}
	n := 0
	for _, e := range s.nodes {
		if ids[e.rec.Node.ID] && !e.rec.Node.Expired(now) {
			e.grace, e.offlineSince = true, time.Time{}
			n++
		}
	}
	s.logger.Info("nodes streaming at shutdown stay online while they come back", "nodes", n, "grace", onlineGrace)
	return now.Add(onlineGrace), nil
}

// graceLoop clears the record of the nodes streaming at the last
// shutdown, and ends the online grace at until: the nodes still in it go
// offline.
func (s *Server) graceLoop(until time.Time) {
	defer s.wg.Done()
	// Cleared here rather than in New: a start that writes to the store
	// before it serves keeps the nodes it asked to come back waiting.
	ctx, cancel := context.WithTimeout(s.ctx, 10*time.Second)
	if err := s.store.SetSetting(ctx, onlineSetting, []byte{}); err != nil && s.ctx.Err() == nil {
		s.logger.Warn("clear the record of streaming nodes", "err", err)
	}
	cancel()
	t := time.NewTimer(until.Sub(s.now()))
	defer t.Stop()
	select {
	case <-s.ctx.Done():
		return
	case <-t.C:
	}
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for k, e := range s.nodes {
		if !e.grace {
			continue
		}
		e.grace = false
		if s.sessions[k] == nil {
			e.offlineSince = now
			s.notifyLocked(e.rec.NetworkID, k) // offline
			n++
		}
	}
	s.logger.Info("online grace over", "offline", n)
}
