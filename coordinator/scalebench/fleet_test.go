package scalebench

import (
	"net/netip"
	"strings"
	"testing"

	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// TestFakeNodeMessages feeds fake nodes messages as their streams give
// them (binary frames, scanned) and checks what the fleet counts from
// them: full maps, the settled count as peers go offline and online, a
// change seen, a resumed map, and a full map that lacks a peer counted in
// badFulls; and that the digest each node keeps to resume is that of its
// peers' keys and revisions computed afresh.
func TestFakeNodeMessages(t *testing.T) {
	f, err := NewFleet(FleetOptions{URL: "http://127.0.0.1:9", N: 4})
	if err != nil {
		t.Fatal(err)
	}
	type peer struct {
		i      int
		rev    uint64
		online bool
		port   uint16
	}
	msg := func(head string, list wire.PeerList, peers []peer, online map[int]bool) []*wire.ScannedFrame {
		var recs [][]byte
		for _, p := range peers {
			n := &wire.Node{Key: f.keys[p.i], Rev: p.rev, Online: p.online, Name: "n"}
			if p.port != 0 {
				n.Endpoints = []netip.AddrPort{netip.AddrPortFrom(netip.MustParseAddr("198.51.100.7"), p.port)}
			}
			recs = append(recs, wire.AppendPeerRecord(nil, n))
		}
		var on map[key.NodePublic]bool
		for i, o := range online {
			if on == nil {
				on = map[key.NodePublic]bool{}
			}
			on[f.keys[i]] = o
		}
		sf, err := wire.ScanMapFrame(wire.AppendBinaryMapFrame(nil, []byte(head), list, recs, on))
		if err != nil {
			t.Fatal(err)
		}
		return []*wire.ScannedFrame{sf}
	}
	digest := func(peers ...peer) wire.PeersDigest {
		var d wire.PeersDigest
		for _, p := range peers {
			d.Add(f.keys[p.i], p.rev)
		}
		return d
	}
	n1 := f.nodes[1]
	steps := []struct {
		name        string
		nd          *fakeNode
		next        bool // NextEpoch first
		mark        int64
		frames      []*wire.ScannedFrame
		first       bool
		full, settl int64 // the epoch's counts after
		seen, bad   int64
		digest      wire.PeersDigest
	}{
		{"full map", n1, false, 0, msg(`{}`, wire.ListPeers, []peer{{0, 1, true, 0}, {2, 1, true, 0}, {3, 1, true, 0}}, nil), true,
			1, 1, 0, 0, digest(peer{i: 0, rev: 1}, peer{i: 2, rev: 1}, peer{i: 3, rev: 1})},
		{"peer offline", n1, false, 0, msg(`{}`, wire.ListNone, nil, map[int]bool{3: false}), false,
			1, 0, 0, 0, digest(peer{i: 0, rev: 1}, peer{i: 2, rev: 1}, peer{i: 3, rev: 1})},
		{"change seen", n1, false, 1234, msg(`{}`, wire.ListPeersChanged, []peer{{0, 2, true, 1234}}, map[int]bool{3: true}), false,
			1, 1, 1, 0, digest(peer{i: 0, rev: 2}, peer{i: 2, rev: 1}, peer{i: 3, rev: 1})},
		{"resumed after a restart", n1, true, 0, msg(`{"peers_kept":true,"peers_offline":["`+f.keys[3].String()+`"]}`, wire.ListNone, nil, nil), true,
			1, 0, 1, 0, digest(peer{i: 0, rev: 2}, peer{i: 2, rev: 1}, peer{i: 3, rev: 1})},
		{"back online", n1, false, 0, msg(`{}`, wire.ListNone, nil, map[int]bool{3: true}), false,
			1, 1, 1, 0, digest(peer{i: 0, rev: 2}, peer{i: 2, rev: 1}, peer{i: 3, rev: 1})},
		{"removed", n1, false, 0, msg(`{"peers_removed":["`+f.keys[2].String()+`"]}`, wire.ListNone, nil, nil), false,
			1, 0, 1, 0, digest(peer{i: 0, rev: 2}, peer{i: 3, rev: 1})},
		{"full map without a peer", f.nodes[2], false, 0, msg(`{}`, wire.ListPeers, []peer{{0, 2, true, 0}, {1, 1, true, 0}}, nil), true,
			2, 0, 1, 1, digest(peer{i: 0, rev: 2}, peer{i: 1, rev: 1})},
	}
	for _, st := range steps {
		if st.next {
			f.NextEpoch()
		}
		f.mark.Store(st.mark)
		if err := st.nd.Message(st.frames, st.first); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		ep := f.cur.Load()
		if got := [4]int64{ep.full.Load(), ep.settled.Load(), f.markSeen.Load(), f.badFulls.Load()}; got != [4]int64{st.full, st.settl, st.seen, st.bad} {
			t.Errorf("%s: full maps, settled, seen, bad = %v, want %v", st.name, got, [4]int64{st.full, st.settl, st.seen, st.bad})
		}
		if d, ok := st.nd.Digest(); !ok || d != st.digest {
			t.Errorf("%s: digest %+v (valid %v), want %+v", st.name, d, ok, st.digest)
		}
	}
	if got := f.Resumed(); got != 1 {
		t.Errorf("%d nodes resumed since the restart, want 1 (n1; n2 got a full map)", got)
	}
	if msg := f.badFull.Load(); msg == nil || !strings.HasPrefix(*msg, "n2: 2 peers") {
		t.Errorf("bad full map noted as %v, want n2's with 2 peers", msg)
	}
	if err := f.nodes[3].Message(msg(`{"peers_kept":true}`, wire.ListNone, nil, nil), true); err == nil {
		t.Error("a resumed map for a node that held nothing was taken")
	}
}

// BenchmarkFakeNodeFullMap measures what one fake node spends on a full
// map of 1,999 peers once its frame is opened: scanning the records and
// holding the peers (per op; divide by 1,999 for a peer).
func BenchmarkFakeNodeFullMap(b *testing.B) {
	const n = 2000
	f, err := NewFleet(FleetOptions{URL: "http://127.0.0.1:9", N: n})
	if err != nil {
		b.Fatal(err)
	}
	var recs [][]byte
	for i := 1; i < n; i++ {
		recs = append(recs, wire.AppendPeerRecord(nil, &wire.Node{Key: f.keys[i], Rev: uint64(i), Online: true, Name: "n", ID: wire.NodeID(i),
			Addresses: []netip.Prefix{netip.MustParsePrefix("100.64.0.1/32")}, Endpoints: []netip.AddrPort{netip.MustParseAddrPort("198.51.100.7:41641")}}))
	}
	payload := wire.AppendBinaryMapFrame(nil, []byte(`{"self":{"name":"n0"}}`), wire.ListPeers, recs, nil)
	nd := f.nodes[0]
	b.SetBytes(int64(len(payload)))
	for b.Loop() {
		sf, err := wire.ScanMapFrame(payload)
		if err != nil {
			b.Fatal(err)
		}
		if err := nd.Message([]*wire.ScannedFrame{sf}, true); err != nil {
			b.Fatal(err)
		}
	}
	if f.badFulls.Load() != 0 {
		b.Fatalf("bad full maps: %s", *f.badFull.Load())
	}
}

// TestKeyIndex checks that the fleet's key index finds every node's key
// at its index, including keys whose probes start in the same slot, and
// finds no key that is not the fleet's.
func TestKeyIndex(t *testing.T) {
	keys := make([]key.NodePublic, 3000)
	for i := range keys {
		keys[i] = key.NewNode().Public()
	}
	// Two keys that differ past their first eight bytes start their
	// probes in the same slot.
	raw := keys[0].Raw32()
	raw[31] ^= 1
	keys[1] = key.NodePublicFromRaw32(raw)
	x := newKeyIndex(keys)
	for i, k := range keys {
		if j, ok := x.find(k); !ok || j != i {
			t.Fatalf("find(key %d) = %d, %v", i, j, ok)
		}
	}
	raw[31] ^= 2
	for _, k := range []key.NodePublic{key.NewNode().Public(), key.NodePublicFromRaw32(raw), {}} {
		if j, ok := x.find(k); ok {
			t.Errorf("find(%v) = %d, want none: not a key of the fleet", k, j)
		}
	}
}
