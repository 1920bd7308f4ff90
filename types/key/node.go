package key

import (
	"crypto/subtle"
	"encoding/base64"
)

const (
	nodePrivateHexPrefix = "privkey:"
	nodePublicHexPrefix  = "nodekey:"
)

// NodePrivate is a node's WireGuard private key. The zero value is not a
// valid key (IsZero reports true).
type NodePrivate struct {
	_ incomparable
	k [32]byte
}

// NewNode returns a new random node private key.
func NewNode() NodePrivate { return NodePrivate{k: rawPrivate()} }

// NodePrivateFromRaw32 returns the node private key with the given raw bytes.
// The bytes are clamped.
func NodePrivateFromRaw32(raw [32]byte) NodePrivate {
	clamp(&raw)
	return NodePrivate{k: raw}
}

// IsZero reports whether k is the zero value.
func (k NodePrivate) IsZero() bool { return isZero(k.k) }

// Equal reports whether k and other are the same key, in constant time.
func (k NodePrivate) Equal(other NodePrivate) bool {
	return subtle.ConstantTimeCompare(k.k[:], other.k[:]) == 1
}

// Public returns the public half of k.
func (k NodePrivate) Public() NodePublic { return NodePublic{k: publicOf(k.k)} }

// Raw32 returns the raw key bytes, for handing to WireGuard.
func (k NodePrivate) Raw32() [32]byte { return k.k }

// MarshalText implements encoding.TextMarshaler ("privkey:<64 hex>").
func (k NodePrivate) MarshalText() ([]byte, error) {
	return appendText(nil, nodePrivateHexPrefix, k.k), nil
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (k *NodePrivate) UnmarshalText(b []byte) error {
	raw, err := parseText(b, nodePrivateHexPrefix)
	if err != nil {
		return err
	}
	k.k = raw
	return nil
}

// SealTo seals cleartext so that only the holder of to's private key can
// open it, and so that it proves it came from k (NaCl box).
func (k NodePrivate) SealTo(to MachinePublic, cleartext []byte) []byte {
	return seal(k.k, to.k, cleartext)
}

// OpenFrom opens a box sealed by from's private key to k.
func (k NodePrivate) OpenFrom(from MachinePublic, sealed []byte) ([]byte, bool) {
	return open(k.k, from.k, sealed)
}

// NodePublic is a node's WireGuard public key: its identity everywhere in
// Beam. The zero value is not a valid key.
type NodePublic struct {
	k [32]byte
}

// NodePublicFromRaw32 returns the public key with the given raw bytes.
func NodePublicFromRaw32(raw [32]byte) NodePublic { return NodePublic{k: raw} }

// ParseNodePublic parses the text form "nodekey:<64 hex>".
func ParseNodePublic(s string) (NodePublic, error) {
	var k NodePublic
	err := k.UnmarshalText([]byte(s))
	return k, err
}

// IsZero reports whether k is the zero value.
func (k NodePublic) IsZero() bool { return k == NodePublic{} }

// Raw32 returns the raw key bytes.
func (k NodePublic) Raw32() [32]byte { return k.k }

// String returns the text form of k.
func (k NodePublic) String() string {
	b, _ := k.MarshalText()
	return string(b)
}

// ShortString returns an abbreviated form of k for logs, like "[0a1b2c3d4e]".
func (k NodePublic) ShortString() string { return short(k.k) }

// WireGuardBase64 returns k in the base64 form wg(8) and wgctrl print.
func (k NodePublic) WireGuardBase64() string { return base64.StdEncoding.EncodeToString(k.k[:]) }

// MarshalText implements encoding.TextMarshaler ("nodekey:<64 hex>").
func (k NodePublic) MarshalText() ([]byte, error) {
	return appendText(nil, nodePublicHexPrefix, k.k), nil
}

// AppendText implements encoding.TextAppender: MarshalText appended to b.
func (k NodePublic) AppendText(b []byte) ([]byte, error) {
	return appendText(b, nodePublicHexPrefix, k.k), nil
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (k *NodePublic) UnmarshalText(b []byte) error {
	raw, err := parseText(b, nodePublicHexPrefix)
	if err != nil {
		return err
	}
	k.k = raw
	return nil
}

// MarshalBinary implements encoding.BinaryMarshaler (32 raw bytes).
func (k NodePublic) MarshalBinary() ([]byte, error) { return append([]byte(nil), k.k[:]...), nil }

// UnmarshalBinary implements encoding.BinaryUnmarshaler.
func (k *NodePublic) UnmarshalBinary(b []byte) error {
	raw, err := parseBinary(b)
	if err != nil {
		return err
	}
	k.k = raw
	return nil
}
