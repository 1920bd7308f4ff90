package coordclient

import (
	"fmt"

	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// heldPeers are the peers a node holds from its map streams, kept up to
// date with every message the client passes on (full maps and deltas),
// and their digest, so that the next stream, after a coordinator restart
// or on another coordinator, can resume them (wire.MapRequest.Peers)
// instead of getting every peer again. It costs the client a map entry
// per peer (the nodes are those it decoded) and O(changes) per message.
// Only RunResponses' goroutine uses it.
type heldPeers struct {
	// valid says peers and digest are those of a whole map the node
	// applied; false asks the next stream for a full map.
	valid  bool
	peers  map[key.NodePublic]*wire.Node
	digest wire.PeersDigest
	// byID holds the key of each peer held by its ID (Node.ID), for the
	// online states that name peers by ID (wire.CompactFramesVersion).
	byID map[wire.NodeID]key.NodePublic
}

// request returns the digest to send with a stream request, or nil.
func (h *heldPeers) request() *wire.PeersDigest {
	if !h.valid {
		return nil
	}
	d := h.digest
	return &d
}

// invalidate forgets the peers held, so that the next stream gets a
// full map.
func (h *heldPeers) invalidate() {
	h.valid, h.peers, h.digest, h.byID = false, nil, wire.PeersDigest{}, nil
}

// apply brings the peers held up to date with mr, a whole message, and,
// when mr keeps the peers (wire.MapResponse.PeersKept), fills mr.Peers
// with copies of them, online but for mr.PeersOffline, so that callers
// see a full map. first says mr starts its stream. A message that keeps
// peers the client has not offered (not first, or none held) is an
// error: the client then holds nothing, and its next stream asks for a
// full map. Online states by peer ID (mr.PeersOnlineByID) become
// PeersOnline of the peers held once mr's changes are applied; one of
// an ID held by no peer is dropped, as PeersOnline of a key held by no
// peer changes nothing (the coordinator sends states only of peers it
// sent).
func (h *heldPeers) apply(mr *wire.MapResponse, first bool) error {
	if mr.PeersKept {
		if !first || !h.valid || mr.Peers != nil {
			h.invalidate()
			return fmt.Errorf("%w: map message keeps peers the node did not offer", ErrBadResponse)
		}
		offline := make(map[key.NodePublic]bool, len(mr.PeersOffline))
		for _, k := range mr.PeersOffline {
			offline[k] = true
		}
		peers := make([]*wire.Node, 0, len(h.peers))
		for _, p := range h.peers {
			pc := *p
			pc.Online = !offline[p.Key]
			if pc.Online {
				pc.Unknown = false
			}
			peers = append(peers, &pc)
		}
		mr.Peers, mr.PeersKept, mr.PeersOffline = peers, false, nil
	} else if mr.Peers != nil || first {
		// A full map (the first message of a stream always is; one
		// without peers has an empty Peers, which JSON leaves out).
		h.peers = make(map[key.NodePublic]*wire.Node, len(mr.Peers))
		h.byID = make(map[wire.NodeID]key.NodePublic, len(mr.Peers))
		h.digest = wire.PeersDigest{}
		h.valid = true
		for _, p := range mr.Peers {
			h.put(p)
		}
	}
	if !h.valid {
		mr.PeersOnlineByID = nil
		return nil
	}
	for _, p := range mr.PeersChanged {
		h.put(p)
	}
	for _, k := range mr.PeersRemoved {
		if old := h.peers[k]; old != nil {
			h.digest.Remove(k, old.Rev)
			delete(h.peers, k)
			if h.byID[old.ID] == k {
				delete(h.byID, old.ID)
			}
		}
	}
	for id, on := range mr.PeersOnlineByID {
		k, ok := h.byID[id]
		if !ok {
			continue
		}
		if mr.PeersOnline == nil {
			mr.PeersOnline = make(map[key.NodePublic]bool, len(mr.PeersOnlineByID))
		}
		if _, keyed := mr.PeersOnline[k]; !keyed {
			mr.PeersOnline[k] = on
		}
	}
	mr.PeersOnlineByID = nil
	return nil
}

// put adds or replaces peer p.
func (h *heldPeers) put(p *wire.Node) {
	if p == nil {
		return
	}
	if old := h.peers[p.Key]; old != nil {
		h.digest.Remove(p.Key, old.Rev)
		if h.byID[old.ID] == p.Key {
			delete(h.byID, old.ID)
		}
	}
	h.peers[p.Key] = p
	h.digest.Add(p.Key, p.Rev)
	if p.ID != 0 {
		h.byID[p.ID] = p.Key
	}
}
