package coordinator

import (
	"context"
	"fmt"
	"testing"
	"time"

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
	tests := []struct {
		name string
		f    *mapFrame
		held map[key.NodePublic]bool
		want map[key.NodePublic]bool
	}{
		{
			name: "only held",
			f:    &mapFrame{resp: &wire.MapResponse{}},
			held: map[key.NodePublic]bool{a: true, b: false},
			want: map[key.NodePublic]bool{a: true, b: false},
		},
		{
			name: "newer flip, whole peer and removal win",
			f: &mapFrame{
				resp:   &wire.MapResponse{PeersRemoved: []key.NodePublic{c}},
				peers:  []*peerView{{node: &wire.Node{Key: b, Online: false}}},
				online: []*peerView{{node: &wire.Node{Key: a, Online: false}}},
			},
			held: map[key.NodePublic]bool{a: true, b: true, c: true, d: true},
			want: map[key.NodePublic]bool{a: false, d: true},
		},
		{
			name: "nothing held",
			f:    &mapFrame{resp: &wire.MapResponse{PeersOnline: map[key.NodePublic]bool{e: true}}},
			held: map[key.NodePublic]bool{},
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
		for _, c := range []struct{ bin, views bool }{{false, false}, {true, false}, {false, true}, {true, true}} {
			bin := c.bin
			// With views, a's state comes as a delta gathers it (the
			// frame's online views), b's as a held one.
			t.Run(fmt.Sprintf("%s/binary=%v/views=%v", tt.name, bin, c.views), func(t *testing.T) {
				online := map[key.NodePublic]bool{a: true, b: false}
				tt.f.resp.PeersOnline, tt.f.online = online, nil
				if c.views {
					tt.f.resp.PeersOnline = map[key.NodePublic]bool{b: false}
					tt.f.online = []*peerView{{node: &wire.Node{Key: a, Online: true}}}
				}
				want := *tt.f.resp
				bodies, err := tt.f.encode(true, bin)
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
	for _, bin := range []bool{false, true} {
		t.Run(fmt.Sprintf("binary=%v", bin), func(t *testing.T) {
			f := &mapFrame{resp: &wire.MapResponse{PeersOnline: online, DNS: &wire.DNSConfig{Domain: "d"}}, peers: peers}
			bodies, err := f.encode(true, bin)
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
