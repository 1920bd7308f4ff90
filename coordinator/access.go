package coordinator

import (
	"net/netip"
	"reflect"
	"slices"
	"time"

	"beam.dev/beam/coordinator/policy"
	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// minSetFilterVersion is the first wire.CapabilityVersion that takes
// filters over address sets (FilterRule.SrcSets, MapResponse.FilterSets
// and FilterSetChanges). Older nodes get every set expanded.
const minSetFilterVersion = 14

// inOverlay reports whether a is an overlay address.
func inOverlay(a netip.Addr) bool { return CGNATPrefix.Contains(a) || ULAPrefix.Contains(a) }

// overlayPrefixes stands for "every node of the network" in a filter:
// only the network's nodes are WireGuard peers, so only they can send.
var overlayPrefixes = []netip.Prefix{CGNATPrefix, ULAPrefix}

// netACL is the policy in force compiled for one network's members. It
// is built once per policy and then kept current node by node
// (aclNotifyLocked): a join, leave or change of user, tags or addresses
// updates the sets and visibility it touches, never every node's.
// Guarded by Server.mu.
type netACL struct {
	pol      *policy.Policy
	compiled *policy.Compiled
	// members holds the aclFingerprint of every unexpired node of the
	// network, edge nodes included; edges counts the edge nodes, which
	// the policy does not compile (routes decide what they reach).
	members map[key.NodePublic]aclMember
	edges   int
	// overlayAddrs counts the overlay addresses of all members: an
	// expanded rule with that many sources admits every possible
	// WireGuard peer of the network (see compactFilter).
	overlayAddrs int
}

// aclMember is what a netACL remembers of a member.
type aclMember struct {
	fp      string // aclFingerprint
	overlay int    // overlay addresses
	edge    bool
}

func newACLMember(n *wire.Node) aclMember {
	return aclMember{fp: aclFingerprint(n), overlay: countOverlay(n), edge: n.Edge}
}

// countOverlay returns how many of n's addresses are in the overlay.
func countOverlay(n *wire.Node) int {
	c := 0
	for _, a := range n.Addresses {
		if inOverlay(a.Addr()) {
			c++
		}
	}
	return c
}

// compactFilter replaces source lists that hold every member's addresses
// by the two overlay prefixes, so that expanded rules which happen to
// admit everyone stay small and the same as nodes come and go.
func (na *netACL) compactFilter(filter []wire.FilterRule) []wire.FilterRule {
	if filter == nil {
		return []wire.FilterRule{}
	}
	for i, r := range filter {
		if na.overlayAddrs > 0 && len(r.SrcIPs) == na.overlayAddrs {
			filter[i].SrcIPs = overlayPrefixes
		}
	}
	return filter
}

// star returns what a filter sends for the set "*" (every node): the
// overlay prefixes while no edge node is a member, so that rules open to
// everyone stay the same as nodes come and go; nil (the set's members)
// once an edge is, which "*" must not admit.
func (na *netACL) star() []netip.Prefix {
	if na.edges == 0 {
		return overlayPrefixes
	}
	return nil
}

// netACLLocked returns the compiled policy of a network, compiling it if
// needed. Server.mu held.
func (a *access) netACLLocked(networkID int64, now time.Time) *netACL {
	pol := a.currentPolicy()
	if na := a.nets[networkID]; na != nil && na.pol == pol {
		return na
	}
	na := &netACL{pol: pol, members: make(map[key.NodePublic]aclMember)}
	var nodes []*wire.Node
	for k, e := range a.core.nodes {
		if e.rec.NetworkID != networkID || e.rec.Node.Expired(now) {
			continue
		}
		m := newACLMember(&e.rec.Node)
		na.members[k] = m
		na.overlayAddrs += m.overlay
		if e.rec.Node.Edge {
			na.edges++
			continue
		}
		nodes = append(nodes, policyNode(pol, &e.rec.Node))
	}
	// A stable order keeps filters identical across recompiles.
	slices.SortFunc(nodes, func(a, b *wire.Node) int { return int(a.ID - b.ID) })
	na.compiled = pol.Compile(nodes)
	a.nets[networkID] = na
	a.compiles++
	return na
}

// aclLocked returns the peers self may see under the access policy and,
// for a node that serves public routes (whose filter addEdgePeers
// narrows), its packet filter with every set expanded; other nodes'
// filters come from filterLocked. Views are shared with other callers
// and must not be modified. Server.mu held.
func (a *access) aclLocked(self *wire.Node, networkID int64, now time.Time) ([]wire.FilterRule, []*wire.Node) {
	na := a.netACLLocked(networkID, now)
	var visible []*wire.Node
	for pk := range na.compiled.Visible(self.Key) {
		if e := a.core.nodes[pk]; e != nil && e.rec.NetworkID == networkID && !e.rec.Node.Expired(now) {
			visible = append(visible, a.core.sharedNodeLocked(e))
		}
	}
	filter := []wire.FilterRule{}
	if a.core.edge.serves(self.Key) {
		if f := na.compiled.Filter(self.Key); f != nil {
			filter = na.compactFilter(f.Expand(na.star()))
		}
	}
	return filter, visible
}

// aclNotifyLocked is notifyLocked's part for the access policy: it brings
// the network's compiled policy up to date with node k's change. It reports whether every stream of the network must
// recompute its peers and filter, which is only when nothing is compiled
// yet or an edge node came or went; otherwise k's own stream is marked
// to recompute and the others look at k alone. Server.mu held.
func (a *access) aclNotifyLocked(networkID int64, k key.NodePublic) bool {
	na := a.nets[networkID]
	if na == nil || na.pol != a.currentPolicy() {
		return true
	}
	var cur aclMember
	in := false
	e := a.core.nodes[k]
	if e != nil && e.rec.NetworkID == networkID && !e.rec.Node.Expired(a.core.now()) {
		cur, in = newACLMember(&e.rec.Node), true
	}
	old, had := na.members[k]
	if in == had && cur.fp == old.fp {
		return false
	}
	if old.edge != cur.edge || (cur.edge && had != in) {
		// An edge came or went: "*" changes meaning for every filter.
		delete(a.nets, networkID)
		return true
	}
	na.overlayAddrs += cur.overlay - old.overlay
	if in {
		na.members[k] = cur
		if !cur.edge {
			na.compiled.Update(policyNode(na.pol, &e.rec.Node))
		}
	} else {
		delete(na.members, k)
		na.compiled.Remove(k)
	}
	if ss := a.core.sessions[k]; ss != nil {
		ss.mark(k, true) // what k itself sees may have changed entirely
	}
	return false
}

// mayPeerLocked reports whether self's netmap may list node k. Server.mu held.
func (a *access) mayPeerLocked(self *wire.Node, networkID int64, k key.NodePublic, now time.Time) bool {
	if a.core.policy != nil {
		return true // a PolicyFunc recomputes every peer on each change
	}
	return a.netACLLocked(networkID, now).compiled.Sees(self.Key, k)
}

// streamFilter is a node's packet filter as its stream last sent it.
type streamFilter struct {
	// rules are the rules as sent: naming sets (FilterRule.SrcSets) for
	// nodes that take them, expanded for others.
	rules []wire.FilterRule
	// From the compiled policy; shape is nil for filters computed whole
	// on every change (Options.Policy, edges, nodes that serve routes).
	na    *netACL
	shape *policy.NodeFilter
	// sets are the sets the filter uses and versions what the node has
	// of each; sets is nil for expanded filters, which use them all.
	sets     []*policy.Set
	versions []uint64
	useSets  bool
}

// filterLocked returns self's packet filter as its stream should send it
// now. computed is the filter peersLocked computed, used for the nodes
// whose filter is not the compiled policy's alone. Server.mu held.
func (a *access) filterLocked(self *wire.Node, networkID int64, now time.Time, computed []wire.FilterRule) *streamFilter {
	if a.core.policy != nil || self.Edge || a.core.edge.serves(self.Key) {
		return &streamFilter{rules: computed}
	}
	na := a.netACLLocked(networkID, now)
	shape := na.compiled.Filter(self.Key)
	if shape == nil {
		shape = &policy.NodeFilter{} // not compiled: admits nothing
	}
	f := &streamFilter{na: na, shape: shape}
	if e := a.core.nodes[self.Key]; e != nil && e.version >= minSetFilterVersion {
		f.useSets = true
	}
	star := na.star()
	sets := shape.Sets()
	f.sets = make([]*policy.Set, 0, len(sets))
	for _, set := range sets {
		if star != nil && set.Name() == "*" {
			continue
		}
		f.sets = append(f.sets, set)
		f.versions = append(f.versions, set.Version())
	}
	if !f.useSets {
		f.rules = na.compactFilter(shape.Expand(star))
		return f
	}
	f.rules = make([]wire.FilterRule, 0, len(shape.Rules))
	for _, r := range shape.Rules {
		wr := wire.FilterRule{DstPorts: r.DstPorts, Protos: r.Protos}
		if star != nil && r.Src.Name() == "*" {
			wr.SrcIPs = star
		} else {
			wr.SrcSets = []string{r.Src.Name()}
		}
		f.rules = append(f.rules, wr)
	}
	return f
}

// fullSets returns the address sets f's rules name, whole. Server.mu held.
func (f *streamFilter) fullSets() map[string][]netip.Prefix {
	if !f.useSets || len(f.sets) == 0 {
		return nil
	}
	out := make(map[string][]netip.Prefix, len(f.sets))
	for _, set := range f.sets {
		out[set.Name()] = set.Addrs()
	}
	return out
}

// unchangedLocked reports, cheaply, whether sent is still self's filter:
// same compiled policy, same rules, and no set it uses changed since.
// Server.mu held.
func (a *access) unchangedLocked(self *wire.Node, networkID int64, sent *streamFilter) bool {
	na := a.nets[networkID]
	if na == nil || na != sent.na || na.pol != a.currentPolicy() {
		return false
	}
	if na.compiled.Filter(self.Key) != sent.shape {
		return false
	}
	for i, set := range sent.sets {
		if set.Version() != sent.versions[i] {
			return false
		}
	}
	return true
}

// filterDeltaLocked brings self's filter from sent to now, setting the
// filter fields of resp, and returns what the node then has. full means
// the stream recomputes everything and computed is peersLocked's filter;
// otherwise only a change of self's own rules or of the sets they use
// costs more than a few comparisons. Server.mu held.
func (a *access) filterDeltaLocked(self *wire.Node, networkID int64, now time.Time, sent *streamFilter, full bool, computed []wire.FilterRule, resp *wire.MapResponse) *streamFilter {
	if !full && (sent.shape == nil || a.unchangedLocked(self, networkID, sent)) {
		return sent
	}
	cur := a.filterLocked(self, networkID, now, computed)
	if cur.useSets && sent.useSets && cur.shape == sent.shape && cur.na == sent.na {
		// Same rules: send what changed in their sets.
		for i, set := range cur.sets {
			if sent.versions[i] == cur.versions[i] {
				continue
			}
			add, remove, ok := set.ChangesSince(sent.versions[i])
			ch := wire.FilterSetChange{Name: set.Name(), Add: add, Remove: remove}
			if !ok {
				ch = wire.FilterSetChange{Name: set.Name(), Replace: true, Add: set.Addrs()}
			}
			resp.FilterSetChanges = append(resp.FilterSetChanges, ch)
		}
		return cur
	}
	if reflect.DeepEqual(cur.rules, sent.rules) && cur.useSets == sent.useSets && sameSets(cur, sent) {
		return cur
	}
	resp.PacketFilter, resp.PacketFilterSet = cur.rules, true
	resp.FilterSets = cur.fullSets()
	return cur
}

// sameSets reports whether a node that was sent b's sets has a's.
func sameSets(a, b *streamFilter) bool {
	if !a.useSets {
		return true // expanded: the rules say it all
	}
	if len(a.sets) != len(b.sets) {
		return false
	}
	for i := range a.sets {
		if a.sets[i].Name() != b.sets[i].Name() || b.sets[i].Version() != b.versions[i] ||
			!slices.Equal(a.sets[i].Addrs(), b.sets[i].Addrs()) {
			return false
		}
	}
	return true
}
