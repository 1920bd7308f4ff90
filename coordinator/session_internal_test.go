package coordinator

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// TestSessionDelivery checks the bookkeeping an expose uses to answer
// only after the edges' streams have written the new route.
func TestSessionDelivery(t *testing.T) {
	ss := newSession(key.NewNode().Public(), 1)
	if !ss.waitDelivered(t.Context(), ss.generation()) {
		t.Fatal("nothing marked, yet waitDelivered did not return true")
	}
	ss.mark(key.NewNode().Public(), false)
	gen := ss.generation()

	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
	if ss.waitDelivered(ctx, gen) {
		t.Fatal("waitDelivered returned true before the stream wrote anything")
	}
	cancel()

	done := make(chan bool, 1)
	go func() { done <- ss.waitDelivered(t.Context(), gen) }()
	_, _, _, _, _, took := ss.take()
	if took != gen {
		t.Fatalf("take covers mark %d, want %d", took, gen)
	}
	ss.delivered(took)
	select {
	case ok := <-done:
		if !ok {
			t.Fatal("waitDelivered returned false after delivery")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("waitDelivered did not wake on delivery")
	}

	// A later mark is not covered by an earlier delivery; an ended stream
	// releases waiters with false.
	ss.markDERP()
	gen2 := ss.generation()
	go func() { done <- ss.waitDelivered(t.Context(), gen2) }()
	ss.delivered(gen)
	time.Sleep(10 * time.Millisecond) // let the waiter block, so end must wake it
	ss.end(wire.CodeForbidden, "replaced")
	select {
	case ok := <-done:
		if ok {
			t.Fatal("waitDelivered returned true for an undelivered mark")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("waitDelivered did not return when the stream ended")
	}
}

// TestMergeHeld checks that online flips held back join the next delta
// only where they are not stale: a newer flip, a peer sent whole (its
// view carries its state) or removed wins over them.
func TestMergeHeld(t *testing.T) {
	a, b, c, d, e := key.NewNode().Public(), key.NewNode().Public(), key.NewNode().Public(), key.NewNode().Public(), key.NewNode().Public()
	held := func(states map[key.NodePublic]bool) map[key.NodePublic]*peerView {
		m := make(map[key.NodePublic]*peerView)
		for k, on := range states {
			m[k] = &peerView{node: &wire.Node{Key: k, Online: on}}
		}
		return m
	}
	tests := []struct {
		name string
		f    *mapFrame
		held map[key.NodePublic]*peerView
		want map[key.NodePublic]bool
	}{
		{
			name: "only held",
			f:    &mapFrame{resp: &wire.MapResponse{}},
			held: held(map[key.NodePublic]bool{a: true, b: false}),
			want: map[key.NodePublic]bool{a: true, b: false},
		},
		{
			name: "newer flip, whole peer and removal win",
			f: &mapFrame{
				resp:   &wire.MapResponse{PeersRemoved: []key.NodePublic{c}},
				peers:  []*peerView{{node: &wire.Node{Key: b, Online: false}}},
				online: []*peerView{{node: &wire.Node{Key: a, Online: false}}},
			},
			held: held(map[key.NodePublic]bool{a: true, b: true, c: true, d: true}),
			want: map[key.NodePublic]bool{a: false, d: true},
		},
		{
			name: "newer keyed flip wins",
			f:    &mapFrame{resp: &wire.MapResponse{PeersOnline: map[key.NodePublic]bool{e: true}}},
			held: held(map[key.NodePublic]bool{e: false}),
			want: map[key.NodePublic]bool{e: true},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mergeHeld(tt.f, tt.held)
			got := make(map[key.NodePublic]bool)
			n := 0
			tt.f.onlineStates().each(func(k key.NodePublic, on bool) { got[k] = on; n++ })
			if n != len(tt.want) || len(got) != n {
				t.Fatalf("PeersOnline = %v, want %v", got, tt.want)
			}
			for k, on := range tt.want {
				if g, ok := got[k]; !ok || g != on {
					t.Errorf("PeersOnline[%s] = %v, %v; want %v", k.ShortString(), g, ok, on)
				}
			}
		})
	}
}

// TestEncodeOnline checks that a frame's PeersOnline, written by hand
// rather than by encoding/json (or in a binary map frame), decodes to the
// same map beside the message's other fields.
func TestEncodeOnline(t *testing.T) {
	a, b := key.NewNode().Public(), key.NewNode().Public()
	peer := &peerView{node: &wire.Node{ID: 7, Key: key.NewNode().Public(), Name: "p"}}
	tests := []struct {
		name  string
		f     *mapFrame
		peers int
	}{
		{"alone", &mapFrame{resp: &wire.MapResponse{}}, 0},
		{"with other fields", &mapFrame{resp: &wire.MapResponse{KeepAlive: true, PeersRemoved: []key.NodePublic{b}}}, 0},
		{"with changed peers", &mapFrame{resp: &wire.MapResponse{}, peers: []*peerView{peer}}, 1},
	}
	for _, tt := range tests {
		for _, c := range []struct {
			form  wireForm
			views bool
		}{{formJSON, false}, {formBinary, false}, {formCompact, false}, {formJSON, true}, {formBinary, true}, {formCompact, true}} {
			bin := c.form.binary()
			// With views, a's state comes as a delta gathers it (the
			// frame's online views), b's as a held one. Neither has an
			// ID: compact frames carry them by key too.
			t.Run(fmt.Sprintf("%s/form=%d/views=%v", tt.name, c.form, c.views), func(t *testing.T) {
				online := map[key.NodePublic]bool{a: true, b: false}
				tt.f.resp.PeersOnline, tt.f.online = online, nil
				if c.views {
					tt.f.resp.PeersOnline = map[key.NodePublic]bool{b: false}
					tt.f.online = []*peerView{{node: &wire.Node{Key: a, Online: true}}}
				}
				want := *tt.f.resp
				bodies, err := tt.f.encode(true, c.form)
				if err != nil {
					t.Fatal(err)
				}
				if len(bodies) != 1 {
					t.Fatalf("%d bodies, want 1", len(bodies))
				}
				// Online states alone make a binary frame too.
				if isBin := bodies[0][0] == wire.BinaryMapFrame; isBin != bin {
					t.Errorf("binary frame %v, want %v", isBin, bin)
				}
				got, err := wire.DecodeMapFrame(bodies[0])
				if err != nil {
					t.Fatalf("decode %q: %v", bodies[0], err)
				}
				if len(got.PeersOnline) != 2 || !got.PeersOnline[a] || got.PeersOnline[b] {
					t.Errorf("PeersOnline = %v, want %v", got.PeersOnline, online)
				}
				if got.KeepAlive != want.KeepAlive || len(got.PeersRemoved) != len(want.PeersRemoved) || len(got.PeersChanged) != tt.peers {
					t.Errorf("decoded %q: other fields lost", bodies[0])
				}
				if tt.f.onlineStates().len() != 2 {
					t.Error("encode dropped the frame's online states")
				}
			})
		}
	}
}

// TestEncodeSplitBinary checks that a delta of many changed peers and
// online states, split across binary frames, joins into the message as
// JSON frames carry it: every peer once, in order, and every online state.
func TestEncodeSplitBinary(t *testing.T) {
	defer func(old int) { frameSplitAt = old }(frameSplitAt)
	frameSplitAt = 2 << 10
	var peers []*peerView
	for i := range 100 {
		peers = append(peers, &peerView{node: &wire.Node{ID: wire.NodeID(i + 1), Key: key.NewNode().Public(), Name: fmt.Sprintf("p%d", i),
			DNSName: fmt.Sprintf("p%d.default.beam.internal.", i)}})
	}
	online := map[key.NodePublic]bool{}
	for range 8 {
		online[key.NewNode().Public()] = true
	}
	for _, form := range []wireForm{formJSON, formBinary, formCompact} {
		bin := form.binary()
		t.Run(fmt.Sprintf("form=%d", form), func(t *testing.T) {
			f := &mapFrame{resp: &wire.MapResponse{PeersOnline: online, DNS: &wire.DNSConfig{Domain: "d"}}, peers: peers}
			bodies, err := f.encode(true, form)
			if err != nil {
				t.Fatal(err)
			}
			if len(bodies) < 3 {
				t.Fatalf("%d bodies, want the delta split", len(bodies))
			}
			var whole *wire.MapResponse
			for i, b := range bodies {
				if len(b) > frameSplitAt {
					t.Errorf("body %d is %d bytes, over %d", i, len(b), frameSplitAt)
				}
				if isBin := b[0] == wire.BinaryMapFrame; isBin != bin {
					t.Errorf("body %d binary %v, want %v", i, isBin, bin)
				}
				mr, err := wire.DecodeMapFrame(b)
				if err != nil {
					t.Fatalf("body %d: %v", i, err)
				}
				if mr.More != (i < len(bodies)-1) {
					t.Errorf("body %d: More = %v", i, mr.More)
				}
				if whole == nil {
					whole = mr
				} else {
					whole.Merge(mr)
				}
			}
			if len(whole.PeersChanged) != len(peers) || len(whole.PeersOnline) != len(online) || whole.DNS == nil {
				t.Fatalf("joined: %d peers, %d online, DNS %v; want %d, %d, set", len(whole.PeersChanged), len(whole.PeersOnline), whole.DNS, len(peers), len(online))
			}
			for i, p := range whole.PeersChanged {
				if p.Key != peers[i].node.Key || p.Name != peers[i].node.Name {
					t.Errorf("peer %d = %s, want %s", i, p.Name, peers[i].node.Name)
				}
			}
		})
	}
}

// TestEncodeCompactSuffixes checks compact frames of peers of several
// DNS suffixes (networks) and none: every peer decodes as it is, as a
// delta, as a full map of chunks, and split across frames (each frame
// names its suffix), and the peers of the frame's suffix go compact.
func TestEncodeCompactSuffixes(t *testing.T) {
	defer func(old int) { frameSplitAt = old }(frameSplitAt)
	var views []*peerView
	for i := range 60 {
		n := &wire.Node{ID: wire.NodeID(i + 1), Key: key.NewNode().Public(), Name: fmt.Sprintf("p%d", i), Hostname: fmt.Sprintf("p%d", i)}
		switch i % 3 {
		case 0:
			n.DNSName = n.Name + ".a.beam.internal."
		case 1:
			n.DNSName = n.Name + ".b.beam.internal."
		}
		views = append(views, &peerView{node: n})
	}
	for _, tt := range []struct {
		name    string
		splitAt int
		frame   func() *mapFrame
	}{
		{"delta", 4 << 20, func() *mapFrame { return &mapFrame{resp: &wire.MapResponse{}, peers: views} }},
		{"delta split", 1 << 10, func() *mapFrame { return &mapFrame{resp: &wire.MapResponse{}, peers: views} }},
		{"chunks", 4 << 20, func() *mapFrame {
			// One chunk of suffix a and none (compact), one mixed and
			// one of suffix b (formBinary).
			var a, b []*peerView
			for _, pv := range views[30:] {
				if sfx := wire.PeerDNSSuffix(pv.node); sfx == "" || sfx[0] == 'a' {
					a = append(a, pv)
				} else {
					b = append(b, pv)
				}
			}
			return &mapFrame{resp: &wire.MapResponse{}, full: true, selfBlock: -1,
				chunks: []*fullChunk{{views: a}, {block: 1, views: views[:30]}, {block: 2, views: b}}}
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			frameSplitAt = tt.splitAt
			f := tt.frame()
			want := f.peers
			if f.chunks != nil {
				want = f.chunkViews()
			}
			bodies, err := f.encode(true, formCompact)
			if err != nil {
				t.Fatal(err)
			}
			if tt.splitAt < 4<<20 && len(bodies) < 2 {
				t.Fatalf("%d bodies, want several", len(bodies))
			}
			var got []*wire.Node
			compact := 0
			for _, b := range bodies {
				f, err := wire.ScanMapFrame(b)
				if err != nil {
					t.Fatal(err)
				}
				sfx := f.Head.PeerDNSSuffix
				if err := f.Peers(func(ref wire.PeerRef) error {
					n, err := ref.Parse()
					if err != nil {
						return err
					}
					rec := binary.AppendUvarint(nil, uint64(len(ref.Record)))
					rec = append(rec, ref.Record...)
					if bytes.Equal(rec, wire.AppendPeerRecordCompact(nil, n, sfx)) && !bytes.Equal(rec, wire.AppendPeerRecord(nil, n)) {
						compact++
					}
					return nil
				}); err != nil {
					t.Fatal(err)
				}
				mr, err := wire.DecodeMapFrame(b)
				if err != nil {
					t.Fatal(err)
				}
				got = append(append(got, mr.Peers...), mr.PeersChanged...)
			}
			var wantNodes []*wire.Node
			for _, pv := range want {
				wantNodes = append(wantNodes, pv.node)
			}
			wj, _ := json.MarshalIndent(wantNodes, "", " ")
			gj, _ := json.MarshalIndent(got, "", " ")
			if diff := cmp.Diff(string(wj), string(gj)); diff != "" {
				t.Errorf("decoded peers (-want +got):\n%s", diff)
			}
			if compact < len(views)/3 {
				t.Errorf("%d compact records, want %d at least", compact, len(views)/3)
			}
		})
	}
}
