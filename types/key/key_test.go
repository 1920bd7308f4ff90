package key

import (
	"bytes"
	"encoding/json"
	"testing"
)

func TestNodeTextRoundTrip(t *testing.T) {
	priv := NewNode()
	pub := priv.Public()
	b, err := json.Marshal(pub)
	if err != nil {
		t.Fatal(err)
	}
	var got NodePublic
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if got != pub {
		t.Fatalf("got %v, want %v", got, pub)
	}
	pb, _ := priv.MarshalText()
	var priv2 NodePrivate
	if err := priv2.UnmarshalText(pb); err != nil {
		t.Fatal(err)
	}
	if !priv2.Equal(priv) {
		t.Fatal("private key text round trip changed the key")
	}
}

func TestParseErrors(t *testing.T) {
	for _, s := range []string{"", "nodekey:", "nodekey:zz", "mkey:" + string(bytes.Repeat([]byte("0"), 64)), "nodekey:" + string(bytes.Repeat([]byte("0"), 63))} {
		if _, err := ParseNodePublic(s); err == nil {
			t.Errorf("ParseNodePublic(%q) = nil error, want error", s)
		}
	}
}

func TestSealOpen(t *testing.T) {
	node := NewNode()
	machine := NewMachine()
	msg := []byte("register me")
	sealed := node.SealTo(machine.Public(), msg)
	got, ok := machine.OpenFrom(node.Public(), sealed)
	if !ok || !bytes.Equal(got, msg) {
		t.Fatalf("OpenFrom = %q, %v; want %q, true", got, ok, msg)
	}
	// A different node cannot claim the message.
	if _, ok := machine.OpenFrom(NewNode().Public(), sealed); ok {
		t.Fatal("opened a box with the wrong sender key")
	}
	sealed[len(sealed)-1] ^= 1
	if _, ok := machine.OpenFrom(node.Public(), sealed); ok {
		t.Fatal("opened a tampered box")
	}
	reply := machine.SealTo(node.Public(), []byte("ok"))
	if got, ok := node.OpenFrom(machine.Public(), reply); !ok || string(got) != "ok" {
		t.Fatalf("node.OpenFrom = %q, %v", got, ok)
	}
}

func TestDiscoShared(t *testing.T) {
	a, b := NewDisco(), NewDisco()
	sab, sba := a.Shared(b.Public()), b.Shared(a.Public())
	got, ok := sba.Open(sab.Seal([]byte("ping")))
	if !ok || string(got) != "ping" {
		t.Fatalf("Open = %q, %v", got, ok)
	}
	if _, ok := sba.Open([]byte("short")); ok {
		t.Fatal("opened a truncated box")
	}
}

func FuzzUnmarshalNodePublic(f *testing.F) {
	f.Add([]byte("nodekey:0000000000000000000000000000000000000000000000000000000000000000"))
	f.Add([]byte("nodekey:"))
	f.Fuzz(func(t *testing.T, b []byte) {
		var k NodePublic
		if err := k.UnmarshalText(b); err != nil {
			return
		}
		out, _ := k.MarshalText()
		var k2 NodePublic
		if err := k2.UnmarshalText(out); err != nil || k2 != k {
			t.Fatalf("round trip of %q failed", b)
		}
	})
}
