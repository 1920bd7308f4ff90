package policy

import (
	"math/bits"
	"net/netip"

	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// Compiled is a policy applied to one network's nodes: it yields each
// node's inbound packet filter and the peers it may see. Build one with
// Policy.Compile whenever the policy or the node set changes. It is
// immutable and safe for concurrent use.
type Compiled struct {
	nodes []*wire.Node
	index map[key.NodePublic]int
	// addrs holds each node's overlay addresses as host prefixes.
	addrs [][]netip.Prefix
	// byUser holds the untagged nodes of each user.
	byUser map[string]bitset
	rules  []compiledRule
}

// compiledRule is one acls rule resolved against the node set.
type compiledRule struct {
	protos []int // nil: TCP, UDP, ICMP
	src    bitset
	srcIPs []netip.Prefix // addresses of src, shared by every node's filter
	dst    []compiledDst
	// selfPorts is the union of the rule's autogroup:self ports, nil if it
	// has none; selfSrcIPs holds per user the addresses of that user's
	// nodes in src.
	selfPorts  []portRange
	selfSrcIPs map[string][]netip.Prefix
}

// compiledDst is one non-self dst entry resolved against the node set.
type compiledDst struct {
	nodes bitset
	ports []portRange
}

// Compile resolves p against nodes, the members of one network. Nodes
// with a zero or duplicate key are ignored; only node addresses inside the
// overlay are used.
func (p *Policy) Compile(nodes []*wire.Node) *Compiled {
	c := &Compiled{
		index:  make(map[key.NodePublic]int, len(nodes)),
		byUser: map[string]bitset{},
	}
	for _, n := range nodes {
		if n == nil || n.Key.IsZero() {
			continue
		}
		if _, dup := c.index[n.Key]; dup {
			continue
		}
		c.index[n.Key] = len(c.nodes)
		c.nodes = append(c.nodes, n)
	}
	size := len(c.nodes)
	c.addrs = make([][]netip.Prefix, size)
	for i, n := range c.nodes {
		for _, a := range n.Addresses {
			hp := netip.PrefixFrom(a.Addr(), a.Addr().BitLen())
			if a.IsValid() && inOverlay(hp) {
				c.addrs[i] = append(c.addrs[i], hp)
			}
		}
		if untagged(n) {
			bs, ok := c.byUser[n.User]
			if !ok {
				bs = newBitset(size)
				c.byUser[n.User] = bs
			}
			bs.set(i)
		}
	}

	cache := map[selector]bitset{}
	set := func(s selector) bitset {
		if bs, ok := cache[s]; ok {
			return bs
		}
		bs := newBitset(size)
		for i, n := range c.nodes {
			if p.matches(s, n) {
				bs.set(i)
			}
		}
		cache[s] = bs
		return bs
	}
	union := func(sels []selector) bitset {
		if len(sels) == 1 {
			return set(sels[0])
		}
		bs := newBitset(size)
		for _, s := range sels {
			bs.or(set(s))
		}
		return bs
	}

	for i := range p.acls {
		r := &p.acls[i]
		cr := compiledRule{protos: r.protos, src: union(r.src)}
		if cr.src.empty() {
			continue
		}
		cr.srcIPs = c.prefixes(cr.src)
		for _, d := range r.dst {
			if d.sel.kind == selSelf {
				cr.selfPorts = append(cr.selfPorts, d.ports...)
				continue
			}
			cr.dst = append(cr.dst, compiledDst{nodes: set(d.sel), ports: d.ports})
		}
		if cr.selfPorts != nil {
			cr.selfPorts = mergeRanges(cr.selfPorts)
			cr.selfSrcIPs = map[string][]netip.Prefix{}
			for u, bs := range c.byUser {
				if ips := c.prefixes(bs.and(cr.src)); len(ips) > 0 {
					cr.selfSrcIPs[u] = ips
				}
			}
		}
		c.rules = append(c.rules, cr)
	}
	return c
}

// prefixes returns the overlay addresses of the nodes in bs.
func (c *Compiled) prefixes(bs bitset) []netip.Prefix {
	var out []netip.Prefix
	for i := range bs.all() {
		out = append(out, c.addrs[i]...)
	}
	return out
}

// For returns the inbound packet filter of the node with key self and the
// peers it may see.
//
// filter admits a packet when some rule's SrcIPs holds its source
// address, one of its DstPorts holds the destination address and port
// (ports are ignored for protocols other than TCP, UDP and SCTP), and its
// protocol is in Protos (empty: TCP, UDP, ICMP and ICMPv6). SrcIPs are the
// /32 and /128 addresses of the permitted source nodes, DstPorts carry
// self's own addresses.
//
// visible holds, in the order nodes were given to Compile, every other
// node that self may reach or that may reach self, on any port; a node's
// netmap should list only those peers.
//
// Both are nil if self is not among the compiled nodes. The returned
// slices share memory with c and with other nodes' results; callers must
// not modify them.
func (c *Compiled) For(self key.NodePublic) (filter []wire.FilterRule, visible []key.NodePublic) {
	i, ok := c.index[self]
	if !ok {
		return nil, nil
	}
	n := c.nodes[i]
	user := ""
	if untagged(n) {
		user = n.User
	}
	vis := newBitset(len(c.nodes))
	var ports []portRange
	for ri := range c.rules {
		r := &c.rules[ri]
		isSrc := r.src.has(i)
		ports = ports[:0]
		for _, d := range r.dst {
			if isSrc {
				vis.or(d.nodes)
			}
			if d.nodes.has(i) {
				ports = append(ports, d.ports...)
			}
		}
		if len(ports) > 0 {
			vis.or(r.src)
			filter = c.appendRule(filter, i, r.srcIPs, mergeRanges(ports), r.protos)
		}
		if r.selfPorts == nil || user == "" {
			continue
		}
		mine := c.byUser[user]
		if isSrc {
			vis.or(mine)
		}
		if ips := r.selfSrcIPs[user]; len(ips) > 0 {
			vis.orAnd(r.src, mine)
			filter = c.appendRule(filter, i, ips, r.selfPorts, r.protos)
		}
	}
	vis.clear(i)
	for j := range vis.all() {
		visible = append(visible, c.nodes[j].Key)
	}
	return filter, visible
}

// appendRule appends a rule admitting srcIPs to node i's addresses on ports.
func (c *Compiled) appendRule(filter []wire.FilterRule, i int, srcIPs []netip.Prefix, ports []portRange, protos []int) []wire.FilterRule {
	if len(c.addrs[i]) == 0 {
		return filter
	}
	dst := make([]wire.NetPortRange, 0, len(c.addrs[i])*len(ports))
	for _, a := range c.addrs[i] {
		for _, pr := range ports {
			dst = append(dst, wire.NetPortRange{IP: a, First: pr.first, Last: pr.last})
		}
	}
	return append(filter, wire.FilterRule{SrcIPs: srcIPs, DstPorts: dst, Protos: protos})
}

// bitset is a set of node indexes.
type bitset []uint64

func newBitset(n int) bitset { return make(bitset, (n+63)/64) }

func (b bitset) set(i int)      { b[i/64] |= 1 << (i % 64) }
func (b bitset) clear(i int)    { b[i/64] &^= 1 << (i % 64) }
func (b bitset) has(i int) bool { return b[i/64]&(1<<(i%64)) != 0 }

func (b bitset) or(o bitset) {
	for k := range b {
		b[k] |= o[k]
	}
}

// orAnd adds the members of both x and y.
func (b bitset) orAnd(x, y bitset) {
	for k := range b {
		b[k] |= x[k] & y[k]
	}
}

func (b bitset) and(o bitset) bitset {
	out := make(bitset, len(b))
	for k := range b {
		out[k] = b[k] & o[k]
	}
	return out
}

func (b bitset) empty() bool {
	for _, w := range b {
		if w != 0 {
			return false
		}
	}
	return true
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
