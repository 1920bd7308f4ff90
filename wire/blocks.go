package wire

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
)

// Blocked map frames (since version 21). The peers of a full map are
// the same records for every node that sees the same peers: at 10,000
// nodes sealing them once per node was a third of the coordinator's CPU.
// A node of version 21 or later whose stream is bound to its request
// (MapRequest.Nonce) may get a frame of its full map as a blocked map
// frame: its sealed payload names blocks of peer records, each sealed
// once under a random key of its own (key.BlockKey) for every node that
// sees them, and the blocks follow it on the stream, unsealed by the node
// key, each as a frame of its own (4B big-endian length, then the sealed
// block). Only frames of a full map are blocked, and a block holds only
// records every node it goes to sees.
//
// The sealed payload of a blocked map frame is:
//
//	1B  BlockedMapFrame (0x02)
//	uvarint K | K times (32B block key | 32B SHA-256 of the sealed block | uvarint its size)
//	uvarint A | a binary map frame payload (BinaryMapFrame) P
//
// and the frame's message is the binary map frame P[:A] | the K blocks'
// records, opened, in order | P[A:]: A is where the blocks' records go
// among P's (its record count counts them). The node reads the K frames
// that follow, checks that each has the size and SHA-256 its reference
// says before opening it with its key, and decodes the message as any
// binary map frame. Its integrity thus comes from the node's own sealed
// frame, bound to its request and numbered: another node that holds a
// block's key can seal other content with it, but cannot make it hash
// the same; and the block's key keeps it from anyone on the path.
const BlockedMapFrame byte = 0x02

// BlockedFramesVersion is the first CapabilityVersion whose nodes take
// blocked map frames.
const BlockedFramesVersion = 21

// MaxBlocksPerFrame is the most blocks one blocked map frame names; the
// blocks' sealed sizes together are at most MaxFrameSize.
const MaxBlocksPerFrame = 64

// BlockRef names one block of a blocked map frame.
type BlockRef struct {
	Key  [32]byte // the block's key.BlockKey
	Hash [32]byte // SHA-256 of the sealed block
	Size int      // the sealed block's length
}

// BlockHash returns the hash a BlockRef gives of the sealed block b.
func BlockHash(b []byte) [32]byte { return sha256.Sum256(b) }

// AppendBlockedMapFrame appends the payload of a blocked map frame to b:
// the blocks refs, whose records go at offset at of the binary map frame
// payload inner.
func AppendBlockedMapFrame(b []byte, refs []BlockRef, at int, inner []byte) []byte {
	b = append(b, BlockedMapFrame)
	b = binary.AppendUvarint(b, uint64(len(refs)))
	for _, r := range refs {
		b = append(b, r.Key[:]...)
		b = append(b, r.Hash[:]...)
		b = binary.AppendUvarint(b, uint64(r.Size))
	}
	b = binary.AppendUvarint(b, uint64(at))
	return append(b, inner...)
}

// ParseBlockedMapFrame parses the opened payload of a blocked map frame
// (AppendBlockedMapFrame). It refuses more than MaxBlocksPerFrame blocks,
// blocks of more than MaxFrameSize together, and an inner payload that
// is not a binary map frame or too short for at.
func ParseBlockedMapFrame(p []byte) (refs []BlockRef, at int, inner []byte, err error) {
	bad := func(what string) ([]BlockRef, int, []byte, error) {
		return nil, 0, nil, fmt.Errorf("%w: blocked map frame: %s", ErrBadPeerRecord, what)
	}
	if len(p) == 0 || p[0] != BlockedMapFrame {
		return bad("type byte")
	}
	p = p[1:]
	k, n := binary.Uvarint(p)
	if n <= 0 || k == 0 || k > MaxBlocksPerFrame {
		return bad("block count")
	}
	p = p[n:]
	refs = make([]BlockRef, k)
	total := 0
	for i := range refs {
		if len(p) < 64 {
			return bad("block reference")
		}
		r := &refs[i]
		copy(r.Key[:], p[:32])
		copy(r.Hash[:], p[32:64])
		p = p[64:]
		size, n := binary.Uvarint(p)
		if n <= 0 || size == 0 || size > MaxFrameSize {
			return bad("block size")
		}
		p = p[n:]
		r.Size = int(size)
		if total += r.Size; total > MaxFrameSize {
			return bad("blocks larger than a frame together")
		}
	}
	a, n := binary.Uvarint(p)
	if n <= 0 {
		return bad("record offset")
	}
	inner = p[n:]
	if a < 1 || a > uint64(len(inner)) || inner[0] != BinaryMapFrame {
		return bad("inner frame")
	}
	return refs, int(a), inner, nil
}
