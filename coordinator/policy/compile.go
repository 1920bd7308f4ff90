package policy

import (
	"math/bits"
	"net/netip"
	"slices"
	"strings"

	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// Compiled is a policy applied to one network's nodes: it yields each
// node's inbound packet filter and the peers it may see. Build one with
// Policy.Compile, then keep it current node by node with Update and
// Remove: one node's change costs work in proportion to the rules and
// the network's size in words (a bitset), never a recompile of every
// node's visibility or filter.
//
// Filters are expressed over named address sets (Set): the sources a
// rule admits are the addresses of the nodes its src selectors match.
// A node's filter (NodeFilter) changes only when the node's own
// membership does; a join or leave elsewhere changes the sets, whose
// recent changes each Set keeps so that a node can be sent just those.
//
// A Compiled is not safe for concurrent use: callers serialize Update,
// Remove and every read. NodeFilter values it returns are immutable.
type Compiled struct {
	p *Policy
	// index gives each node's slot; nodes, addrs and every bitset are
	// by slot. Freed slots are reused.
	index map[key.NodePublic]int
	nodes []*wire.Node // nil: free slot
	free  []int
	// addrs holds each node's overlay addresses as host prefixes.
	addrs [][]netip.Prefix

	// sels are the distinct selectors of the rules (src and non-self
	// dst), selMembers the nodes each matches.
	sels       []selector
	selIndex   map[selector]int
	selMembers []bitset
	// byUser holds the untagged nodes of each user.
	byUser map[string]*bitset
	rules  []compiledRule
	// sets are the src sets of the rules by name; selfSets the
	// autogroup:self sets by user, one per rule with self ports.
	sets     map[string]*Set
	srcSets  []*Set // distinct src sets, in rule order
	selfSets map[string][]*Set

	// vis caches the visibility of nodes by slot; filters their filters.
	vis     map[int]bitset
	filters map[int]*NodeFilter
	// visComputed counts visibility computations, a cost measure.
	visComputed int
}

// compiledRule is one acls rule resolved to selectors and sets.
type compiledRule struct {
	protos []int // nil: TCP, UDP, ICMP
	src    *Set
	dst    []compiledDst
	// selfPorts is the union of the rule's autogroup:self ports, nil if
	// it has none; selfIdx is the rule's position among the rules with
	// self ports (its set in selfSets[user]).
	selfPorts []portRange
	selfIdx   int
}

// compiledDst is one non-self dst entry.
type compiledDst struct {
	sel   int // index into Compiled.sels
	ports []portRange
}

// Set is a named set of nodes whose overlay addresses filter rules admit
// as sources: the nodes a rule's src selectors match ("group:eng,tag:ci",
// or "*" for a rule open to every node), or for autogroup:self the
// nodes of one user among them. Names are stable for a policy, so a node
// can be sent a set once and then only its changes.
type Set struct {
	c       *Compiled
	name    string
	sels    []int  // src selectors (any matches)
	user    string // self sets: the user
	of      *Set   // self sets: the rule's src set they narrow
	members bitset
	// version counts changes; log holds the latest, oldest first.
	version uint64
	log     []setOp
}

// setOp is one change of a set: addrs joined (add) or left it.
type setOp struct {
	version uint64
	add     bool
	addrs   []netip.Prefix
}

// maxSetLog bounds the changes a Set keeps; a node further behind gets
// the whole set again.
const maxSetLog = 64

// Name returns the set's name, unique within its Compiled.
func (s *Set) Name() string { return s.name }

// Version returns the set's change count: equal versions mean equal
// contents.
func (s *Set) Version() uint64 { return s.version }

// Len returns the number of member nodes.
func (s *Set) Len() int { return s.members.count() }

// Addrs returns the overlay addresses of the members, in slot order.
func (s *Set) Addrs() []netip.Prefix {
	var out []netip.Prefix
	for i := range s.members.all() {
		out = append(out, s.c.addrs[i]...)
	}
	return out
}

// ChangesSince returns what to add to and remove from the set as it was
// at version v to make it current, or ok false if the set no longer
// remembers that far back (the caller then sends it whole).
func (s *Set) ChangesSince(v uint64) (add, remove []netip.Prefix, ok bool) {
	if v == s.version {
		return nil, nil, true
	}
	if v > s.version || len(s.log) == 0 || s.log[0].version > v+1 {
		return nil, nil, false
	}
	// The last operation on an address decides.
	last := map[netip.Prefix]bool{}
	var order []netip.Prefix
	for _, op := range s.log {
		if op.version <= v {
			continue
		}
		for _, a := range op.addrs {
			if _, seen := last[a]; !seen {
				order = append(order, a)
			}
			last[a] = op.add
		}
	}
	for _, a := range order {
		if last[a] {
			add = append(add, a)
		} else {
			remove = append(remove, a)
		}
	}
	return add, remove, true
}

func (s *Set) record(add bool, addrs []netip.Prefix) {
	if len(addrs) == 0 {
		return
	}
	s.version++
	if len(s.log) == maxSetLog {
		s.log = slices.Delete(s.log, 0, maxSetLog/2)
	}
	s.log = append(s.log, setOp{version: s.version, add: add, addrs: addrs})
}

// NodeFilter is one node's inbound packet filter over sets. It admits a
// packet when some rule does: its source address is in Src (or
// SrcIPs), its destination address and port are in DstPorts (ports are
// ignored for protocols other than TCP, UDP and SCTP), and its protocol is
// in Protos (empty: TCP, UDP, ICMP and ICMPv6).
type NodeFilter struct {
	Rules []SetRule
}

// SetRule is one rule of a NodeFilter.
type SetRule struct {
	// Src is the set of nodes admitted; its addresses change as nodes
	// come and go without the rule changing.
	Src      *Set
	DstPorts []wire.NetPortRange
	Protos   []int
}

// Sets returns the distinct sets f's rules name, in rule order.
func (f *NodeFilter) Sets() []*Set {
	var out []*Set
	for _, r := range f.Rules {
		if !slices.Contains(out, r.Src) {
			out = append(out, r.Src)
		}
	}
	return out
}

// Expand returns f with every set replaced by its current addresses, as
// wire rules; rules whose set is empty are left out. star, if non-nil,
// replaces the addresses of the set "*" (every node), whose rules then
// stay the same as nodes come and go.
func (f *NodeFilter) Expand(star []netip.Prefix) []wire.FilterRule {
	var out []wire.FilterRule
	for _, r := range f.Rules {
		var src []netip.Prefix
		if star != nil && r.Src.name == "*" {
			src = star
		} else {
			src = r.Src.Addrs()
		}
		if len(src) == 0 {
			continue
		}
		out = append(out, wire.FilterRule{SrcIPs: src, DstPorts: r.DstPorts, Protos: r.Protos})
	}
	return out
}

// Compile resolves p against nodes, the members of one network. Nodes
// with a zero or duplicate key are ignored; only node addresses inside the
// overlay are used.
func (p *Policy) Compile(nodes []*wire.Node) *Compiled {
	c := &Compiled{
		p:        p,
		index:    make(map[key.NodePublic]int, len(nodes)),
		selIndex: map[selector]int{},
		byUser:   map[string]*bitset{},
		sets:     map[string]*Set{},
		selfSets: map[string][]*Set{},
		vis:      map[int]bitset{},
		filters:  map[int]*NodeFilter{},
	}
	sel := func(s selector) int {
		if i, ok := c.selIndex[s]; ok {
			return i
		}
		c.selIndex[s] = len(c.sels)
		c.sels = append(c.sels, s)
		c.selMembers = append(c.selMembers, nil)
		return len(c.sels) - 1
	}
	nself := 0
	for i := range p.acls {
		r := &p.acls[i]
		cr := compiledRule{protos: r.protos, src: c.srcSet(r.src, sel)}
		for _, d := range r.dst {
			if d.sel.kind == selSelf {
				cr.selfPorts = append(cr.selfPorts, d.ports...)
				continue
			}
			cr.dst = append(cr.dst, compiledDst{sel: sel(d.sel), ports: d.ports})
		}
		if cr.selfPorts != nil {
			cr.selfPorts = mergeRanges(cr.selfPorts)
			cr.selfIdx = nself
			nself++
		}
		c.rules = append(c.rules, cr)
	}
	// Place every node, then compute nothing else: visibility and
	// filters are computed when asked for.
	for _, n := range nodes {
		if n == nil || n.Key.IsZero() {
			continue
		}
		if _, dup := c.index[n.Key]; dup {
			continue
		}
		i := c.alloc(n.Key)
		c.nodes[i], c.addrs[i] = n, overlayAddrs(n)
		c.place(i, nil, nil, false)
	}
	return c
}

// srcSet returns the set of a rule's src selectors, shared by rules with
// the same selectors.
func (c *Compiled) srcSet(sels []selector, index func(selector) int) *Set {
	var names []string
	var idx []int
	star := false
	for _, s := range sels {
		if s.kind == selAll {
			star = true
		}
		names = append(names, s.String())
		idx = append(idx, index(s))
	}
	slices.Sort(names)
	name := strings.Join(slices.Compact(names), ",")
	if star {
		name, idx = "*", []int{index(selector{kind: selAll})}
	}
	if s := c.sets[name]; s != nil {
		return s
	}
	s := &Set{c: c, name: name, sels: idx}
	c.sets[name] = s
	c.srcSets = append(c.srcSets, s)
	return s
}

// overlayAddrs returns n's overlay addresses as host prefixes.
func overlayAddrs(n *wire.Node) []netip.Prefix {
	var out []netip.Prefix
	for _, a := range n.Addresses {
		hp := netip.PrefixFrom(a.Addr(), a.Addr().BitLen())
		if a.IsValid() && inOverlay(hp) {
			out = append(out, hp)
		}
	}
	return out
}

// alloc gives k a slot.
func (c *Compiled) alloc(k key.NodePublic) int {
	var i int
	if n := len(c.free); n > 0 {
		i, c.free = c.free[n-1], c.free[:n-1]
	} else {
		i = len(c.nodes)
		c.nodes = append(c.nodes, nil)
		c.addrs = append(c.addrs, nil)
	}
	c.index[k] = i
	return i
}

// Update adds node n, or applies a change of its user, tags or addresses
// (the fields the policy looks at; others are ignored). The caller must
// not modify n afterwards. It reports whether anything the policy sees
// changed.
func (c *Compiled) Update(n *wire.Node) bool {
	if n == nil || n.Key.IsZero() {
		return false
	}
	i, ok := c.index[n.Key]
	if ok && samePolicyFields(c.nodes[i], n) {
		c.nodes[i] = n
		return false
	}
	if !ok {
		i = c.alloc(n.Key)
	}
	old, oldAddrs := c.nodes[i], c.addrs[i]
	c.nodes[i], c.addrs[i] = n, overlayAddrs(n)
	c.place(i, old, oldAddrs, true)
	return true
}

// Remove removes the node with key k, if present.
func (c *Compiled) Remove(k key.NodePublic) {
	i, ok := c.index[k]
	if !ok {
		return
	}
	old, oldAddrs := c.nodes[i], c.addrs[i]
	c.nodes[i], c.addrs[i] = nil, nil
	c.place(i, old, oldAddrs, true)
	delete(c.index, k)
	c.free = append(c.free, i)
}

func samePolicyFields(a, b *wire.Node) bool {
	return a.User == b.User && slices.Equal(a.Tags, b.Tags) && slices.Equal(a.Addresses, b.Addresses)
}

// place brings every set and cache up to date for slot i, which held old
// (with addresses oldAddrs; nil if the slot was free) and now holds
// c.nodes[i] (nil if it is being freed). incremental says the caches may
// hold results computed before the change.
func (c *Compiled) place(i int, old *wire.Node, oldAddrs []netip.Prefix, incremental bool) {
	n := c.nodes[i]
	for s := range c.sels {
		if n != nil && c.p.matches(c.sels[s], n) {
			c.selMembers[s].set(i)
		} else {
			c.selMembers[s].clear(i)
		}
	}
	if old != nil && untagged(old) {
		c.byUser[old.User].clear(i)
	}
	if n != nil && untagged(n) {
		bs := c.byUser[n.User]
		if bs == nil {
			bs = new(bitset)
			c.byUser[n.User] = bs
			var sets []*Set
			for _, r := range c.rules {
				if r.selfPorts != nil {
					sets = append(sets, &Set{c: c, name: "autogroup:self:" + n.User + "/" + r.src.name, user: n.User, of: r.src})
				}
			}
			c.selfSets[n.User] = sets
		}
		bs.set(i)
	}
	newAddrs := c.addrs[i]
	move := func(s *Set, in bool) {
		was := s.members.has(i)
		switch {
		case was && !in:
			s.members.clear(i)
			s.record(false, oldAddrs)
		case !was && in:
			s.members.set(i)
			s.record(true, newAddrs)
		case was && in && !slices.Equal(oldAddrs, newAddrs):
			s.record(false, oldAddrs)
			s.record(true, newAddrs)
		}
	}
	for _, s := range c.srcSets {
		in := false
		for _, si := range s.sels {
			in = in || c.selMembers[si].has(i)
		}
		move(s, in)
	}
	for k, u := range []*wire.Node{old, n} {
		if u == nil || !untagged(u) || k == 1 && old != nil && untagged(old) && old.User == u.User {
			continue
		}
		for _, s := range c.selfSets[u.User] {
			move(s, n != nil && untagged(n) && n.User == s.user && s.of.members.has(i))
		}
	}
	if !incremental {
		return
	}
	delete(c.filters, i)
	delete(c.vis, i)
	var vis bitset
	if n != nil {
		vis = c.visibility(i)
		c.vis[i] = vis
	}
	for j, v := range c.vis {
		if j == i {
			continue
		}
		if vis.has(j) {
			v.set(i)
			c.vis[j] = v
		} else {
			v.clear(i)
		}
	}
}

// visibility computes the nodes slot i may see: those it may reach and
// those that may reach it, on any port. The relation is symmetric.
func (c *Compiled) visibility(i int) bitset {
	c.visComputed++
	n := c.nodes[i]
	vis := make(bitset, (len(c.nodes)+63)/64)
	for ri := range c.rules {
		r := &c.rules[ri]
		isSrc := r.src.members.has(i)
		inDst := false
		for _, d := range r.dst {
			m := c.selMembers[d.sel]
			if isSrc {
				vis.or(m)
			}
			inDst = inDst || m.has(i)
		}
		if inDst {
			vis.or(r.src.members)
		}
		if r.selfPorts == nil || !untagged(n) {
			continue
		}
		if isSrc {
			vis.or(*c.byUser[n.User])
		}
		vis.or(c.selfSets[n.User][r.selfIdx].members)
	}
	vis.clear(i)
	return vis
}

// visibleSlot returns slot i's cached visibility, computing it once.
func (c *Compiled) visibleSlot(i int) bitset {
	if v, ok := c.vis[i]; ok {
		return v
	}
	v := c.visibility(i)
	c.vis[i] = v
	return v
}

// Sees reports whether the node with key a may see the node with key b
// (and so b a): one may reach the other on some port.
func (c *Compiled) Sees(a, b key.NodePublic) bool {
	i, ok := c.index[a]
	j, ok2 := c.index[b]
	if !ok || !ok2 || i == j {
		return false
	}
	if v, ok := c.vis[j]; ok {
		return v.has(i)
	}
	return c.visibleSlot(i).has(j)
}

// Visible calls yield with the key of every node self may see.
func (c *Compiled) Visible(self key.NodePublic) func(yield func(key.NodePublic) bool) {
	return func(yield func(key.NodePublic) bool) {
		i, ok := c.index[self]
		if !ok {
			return
		}
		for j := range c.visibleSlot(i).all() {
			if n := c.nodes[j]; n != nil && !yield(n.Key) {
				return
			}
		}
	}
}

// VisibilityWith returns the nodes self may see and self itself, one
// bit per compiled slot, without trailing zero words; nil if self is not
// compiled. Two nodes get equal slices exactly when each sees what the
// other does but for the two of them, as every node does under a policy
// that lets everyone reach everyone: their peers can then be computed
// once. The slice is the caller's.
func (c *Compiled) VisibilityWith(self key.NodePublic) []uint64 {
	i, ok := c.index[self]
	if !ok {
		return nil
	}
	v := slices.Clone(c.visibleSlot(i))
	v.set(i)
	for len(v) > 0 && v[len(v)-1] == 0 {
		v = v[:len(v)-1]
	}
	return v
}

// VisibilityComputed returns how many times a node's visibility was
// computed: once per node asked about plus once per Update or Remove.
func (c *Compiled) VisibilityComputed() int { return c.visComputed }

// Filter returns the inbound packet filter of the node with key self,
// over sets, or nil if self is not among the compiled nodes. It is the
// same value until self's own user, tags or addresses change.
func (c *Compiled) Filter(self key.NodePublic) *NodeFilter {
	i, ok := c.index[self]
	if !ok {
		return nil
	}
	if f := c.filters[i]; f != nil {
		return f
	}
	n := c.nodes[i]
	f := &NodeFilter{}
	var ports []portRange
	for ri := range c.rules {
		r := &c.rules[ri]
		ports = ports[:0]
		for _, d := range r.dst {
			if c.selMembers[d.sel].has(i) {
				ports = append(ports, d.ports...)
			}
		}
		if len(ports) > 0 {
			f.Rules = c.appendRule(f.Rules, i, r.src, mergeRanges(ports), r.protos)
		}
		if r.selfPorts != nil && untagged(n) {
			f.Rules = c.appendRule(f.Rules, i, c.selfSets[n.User][r.selfIdx], r.selfPorts, r.protos)
		}
	}
	c.filters[i] = f
	return f
}

// For returns the inbound packet filter of the node with key self, with
// every set expanded to addresses, and the peers it may see.
//
// filter admits a packet when some rule's SrcIPs holds its source
// address, one of its DstPorts holds the destination address and port
// (ports are ignored for protocols other than TCP, UDP and SCTP), and its
// protocol is in Protos (empty: TCP, UDP, ICMP and ICMPv6). SrcIPs are the
// /32 and /128 addresses of the permitted source nodes, DstPorts carry
// self's own addresses.
//
// visible holds, in slot order (the order nodes were given to Compile,
// when none changed since), every other node that self may reach or that
// may reach self, on any port; a node's netmap should list only those
// peers.
//
// Both are nil if self is not among the compiled nodes.
func (c *Compiled) For(self key.NodePublic) (filter []wire.FilterRule, visible []key.NodePublic) {
	f := c.Filter(self)
	if f == nil {
		return nil, nil
	}
	for k := range c.Visible(self) {
		visible = append(visible, k)
	}
	return f.Expand(nil), visible
}

// appendRule appends a rule admitting src to node i's addresses on ports.
func (c *Compiled) appendRule(rules []SetRule, i int, src *Set, ports []portRange, protos []int) []SetRule {
	if len(c.addrs[i]) == 0 {
		return rules
	}
	dst := make([]wire.NetPortRange, 0, len(c.addrs[i])*len(ports))
	for _, a := range c.addrs[i] {
		for _, pr := range ports {
			dst = append(dst, wire.NetPortRange{IP: a, First: pr.first, Last: pr.last})
		}
	}
	return append(rules, SetRule{Src: src, DstPorts: dst, Protos: protos})
}

// bitset is a set of slots. Bitsets grow as needed; a missing word is
// zero.
type bitset []uint64

func (b *bitset) set(i int) {
	for i/64 >= len(*b) {
		*b = append(*b, 0)
	}
	(*b)[i/64] |= 1 << (i % 64)
}

func (b bitset) clear(i int) {
	if i/64 < len(b) {
		b[i/64] &^= 1 << (i % 64)
	}
}

func (b bitset) has(i int) bool { return i >= 0 && i/64 < len(b) && b[i/64]&(1<<(i%64)) != 0 }

// or adds o's members; b must be at least as long as the slot count.
func (b bitset) or(o bitset) {
	for k := range min(len(b), len(o)) {
		b[k] |= o[k]
	}
}

func (b bitset) count() int {
	n := 0
	for _, w := range b {
		n += bits.OnesCount64(w)
	}
	return n
}

// all yields the members in increasing order.
func (b bitset) all() func(yield func(int) bool) {
	return func(yield func(int) bool) {
		for k, w := range b {
			for w != 0 {
				t := bits.TrailingZeros64(w)
				if !yield(k*64 + t) {
					return
				}
				w &^= 1 << t
			}
		}
	}
}
