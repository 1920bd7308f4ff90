package wire

import (
	"encoding/json"
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"

	"beam.dev/beam/types/key"
)

// scanAll reads every peer and online state of the frame p.
func scanAll(t *testing.T, p []byte) (*ScannedFrame, []PeerRef, []*Node, map[key.NodePublic]bool) {
	t.Helper()
	f, err := ScanMapFrame(p)
	if err != nil {
		t.Fatalf("ScanMapFrame: %v", err)
	}
	var refs []PeerRef
	var nodes []*Node
	err = f.Peers(func(ref PeerRef) error {
		n := ref.Node
		if n == nil {
			if n, err = ParsePeerBody(ref.Record); err != nil {
				return err
			}
		}
		ref.Record = nil // valid during the call only
		refs, nodes = append(refs, ref), append(nodes, n)
		return nil
	})
	if err != nil {
		t.Fatalf("Peers: %v", err)
	}
	online := map[key.NodePublic]bool{}
	f.Online(func(k key.NodePublic, on bool) { online[k] = on })
	return f, refs, nodes, online
}

// TestScanMapFrame checks that scanning a frame gives what decoding it
// does: the head, the list, each peer's key, revision and online state
// (and its record parsing to the decoded node), and the online states;
// for binary frames and JSON ones.
func TestScanMapFrame(t *testing.T) {
	a := fullNode()
	b := &Node{Key: key.NewNode().Public(), Name: "b"}                       // no revision
	c := &Node{Key: key.NewNode().Public(), Rev: 7, Online: true, Name: "c"} // a short record with a revision
	recs := [][]byte{AppendPeerRecord(nil, a), AppendPeerRecord(nil, b), AppendPeerRecord(nil, c)}
	head := []byte(`{"more":true,"peers_removed":["` + b.Key.String() + `"]}`)
	online := map[key.NodePublic]bool{a.Key: true, b.Key: false}
	jsonFrame := func(mr *MapResponse) []byte {
		p, err := json.Marshal(mr)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name   string
		frame  []byte
		list   PeerList
		peers  []*Node
		online map[key.NodePublic]bool
	}{
		{"full map", AppendBinaryMapFrame(nil, head, ListPeers, recs, nil), ListPeers, []*Node{a, b, c}, nil},
		{"empty full map", AppendBinaryMapFrame(nil, head, ListPeers, nil, nil), ListPeers, nil, nil},
		{"changed and online", AppendBinaryMapFrame(nil, head, ListPeersChanged, recs[2:], online), ListPeersChanged, []*Node{c}, online},
		{"online only", AppendBinaryMapFrame(nil, head, ListNone, nil, online), ListNone, nil, online},
		{"json full map", jsonFrame(&MapResponse{More: true, PeersRemoved: []key.NodePublic{b.Key}, Peers: []*Node{a, b, c}}), ListPeers, []*Node{a, b, c}, nil},
		{"json changed and online", jsonFrame(&MapResponse{More: true, PeersRemoved: []key.NodePublic{b.Key}, PeersChanged: []*Node{c}, PeersOnline: online}), ListPeersChanged, []*Node{c}, online},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, refs, nodes, on := scanAll(t, tt.frame)
			if !f.Head.More || len(f.Head.PeersRemoved) != 1 || f.Head.PeersRemoved[0] != b.Key {
				t.Errorf("head: More %v, PeersRemoved %v; want true, [%v]", f.Head.More, f.Head.PeersRemoved, b.Key)
			}
			if f.List != tt.list || f.Count() != len(tt.peers) {
				t.Errorf("list %d of %d peers, want %d of %d", f.List, f.Count(), tt.list, len(tt.peers))
			}
			if diff := cmp.Diff(tt.peers, nodes, cmpNode); diff != "" {
				t.Errorf("peers (-want +got):\n%s", diff)
			}
			for i, ref := range refs {
				p := tt.peers[i]
				if ref.Key != p.Key || ref.Rev != p.Rev || ref.Online != p.Online || ref.Unknown != p.Unknown {
					t.Errorf("peer %d: key %v rev %d online %v unknown %v; want %v %d %v %v",
						i, ref.Key.ShortString(), ref.Rev, ref.Online, ref.Unknown, p.Key.ShortString(), p.Rev, p.Online, p.Unknown)
				}
			}
			if len(on) != len(tt.online) {
				t.Errorf("online states %v, want %v", on, tt.online)
			}
			for k, want := range tt.online {
				if got, ok := on[k]; !ok || got != want {
					t.Errorf("online state of %v: %v (present %v), want %v", k.ShortString(), got, ok, want)
				}
			}
		})
	}
}

// TestScanMapFrameMalformed checks that the scan refuses frames whose
// framing, record lengths, flags, keys or revisions are broken.
func TestScanMapFrameMalformed(t *testing.T) {
	rec := AppendPeerRecord(nil, fullNode())
	frame := func(recs ...[]byte) []byte {
		return AppendBinaryMapFrame(nil, []byte(`{}`), ListPeersChanged, recs, nil)
	}
	body := func(b []byte) []byte { return append(appendUvarintForTest(nil, uint64(len(b))), b...) }
	k := key.NewNode().Public().Raw32()
	badOnline := AppendBinaryMapFrame(nil, []byte(`{}`), ListNone, nil, map[key.NodePublic]bool{key.NewNode().Public(): true})
	badOnline[len(badOnline)-1] = 2
	tests := []struct {
		name  string
		frame []byte
	}{
		{"record past the frame", frame(rec)[:len(frame(rec))-5]},
		{"unknown list", AppendBinaryMapFrame(nil, []byte(`{}`), 9, nil, nil)},
		{"unknown flags", frameWith(func(b []byte) []byte {
			return append(appendUvarintForTest(b, peerKnownFlags+1), k[:]...)
		})},
		{"short key", frame(body(append(appendUvarintForTest(nil, 0), k[:20]...)))},
		{"revision flag without a revision", frame(body(append(appendUvarintForTest(nil, peerHasRev), k[:]...)))},
		{"online state not 0 or 1", badOnline},
		{"head with peers", AppendBinaryMapFrame(nil, []byte(`{"peers_removed":[],"peers":[]}`), ListNone, nil, nil)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := ScanMapFrame(tt.frame)
			if err == nil {
				err = f.Peers(func(PeerRef) error { return nil })
			}
			if !errors.Is(err, ErrBadPeerRecord) {
				t.Errorf("err = %v, want ErrBadPeerRecord", err)
			}
		})
	}
}
