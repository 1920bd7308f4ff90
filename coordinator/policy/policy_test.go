package policy

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// testKey returns a distinct deterministic node key for i.
func testKey(i int) key.NodePublic {
	var raw [32]byte
	raw[0], raw[1], raw[31] = byte(i), byte(i>>8), 0xbe
	return key.NodePublicFromRaw32(raw)
}

// mkNode builds a node; addrs are IP literals.
func mkNode(i int, name, user string, tags []string, addrs ...string) *wire.Node {
	n := &wire.Node{ID: wire.NodeID(i), Key: testKey(i), Name: name, User: user, Tags: tags}
	for _, a := range addrs {
		ip := netip.MustParseAddr(a)
		n.Addresses = append(n.Addresses, netip.PrefixFrom(ip, ip.BitLen()))
	}
	return n
}

func mustParse(t testing.TB, src string) *Policy {
	t.Helper()
	p, err := Parse([]byte(src))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return p
}

// filterAccepts is a reference evaluation of wire.FilterRule as For
// documents it.
func filterAccepts(rules []wire.FilterRule, src, dst netip.Addr, proto uint8, port uint16) bool {
	for _, r := range rules {
		protos := r.Protos
		if len(protos) == 0 {
			protos = defaultProtos
		}
		if !slices.Contains(protos, int(proto)) {
			continue
		}
		if !slices.ContainsFunc(r.SrcIPs, func(p netip.Prefix) bool { return p.Contains(src) }) {
			continue
		}
		for _, d := range r.DstPorts {
			if d.IP.Contains(dst) && (!hasPorts(int(proto)) || d.First <= port && port <= d.Last) {
				return true
			}
		}
	}
	return false
}

const scenario = `// A policy exercising every kind of selector.
{
  "groups":    {"group:eng": ["alice", "bob"], "group:ops": ["carol"]},
  "tagOwners": {"tag:db": ["group:eng"], "tag:web": ["alice"], "tag:server": []},
  "hosts":     {"db-primary": "100.64.0.9", "lab": "100.64.1.0/24"},
  "acls": [
    {"action": "accept", "src": ["alice"], "dst": ["tag:db:5432"], "proto": "tcp"},
    {"action": "accept", "src": ["group:eng"], "dst": ["autogroup:self:*"]},
    {"action": "accept", "src": ["group:ops"], "dst": ["lab:22", "100.64.2.0/24:80,443"]},
    {"action": "accept", "src": ["tag:web"], "dst": ["db-primary:8000-8999"], "proto": "udp"},
    {"action": "accept", "src": ["*"], "dst": ["tag:web:443"]},
    {"action": "accept", "src": ["fd7a:bea0:b0de::1"], "dst": ["[fd7a:bea0:b0de::4]:9000"]},
  ],
}`

// scenarioNodes are the nodes of one network for the scenario policy.
type scenarioNodes struct {
	aliceLaptop, alicePhone, bob, carol, db1, db2, web, lab, net, mallory *wire.Node
	all                                                                   []*wire.Node
}

func newScenarioNodes() scenarioNodes {
	s := scenarioNodes{
		aliceLaptop: mkNode(1, "alice-laptop", "alice", nil, "100.64.0.1", "fd7a:bea0:b0de::1"),
		alicePhone:  mkNode(2, "alice-phone", "alice", nil, "100.64.0.2"),
		bob:         mkNode(3, "bob", "bob", nil, "100.64.0.3"),
		carol:       mkNode(4, "carol", "carol", nil, "100.64.0.4", "fd7a:bea0:b0de::4"),
		db1:         mkNode(5, "db1", "", []string{"tag:db"}, "100.64.0.9"),
		// db2 was registered by alice but is tagged: it has no user identity.
		db2: mkNode(6, "db2", "alice", []string{"tag:db"}, "100.64.0.10"),
		web: mkNode(7, "web", "", []string{"tag:web"}, "100.64.0.20"),
		lab: mkNode(8, "lab", "dave", nil, "100.64.1.5"),
		net: mkNode(9, "net", "erin", nil, "100.64.2.7"),
		// mallory's only address is outside the overlay; no filter may
		// ever admit it.
		mallory: mkNode(10, "mallory", "mallory", nil, "192.0.2.1"),
	}
	s.all = []*wire.Node{s.aliceLaptop, s.alicePhone, s.bob, s.carol, s.db1, s.db2, s.web, s.lab, s.net, s.mallory}
	return s
}

func TestAllows(t *testing.T) {
	p := mustParse(t, scenario)
	s := newScenarioNodes()
	tests := []struct {
		name     string
		src, dst *wire.Node
		proto    uint8
		port     uint16
		want     bool
	}{
		{"alice to db 5432", s.aliceLaptop, s.db1, protoTCP, 5432, true},
		{"alice phone to db 5432", s.alicePhone, s.db1, protoTCP, 5432, true},
		{"alice to second db 5432", s.aliceLaptop, s.db2, protoTCP, 5432, true},
		{"alice to db 22", s.aliceLaptop, s.db1, protoTCP, 22, false},
		{"alice to db 5432 over udp", s.aliceLaptop, s.db1, protoUDP, 5432, false},
		{"bob to db 5432", s.bob, s.db1, protoTCP, 5432, false},
		{"bob to db 22", s.bob, s.db1, protoTCP, 22, false},
		{"bob to db icmp", s.bob, s.db1, protoICMP, 0, false},
		{"self: alice laptop to phone", s.aliceLaptop, s.alicePhone, protoTCP, 22, true},
		{"self: alice phone to laptop udp", s.alicePhone, s.aliceLaptop, protoUDP, 53, true},
		{"self: bob to alice", s.bob, s.alicePhone, protoTCP, 22, false},
		{"self: tagged node of alice is not alice", s.db2, s.aliceLaptop, protoTCP, 22, false},
		{"self: alice to her tagged node", s.aliceLaptop, s.db2, protoTCP, 22, false},
		{"self: carol not in eng", s.carol, s.carol, protoTCP, 22, false},
		{"host cidr: carol to lab 22", s.carol, s.lab, protoTCP, 22, true},
		{"host cidr: carol to lab 23", s.carol, s.lab, protoTCP, 23, false},
		{"cidr literal: carol to net 443", s.carol, s.net, protoTCP, 443, true},
		{"cidr literal: carol to net 80", s.carol, s.net, protoUDP, 80, true},
		{"cidr literal: carol to net 22", s.carol, s.net, protoTCP, 22, false},
		{"cidr literal: dave not ops", s.lab, s.net, protoTCP, 443, false},
		{"host ip: web to db-primary udp", s.web, s.db1, protoUDP, 8500, true},
		{"host ip: web to db-primary tcp", s.web, s.db1, protoTCP, 8500, false},
		{"host ip: web to db-primary out of range", s.web, s.db1, protoUDP, 9000, false},
		{"host ip: other db is not db-primary", s.web, s.db2, protoUDP, 8500, false},
		{"star: bob to web 443", s.bob, s.web, protoTCP, 443, true},
		{"star: db to web 443 udp", s.db1, s.web, protoUDP, 443, true},
		{"star: no proto admits icmp, ports ignored", s.bob, s.web, protoICMP, 0, true},
		{"star: no proto admits icmpv6", s.bob, s.web, protoICMPv6, 0, true},
		{"star: no proto does not admit gre", s.bob, s.web, 47, 0, false},
		{"star: web 80", s.bob, s.web, protoTCP, 80, false},
		{"ipv6 literal: alice laptop to carol 9000", s.aliceLaptop, s.carol, protoTCP, 9000, true},
		{"ipv6 literal: alice phone to carol 9000", s.alicePhone, s.carol, protoTCP, 9000, false},
		{"nil src", nil, s.web, protoTCP, 443, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := p.Allows(tt.src, tt.dst, tt.proto, tt.port); got != tt.want {
				t.Errorf("Allows(proto %d, port %d) = %v, want %v", tt.proto, tt.port, got, tt.want)
			}
		})
	}
}

func pfx(s string) netip.Prefix {
	a := netip.MustParseAddr(s)
	return netip.PrefixFrom(a, a.BitLen())
}

func TestCompileFilter(t *testing.T) {
	p := mustParse(t, scenario)
	s := newScenarioNodes()
	c := p.Compile(s.all)

	tests := []struct {
		name string
		node *wire.Node
		want []wire.FilterRule
	}{
		{"db1", s.db1, []wire.FilterRule{
			{
				SrcIPs:   []netip.Prefix{pfx("100.64.0.1"), pfx("fd7a:bea0:b0de::1"), pfx("100.64.0.2")},
				DstPorts: []wire.NetPortRange{{IP: pfx("100.64.0.9"), First: 5432, Last: 5432}},
				Protos:   []int{protoTCP},
			},
			{
				SrcIPs:   []netip.Prefix{pfx("100.64.0.20")},
				DstPorts: []wire.NetPortRange{{IP: pfx("100.64.0.9"), First: 8000, Last: 8999}},
				Protos:   []int{protoUDP},
			},
		}},
		{"alice phone", s.alicePhone, []wire.FilterRule{{
			SrcIPs:   []netip.Prefix{pfx("100.64.0.1"), pfx("fd7a:bea0:b0de::1"), pfx("100.64.0.2")},
			DstPorts: []wire.NetPortRange{{IP: pfx("100.64.0.2"), First: 0, Last: 65535}},
		}}},
		{"carol", s.carol, []wire.FilterRule{{
			SrcIPs: []netip.Prefix{pfx("100.64.0.1"), pfx("fd7a:bea0:b0de::1")},
			DstPorts: []wire.NetPortRange{
				{IP: pfx("100.64.0.4"), First: 9000, Last: 9000},
				{IP: pfx("fd7a:bea0:b0de::4"), First: 9000, Last: 9000},
			},
		}}},
		{"net", s.net, []wire.FilterRule{{
			SrcIPs: []netip.Prefix{pfx("100.64.0.4"), pfx("fd7a:bea0:b0de::4")},
			DstPorts: []wire.NetPortRange{
				{IP: pfx("100.64.2.7"), First: 80, Last: 80},
				{IP: pfx("100.64.2.7"), First: 443, Last: 443},
			},
		}}},
		{"bob", s.bob, []wire.FilterRule{{
			SrcIPs:   []netip.Prefix{pfx("100.64.0.3")},
			DstPorts: []wire.NetPortRange{{IP: pfx("100.64.0.3"), First: 0, Last: 65535}},
		}}},
		{"mallory has no overlay address, so no filter", s.mallory, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, _ := c.For(tt.node.Key)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("For(%s) filter:\n got %+v\nwant %+v", tt.node.Name, got, tt.want)
			}
		})
	}

	t.Run("star covers only overlay nodes", func(t *testing.T) {
		got, _ := c.For(s.web.Key)
		if len(got) != 1 {
			t.Fatalf("web filter has %d rules, want 1: %+v", len(got), got)
		}
		var want []netip.Prefix
		for _, n := range s.all {
			if n != s.mallory {
				want = append(want, n.Addresses...)
			}
		}
		if !reflect.DeepEqual(got[0].SrcIPs, want) {
			t.Errorf("web SrcIPs = %v, want every overlay node address %v", got[0].SrcIPs, want)
		}
		for _, n := range s.all {
			rules, _ := c.For(n.Key)
			for _, r := range rules {
				for _, sp := range r.SrcIPs {
					if !sp.IsSingleIP() || !inOverlay(sp) {
						t.Errorf("%s: source %v is not a single overlay address", n.Name, sp)
					}
				}
				for _, d := range r.DstPorts {
					if !slices.Contains(n.Addresses, d.IP) {
						t.Errorf("%s: destination %v is not one of its addresses %v", n.Name, d.IP, n.Addresses)
					}
				}
			}
		}
	})

	t.Run("unknown node", func(t *testing.T) {
		f, v := c.For(testKey(999))
		if f != nil || v != nil {
			t.Errorf("For(unknown) = %v, %v; want nil, nil", f, v)
		}
	})
}

func TestCompileVisibility(t *testing.T) {
	p := mustParse(t, scenario)
	s := newScenarioNodes()
	c := p.Compile(s.all)
	names := func(keys []key.NodePublic) []string {
		var out []string
		for _, k := range keys {
			for _, n := range s.all {
				if n.Key == k {
					out = append(out, n.Name)
				}
			}
		}
		return out
	}
	tests := []struct {
		node *wire.Node
		want []string
	}{
		// Reached by alice's devices and by web; reaches web.
		{s.db1, []string{"alice-laptop", "alice-phone", "web"}},
		{s.db2, []string{"alice-laptop", "alice-phone", "web"}},
		// Reaches the dbs, her other device, web, carol over IPv6.
		{s.aliceLaptop, []string{"alice-phone", "carol", "db1", "db2", "web"}},
		{s.alicePhone, []string{"alice-laptop", "db1", "db2", "web"}},
		// Bob only reaches web: no dbs, not alice.
		{s.bob, []string{"web"}},
		{s.carol, []string{"alice-laptop", "web", "lab", "net"}},
		{s.lab, []string{"carol", "web"}},
		// Everyone reaches web.
		{s.web, []string{"alice-laptop", "alice-phone", "bob", "carol", "db1", "db2", "lab", "net", "mallory"}},
		{s.mallory, []string{"web"}},
	}
	for _, tt := range tests {
		t.Run(tt.node.Name, func(t *testing.T) {
			_, vis := c.For(tt.node.Key)
			if got := names(vis); !slices.Equal(got, tt.want) {
				t.Errorf("visible = %v, want %v", got, tt.want)
			}
		})
	}

	// Visibility is symmetric: if a sees b, b sees a.
	for _, a := range s.all {
		_, va := c.For(a.Key)
		for _, bk := range va {
			_, vb := c.For(bk)
			if !slices.Contains(vb, a.Key) {
				t.Errorf("%s sees %v but not the other way round", a.Name, names([]key.NodePublic{bk}))
			}
		}
	}
}

// checkConsistent checks that c's filters agree with p.Allows for every
// ordered pair of nodes and every address, protocol and port in ports,
// and that visibility matches the filters exactly.
func checkConsistent(t testing.TB, p *Policy, c *Compiled, nodes []*wire.Node, ports []uint16, protos []uint8) {
	t.Helper()
	filters := map[key.NodePublic][]wire.FilterRule{}
	visible := map[key.NodePublic][]key.NodePublic{}
	for _, n := range nodes {
		filters[n.Key], visible[n.Key] = c.For(n.Key)
	}
	// reaches[src][dst]: the filter of dst admits some packet from src.
	reaches := func(src, dst *wire.Node) bool {
		for _, r := range filters[dst.Key] {
			for _, a := range src.Addresses {
				if slices.ContainsFunc(r.SrcIPs, func(p netip.Prefix) bool { return p.Contains(a.Addr()) }) {
					return true
				}
			}
		}
		return false
	}
	for _, src := range nodes {
		for _, dst := range nodes {
			if src == dst {
				continue
			}
			for _, proto := range protos {
				for _, port := range ports {
					want := p.Allows(src, dst, proto, port)
					for _, sa := range src.Addresses {
						for _, da := range dst.Addresses {
							got := filterAccepts(filters[dst.Key], sa.Addr(), da.Addr(), proto, port)
							if got != want {
								t.Fatalf("%s(%v) -> %s(%v) proto %d port %d: filter says %v, Allows says %v\nfilter: %+v",
									src.Name, sa, dst.Name, da, proto, port, got, want, filters[dst.Key])
							}
						}
					}
				}
			}
			sees := slices.Contains(visible[src.Key], dst.Key)
			if r := reaches(src, dst) || reaches(dst, src); r != sees {
				t.Fatalf("%s sees %s = %v, but reachable either way = %v", src.Name, dst.Name, sees, r)
			}
		}
	}
}

func TestCompileConsistentWithAllows(t *testing.T) {
	p := mustParse(t, scenario)
	s := newScenarioNodes()
	var overlay []*wire.Node
	for _, n := range s.all {
		if n != s.mallory {
			overlay = append(overlay, n)
		}
	}
	checkConsistent(t, p, p.Compile(overlay), overlay, []uint16{0, 1, 21, 22, 23, 80, 443, 5432, 7999, 8000, 8500, 8999, 9000, 65535},
		[]uint8{protoTCP, protoUDP, protoICMP, protoICMPv6, protoSCTP, 47})
}

func TestCompileSkipsBadNodes(t *testing.T) {
	p := mustParse(t, `{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}`)
	a := mkNode(1, "a", "u", nil, "100.64.0.1")
	dup := mkNode(1, "dup", "u", nil, "100.64.0.99")
	zero := &wire.Node{Name: "zero", User: "u", Addresses: []netip.Prefix{pfx("100.64.0.50")}}
	b := mkNode(2, "b", "u", nil, "100.64.0.2")
	c := p.Compile([]*wire.Node{a, nil, dup, zero, b})
	f, vis := c.For(b.Key)
	if want := []key.NodePublic{a.Key}; !slices.Equal(vis, want) {
		t.Errorf("visible = %v, want %v", vis, want)
	}
	want := []netip.Prefix{pfx("100.64.0.1"), pfx("100.64.0.2")}
	if len(f) != 1 || !slices.Equal(f[0].SrcIPs, want) {
		t.Errorf("filter = %+v, want one rule from %v", f, want)
	}
}

func TestParseValid(t *testing.T) {
	tests := []struct {
		name string
		src  string
		// check verifies something the policy must allow or deny.
		check func(t *testing.T, p *Policy)
	}{
		{"empty object denies everything", `{}`, func(t *testing.T, p *Policy) {
			a, b := mkNode(1, "a", "u", nil, "100.64.0.1"), mkNode(2, "b", "u", nil, "100.64.0.2")
			if p.Allows(a, b, protoTCP, 22) {
				t.Error("empty policy allows a -> b")
			}
			if p.MayExpose(a, "x") {
				t.Error("empty policy lets a expose")
			}
		}},
		{"comments and trailing commas", `
			// comment
			{
				/* block */ "acls": [
					{"action": "accept", "src": ["alice",], "dst": ["bob:22",],},
				],
			}`, func(t *testing.T, p *Policy) {
			a, b := mkNode(1, "a", "alice", nil, "100.64.0.1"), mkNode(2, "b", "bob", nil, "100.64.0.2")
			if !p.Allows(a, b, protoTCP, 22) || p.Allows(b, a, protoTCP, 22) {
				t.Error("alice -> bob:22 is one-way")
			}
		}},
		{"numeric proto and port lists", `{"acls": [
			{"action": "accept", "src": ["*"], "dst": ["*:22,80-81"], "proto": 17},
			{"action": "accept", "src": ["*"], "dst": ["*:*"], "proto": "47"},
			{"action": "accept", "src": ["*"], "dst": ["*:*"], "proto": "ICMP"},
		]}`, func(t *testing.T, p *Policy) {
			a, b := mkNode(1, "a", "u", nil, "100.64.0.1"), mkNode(2, "b", "v", nil, "100.64.0.2")
			for _, c := range []struct {
				proto uint8
				port  uint16
				want  bool
			}{{17, 22, true}, {17, 81, true}, {17, 82, false}, {6, 22, false}, {47, 0, true}, {1, 0, true}, {58, 0, true}} {
				if got := p.Allows(a, b, c.proto, c.port); got != c.want {
					t.Errorf("Allows(proto %d, port %d) = %v, want %v", c.proto, c.port, got, c.want)
				}
			}
		}},
		{"email user names and bracketed IPv6", `{
			"groups": {"group:a": ["alice@example.com"]},
			"acls": [{"action": "accept", "src": ["group:a"], "dst": ["[fd7a:bea0:b0de::2]:22", "fd7a:bea0:b0de::/48:80"]}],
		}`, func(t *testing.T, p *Policy) {
			a := mkNode(1, "a", "alice@example.com", nil, "100.64.0.1")
			b := mkNode(2, "b", "bob", nil, "fd7a:bea0:b0de::2")
			if !p.Allows(a, b, protoTCP, 22) || !p.Allows(a, b, protoTCP, 80) || p.Allows(a, b, protoTCP, 81) {
				t.Error("alice@example.com -> b: want 22 and 80 only")
			}
		}},
		{"sections in any order", `{
			"acls": [{"action": "accept", "src": ["group:x"], "dst": ["tag:t:*"]}],
			"tagOwners": {"tag:t": []},
			"groups": {"group:x": ["u"]},
		}`, func(t *testing.T, p *Policy) {
			a, b := mkNode(1, "a", "u", nil, "100.64.0.1"), mkNode(2, "b", "", []string{"tag:t"}, "100.64.0.2")
			if !p.Allows(a, b, protoTCP, 1) {
				t.Error("group:x -> tag:t denied")
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := mustParse(t, tt.src)
			if !bytes.Equal(p.Source(), []byte(tt.src)) {
				t.Errorf("Source() = %q, want the input", p.Source())
			}
			tt.check(t, p)
		})
	}
}

func TestParseErrors(t *testing.T) {
	// acl wraps one acls entry into a policy on line 2, entry at column 11.
	acl := func(entry string) string { return "{\n \"acls\": [" + entry + "]}" }
	tests := []struct {
		name      string
		src       string
		line, col int
		msg       string
	}{
		{"syntax", "{\n  \"acls\": [}", 2, 12, "syntax error"},
		{"not an object", "[]", 1, 1, "policy must be an object, not an array"},
		{"unknown top-level field", "{\n  \"acl\": []\n}", 2, 3, `unknown field "acl"`},
		{"duplicate field", `{"hosts": {}, "hosts": {}}`, 1, 15, `duplicate field "hosts"`},
		{"acls not an array", `{"acls": {}}`, 1, 10, "acls must be an array"},
		{"unknown acl field", acl(`{"action": "accept", "src": ["*"], "dst": ["*:*"], "ports": ["22"]}`), 2, 62, `unknown field "ports" in acl`},
		{"bad action", acl(`{"action": "deny", "src": ["*"], "dst": ["*:*"]}`), 2, 22, `bad action "deny"`},
		{"missing dst", acl(`{"action": "accept", "src": ["*"]}`), 2, 11, `acl has no "dst"`},
		{"empty src", acl(`{"action": "accept", "src": [], "dst": ["*:*"]}`), 2, 39, "src is empty"},
		{"unknown group", acl(`{"action": "accept", "src": ["group:nope"], "dst": ["*:*"]}`), 2, 40, `unknown group "group:nope"`},
		{"unknown tag", acl(`{"action": "accept", "src": ["*"], "dst": ["tag:db:22"]}`), 2, 54, `unknown tag "tag:db"`},
		{"bad port", acl(`{"action": "accept", "src": ["*"], "dst": ["*:ssh"]}`), 2, 54, `bad port "ssh"`},
		{"port too large", acl(`{"action": "accept", "src": ["*"], "dst": ["*:65536"]}`), 2, 54, `must be 0-65535`},
		{"reversed range", acl(`{"action": "accept", "src": ["*"], "dst": ["*:90-80"]}`), 2, 54, `bad port range "90-80"`},
		{"no ports", acl(`{"action": "accept", "src": ["*"], "dst": ["alice"]}`), 2, 54, `has no ports`},
		{"cidr outside overlay", acl(`{"action": "accept", "src": ["192.0.2.0/24"], "dst": ["*:*"]}`), 2, 40, `outside the overlay`},
		{"all addresses are outside overlay", acl(`{"action": "accept", "src": ["0.0.0.0/0"], "dst": ["*:*"]}`), 2, 40, `outside the overlay`},
		{"wider than overlay", acl(`{"action": "accept", "src": ["100.0.0.0/8"], "dst": ["*:*"]}`), 2, 40, `outside the overlay`},
		{"ipv6 outside ULA", acl(`{"action": "accept", "src": ["*"], "dst": ["[2001:db8::1]:22"]}`), 2, 54, `outside the overlay`},
		{"other ULA", acl(`{"action": "accept", "src": ["fd00::/64"], "dst": ["*:*"]}`), 2, 40, `outside the overlay`},
		{"bad IP", acl(`{"action": "accept", "src": ["100.64.0.300"], "dst": ["*:*"]}`), 2, 40, `bad IP address`},
		{"host bits set", acl(`{"action": "accept", "src": ["100.64.1.5/24"], "dst": ["*:*"]}`), 2, 40, `did you mean 100.64.1.0/24`},
		{"self in src", acl(`{"action": "accept", "src": ["autogroup:self"], "dst": ["*:*"]}`), 2, 40, `only allowed in acls dst`},
		{"unknown autogroup", acl(`{"action": "accept", "src": ["*"], "dst": ["autogroup:internet:*"]}`), 2, 54, `unknown autogroup`},
		{"bad proto", acl(`{"action": "accept", "src": ["*"], "dst": ["*:*"], "proto": "gre"}`), 2, 71, `bad proto "gre"`},
		{"proto zero", acl(`{"action": "accept", "src": ["*"], "dst": ["*:*"], "proto": 0}`), 2, 71, `bad proto "0"`},
		{"ports with icmp", acl(`{"action": "accept", "src": ["*"], "dst": ["*:22"], "proto": "icmp"}`), 2, 54, `has no ports`},
		{"typo in selector", acl(`{"action": "accept", "src": ["group"], "dst": ["grp:eng:*"]}`), 2, 58, `bad selector "grp:eng"`},
		{"src not a string", acl(`{"action": "accept", "src": [1], "dst": ["*:*"]}`), 2, 40, `src element must be a string`},
		{"nested group", "{\"groups\": {\"group:a\": [\"x\"],\n \"group:b\": [\"group:a\"]}}", 2, 14, `groups do not nest`},
		{"bad group name", `{"groups": {"eng": ["x"]}}`, 1, 13, `bad group:name "eng"`},
		{"duplicate group", `{"groups": {"group:a": [], "group:a": []}}`, 1, 28, `duplicate group "group:a"`},
		{"tag owner unknown group", `{"tagOwners": {"tag:db": ["group:nope"]}}`, 1, 27, `unknown group "group:nope"`},
		{"tag owner tag", `{"tagOwners": {"tag:a": [], "tag:b": ["tag:a"]}}`, 1, 39, `tag owners must be users, groups`},
		{"bad tag name", `{"tagOwners": {"tag:1x": []}}`, 1, 16, `must start with a letter`},
		{"host outside overlay", `{"hosts": {"db": "192.0.2.7"}}`, 1, 18, `outside the overlay`},
		{"host not an address", `{"hosts": {"db": "db.example.com"}}`, 1, 18, `not an IP address or CIDR`},
		{"host alias is a user", `{"groups": {"group:a": ["db"]}, "hosts": {"db": "100.64.0.1"}}`, 1, 43, `also a user in group:a`},
		{"host alias like a tag", `{"hosts": {"tag:x": "100.64.0.1"}}`, 1, 12, `must not start with`},
		{"unknown tag in tests", "{\"tests\": [\n  {\"src\": \"alice\", \"accept\": [\"tag:db:5432\"]}]}", 2, 31, `unknown tag "tag:db"`},
		{"test port range", `{"tests": [{"src": "alice", "accept": ["bob:1-2"]}]}`, 1, 40, `single port`},
		{"test star", `{"tests": [{"src": "*", "accept": ["bob:22"]}]}`, 1, 20, `tests need a user`},
		{"test without expectations", `{"tests": [{"src": "alice"}]}`, 1, 12, `neither "accept" nor "deny"`},
		{"test unknown field", `{"tests": [{"src": "alice", "allow": []}]}`, 1, 29, `unknown field "allow" in test`},
		{"expose bad name", `{"expose": [{"src": ["*"], "names": ["App_*"]}]}`, 1, 38, `bad expose name "App_*"`},
		{"expose star in middle", `{"expose": [{"src": ["*"], "names": ["a*b"]}]}`, 1, 38, `bad expose name`},
		{"expose missing names", `{"expose": [{"src": ["*"]}]}`, 1, 13, `has no "names"`},
		{"expose unknown tag", `{"expose": [{"src": ["tag:web"], "names": ["*"]}]}`, 1, 22, `unknown tag "tag:web"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Parse([]byte(tt.src))
			if err == nil {
				t.Fatalf("Parse succeeded, want error %q", tt.msg)
			}
			if p != nil {
				t.Errorf("Parse returned a policy along with error %v", err)
			}
			e, ok := errors.AsType[*Error](err)
			if !ok {
				t.Fatalf("error %v (%T) is not an *Error", err, err)
			}
			if e.Line != tt.line || e.Column != tt.col {
				t.Errorf("error at %d:%d, want %d:%d (%v)", e.Line, e.Column, tt.line, tt.col, err)
			}
			if !strings.Contains(e.Msg, tt.msg) {
				t.Errorf("error %q, want it to contain %q", e.Msg, tt.msg)
			}
			if want := fmt.Sprintf("line %d, column %d: ", tt.line, tt.col); !strings.Contains(err.Error(), want) {
				t.Errorf("error text %q lacks %q", err.Error(), want)
			}
		})
	}
}

func TestParseReportsEveryError(t *testing.T) {
	src := `{
  "groups": {"group:a": ["group:b"]},
  "acls": [{"action": "accept", "src": ["group:x"], "dst": ["tag:y:22"]}],
  "bogus": 1,
}`
	_, err := Parse([]byte(src))
	joined, ok := err.(interface{ Unwrap() []error })
	if !ok {
		t.Fatalf("error %v is not a joined error", err)
	}
	var got []string
	for _, e := range joined.Unwrap() {
		pe, ok := errors.AsType[*Error](e)
		if !ok {
			t.Fatalf("%v is not an *Error", e)
		}
		got = append(got, fmt.Sprintf("%d:%d", pe.Line, pe.Column))
	}
	// Unknown fields are found first, then the sections in order.
	want := []string{"4:3", "2:26", "3:41", "3:61"}
	if !slices.Equal(got, want) {
		t.Errorf("error positions %v, want %v\n%v", got, want, err)
	}
}

func TestSyntaxErrorUnwraps(t *testing.T) {
	_, err := Parse([]byte(`{"acls": [`))
	e, ok := errors.AsType[*Error](err)
	if !ok || e.Err == nil {
		t.Fatalf("error %v: want an *Error wrapping the hujson error", err)
	}
	if e.Line != 1 || e.Column != 11 {
		t.Errorf("syntax error at %d:%d, want 1:11", e.Line, e.Column)
	}
}

func TestDefault(t *testing.T) {
	cfg, err := os.ReadFile(filepath.Join("..", "..", "configs", "policy.hujson"))
	if err != nil {
		t.Fatal(err)
	}
	p := Default()
	if !bytes.Equal(p.Source(), cfg) {
		t.Errorf("Default().Source() differs from configs/policy.hujson; copy one onto the other")
	}
	a := mkNode(1, "a", "alice", nil, "100.64.0.1")
	b := mkNode(2, "b", "", []string{"tag:x"}, "100.64.0.2")
	for _, proto := range []uint8{protoTCP, protoUDP, protoICMP} {
		for _, port := range []uint16{0, 22, 65535} {
			if !p.Allows(a, b, proto, port) || !p.Allows(b, a, proto, port) {
				t.Errorf("default denies proto %d port %d", proto, port)
			}
		}
	}
	if !p.MayExpose(a, "anything") || !p.MayExpose(b, "web") {
		t.Error("default forbids exposing")
	}
	if !p.MayPeerRelay(a) || !p.MayPeerRelay(b) {
		t.Error("default forbids peer relays")
	}
	if p.MayOwnTag("alice", true, "tag:x") {
		t.Error("default lists tags it has no tagOwners for")
	}
	c := p.Compile([]*wire.Node{a, b})
	if _, vis := c.For(a.Key); !slices.Equal(vis, []key.NodePublic{b.Key}) {
		t.Errorf("a sees %v, want b", vis)
	}
}

func TestMayExpose(t *testing.T) {
	p := mustParse(t, `{
		"groups": {"group:eng": ["alice"]},
		"tagOwners": {"tag:web": []},
		"expose": [
			{"src": ["tag:web"], "names": ["*"]},
			{"src": ["group:eng"], "names": ["App-*", "docs", "www.example.com"]},
			{"src": ["100.64.9.0/24"], "names": ["lab"]},
		],
	}`)
	web := mkNode(1, "web", "", []string{"tag:web"}, "100.64.0.1")
	alice := mkNode(2, "alice", "alice", nil, "100.64.0.2")
	aliceTagged := mkNode(3, "alice-ci", "alice", []string{"tag:ci"}, "100.64.0.3")
	bob := mkNode(4, "bob", "bob", nil, "100.64.0.4")
	labbox := mkNode(5, "labbox", "bob", nil, "100.64.9.9")
	tests := []struct {
		n    *wire.Node
		name string
		want bool
	}{
		{web, "anything", true},
		{alice, "app-1", true},
		{alice, "APP-beta.", true},
		{alice, "app-", false},
		{alice, "app", false},
		{alice, "docs", true},
		{alice, "docs2", false},
		{alice, "www.example.com", true},
		{alice, "example.com", false},
		{alice, "", false},
		{aliceTagged, "docs", false},
		{bob, "docs", false},
		{bob, "lab", false},
		{labbox, "lab", true},
		{nil, "lab", false},
	}
	for _, tt := range tests {
		name := "nil"
		if tt.n != nil {
			name = tt.n.Name
		}
		t.Run(name+"/"+tt.name, func(t *testing.T) {
			if got := p.MayExpose(tt.n, tt.name); got != tt.want {
				t.Errorf("MayExpose = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestMayOwnTag(t *testing.T) {
	p := mustParse(t, `{
		"groups": {"group:eng": ["alice", "bob"]},
		"tagOwners": {
			"tag:db": ["group:eng"],
			"tag:web": ["carol"],
			"tag:server": [],
			"tag:ci": ["autogroup:admin"],
		},
	}`)
	tests := []struct {
		user  string
		admin bool
		tag   string
		want  bool
	}{
		{"alice", false, "tag:db", true},
		{"bob", false, "tag:db", true},
		{"carol", false, "tag:db", false},
		{"carol", false, "tag:web", true},
		{"alice", false, "tag:web", false},
		{"alice", false, "tag:server", false},
		{"root", true, "tag:server", true},
		{"root", true, "tag:db", true},
		{"alice", false, "tag:ci", false},
		{"root", true, "tag:ci", true},
		{"root", true, "tag:unlisted", false},
		{"", false, "tag:db", false},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s/admin=%v/%s", tt.user, tt.admin, tt.tag), func(t *testing.T) {
			if got := p.MayOwnTag(tt.user, tt.admin, tt.tag); got != tt.want {
				t.Errorf("MayOwnTag = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestCheckUsers(t *testing.T) {
	p := mustParse(t, `{
  "groups": {"group:eng": ["alice", "bob"]},
  "tagOwners": {"tag:db": ["carol"]},
  "hosts": {"db-primary": "100.64.0.9"},
  "acls": [{"action": "accept", "src": ["group:eng", "dave"], "dst": ["dbprimary:5432", "db-primary:22"]}],
  "tests": [{"src": "erin", "deny": ["alice:22"]}],
  "expose": [{"src": ["frank"], "names": ["*"]}],
}`)
	if err := p.CheckUsers(func(string) bool { return true }); err != nil {
		t.Errorf("CheckUsers with all users known: %v", err)
	}
	known := map[string]bool{"alice": true, "bob": true, "carol": true, "dave": true, "erin": true, "frank": true}
	// dbprimary is a misspelt host alias; bob and erin do not exist.
	delete(known, "bob")
	delete(known, "erin")
	err := p.CheckUsers(func(u string) bool { return known[u] })
	j, ok := err.(interface{ Unwrap() []error })
	if !ok {
		t.Fatalf("CheckUsers = %v, want joined errors", err)
	}
	var got []string
	for _, e := range j.Unwrap() {
		pe, ok := errors.AsType[*Error](e)
		if !ok {
			t.Fatalf("%v is not an *Error", e)
		}
		got = append(got, fmt.Sprintf("%d:%d %s", pe.Line, pe.Column, pe.Msg))
	}
	want := []string{
		`2:37 unknown user or host "bob"`,
		`5:71 unknown user or host "dbprimary"`,
		`6:21 unknown user or host "erin"`,
	}
	if !slices.Equal(got, want) {
		t.Errorf("CheckUsers errors:\n got %q\nwant %q", got, want)
	}
}

// TestMayPeerRelay: only the nodes "peerRelays" selects may offer a peer
// relay server; a policy without the field designates none.
func TestMayPeerRelay(t *testing.T) {
	p := mustParse(t, `{
		"groups": {"group:ops": ["carol"]},
		"tagOwners": {"tag:relay": [], "tag:web": []},
		"peerRelays": ["tag:relay", "group:ops"],
	}`)
	none := mustParse(t, `{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}`)
	relay := mkNode(1, "relay", "", []string{"tag:relay"}, "100.64.0.1")
	web := mkNode(2, "web", "", []string{"tag:web"}, "100.64.0.2")
	carol := mkNode(3, "carol", "carol", nil, "100.64.0.3")
	bob := mkNode(4, "bob", "bob", nil, "100.64.0.4")
	tests := []struct {
		n          *wire.Node
		want, none bool
	}{
		{relay, true, false},
		{web, false, false},
		{carol, true, false},
		{bob, false, false},
		{nil, false, false},
	}
	for _, tt := range tests {
		name := "nil"
		if tt.n != nil {
			name = tt.n.Name
		}
		t.Run(name, func(t *testing.T) {
			if got := p.MayPeerRelay(tt.n); got != tt.want {
				t.Errorf("MayPeerRelay = %v, want %v", got, tt.want)
			}
			if got := none.MayPeerRelay(tt.n); got != tt.none {
				t.Errorf("without peerRelays: MayPeerRelay = %v, want %v", got, tt.none)
			}
		})
	}
	for _, bad := range []string{`{"peerRelays": []}`, `{"peerRelays": ["tag:nope"]}`, `{"peerRelays": ["autogroup:self"]}`} {
		if _, err := Parse([]byte(bad)); err == nil {
			t.Errorf("Parse(%s) succeeded, want an error", bad)
		}
	}
}
