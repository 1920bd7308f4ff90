package coordinator

import (
	"slices"
	"testing"

	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// TestChangedSince checks the change log's walk: each node once, at its
// last change; none whose slot was freed since, nor the old changes of a
// slot another node took since; none of a node no stream may have been
// sent (-1).
func TestChangedSince(t *testing.T) {
	ms := &streams{peerStates: make(map[key.NodePublic]*peerState)}
	add := func() *peerState {
		ps := &peerState{key: key.NewNode().Public(), slot: len(ms.peerSlots)}
		if n := len(ms.freeSlots); n > 0 {
			ps.slot = ms.freeSlots[n-1]
			ms.freeSlots = ms.freeSlots[:n-1]
			ms.peerSlots[ps.slot] = ps
		} else {
			ms.peerSlots = append(ms.peerSlots, ps)
			ms.slotViews = append(ms.slotViews, slotView{})
		}
		ms.peerStates[ps.key] = ps
		ms.setViewLocked(ps, &peerView{node: &wire.Node{Key: ps.key}})
		return ps
	}
	// change logs a change of ps (nil: a node no stream was sent).
	change := func(ps *peerState) {
		ms.changeVer++
		if ps == nil {
			ms.changes = append(ms.changes, -1)
			return
		}
		ms.changes = append(ms.changes, int32(ps.slot))
		ms.slotViews[ps.slot].logVer = ms.changeVer
	}
	a, b, c := add(), add(), add()
	change(a)   // 1
	change(b)   // 2
	change(nil) // 3
	change(a)   // 4: a's last
	change(c)   // 5: c's, then c is removed and its slot freed
	c.refs = 0  // no stream holds it
	ms.setViewLocked(c, nil)
	change(c) // 6
	ms.dropLocked(c)
	d := add() // takes c's slot
	change(b)  // 7: b's last
	if d.slot != c.slot {
		t.Fatalf("d took slot %d, want c's %d", d.slot, c.slot)
	}
	walk := func(from uint64) []int {
		var got []int
		ms.changedSinceLocked(from, func(slot int, sv *slotView) {
			if sv.view != ms.peerSlots[slot].view {
				t.Errorf("slot %d: the walk's view is not the node's", slot)
			}
			got = append(got, slot)
		})
		return got
	}
	if got, want := walk(0), []int{a.slot, b.slot}; !slices.Equal(got, want) {
		t.Errorf("changed since 0: slots %v, want %v (a, b; not c's old changes)", got, want)
	}
	change(d) // 8
	if got, want := walk(4), []int{b.slot, d.slot}; !slices.Equal(got, want) {
		t.Errorf("changed since 4: slots %v, want %v", got, want)
	}
	if got := walk(8); len(got) != 0 {
		t.Errorf("changed since the last change: slots %v, want none", got)
	}
}
