package key

import (
	"crypto/rand"

	"golang.org/x/crypto/nacl/secretbox"
)

// BlockKey is a random key that seals one block of content once for
// every node entitled to it, instead of once per node (the peers of a
// full map that many nodes share, wire.BlockedMapFrame). Each holder gets
// the key, and the SHA-256 of the sealed block, in a box sealed to it
// alone, and checks the hash before it opens the block: a holder of the
// key can seal other content under it, which only the hash tells apart.
// A BlockKey seals one cleartext only, so its nonce is fixed.
type BlockKey struct {
	k [32]byte
}

// BlockOverhead is how many bytes SealBlock adds to a block.
const BlockOverhead = secretbox.Overhead

// NewBlockKey returns a fresh random BlockKey.
func NewBlockKey() BlockKey {
	var k BlockKey
	if _, err := rand.Read(k.k[:]); err != nil {
		panic("key: crypto/rand failed: " + err.Error())
	}
	return k
}

// BlockKeyFromRaw32 returns the BlockKey of raw.
func BlockKeyFromRaw32(raw [32]byte) BlockKey { return BlockKey{k: raw} }

// Raw32 returns k's raw bytes.
func (k BlockKey) Raw32() [32]byte { return k.k }

// IsZero reports whether k is the zero value (never a key NewBlockKey
// returns).
func (k BlockKey) IsZero() bool { return isZero(k.k) }

// blockNonce is the nonce of every block: a BlockKey seals one block.
var blockNonce [24]byte

// SealBlockAppend appends the secretbox of cleartext under k to dst,
// which must not overlap cleartext. Call it once per key.
func (k BlockKey) SealBlockAppend(dst, cleartext []byte) []byte {
	return secretbox.Seal(dst, cleartext, &blockNonce, &k.k)
}

// OpenBlockAppend opens a block SealBlockAppend sealed with k, appending
// its cleartext to dst. It reports false if the block was sealed with
// another key or altered; it does not tell the block from another that a
// holder of k sealed (check its hash first).
func (k BlockKey) OpenBlockAppend(dst, sealed []byte) ([]byte, bool) {
	return secretbox.Open(dst, sealed, &blockNonce, &k.k)
}
