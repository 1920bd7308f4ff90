package coordinator

import (
	"bytes"
	"testing"

	"beam.dev/beam/types/key"
)

// TestSharedKeysBoxes checks that the cache's boxes are the one-shot
// ones: a node opens what it seals with OpenFrom, and it opens what a
// node sealed with SealTo.
func TestSharedKeysBoxes(t *testing.T) {
	var c sharedKeys
	machine, node := key.NewMachine(), key.NewNode()
	msg := []byte(`{"keep_alive":true}`)
	for range 2 { // computed, then cached
		got, ok := node.OpenFrom(machine.Public(), c.seal(machine, node.Public(), msg))
		if !ok || !bytes.Equal(got, msg) {
			t.Fatalf("node opens the cache's box: %q, %v; want %q, true", got, ok, msg)
		}
		got, ok = c.open(machine, node.Public(), node.SealTo(machine.Public(), msg), true)
		if !ok || !bytes.Equal(got, msg) {
			t.Fatalf("cache opens the node's box: %q, %v; want %q, true", got, ok, msg)
		}
	}
}

// TestSharedKeysOpenFailsUncached checks that a box that does not open
// (another node's, or made up) fails and leaves no key behind, and that
// one that opens is kept only once the coordinator answers its node.
func TestSharedKeysOpenFailsUncached(t *testing.T) {
	var c sharedKeys
	machine, node, other := key.NewMachine(), key.NewNode(), key.NewNode()
	sealed := other.SealTo(machine.Public(), []byte("not from node"))
	if got, ok := c.open(machine, node.Public(), sealed, true); ok {
		t.Fatalf("open of another node's box as node = %q, true; want false", got)
	}
	if _, ok := c.lookup(node.Public()); ok {
		t.Error("a box that did not open left its key cached")
	}
	if _, ok := c.open(machine, other.Public(), sealed, false); !ok {
		t.Fatal("open of other's box as other failed")
	}
	// Anyone can seal a box that opens: only answering the node, or
	// opening a box of a node known to be registered, adds it.
	if _, ok := c.lookup(other.Public()); ok {
		t.Error("a box that merely opened left its key cached")
	}
	c.seal(machine, other.Public(), []byte("answer"))
	if _, ok := c.lookup(other.Public()); !ok {
		t.Error("answering the node left no key cached")
	}
	known := key.NewNode()
	if _, ok := c.open(machine, known.Public(), known.SealTo(machine.Public(), []byte("from a known node")), true); !ok {
		t.Fatal("open of a known node's box failed")
	}
	if _, ok := c.lookup(known.Public()); !ok {
		t.Error("a known node's box that opened left no key cached")
	}
}

// TestSharedKeysBounded checks that the cache holds at most maxSharedKeys
// keys, and that a key in use survives generations of others.
func TestSharedKeysBounded(t *testing.T) {
	var c sharedKeys
	machine := key.NewMachine()
	hot := key.NewNode().Public()
	c.get(machine, hot)
	for i := range 3 * maxSharedKeys {
		var raw [32]byte
		raw[0], raw[1], raw[2] = byte(i), byte(i>>8), byte(i>>16)
		raw[31] = 1
		c.add(key.NodePublicFromRaw32(raw), key.Shared{})
		if i%1000 == 0 {
			if _, ok := c.lookup(hot); !ok {
				t.Fatalf("key in use dropped after %d others", i)
			}
		}
	}
	if n := len(c.cur) + len(c.old); n > maxSharedKeys {
		t.Errorf("cache holds %d keys, want at most %d", n, maxSharedKeys)
	}
}
