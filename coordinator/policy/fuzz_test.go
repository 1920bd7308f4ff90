package policy

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"testing"

	"beam.dev/beam/wire"
)

// fuzzSeeds are policies for both fuzz targets.
var fuzzSeeds = []string{
	// The default policy.
	string(defaultSource),
	// Every kind of selector, hosts, CIDRs, IPv6, protos.
	scenario,
	// A tests block.
	testsPolicy,
	// autogroup:self with ports and ICMP.
	`{"groups": {"group:g": ["a", "b"]}, "acls": [
		{"action": "accept", "src": ["group:g"], "dst": ["autogroup:self:22,80-90"]},
		{"action": "accept", "src": ["a"], "dst": ["b:*"], "proto": "icmp"},
	]}`,
	// Tags, numeric proto, overlapping port ranges in one rule.
	`{"tagOwners": {"tag:x": [], "tag:y": ["u"]}, "acls": [
		{"action": "accept", "src": ["tag:x", "u"], "dst": ["tag:y:100-200", "tag:y:150-300", "tag:x:1"], "proto": 132},
	]}`,
	// Hosts with a CIDR and an IPv6 address.
	`{"hosts": {"h4": "100.64.0.10", "h6": "fd7a:bea0:b0de::10", "n": "100.64.0.0/24"}, "acls": [
		{"action": "accept", "src": ["n"], "dst": ["h6:53", "h4:*"], "proto": "udp"},
	]}`,
	// Syntax and semantic errors.
	`{"acls": [`,
	`{"acls": [{"action": "accept", "src": ["0.0.0.0/0"], "dst": ["*:*"]}]}`,
	`{"expose": [{"src": ["*"], "names": ["app-*", "*"]}], "bogus": null}`,
	"\x00\xff",
	`/* unterminated`,
}

// FuzzParse checks that Parse never panics, that errors are *Error values
// with a position, and that accepted policies can be validated and
// compiled.
func FuzzParse(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := Parse(b)
		if err != nil {
			if p != nil {
				t.Fatalf("Parse returned a policy and error %v", err)
			}
			errs := []error{err}
			if j, ok := err.(interface{ Unwrap() []error }); ok {
				errs = j.Unwrap()
			}
			for _, e := range errs {
				pe, ok := errors.AsType[*Error](e)
				if !ok {
					t.Fatalf("error %v (%T) is not an *Error", e, e)
				}
				if pe.Line < 1 || pe.Column < 1 {
					t.Fatalf("error %v has no position", e)
				}
			}
			return
		}
		if string(p.Source()) != string(b) {
			t.Fatalf("Source() differs from the input")
		}
		nodes := fuzzNodes(p)
		_ = p.Validate(nodes)
		c := p.Compile(nodes)
		for _, n := range nodes {
			c.For(n.Key)
		}
	})
}

// FuzzCompileConsistent checks, for every policy that parses, that the
// compiled filters admit exactly the packets Allows allows over a small
// node set built from the policy's own names, and that visibility matches
// the filters.
func FuzzCompileConsistent(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := Parse(b)
		if err != nil {
			return
		}
		nodes := fuzzNodes(p)
		ports := map[uint16]bool{0: true, 1: true, 22: true, 443: true, 65535: true}
		protos := map[uint8]bool{protoTCP: true, protoUDP: true, protoICMP: true, protoICMPv6: true, 47: true}
		// Bound the work: the check is quadratic in nodes and linear in
		// ports and protocols.
		for _, r := range p.acls[:min(len(p.acls), 8)] {
			for _, pr := range r.protos {
				protos[uint8(pr)] = true
			}
			for _, d := range r.dst[:min(len(r.dst), 4)] {
				for _, pr := range d.ports {
					for _, v := range []int{int(pr.first) - 1, int(pr.first), int(pr.last), int(pr.last) + 1} {
						if v >= 0 && v <= 65535 {
							ports[uint16(v)] = true
						}
					}
				}
			}
		}
		checkConsistent(t, p, p.Compile(nodes), nodes,
			slices.Sorted(maps.Keys(ports)), slices.Sorted(maps.Keys(protos)))
	})
}

// fuzzNodes builds a small node set covering the users, tags and hosts a
// policy names: two nodes for the first user (for autogroup:self), one per
// other user, one per tag (registered by a user, to check that tagged nodes
// lose their user identity), one per host address and one user nobody
// names. Addresses are unique.
func fuzzNodes(p *Policy) []*wire.Node {
	userSet := map[string]bool{"nobody": true}
	addSel := func(s selector) {
		if s.kind == selUser {
			userSet[s.name] = true
		}
	}
	for _, members := range p.groups {
		for u := range members {
			userSet[u] = true
		}
	}
	for _, r := range p.acls {
		for _, s := range r.src {
			addSel(s)
		}
		for _, d := range r.dst {
			addSel(d.sel)
		}
	}
	users := slices.Sorted(maps.Keys(userSet))
	tags := slices.Sorted(maps.Keys(p.tagOwners))
	users, tags = users[:min(len(users), 4)], tags[:min(len(tags), 3)]

	var nodes []*wire.Node
	used := map[netip.Addr]bool{}
	add := func(user string, tags []string, addrs ...netip.Addr) {
		i := len(nodes) + 1
		n := &wire.Node{ID: wire.NodeID(i), Key: testKey(i), Name: fmt.Sprintf("n%d", i), User: user, Tags: tags}
		for _, a := range addrs {
			if used[a] {
				continue
			}
			used[a] = true
			n.Addresses = append(n.Addresses, netip.PrefixFrom(a, a.BitLen()))
		}
		// The consistency check judges filters by addresses, so every
		// node needs one.
		if len(n.Addresses) > 0 {
			nodes = append(nodes, n)
		}
	}
	v4 := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{100, 64, 0, byte(i)}) }
	v6 := func(i int) netip.Addr {
		return netip.AddrFrom16([16]byte{0xfd, 0x7a, 0xbe, 0xa0, 0xb0, 0xde, 15: byte(i)})
	}
	// Host addresses first so they are not taken by generated nodes.
	hosts := slices.Sorted(maps.Keys(p.hosts))
	for _, h := range hosts[:min(len(hosts), 3)] {
		add("hostuser", nil, p.hosts[h].Addr())
	}
	for i, u := range users {
		add(u, nil, v4(100+i), v6(100+i))
	}
	if len(users) > 0 {
		add(users[0], nil, v4(150))
	}
	for i, tag := range tags {
		add(users[0], []string{tag}, v4(200+i), v6(200+i))
	}
	return nodes
}
