package coordinator_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"testing"
	"time"

	"beam.dev/beam/coordinator"
	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// peerKeys returns the keys of nodes, sorted.
func keysOfPeers(nodes []*wire.Node) []key.NodePublic {
	out := make([]key.NodePublic, len(nodes))
	for i, n := range nodes {
		out[i] = n.Key
	}
	slices.SortFunc(out, func(a, b key.NodePublic) int { return cmpKeys(a, b) })
	return out
}

// sortedKeys returns privs' public keys but skip's, sorted.
func sortedKeys(privs []key.NodePrivate, skip key.NodePublic) []key.NodePublic {
	var out []key.NodePublic
	for _, p := range privs {
		if p.Public() != skip {
			out = append(out, p.Public())
		}
	}
	slices.SortFunc(out, func(a, b key.NodePublic) int { return cmpKeys(a, b) })
	return out
}

// postEndpoints sends node priv's endpoints in a map request that does
// not stream, as a node does when its endpoints change.
func postEndpoints(t *testing.T, c *coord, priv key.NodePrivate, eps []netip.AddrPort) {
	t.Helper()
	clear, err := json.Marshal(&wire.MapRequest{Version: wire.CapabilityVersion, NodeKey: priv.Public(), Endpoints: eps, Epoch: c.epoch(t), Timestamp: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	env, err := json.Marshal(wire.Envelope{NodeKey: priv.Public(), Sealed: priv.SealTo(c.priv.Public(), clear)})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Post(c.URL+"/machine/map", "application/json", bytes.NewReader(env))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("map request with endpoints: %s", resp.Status)
	}
}

// nextWith reads rs's messages until one satisfies ok, failing if any
// message lists self among its peers or one of hidden.
func nextWith(t *testing.T, rs *rawStream, self key.NodePublic, hidden []key.NodePublic, what string, ok func(*wire.MapResponse) bool) *wire.MapResponse {
	t.Helper()
	for range 1000 {
		mr, _ := rs.next()
		for _, p := range slices.Concat(mr.Peers, mr.PeersChanged) {
			if p.Key == self {
				t.Fatalf("waiting for %s: node was sent itself as a peer", what)
			}
			if slices.Contains(hidden, p.Key) {
				t.Fatalf("waiting for %s: node was sent peer %s that the policy hides from it", what, p.Name)
			}
		}
		if ok(mr) {
			return mr
		}
	}
	t.Fatalf("no message with %s in 1000", what)
	return nil
}

// TestSharedFullMaps checks the peers nodes of every protocol version get
// from the list that all nodes of a network share under the default
// policy: each node's full map holds every other node and never itself,
// whichever block of the shared list it falls in and however frames are
// cut, and the deltas after it (a peer's new endpoints, a join, a
// removal) are each node's too.
func TestSharedFullMaps(t *testing.T) {
	for _, tc := range []struct {
		name    string
		version int
		splitAt int // 0: the default frame limit
	}{
		{"binary", wire.CapabilityVersion, 0},
		{"binary small frames", wire.CapabilityVersion, 6 << 10},
		{"json split", wire.BinaryFramesVersion - 1, 0},
		{"json small frames", wire.BinaryFramesVersion - 1, 6 << 10},
		{"json whole", 12, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.splitAt > 0 {
				defer coordinator.SetFrameSplitAtForTest(tc.splitAt)()
			}
			c := startCoord(t, func(o *coordinator.Options) { o.KeepAliveInterval = time.Hour })
			ak := c.authKey(t, coordinator.AuthKeyOptions{Reusable: true})
			// More than two blocks of slots, so that nodes fall at the
			// start, middle and end of one.
			const n = 260
			privs := registerMany(t, c, ak, "n", n)
			picks := []int{0, 1, 191, 192, 193, 200, n - 1}
			streams := make([]*rawStream, len(picks))
			for i, p := range picks {
				streams[i] = openRawStream(t, c, privs[p], tc.version)
				self := privs[p].Public()
				full := nextWith(t, streams[i], self, nil, "full map", func(*wire.MapResponse) bool { return true })
				if got, want := keysOfPeers(full.Peers), sortedKeys(privs, self); !slices.Equal(got, want) {
					t.Fatalf("node %d: full map has %d peers, want the %d others", p, len(got), len(want))
				}
			}
			if lists := c.Server.SharedPeerListsForTest(); lists != 1 {
				t.Errorf("shared peer lists = %d, want 1 (every node sees every other)", lists)
			}

			// A peer's endpoints change: every stream but its own gets them.
			moved := privs[picks[3]].Public()
			ep := netip.MustParseAddrPort("198.51.100.7:41641")
			postEndpoints(t, c, privs[picks[3]], []netip.AddrPort{ep})
			for i, rs := range streams {
				if i == 3 {
					continue
				}
				nextWith(t, rs, privs[picks[i]].Public(), nil, "new endpoints", func(mr *wire.MapResponse) bool {
					return slices.ContainsFunc(mr.PeersChanged, func(p *wire.Node) bool { return p.Key == moved && slices.Contains(p.Endpoints, ep) })
				})
			}

			// A join, then a removal.
			late := newNode(t, c.URL)
			late.register(t, ak, "late")
			for i, rs := range streams {
				nextWith(t, rs, privs[picks[i]].Public(), nil, "the join", func(mr *wire.MapResponse) bool {
					return slices.ContainsFunc(mr.PeersChanged, func(p *wire.Node) bool { return p.Key == late.priv.Public() })
				})
			}
			gone := privs[picks[5]].Public()
			if err := c.Server.RemoveNode(context.Background(), gone.String()); err != nil {
				t.Fatal(err)
			}
			for i, rs := range streams {
				if i == 5 {
					continue
				}
				nextWith(t, rs, privs[picks[i]].Public(), nil, "the removal", func(mr *wire.MapResponse) bool {
					return slices.Contains(mr.PeersRemoved, gone)
				})
			}
			// A node that comes back later gets the network as it is now.
			again := openRawStream(t, c, privs[picks[2]], tc.version)
			streams[2].close()
			self := privs[picks[2]].Public()
			full := nextWith(t, again, self, nil, "full map", func(*wire.MapResponse) bool { return true })
			want := append(sortedKeys(privs, self), late.priv.Public())
			want = slices.DeleteFunc(want, func(k key.NodePublic) bool { return k == gone })
			slices.SortFunc(want, func(a, b key.NodePublic) int { return cmpKeys(a, b) })
			if got := keysOfPeers(full.Peers); !slices.Equal(got, want) {
				t.Fatalf("full map after changes has %d peers, want %d", len(got), len(want))
			}
			if p := slices.IndexFunc(full.Peers, func(p *wire.Node) bool { return p.Key == moved }); p < 0 || !slices.Contains(full.Peers[p].Endpoints, ep) {
				t.Fatalf("full map after changes lacks the moved peer's endpoints")
			}
		})
	}
}

// TestSharedPeersUnderPolicy checks that under a policy the nodes that
// see the same share a list and those that see differently do not: each
// node's full map holds exactly the peers the policy lets it see, and no
// node is ever sent a peer hidden from it, also as nodes join.
func TestSharedPeersUnderPolicy(t *testing.T) {
	c := startCoord(t, func(o *coordinator.Options) { o.KeepAliveInterval = time.Hour })
	setupACL(t, c, `{
		"groups": {"group:eng": ["alice"], "group:ops": ["bob"]},
		"tagOwners": {"tag:db": []},
		"acls": [
			{"action": "accept", "src": ["group:eng"], "dst": ["group:eng:*", "tag:db:5432"]},
			{"action": "accept", "src": ["group:ops"], "dst": ["group:ops:*"]},
		],
	}`, "alice", "bob")
	engKey := c.authKey(t, coordinator.AuthKeyOptions{Reusable: true, User: "alice"})
	opsKey := c.authKey(t, coordinator.AuthKeyOptions{Reusable: true, User: "bob"})
	dbKey := c.authKey(t, coordinator.AuthKeyOptions{Reusable: true, Tags: []string{"tag:db"}})
	eng := registerMany(t, c, engKey, "eng", 30)
	ops := registerMany(t, c, opsKey, "ops", 20)
	db := registerMany(t, c, dbKey, "db", 2)

	type member struct {
		priv    key.NodePrivate
		sees    []key.NodePrivate // the peers it should see, itself maybe among them
		hidden  []key.NodePublic
		version int
	}
	keysOf := func(ps ...[]key.NodePrivate) []key.NodePublic {
		var out []key.NodePublic
		for _, p := range slices.Concat(ps...) {
			out = append(out, p.Public())
		}
		return out
	}
	engSees, opsSees := slices.Concat(eng, db), ops
	var members []member
	for i, p := range eng[:5] {
		members = append(members, member{p, engSees, keysOf(ops), []int{wire.CapabilityVersion, 15}[i%2]})
	}
	for i, p := range ops[:5] {
		members = append(members, member{p, opsSees, keysOf(eng, db), []int{wire.CapabilityVersion, 15}[i%2]})
	}
	members = append(members, member{db[0], eng, keysOf(ops, db[1:]), wire.CapabilityVersion})
	streams := make([]*rawStream, len(members))
	for i, m := range members {
		streams[i] = openRawStream(t, c, m.priv, m.version)
		self := m.priv.Public()
		full := nextWith(t, streams[i], self, m.hidden, "full map", func(*wire.MapResponse) bool { return true })
		if got, want := keysOfPeers(full.Peers), sortedKeys(m.sees, self); !slices.Equal(got, want) {
			t.Fatalf("member %d: full map has %d peers, want %d", i, len(got), len(want))
		}
	}
	// eng nodes share one list, ops nodes another, the db node its own.
	if lists := c.Server.SharedPeerListsForTest(); lists != 3 {
		t.Errorf("shared peer lists = %d, want 3", lists)
	}

	// An ops node joins, then an eng node: eng streams see the eng node
	// and never the ops one; ops streams the reverse.
	lateOps, lateEng := newNode(t, c.URL), newNode(t, c.URL)
	lateOps.register(t, opsKey, "late-ops")
	lateEng.register(t, engKey, "late-eng")
	for i, m := range members {
		want, hide := lateEng.priv.Public(), lateOps.priv.Public()
		if slices.ContainsFunc(m.sees, func(p key.NodePrivate) bool { return p.Public() == ops[0].Public() }) {
			want, hide = hide, want
		}
		nextWith(t, streams[i], m.priv.Public(), append(slices.Clone(m.hidden), hide), fmt.Sprintf("member %d: the join", i), func(mr *wire.MapResponse) bool {
			return slices.ContainsFunc(mr.PeersChanged, func(p *wire.Node) bool { return p.Key == want })
		})
	}
}

func cmpKeys(a, b key.NodePublic) int {
	ra, rb := a.Raw32(), b.Raw32()
	return bytes.Compare(ra[:], rb[:])
}
