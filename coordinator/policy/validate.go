package policy

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"

	"beam.dev/beam/wire"
)

// Validate runs the policy's "tests" block against nodes, the members of
// one network. A test's source and each destination stand for every node
// they match; a user, tag, host or IP that matches no node stands for a
// synthesised node with that identity, so tests also hold for nodes that
// do not exist yet. Every accept entry must be allowed for every
// source/destination pair and every deny entry for none (with the test's
// proto, TCP by default).
//
// It returns nil if all tests pass, or an *Error wrapping ErrTestFailed
// for the first failing entry, located at that entry, with a message like
// "alice -> tag:db:22: accepted, want denied".
func (p *Policy) Validate(nodes []*wire.Node) error {
	for i := range p.tests {
		t := &p.tests[i]
		srcs := p.testNodes(t.src, nodes)
		for _, want := range []bool{true, false} {
			list := t.deny
			if want {
				list = t.accept
			}
			for _, d := range list {
				dsts := p.testNodes(d.sel, nodes)
				if note, bad := p.firstMismatch(srcs, dsts, t.proto, d.port, want); bad {
					got, wantS := "denied", "accepted"
					if !want {
						got, wantS = "accepted", "denied"
					}
					return &Error{
						Line:   d.pos.line,
						Column: d.pos.col,
						Msg:    fmt.Sprintf("%s -> %s: %s, want %s%s", t.srcStr, d.str, got, wantS, note),
						Err:    ErrTestFailed,
					}
				}
			}
		}
	}
	return nil
}

// firstMismatch reports whether some pair of srcs and dsts has Allows !=
// want, with a note naming the pair when there was more than one.
func (p *Policy) firstMismatch(srcs, dsts []*wire.Node, proto uint8, port uint16, want bool) (note string, bad bool) {
	for _, s := range srcs {
		for _, d := range dsts {
			if p.Allows(s, d, proto, port) == want {
				continue
			}
			if len(srcs) == 1 && len(dsts) == 1 {
				return "", true
			}
			return fmt.Sprintf(" (from %s to %s)", nodeName(s), nodeName(d)), true
		}
	}
	return "", false
}

func nodeName(n *wire.Node) string {
	switch {
	case n.Name != "":
		return n.Name
	case !n.Key.IsZero():
		return n.Key.ShortString()
	case n.User != "":
		return "a future node of " + n.User
	case len(n.Tags) > 0:
		return "a future node tagged " + n.Tags[0]
	}
	return "a future node"
}

// testNodes returns the nodes sel matches, or a synthesised node for it if
// none does. For a group, members without nodes get a synthesised node
// each.
func (p *Policy) testNodes(sel selector, nodes []*wire.Node) []*wire.Node {
	var out []*wire.Node
	if sel.kind == selGroup {
		for _, u := range slices.Sorted(maps.Keys(p.groups[sel.name])) {
			if !p.userHasNode(u, nodes) {
				out = append(out, &wire.Node{User: u})
			}
		}
	}
	for _, n := range nodes {
		if n != nil && p.matches(sel, n) {
			out = append(out, n)
		}
	}
	if len(out) > 0 {
		return out
	}
	switch sel.kind {
	case selUser:
		return []*wire.Node{{User: sel.name}}
	case selTag:
		return []*wire.Node{{Tags: []string{sel.name}}}
	case selPrefix:
		a := sel.prefix.Addr()
		return []*wire.Node{{Addresses: []netip.Prefix{netip.PrefixFrom(a, a.BitLen())}}}
	}
	return out
}

func (p *Policy) userHasNode(user string, nodes []*wire.Node) bool {
	for _, n := range nodes {
		if n != nil && untagged(n) && n.User == user {
			return true
		}
	}
	return false
}
