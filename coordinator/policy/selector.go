package policy

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"beam.dev/beam/wire"
)

// The overlay ranges. IP and CIDR literals and host aliases must lie inside
// them, and compiled filters only ever carry node addresses inside them.
// They are the ranges the coordinator allocates node addresses from.
var (
	overlayIPv4 = wire.OverlayIPv4
	overlayIPv6 = wire.OverlayIPv6
)

// inOverlay reports whether every address of p is inside the overlay.
func inOverlay(p netip.Prefix) bool {
	for _, o := range []netip.Prefix{overlayIPv4, overlayIPv6} {
		if p.Addr().Is4() == o.Addr().Is4() && p.Bits() >= o.Bits() && o.Contains(p.Addr()) {
			return true
		}
	}
	return false
}

// selKind is the kind of a selector.
type selKind uint8

const (
	selAll    selKind = iota + 1 // "*": every node of the network
	selUser                      // a user name: the user's untagged nodes
	selGroup                     // "group:x": untagged nodes of the group's users
	selTag                       // "tag:x": nodes carrying the tag
	selPrefix                    // a host alias or IP/CIDR literal: nodes with an address inside
	selSelf                      // "autogroup:self" (dst only): nodes of the source's user
)

// selector names a set of nodes. It is comparable, so compiled node sets
// can be cached per selector.
type selector struct {
	kind   selKind
	name   string       // user name, "group:x" or "tag:x"
	prefix netip.Prefix // for selPrefix
}

// String returns the selector as a policy would spell it.
func (s selector) String() string {
	switch s.kind {
	case selAll:
		return "*"
	case selSelf:
		return "autogroup:self"
	case selPrefix:
		if s.name != "" {
			return s.name
		}
		if s.prefix.IsSingleIP() {
			return s.prefix.Addr().String()
		}
		return s.prefix.String()
	}
	return s.name
}

// selContext says where a selector appears, which decides what is allowed.
type selContext uint8

const (
	ctxSrc  selContext = iota // acls src, expose src
	ctxDst                    // acls dst (before the ports)
	ctxTest                   // tests src and dst: concrete identities only
)

// parseSelector resolves a selector string against the definitions of p
// (groups, tagOwners, hosts). It returns a message for people on error.
func (p *Policy) parseSelector(s string, where selContext) (selector, error) {
	switch {
	case s == "":
		return selector{}, fmt.Errorf("empty selector")
	case s == "*":
		if where == ctxTest {
			return selector{}, fmt.Errorf("tests need a user, group, tag, host or IP, not %q", s)
		}
		return selector{kind: selAll}, nil
	case strings.HasPrefix(s, "autogroup:"):
		if s != "autogroup:self" {
			return selector{}, fmt.Errorf("unknown autogroup %q (only autogroup:self is supported)", s)
		}
		if where != ctxDst {
			return selector{}, fmt.Errorf("autogroup:self is only allowed in acls dst")
		}
		return selector{kind: selSelf}, nil
	case strings.HasPrefix(s, "group:"):
		if _, ok := p.groups[s]; !ok {
			return selector{}, fmt.Errorf("unknown group %q", s)
		}
		return selector{kind: selGroup, name: s}, nil
	case strings.HasPrefix(s, "tag:"):
		if _, ok := p.tagOwners[s]; !ok {
			return selector{}, fmt.Errorf("unknown tag %q (tags must be listed in tagOwners)", s)
		}
		return selector{kind: selTag, name: s}, nil
	}
	if h, ok := p.hosts[s]; ok {
		return selector{kind: selPrefix, name: s, prefix: h}, nil
	}
	if pfx, ok, err := parseIPOrCIDR(s); ok {
		if err != nil {
			return selector{}, err
		}
		return selector{kind: selPrefix, prefix: pfx}, nil
	}
	if err := checkUserName(s); err != nil {
		return selector{}, err
	}
	return selector{kind: selUser, name: s}, nil
}

// parseIPOrCIDR parses s as an IP address or CIDR prefix inside the overlay.
// ok reports whether s looks like an address at all (so that a bad one is
// reported as such rather than taken for a user name).
func parseIPOrCIDR(s string) (_ netip.Prefix, ok bool, _ error) {
	looksIP := strings.Contains(s, "/") || strings.Count(s, ":") >= 2 || isDottedNumeric(s)
	if !looksIP {
		return netip.Prefix{}, false, nil
	}
	var pfx netip.Prefix
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, true, fmt.Errorf("bad CIDR %q", s)
		}
		if p != p.Masked() {
			return netip.Prefix{}, true, fmt.Errorf("CIDR %q has host bits set (did you mean %s?)", s, p.Masked())
		}
		pfx = p
	} else {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			return netip.Prefix{}, true, fmt.Errorf("bad IP address %q", s)
		}
		pfx = netip.PrefixFrom(a, a.BitLen())
	}
	if !inOverlay(pfx) {
		return netip.Prefix{}, true, fmt.Errorf("%q is outside the overlay (%s or %s)", s, overlayIPv4, overlayIPv6)
	}
	return pfx, true, nil
}

// isDottedNumeric reports whether s consists of digits and dots and has a
// dot: something meant as an IPv4 address.
func isDottedNumeric(s string) bool {
	if !strings.Contains(s, ".") {
		return false
	}
	for _, c := range s {
		if c != '.' && (c < '0' || c > '9') {
			return false
		}
	}
	return true
}

// checkUserName rejects strings that cannot be user names, which catches
// typos such as a missing prefix or a stray port.
func checkUserName(s string) error {
	for _, c := range s {
		if c <= ' ' || c == 0x7f || strings.ContainsRune(`:/*,[]"\`, c) {
			return fmt.Errorf("bad selector %q: not a user name, group:, tag:, host alias, IP or CIDR", s)
		}
	}
	return nil
}

// checkIdent checks the part after "group:" or "tag:": a letter, then
// letters, digits, '-', '_' or '.'.
func checkIdent(kind, full string) error {
	name := strings.TrimPrefix(full, kind)
	if name == full || name == "" {
		return fmt.Errorf("bad %sname %q", kind, full)
	}
	for i, c := range name {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' ||
			i > 0 && (c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.')
		if !ok {
			return fmt.Errorf("bad %q: the name after %q must start with a letter and hold only letters, digits, '-', '_' and '.'", full, kind)
		}
	}
	return nil
}

// portRange is an inclusive destination port range.
type portRange struct{ first, last uint16 }

// allPorts is "*".
var allPorts = portRange{0, 65535}

// parsePorts parses "*", "22", "80,443" or "8000-8999" (and comma lists of
// ranges). single requires exactly one port, as tests do.
func parsePorts(s string, single bool) ([]portRange, error) {
	if s == "*" {
		if single {
			return nil, fmt.Errorf("tests need a single port, not %q", s)
		}
		return []portRange{allPorts}, nil
	}
	if s == "" {
		return nil, fmt.Errorf("missing port")
	}
	var out []portRange
	for part := range strings.SplitSeq(s, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		first, err := parsePort(lo)
		if err != nil {
			return nil, err
		}
		last := first
		if isRange {
			if last, err = parsePort(hi); err != nil {
				return nil, err
			}
			if last < first {
				return nil, fmt.Errorf("bad port range %q: %d > %d", part, first, last)
			}
		}
		out = append(out, portRange{first, last})
	}
	if single && (len(out) != 1 || out[0].first != out[0].last) {
		return nil, fmt.Errorf("tests need a single port, not %q", s)
	}
	return out, nil
}

func parsePort(s string) (uint16, error) {
	if s == "" || len(s) > 5 || strings.TrimLeft(s, "0123456789") != "" {
		return 0, fmt.Errorf("bad port %q", s)
	}
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil {
		return 0, fmt.Errorf("bad port %q: must be 0-65535", s)
	}
	return uint16(n), nil
}

// splitHostPorts splits a dst entry "sel:ports" at its last colon. An
// IPv6 address may be bracketed: "[fd7a::1]:22".
func splitHostPorts(s string) (sel, ports string, err error) {
	if strings.HasPrefix(s, "[") {
		end := strings.Index(s, "]:")
		if end < 0 {
			return "", "", fmt.Errorf("bad destination %q: want [IPv6]:ports", s)
		}
		return s[1:end], s[end+2:], nil
	}
	i := strings.LastIndexByte(s, ':')
	if i < 0 {
		return "", "", fmt.Errorf("destination %q has no ports (write %s:* for all ports)", s, s)
	}
	return s[:i], s[i+1:], nil
}

// mergeRanges sorts rs and merges overlapping or adjacent ranges.
func mergeRanges(rs []portRange) []portRange {
	rs = slices.Clone(rs)
	slices.SortFunc(rs, func(a, b portRange) int { return int(a.first) - int(b.first) })
	out := rs[:0]
	for _, r := range rs {
		if n := len(out); n > 0 && uint32(r.first) <= uint32(out[n-1].last)+1 {
			out[n-1].last = max(out[n-1].last, r.last)
			continue
		}
		out = append(out, r)
	}
	return out
}

// Protocol numbers.
const (
	protoICMP   = 1
	protoTCP    = 6
	protoUDP    = 17
	protoICMPv6 = 58
	protoSCTP   = 132
)

// defaultProtos are the protocols a rule without "proto" allows, matching
// the meaning of an empty wire.FilterRule.Protos.
var defaultProtos = []int{protoTCP, protoUDP, protoICMP, protoICMPv6}

// hasPorts reports whether proto carries ports. For other protocols the
// destination port is ignored when matching.
func hasPorts(proto int) bool {
	return proto == protoTCP || proto == protoUDP || proto == protoSCTP
}

// parseProto parses a rule's "proto": "tcp", "udp", "icmp" (ICMP and
// ICMPv6) or an IP protocol number 1-255.
func parseProto(s string) ([]int, error) {
	switch strings.ToLower(s) {
	case "tcp":
		return []int{protoTCP}, nil
	case "udp":
		return []int{protoUDP}, nil
	case "icmp":
		return []int{protoICMP, protoICMPv6}, nil
	}
	n, err := strconv.ParseUint(s, 10, 8)
	if err != nil || n == 0 || strings.TrimLeft(s, "0123456789") != "" {
		return nil, fmt.Errorf("bad proto %q: want tcp, udp, icmp or a protocol number 1-255", s)
	}
	return []int{int(n)}, nil
}

// protoMatch reports whether a packet of proto matches a rule's protos
// (nil means defaultProtos).
func protoMatch(protos []int, proto uint8) bool {
	if protos == nil {
		protos = defaultProtos
	}
	return slices.Contains(protos, int(proto))
}

// untagged reports whether n speaks for its user: tagged nodes have no
// user identity for user, group and autogroup:self matching.
func untagged(n *wire.Node) bool { return len(n.Tags) == 0 && n.User != "" }

// matches reports whether node n is in the set named by s. selSelf needs a
// source node and is handled by the callers.
func (p *Policy) matches(s selector, n *wire.Node) bool {
	switch s.kind {
	case selAll:
		return true
	case selUser:
		return untagged(n) && n.User == s.name
	case selGroup:
		return untagged(n) && p.groups[s.name][n.User]
	case selTag:
		return slices.Contains(n.Tags, s.name)
	case selPrefix:
		for _, a := range n.Addresses {
			if s.prefix.Contains(a.Addr()) {
				return true
			}
		}
	}
	return false
}
