package coordclient

import (
	"errors"
	"testing"

	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

func testPeer(rev uint64) *wire.Node {
	return &wire.Node{Key: key.NewNode().Public(), Rev: rev, Online: true}
}

// digestOf is the digest of peers computed afresh.
func digestOf(peers map[key.NodePublic]*wire.Node) wire.PeersDigest {
	var d wire.PeersDigest
	for _, p := range peers {
		d.Add(p.Key, p.Rev)
	}
	return d
}

// TestHeldPeersDigest checks that the digest the client keeps up message
// by message is the one of the peers it holds, computed afresh, through a
// full map, joins, changes, removals and a resumed map; and that a
// resumed map hands the caller every held peer with the online state the
// message gives.
func TestHeldPeersDigest(t *testing.T) {
	h := &heldPeers{}
	if h.request() != nil {
		t.Fatal("a client holding nothing offers a digest")
	}
	a, b, c := testPeer(1), testPeer(2), testPeer(3)
	steps := []struct {
		name string
		mr   *wire.MapResponse
		want int // peers held after
	}{
		{"full", &wire.MapResponse{Peers: []*wire.Node{a, b}}, 2},
		{"join", &wire.MapResponse{PeersChanged: []*wire.Node{c}}, 3},
		{"change", &wire.MapResponse{PeersChanged: []*wire.Node{{Key: a.Key, Rev: 11}}}, 3},
		{"remove", &wire.MapResponse{PeersRemoved: []key.NodePublic{b.Key}}, 2},
		{"remove unknown", &wire.MapResponse{PeersRemoved: []key.NodePublic{key.NewNode().Public()}}, 2},
		{"online only", &wire.MapResponse{PeersOnline: map[key.NodePublic]bool{c.Key: false}}, 2},
	}
	for i, st := range steps {
		if err := h.apply(st.mr, i == 0); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		if len(h.peers) != st.want {
			t.Fatalf("%s: %d peers held, want %d", st.name, len(h.peers), st.want)
		}
		if got, want := *h.request(), digestOf(h.peers); got != want {
			t.Fatalf("%s: digest %+v, afresh %+v", st.name, got, want)
		}
	}

	kept := &wire.MapResponse{PeersKept: true, PeersOffline: []key.NodePublic{c.Key}}
	before := *h.request()
	if err := h.apply(kept, true); err != nil {
		t.Fatal(err)
	}
	if kept.PeersKept || len(kept.Peers) != 2 {
		t.Fatalf("resumed map: kept %v, %d peers; want 2 peers", kept.PeersKept, len(kept.Peers))
	}
	for _, p := range kept.Peers {
		if want := p.Key != c.Key; p.Online != want {
			t.Errorf("peer %v online %v, want %v", p.Key.ShortString(), p.Online, want)
		}
		if p.Key == a.Key && p.Rev != 11 {
			t.Errorf("a has rev %d, want 11", p.Rev)
		}
	}
	if got := *h.request(); got != before {
		t.Errorf("digest after a resumed map %+v, want %+v", got, before)
	}
}

// TestHeldPeersRefusesUnofferedResume checks that a message keeping peers
// the client did not offer (none held, or not the first of its stream)
// is an error that leaves the client holding nothing, so that its next
// stream asks for a full map.
func TestHeldPeersRefusesUnofferedResume(t *testing.T) {
	for _, tc := range []struct {
		name  string
		held  bool
		first bool
	}{
		{"nothing held", false, true},
		{"not first", true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := &heldPeers{}
			if tc.held {
				if err := h.apply(&wire.MapResponse{Peers: []*wire.Node{testPeer(1)}}, true); err != nil {
					t.Fatal(err)
				}
			}
			err := h.apply(&wire.MapResponse{PeersKept: true}, tc.first)
			if !errors.Is(err, ErrBadResponse) {
				t.Fatalf("apply = %v, want ErrBadResponse", err)
			}
			if d := h.request(); d != nil {
				t.Fatalf("after the error the client offers %+v, want nothing", d)
			}
		})
	}
}

// TestHeldPeersEmptyFullMap checks that a first message without peers
// (JSON leaves an empty list out) counts as a full map of none.
func TestHeldPeersEmptyFullMap(t *testing.T) {
	h := &heldPeers{}
	if err := h.apply(&wire.MapResponse{Self: &wire.Node{}}, true); err != nil {
		t.Fatal(err)
	}
	if d := h.request(); d == nil || *d != (wire.PeersDigest{}) {
		t.Fatalf("digest %+v, want that of no peers", d)
	}
}

// TestHeldPeersOnlineByID checks that online states by peer ID become
// PeersOnline of the peers held: of a peer of the full map, of one a
// delta added, after the message's changes (a peer removed in the same
// message is not held, and its state is dropped); a state by an ID no
// peer held has is dropped, and a keyed one of the same peer wins.
func TestHeldPeersOnlineByID(t *testing.T) {
	a, b, c, d := testPeer(1), testPeer(2), testPeer(3), testPeer(4)
	a.ID, b.ID, c.ID, d.ID = 1, 2, 3, 4
	var h heldPeers
	if err := h.apply(&wire.MapResponse{Peers: []*wire.Node{a, b, c}}, true); err != nil {
		t.Fatal(err)
	}
	mr := &wire.MapResponse{
		PeersChanged:    []*wire.Node{d},
		PeersRemoved:    []key.NodePublic{c.Key},
		PeersOnline:     map[key.NodePublic]bool{b.Key: true},
		PeersOnlineByID: map[wire.NodeID]bool{1: false, 2: false, 3: false, 4: false, 99: true},
	}
	if err := h.apply(mr, false); err != nil {
		t.Fatal(err)
	}
	want := map[key.NodePublic]bool{a.Key: false, b.Key: true, d.Key: false}
	if len(mr.PeersOnline) != len(want) {
		t.Errorf("PeersOnline = %v, want %v", mr.PeersOnline, want)
	}
	for k, on := range want {
		if got, ok := mr.PeersOnline[k]; !ok || got != on {
			t.Errorf("PeersOnline[%v] = %v, %v; want %v", k.ShortString(), got, ok, on)
		}
	}
	if mr.PeersOnlineByID != nil {
		t.Errorf("PeersOnlineByID = %v, want it resolved", mr.PeersOnlineByID)
	}
	// Resumed (the peers kept), the IDs still resolve.
	kept := &wire.MapResponse{PeersKept: true}
	if err := h.apply(kept, true); err != nil {
		t.Fatal(err)
	}
	next := &wire.MapResponse{PeersOnlineByID: map[wire.NodeID]bool{4: true}}
	if err := h.apply(next, false); err != nil {
		t.Fatal(err)
	}
	if !next.PeersOnline[d.Key] || len(next.PeersOnline) != 1 {
		t.Errorf("after a resume: PeersOnline = %v, want %v online", next.PeersOnline, d.Key.ShortString())
	}
}
