package wire

import (
	"crypto/sha256"
	"encoding/binary"

	"beam.dev/beam/types/key"
)

// PeersDigest sums up a set of peers, each as its key and Rev, so that a
// node and the coordinator can tell whether they hold the same peers
// without sending them. It is independent of order, and a peer is added
// or removed in constant time (Add, Remove), so a node keeps it up to
// date with each message rather than recomputing it. The zero value is
// the digest of no peers.
//
// Each peer adds a SHA-256 of its whole key and revision, in four 64-bit
// lanes: nodes choose what their revisions cover (their host names), so
// a sum a node could steer onto another set's with a few billion tries
// would let a removed peer stay with a resuming node.
type PeersDigest struct {
	// Count is the number of peers.
	Count int `json:"count"`
	// Sum is the lane-wise sum, modulo 2^64, of PeerHash of each peer.
	Sum DigestSum `json:"sum"`
}

// DigestSum is a 256-bit value of a digest, as four 64-bit lanes.
type DigestSum [4]uint64

// Add adds h to s, lane by lane.
func (s *DigestSum) Add(h DigestSum) {
	for i := range s {
		s[i] += h[i]
	}
}

// Sub takes h from s, lane by lane.
func (s *DigestSum) Sub(h DigestSum) {
	for i := range s {
		s[i] -= h[i]
	}
}

// Add adds a peer of key k and revision rev.
func (d *PeersDigest) Add(k key.NodePublic, rev uint64) {
	d.Count++
	d.Sum.Add(PeerHash(k, rev))
}

// Remove removes a peer that Add added with the same k and rev.
func (d *PeersDigest) Remove(k key.NodePublic, rev uint64) {
	d.Count--
	d.Sum.Sub(PeerHash(k, rev))
}

// PeerHash is what one peer of key k and revision rev adds to a digest:
// the SHA-256 of the key and rev.
func PeerHash(k key.NodePublic, rev uint64) DigestSum {
	var b [40]byte
	raw := k.Raw32()
	copy(b[:], raw[:])
	binary.LittleEndian.PutUint64(b[32:], rev)
	sum := sha256.Sum256(b[:])
	var h DigestSum
	for i := range h {
		h[i] = binary.LittleEndian.Uint64(sum[8*i:])
	}
	return h
}
