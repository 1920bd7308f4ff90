package key

import (
	"crypto/rand"

	"golang.org/x/crypto/nacl/box"
)

// Sealed boxes are laid out as:
//
//	24B nonce | secretbox(cleartext) (16B Poly1305 tag + len(cleartext))
const nonceLen = 24

// SealOverhead is how many bytes sealing adds to a message.
const SealOverhead = nonceLen + box.Overhead

func seal(priv, peer [32]byte, cleartext []byte) []byte {
	shared := precompute(priv, peer)
	return sealShared(&shared, cleartext)
}

func open(priv, peer [32]byte, sealed []byte) ([]byte, bool) {
	shared := precompute(priv, peer)
	return openShared(&shared, sealed)
}

func precompute(priv, peer [32]byte) [32]byte {
	var shared [32]byte
	box.Precompute(&shared, &peer, &priv)
	return shared
}

func sealShared(shared *[32]byte, cleartext []byte) []byte {
	return sealAppend(shared, make([]byte, 0, nonceLen+box.Overhead+len(cleartext)), cleartext)
}

// sealAppend appends the box of cleartext, nonce first, to dst.
func sealAppend(shared *[32]byte, dst, cleartext []byte) []byte {
	var nonce [nonceLen]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		panic("key: crypto/rand failed: " + err.Error())
	}
	dst = append(dst, nonce[:]...)
	return box.SealAfterPrecomputation(dst, cleartext, &nonce, shared)
}

func openShared(shared *[32]byte, sealed []byte) ([]byte, bool) {
	if len(sealed) < nonceLen+box.Overhead {
		return nil, false
	}
	var nonce [nonceLen]byte
	copy(nonce[:], sealed)
	return box.OpenAfterPrecomputation(nil, sealed[nonceLen:], &nonce, shared)
}
