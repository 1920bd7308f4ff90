package coordinator

import (
	"encoding/binary"
	"slices"
	"sync"
	"time"

	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// Under the access policy, the nodes of a network that see the same peers
// but for themselves (every node, under the default policy that lets
// everyone reach everyone) share one list of them, a sharedPeers, built
// once per change of who sees whom (streams.memberVer) rather than once
// per stream: a stream's full map, and every full recompute of its peers,
// takes the shared list and leaves itself out, and its deltas tell
// whether a changed node is visible by one bit of the shared set, with
// no lookup. Nodes whose visibility is their own (a restrictive policy)
// get a list of their own, built the same way; so do edges, nodes that
// serve routes and Options.Policy, through peersLocked's general path.

// maxSharedLists bounds the shared lists kept per network: under a
// policy that gives most nodes a visibility of their own, lists past it
// are built for the stream that asks and not kept.
const maxSharedLists = 256

// netShared holds the shared peer lists of one network, valid while
// memberVer and the compiled policy are those they were built for.
type netShared struct {
	memberVer uint64
	na        *netACL
	byHash    map[uint64][]*sharedPeers
	n         int
}

// sharedPeers is the peers of every node of a network whose visibility
// under the compiled policy, itself included, is vis. It is immutable
// once built. Guarded by Server.mu.
type sharedPeers struct {
	memberVer uint64
	na        *netACL
	vis       []uint64 // policy.Compiled.VisibilityWith
	// peers are the visible nodes with a view, in slot order, the nodes
	// sharing the list included; set holds their slots.
	peers []*peerState
	set   peerSet
	// until is the earliest key expiry among peers (zero: none): the list
	// holds until then.
	until time.Time
	// chunks are the encoded peers of each block of slots, built as
	// streams ask (chunksLocked); starts[b] is where block b's peers
	// start in peers.
	chunks []*fullChunk
	starts []int
	// digest is the digest of every peer of the list, and offline those
	// not online, as of change count resumeVer (resumeLocked); valid
	// while no view changed.
	resumeVer uint64
	digest    wire.PeersDigest
	offline   []*peerState
}

// resumeLocked returns the digest of l's peers (wire.PeersDigest) and
// those of them not online: what resuming a stream needs. A shared list
// computes them once per change of any view, not once per stream: after
// a restart every node of a network resumes at once, and walking every
// peer for each under Server.mu made the restart quadratic. Server.mu
// held.
func (ms *streams) resumeLocked(l peerList) (wire.PeersDigest, []key.NodePublic) {
	sp := l.shared
	if sp == nil {
		var offline []key.NodePublic
		l.each(func(ps *peerState) {
			if !ps.view.node.Online {
				offline = append(offline, ps.key)
			}
		})
		return peersDigest(l), offline
	}
	if sp.resumeVer != ms.changeVer || sp.digest.Count != len(sp.peers) {
		sp.resumeVer, sp.digest, sp.offline = ms.changeVer, wire.PeersDigest{Count: len(sp.peers)}, nil
		for _, ps := range sp.peers {
			sp.digest.Sum.Add(ps.view.hash)
			if !ps.view.node.Online {
				sp.offline = append(sp.offline, ps)
			}
		}
	}
	d := sp.digest
	if l.skip != nil {
		d.Count--
		d.Sum.Sub(l.skip.view.hash)
	}
	offline := make([]key.NodePublic, 0, len(sp.offline))
	for _, ps := range sp.offline {
		if ps != l.skip {
			offline = append(offline, ps.key)
		}
	}
	return d, offline
}

// validLocked reports whether sp still holds for a node of network
// networkID at now. Server.mu held.
func (sp *sharedPeers) validLocked(ms *streams, networkID int64, now time.Time) bool {
	return sp.memberVer == ms.memberVer && sp.na == ms.core.netACLLocked(networkID, now) &&
		(sp.until.IsZero() || now.Before(sp.until))
}

// sharesPeersLocked reports whether self's peers come from the compiled
// access policy alone, so that they may be shared (sharedPeersLocked).
// Server.mu held.
func (ms *streams) sharesPeersLocked(self key.NodePublic, edge bool) bool {
	s := ms.core
	return s.policy == nil && !edge && !s.edge.serves(self)
}

// sharedPeersLocked returns the shared peer list of self, a node of
// networkID that sharesPeersLocked, or nil if the policy has not
// compiled it (an expired node). Server.mu held.
func (ms *streams) sharedPeersLocked(self key.NodePublic, networkID int64, now time.Time) *sharedPeers {
	s := ms.core
	na := s.netACLLocked(networkID, now)
	vis := na.compiled.VisibilityWith(self)
	if vis == nil {
		return nil
	}
	ns := ms.shared[networkID]
	if ns == nil || ns.memberVer != ms.memberVer || ns.na != na {
		ns = &netShared{memberVer: ms.memberVer, na: na, byHash: make(map[uint64][]*sharedPeers)}
		ms.shared[networkID] = ns
	}
	h := hashWords(vis)
	list := ns.byHash[h]
	for i, sp := range list {
		if !slices.Equal(sp.vis, vis) {
			continue
		}
		if sp.until.IsZero() || now.Before(sp.until) {
			return sp
		}
		// A peer's key expired since: build it again, in its place.
		list = slices.Delete(list, i, i+1)
		ns.n--
		break
	}
	sp := &sharedPeers{memberVer: ms.memberVer, na: na, vis: vis, set: make(peerSet, (len(ms.peerSlots)+63)/64)}
	add := func(pk key.NodePublic) {
		e := s.nodes[pk]
		if e == nil || e.rec.NetworkID != networkID || e.rec.Node.Edge || e.rec.Node.Expired(now) {
			return
		}
		ps := ms.peerLocked(pk)
		if ps == nil || ps.view == nil || sp.set.has(ps.slot) {
			return
		}
		sp.set.add(ps.slot)
		sp.peers = append(sp.peers, ps)
		if exp := e.rec.Node.KeyExpiry; !exp.IsZero() && (sp.until.IsZero() || exp.Before(sp.until)) {
			sp.until = exp
		}
	}
	add(self)
	for pk := range na.compiled.Visible(self) {
		add(pk)
	}
	slices.SortFunc(sp.peers, func(a, b *peerState) int { return a.slot - b.slot })
	if ns.n < maxSharedLists {
		ns.byHash[h] = append(list, sp)
		ns.n++
	}
	return sp
}

// hashWords returns a hash of w (FNV-1a over its words).
func hashWords(w []uint64) uint64 {
	h := uint64(14695981039346656037)
	for _, x := range w {
		h ^= x
		h *= 1099511628211
	}
	return h
}

// peerList is the peers a node sees: all, in slot order, but skip (the
// node itself, in a shared list; nil if none).
type peerList struct {
	all  []*peerState
	skip *peerState
	// shared is the shared list all is, if it is one.
	shared *sharedPeers
}

// len returns the number of peers.
func (l peerList) len() int {
	if l.skip != nil {
		return len(l.all) - 1
	}
	return len(l.all)
}

// each calls f with every peer.
func (l peerList) each(f func(*peerState)) {
	for _, ps := range l.all {
		if ps != l.skip {
			f(ps)
		}
	}
}

// chunkSlots is how many consecutive peer slots a chunk of a shared list
// covers (fullChunk): a full map sends the peers of a chunk or more per
// frame, as many as a frame of fullMapBatchBinary peers.
const chunkSlots = fullMapBatchBinary

// fullChunk is the peers of a shared list in one block of chunkSlots
// slots, as of one change of the block, encoded once for every stream
// that sends them in its full map. It is immutable once built; its
// encodings are made on first use, outside Server.mu.
type fullChunk struct {
	ver   uint64 // streams.blockVer of the block when built
	block int
	views []*peerView

	// bins are the views' binary peer records, per binary form
	// (wireForm.index), each made on first use.
	bins [2]chunkBinary

	jsonOnce sync.Once
	json     []byte // the views' JSON, comma-separated
	jsonEnd  []int  // where each ends in json (before its comma)
	jsonErr  error

	suffixOnce sync.Once
	suffix     string // the views' DNS suffix (wire.PeerDNSSuffix), if any
	mixed      bool   // the views have several
}

// dnsSuffix returns the DNS suffix (wire.PeerDNSSuffix) of the chunk's
// views that have one, or mixed if they have several (views of several
// networks).
func (c *fullChunk) dnsSuffix() (suffix string, mixed bool) {
	c.suffixOnce.Do(func() {
		for _, pv := range c.views {
			sfx := wire.PeerDNSSuffix(pv.node)
			switch {
			case sfx == "" || sfx == c.suffix:
			case c.suffix == "":
				c.suffix = sfx
			default:
				c.mixed = true
			}
		}
	})
	return c.suffix, c.mixed
}

// formIn returns the form of the chunk's records in a body of form whose
// DNS suffix is suffix: formBinary in place of formCompact if some of
// its views' DNS names have another suffix (wire.AppendPeerRecordCompact).
func (c *fullChunk) formIn(form wireForm, suffix string) wireForm {
	if form == formCompact {
		if sfx, mixed := c.dnsSuffix(); mixed || sfx != "" && sfx != suffix {
			return formBinary
		}
	}
	return form
}

// chunkBinary is a chunk's binary peer records of one form.
type chunkBinary struct {
	once sync.Once
	bin  []byte // the records, one after another
	end  []int  // where each record ends in bin

	blockOnce sync.Once
	sealed    []byte        // the frame of the sealed records: 4B length, then the box
	blockRef  wire.BlockRef // what a blocked map frame says of it
}

// sealedBlock returns the chunk's binary records of form sealed once
// under a key of their own (key.BlockKey), as the frame that follows a
// blocked map frame (wire.BlockedMapFrame) on a stream, and its
// reference. Every node given it sees every peer of the chunk: chunks
// are of one shared list, and a stream whose own record is in the chunk
// gets that chunk sealed to it instead (blockSegments).
func (c *fullChunk) sealedBlock(form wireForm) ([]byte, wire.BlockRef) {
	cb := &c.bins[form.index()]
	cb.blockOnce.Do(func() {
		bin, _, _ := c.encoded(form)
		k := key.NewBlockKey()
		b := make([]byte, 4, 4+len(bin)+key.BlockOverhead)
		b = k.SealBlockAppend(b, bin)
		binary.BigEndian.PutUint32(b, uint32(len(b)-4))
		cb.sealed = b
		cb.blockRef = wire.BlockRef{Key: k.Raw32(), Hash: wire.BlockHash(b[4:]), Size: len(b) - 4}
	})
	return cb.sealed, cb.blockRef
}

// encoded returns the chunk's records of form, and where each ends.
func (c *fullChunk) encoded(form wireForm) ([]byte, []int, error) {
	if form.binary() {
		cb := &c.bins[form.index()]
		cb.once.Do(func() {
			n := 0
			for _, pv := range c.views {
				n += len(pv.binary(form))
			}
			cb.bin, cb.end = make([]byte, 0, n), make([]int, len(c.views))
			for i, pv := range c.views {
				cb.bin = append(cb.bin, pv.binary(form)...)
				cb.end[i] = len(cb.bin)
			}
		})
		return cb.bin, cb.end, nil
	}
	c.jsonOnce.Do(func() {
		n := 0
		for _, pv := range c.views {
			b, err := pv.json()
			if err != nil {
				c.jsonErr = err
				return
			}
			n += len(b) + 1
		}
		c.json, c.jsonEnd = make([]byte, 0, n), make([]int, len(c.views))
		for i, pv := range c.views {
			b, _ := pv.json()
			if i > 0 {
				c.json = append(c.json, ',')
			}
			c.json = append(c.json, b...)
			c.jsonEnd[i] = len(c.json)
		}
	})
	return c.json, c.jsonEnd, c.jsonErr
}

// touchLocked records that the view of the node in slot changed, so that
// the chunks holding it are built again. Server.mu held.
func (ms *streams) touchLocked(slot int) {
	b := slot / chunkSlots
	for b >= len(ms.blockVer) {
		ms.blockVer = append(ms.blockVer, 0)
	}
	ms.blockVer[b] = ms.changeVer
}

// chunksLocked returns sp's chunks as of now, building those of blocks
// changed since. Server.mu held.
func (sp *sharedPeers) chunksLocked(ms *streams) []*fullChunk {
	if sp.chunks == nil {
		// Where each block's peers start in sp.peers, and the last end.
		nb := 0
		if n := len(sp.peers); n > 0 {
			nb = sp.peers[n-1].slot/chunkSlots + 1
		}
		sp.chunks = make([]*fullChunk, nb)
		sp.starts = make([]int, nb+1)
		i := 0
		for b := range nb {
			sp.starts[b] = i
			for i < len(sp.peers) && sp.peers[i].slot/chunkSlots == b {
				i++
			}
		}
		sp.starts[nb] = i
	}
	out := make([]*fullChunk, 0, len(sp.chunks))
	for b, c := range sp.chunks {
		peers := sp.peers[sp.starts[b]:sp.starts[b+1]]
		if len(peers) == 0 {
			continue
		}
		var ver uint64
		if b < len(ms.blockVer) {
			ver = ms.blockVer[b]
		}
		if c == nil || c.ver < ver {
			c = &fullChunk{ver: ver, block: b, views: make([]*peerView, len(peers))}
			for i, ps := range peers {
				c.views[i] = ps.view
			}
			sp.chunks[b] = c
		}
		out = append(out, c)
	}
	return out
}

// sendChunks sends the full map f, which carries no peers yet, with the
// peers of chunks but self (in slot selfSlot; -1 if none), as frames of
// about fullMapBatchBinary peers joined by More (the first also carries
// f's other fields); encode makes each frame's body of the chunks' shared
// encodings, without self's, or with blocked of their sealed blocks but
// for self's chunk (wire.BlockedMapFrame).
func sendChunks(send func(*mapFrame) error, f *mapFrame, chunks []*fullChunk, self key.NodePublic, selfSlot int, blocked bool) error {
	selfBlock := -1
	if selfSlot >= 0 {
		selfBlock = selfSlot / chunkSlots
	}
	for i := 0; ; {
		n, j := 0, i
		for ; j < len(chunks) && (j == i || n+len(chunks[j].views) <= fullMapBatchBinary); j++ {
			n += len(chunks[j].views)
		}
		f.full, f.chunks, f.self, f.selfBlock, f.more, f.blocked = true, chunks[i:j], self, selfBlock, j < len(chunks), blocked
		if err := send(f); err != nil {
			return err
		}
		if j == len(chunks) {
			return nil
		}
		i, f = j, &mapFrame{resp: &wire.MapResponse{}}
	}
}

// chunkSegments returns the encodings of f.chunks in form, in a body of
// DNS suffix suffix (chunk.formIn), as segments to join (JSON ones with
// commas), self's record left out, and the number of records they hold.
// With blocked (binary only), every chunk but the one holding self is
// instead a sealed block (sealedBlock), in blocks, with its reference
// in refs; its records count too.
func (f *mapFrame) chunkSegments(form wireForm, suffix string, blocked bool) (segs [][]byte, count int, refs []wire.BlockRef, blocks [][]byte, _ error) {
	bin := form.binary()
	segs = make([][]byte, 0, len(f.chunks)+1)
	for _, c := range f.chunks {
		at := -1
		if c.block == f.selfBlock {
			at = slices.IndexFunc(c.views, func(pv *peerView) bool { return pv.node.Key == f.self })
		}
		if blocked && at < 0 {
			b, ref := c.sealedBlock(c.formIn(form, suffix))
			blocks, refs = append(blocks, b), append(refs, ref)
			count += len(c.views)
			continue
		}
		enc, ends, err := c.encoded(c.formIn(form, suffix))
		if err != nil {
			return nil, 0, nil, nil, err
		}
		if at < 0 {
			if len(enc) > 0 {
				segs = append(segs, enc)
			}
			count += len(c.views)
			continue
		}
		// Leave self out: the records before it and those after.
		if at > 0 {
			segs = append(segs, enc[:ends[at-1]])
		}
		if rest := enc[ends[at]:]; len(rest) > 0 {
			if !bin {
				rest = rest[1:] // its comma
			}
			segs = append(segs, rest)
		}
		count += len(c.views) - 1
	}
	return segs, count, refs, blocks, nil
}

// blocksFit reports whether a blocked map frame may name refs
// (wire.ParseBlockedMapFrame's bounds).
func blocksFit(refs []wire.BlockRef) bool {
	if len(refs) > wire.MaxBlocksPerFrame {
		return false
	}
	total := 0
	for _, r := range refs {
		total += r.Size
	}
	return total <= wire.MaxFrameSize
}

// chunkViews returns the views of f.chunks but self's.
func (f *mapFrame) chunkViews() []*peerView {
	var out []*peerView
	for _, c := range f.chunks {
		for _, pv := range c.views {
			if pv.node.Key != f.self {
				out = append(out, pv)
			}
		}
	}
	return out
}
