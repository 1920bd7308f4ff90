// Package key holds Beam's typed Curve25519 keys: node keys (WireGuard
// identity), disco keys (path discovery) and machine keys (servers'
// long-term identities), with text and binary marshaling and NaCl box
// sealing between them.
//
// Every key kind is its own type so a disco key can never be passed where a
// node key is expected. Private keys embed an incomparable marker so they
// cannot be compared with == by accident (use Equal, which is constant time).
package key

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/crypto/curve25519"
)

// incomparable makes a struct that embeds it incomparable with ==.
type incomparable [0]func()

// ErrBadKey is returned when a key's text or binary form cannot be parsed.
var ErrBadKey = errors.New("key: malformed key")

// rawPrivate returns a fresh clamped Curve25519 private key.
func rawPrivate() [32]byte {
	var k [32]byte
	if _, err := rand.Read(k[:]); err != nil {
		panic("key: crypto/rand failed: " + err.Error()) // programmer/system error at generation
	}
	clamp(&k)
	return k
}

func clamp(k *[32]byte) {
	k[0] &= 248
	k[31] = (k[31] & 127) | 64
}

func publicOf(priv [32]byte) [32]byte {
	var pub [32]byte
	curve25519.ScalarBaseMult(&pub, &priv)
	return pub
}

// appendText appends prefix and the hex of k.
func appendText(b []byte, prefix string, k [32]byte) []byte {
	b = append(b, prefix...)
	return hex.AppendEncode(b, k[:])
}

// parseText parses prefix followed by 64 hex digits.
func parseText(s []byte, prefix string) ([32]byte, error) {
	var k [32]byte
	str := string(s)
	if !strings.HasPrefix(str, prefix) {
		return k, fmt.Errorf("%w: want prefix %q", ErrBadKey, prefix)
	}
	str = str[len(prefix):]
	if len(str) != 64 {
		return k, fmt.Errorf("%w: want 64 hex digits, got %d", ErrBadKey, len(str))
	}
	if _, err := hex.Decode(k[:], []byte(str)); err != nil {
		return k, fmt.Errorf("%w: %v", ErrBadKey, err)
	}
	return k, nil
}

func parseBinary(b []byte) ([32]byte, error) {
	var k [32]byte
	if len(b) != 32 {
		return k, fmt.Errorf("%w: want 32 bytes, got %d", ErrBadKey, len(b))
	}
	copy(k[:], b)
	return k, nil
}

func isZero(k [32]byte) bool {
	var z [32]byte
	return subtle.ConstantTimeCompare(k[:], z[:]) == 1
}

// short returns the first 5 bytes of the key in hex inside brackets, for logs.
func short(k [32]byte) string {
	return "[" + hex.EncodeToString(k[:5]) + "]"
}
