package node

import (
	"net/netip"
	"reflect"

	"beam.dev/beam/netstack"
	"beam.dev/beam/wire"
)

// convertFilter turns the coordinator's filter into the engine's. Rules
// name address sets of sets by SrcSets; each set becomes one
// netstack.AddrSet that every rule naming it shares, and a set the
// netmap lacks matches nothing.
func convertFilter(rules []wire.FilterRule, sets map[string][]netip.Prefix) *netstack.Filter {
	return (&filterCache{}).convert(rules, sets)
}

// sameButFilter reports whether a and b (without peers) are equal but for
// their filters, which filterCache makes the same pointer when unchanged.
func sameButFilter(a, b *netstack.Config) bool {
	c := *a
	c.Filter = b.Filter
	return reflect.DeepEqual(&c, b)
}

// filterCache converts a netmap's filter for the engine, reusing what did
// not change since the last call: the same *netstack.Filter when neither
// the rules nor a set they name changed (so the engine's configuration
// compares equal), and the AddrSet of every set that did not change. A
// join that adds one address to a set rebuilds that set alone.
type filterCache struct {
	rules []wire.FilterRule
	sets  map[string]cachedSet
	out   *netstack.Filter
}

// cachedSet is a set's addresses as the netmap held them (NetMap.Apply
// replaces a set's slice when it changes, never modifies it) and the
// engine's set built from them.
type cachedSet struct {
	src []netip.Prefix
	as  *netstack.AddrSet
}

// sameSlice reports whether a and b are the same slice.
func sameSlice(a, b []netip.Prefix) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}

func (fc *filterCache) convert(rules []wire.FilterRule, sets map[string][]netip.Prefix) *netstack.Filter {
	changed := fc.out == nil || !reflect.DeepEqual(rules, fc.rules)
	next := make(map[string]cachedSet, len(fc.sets))
	for _, r := range rules {
		for _, name := range r.SrcSets {
			if _, done := next[name]; done {
				continue
			}
			src := sets[name]
			c, ok := fc.sets[name]
			if !ok || !sameSlice(c.src, src) {
				c, changed = cachedSet{src: src, as: netstack.NewAddrSet(src)}, true
			}
			next[name] = c
		}
	}
	if len(next) != len(fc.sets) {
		changed = true
	}
	fc.sets = next
	if !changed {
		return fc.out
	}
	f := &netstack.Filter{Rules: make([]netstack.FilterRule, 0, len(rules))}
	for _, r := range rules {
		fr := netstack.FilterRule{SrcIPs: append([]netip.Prefix(nil), r.SrcIPs...)}
		for _, name := range r.SrcSets {
			fr.SrcSets = append(fr.SrcSets, next[name].as)
		}
		for _, d := range r.DstPorts {
			fr.DstPorts = append(fr.DstPorts, netstack.PortRange{Prefix: d.IP, First: d.First, Last: d.Last})
		}
		for _, p := range r.Protos {
			if p >= 0 && p <= 255 {
				fr.Protos = append(fr.Protos, uint8(p))
			}
		}
		f.Rules = append(f.Rules, fr)
	}
	fc.rules, fc.out = rules, f
	return f
}
