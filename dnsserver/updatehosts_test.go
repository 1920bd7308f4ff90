package dnsserver

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"testing"
)

// flat returns the lookup tables of s as plain maps.
func flat(s *snapshot) (hosts map[string][]netip.Addr, names map[string]int32, ptr map[netip.Addr][]string) {
	hosts, names, ptr = map[string][]netip.Addr{}, map[string]int32{}, map[netip.Addr][]string{}
	for i := range mapShards {
		maps.Copy(hosts, s.hosts.m[i])
		maps.Copy(names, s.names.m[i])
		maps.Copy(ptr, s.ptr.m[i])
	}
	return hosts, names, ptr
}

// TestUpdateHostsMatchesRebuild changes random hosts (new, removed,
// readdressed, sharing addresses, deeper names with ancestors, a TXT name
// too) with withHosts and checks every table against a snapshot built
// from scratch from the records so changed, and that the snapshot before
// is unchanged.
func TestUpdateHostsMatchesRebuild(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	addr := func() netip.Addr {
		if rng.IntN(3) == 0 {
			return netip.AddrFrom16([16]byte{0xfd, 0x7a, 15: byte(rng.IntN(30))})
		}
		return netip.AddrFrom4([4]byte{100, 64, 0, byte(rng.IntN(30))})
	}
	name := func() string {
		n := fmt.Sprintf("h%d.default.beam.internal", rng.IntN(40))
		if rng.IntN(5) == 0 {
			n = "x.y" + n
		}
		return n
	}
	rec := &Records{Domain: "default.beam.internal", Hosts: map[string][]netip.Addr{}, TXT: map[string][]string{"h1.default.beam.internal": {"t"}}}
	for range 30 {
		rec.Hosts[name()] = []netip.Addr{addr()}
	}
	s := newSnapshot(rec, 1)
	for step := range 300 {
		ch := map[string][]netip.Addr{}
		for range 1 + rng.IntN(3) {
			var as []netip.Addr
			for range rng.IntN(3) {
				as = append(as, addr())
			}
			ch[name()] = as
		}
		bh, bn, bp := flat(s)
		next := s.withHosts(ch, uint32(step+2))
		if h, n, p := flat(s); !reflect.DeepEqual(h, bh) || !maps.Equal(n, bn) || !reflect.DeepEqual(p, bp) {
			t.Fatalf("step %d: withHosts changed the snapshot it started from", step)
		}
		for k, as := range ch {
			if len(as) == 0 {
				delete(rec.Hosts, k)
			} else {
				rec.Hosts[k] = as
			}
		}
		want := newSnapshot(rec, uint32(step+2))
		gh, gn, gp := flat(next)
		wh, wn, wp := flat(want)
		if !reflect.DeepEqual(gh, wh) {
			t.Fatalf("step %d: hosts %v, want %v", step, gh, wh)
		}
		if !maps.Equal(gn, wn) {
			t.Fatalf("step %d: names %v, want %v", step, gn, wn)
		}
		if !reflect.DeepEqual(gp, wp) {
			t.Fatalf("step %d: ptr %v, want %v", step, gp, wp)
		}
		for _, p := range want.revPfx {
			if !slices.Contains(next.revPfx, p) {
				t.Fatalf("step %d: reverse prefix %v missing", step, p)
			}
		}
		if next.soa.Serial != uint32(step+2) {
			t.Fatalf("step %d: SOA serial %d", step, next.soa.Serial)
		}
		s = next
	}
}
