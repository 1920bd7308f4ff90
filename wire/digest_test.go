package wire

import (
	"encoding/json"
	"testing"

	"beam.dev/beam/types/key"
)

// TestPeersDigest: the digest is independent of order, Remove undoes Add,
// it survives JSON, and it tells apart peers whose keys differ anywhere
// (the first version hashed a key's first 8 bytes only, so two keys
// sharing them, with the same revision, summed the same).
func TestPeersDigest(t *testing.T) {
	keys := make([]key.NodePublic, 4)
	for i := range keys {
		keys[i] = key.NewNode().Public()
	}
	var fwd, back PeersDigest
	for i := range keys {
		fwd.Add(keys[i], uint64(i))
		back.Add(keys[len(keys)-1-i], uint64(len(keys)-1-i))
	}
	if fwd != back {
		t.Errorf("digest depends on order: %+v and %+v", fwd, back)
	}
	fwd.Remove(keys[2], 2)
	var three PeersDigest
	for _, i := range []int{0, 1, 3} {
		three.Add(keys[i], uint64(i))
	}
	if fwd != three {
		t.Errorf("Remove does not undo Add: %+v, want %+v", fwd, three)
	}
	b, err := json.Marshal(three)
	if err != nil {
		t.Fatal(err)
	}
	var got PeersDigest
	if err := json.Unmarshal(b, &got); err != nil || got != three {
		t.Errorf("through JSON %s: %+v (%v), want %+v", b, got, err, three)
	}

	raw := keys[0].Raw32()
	raw[31] ^= 1 // the same first 8 bytes
	twin := key.NodePublicFromRaw32(raw)
	if PeerHash(keys[0], 7) == PeerHash(twin, 7) {
		t.Errorf("keys differing in their last byte hash the same")
	}
	if PeerHash(keys[0], 7) == PeerHash(keys[0], 8) {
		t.Errorf("revisions 7 and 8 hash the same")
	}
}
