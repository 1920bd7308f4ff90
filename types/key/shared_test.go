package key

import (
	"bytes"
	"fmt"
	"testing"
)

// TestSharedInterop checks that the shared key seals and opens the same
// boxes as the one-shot SealTo and OpenFrom, in both directions, and that
// both ends compute it alike.
func TestSharedInterop(t *testing.T) {
	node, machine := NewNode(), NewMachine()
	ns, ms := node.Shared(machine.Public()), machine.Shared(node.Public())
	if ns.IsZero() {
		t.Fatal("node's shared key is zero")
	}
	if ns.k != ms.k {
		t.Fatal("node and machine computed different shared keys")
	}
	msg := []byte(`{"peers_changed":[{"id":7}]}`)
	tests := []struct {
		name string
		seal func([]byte) []byte
		open func([]byte) ([]byte, bool)
	}{
		{"machine Shared to node Shared", ms.Seal, ns.Open},
		{"node Shared to machine Shared", ns.Seal, ms.Open},
		{"machine SealTo to node Shared", func(b []byte) []byte { return machine.SealTo(node.Public(), b) }, ns.Open},
		{"machine Shared to node OpenFrom", ms.Seal, func(b []byte) ([]byte, bool) { return node.OpenFrom(machine.Public(), b) }},
		{"node SealTo to machine Shared", func(b []byte) []byte { return node.SealTo(machine.Public(), b) }, ms.Open},
		{"node Shared to machine OpenFrom", ns.Seal, func(b []byte) ([]byte, bool) { return machine.OpenFrom(node.Public(), b) }},
		{"machine SealAppend after a header to node Shared", func(b []byte) []byte {
			out := ms.SealAppend([]byte("hdr:"), b)
			if string(out[:4]) != "hdr:" {
				t.Errorf("SealAppend lost dst: %q", out[:4])
			}
			return out[4:]
		}, ns.Open},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sealed := tt.seal(msg)
			if got, want := len(sealed), len(msg)+SealOverhead; got != want {
				t.Errorf("sealed length = %d, want %d", got, want)
			}
			got, ok := tt.open(sealed)
			if !ok || !bytes.Equal(got, msg) {
				t.Errorf("open = %q, %v; want %q, true", got, ok, msg)
			}
		})
	}
	if a, b := ms.Seal(msg), ms.Seal(msg); bytes.Equal(a, b) {
		t.Error("two seals of one message are equal: the nonce is not fresh")
	}
}

// TestSharedWrongKey checks that a box opens with no other pair's key and
// not once altered.
func TestSharedWrongKey(t *testing.T) {
	node, machine := NewNode(), NewMachine()
	other, otherMachine := NewNode(), NewMachine()
	sealed := machine.Shared(node.Public()).Seal([]byte("for node only"))
	tampered := bytes.Clone(sealed)
	tampered[len(tampered)-1] ^= 1
	tests := []struct {
		name   string
		shared Shared
		box    []byte
	}{
		{"another node", other.Shared(machine.Public()), sealed},
		{"another machine", node.Shared(otherMachine.Public()), sealed},
		{"zero key", Shared{}, sealed},
		{"altered box", node.Shared(machine.Public()), tampered},
		{"short box", node.Shared(machine.Public()), sealed[:SealOverhead-1]},
		{"empty box", node.Shared(machine.Public()), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got, ok := tt.shared.Open(tt.box); ok {
				t.Errorf("Open = %q, true; want false", got)
			}
		})
	}
	if !(Shared{}).IsZero() {
		t.Error("zero Shared: IsZero = false")
	}
}

// BenchmarkSeal compares sealing one map frame to a node the one-shot way
// (SealTo: an X25519 per frame, what the coordinator did for every frame)
// with a shared key computed once per node.
func BenchmarkSeal(b *testing.B) {
	node, machine := NewNode(), NewMachine()
	shared := machine.Shared(node.Public())
	for _, size := range []int{500, 16 << 10} {
		msg := bytes.Repeat([]byte("x"), size)
		b.Run(fmt.Sprintf("oneshot/%dB", size), func(b *testing.B) {
			b.SetBytes(int64(size))
			for b.Loop() {
				machine.SealTo(node.Public(), msg)
			}
		})
		b.Run(fmt.Sprintf("shared/%dB", size), func(b *testing.B) {
			b.SetBytes(int64(size))
			for b.Loop() {
				shared.Seal(msg)
			}
		})
	}
}

// BenchmarkOpen is BenchmarkSeal's other end: a node opening frames.
func BenchmarkOpen(b *testing.B) {
	node, machine := NewNode(), NewMachine()
	shared := node.Shared(machine.Public())
	for _, size := range []int{500, 16 << 10} {
		sealed := machine.SealTo(node.Public(), bytes.Repeat([]byte("x"), size))
		b.Run(fmt.Sprintf("oneshot/%dB", size), func(b *testing.B) {
			b.SetBytes(int64(size))
			for b.Loop() {
				if _, ok := node.OpenFrom(machine.Public(), sealed); !ok {
					b.Fatal("does not open")
				}
			}
		})
		b.Run(fmt.Sprintf("shared/%dB", size), func(b *testing.B) {
			b.SetBytes(int64(size))
			for b.Loop() {
				if _, ok := shared.Open(sealed); !ok {
					b.Fatal("does not open")
				}
			}
		})
	}
}

// TestSharedBind checks that both ends derive one key per nonce, and
// that a box sealed with a bound key opens with no other nonce's key nor
// with the unbound key (and the reverse).
func TestSharedBind(t *testing.T) {
	node, machine := NewNode(), NewMachine()
	ns, ms := node.Shared(machine.Public()), machine.Shared(node.Public())
	n1, n2 := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)
	if ns.Bind(n1).k != ms.Bind(n1).k {
		t.Fatal("node and machine bound one nonce to different keys")
	}
	msg := []byte("reply")
	tests := []struct {
		name string
		seal Shared
		open Shared
		want bool
	}{
		{"same nonce", ms.Bind(n1), ns.Bind(n1), true},
		{"other nonce", ms.Bind(n1), ns.Bind(n2), false},
		{"bound, opened unbound", ms.Bind(n1), ns, false},
		{"unbound, opened bound", ms, ns.Bind(n1), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, ok := tt.open.Open(tt.seal.Seal(msg)); ok != tt.want {
				t.Errorf("open = %v, want %v", ok, tt.want)
			}
		})
	}
}

// TestSharedSeq checks that a message of a sequence opens only at its
// own position.
func TestSharedSeq(t *testing.T) {
	node, machine := NewNode(), NewMachine()
	ns, ms := node.Shared(machine.Public()), machine.Shared(node.Public())
	msg := []byte("frame")
	sealed := ms.SealSeqAppend([]byte("hdr"), 5, msg)[3:]
	tests := []struct {
		name string
		seq  uint64
		want bool
	}{
		{"own position", 5, true},
		{"earlier", 4, false},
		{"later", 6, false},
		{"first", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := ns.OpenSeq(sealed, tt.seq)
			if ok != tt.want || ok && !bytes.Equal(got, msg) {
				t.Errorf("OpenSeq(%d) = %q, %v; want ok %v", tt.seq, got, ok, tt.want)
			}
		})
	}
	if _, ok := ns.Open(sealed); !ok {
		t.Error("a sequence box does not open as a plain box")
	}
	if a, b := ms.SealSeqAppend(nil, 1, msg), ms.SealSeqAppend(nil, 1, msg); bytes.Equal(a, b) {
		t.Error("two seals at one position are equal: the nonce has no random part")
	}
}

// TestProof: both holders of a shared key compute the same proof of a
// challenge; another challenge, another key pair, or Bind's key for the
// same bytes differ.
func TestProof(t *testing.T) {
	m, n, other := NewMachine(), NewNode(), NewNode()
	c := []byte("0123456789abcdef0123456789abcdef")
	got, want := n.Shared(m.Public()).Proof(c), m.Shared(n.Public()).Proof(c)
	if got != want {
		t.Fatalf("node side proof %x, machine side %x: want equal", got, want)
	}
	for _, tc := range []struct {
		name string
		p    [ProofLen]byte
	}{
		{"other challenge", m.Shared(n.Public()).Proof([]byte("another challenge"))},
		{"other node", m.Shared(other.Public()).Proof(c)},
		{"Bind key", m.Shared(n.Public()).Bind(c).k},
	} {
		if tc.p == want {
			t.Errorf("%s: proof equals the challenge's proof", tc.name)
		}
	}
}
