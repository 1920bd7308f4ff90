package coordinator_test

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"beam.dev/beam/coordinator"
	"beam.dev/beam/wire"
)

// TestRemovedNodesFreeSlots: round after round, nodes join, stream, and
// are removed while other nodes stream throughout. The streams' table of
// nodes stays the size of the nodes there are at once (a removed node's
// slot is taken by a later one), and every stream still gets the right
// deltas: those streaming throughout see each round's nodes come and go
// and a peer's endpoint change, and each new node sees its peers.
func TestRemovedNodesFreeSlots(t *testing.T) {
	const stayers, batch, rounds = 3, 8, 10
	c := startCoord(t, func(o *coordinator.Options) { o.KeepAliveInterval = time.Minute })
	ak := c.authKey(t, coordinator.AuthKeyOptions{Reusable: true})
	var stay []*node
	var stayNames []string
	var watchers []*watcher
	for i := range stayers {
		nd := newNode(t, c.URL)
		name := fmt.Sprintf("stay%d", i)
		nd.register(t, ak, name)
		stay, stayNames = append(stay, nd), append(stayNames, name)
		watchers = append(watchers, watch(t, nd))
	}
	// names returns the names of nm's peers and itself, sorted.
	names := func(nm *wire.NetMap) []string {
		out := []string{nm.Self.Name}
		for _, p := range nm.Peers {
			out = append(out, p.Name)
		}
		slices.Sort(out)
		return out
	}
	sees := func(want []string) func(*wire.NetMap) bool {
		want = slices.Sorted(slices.Values(want))
		return func(nm *wire.NetMap) bool { return nm.Self != nil && slices.Equal(names(nm), want) }
	}
	used := func() int {
		slots, free := c.Server.PeerSlotsForTest()
		return slots - free
	}
	for r := range rounds {
		var joined []string
		var theirs []*watcher
		for i := range batch {
			nd := newNode(t, c.URL)
			name := fmt.Sprintf("r%d-%d", r, i)
			nd.register(t, ak, name)
			joined = append(joined, name)
			if i%2 == 0 {
				theirs = append(theirs, watch(t, nd))
			}
		}
		all := append(slices.Clone(stayNames), joined...)
		for i, w := range watchers {
			w.waitFor(fmt.Sprintf("round %d: stay%d sees the round's nodes", r, i), wait, sees(all))
		}
		for i, w := range theirs {
			w.waitFor(fmt.Sprintf("round %d: new node %d sees every node", r, i), wait, sees(all))
		}
		// A change of a node streaming throughout, once slots are reused.
		ep := netip.AddrPortFrom(netip.MustParseAddr("192.0.2.1"), uint16(30000+r))
		stay[1].SetEndpoints([]netip.AddrPort{ep}, 1)
		for _, i := range []int{0, 2} {
			watchers[i].waitFor(fmt.Sprintf("round %d: stay%d sees stay1's endpoint", r, i), wait, func(nm *wire.NetMap) bool {
				p := peerNamed(nm, "stay1")
				return p != nil && slices.Equal(p.Endpoints, []netip.AddrPort{ep})
			})
		}
		for _, name := range joined {
			if err := c.Server.RemoveNode(t.Context(), name); err != nil {
				t.Fatalf("remove %s: %v", name, err)
			}
		}
		for i, w := range watchers {
			w.waitFor(fmt.Sprintf("round %d: stay%d sees the round's nodes gone", r, i), wait, sees(stayNames))
		}
		for _, w := range theirs {
			w.stop()
		}
		// The removed nodes' slots are free once the streams that held
		// them caught up or ended.
		if !waitUsed(used, stayers) {
			t.Fatalf("round %d: %d slots in use after the round's nodes were removed, want %d", r, used(), stayers)
		}
	}
	slots, free := c.Server.PeerSlotsForTest()
	t.Logf("%d joins and removals: %d slots, %d free", rounds*batch, slots, free)
	if slots > stayers+batch {
		t.Errorf("%d slots after %d joins and removals with at most %d nodes at once, want at most %d", slots, rounds*batch, stayers+batch, stayers+batch)
	}
}

// waitUsed waits until used reports n, reporting whether it did within
// wait.
func waitUsed(used func() int, n int) bool {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for deadline := time.Now().Add(wait); used() != n; <-tick.C {
		if time.Now().After(deadline) {
			return false
		}
	}
	return true
}
