package bind

import (
	"crypto/hmac"
	"crypto/subtle"
	"hash"

	"golang.org/x/crypto/blake2s"
	"golang.org/x/crypto/chacha20poly1305"
	"golang.org/x/crypto/curve25519"
)

// Noise IKpsk2 constants as WireGuard uses them.
const (
	noiseConstruction = "Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
	wgIdentifier      = "WireGuard v1 zx2c4 Jason@zx2c4.com"
	wgLabelMAC1       = "mac1----"
)

// initiationOpener recovers the initiator's static public key from a
// handshake initiation sent to us. The bind uses it only to learn which
// peer a packet from an unknown address claims to be, so it can hand
// wireguard-go an endpoint for that peer; wireguard-go still authenticates
// the whole message (timestamp, MACs, cookies, rate limits) itself, and
// the bind trusts the new address only after wireguard-go accepted it.
type initiationOpener struct {
	priv      [32]byte
	mac1Key   [32]byte // HASH(LABEL_MAC1 || our public key)
	hash0     [32]byte // HASH(HASH(CONSTRUCTION || IDENTIFIER) || our public key)
	chainKey0 [32]byte // HASH(CONSTRUCTION)
}

func newInitiationOpener(priv, pub [32]byte) *initiationOpener {
	o := &initiationOpener{priv: priv}
	o.chainKey0 = blake2s.Sum256([]byte(noiseConstruction))
	h := blake2s.Sum256(append(o.chainKey0[:], wgIdentifier...))
	o.hash0 = blake2s.Sum256(append(h[:], pub[:]...))
	o.mac1Key = blake2s.Sum256(append([]byte(wgLabelMAC1), pub[:]...))
	return o
}

func hmacBlake2s(key []byte, in ...[]byte) [32]byte {
	m := hmac.New(func() hash.Hash { h, _ := blake2s.New256(nil); return h }, key)
	for _, b := range in {
		m.Write(b)
	}
	var out [32]byte
	m.Sum(out[:0])
	return out
}

// open returns the initiator's static public key if msg is an initiation
// with a valid mac1 for us whose static field decrypts. It costs one
// X25519 operation, like wireguard-go's own processing of the message.
func (o *initiationOpener) open(msg []byte) (static [32]byte, ok bool) {
	if !isInitiation(msg) {
		return static, false
	}
	// mac1 covers everything before it.
	const mac1Off = initiationSize - 32
	mac, _ := blake2s.New128(o.mac1Key[:])
	mac.Write(msg[:mac1Off])
	var sum [16]byte
	mac.Sum(sum[:0])
	if subtle.ConstantTimeCompare(sum[:], msg[mac1Off:mac1Off+16]) != 1 {
		return static, false
	}
	ephemeral := msg[8:40]
	sealed := msg[40 : 40+48]
	// C = KDF1(C, e); H = HASH(H || e)
	t0 := hmacBlake2s(o.chainKey0[:], ephemeral)
	chainKey := hmacBlake2s(t0[:], []byte{1})
	h := blake2s.Sum256(append(o.hash0[:], ephemeral...))
	// (C, k) = KDF2(C, DH(s_priv, e))
	ss, err := curve25519.X25519(o.priv[:], ephemeral)
	if err != nil {
		return static, false
	}
	prk := hmacBlake2s(chainKey[:], ss)
	t1 := hmacBlake2s(prk[:], []byte{1})
	k := hmacBlake2s(prk[:], t1[:], []byte{2})
	aead, err := chacha20poly1305.New(k[:])
	if err != nil {
		return static, false
	}
	var nonce [chacha20poly1305.NonceSize]byte
	out, err := aead.Open(static[:0], nonce[:], sealed, h[:])
	if err != nil || len(out) != 32 {
		return [32]byte{}, false
	}
	return static, true
}
