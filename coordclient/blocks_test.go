package coordclient

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"slices"
	"testing"

	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// testBlock is one sealed block of peer records and its reference.
type testBlock struct {
	frame []byte // 4B length, then the sealed block
	ref   wire.BlockRef
	nodes []*wire.Node
}

// sealTestBlock seals the records of nodes under k.
func sealTestBlock(k key.BlockKey, nodes ...*wire.Node) testBlock {
	var recs []byte
	for _, n := range nodes {
		recs = wire.AppendPeerRecord(recs, n)
	}
	sealed := k.SealBlockAppend(nil, recs)
	frame := binary.BigEndian.AppendUint32(nil, uint32(len(sealed)))
	return testBlock{
		frame: append(frame, sealed...),
		ref:   wire.BlockRef{Key: k.Raw32(), Hash: wire.BlockHash(sealed), Size: len(sealed)},
		nodes: nodes,
	}
}

func blockPeer(name string) *wire.Node {
	return &wire.Node{Key: key.NewNode().Public(), Name: name, Online: true,
		Addresses: []netip.Prefix{netip.MustParsePrefix("100.64.0.9/32")}}
}

// blockedFrame returns a blocked map frame naming refs, with one inline
// peer record besides theirs, and how many records its message holds.
func blockedFrame(inline *wire.Node, refs []wire.BlockRef, records int) []byte {
	return blockedFrameHead(`{}`, inline, refs, records)
}

// blockedFrameHead is blockedFrame with the message's head.
func blockedFrameHead(head string, inline *wire.Node, refs []wire.BlockRef, records int) []byte {
	// The frame as the coordinator builds it: head, list byte, count,
	// inline records, then the online count (0), before which the
	// blocks' records go.
	inner := wire.AppendBinaryMapFrameSegments(nil, []byte(head), wire.ListPeers, records, [][]byte{wire.AppendPeerRecord(nil, inline)}, nil)
	return wire.AppendBlockedMapFrame(nil, refs, len(inner)-1, inner)
}

// TestBlockedFrameRefusesForeignBlocks checks that a node takes the
// blocks of a blocked map frame only as its own sealed frame names them:
// one altered on the path, one in another's place, one that another
// holder of the block's key sealed, or one cut short is refused, with
// or without a cache of blocks already opened, and so is a blocked frame
// on a stream not bound to its request.
func TestBlockedFrameRefusesForeignBlocks(t *testing.T) {
	k1, k2 := key.NewBlockKey(), key.NewBlockKey()
	b1 := sealTestBlock(k1, blockPeer("a"), blockPeer("b"))
	b2 := sealTestBlock(k2, blockPeer("c"))
	forged := sealTestBlock(k1, blockPeer("mallory")) // by another node that holds k1
	inline := blockPeer("inline")
	p := blockedFrame(inline, []wire.BlockRef{b1.ref, b2.ref}, 4)

	tampered := bytes.Clone(b1.frame)
	tampered[len(tampered)-1] ^= 1
	// Same size as b1, sealed under k1 by someone else: only the hash
	// tells it apart.
	sameSize := sealTestBlock(k1, blockPeer("x"), blockPeer("y"))
	if len(sameSize.frame) != len(b1.frame) {
		t.Fatalf("blocks of %d and %d bytes, want the same size", len(sameSize.frame), len(b1.frame))
	}
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

	tests := []struct {
		name   string
		stream []byte
		bound  bool
		want   error // nil: decodes to the four peers
	}{
		{"as named", cat(b1.frame, b2.frame), true, nil},
		{"altered", cat(tampered, b2.frame), true, ErrBadResponse},
		{"swapped", cat(b2.frame, b1.frame), true, ErrBadResponse},
		{"sealed by another holder of the key", cat(forged.frame, b2.frame), true, ErrBadResponse},
		{"same size, another holder", cat(sameSize.frame, b2.frame), true, ErrBadResponse},
		{"cut short", cat(b1.frame, b2.frame[:10]), true, nil},
		{"on an unbound stream", cat(b1.frame, b2.frame), false, ErrBadResponse},
	}
	for _, cache := range []*BlockCache{nil, {}} {
		name := "no cache"
		if cache != nil {
			name = "cache"
			// The genuine blocks are in the cache already.
			c := &Client{blocks: cache}
			if _, err := c.readBlocks(bytes.NewReader(cat(b1.frame, b2.frame)), p, true, nil); err != nil {
				t.Fatal(err)
			}
		}
		t.Run(name, func(t *testing.T) {
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					c := &Client{blocks: cache}
					out, err := c.readBlocks(bytes.NewReader(tt.stream), p, tt.bound, nil)
					if tt.name == "cut short" {
						if err == nil || errors.Is(err, ErrBadResponse) {
							t.Fatalf("err = %v, want a read error (the stream ended)", err)
						}
						return
					}
					if tt.want != nil {
						if !errors.Is(err, tt.want) {
							t.Fatalf("err = %v, want %v", err, tt.want)
						}
						return
					}
					if err != nil {
						t.Fatal(err)
					}
					mr, err := wire.DecodeMapFrame(out)
					if err != nil {
						t.Fatal(err)
					}
					var got []string
					for _, n := range mr.Peers {
						got = append(got, n.Name)
					}
					if want := []string{"inline", "a", "b", "c"}; !slices.Equal(got, want) {
						t.Errorf("peers %v, want %v", got, want)
					}
				})
			}
		})
	}
}

// TestStaleStreamEndpointsSentAgain checks that a map stream request
// carrying endpoints older than the client's makes the client send the
// newer ones again: the coordinator applies the stream request's, so an
// update of the newer ones that it applied first was undone.
func TestStaleStreamEndpointsSentAgain(t *testing.T) {
	c := &Client{epsWake: make(chan struct{}, 1)}
	c.epsGen = 5
	c.streamOpened(5)
	if c.epsGen != 5 || len(c.epsWake) != 0 {
		t.Fatalf("stream with the current endpoints: generation %d, wake %d; want 5, 0", c.epsGen, len(c.epsWake))
	}
	c.streamOpened(3)
	if c.epsGen != 6 || len(c.epsWake) != 1 {
		t.Fatalf("stream with older endpoints: generation %d, wake %d; want 6, 1 (sent again)", c.epsGen, len(c.epsWake))
	}
}

// TestScannedSinkLendsFrames checks that RunScanned's sink joins blocked
// map frames in buffers it lends, hands the handler the message read from
// them, and takes the buffers back once the handler has the message, but
// not before: the first frame of a message split across two keeps its
// buffer until the second.
func TestScannedSinkLendsFrames(t *testing.T) {
	b1 := sealTestBlock(key.NewBlockKey(), blockPeer("a"), blockPeer("b"))
	h := &testHandler{onMsg: func(bool) {}}
	s := &scannedSink{h: h}
	c := &Client{blocks: &BlockCache{}}
	for i, head := range []string{`{"more":true}`, `{}`} {
		out, err := c.readBlocks(bytes.NewReader(b1.frame), blockedFrameHead(head, blockPeer("inline"), []wire.BlockRef{b1.ref}, 3), true, lenderOf(s))
		if err != nil {
			t.Fatal(err)
		}
		if len(s.lent) != i+1 || &s.lent[i][:1][0] != &out[0] {
			t.Fatalf("frame %d was not joined in the buffer lent (%d lent)", i, len(s.lent))
		}
		whole, err := s.frame(out, true)
		if err != nil || whole != (i == 1) {
			t.Fatalf("frame %d: whole %v, err %v; want %v, nil", i, whole, err, i == 1)
		}
	}
	if len(h.msgs) != 1 || h.msgs[0] != (scannedMsg{true, 2, 6}) {
		t.Fatalf("messages %+v, want one of 2 frames and 6 peers", h.msgs)
	}
	if len(s.lent) != 0 {
		t.Errorf("%d buffers still lent after the message was taken, want 0", len(s.lent))
	}
}
