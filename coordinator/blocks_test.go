package coordinator_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"beam.dev/beam/coordinator"
	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// readFullMap opens the map stream of the registered node priv as a node
// of version would, with a reply nonce if bound, and reads its full map
// frame by frame: it returns the peers' names and how many frames were
// blocked map frames (wire.BlockedMapFrame), whose blocks it checks
// against their hashes and opens as a node does. Every binary frame's
// records must be encoded as nodes of version take them
// (rawStream.checkEncoding).
func readFullMap(t *testing.T, c *coord, priv key.NodePrivate, version int, bound bool) (names map[string]bool, blocked int) {
	t.Helper()
	names, blocked, _ = readFullMapBlocks(t, c, priv, version, bound)
	return names, blocked
}

// readFullMapBlocks is readFullMap that also returns the hashes of the
// blocks the full map named.
func readFullMapBlocks(t *testing.T, c *coord, priv key.NodePrivate, version int, bound bool) (names map[string]bool, blocked int, hashes map[[32]byte]bool) {
	t.Helper()
	var nonce []byte
	if bound {
		nonce = bytes.Repeat([]byte{9}, wire.ReplyNonceLen)
	}
	clear, _ := json.Marshal(&wire.MapRequest{Version: version, NodeKey: priv.Public(), Stream: true, Nonce: nonce, Epoch: c.epoch(t), Timestamp: time.Now()})
	env, _ := json.Marshal(wire.Envelope{NodeKey: priv.Public(), Sealed: priv.SealTo(c.priv.Public(), clear)})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, c.URL+wire.PathMap, bytes.NewReader(env))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %s", resp.Status)
	}
	shared := priv.Shared(c.priv.Public())
	readFrame := func() []byte {
		var hdr [4]byte
		if _, err := io.ReadFull(resp.Body, hdr[:]); err != nil {
			t.Fatalf("read frame: %v", err)
		}
		b := make([]byte, binary.BigEndian.Uint32(hdr[:]))
		if _, err := io.ReadFull(resp.Body, b); err != nil {
			t.Fatalf("read frame: %v", err)
		}
		return b
	}
	names, hashes = make(map[string]bool), make(map[[32]byte]bool)
	check := &rawStream{t: t, version: version}
	for seq := uint64(0); ; seq++ {
		b := readFrame()
		var p []byte
		var ok bool
		if bound {
			p, ok = shared.Bind(nonce).OpenSeq(b, seq)
		} else {
			p, ok = shared.Open(b)
		}
		if !ok {
			t.Fatalf("frame %d does not open", seq)
		}
		if p[0] == wire.BlockedMapFrame {
			blocked++
			refs, at, inner, err := wire.ParseBlockedMapFrame(p)
			if err != nil {
				t.Fatal(err)
			}
			var recs []byte
			for i, ref := range refs {
				sealed := readFrame()
				if len(sealed) != ref.Size || wire.BlockHash(sealed) != ref.Hash {
					t.Fatalf("block %d of frame %d does not match its reference", i, seq)
				}
				hashes[ref.Hash] = true
				if recs, ok = key.BlockKeyFromRaw32(ref.Key).OpenBlockAppend(recs, sealed); !ok {
					t.Fatalf("block %d of frame %d does not open", i, seq)
				}
			}
			p = append(append(append([]byte(nil), inner[:at]...), recs...), inner[at:]...)
		}
		mr, err := wire.DecodeMapFrame(p)
		if err != nil {
			t.Fatalf("frame %d: %v", seq, err)
		}
		if p[0] == wire.BinaryMapFrame {
			check.checkEncoding(p)
		}
		for _, n := range mr.Peers {
			if names[n.Name] {
				t.Errorf("peer %s sent twice", n.Name)
			}
			names[n.Name] = true
		}
		if !mr.More {
			return names, blocked, hashes
		}
	}
}

// TestBlockedMapFramesByVersion checks who gets the peers of a full map
// as shared sealed blocks (wire.BlockedMapFrame, version 21): a node of
// version 21 whose stream is bound to its request does, for the blocks
// of peers that hold not its own record; a node of version 20, or one
// whose stream is not bound, gets every frame sealed to it as before.
// Each gets every other node once. There are more nodes than one block
// holds (192), so that every node has a block of others.
func TestBlockedMapFramesByVersion(t *testing.T) {
	const n = 200
	c := startCoord(t, func(o *coordinator.Options) { o.KeepAliveInterval = time.Minute })
	ak := c.authKey(t, coordinator.AuthKeyOptions{Reusable: true})
	privs := registerMany(t, c, ak, "peer", n)

	tests := []struct {
		name        string
		version     int
		bound       bool
		wantBlocked bool
	}{
		{"version 21", wire.BlockedFramesVersion, true, true},
		{"version 20", wire.BlockedFramesVersion - 1, true, false},
		{"version 21 unbound", wire.BlockedFramesVersion, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// The first node's block holds its own record, the last's
			// too: both have a block of others.
			for _, i := range []int{0, n - 1} {
				names, blocked := readFullMap(t, c, privs[i], tt.version, tt.bound)
				if (blocked > 0) != tt.wantBlocked {
					t.Errorf("peer%d: %d blocked frames, want blocked %v", i, blocked, tt.wantBlocked)
				}
				if len(names) != n-1 {
					t.Errorf("peer%d: %d peers, want %d", i, len(names), n-1)
				}
				for j := range n {
					if name := fmt.Sprintf("peer%d", j); names[name] != (j != i) {
						t.Errorf("peer%d: has %s %v, want %v", i, name, names[name], j != i)
					}
				}
			}
		})
	}
}

// TestBlocksSharedPerVersion checks that the sealed blocks of full maps
// are shared by every stream of the same encoding: two nodes of the
// current version get the same blocks of the peers they both see, as do
// two of version 21, whose blocks hold the records of version 21
// (readFullMap checks them) and so are others.
func TestBlocksSharedPerVersion(t *testing.T) {
	const n = 400
	c := startCoord(t, func(o *coordinator.Options) { o.KeepAliveInterval = time.Minute })
	ak := c.authKey(t, coordinator.AuthKeyOptions{Reusable: true})
	privs := registerMany(t, c, ak, "peer", n)

	blocks := func(version int, i int) map[[32]byte]bool {
		_, blocked, hashes := readFullMapBlocks(t, c, privs[i], version, true)
		if blocked == 0 {
			t.Fatalf("version %d, peer%d: no blocked frames", version, i)
		}
		return hashes
	}
	shared := func(a, b map[[32]byte]bool) int {
		k := 0
		for h := range a {
			if b[h] {
				k++
			}
		}
		return k
	}
	// Nodes 0 and n-1 hold their own records in different blocks: each
	// gets the other blocks shared.
	cur0, cur1 := blocks(wire.CapabilityVersion, 0), blocks(wire.CapabilityVersion, n-1)
	old0, old1 := blocks(wire.CompactFramesVersion-1, 0), blocks(wire.CompactFramesVersion-1, n-1)
	if shared(cur0, cur1) == 0 {
		t.Errorf("two streams of version %d share no block", wire.CapabilityVersion)
	}
	if shared(old0, old1) == 0 {
		t.Errorf("two streams of version %d share no block", wire.CompactFramesVersion-1)
	}
	if k := shared(cur0, old0) + shared(cur1, old1); k != 0 {
		t.Errorf("%d blocks shared across versions, want none", k)
	}
}
