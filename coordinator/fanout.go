package coordinator

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// Several coordinators on one store. Each coordinator keeps every node in
// memory (see Server); when others write the same store, memory goes
// stale. Two things bring it back:
//
//   - syncNodes re-reads every node from the store and reconciles memory
//     with it. Registration runs it when the store refuses a node
//     because another coordinator took its name, address or key, and the
//     fan-out runs it after each (re)connection of its listener.
//   - A store that implements NodeFeed (sqlstore on PostgreSQL, through
//     LISTEN/NOTIFY) tells the coordinator the ID of every node another
//     coordinator wrote; applyNodeChanges re-reads those nodes (all that
//     came together at once) and tells the coordinator's own streams, as
//     a local change would.
//
// The rest of what coordinators share goes the same way (a Change names
// its kind and key, apply re-reads it): the policy and user groups
// (reloadPolicy), DNS settings (reloadDNS), edge routes and custom
// domains (reloadRoute, reloadDomains) and registrations waiting for
// approval (approveshare.go). After a reconnection resync re-reads them
// all. A coordinator's own writes come back to it as notifications too,
// and the store drops them (their origin is its own), so nothing is
// applied twice. Sealed requests are checked against the store as well
// (replay.go).
//
// Whether a node is online (has a map stream) is kept in the store too,
// per coordinator: a node streaming on coordinator A is online for B's
// streams (nodeEntry.remote). When A stops beating, its nodes are unknown
// for the others (they may be up, they may be down) until they stream
// from another coordinator, or for unknownTimeout, after which they are
// offline. When A shuts down cleanly it has told its nodes when to come
// back: their stream states stay, and count as online for every
// coordinator (A's next start included) for the online grace (grace.go),
// after which those not streaming again are offline.

// Presence is whether a node streams from another coordinator sharing
// the store.
type Presence uint8

const (
	// PresenceNone: the node streams from no other coordinator.
	PresenceNone Presence = iota
	// PresenceOnline: the node streams from another coordinator, which
	// beats.
	PresenceOnline
	// PresenceUnknown: the node streamed from a coordinator that stopped
	// beating; whether it is still up is not known.
	PresenceUnknown
)

// NodeFeed is what a store shared by several coordinators adds: the
// changes other coordinators make to nodes, and which coordinator each
// node streams from. The coordinator finds it on Options.Store by type
// assertion; sqlstore's Store implements it, and on PostgreSQL its
// SharedNodes reports true.
type NodeFeed interface {
	// SharedNodes reports whether other coordinators may write the
	// store's nodes; false leaves the rest of NodeFeed unused.
	SharedNodes() bool
	// ListenNodes calls changed with every write another store made:
	// a node inserted, changed, deleted, gone on- or offline, and the
	// other shared state Change names, until ctx is done, and returns
	// ctx's error. It calls resync after each (re)connection of its
	// listener, before the changes made after it; changes made while it
	// was disconnected are not reported one by one, so when resync fails
	// the listener connects again (after a pause that grows with each
	// failure) and calls it again. When changed fails (a read of what
	// changed failed), the change would be lost: the listener connects
	// again and resyncs, as after a break. A listener that stops hearing from
	// the database (a connection left half open) checks it and connects
	// again within seconds. A notification it cannot read (of a
	// coordinator of another version) is a change it would lose: it
	// connects again and resyncs too. It calls failed with each reason its
	// listener could not connect, broke, could not resync or read a
	// notification, before it connects again.
	//
	// It gives changed the changes in batches, in the order they were
	// made, each once: those that came while the last batch was being
	// applied, so that a burst of writes elsewhere costs a read per
	// batch (NodesByID), not per change. A node's stream state comes as
	// a ChangePresence, at most one per node in a batch (its latest),
	// or as a ChangeNode.
	ListenNodes(ctx context.Context, resync func(ctx context.Context) error, changed func(ctx context.Context, chs []Change) error, failed func(error)) error
	// NodesByID returns those of the nodes ids that exist (the others
	// were deleted), and the Presence of those among them that stream
	// from a coordinator on another store (the others are absent).
	NodesByID(ctx context.Context, ids []wire.NodeID) (recs []*NodeRecord, remote map[wire.NodeID]Presence, err error)
	// NodeByKey returns the node whose key is nk, and whether it streams
	// from a coordinator on another store; ErrNotFound if there is no
	// such node.
	NodeByKey(ctx context.Context, nk key.NodePublic) (rec *NodeRecord, remote Presence, err error)
	// RemoteOnline returns the Presence of the nodes that stream from a
	// coordinator on another store (or did, from one that stopped
	// beating); the others are absent.
	RemoteOnline(ctx context.Context) (map[wire.NodeID]Presence, error)
	// SetStreamStates records, for each of states (a node at most once),
	// that the node streams (online) or no longer streams from this
	// store's coordinator since At (this process's clock; the store takes
	// its age, not its time, so clocks of coordinators need not agree).
	// Going offline leaves a node that meanwhile streams elsewhere as it
	// is, and going online does not take a node from a coordinator it
	// began streaming from after At: a write that was delayed undoes no
	// newer one. Nodes deleted meanwhile are skipped. It takes a few
	// statements whatever the number of states; an error means some may
	// not be recorded.
	SetStreamStates(ctx context.Context, states []StreamState) error
	// Heartbeat records that this store's coordinator is alive; the
	// coordinator calls it every heartbeatInterval. The nodes of a
	// coordinator that stopped beating become PresenceUnknown a while
	// later, and their stream states are dropped (they go offline) after
	// the unknown timeout; Heartbeat returns the nodes whose Presence
	// changed so since its last call, for its own coordinator to re-read
	// (the others hear of drops through ListenNodes). missing reports that
	// this store had no beat on record: its first, or after a stall that
	// had its stream states dropped, which the coordinator then writes
	// again.
	Heartbeat(ctx context.Context) (changed []wire.NodeID, missing bool, err error)
	// StopBeating records that this store's coordinator stops, having
	// asked the nodes streaming from it to come back within grace: it
	// no longer counts as running, but its stream states count as online
	// (PresenceOnline) for every coordinator until grace has passed,
	// then those of the nodes not streaming again are dropped (offline)
	// by the next Heartbeat. Closing the store keeps that record.
	StopBeating(ctx context.Context, grace time.Duration) error
	// ClaimSecrets compares secrets (setting name to value) with the
	// stored settings when coordinators on other stores beat (within the
	// time after which their nodes turn unknown), returning those found
	// (stored) and ok false, having written nothing, if any differs; else
	// (ok) it writes secrets and records this store's beat, so that a
	// coordinator claiming next finds this one running. Claims are
	// atomic: of two coordinators with different secrets claiming at
	// once, one is refused.
	ClaimSecrets(ctx context.Context, secrets map[string][]byte) (stored map[string][]byte, ok bool, err error)
}

// StreamState is a node's stream state on a coordinator, to record
// (NodeFeed.SetStreamStates): it streams (Online) or no longer streams
// since At.
type StreamState struct {
	ID     wire.NodeID
	Online bool
	At     time.Time
}

// ChangeKind is what a Change names.
type ChangeKind int

const (
	// ChangeNode is a write to a node or its stream state; Change.ID is
	// the node's ID.
	ChangeNode ChangeKind = iota
	// ChangeSetting is a write to a SettingStore value (the policy, user
	// groups, DNS settings); Change.Name is the setting's name.
	ChangeSetting
	// ChangeRoute is a write to an edge route; Change.ID is its ID.
	ChangeRoute
	// ChangeDomain is a write to a custom domain claim; Change.Name is
	// the domain.
	ChangeDomain
	// ChangePending is a write to a registration waiting for approval
	// (ApprovalStore); Change.Name is its code.
	ChangePending
	// ChangePresence is a write to a node's stream state alone (it began
	// or stopped streaming from a coordinator): Change.ID is the node's
	// ID and Change.Presence what it is now, so nothing is re-read.
	ChangePresence
)

// Change is one write another coordinator made to the shared store, as
// little as names it: the listener re-reads what it names.
type Change struct {
	Kind     ChangeKind
	ID       int64
	Name     string
	Presence Presence // for ChangePresence
}

// heartbeatInterval is how often a coordinator sharing its store beats.
const heartbeatInterval = 3 * time.Second

// fanout follows the changes other coordinators make to nodes. Its zero
// value (feed nil) does nothing: the Server is the store's only writer.
type fanout struct {
	core *Server
	feed NodeFeed // nil: no other coordinators

	// online is the stream state waiting to be written to the store,
	// coalesced per node (the last state wins); onlineLoop writes it,
	// and puts back a write that failed unless a newer one is waiting.
	// started holds when each node streaming here began to.
	mu      sync.Mutex // guards online and started
	online  map[wire.NodeID]streamState
	started map[wire.NodeID]time.Time
	wake    chan struct{} // cap 1

	// keys maps node IDs to keys for ChangePresence, which names nodes
	// by ID; an entry is checked against Server.nodes before use, and
	// the map is built again from them when one is missing or stale.
	// Guarded by Server.mu.
	keys map[wire.NodeID]key.NodePublic

	beaten bool // a heartbeat succeeded; beatLoop's alone
	// unapplied are dropped nodes a heartbeat reported whose read failed,
	// for the next beat; beatLoop's alone.
	unapplied []wire.NodeID
}

// streamState is a node's stream state on this coordinator, to write.
type streamState struct {
	online bool
	at     time.Time // when the stream began or ended
}

// onlineRetry is how long onlineLoop waits to write stream states again
// after a write failed.
const onlineRetry = time.Second

// onlineGather is the least time between two writes of stream states:
// when thousands of nodes (re)connect, those of a moment go in one
// statement, not in one each, and the other coordinators get them in one
// batch of notifications. A lone change waits for nothing.
const onlineGather = 100 * time.Millisecond

// newFanout returns the fan-out of core on store.
func newFanout(core *Server, store Store) *fanout {
	f := &fanout{
		core:    core,
		online:  make(map[wire.NodeID]streamState),
		started: make(map[wire.NodeID]time.Time),
		wake:    make(chan struct{}, 1),
	}
	if feed, ok := store.(NodeFeed); ok && feed.SharedNodes() {
		f.feed = feed
	}
	return f
}

// start runs the listener, the online writer and the heartbeat, counted
// in core.wg.
func (f *fanout) start() {
	if f.feed == nil {
		return
	}
	s := f.core
	s.wg.Add(3)
	go func() {
		defer s.wg.Done()
		// A listener that keeps failing (no LISTEN privilege, a schema
		// problem) leaves this coordinator blind to the others: say so, at
		// most once a minute.
		var warned time.Time
		failed := func(err error) {
			if now := time.Now(); now.Sub(warned) >= time.Minute {
				warned = now
				s.logger.Warn("listen for other coordinators' changes; connecting again", "err", err)
			}
		}
		err := f.feed.ListenNodes(s.ctx, f.resync, f.apply, failed)
		if err != nil && !errors.Is(err, context.Canceled) {
			s.logger.Error("listen for node changes", "err", err)
		}
	}()
	go f.onlineLoop()
	go f.beatLoop()
}

// streamChanged records that the node id got (online) or lost its map
// stream on this coordinator, for the other coordinators.
func (f *fanout) streamChanged(id wire.NodeID, online bool) {
	if f.feed == nil {
		return
	}
	now := time.Now()
	f.mu.Lock()
	if !online && f.core.ctx.Err() != nil {
		// The stream ended because this coordinator shuts down, which
		// told the node when to come back: it stays online (Close calls
		// stopBeating), and its online state, if not yet written, is.
		f.mu.Unlock()
		return
	}
	f.online[id] = streamState{online: online, at: now}
	if online {
		f.started[id] = now
	} else {
		delete(f.started, id)
	}
	f.mu.Unlock()
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

// onlineLoop writes the stream states streamChanged records.
func (f *fanout) onlineLoop() {
	s := f.core
	defer s.wg.Done()
	var retry <-chan time.Time // set while failed writes wait
	var last time.Time         // when the last write began
	for {
		select {
		case <-s.ctx.Done():
			return // Server.Close calls flush once the streams have ended
		case <-f.wake:
		case <-retry:
			retry = nil
		}
		if wait := time.Until(last.Add(onlineGather)); wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-s.ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
		}
		last = time.Now()
		if !f.writeOnline(s.ctx) && retry == nil {
			retry = time.After(onlineRetry)
		}
	}
}

// beatLoop beats every heartbeatInterval. It beats on its own, not
// between onlineLoop's writes: a batch of thousands of stream states
// takes seconds on a loaded database, up to the writes' timeout, and a
// beat waiting for it may come too late, when the other coordinators take
// this one's nodes for unknown.
func (f *fanout) beatLoop() {
	s := f.core
	defer s.wg.Done()
	f.beat()
	t := time.NewTicker(heartbeatInterval)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
			f.beat()
		}
	}
}

func (f *fanout) beat() {
	ctx, cancel := context.WithTimeout(f.core.ctx, heartbeatInterval)
	defer cancel()
	changed, missing, err := f.feed.Heartbeat(ctx)
	if err != nil {
		if f.core.ctx.Err() == nil {
			f.core.logger.Warn("heartbeat", "err", err)
		}
		return
	}
	if missing {
		// The first beat, or one after a stall: the stream states
		// written without a beat on record may have been dropped by
		// another coordinator as a dead one's (this one's first beat
		// may have failed, or a stall went on too long).
		if f.beaten {
			f.core.logger.Warn("heartbeat was missing (a stall?): recording this coordinator's streams again")
		}
		f.rewriteOnline()
	}
	f.beaten = true
	// The others hear of drops; this coordinator skips its own writes.
	// Drops whose read fails are read again at the next beat.
	changed = append(f.unapplied, changed...)
	slices.Sort(changed)
	changed = slices.Compact(changed)
	f.unapplied = nil
	if len(changed) == 0 {
		return
	}
	if err := f.applyNodeChanges(ctx, changed); err != nil {
		f.core.logger.Warn("apply dropped nodes; retrying at the next heartbeat", "nodes", len(changed), "err", err)
		f.unapplied = changed
	}
}

// flush writes the stream states not yet written, for Server.Close once
// every stream has ended, while the store is still open, and records that
// this coordinator stops: the nodes whose streams the shutdown ended stay
// online for the online grace (StopBeating), those whose streams had
// ended before are offline.
func (f *fanout) flush() {
	if f.feed == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	f.writeOnline(ctx)
	if err := f.feed.StopBeating(ctx, f.core.onlineGrace); err != nil {
		f.core.logger.Warn("record this coordinator's stop; its nodes will show as unknown until they stream again", "err", err)
	}
}

// writeOnline writes the stream states waiting, and reports whether
// they were written; if not, they wait again, unless a newer state of
// their node came meanwhile.
func (f *fanout) writeOnline(ctx context.Context) bool {
	f.mu.Lock()
	batch := f.online
	f.online = make(map[wire.NodeID]streamState)
	f.mu.Unlock()
	if len(batch) == 0 {
		return true
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	states := make([]StreamState, 0, len(batch))
	for id, st := range batch {
		states = append(states, StreamState{ID: id, Online: st.online, At: st.at})
	}
	err := f.feed.SetStreamStates(ctx, states)
	if err == nil {
		return true
	}
	if f.core.ctx.Err() == nil {
		f.core.logger.Warn("record stream states; retrying", "nodes", len(states), "err", err)
	}
	f.mu.Lock()
	for id, st := range batch {
		if _, newer := f.online[id]; !newer {
			f.online[id] = st
		}
	}
	f.mu.Unlock()
	return false
}

// rewriteOnline records every stream of this coordinator as online
// again: it queues them for onlineLoop, which retries what fails.
func (f *fanout) rewriteOnline() {
	s := f.core
	s.mu.Lock()
	f.mu.Lock()
	for k := range s.sessions {
		if e := s.nodes[k]; e != nil {
			id := e.rec.Node.ID
			if _, pending := f.online[id]; !pending {
				at, ok := f.started[id]
				if !ok {
					at = time.Now()
				}
				f.online[id] = streamState{online: true, at: at}
			}
		}
	}
	f.mu.Unlock()
	s.mu.Unlock()
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

// resyncTimeout bounds a resync: a read stuck on a connection that went
// half open fails, and the listener connects and resyncs again.
const resyncTimeout = time.Minute

// resync brings everything other coordinators share through the store
// in line with it, after the listener (re)connected: nodes, the policy,
// DNS settings, routes and domains, pending registrations. It does them
// all and returns what failed, for the listener to connect and resync
// again: the changes made while it was disconnected are known only
// through a resync.
func (f *fanout) resync(ctx context.Context) error {
	s := f.core
	ctx, cancel := context.WithTimeout(ctx, resyncTimeout)
	defer cancel()
	s.reg.mu.Lock()
	err := s.syncNodesRegLocked(ctx)
	s.reg.mu.Unlock()
	errs := []error{err}
	if err := s.reloadPolicy(ctx); err != nil {
		errs = append(errs, fmt.Errorf("coordinator: resync the policy: %w", err))
	}
	if err := s.edge.reloadDNS(ctx); err != nil {
		errs = append(errs, fmt.Errorf("coordinator: resync DNS settings: %w", err))
	}
	if err := s.edge.reloadRoutes(ctx); err != nil {
		errs = append(errs, fmt.Errorf("coordinator: resync routes: %w", err))
	}
	if err := s.reg.reloadPendings(ctx); err != nil {
		errs = append(errs, fmt.Errorf("coordinator: resync pending registrations: %w", err))
	}
	return errors.Join(errs...)
}

// applyTimeout bounds the reads of one change another coordinator
// made: a database that stops answering fails them, and the listener
// resyncs once it answers again, instead of holding the locks the reads
// hold (registrations wait on them) until TCP gives up.
const applyTimeout = 15 * time.Second

// apply re-reads what another coordinator changed, as chs name it, and
// applies it to memory and the streams: the nodes' stream states first
// (applyPresence), then the nodes, all at once (applyNodeChanges), then
// the rest in order. An error means a change may not be applied: the
// listener then connects again and resyncs, as a change lost is lost
// for good otherwise (a removed node would stay, a policy would not be
// enforced).
func (f *fanout) apply(ctx context.Context, chs []Change) error {
	ctx, cancel := context.WithTimeout(ctx, applyTimeout)
	defer cancel()
	s := f.core
	var ids []wire.NodeID
	var presence []Change
	for _, ch := range chs {
		switch ch.Kind {
		case ChangeNode:
			ids = append(ids, wire.NodeID(ch.ID))
		case ChangePresence:
			presence = append(presence, ch)
		}
	}
	if len(presence) > 0 {
		ids = f.applyPresence(presence, ids)
	}
	if len(ids) > 0 {
		if err := f.applyNodeChanges(ctx, ids); err != nil {
			return fmt.Errorf("coordinator: apply another coordinator's change of %d nodes: %w", len(ids), err)
		}
	}
	for _, ch := range chs {
		var err error
		var what string
		switch ch.Kind {
		case ChangeSetting:
			switch ch.Name {
			case policySetting, userGroupsSetting:
				what, err = "policy", s.reloadPolicy(ctx)
			case dnsSetting:
				what, err = "DNS settings", s.edge.reloadDNS(ctx)
			}
		case ChangeRoute:
			what, err = "route", s.edge.reloadRoute(ctx, ch.ID)
		case ChangeDomain:
			what, err = "domains", s.edge.reloadDomains(ctx)
		case ChangePending:
			what, err = "pending registration", s.reg.reloadPending(ctx, ch.Name)
		}
		if err != nil {
			return fmt.Errorf("coordinator: apply another coordinator's change of the %s: %w", what, err)
		}
	}
	return nil
}

// applyNodeChanges re-reads the nodes ids that another coordinator wrote
// (or whose stream state changed) and applies them to memory: one read
// and one hold of each lock for all of them. An error means none is
// applied.
func (f *fanout) applyNodeChanges(ctx context.Context, ids []wire.NodeID) error {
	s := f.core
	// As in syncNodes: from the read until memory has the nodes, no
	// registration, rename or removal here, nor another read, runs.
	s.reg.mu.Lock()
	defer s.reg.mu.Unlock()
	s.persistMu.Lock()
	defer s.persistMu.Unlock()
	recs, remote, err := f.feed.NodesByID(ctx, ids)
	if err != nil {
		return fmt.Errorf("read %d changed nodes: %w", len(ids), err)
	}
	var netIDs []int64
	for _, rec := range recs {
		if !slices.Contains(netIDs, rec.NetworkID) {
			netIDs = append(netIDs, rec.NetworkID)
		}
	}
	for _, id := range netIDs {
		if _, err := s.networkByID(ctx, id); err != nil {
			return fmt.Errorf("read the network of changed nodes: %w", err)
		}
	}
	gone := make(map[wire.NodeID]bool, len(ids))
	for _, id := range ids {
		gone[id] = true
	}
	for _, rec := range recs {
		delete(gone, rec.Node.ID)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(gone) > 0 {
		for _, e := range s.nodes {
			if gone[e.rec.Node.ID] {
				s.dropNodeLocked(e, wire.CodeNodeRemoved, "node was removed")
			}
		}
	}
	for _, rec := range recs {
		s.applyRecordLocked(rec, remote[rec.Node.ID])
	}
	return nil
}

// applyPresence applies the stream states chs carry to the nodes they
// name, without reading them: a node whose stream state changed alone
// costs no read of its row. It leaves out the nodes of read, which are
// read anyway (applyNodeChanges reads their stream state with them), and
// returns read with the nodes it does not know added (registered
// elsewhere a moment ago, or their notification's apply failed), to be
// read.
func (f *fanout) applyPresence(chs []Change, read []wire.NodeID) []wire.NodeID {
	s := f.core
	reading := make(map[wire.NodeID]bool, len(read))
	for _, id := range read {
		reading[id] = true
	}
	// persistMu, as applyNodeChanges holds it from its read until memory
	// has the nodes: a heartbeat's read of older stream states cannot
	// be applied after these.
	s.persistMu.Lock()
	defer s.persistMu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	rebuilt := false
	for _, ch := range chs {
		id := wire.NodeID(ch.ID)
		if reading[id] {
			continue
		}
		e := f.entryLocked(id)
		if e == nil && !rebuilt {
			f.keys, rebuilt = make(map[wire.NodeID]key.NodePublic, len(s.nodes)), true
			for k, e := range s.nodes {
				f.keys[e.rec.Node.ID] = k
			}
			e = f.entryLocked(id)
		}
		if e == nil {
			reading[id] = true
			read = append(read, id)
			continue
		}
		s.setPresenceLocked(e, ch.Presence, now)
	}
	return read
}

// entryLocked returns the node whose ID is id, as keys finds it; nil if
// keys does not have it right. Server.mu held.
func (f *fanout) entryLocked(id wire.NodeID) *nodeEntry {
	k, ok := f.keys[id]
	if !ok {
		return nil
	}
	if e := f.core.nodes[k]; e != nil && e.rec.Node.ID == id {
		return e
	}
	return nil
}

// ensureNode reads the node nk from the store if this coordinator does
// not know it yet: it registered through another coordinator a moment
// ago (its notification on the way), and asks this one for its map, as
// it may behind a load balancer. Unknown keys cost one indexed read.
func (f *fanout) ensureNode(ctx context.Context, nk key.NodePublic) {
	s := f.core
	if f.feed == nil {
		return
	}
	s.mu.Lock()
	known := s.nodes[nk] != nil
	s.mu.Unlock()
	if known {
		return
	}
	// persistMu from the read until memory has the node: a removal here
	// cannot fall between them.
	s.persistMu.Lock()
	defer s.persistMu.Unlock()
	rec, remote, err := f.feed.NodeByKey(ctx, nk)
	if err != nil {
		if !errors.Is(err, ErrNotFound) {
			s.logger.Warn("read node", "node", nk.ShortString(), "err", err)
		}
		return
	}
	if _, err := s.networkByID(ctx, rec.NetworkID); err != nil {
		s.logger.Warn("read the network of a node", "node", nk.ShortString(), "err", err)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.nodes[nk] == nil {
		s.applyRecordLocked(rec, remote)
	}
}

// syncNodesRegLocked re-reads every node from the store and brings memory
// in line with it: nodes other coordinators registered are added, changed
// ones updated, removed ones dropped, each change told to the streams.
//
// From the read until memory has the nodes it holds reg.mu (the caller
// does) and persistMu, so no registration, rename, removal or write of a
// node here falls between them, which the read would undo.
func (s *Server) syncNodesRegLocked(ctx context.Context) error {
	s.persistMu.Lock()
	defer s.persistMu.Unlock()
	recs, err := s.store.Nodes(ctx)
	if err != nil {
		return fmt.Errorf("coordinator: resync nodes: %w", err)
	}
	for _, rec := range recs {
		if _, err := s.networkByID(ctx, rec.NetworkID); err != nil {
			return err
		}
	}
	var remote map[wire.NodeID]Presence
	if s.fan.feed != nil {
		if remote, err = s.fan.feed.RemoteOnline(ctx); err != nil {
			return fmt.Errorf("coordinator: resync online nodes: %w", err)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	inStore := make(map[key.NodePublic]bool, len(recs))
	for _, rec := range recs {
		inStore[rec.Node.Key] = true
		s.applyRecordLocked(rec, remote[rec.Node.ID])
	}
	for k, e := range s.nodes {
		if !inStore[k] {
			s.dropNodeLocked(e, wire.CodeNodeRemoved, "node was removed")
		}
	}
	return nil
}

// networkByID returns the network id, reading the networks from the store
// if another coordinator created it; nil if there is no such network.
func (s *Server) networkByID(ctx context.Context, id int64) (*Network, error) {
	s.mu.Lock()
	n := s.networks[id]
	s.mu.Unlock()
	if n != nil {
		return n, nil
	}
	nets, err := s.store.Networks(ctx)
	if err != nil {
		return nil, fmt.Errorf("coordinator: load networks: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, n := range nets {
		if s.networks[n.ID] == nil && s.netNames[n.Name] == nil {
			s.networks[n.ID] = n
			s.netNames[n.Name] = n
		}
	}
	return s.networks[id], nil
}

// applyRecordLocked brings the node of rec, as the store holds it, into
// memory; remote says whether it streams from another coordinator.
// persistMu and s.mu held.
func (s *Server) applyRecordLocked(rec *NodeRecord, remote Presence) {
	now := s.now()
	nk := rec.Node.Key
	e := s.nodes[nk]
	if e != nil && e.rec.Node.ID != rec.Node.ID {
		// The key was removed and registered again: a new node.
		s.dropNodeLocked(e, wire.CodeNodeRemoved, "node was removed")
		e = nil
	}
	if e == nil {
		if s.networks[rec.NetworkID] == nil {
			return // a network created since networkByID looked
		}
		e = &nodeEntry{rec: *rec, remote: remote}
		if remote == PresenceNone {
			e.offlineSince = now
		}
		s.nodes[nk] = e
		s.floorFromRecord(rec, now)
		s.reg.useIPv4(rec.Node.Addresses, false)
		s.notifyLocked(rec.NetworkID, nk)
		return
	}
	before := s.viewLocked(e)
	next := *rec
	if s.sessions[nk] != nil {
		// The node streams here, so what it says about itself is
		// freshest here; take only what others decide for it.
		cur := e.rec
		cur.Node.Name, cur.Node.DNSName = next.Node.Name, next.Node.DNSName
		cur.Node.KeyExpiry, cur.Node.User, cur.Node.Tags = next.Node.KeyExpiry, next.Node.User, next.Node.Tags
		next = cur
	}
	e.rec = next
	s.setRemoteLocked(e, remote, now)
	after := s.viewLocked(e)
	if !e.rec.Node.Expired(now) {
		e.expiryHandled = false
	}
	if !nodeEqual(before, after) || before.Online != after.Online {
		s.notifyLocked(e.rec.NetworkID, nk)
	}
	if !e.expiryHandled && e.rec.Node.Expired(now) {
		e.expiryHandled = true
		s.expireLocked(e)
	}
}

// setRemoteLocked records that the node e streams from another
// coordinator (remote), or no longer does, as of now. Server.mu held.
func (s *Server) setRemoteLocked(e *nodeEntry, remote Presence, now time.Time) {
	if e.remote != PresenceNone && remote == PresenceNone && s.sessions[e.rec.Node.Key] == nil {
		e.offlineSince = now
	}
	e.remote = remote
	if remote != PresenceNone {
		e.offlineSince = time.Time{}
	}
}

// setPresenceLocked is setRemoteLocked for a change of the stream state
// alone, telling the streams if it changes how the node shows (online,
// unknown). Server.mu held.
func (s *Server) setPresenceLocked(e *nodeEntry, remote Presence, now time.Time) {
	shows := func() (online, unknown bool) {
		local := s.sessions[e.rec.Node.Key] != nil
		return local || e.remote == PresenceOnline || e.grace, !local && e.remote == PresenceUnknown
	}
	online, unknown := shows()
	s.setRemoteLocked(e, remote, now)
	if o, u := shows(); o != online || u != unknown {
		s.notifyLocked(e.rec.NetworkID, e.rec.Node.Key)
	}
}

// dropNodeLocked forgets the node e, which another coordinator removed:
// its stream here ends with code and msg and its peers drop it. s.mu held.
func (s *Server) dropNodeLocked(e *nodeEntry, code wire.ErrorCode, msg string) {
	nk := e.rec.Node.Key
	if s.nodes[nk] != e {
		return
	}
	delete(s.nodes, nk)
	s.reg.releaseIPv4(e.rec.Node.Addresses)
	s.edge.dropRoutesLocked(e, false)
	if ss := s.sessions[nk]; ss != nil {
		ss.end(code, msg)
	}
	s.notifyLocked(e.rec.NetworkID, nk)
}
