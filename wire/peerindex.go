package wire

import (
	"bytes"
	"cmp"
	"hash/maphash"
	"slices"

	"beam.dev/beam/types/key"
)

// peerIndex is a persistent map from node key to peer: a hash trie whose
// set and del copy only the path to the leaf they change, O(log n), and
// leave the trie they started from as it was. Each netmap has its own
// index and shares every unchanged subtree with the netmap Apply made it
// from, so two such indexes are compared in the time of their
// differences (diffTrie). A peerIndex value is never changed once a
// netmap holds it.
type peerIndex struct {
	root *trieNode
	// peers is the NetMap.Peers slice the index was made with. A netmap
	// whose Peers is another slice was changed by hand, and its index
	// is not used (valid).
	peers []*Node
}

const (
	trieBits     = 4
	trieFan      = 1 << trieBits
	trieLeafMax  = 8             // peers a leaf holds before it splits
	trieMaxDepth = 64 / trieBits // leaves this deep never split (same 64-bit hash)
)

// trieNode is a branch (kids, trieFan of them, indexed by the next
// trieBits of the key's hash) or a leaf (peers).
type trieNode struct {
	kids  []*trieNode
	peers []*Node
}

// trieSeed is the process's seed for key hashes: every index of the
// process hashes alike, so any two can be compared.
var trieSeed = maphash.MakeSeed()

func keyHash(k key.NodePublic) uint64 {
	raw := k.Raw32()
	return maphash.Bytes(trieSeed, raw[:])
}

// valid reports whether ix indexes peers (see peerIndex.peers).
func (ix *peerIndex) valid(peers []*Node) bool {
	return ix != nil && len(ix.peers) == len(peers) && (len(peers) == 0 || &ix.peers[0] == &peers[0])
}

func (ix *peerIndex) get(k key.NodePublic) *Node {
	h := keyHash(k)
	t := ix.root
	for depth := 0; t != nil; depth++ {
		if t.kids == nil {
			for _, p := range t.peers {
				if p.Key == k {
					return p
				}
			}
			return nil
		}
		t = t.kids[h>>(depth*trieBits)&(trieFan-1)]
	}
	return nil
}

// set adds p, or replaces the peer with its key.
func (ix *peerIndex) set(p *Node) {
	ix.root = ix.root.set(p, keyHash(p.Key), 0)
}

// del removes the peer with key k, if any.
func (ix *peerIndex) del(k key.NodePublic) {
	ix.root, _ = ix.root.del(k, keyHash(k), 0)
}

func (t *trieNode) set(p *Node, h uint64, depth int) *trieNode {
	if t == nil {
		return &trieNode{peers: []*Node{p}}
	}
	if t.kids == nil {
		for i, q := range t.peers {
			if q.Key == p.Key {
				c := &trieNode{peers: slices.Clone(t.peers)}
				c.peers[i] = p
				return c
			}
		}
		if len(t.peers) < trieLeafMax || depth >= trieMaxDepth {
			return &trieNode{peers: append(slices.Clip(t.peers), p)}
		}
		// Split the full leaf into a branch at this depth.
		b := &trieNode{kids: make([]*trieNode, trieFan)}
		for _, q := range append(slices.Clip(t.peers), p) {
			qh := keyHash(q.Key)
			i := qh >> (depth * trieBits) & (trieFan - 1)
			b.kids[i] = b.kids[i].set(q, qh, depth+1)
		}
		return b
	}
	i := h >> (depth * trieBits) & (trieFan - 1)
	c := &trieNode{kids: slices.Clone(t.kids)}
	c.kids[i] = t.kids[i].set(p, h, depth+1)
	return c
}

// del returns t without the peer with key k, and whether it had one.
func (t *trieNode) del(k key.NodePublic, h uint64, depth int) (*trieNode, bool) {
	if t == nil {
		return nil, false
	}
	if t.kids == nil {
		for i, q := range t.peers {
			if q.Key == k {
				if len(t.peers) == 1 {
					return nil, true
				}
				return &trieNode{peers: slices.Delete(slices.Clone(t.peers), i, i+1)}, true
			}
		}
		return t, false
	}
	i := h >> (depth * trieBits) & (trieFan - 1)
	kid, ok := t.kids[i].del(k, h, depth+1)
	if !ok {
		return t, false
	}
	c := &trieNode{kids: slices.Clone(t.kids)}
	c.kids[i] = kid
	if !slices.ContainsFunc(c.kids, func(n *trieNode) bool { return n != nil }) {
		return nil, true
	}
	return c, true
}

// all appends every peer under t to out.
func (t *trieNode) all(out []*Node) []*Node {
	if t == nil {
		return out
	}
	if t.kids == nil {
		return append(out, t.peers...)
	}
	for _, k := range t.kids {
		out = k.all(out)
	}
	return out
}

// diffTrie calls fn for each key whose peer differs between a and b
// (was from a, now from b; nil where absent). Subtrees the two share are
// skipped.
func diffTrie(a, b *trieNode, fn func(was, now *Node)) {
	if a == b {
		return
	}
	if a != nil && b != nil && a.kids != nil && b.kids != nil {
		for i := range trieFan {
			diffTrie(a.kids[i], b.kids[i], fn)
		}
		return
	}
	was, now := a.all(nil), b.all(nil)
	for _, p := range was {
		i := slices.IndexFunc(now, func(q *Node) bool { return q.Key == p.Key })
		switch {
		case i < 0:
			fn(p, nil)
		case now[i] != p:
			fn(p, now[i])
		}
	}
	for _, q := range now {
		if !slices.ContainsFunc(was, func(p *Node) bool { return p.Key == q.Key }) {
			fn(nil, q)
		}
	}
}

// newPeerIndex indexes peers, sharing their nodes. ok is false if peers
// is not sorted by comparePeers or holds a key twice: such a list (a
// netmap made by hand) is not one an index can keep in order.
func newPeerIndex(peers []*Node) (ix peerIndex, ok bool) {
	for _, p := range peers {
		ix.set(p)
	}
	ix.peers = peers
	return ix, slices.IsSortedFunc(peers, comparePeers) && len(ix.root.all(nil)) == len(peers)
}

// comparePeers orders peers as NetMap.Peers holds them: by name, then
// by ID, then by key.
func comparePeers(a, b *Node) int {
	if c := compareStrings(a.Name, b.Name); c != 0 {
		return c
	}
	if c := cmp.Compare(a.ID, b.ID); c != 0 {
		return c
	}
	ra, rb := a.Key.Raw32(), b.Key.Raw32()
	return bytes.Compare(ra[:], rb[:])
}

// sortedPeers returns the peers of ix in NetMap.Peers's order; nil if
// there are none.
func (ix *peerIndex) sortedPeers() []*Node {
	out := ix.root.all(nil)
	slices.SortFunc(out, comparePeers)
	return out
}

// splice returns base, sorted by comparePeers, with each peer of gone
// (which must be in base) taken out and each of come (which need not be
// sorted) put in its place in the order: a copy of base's pointers and
// O(log n) per change. ok is false if a peer of gone is not in base.
func splice(base []*Node, gone, come []*Node) (out []*Node, ok bool) {
	if len(gone) == 0 && len(come) == 0 {
		return base, true
	}
	rm := make([]int, 0, len(gone))
	for _, p := range gone {
		i, found := slices.BinarySearchFunc(base, p, comparePeers)
		if !found || base[i] != p {
			return nil, false
		}
		rm = append(rm, i)
	}
	slices.Sort(rm)
	slices.SortFunc(come, comparePeers)
	n := len(base) - len(rm) + len(come)
	if n == 0 {
		return nil, true
	}
	out = make([]*Node, 0, n)
	start, ri, ci := 0, 0, 0
	for ri < len(rm) || ci < len(come) {
		r := len(base)
		if ri < len(rm) {
			r = rm[ri]
		}
		if ci < len(come) {
			// Insert before the first peer of base that sorts after it.
			at, _ := slices.BinarySearchFunc(base, come[ci], comparePeers)
			if at <= r {
				out = append(out, base[start:at]...)
				out = append(out, come[ci])
				start = at
				ci++
				continue
			}
		}
		out = append(out, base[start:r]...)
		start = r + 1
		ri++
	}
	return append(out, base[start:]...), true
}
