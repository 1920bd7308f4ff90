package coordclient

import (
	"context"
	"encoding/binary"
	"net/http"
	"testing"
	"time"

	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// rawFrame seals payload, an opened frame, to nk and writes it.
func (fc *fakeCoord) rawFrame(w http.ResponseWriter, nk key.NodePublic, payload []byte) {
	sealed := fc.priv.SealTo(nk, payload)
	var hdr [4]byte
	binary.BigEndian.PutUint32(hdr[:], uint32(len(sealed)))
	w.Write(hdr[:])
	w.Write(sealed)
	w.(http.Flusher).Flush()
}

// scannedMsg is what testHandler saw of one message.
type scannedMsg struct {
	first  bool
	frames int
	peers  int // in Peers and PeersChanged, over its frames
}

// testHandler holds the digest of the peers of full maps and records the
// messages it gets.
type testHandler struct {
	held    wire.PeersDigest
	valid   bool
	forgets int
	msgs    []scannedMsg
	onMsg   func(first bool)
}

func (h *testHandler) Digest() (wire.PeersDigest, bool) { return h.held, h.valid }

func (h *testHandler) Forget() { h.held, h.valid = wire.PeersDigest{}, false; h.forgets++ }

func (h *testHandler) Message(frames []*wire.ScannedFrame, first bool) error {
	m := scannedMsg{first: first, frames: len(frames)}
	if first {
		h.held, h.valid = wire.PeersDigest{}, true
	}
	for _, f := range frames {
		err := f.Peers(func(p wire.PeerRef) error {
			m.peers++
			if f.List == wire.ListPeers {
				h.held.Add(p.Key, p.Rev)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	h.msgs = append(h.msgs, m)
	h.onMsg(first)
	return nil
}

// TestRunScanned checks that RunScanned hands the handler whole messages
// (a full map split over two binary frames with a keepalive between them
// as one message of two frames), offers the handler's digest with the
// next stream, and after a malformed frame has the handler forget its
// peers and offers none.
func TestRunScanned(t *testing.T) {
	a := &wire.Node{Key: key.NewNode().Public(), Rev: 1, Name: "a"}
	b := &wire.Node{Key: key.NewNode().Public(), Rev: 2, Name: "b"}
	rec := func(n *wire.Node) [][]byte { return [][]byte{wire.AppendPeerRecord(nil, n)} }
	var want wire.PeersDigest
	want.Add(a.Key, a.Rev)
	want.Add(b.Key, b.Rev)
	fc, cl := newFake(t, func(fc *fakeCoord, w http.ResponseWriter, r *http.Request, nk key.NodePublic) {
		fc.mu.Lock()
		n := fc.streams
		fc.mu.Unlock()
		switch n {
		case 1:
			fc.rawFrame(w, nk, wire.AppendBinaryMapFrame(nil, []byte(`{"more":true,"self":{"name":"me"}}`), wire.ListPeers, rec(a), nil))
			fc.frame(w, nk, &wire.MapResponse{KeepAlive: true})
			fc.rawFrame(w, nk, wire.AppendBinaryMapFrame(nil, []byte(`{}`), wire.ListPeers, rec(b), nil))
			fc.rawFrame(w, nk, wire.AppendBinaryMapFrame(nil, []byte(`{}`), wire.ListPeersChanged, rec(a), map[key.NodePublic]bool{b.Key: true}))
		case 2:
			fc.rawFrame(w, nk, wire.AppendBinaryMapFrame(nil, []byte(`{}`), 9, nil, nil)) // an unknown list
		default:
			fc.rawFrame(w, nk, wire.AppendBinaryMapFrame(nil, []byte(`{}`), wire.ListPeers, rec(a), nil))
			<-r.Context().Done()
		}
	})
	fc.keepMS = "60000"
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	h := &testHandler{}
	firsts := 0
	h.onMsg = func(first bool) {
		if first {
			if firsts++; firsts == 2 {
				cancel()
			}
		}
	}
	if err := cl.RunScanned(ctx, h); err != nil {
		t.Fatalf("RunScanned = %v, want nil once canceled", err)
	}
	wantMsgs := []scannedMsg{{true, 2, 2}, {false, 1, 1}, {true, 1, 1}}
	if len(h.msgs) != len(wantMsgs) {
		t.Fatalf("messages %+v, want %+v", h.msgs, wantMsgs)
	}
	for i := range wantMsgs {
		if h.msgs[i] != wantMsgs[i] {
			t.Errorf("message %d = %+v, want %+v", i, h.msgs[i], wantMsgs[i])
		}
	}
	if h.forgets != 1 {
		t.Errorf("handler forgot its peers %d times, want 1 (the malformed frame)", h.forgets)
	}
	fc.mu.Lock()
	defer fc.mu.Unlock()
	if len(fc.offered) != 3 {
		t.Fatalf("%d streams, want 3", len(fc.offered))
	}
	if fc.offered[0] != nil || fc.offered[2] != nil {
		t.Errorf("streams 1 and 3 offered %v and %v, want no digest", fc.offered[0], fc.offered[2])
	}
	if got := fc.offered[1]; got == nil || *got != want {
		t.Errorf("stream 2 offered %v, want the full map's digest %v", got, want)
	}
}
