package key

import (
	"crypto/hmac"
	"crypto/sha256"
)

// proofLabel separates the values Proof derives from any other use of a
// Shared (Bind's reply keys, boxes). It and bindLabel are prefix-free.
const proofLabel = "beam key proof v1\x00"

// ProofLen is the length of a Proof.
const ProofLen = sha256.Size

// Proof returns HMAC-SHA256, keyed with s, of a fixed label and
// challenge. A machine key's holder answers a challenge with it to show
// that it holds the key: only the holders of s can compute it, and the
// label keeps it from being any box, or any key Bind derives, so that
// answering chosen challenges gives nothing else away.
func (s Shared) Proof(challenge []byte) [ProofLen]byte {
	m := hmac.New(sha256.New, s.k[:])
	m.Write([]byte(proofLabel))
	m.Write(challenge)
	var p [ProofLen]byte
	m.Sum(p[:0])
	return p
}
