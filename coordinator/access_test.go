package coordinator_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
	"time"

	"beam.dev/beam/coordinator"
	"beam.dev/beam/wire"
)

const engToDB = `{
	"groups": {"group:eng": ["alice"]},
	"tagOwners": {"tag:db": []},
	"acls": [{"action": "accept", "src": ["group:eng"], "dst": ["tag:db:5432"]}],
}`

// joinFrames registers members nodes of group:eng, streams two tag:db
// nodes (one of the current protocol version, one of version 11), lets one
// more eng node join, and returns the frame each db node got for the join.
func joinFrames(t *testing.T, members int) (sets, expanded *wire.MapResponse, setsSize, expandedSize int, joined *wire.Node) {
	c := startCoord(t, func(o *coordinator.Options) { o.KeepAliveInterval = time.Minute })
	setupACL(t, c, engToDB, "alice")
	dbKey := c.authKey(t, coordinator.AuthKeyOptions{Reusable: true, Tags: []string{"tag:db"}})
	engKey := c.authKey(t, coordinator.AuthKeyOptions{Reusable: true, User: "alice"})
	db, dbOld := newNode(t, c.URL), newNode(t, c.URL)
	db.register(t, dbKey, "db")
	dbOld.register(t, dbKey, "db-old")
	registerMany(t, c, engKey, "eng", members)

	s12 := openRawStream(t, c, db.priv, wire.CapabilityVersion)
	s11 := openRawStream(t, c, dbOld.priv, 11)
	full, _ := s12.next()
	if len(full.PacketFilter) != 1 || !slices.Equal(full.PacketFilter[0].SrcSets, []string{"group:eng"}) || len(full.FilterSets["group:eng"]) != 2*members {
		t.Fatalf("full map filter %+v with %d addresses in group:eng, want one rule from group:eng's %d addresses",
			full.PacketFilter, len(full.FilterSets["group:eng"]), 2*members)
	}
	if full, _ := s11.next(); len(full.PacketFilter) != 1 || len(full.PacketFilter[0].SrcSets) != 0 || len(full.PacketFilter[0].SrcIPs) != 2*members || full.FilterSets != nil {
		t.Fatalf("version 11 full map filter = %d rules, want one rule listing %d addresses and no sets", len(full.PacketFilter), 2*members)
	}

	joined = newNode(t, c.URL).register(t, engKey, "late").Node
	sets, setsSize = s12.next()
	expanded, expandedSize = s11.next()
	return sets, expanded, setsSize, expandedSize, joined
}

// TestJoinFilterBytesConstant checks that under a policy, what a node is
// sent when another joins a set its filter admits does not grow with the
// network: a set change, not the whole filter; and that nodes of version
// 11 still get the whole filter, expanded.
func TestJoinFilterBytesConstant(t *testing.T) {
	sizes := map[int][2]int{}
	for _, members := range []int{100, 2000} {
		start := time.Now()
		r, old, setsSize, expandedSize, joined := joinFrames(t, members)
		t.Logf("%d members (set up in %v): join costs the db node %d bytes, a version-11 db node %d bytes",
			members, time.Since(start).Round(time.Millisecond), setsSize, expandedSize)
		sizes[members] = [2]int{setsSize, expandedSize}

		want := []wire.FilterSetChange{{Name: "group:eng", Add: joined.Addresses}}
		if r.PacketFilterSet || !slices.EqualFunc(r.FilterSetChanges, want, func(a, b wire.FilterSetChange) bool {
			return a.Name == b.Name && a.Replace == b.Replace && slices.Equal(a.Add, b.Add) && slices.Equal(a.Remove, b.Remove)
		}) {
			t.Fatalf("%d members: join sent filter set %v, set changes %+v; want only %+v", members, r.PacketFilterSet, r.FilterSetChanges, want)
		}
		if len(r.PeersChanged) != 1 || r.PeersChanged[0].Key != joined.Key {
			t.Fatalf("%d members: join sent peers %+v, want the joined node", members, r.PeersChanged)
		}

		if !old.PacketFilterSet || len(old.FilterSetChanges) != 0 || len(old.PacketFilter) != 1 || len(old.PacketFilter[0].SrcSets) != 0 {
			t.Fatalf("%d members: version 11 node got filter %+v and set changes %+v, want the whole filter expanded", members, old.PacketFilter, old.FilterSetChanges)
		}
		if src := old.PacketFilter[0].SrcIPs; len(src) != 2*members+2 || !slices.Contains(src, joined.Addresses[0]) {
			t.Fatalf("%d members: version 11 filter has %d sources, want %d with the joined node's", members, len(src), 2*members+2)
		}
	}
	// Node IDs and addresses are a few characters longer in the larger
	// network; nothing else may differ.
	if small, big := sizes[100][0], sizes[2000][0]; big > small+48 {
		t.Errorf("join frame is %d bytes with 2,000 members, %d with 100: grows with the network", big, small)
	}
	if small, big := sizes[100][1], sizes[2000][1]; big < 10*small {
		t.Errorf("version 11 join frame is %d bytes with 2,000 members, %d with 100: expected the expanded filter", big, small)
	}
}

// TestJoinComputesOnlyItsVisibility checks that a join under a policy
// computes the joined node's visibility once, not every streaming node's,
// and does not recompile the policy.
func TestJoinComputesOnlyItsVisibility(t *testing.T) {
	const streams = 30
	c := startCoord(t, func(o *coordinator.Options) { o.KeepAliveInterval = time.Minute })
	setupACL(t, c, `{
		"groups": {"group:eng": ["alice"]},
		"tagOwners": {"tag:db": []},
		"acls": [
			{"action": "accept", "src": ["group:eng"], "dst": ["tag:db:5432", "group:eng:22"]},
		],
	}`, "alice")
	engKey := c.authKey(t, coordinator.AuthKeyOptions{Reusable: true, User: "alice"})
	var ws []*watcher
	for i := range streams {
		n := newNode(t, c.URL)
		n.register(t, engKey, fmt.Sprintf("eng%d", i))
		ws = append(ws, watch(t, n))
	}
	for _, w := range ws {
		w.waitFor("every eng node", 30*time.Second, func(nm *wire.NetMap) bool { return len(nm.Peers) == streams-1 })
	}
	compiles, vis := c.Server.AccessCostForTest()

	late := newNode(t, c.URL).register(t, engKey, "late").Node
	for _, w := range ws {
		w.waitFor("late visible and admitted", 30*time.Second, func(nm *wire.NetMap) bool {
			return peerNamed(nm, "late") != nil && filterAllows(nm.ExpandedFilter(), addrOf(late, false), addrOf(nm.Self, false), 22)
		})
	}
	compiles2, vis2 := c.Server.AccessCostForTest()
	if compiles2 != compiles {
		t.Errorf("the join compiled the policy %d times, want 0", compiles2-compiles)
	}
	if d := vis2 - vis; d != 1 {
		t.Errorf("the join computed %d visibilities, want 1 (the joined node's; %d nodes stream)", d, streams)
	}
}

// TestSetFilterMatchesExpanded checks, for every node of a policy using
// every kind of selector, that the filter over sets a current node gets
// admits exactly the packets of the expanded filter a version-11 node
// gets, on random packets and on every pair of member addresses, before
// and after nodes join and leave.
func TestSetFilterMatchesExpanded(t *testing.T) {
	c := startCoord(t, func(o *coordinator.Options) { o.KeepAliveInterval = time.Minute })
	setupACL(t, c, `{
		"groups": {"group:eng": ["alice", "bob"]},
		"tagOwners": {"tag:db": [], "tag:web": []},
		"hosts": {"lab": "100.64.0.0/24"},
		"acls": [
			{"action": "accept", "src": ["group:eng"], "dst": ["tag:db:5432", "autogroup:self:*"]},
			{"action": "accept", "src": ["carol", "tag:web"], "dst": ["tag:db:5432-5440", "lab:80"], "proto": "tcp"},
			{"action": "accept", "src": ["*"], "dst": ["tag:web:443"]},
			{"action": "accept", "src": ["tag:db"], "dst": ["bob:9000"], "proto": "udp"},
		],
	}`, "alice", "bob", "carol")
	keys := map[string]string{}
	for _, u := range []string{"alice", "bob", "carol"} {
		keys[u] = c.authKey(t, coordinator.AuthKeyOptions{Reusable: true, User: u})
	}
	for _, tag := range []string{"tag:db", "tag:web"} {
		keys[tag] = c.authKey(t, coordinator.AuthKeyOptions{Reusable: true, Tags: []string{tag}})
	}
	kinds := []string{"alice", "bob", "carol", "tag:db", "tag:web"}
	var nodes []*node
	var views []*wire.Node
	for i, kind := range slices.Concat(kinds, kinds) {
		n := newNode(t, c.URL)
		views = append(views, n.register(t, keys[kind], fmt.Sprintf("n%d", i)).Node)
		nodes = append(nodes, n)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	check := func(stage string) {
		accepted, tried := 0, 0
		var addrs []netip.Addr
		for _, v := range views {
			for _, a := range v.Addresses {
				addrs = append(addrs, a.Addr())
			}
		}
		for i, n := range nodes[:len(kinds)] {
			setMap, _ := openRawStream(t, c, n.priv, wire.CapabilityVersion).next()
			expMap, _ := openRawStream(t, c, n.priv, 11).next()
			sets := (&wire.NetMap{PacketFilter: setMap.PacketFilter, FilterSets: setMap.FilterSets}).ExpandedFilter()
			exp := expMap.PacketFilter
			own := views[i].Addresses
			for range 2000 {
				src := addrs[rng.IntN(len(addrs))]
				if rng.IntN(8) == 0 { // now and then a source that is no node
					src = netip.AddrFrom4([4]byte{100, 64, byte(rng.IntN(4)), byte(rng.IntN(256))})
				}
				dst := own[rng.IntN(len(own))].Addr()
				proto := []int{6, 17, 1, 58, 132}[rng.IntN(5)]
				port := uint16([]int{22, 80, 443, 5432, 5436, 5441, 9000, rng.IntN(65536)}[rng.IntN(8)])
				got, want := filterAllowsProto(sets, src, dst, port, proto), filterAllowsProto(exp, src, dst, port, proto)
				tried++
				if want {
					accepted++
				}
				if got != want {
					t.Fatalf("%s: %s: %v -> %v proto %d port %d: set filter says %v, expanded %v\nsets: %+v %v\nexpanded: %+v",
						stage, views[i].Name, src, dst, proto, port, got, want, setMap.PacketFilter, setMap.FilterSets, exp)
				}
			}
		}
		// The packets must test both answers.
		if accepted < tried/50 || accepted > tried-tried/50 {
			t.Fatalf("%s: %d of %d random packets accepted; the test needs both answers", stage, accepted, tried)
		}
		t.Logf("%s: %d of %d random packets accepted by both filters", stage, accepted, tried)
	}
	check("start")
	// Joins and a leave change the sets.
	for i, kind := range kinds {
		n := newNode(t, c.URL)
		views = append(views, n.register(t, keys[kind], fmt.Sprintf("late%d", i)).Node)
	}
	if err := c.Server.RemoveNode(context.Background(), views[len(kinds)].Name); err != nil {
		t.Fatal(err)
	}
	views = slices.Delete(views, len(kinds), len(kinds)+1)
	nodes = slices.Delete(nodes, len(kinds), len(kinds)+1)
	check("after joins")
}
