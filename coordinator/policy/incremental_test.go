package policy

import (
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"

	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// filterTuples returns the (source, destination, ports, protos) tuples a
// filter admits, one per source address, sorted: two filters admit the
// same packets if their tuples are equal.
func filterTuples(rules []wire.FilterRule) []string {
	var out []string
	for _, r := range rules {
		for _, s := range r.SrcIPs {
			for _, d := range r.DstPorts {
				out = append(out, s.String()+">"+d.IP.String()+":"+strconv.Itoa(int(d.First))+"-"+strconv.Itoa(int(d.Last))+"/"+protosString(r.Protos))
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

func protosString(ps []int) string {
	var b []byte
	for _, p := range ps {
		b = append(b, byte(p))
	}
	return string(b)
}

// TestIncrementalMatchesCompile applies random joins, leaves and changes
// of user, tags and addresses to a Compiled and checks after each that
// every node's filter and visibility equal those of a fresh Compile of the
// same nodes, and that a change computes only the changed node's
// visibility.
func TestIncrementalMatchesCompile(t *testing.T) {
	for si, src := range append([]string{scenario}, fuzzSeeds...) {
		p, err := Parse([]byte(src))
		if err != nil {
			continue
		}
		rng := rand.New(rand.NewPCG(uint64(si), 7))
		base := fuzzNodes(p)
		users := []string{"alice", "bob", "carol", "nobody", "hostuser"}
		for _, n := range base {
			if !slices.Contains(users, n.User) {
				users = append(users, n.User)
			}
		}
		tags := []string{}
		for tag := range p.tagOwners {
			tags = append(tags, tag)
		}
		slices.Sort(tags)
		nextID := 1000
		randomNode := func(id int) *wire.Node {
			n := &wire.Node{ID: wire.NodeID(id), Key: testKey(id), User: users[rng.IntN(len(users))]}
			if len(tags) > 0 && rng.IntN(3) == 0 {
				n.Tags = []string{tags[rng.IntN(len(tags))]}
			}
			// Reuse addresses of the base nodes sometimes, so host and
			// CIDR selectors match changed nodes too.
			if rng.IntN(2) == 0 && len(base) > 0 {
				n.Addresses = slices.Clone(base[rng.IntN(len(base))].Addresses)
			} else {
				n.Addresses = []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{100, 64, byte(id >> 8), byte(id)}), 32)}
			}
			return n
		}
		live := slices.Clone(base)
		c := p.Compile(live)
		for _, n := range live { // warm every cache
			c.For(n.Key)
		}
		for step := range 60 {
			before := c.VisibilityComputed()
			switch op := rng.IntN(3); {
			case op == 0 || len(live) < 2: // join
				nextID++
				n := randomNode(nextID)
				live = append(live, n)
				c.Update(n)
			case op == 1: // leave
				i := rng.IntN(len(live))
				c.Remove(live[i].Key)
				live = slices.Delete(live, i, i+1)
			default: // change
				i := rng.IntN(len(live))
				n := randomNode(int(live[i].ID))
				live[i] = n
				c.Update(n)
			}
			if got := c.VisibilityComputed() - before; got > 1 {
				t.Fatalf("policy %d step %d: one change computed %d visibilities, want at most 1", si, step, got)
			}
			// Addresses may collide after changes; the fresh compile
			// sees the same nodes in the same order as the slots.
			fresh := p.Compile(live)
			for _, n := range live {
				gf, gv := c.For(n.Key)
				wf, wv := fresh.For(n.Key)
				if !slices.Equal(filterTuples(gf), filterTuples(wf)) {
					t.Fatalf("policy %d step %d: %v filter\n got %+v\nwant %+v", si, step, n.Key.ShortString(), gf, wf)
				}
				slices.SortFunc(gv, cmpKey)
				slices.SortFunc(wv, cmpKey)
				if !slices.Equal(gv, wv) {
					t.Fatalf("policy %d step %d: %v visible\n got %v\nwant %v", si, step, n.Key.ShortString(), gv, wv)
				}
			}
		}
	}
}

// TestSetChanges checks that replaying a set's changes onto an old copy
// gives its current addresses.
func TestSetChanges(t *testing.T) {
	p := mustParse(t, `{"groups": {"group:eng": ["alice"]}, "acls": [{"action": "accept", "src": ["group:eng"], "dst": ["*:22"]}]}`)
	db := mkNode(1, "db", "ops", nil, "100.64.0.1")
	c := p.Compile([]*wire.Node{db})
	f := c.Filter(db.Key)
	if len(f.Rules) != 1 || f.Rules[0].Src.Name() != "group:eng" {
		t.Fatalf("filter = %+v, want one rule from group:eng", f)
	}
	set := f.Rules[0].Src
	have := map[netip.Prefix]bool{}
	v := set.Version()
	for i := range 200 {
		n := mkNode(10+i%20, "n", "alice", nil, netip.AddrFrom4([4]byte{100, 64, 1, byte(i)}).String())
		if i%3 == 2 {
			c.Remove(n.Key)
		} else {
			c.Update(n)
		}
		if i%5 != 0 {
			continue // let changes pile up
		}
		add, remove, ok := set.ChangesSince(v)
		if !ok {
			clear(have)
			for _, a := range set.Addrs() {
				have[a] = true
			}
		}
		for _, a := range remove {
			delete(have, a)
		}
		for _, a := range add {
			have[a] = true
		}
		v = set.Version()
		want := set.Addrs()
		if len(have) != len(want) {
			t.Fatalf("step %d: replayed set has %d addresses, want %d", i, len(have), len(want))
		}
		for _, a := range want {
			if !have[a] {
				t.Fatalf("step %d: replayed set lacks %v", i, a)
			}
		}
	}
	if c.Filter(db.Key) != f {
		t.Error("db's filter changed although only other nodes came and went")
	}
}

func cmpKey(a, b key.NodePublic) int { return strings.Compare(a.String(), b.String()) }

// FuzzIncremental checks, for every policy that parses, that a Compiled
// built from part of a node set and brought to the rest by Update and
// Remove (ops says which node joins, leaves or changes its tags, in turn)
// gives every node the filter and visibility of a fresh Compile.
func FuzzIncremental(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add([]byte(s), []byte{0, 1, 2, 3, 4, 5})
	}
	f.Fuzz(func(t *testing.T, b, ops []byte) {
		p, err := Parse(b)
		if err != nil {
			return
		}
		all := fuzzNodes(p)
		if len(all) == 0 {
			return
		}
		half := len(all) / 2
		live := slices.Clone(all[:half])
		c := p.Compile(live)
		for _, n := range live {
			c.For(n.Key)
		}
		tags := slices.Sorted(maps.Keys(p.tagOwners))
		for _, op := range ops[:min(len(ops), 32)] {
			n := all[int(op)%len(all)]
			i := slices.IndexFunc(live, func(m *wire.Node) bool { return m.Key == n.Key })
			switch {
			case i < 0:
				live = append(live, n)
				c.Update(n)
			case op&0x80 != 0:
				c.Remove(n.Key)
				live = slices.Delete(live, i, i+1)
			default: // retag
				m := *n
				m.Tags = nil
				if len(tags) > 0 && op&0x40 != 0 {
					m.Tags = []string{tags[int(op)%len(tags)]}
				}
				live[i] = &m
				c.Update(&m)
			}
		}
		fresh := p.Compile(live)
		for _, n := range live {
			gf, gv := c.For(n.Key)
			wf, wv := fresh.For(n.Key)
			if !slices.Equal(filterTuples(gf), filterTuples(wf)) {
				t.Fatalf("%s filter\n got %+v\nwant %+v", n.Name, gf, wf)
			}
			slices.SortFunc(gv, cmpKey)
			slices.SortFunc(wv, cmpKey)
			if !slices.Equal(gv, wv) {
				t.Fatalf("%s visible\n got %v\nwant %v", n.Name, gv, wv)
			}
		}
	})
}
