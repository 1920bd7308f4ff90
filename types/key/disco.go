package key

import "crypto/subtle"

const (
	discoPrivateHexPrefix = "discopriv:"
	discoPublicHexPrefix  = "discokey:"
)

// DiscoPrivate is a per-process key used to seal disco messages (ping,
// pong, call-me-maybe). It is never stored.
type DiscoPrivate struct {
	_ incomparable
	k [32]byte
}

// NewDisco returns a new random disco private key.
func NewDisco() DiscoPrivate { return DiscoPrivate{k: rawPrivate()} }

// IsZero reports whether k is the zero value.
func (k DiscoPrivate) IsZero() bool { return isZero(k.k) }

// Equal reports whether k and other are the same key, in constant time.
func (k DiscoPrivate) Equal(other DiscoPrivate) bool {
	return subtle.ConstantTimeCompare(k.k[:], other.k[:]) == 1
}

// Public returns the public half of k.
func (k DiscoPrivate) Public() DiscoPublic { return DiscoPublic{k: publicOf(k.k)} }

// Shared returns the precomputed NaCl box key between k and peer. Both
// sides derive the same value.
func (k DiscoPrivate) Shared(peer DiscoPublic) DiscoShared {
	return DiscoShared{k: precompute(k.k, peer.k)}
}

// DiscoPublic is the public half of a DiscoPrivate.
type DiscoPublic struct {
	k [32]byte
}

// DiscoPublicFromRaw32 returns the disco public key with the given bytes.
func DiscoPublicFromRaw32(raw [32]byte) DiscoPublic { return DiscoPublic{k: raw} }

// IsZero reports whether k is the zero value.
func (k DiscoPublic) IsZero() bool { return k == DiscoPublic{} }

// Raw32 returns the raw key bytes.
func (k DiscoPublic) Raw32() [32]byte { return k.k }

// String returns the text form of k.
func (k DiscoPublic) String() string {
	b, _ := k.MarshalText()
	return string(b)
}

// ShortString returns an abbreviated form of k for logs.
func (k DiscoPublic) ShortString() string { return short(k.k) }

// MarshalText implements encoding.TextMarshaler ("discokey:<64 hex>").
func (k DiscoPublic) MarshalText() ([]byte, error) {
	return appendText(nil, discoPublicHexPrefix, k.k), nil
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (k *DiscoPublic) UnmarshalText(b []byte) error {
	raw, err := parseText(b, discoPublicHexPrefix)
	if err != nil {
		return err
	}
	k.k = raw
	return nil
}

// DiscoShared is a precomputed NaCl box key between two disco keys.
type DiscoShared struct {
	_ incomparable
	k [32]byte
}

// Seal seals cleartext with a random nonce; the output is nonce || box.
func (s DiscoShared) Seal(cleartext []byte) []byte { return sealShared(&s.k, cleartext) }

// Open opens a box made by Seal on the other side.
func (s DiscoShared) Open(sealed []byte) ([]byte, bool) { return openShared(&s.k, sealed) }
