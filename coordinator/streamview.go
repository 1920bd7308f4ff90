package coordinator

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math/bits"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// streams is the coordinator's map-stream job: the open sessions and their
// handlers (stream.go), the fan-out of node changes to them, one shared
// view of every node, and the change log each stream computes its deltas
// from. Server embeds it, so the rest of the coordinator reaches its
// sessions as s.sessions and tells it of changes with s.notifyLocked. Its
// fields are guarded by Server.mu, because they change with the nodes
// they describe; a session's own mu guards what was marked for it.
//
// Memory is linear in the number of nodes: a node's view (and its JSON
// or binary record, see mapFrame.encode) is built once per change and
// shared by every stream that sends it, and
// a stream remembers which peers it sent as one bit per node plus the
// change count it last caught up to (see sentState), not as a copy.
type streams struct {
	core *Server

	sessions map[key.NodePublic]*session
	// changeVer counts node changes (notifyLocked); a peerView records the
	// count at which its node last changed.
	changeVer uint64
	// changes is the change log: change changesBase+1+i was of the node
	// in slot changes[i], or of a node no stream may have been sent then
	// if it is -1. A stream reads the nodes changed since it last caught
	// up from it; one that fell behind the log's start looks at every
	// peer.
	changes     []int32
	changesBase uint64
	// memberVer counts the changes that may change which peers some node
	// sees (a node added or removed, or its network, user, tags,
	// addresses, key expiry or edge role changed): the shared peer lists
	// of every network (shared) hold until it moves.
	memberVer uint64
	shared    map[int64]*netShared
	// blockVer holds, per block of chunkSlots slots, the change count of
	// the last change of a view in it (touchLocked).
	blockVer []uint64
	// peerStates holds every node a stream may have been sent, by key;
	// peerSlots the same by slot (nil: free), freeSlots the free slots.
	// A removed node keeps its slot, with a nil view, until no stream's
	// sent set holds it (peerState.refs), so a slot means the same node
	// for every stream that has it; then its slot is freed for the next
	// node (dropLocked).
	peerStates map[key.NodePublic]*peerState
	peerSlots  []*peerState
	freeSlots  []int
	// slotViews holds, by slot, what a stream reading the change log
	// looks at for each change (slotView), so that it follows no pointer
	// for the peers whose change it only passes on or skips.
	slotViews []slotView
	// wakes holds, per network, what its streams wait on for the next
	// change (netWakeLocked); fullVer the count of the network's last
	// change after which every stream of it recomputes everything.
	wakes   map[int64]*netWake
	fullVer map[int64]uint64
	// structVer is the change count of the last change that was not a
	// node coming online or going offline alone (in any network): a
	// stream woken by changes while none came after what it last sent
	// knows without looking that they are online flips, which wait for
	// onlineDelay. Written under Server.mu; read without it.
	structVer atomic.Uint64
	// open counts the open streams (sessions), for streams to read
	// without Server.mu.
	open atomic.Int64
}

// netWake is closed at a network's next node change.
type netWake struct {
	c  chan struct{}
	at time.Time // when c was closed; read only after c is
}

// netWakeLocked returns what the streams of a network wait on for its
// next change. Server.mu held.
func (ms *streams) netWakeLocked(networkID int64) *netWake {
	w := ms.wakes[networkID]
	if w == nil {
		w = &netWake{c: make(chan struct{})}
		ms.wakes[networkID] = w
	}
	return w
}

// wakeNetworkLocked wakes every stream of a network; the next to wait
// gets a new netWake. Server.mu held.
func (ms *streams) wakeNetworkLocked(networkID int64) {
	if w := ms.wakes[networkID]; w != nil {
		w.at = time.Now()
		close(w.c)
		delete(ms.wakes, networkID)
	}
}

// newStreams returns the map-stream job of core.
func newStreams(core *Server) *streams {
	return &streams{core: core, sessions: make(map[key.NodePublic]*session), peerStates: make(map[key.NodePublic]*peerState),
		wakes: make(map[int64]*netWake), fullVer: make(map[int64]uint64), shared: make(map[int64]*netShared)}
}

// slotView is the node in a slot as the change log's readers see it:
// its current view and what they compare of it, and the change count of
// its last change in the log, so that a reader looks at each node once.
// A free slot's is zero.
type slotView struct {
	view            *peerView // nil while the node is removed
	logVer          uint64
	changed, online uint64 // the view's
	networkID       int64  // the view's
	edge            bool   // the view's node's
}

// peerState is one node as map streams know it. Guarded by Server.mu.
type peerState struct {
	key  key.NodePublic
	slot int
	// view is the node's current view; nil while it is removed. Set it
	// with setViewLocked.
	view *peerView
	// refs counts the streams whose sent set (sentState.peers) holds
	// slot, from the moment they compute it under Server.mu (holdLocked,
	// or delta adding the peer) until they drop it (delta removing the
	// peer, or releaseLocked as the stream ends).
	refs int
}

// holdLocked counts set, a stream's new sent set, in its slots' refs.
// Server.mu held.
func (ms *streams) holdLocked(set peerSet) {
	set.each(func(i int) { ms.peerSlots[i].refs++ })
}

// releaseLocked uncounts set, the sent set of a stream that ends, and
// frees the slots of removed nodes no stream holds any longer. Server.mu
// held.
func (ms *streams) releaseLocked(set peerSet) {
	set.each(func(i int) {
		ps := ms.peerSlots[i]
		ps.refs--
		ms.dropLocked(ps)
	})
}

// dropLocked frees the slot of ps if its node is removed and no stream
// holds it: no sent set has the slot, so the next node may take it.
// Server.mu held.
func (ms *streams) dropLocked(ps *peerState) {
	if ps.view != nil || ps.refs > 0 {
		return
	}
	delete(ms.peerStates, ps.key)
	ms.peerSlots[ps.slot] = nil
	ms.slotViews[ps.slot] = slotView{}
	ms.freeSlots = append(ms.freeSlots, ps.slot)
}

// peerView is one node's view as of one change. It is never modified
// once published (enc is filled once, on first use), so streams read it
// without Server.mu.
type peerView struct {
	node      *wire.Node // its Rev set (nodeRev)
	networkID int64
	// hash is what the node adds to a digest of peers (wire.PeerHash).
	hash wire.DigestSum
	// changed is the changeVer of the node's last change of a field
	// nodeEqual compares; online that of its last Online change.
	changed, online uint64

	encOnce sync.Once
	enc     []byte // JSON of node
	encErr  error

	// bins are the binary peer records of node, per binary form
	// (wireForm.index), each made on first use: a network whose nodes
	// are all of one version keeps one.
	bins [2]struct {
		once sync.Once
		b    []byte
	}
}

// wireForm is how a stream's node takes its map frames: as JSON, as
// binary map frames (wire.BinaryFramesVersion), or as binary map frames
// with compact records and online states by ID
// (wire.CompactFramesVersion).
type wireForm uint8

const (
	formJSON wireForm = iota
	formBinary
	formCompact
)

// formFor returns the form a node of CapabilityVersion version takes.
func formFor(version int) wireForm {
	switch {
	case version >= wire.CompactFramesVersion:
		return formCompact
	case version >= wire.BinaryFramesVersion:
		return formBinary
	}
	return formJSON
}

// binary reports whether the form is binary map frames.
func (w wireForm) binary() bool { return w != formJSON }

// index is where a binary form's encodings are kept (peerView.bins).
func (w wireForm) index() int { return int(w - formBinary) }

// json returns the view's JSON encoding, computed once.
func (pv *peerView) json() ([]byte, error) {
	pv.encOnce.Do(func() { pv.enc, pv.encErr = json.Marshal(pv.node) })
	return pv.enc, pv.encErr
}

// binary returns the view's binary peer record of form (binary),
// computed once.
func (pv *peerView) binary(form wireForm) []byte {
	e := &pv.bins[form.index()]
	e.once.Do(func() {
		if form == formCompact {
			e.b = wire.AppendPeerRecordCompact(make([]byte, 0, 256), pv.node, wire.PeerDNSSuffix(pv.node))
		} else {
			e.b = wire.AppendPeerRecord(make([]byte, 0, 256), pv.node)
		}
	})
	return e.b
}

// noteChangeLocked rebuilds the shared view of node k after a change and
// advances the change count. Server.mu held.
func (ms *streams) noteChangeLocked(k key.NodePublic) {
	s := ms.core
	ms.changeVer++
	structural := true
	defer func() {
		if structural {
			ms.structVer.Store(ms.changeVer)
		}
	}()
	if len(ms.changes) >= max(minChangeLog, 2*len(s.nodes)) {
		half := len(ms.changes) / 2
		ms.changesBase += uint64(half)
		ms.changes = slices.Clone(ms.changes[half:])
	}
	ps := ms.peerStates[k]
	e := s.nodes[k]
	if ps == nil && e != nil {
		ps = ms.newPeerStateLocked(k)
		ms.memberVer++ // a node no list held
	}
	if ps == nil {
		ms.changes = append(ms.changes, -1)
		return // no stream ever sent it
	}
	ms.changes = append(ms.changes, int32(ps.slot))
	ms.slotViews[ps.slot].logVer = ms.changeVer
	ms.touchLocked(ps.slot)
	if e == nil {
		if ps.view != nil {
			ms.memberVer++
		}
		ms.setViewLocked(ps, nil)
		ms.dropLocked(ps)
		return
	}
	n := s.viewLocked(e)
	pv := &peerView{node: n, networkID: e.rec.NetworkID, changed: ms.changeVer, online: ms.changeVer}
	if old := ps.view; old == nil || !sameMembership(old, pv) {
		ms.memberVer++
	}
	if old := ps.view; old != nil && nodeEqual(old.node, n) {
		structural = !sameMembership(old, pv)
		pv.changed = old.changed
		if old.node.Online == n.Online {
			pv.online = old.online
		}
		n.Rev, pv.hash = old.node.Rev, old.hash
	} else {
		pv.setRev()
	}
	ms.setViewLocked(ps, pv)
}

// setViewLocked makes pv (nil: none) the view of ps. Server.mu held.
func (ms *streams) setViewLocked(ps *peerState, pv *peerView) {
	ps.view = pv
	sv := &ms.slotViews[ps.slot]
	sv.view = pv
	if pv != nil {
		sv.changed, sv.online, sv.networkID, sv.edge = pv.changed, pv.online, pv.networkID, pv.node.Edge
	}
}

// setRev sets the view's node's Rev and its hash.
func (pv *peerView) setRev() {
	pv.node.Rev = nodeRev(pv.node)
	pv.hash = wire.PeerHash(pv.node.Key, pv.node.Rev)
}

// minChangeLog is the least number of changes the change log keeps.
const minChangeLog = 1024

// sameMembership reports whether a node whose view was a and is now b is
// seen by the same nodes, and sees the same: the same network, user,
// tags, addresses, key expiry and edge role.
func sameMembership(a, b *peerView) bool {
	an, bn := a.node, b.node
	return a.networkID == b.networkID && an.Edge == bn.Edge && an.KeyExpiry.Equal(bn.KeyExpiry) && an.User == bn.User &&
		slices.Equal(an.Tags, bn.Tags) && slices.Equal(an.Addresses, bn.Addresses)
}

// changedSinceLocked calls f with the slot of each node changed after
// change count from, once per node, and what the slot holds, skipping
// nodes no stream may have been sent: changes of slots freed since
// (dropLocked) are those of nodes that no sent set holds. from must not
// be before ms.changesBase. Server.mu held.
func (ms *streams) changedSinceLocked(from uint64, f func(slot int, sv *slotView)) {
	for i, slot := range ms.changes[from-ms.changesBase:] {
		if slot < 0 {
			continue
		}
		// A slot freed since is zero, one taken again holds a later
		// change or none.
		sv := &ms.slotViews[slot]
		if sv.logVer != from+1+uint64(i) {
			continue // not its last change, or a slot freed since
		}
		f(int(slot), sv)
	}
}

// newPeerStateLocked adds node k, which must exist, with a view as of now,
// in a free slot or a new one. Server.mu held.
func (ms *streams) newPeerStateLocked(k key.NodePublic) *peerState {
	s := ms.core
	ps := &peerState{key: k, slot: len(ms.peerSlots)}
	if n := len(ms.freeSlots); n > 0 {
		ps.slot = ms.freeSlots[n-1]
		ms.freeSlots = ms.freeSlots[:n-1]
		ms.peerSlots[ps.slot] = ps
	} else {
		ms.peerSlots = append(ms.peerSlots, ps)
		ms.slotViews = append(ms.slotViews, slotView{})
	}
	ms.peerStates[k] = ps
	ms.touchLocked(ps.slot)
	if e := s.nodes[k]; e != nil {
		pv := &peerView{node: s.viewLocked(e), networkID: e.rec.NetworkID, changed: ms.changeVer, online: ms.changeVer}
		pv.setRev()
		ms.setViewLocked(ps, pv)
	}
	return ps
}

// peerLocked returns the stream state of node k, or nil if k is unknown.
// Server.mu held.
func (ms *streams) peerLocked(k key.NodePublic) *peerState {
	s := ms.core
	if ps := ms.peerStates[k]; ps != nil {
		return ps
	}
	if s.nodes[k] == nil {
		return nil
	}
	return ms.newPeerStateLocked(k)
}

// sharedNodeLocked returns e's shared view, which must not be modified.
// Server.mu held.
func (ms *streams) sharedNodeLocked(e *nodeEntry) *wire.Node {
	s := ms.core
	if ps := ms.peerLocked(e.rec.Node.Key); ps != nil && ps.view != nil {
		return ps.view.node
	}
	return s.viewLocked(e)
}

// peerSet is a set of peer slots, one bit each.
type peerSet []uint64

func (b peerSet) has(i int) bool { return i/64 < len(b) && b[i/64]&(1<<(i%64)) != 0 }

func (b *peerSet) add(i int) {
	for i/64 >= len(*b) {
		*b = append(*b, 0)
	}
	(*b)[i/64] |= 1 << (i % 64)
}

func (b peerSet) remove(i int) {
	if i/64 < len(b) {
		b[i/64] &^= 1 << (i % 64)
	}
}

// each calls f with every slot in b.
func (b peerSet) each(f func(int)) {
	for w, word := range b {
		for word != 0 {
			i := bits.TrailingZeros64(word)
			f(w*64 + i)
			word &^= 1 << i
		}
	}
}

// next returns the first slot in b at or after i, or -1.
func (b peerSet) next(i int) int {
	for w := i / 64; w < len(b); w++ {
		word := b[w]
		if w == i/64 {
			word &= ^uint64(0) << (i % 64)
		}
		if word != 0 {
			return w*64 + bits.TrailingZeros64(word)
		}
	}
	return -1
}

// frameSplitAt is the largest JSON body a frame carries before a full
// map or a long list of changed peers is split across frames, for nodes
// that reassemble them (wire.CapabilityVersion 13). It leaves room for
// the seal. Tests lower it.
var frameSplitAt = wire.MaxFrameSize - key.SealOverhead

// mapFrame is a MapResponse with its list of peers held as shared views,
// so each peer's JSON is encoded once for every stream that sends it.
type mapFrame struct {
	resp *wire.MapResponse // Peers and PeersChanged unset
	// peers is the complete peer list if full, else the changed peers.
	peers []*peerView
	full  bool
	// more says further frames of the same message follow this one's.
	more bool
	// chunks, if set, are the peers of a full map instead of peers, but
	// self's (sendChunks).
	chunks    []*fullChunk
	self      key.NodePublic
	selfBlock int // the block of self's slot; -1 if none
	// blocked says the chunks but self's may go as sealed blocks
	// (wire.BlockedMapFrame); blocks are those encode gave, each a whole
	// frame to write after the frame's body.
	blocked bool
	blocks  [][]byte
	// online are the peers whose online state the frame carries, as of
	// their views, besides resp.PeersOnline (none of the same node).
	online []*peerView
}

// onlineSet is the online states a frame carries: those of views (a
// delta's, gathered under Server.mu without building a map for each
// stream) and those of keys.
type onlineSet struct {
	views []*peerView
	keys  map[key.NodePublic]bool
}

// onlineStates returns the online states f carries.
func (f *mapFrame) onlineStates() onlineSet {
	return onlineSet{views: f.online, keys: f.resp.PeersOnline}
}

func (o onlineSet) len() int { return len(o.views) + len(o.keys) }

// each calls fn with every state.
func (o onlineSet) each(fn func(k key.NodePublic, on bool)) {
	for _, pv := range o.views {
		fn(pv.node.Key, pv.node.Online)
	}
	for k, on := range o.keys {
		fn(k, on)
	}
}

// appendBinary appends the states as a binary map frame's online
// states (wire.AppendBinaryMapFrameStates): with formCompact, those of
// views of nodes with an ID by their ID, the rest by key.
func (o onlineSet) appendBinary(b []byte, form wireForm) []byte {
	if form != formCompact {
		b = binary.AppendUvarint(b, uint64(o.len()))
		o.each(func(k key.NodePublic, on bool) { b = wire.AppendOnline(b, k, on) })
		return b
	}
	byID := 0
	for _, pv := range o.views {
		if pv.node.ID > 0 {
			byID++
		}
	}
	b = binary.AppendUvarint(b, uint64(o.len()-byID))
	for _, pv := range o.views {
		if pv.node.ID <= 0 {
			b = wire.AppendOnline(b, pv.node.Key, pv.node.Online)
		}
	}
	for k, on := range o.keys {
		b = wire.AppendOnline(b, k, on)
	}
	if byID > 0 {
		b = binary.AppendUvarint(b, uint64(byID))
		for _, pv := range o.views {
			if pv.node.ID > 0 {
				b = wire.AppendOnlineID(b, pv.node.ID, pv.node.Online)
			}
		}
	}
	return b
}

// errFrameTooLarge means a map message does not fit the frame limit and
// the node cannot take it in pieces.
var errFrameTooLarge = errors.New("map frame too large")

// encode returns the bodies of f's frames in form: JSON, or binary map
// frames (wire.BinaryMapFrame) when f carries peers or online states.
// With split, a message whose body would pass frameSplitAt is cut
// between peers into several bodies, every one but the last marked More;
// without, it is one body whatever its size. Either way each peer's
// encoding is its view's, made once for every stream that sends it.
//
// With formCompact, each body names the DNS suffix of the first of its
// peers that has one (wire.MapResponse.PeerDNSSuffix), and peers of that
// suffix or none go as compact records, the others (of another network)
// as formBinary ones, which such nodes decode too.
func (f *mapFrame) encode(split bool, form wireForm) ([][]byte, error) {
	online := f.onlineStates()
	f.resp.PeersOnline = nil
	f.resp.PeerDNSSuffix = ""
	if form == formCompact {
		f.resp.PeerDNSSuffix = f.dnsSuffix()
	}
	suffix := f.resp.PeerDNSSuffix
	base, err := json.Marshal(f.resp)
	f.resp.PeersOnline = online.keys
	f.resp.PeerDNSSuffix = ""
	if err != nil {
		return nil, fmt.Errorf("encode map response: %w", err)
	}
	bin := form.binary() && (len(f.peers) > 0 || f.full || online.len() > 0)
	// onlineSize is what online adds to the first body.
	onlineSize := 0
	if bin {
		onlineSize = binary.MaxVarintLen32 + online.len()*wire.BinaryOnlineSize
	} else if online.len() > 0 {
		base = withOnline(base, online)
	}
	if f.chunks != nil {
		if out, ok, err := f.encodeChunks(base, bin, form, suffix, online); err != nil || ok {
			return out, err
		}
		// Too large for one frame as one: split as any other.
		f.peers, f.chunks = f.chunkViews(), nil
	}
	if len(f.peers) == 0 && !f.full {
		if bin {
			return [][]byte{spliceBinary(base, wire.ListNone, nil, online, form, false)}, nil
		}
		return [][]byte{base}, nil
	}
	// A body is its head, a fixed overhead, and each peer's encoding
	// plus sep.
	field, list := `"peers_changed":[`, wire.ListPeersChanged
	if f.full {
		field, list = `"peers":[`, wire.ListPeers
	}
	sep, fixed := 1, len(field)+2
	if bin {
		// Type byte, head length, list byte, record count.
		sep, fixed = 0, 1+binary.MaxVarintLen32+1+binary.MaxVarintLen32
	}
	body := func(head []byte, encs [][]byte, online onlineSet, more bool) []byte {
		if bin {
			return spliceBinary(head, list, encs, online, form, more)
		}
		return splice(head, field, encs, more)
	}
	encs := make([][]byte, len(f.peers))
	size := len(base) + onlineSize + fixed
	for i, pv := range f.peers {
		if bin {
			encs[i] = pv.binary(pv.formIn(form, suffix))
		} else if encs[i], err = pv.json(); err != nil {
			return nil, fmt.Errorf("encode peer: %w", err)
		}
		size += len(encs[i]) + sep
	}
	if !split || size <= frameSplitAt {
		return [][]byte{body(base, encs, online, f.more)}, nil
	}
	// The first body carries everything else; the rest only peers.
	const moreLen = len(`,"more":true`)
	var out [][]byte
	head, limit := base, frameSplitAt-moreLen-fixed
	rest := []byte(`{}`) // the head of the bodies after the first
	if suffix != "" {
		rest, err = json.Marshal(&wire.MapResponse{PeerDNSSuffix: suffix})
		if err != nil {
			return nil, fmt.Errorf("encode map response: %w", err)
		}
	}
	for start := 0; start < len(encs) || len(out) == 0; {
		n, size := 0, len(head)
		first := len(out) == 0
		if first {
			size += onlineSize
		}
		for start+n < len(encs) && (n == 0 || size+len(encs[start+n])+sep <= limit) {
			size += len(encs[start+n]) + sep
			n++
		}
		if size > limit {
			return nil, errFrameTooLarge
		}
		more := start+n < len(encs) || f.more
		if first {
			out = append(out, body(head, encs[start:start+n], online, more))
		} else {
			out = append(out, body(head, encs[start:start+n], onlineSet{}, more))
		}
		start += n
		head = rest
	}
	return out, nil
}

// dnsSuffix returns the DNS suffix (wire.PeerDNSSuffix) of the first of
// f's peers that has one, or of its first chunk whose peers have one
// alone; "" if none.
func (f *mapFrame) dnsSuffix() string {
	for _, c := range f.chunks {
		if sfx, mixed := c.dnsSuffix(); !mixed && sfx != "" {
			return sfx
		}
	}
	for _, pv := range f.peers {
		if sfx := wire.PeerDNSSuffix(pv.node); sfx != "" {
			return sfx
		}
	}
	return ""
}

// formIn returns the form of the view's record in a body of form whose
// DNS suffix is suffix: formBinary in place of formCompact if the node's
// DNS name has another suffix (wire.AppendPeerRecordCompact).
func (pv *peerView) formIn(form wireForm, suffix string) wireForm {
	if form == formCompact {
		if sfx := wire.PeerDNSSuffix(pv.node); sfx != "" && sfx != suffix {
			return formBinary
		}
	}
	return form
}

// encodeChunks returns the one body of f, a frame of a full map whose
// peers are f.chunks, made of their shared encodings of form (JSON
// unless bin); ok is false if the body would pass frameSplitAt. With
// f.blocked and bin, the body is a blocked map frame
// (wire.BlockedMapFrame) and f.blocks the sealed blocks that follow it.
func (f *mapFrame) encodeChunks(base []byte, bin bool, form wireForm, suffix string, online onlineSet) (_ [][]byte, ok bool, _ error) {
	if !bin {
		form = formJSON
	}
	blocked := bin && f.blocked
	segs, count, refs, blocks, err := f.chunkSegments(form, suffix, blocked)
	if err == nil && blocked && !blocksFit(refs) {
		segs, count, refs, blocks, err = f.chunkSegments(form, suffix, false)
	}
	if err != nil {
		return nil, false, fmt.Errorf("encode peer: %w", err)
	}
	onlineSize := binary.MaxVarintLen32 + online.len()*wire.BinaryOnlineSize
	refsSize := len(refs) * (64 + binary.MaxVarintLen32)
	size := len(base) + len(`,"more":true`) + 2*binary.MaxVarintLen32 + 16 + len(segs) + onlineSize + refsSize
	for _, sg := range segs {
		size += len(sg)
	}
	if size > frameSplitAt {
		return nil, false, nil
	}
	if !bin {
		return [][]byte{splice(base, `"peers":[`, segs, f.more)}, true, nil
	}
	body, at := spliceBinaryCount(base, wire.ListPeers, count, segs, online, form, f.more)
	if len(refs) == 0 {
		return [][]byte{body}, true, nil
	}
	// The blocks' records go where the inline ones end (at), before the
	// online states.
	out := wire.AppendBlockedMapFrame(getBody(len(body)+2*binary.MaxVarintLen32+refsSize), refs, at, body)
	putBody(body)
	f.blocks = blocks
	return [][]byte{out}, true, nil
}

// fitsOneFrame reports whether f, a message without peers, encodes to
// a body within frameSplitAt (with room for a longer ControlTime), as a
// resumed first message must: it is never split across frames.
func (f *mapFrame) fitsOneFrame(form wireForm) bool {
	bodies, err := f.encode(false, form)
	if err != nil {
		return false
	}
	n := 0
	for _, b := range bodies {
		n += len(b)
		putBody(b)
	}
	return n+len(time.RFC3339Nano) <= frameSplitAt
}

// spliceBinary returns a binary map frame (wire.AppendBinaryMapFrame)
// of the JSON object head, with "more":true if more, the peer records
// encs (of form) and online. Large results come from bodyPool, as
// splice's.
func spliceBinary(head []byte, list wire.PeerList, encs [][]byte, online onlineSet, form wireForm, more bool) []byte {
	b, _ := spliceBinaryCount(head, list, len(encs), encs, online, form, more)
	return b
}

// spliceBinaryCount is spliceBinary of count records held by segs, one
// after another; at is where the online states start in the result.
func spliceBinaryCount(head []byte, list wire.PeerList, count int, segs [][]byte, online onlineSet, form wireForm, more bool) (_ []byte, at int) {
	if more {
		h := make([]byte, 0, len(head)+len(`"more":true,`))
		h = append(h, `{"more":true`...)
		if rest := bytes.TrimSpace(head[1:]); len(rest) > 1 { // more than "}"
			h = append(h, ',')
			h = append(h, rest...)
		} else {
			h = append(h, '}')
		}
		head = h
	}
	n := 1 + binary.MaxVarintLen32 + len(head) + 1 + 3*binary.MaxVarintLen32 + online.len()*wire.BinaryOnlineSize
	for _, e := range segs {
		n += len(e)
	}
	b := wire.AppendBinaryMapFrameStates(getBody(n), head, list, count, segs, func(b []byte) []byte {
		at = len(b)
		return online.appendBinary(b, form)
	})
	return b, at
}

// withOnline returns the JSON object obj with a "peers_online" field
// holding online (wire.MapResponse.PeersOnline). It writes the object
// itself, unsorted: after a burst of joins it holds thousands of peers
// for every stream, which encoding/json would sort and encode through
// reflection, stream by stream.
func withOnline(obj []byte, online onlineSet) []byte {
	b := make([]byte, 0, len(obj)+len(`"peers_online":{},`)+online.len()*(len(`"nodekey:":false,`)+64))
	b = append(b, `{"peers_online":{`...)
	first := true
	online.each(func(k key.NodePublic, on bool) {
		if !first {
			b = append(b, ',')
		}
		first = false
		b = append(b, '"')
		b, _ = k.AppendText(b) // hex: nothing to escape
		b = append(b, '"', ':')
		b = strconv.AppendBool(b, on)
	})
	b = append(b, '}')
	if rest := bytes.TrimSpace(obj[1:]); len(rest) > 1 { // more than "}"
		b = append(b, ',')
		return append(b, rest...)
	}
	return append(b, '}')
}

// splice returns the JSON object obj with field (`"name":[`) holding the
// elements encs added first, and "more":true if more. Large results come
// from bodyPool; give them back with putBody once sealed.
func splice(obj []byte, field string, encs [][]byte, more bool) []byte {
	n := len(obj) + len(field) + 16
	for _, e := range encs {
		n += len(e) + 1
	}
	b := getBody(n)
	b = append(b, '{')
	b = append(b, field...)
	for i, e := range encs {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, e...)
	}
	b = append(b, ']')
	if more {
		b = append(b, `,"more":true`...)
	}
	if rest := bytes.TrimSpace(obj[1:]); len(rest) > 1 { // more than "}"
		b = append(b, ',')
		b = append(b, rest...)
	} else {
		b = append(b, '}')
	}
	return b
}

// pooledBody is the least size of a buffer worth reusing: the bodies of
// full-map frames (about 30 KB for fullMapBatch peers) and large deltas,
// and the sealed frames made of them, each used only until the frame is
// sealed or written, so many streams opening at once do not each
// allocate and clear megabytes.
const pooledBody = 16 << 10

// freeBodies holds a few large buffers for reuse; a few, so that a burst
// of streams does not leave hundreds of megabytes behind (as a sync.Pool
// would until the next collections).
var freeBodies = make(chan []byte, 8)

// getBody returns an empty slice with room for n bytes.
func getBody(n int) []byte {
	if n >= pooledBody {
		select {
		case b := <-freeBodies:
			if cap(b) >= n {
				return b[:0]
			}
		default:
		}
	}
	return make([]byte, 0, n)
}

// putBody gives a body back for reuse; b must not be used after.
func putBody(b []byte) {
	if cap(b) >= pooledBody && cap(b) <= wire.MaxFrameSize {
		select {
		case freeBodies <- b:
		default:
		}
	}
}
