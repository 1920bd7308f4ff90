package wire

import (
	"maps"
	"net/netip"
	"slices"
	"time"

	"beam.dev/beam/types/key"
)

// NetMap is a node's current view of its network, built from the full
// MapResponse of a stream and the deltas after it.
type NetMap struct {
	Self         *Node        `json:"self"`
	Peers        []*Node      `json:"peers"` // sorted by Name
	DERPMap      *DERPMap     `json:"derp_map,omitempty"`
	DNS          *DNSConfig   `json:"dns,omitempty"`
	PacketFilter []FilterRule `json:"packet_filter,omitempty"`
	// FilterSets are the address sets PacketFilter's rules name.
	FilterSets map[string][]netip.Prefix `json:"filter_sets,omitempty"`
	EdgeRoutes []EdgeRoute               `json:"edge_routes,omitempty"`
	// ControlTime is the coordinator's clock at the last message and
	// LocalTime the node's clock when it arrived; their difference is the
	// skew correction for expiry checks.
	ControlTime time.Time `json:"control_time,omitzero"`
	LocalTime   time.Time `json:"local_time,omitzero"`

	// idx indexes Peers by key (see Apply); nil for a netmap Apply did
	// not make.
	idx *peerIndex
}

// Clone returns a deep-enough copy of nm: slices and peers are copied, so
// applying a delta to the copy does not change nm. The address slices of
// FilterSets are shared: Apply replaces them, never changes them.
func (nm *NetMap) Clone() *NetMap {
	if nm == nil {
		return nil
	}
	c := *nm
	if nm.Self != nil {
		s := *nm.Self
		c.Self = &s
	}
	c.Peers = make([]*Node, len(nm.Peers))
	for i, p := range nm.Peers {
		pc := *p
		c.Peers[i] = &pc
	}
	c.idx = nil
	c.PacketFilter = slices.Clone(nm.PacketFilter)
	c.FilterSets = maps.Clone(nm.FilterSets)
	c.EdgeRoutes = slices.Clone(nm.EdgeRoutes)
	return &c
}

// Apply returns the netmap that results from applying resp to nm. nm is
// not modified. A nil nm is treated as empty. localNow is the node's clock.
//
// The result shares with nm whatever resp leaves as it was: the Self,
// DERPMap, DNS, filter and route values and every peer resp does not
// change (the same *Node); callers must not modify a netmap's values. A
// delta costs O(k log n) for k changed peers of n, plus one copy of the
// Peers pointers when the list changes: peers are also held in an index
// (a persistent hash trie, see peerIndex) that Apply updates in place of
// rebuilding and sorting the list, and that PeerChanges compares.
func (nm *NetMap) Apply(resp *MapResponse, localNow time.Time) *NetMap {
	next := &NetMap{}
	if nm != nil {
		*next = *nm
	}
	if !resp.ControlTime.IsZero() {
		next.ControlTime = resp.ControlTime
		next.LocalTime = localNow
	}
	if resp.KeepAlive && resp.Self == nil && resp.Peers == nil && len(resp.PeersChanged) == 0 &&
		len(resp.PeersRemoved) == 0 && len(resp.PeersOnline) == 0 {
		return next
	}
	if resp.Self != nil {
		s := *resp.Self
		next.Self = &s
	}
	next.applyPeers(resp)
	if resp.DERPMap != nil {
		next.DERPMap = resp.DERPMap
	}
	if resp.DNS != nil {
		next.DNS = resp.DNS
	}
	if resp.PacketFilterSet || resp.PacketFilter != nil {
		next.PacketFilter = slices.Clone(resp.PacketFilter)
		next.FilterSets = maps.Clone(resp.FilterSets)
	}
	if len(resp.FilterSetChanges) > 0 {
		sets := maps.Clone(next.FilterSets) // nm's map is nm's
		if sets == nil {
			sets = map[string][]netip.Prefix{}
		}
		for _, ch := range resp.FilterSetChanges {
			sets[ch.Name] = ch.apply(sets[ch.Name])
		}
		next.FilterSets = sets
	}
	if resp.EdgeRoutes != nil {
		next.EdgeRoutes = slices.Clone(resp.EdgeRoutes)
	}
	return next
}

// applyPeers applies resp's peer fields to next, a shallow copy of the
// netmap resp applies to: Peers and idx are replaced, never modified.
func (next *NetMap) applyPeers(resp *MapResponse) {
	if resp.Peers == nil && len(resp.PeersChanged) == 0 && len(resp.PeersRemoved) == 0 && len(resp.PeersOnline) == 0 {
		return
	}
	var (
		ix          peerIndex
		incremental bool // ix indexes next.Peers, which is sorted
	)
	switch {
	case resp.Peers != nil:
		for _, p := range resp.Peers {
			if p != nil {
				pc := *p
				ix.set(&pc)
			}
		}
	case next.idx.valid(next.Peers):
		ix, incremental = *next.idx, true
	default:
		// A netmap made otherwise (decoded from JSON, or by hand).
		ix, incremental = newPeerIndex(next.Peers)
	}
	// before holds, for each key the message touches, its peer in
	// next.Peers (nil if none).
	base := ix
	var before map[key.NodePublic]*Node
	touch := func(k key.NodePublic) {
		if !incremental {
			return
		}
		if before == nil {
			before = make(map[key.NodePublic]*Node, len(resp.PeersChanged)+len(resp.PeersRemoved)+len(resp.PeersOnline))
		}
		if _, ok := before[k]; !ok {
			before[k] = base.get(k)
		}
	}
	for _, p := range resp.PeersChanged {
		if p == nil {
			continue
		}
		touch(p.Key)
		pc := *p
		ix.set(&pc)
	}
	for _, k := range resp.PeersRemoved {
		touch(k)
		ix.del(k)
	}
	for k, online := range resp.PeersOnline {
		p := ix.get(k)
		if p == nil || (p.Online == online && !p.Unknown) {
			continue
		}
		touch(k)
		pc := *p
		pc.Online, pc.Unknown = online, false
		ix.set(&pc)
	}
	if incremental {
		var gone, come []*Node
		for k, was := range before {
			now := ix.get(k)
			if now == was {
				continue
			}
			if was != nil {
				gone = append(gone, was)
			}
			if now != nil {
				come = append(come, now)
			}
		}
		if peers, ok := splice(next.Peers, gone, come); ok {
			ix.peers, next.Peers, next.idx = peers, peers, &ix
			return
		}
	}
	next.Peers = ix.sortedPeers()
	ix.peers = next.Peers
	next.idx = &ix
}

// PeerChanges calls fn for each key whose peer differs between old and
// nm: was is old's peer (nil if nm added it), now nm's (nil if nm removed
// it). A peer both hold as the same *Node is unchanged; one that Apply
// copied (a delta naming it) is reported even if its fields are equal.
// A nil netmap has no peers. When nm was made from old by Apply, directly
// or through other netmaps, the cost is that of the changes (the two
// share the rest of their index); otherwise it is that of all their peers.
func (nm *NetMap) PeerChanges(old *NetMap, fn func(was, now *Node)) {
	diffTrie(old.peerTrie(), nm.peerTrie(), fn)
}

// peerTrie returns the root of nm's peer index, indexing the peers anew
// if nm has no valid index.
func (nm *NetMap) peerTrie() *trieNode {
	if nm == nil {
		return nil
	}
	if nm.idx.valid(nm.Peers) {
		return nm.idx.root
	}
	var ix peerIndex
	for _, p := range nm.Peers {
		ix.set(p)
	}
	return ix.root
}

// Merge adds the frame next to the message m, which had More set: lists
// are appended, online states added, and the other fields next sets
// replace m's. m takes next's More.
func (m *MapResponse) Merge(next *MapResponse) {
	m.More = next.More
	m.KeepAlive = m.KeepAlive && next.KeepAlive
	if next.Self != nil {
		m.Self = next.Self
	}
	if next.Peers != nil {
		m.Peers = append(m.Peers, next.Peers...)
	}
	m.PeersChanged = append(m.PeersChanged, next.PeersChanged...)
	m.PeersRemoved = append(m.PeersRemoved, next.PeersRemoved...)
	for k, on := range next.PeersOnline {
		if m.PeersOnline == nil {
			m.PeersOnline = make(map[key.NodePublic]bool, len(next.PeersOnline))
		}
		m.PeersOnline[k] = on
	}
	for id, on := range next.PeersOnlineByID {
		if m.PeersOnlineByID == nil {
			m.PeersOnlineByID = make(map[NodeID]bool, len(next.PeersOnlineByID))
		}
		m.PeersOnlineByID[id] = on
	}
	if next.DERPMap != nil {
		m.DERPMap = next.DERPMap
	}
	if next.DNS != nil {
		m.DNS = next.DNS
	}
	if next.PacketFilterSet || next.PacketFilter != nil {
		m.PacketFilter, m.PacketFilterSet = next.PacketFilter, next.PacketFilterSet
	}
	for name, set := range next.FilterSets {
		if m.FilterSets == nil {
			m.FilterSets = make(map[string][]netip.Prefix, len(next.FilterSets))
		}
		m.FilterSets[name] = set
	}
	m.FilterSetChanges = append(m.FilterSetChanges, next.FilterSetChanges...)
	if next.EdgeRoutes != nil {
		// The routes of a split message come in order across its frames
		// (since version 18); an empty list in the first one clears them.
		if m.EdgeRoutes == nil {
			m.EdgeRoutes = next.EdgeRoutes
		} else {
			m.EdgeRoutes = append(m.EdgeRoutes, next.EdgeRoutes...)
		}
	}
	if !next.ControlTime.IsZero() {
		m.ControlTime = next.ControlTime
	}
}

// ExpandedFilter returns PacketFilter with the address sets its rules
// name (SrcSets) resolved into SrcIPs, as nodes before version 14 get it.
// A set the netmap lacks adds nothing.
func (nm *NetMap) ExpandedFilter() []FilterRule {
	if nm == nil || nm.PacketFilter == nil {
		return nil
	}
	out := make([]FilterRule, len(nm.PacketFilter))
	for i, r := range nm.PacketFilter {
		if len(r.SrcSets) > 0 {
			src := slices.Clone(r.SrcIPs)
			for _, name := range r.SrcSets {
				src = append(src, nm.FilterSets[name]...)
			}
			r.SrcIPs, r.SrcSets = src, nil
		}
		out[i] = r
	}
	return out
}

// apply returns set with the change applied; set is not modified.
func (ch *FilterSetChange) apply(set []netip.Prefix) []netip.Prefix {
	if ch.Replace {
		return slices.Clone(ch.Add)
	}
	out := make([]netip.Prefix, 0, len(set)+len(ch.Add))
	for _, a := range set {
		if !slices.Contains(ch.Remove, a) {
			out = append(out, a)
		}
	}
	for _, a := range ch.Add {
		if !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out
}

// ControlNow estimates the coordinator's current clock from the node's
// clock now, correcting for the skew seen at the last message.
func (nm *NetMap) ControlNow(localNow time.Time) time.Time {
	if nm == nil || nm.ControlTime.IsZero() || nm.LocalTime.IsZero() {
		return localNow
	}
	return nm.ControlTime.Add(localNow.Sub(nm.LocalTime))
}

// PeerByKey returns the peer with key k, or nil.
func (nm *NetMap) PeerByKey(k key.NodePublic) *Node {
	if nm == nil {
		return nil
	}
	if nm.idx.valid(nm.Peers) {
		return nm.idx.get(k)
	}
	for _, p := range nm.Peers {
		if p.Key == k {
			return p
		}
	}
	return nil
}

func compareStrings(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
