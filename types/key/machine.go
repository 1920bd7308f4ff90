package key

import "crypto/subtle"

const (
	machinePrivateHexPrefix = "mprivkey:"
	machinePublicHexPrefix  = "mkey:"
)

// MachinePrivate is a server's long-term private key: the coordinator's and
// each relay's identity. Nodes seal control messages to its public half.
type MachinePrivate struct {
	_ incomparable
	k [32]byte
}

// NewMachine returns a new random machine private key.
func NewMachine() MachinePrivate { return MachinePrivate{k: rawPrivate()} }

// IsZero reports whether k is the zero value.
func (k MachinePrivate) IsZero() bool { return isZero(k.k) }

// Equal reports whether k and other are the same key, in constant time.
func (k MachinePrivate) Equal(other MachinePrivate) bool {
	return subtle.ConstantTimeCompare(k.k[:], other.k[:]) == 1
}

// Public returns the public half of k.
func (k MachinePrivate) Public() MachinePublic { return MachinePublic{k: publicOf(k.k)} }

// MarshalText implements encoding.TextMarshaler ("mprivkey:<64 hex>").
func (k MachinePrivate) MarshalText() ([]byte, error) {
	return appendText(nil, machinePrivateHexPrefix, k.k), nil
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (k *MachinePrivate) UnmarshalText(b []byte) error {
	raw, err := parseText(b, machinePrivateHexPrefix)
	if err != nil {
		return err
	}
	k.k = raw
	return nil
}

// SealTo seals cleartext for the node to, authenticated as k.
func (k MachinePrivate) SealTo(to NodePublic, cleartext []byte) []byte {
	return seal(k.k, to.k, cleartext)
}

// OpenFrom opens a box that the node from sealed to k. A successful open
// proves the sender holds from's private key.
func (k MachinePrivate) OpenFrom(from NodePublic, sealed []byte) ([]byte, bool) {
	return open(k.k, from.k, sealed)
}

// MachinePublic is the public half of a MachinePrivate.
type MachinePublic struct {
	k [32]byte
}

// ParseMachinePublic parses the text form "mkey:<64 hex>".
func ParseMachinePublic(s string) (MachinePublic, error) {
	var k MachinePublic
	err := k.UnmarshalText([]byte(s))
	return k, err
}

// MachinePublicFromRaw32 returns the machine public key with the given bytes.
func MachinePublicFromRaw32(raw [32]byte) MachinePublic { return MachinePublic{k: raw} }

// IsZero reports whether k is the zero value.
func (k MachinePublic) IsZero() bool { return k == MachinePublic{} }

// Raw32 returns the raw key bytes.
func (k MachinePublic) Raw32() [32]byte { return k.k }

// String returns the text form of k.
func (k MachinePublic) String() string {
	b, _ := k.MarshalText()
	return string(b)
}

// ShortString returns an abbreviated form of k for logs.
func (k MachinePublic) ShortString() string { return short(k.k) }

// MarshalText implements encoding.TextMarshaler ("mkey:<64 hex>").
func (k MachinePublic) MarshalText() ([]byte, error) {
	return appendText(nil, machinePublicHexPrefix, k.k), nil
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (k *MachinePublic) UnmarshalText(b []byte) error {
	raw, err := parseText(b, machinePublicHexPrefix)
	if err != nil {
		return err
	}
	k.k = raw
	return nil
}
