package wire

import "net/netip"

// Bounds on what a node reports about itself. The coordinator enforces
// them on every RegisterRequest and MapRequest before it stores or fans
// out anything; nodes bound peers' endpoints again where they use them,
// so that an old or hostile coordinator cannot make them keep more.
const (
	// MaxEndpoints is the most UDP endpoints kept of one node, after
	// CleanEndpoints dropped duplicates and unusable ones.
	MaxEndpoints = 64
	// MaxHostnameLen is the longest hostname kept (a DNS name's 253
	// bytes); longer ones are cut. The node's name is a DNS label of at
	// most 63 bytes derived from it.
	MaxHostnameLen = 253
	// MaxOSLen is the longest operating system name kept.
	MaxOSLen = 64
)

// CleanEndpoints returns the first MaxEndpoints usable endpoints of eps,
// in order, without duplicates: IPv4-mapped IPv6 addresses unmapped, and
// invalid, unspecified, multicast and broadcast addresses, zoned ones and
// port 0 dropped. It returns eps itself when it has nothing to drop.
func CleanEndpoints(eps []netip.AddrPort) []netip.AddrPort {
	usable := func(ap netip.AddrPort) bool {
		a := ap.Addr()
		return ap.IsValid() && ap.Port() != 0 && !a.IsUnspecified() && !a.IsMulticast() &&
			a.Zone() == "" && a != netip.AddrFrom4([4]byte{255, 255, 255, 255})
	}
	clean := len(eps) <= MaxEndpoints
	for i := 0; clean && i < len(eps); i++ {
		ap := eps[i]
		if !usable(ap) || ap.Addr().Is4In6() {
			clean = false
			break
		}
		for _, prev := range eps[:i] {
			if prev == ap {
				clean = false
				break
			}
		}
	}
	if clean {
		return eps
	}
	out := make([]netip.AddrPort, 0, min(len(eps), MaxEndpoints))
	seen := make(map[netip.AddrPort]bool, min(len(eps), MaxEndpoints))
	for _, ap := range eps {
		ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		if !usable(ap) || seen[ap] {
			continue
		}
		seen[ap] = true
		out = append(out, ap)
		if len(out) == MaxEndpoints {
			break
		}
	}
	return out
}
