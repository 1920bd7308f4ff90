package key

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"

	"golang.org/x/crypto/nacl/box"
)

// Shared is the NaCl box key that a node key and a machine key share
// (X25519 of one's private half with the other's public half, then
// HSalsa20, as box.Precompute computes it). Both ends compute the same
// Shared. Sealing and opening with it skip the X25519 that SealTo and
// OpenFrom compute on every call; the boxes are the same, so a box from
// one form opens with the other. A Shared is as secret as the private
// keys it comes from. The zero value is not a valid key.
type Shared struct {
	_ incomparable
	k [32]byte
}

// Shared returns the box key that k shares with the node node.
func (k MachinePrivate) Shared(node NodePublic) Shared {
	return Shared{k: precompute(k.k, node.k)}
}

// Shared returns the box key that k shares with the machine machine.
func (k NodePrivate) Shared(machine MachinePublic) Shared {
	return Shared{k: precompute(k.k, machine.k)}
}

// IsZero reports whether s is the zero value.
func (s Shared) IsZero() bool { return isZero(s.k) }

// Seal seals cleartext for the other holder of s, with a fresh random
// nonce: the same box as SealTo.
func (s Shared) Seal(cleartext []byte) []byte { return sealShared(&s.k, cleartext) }

// SealAppend is Seal appending the box to dst, which must not overlap
// cleartext: a caller sealing many messages can reuse one buffer.
func (s Shared) SealAppend(dst, cleartext []byte) []byte { return sealAppend(&s.k, dst, cleartext) }

// Open opens a box sealed with s (or with SealTo by the other side). It
// reports false if the box was sealed with any other key or altered.
func (s Shared) Open(sealed []byte) ([]byte, bool) { return openShared(&s.k, sealed) }

// bindLabel separates the keys Bind derives from any other use of a
// Shared.
const bindLabel = "beam reply key v1\x00"

// Bind returns the key for the replies to one request: HMAC-SHA256,
// keyed with s, of a fixed label and nonce, the request's fresh random
// nonce. Both holders of s derive the same key; a box sealed with it
// opens with no other nonce's key nor with s itself, so a reply recorded
// for one request cannot pass for the reply to another.
func (s Shared) Bind(nonce []byte) Shared {
	m := hmac.New(sha256.New, s.k[:])
	m.Write([]byte(bindLabel))
	m.Write(nonce)
	var b Shared
	m.Sum(b.k[:0])
	return b
}

// SealSeqAppend is SealAppend for the seq'th message (from 0) of a
// sequence sealed with one key: the box's nonce is seq, 8 bytes
// big-endian, then 16 random bytes. OpenSeq opens it only as the seq'th
// message, so a message dropped, repeated or moved within the sequence
// is told apart.
func (s Shared) SealSeqAppend(dst []byte, seq uint64, cleartext []byte) []byte {
	var nonce [nonceLen]byte
	binary.BigEndian.PutUint64(nonce[:8], seq)
	if _, err := rand.Read(nonce[8:]); err != nil {
		panic("key: crypto/rand failed: " + err.Error())
	}
	dst = append(dst, nonce[:]...)
	return box.SealAfterPrecomputation(dst, cleartext, &nonce, &s.k)
}

// OpenSeq opens a box that SealSeqAppend sealed as the seq'th message
// with s. It reports false for any other position, key or alteration.
func (s Shared) OpenSeq(sealed []byte, seq uint64) ([]byte, bool) {
	if len(sealed) < nonceLen+box.Overhead || binary.BigEndian.Uint64(sealed[:8]) != seq {
		return nil, false
	}
	return openShared(&s.k, sealed)
}
