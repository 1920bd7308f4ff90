// Package policy parses and compiles Beam access policies.
//
// A policy is a HuJSON document (JSON with comments and trailing commas),
// a Tailscale-compatible subset:
//
//	{
//	  "groups":    {"group:eng": ["alice", "bob"]},
//	  "tagOwners": {"tag:db": ["group:eng"], "tag:server": []}, // empty: admins only
//	  "hosts":     {"db-primary": "100.64.0.9", "lab": "100.64.1.0/24"},
//	  "acls": [
//	    {"action": "accept", "src": ["group:eng"], "dst": ["tag:db:5432", "autogroup:self:*"], "proto": "tcp"},
//	  ],
//	  "tests":  [{"src": "alice", "accept": ["tag:db:5432"], "deny": ["tag:db:22"]}],
//	  "expose": [{"src": ["tag:web"], "names": ["*"]}],
//	}
//
// Selectors name sets of nodes of one network: "*" (every node, never
// anything outside the overlay), a user name (that user's untagged nodes),
// "group:x", "tag:x" (nodes carrying the tag), a host alias from "hosts",
// an IP or CIDR literal inside the overlay (100.64.0.0/10 or the IPv6 ULA
// fd7a:bea0:b0de::/48), and in acls dst "autogroup:self" (the untagged nodes of the
// source node's own user). A bare name that is not a host alias is a user
// name. Tagged nodes have no user identity: user, group and autogroup:self
// selectors never match them.
//
// A dst entry is "selector:ports" where ports is "*", "22", "80,443" or
// "8000-8999"; an IPv6 literal may be bracketed ("[fd7a::1]:22"). "proto"
// is "tcp", "udp", "icmp" (ICMP and ICMPv6) or a protocol number; without
// it a rule allows TCP, UDP, ICMP and ICMPv6. Ports only apply to TCP, UDP
// and SCTP; other protocols ignore them, and a rule naming such a protocol
// must use "*" ports.
//
// "expose" is Beam's own section: who may publish public edge routes and
// under which names ("*" for any free name, an exact name, or a prefix
// pattern "app-*").
//
// Parse checks a policy; Compile turns it plus a network's nodes into each
// node's packet filter and peer visibility. Everything here is pure: no
// I/O, no store.
package policy

import (
	_ "embed"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"beam.dev/beam/wire"
)

// Policy is a parsed, checked access policy. It is immutable and safe for
// concurrent use. The zero Policy denies everything and exposes nothing.
type Policy struct {
	src []byte

	// groups maps "group:x" to its member users.
	groups map[string]map[string]bool
	// tagOwners maps "tag:x" to its owners: user names and "group:x".
	// An empty list means admins only.
	tagOwners map[string][]string
	// hosts maps host aliases to overlay prefixes.
	hosts  map[string]netip.Prefix
	acls   []rule
	tests  []test
	expose []exposeRule
	// peerRelays select the nodes that may offer a peer relay server.
	peerRelays []selector
	// userRefs are the places that name a user, for CheckUsers.
	userRefs []userRef
	// base is the policy as parsed when groups hold members added by
	// WithGroupMembers; nil for a parsed policy.
	base *Policy
}

// WithGroupMembers returns a copy of p whose groups also list the users in
// extra (group name -> users), as an identity provider's groups claim
// gives them. Groups the policy does not define are ignored: the policy
// decides which groups exist. Members added by an earlier call are
// replaced, not kept.
func (p *Policy) WithGroupMembers(extra map[string][]string) *Policy {
	base := p
	if p.base != nil {
		base = p.base
	}
	q := *base
	q.base = base
	q.groups = make(map[string]map[string]bool, len(base.groups))
	for g, members := range base.groups {
		m := make(map[string]bool, len(members)+len(extra[g]))
		for u := range members {
			m[u] = true
		}
		for _, u := range extra[g] {
			m[u] = true
		}
		q.groups[g] = m
	}
	return &q
}

// userRef is a user name at a place in the source.
type userRef struct {
	user string
	pos  pos
}

// rule is one acls entry.
type rule struct {
	pos    pos
	src    []selector
	dst    []dstEntry
	protos []int // nil: defaultProtos
}

// dstEntry is one "selector:ports" of a rule's dst.
type dstEntry struct {
	sel   selector
	ports []portRange
}

// test is one entry of the "tests" block.
type test struct {
	pos    pos
	src    selector
	srcStr string
	proto  uint8
	accept []testDst
	deny   []testDst
}

// testDst is one "selector:port" of a test.
type testDst struct {
	pos  pos
	str  string
	sel  selector
	port uint16
}

// exposeRule is one "expose" entry.
type exposeRule struct {
	src   []selector
	names []string // "*", exact names, or prefixes ending in "*"
}

//go:embed default.hujson
var defaultSource []byte

// Default returns the default policy: every node of a network reaches
// every other node on every port, and every node may publish public routes
// under any free name. Its source is the file configs/policy.hujson. The
// same immutable *Policy is returned on every call.
func Default() *Policy { return defaultPolicy() }

var defaultPolicy = sync.OnceValue(func() *Policy {
	p, err := Parse(defaultSource)
	if err != nil {
		panic("policy: embedded default policy does not parse: " + err.Error()) // a programmer error
	}
	return p
})

// Source returns the policy text as it was parsed, comments included.
// The caller must not modify it.
func (p *Policy) Source() []byte { return p.src }

// CheckUsers reports every user name the policy mentions (in groups,
// tagOwners, acls, tests and expose) for which known returns false, as
// *Error values joined with errors.Join, or nil if there is none.
//
// A bare name that is not a host alias is taken for a user name, so Parse
// cannot tell a misspelt host alias from a user that does not exist; the
// coordinator, which knows its users, calls this to catch both.
func (p *Policy) CheckUsers(known func(user string) bool) error {
	var errs []error
	for _, r := range p.userRefs {
		if !known(r.user) {
			errs = append(errs, &Error{Line: r.pos.line, Column: r.pos.col, Msg: fmt.Sprintf("unknown user or host %q", r.user)})
		}
	}
	return errors.Join(errs...)
}

// Allows reports whether the policy lets node src open a flow to node dst
// with IP protocol proto and destination port port. port is ignored for
// protocols without ports (anything but TCP, UDP and SCTP).
func (p *Policy) Allows(src, dst *wire.Node, proto uint8, port uint16) bool {
	if src == nil || dst == nil {
		return false
	}
	for i := range p.acls {
		r := &p.acls[i]
		if !protoMatch(r.protos, proto) || !p.anyMatch(r.src, src) {
			continue
		}
		for _, d := range r.dst {
			if d.sel.kind == selSelf {
				if !untagged(src) || !untagged(dst) || src.User != dst.User {
					continue
				}
			} else if !p.matches(d.sel, dst) {
				continue
			}
			if !hasPorts(int(proto)) {
				return true
			}
			for _, pr := range d.ports {
				if pr.first <= port && port <= pr.last {
					return true
				}
			}
		}
	}
	return false
}

func (p *Policy) anyMatch(sels []selector, n *wire.Node) bool {
	return slices.ContainsFunc(sels, func(s selector) bool { return p.matches(s, n) })
}

// MayExpose reports whether node n may publish a public edge route under
// name (a DNS label or custom domain; compared case-insensitively, a
// trailing dot ignored). It does not check that the name is free.
func (p *Policy) MayExpose(n *wire.Node, name string) bool {
	if n == nil {
		return false
	}
	name = strings.ToLower(strings.TrimSuffix(name, "."))
	if name == "" {
		return false
	}
	for _, e := range p.expose {
		if !p.anyMatch(e.src, n) {
			continue
		}
		for _, pat := range e.names {
			if nameMatch(pat, name) {
				return true
			}
		}
	}
	return false
}

// MayPeerRelay reports whether node n may offer a peer relay server to
// its peers (the policy's "peerRelays" selects it). A node relaying for
// others sees which of its peers talk to each other, so only the nodes
// the policy names may; none if it names none.
func (p *Policy) MayPeerRelay(n *wire.Node) bool {
	return n != nil && p.anyMatch(p.peerRelays, n)
}

// nameMatch matches a lower-case name against an expose pattern.
func nameMatch(pat, name string) bool {
	if pat == "*" {
		return true
	}
	if prefix, ok := strings.CutSuffix(pat, "*"); ok {
		return len(name) > len(prefix) && strings.HasPrefix(name, prefix)
	}
	return pat == name
}

// GrantsTag reports whether tag is listed in tagOwners, so that nodes may
// hold it. A node carrying a tag the policy no longer lists (dropped since
// its auth key was made) does not hold it: see HeldTags.
func (p *Policy) GrantsTag(tag string) bool {
	_, ok := p.tagOwners[tag]
	return ok
}

// HeldTags splits n's tags into those the policy grants (held: they count
// for every selector) and those it no longer does (ungranted: treated as
// not held). held aliases n.Tags when every tag is granted.
func (p *Policy) HeldTags(n *wire.Node) (held, ungranted []string) {
	if !slices.ContainsFunc(n.Tags, func(t string) bool { return !p.GrantsTag(t) }) {
		return n.Tags, nil
	}
	for _, t := range n.Tags {
		if p.GrantsTag(t) {
			held = append(held, t)
		} else {
			ungranted = append(ungranted, t)
		}
	}
	return held, ungranted
}

// MayOwnTag reports whether user may create auth keys (and so nodes) that
// carry tag. The tag must be listed in tagOwners. An admin may use any
// listed tag; others must be listed as owners, directly or through a
// group. An empty owner list means admins only.
func (p *Policy) MayOwnTag(user string, isAdmin bool, tag string) bool {
	owners, ok := p.tagOwners[tag]
	if !ok {
		return false
	}
	if isAdmin {
		return true
	}
	if user == "" {
		return false
	}
	for _, o := range owners {
		if o == user || strings.HasPrefix(o, "group:") && p.groups[o][user] {
			return true
		}
	}
	return false
}
