package wire

import (
	"encoding/binary"

	"beam.dev/beam/types/key"
)

// PeersDigest sums up a set of peers, each as its key and Rev, so that a
// node and the coordinator can tell whether they hold the same peers
// without sending them. It is independent of order, and a peer is added
// or removed in constant time (Add, Remove), so a node keeps it up to
// date with each message rather than recomputing it. The zero value is
// the digest of no peers.
type PeersDigest struct {
	// Count is the number of peers.
	Count int `json:"count"`
	// Sum is the sum, modulo 2^64, of PeerHash of each peer.
	Sum uint64 `json:"sum"`
}

// Add adds a peer of key k and revision rev.
func (d *PeersDigest) Add(k key.NodePublic, rev uint64) {
	d.Count++
	d.Sum += PeerHash(k, rev)
}

// Remove removes a peer that Add added with the same k and rev.
func (d *PeersDigest) Remove(k key.NodePublic, rev uint64) {
	d.Count--
	d.Sum -= PeerHash(k, rev)
}

// PeerHash is what one peer of key k and revision rev adds to a digest:
// rev and the key's first 8 bytes, mixed (SplitMix64's finalizer) so that
// sums of different sets are unlikely to meet.
func PeerHash(k key.NodePublic, rev uint64) uint64 {
	raw := k.Raw32()
	x := rev ^ binary.LittleEndian.Uint64(raw[:8]) ^ 0x9e3779b97f4a7c15
	x = (x ^ x>>30) * 0xbf58476d1ce4e5b9
	x = (x ^ x>>27) * 0x94d049bb133111eb
	return x ^ x>>31
}
