package wire

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"
	"time"

	"beam.dev/beam/types/key"
)

// referenceApply is Apply's peer handling as it was before the index:
// every peer copied into a map and the whole list sorted.
func referenceApply(peers []*Node, resp *MapResponse) []*Node {
	byKey := map[key.NodePublic]*Node{}
	if resp.Peers != nil {
		for _, p := range resp.Peers {
			if p != nil {
				pc := *p
				byKey[p.Key] = &pc
			}
		}
	} else {
		for _, p := range peers {
			pc := *p
			byKey[p.Key] = &pc
		}
	}
	for _, p := range resp.PeersChanged {
		if p != nil {
			pc := *p
			byKey[p.Key] = &pc
		}
	}
	for _, k := range resp.PeersRemoved {
		delete(byKey, k)
	}
	for k, online := range resp.PeersOnline {
		if p, ok := byKey[k]; ok {
			p.Online, p.Unknown = online, false
		}
	}
	return slices.SortedFunc(maps.Values(byKey), comparePeers)
}

// TestApplyMatchesReference applies random messages (full maps, changes
// that rename or keep a peer's place, removals, online flips, the same key
// several times in one message) and checks each netmap's peers against a
// rebuild from scratch, that earlier netmaps stay as they were, that
// PeerByKey finds every peer, and that PeerChanges reports exactly the
// keys whose peer changed.
func TestApplyMatchesReference(t *testing.T) {
	for _, size := range []int{0, 3, 40, 200} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(uint64(size), 7))
			keys := make([]key.NodePublic, size*2+4)
			for i := range keys {
				keys[i] = key.NodePublicFromRaw32([32]byte{byte(i), byte(i >> 8), 9})
			}
			node := func() *Node {
				return &Node{
					Key:    keys[rng.IntN(len(keys))],
					ID:     NodeID(rng.IntN(4)),
					Name:   fmt.Sprintf("n%d", rng.IntN(size+3)), // names collide: ID and key order them
					Online: rng.IntN(2) == 0, Unknown: rng.IntN(5) == 0,
					HomeDERP: rng.IntN(100),
				}
			}
			full := &MapResponse{Self: &Node{Name: "self"}, Peers: []*Node{}}
			for range size {
				full.Peers = append(full.Peers, node())
			}
			full.Peers = append(full.Peers, nil)
			var (
				nm   = (*NetMap)(nil).Apply(full, time.Now())
				want = referenceApply(nil, full)
				hist []*NetMap
				vals [][]Node
			)
			for step := range 200 {
				var mr MapResponse
				switch r := rng.IntN(20); {
				case r == 0:
					mr.Peers = []*Node{}
					for range rng.IntN(size + 1) {
						mr.Peers = append(mr.Peers, node())
					}
				default:
					for range rng.IntN(4) {
						mr.PeersChanged = append(mr.PeersChanged, node())
					}
					for range rng.IntN(3) {
						mr.PeersRemoved = append(mr.PeersRemoved, keys[rng.IntN(len(keys))])
					}
					if rng.IntN(2) == 0 {
						mr.PeersOnline = map[key.NodePublic]bool{}
						for range rng.IntN(4) {
							mr.PeersOnline[keys[rng.IntN(len(keys))]] = rng.IntN(2) == 0
						}
					}
				}
				prev := nm
				nm = nm.Apply(&mr, time.Now())
				want = referenceApply(want, &mr)
				if len(want) != len(nm.Peers) || (len(want) > 0 && !reflect.DeepEqual(want, nm.Peers)) {
					t.Fatalf("step %d: peers differ from a rebuild:\ngot  %v\nwant %v", step, names(nm.Peers), names(want))
				}
				for _, p := range want {
					if got := nm.PeerByKey(p.Key); got == nil || !reflect.DeepEqual(*got, *p) {
						t.Fatalf("step %d: PeerByKey(%v) = %v, want %v", step, p.Key.ShortString(), got, p)
					}
				}
				// PeerChanges against a brute-force comparison.
				wantCh := map[key.NodePublic]bool{}
				for _, k := range keys {
					if prev.PeerByKey(k) != nm.PeerByKey(k) {
						wantCh[k] = true
					}
				}
				gotCh := map[key.NodePublic]bool{}
				nm.PeerChanges(prev, func(was, now *Node) {
					k := now
					if k == nil {
						k = was
					}
					if gotCh[k.Key] {
						t.Fatalf("step %d: PeerChanges reported %v twice", step, k.Key.ShortString())
					}
					gotCh[k.Key] = true
					if was != prev.PeerByKey(k.Key) || now != nm.PeerByKey(k.Key) {
						t.Fatalf("step %d: PeerChanges(%v) gave %v -> %v", step, k.Key.ShortString(), was, now)
					}
				})
				if !maps.Equal(gotCh, wantCh) {
					t.Fatalf("step %d: PeerChanges reported %d keys, want %d", step, len(gotCh), len(wantCh))
				}
				hist = append(hist, nm)
				v := make([]Node, len(nm.Peers))
				for i, p := range nm.Peers {
					v[i] = *p
				}
				vals = append(vals, v)
			}
			for i, h := range hist {
				for j, p := range h.Peers {
					if !reflect.DeepEqual(*p, vals[i][j]) {
						t.Fatalf("netmap %d changed after later Applies: peer %d is %v, was %v", i, j, *p, vals[i][j])
					}
				}
			}
		})
	}
}

// TestApplyHandMadeNetMap applies deltas to netmaps Apply did not make:
// unsorted, decoded, or changed by hand after Apply.
func TestApplyHandMadeNetMap(t *testing.T) {
	a, b, c := key.NewNode().Public(), key.NewNode().Public(), key.NewNode().Public()
	nm := &NetMap{Peers: []*Node{{Key: b, Name: "zed"}, {Key: a, Name: "alpha"}}}
	nm2 := nm.Apply(&MapResponse{PeersChanged: []*Node{{Key: c, Name: "mid"}}}, time.Now())
	if got := names(nm2.Peers); !slices.Equal(got, []string{"alpha", "mid", "zed"}) {
		t.Fatalf("got %v, want alpha mid zed", got)
	}
	// A caller replaces Peers of a copy: its index no longer applies.
	cp := *nm2
	cp.Peers = []*Node{{Key: a, Name: "alpha"}}
	if p := cp.PeerByKey(c); p != nil {
		t.Fatalf("PeerByKey found %v in a list without it", p)
	}
	nm3 := cp.Apply(&MapResponse{PeersOnline: map[key.NodePublic]bool{a: true}}, time.Now())
	if len(nm3.Peers) != 1 || !nm3.Peers[0].Online {
		t.Fatalf("got %+v, want alpha online alone", nm3.Peers)
	}
}

func names(ps []*Node) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.Name)
	}
	return out
}

func BenchmarkApplyOnePeer(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		peers := make([]*Node, n)
		for i := range peers {
			peers[i] = &Node{Key: key.NodePublicFromRaw32([32]byte{byte(i), byte(i >> 8), 1}), Name: fmt.Sprintf("peer-%d", i), ID: NodeID(i)}
		}
		nm := (*NetMap)(nil).Apply(&MapResponse{Peers: peers}, time.Now())
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			b.ReportAllocs()
			on := false
			for b.Loop() {
				nm = nm.Apply(&MapResponse{PeersOnline: map[key.NodePublic]bool{peers[n/2].Key: on}}, time.Now())
				on = !on
			}
		})
	}
}
