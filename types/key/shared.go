package key

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
