package oidcauth

import (
	"fmt"
	"log/slog"
	"net/netip"
	"testing"
	"time"
)

// TestFlowsGroupIPv6By48: one IPv6 site can send from as many /64s as
// it likes; at the total bound its sign-ins are counted together, so
// they, not another site's, are pushed out.
func TestFlowsGroupIPv6By48(t *testing.T) {
	fs := NewFlows(8, 2)
	now := time.Now()
	log := slog.New(slog.DiscardHandler)
	add := func(state, src string) {
		p := netip.MustParsePrefix(src)
		fs.add(state, &flow{expires: now.Add(StateTTL), source: p, group: groupOf(p)}, now, log)
	}
	add("person", "2001:db8:aaaa:1::/64")
	for i := range 100 {
		add(fmt.Sprint("flood-", i), fmt.Sprintf("2001:db8:bbbb:%x::/64", i+1))
	}
	if fs.states["person"] == nil {
		t.Fatal("a flood from 100 /64s of one /48 pushed out another site's sign-in")
	}
	if n := len(fs.states); n != 8 {
		t.Errorf("%d sign-ins kept, want the bound, 8", n)
	}
	if n := fs.perGroup[netip.MustParsePrefix("2001:db8:bbbb::/48")]; n != 7 {
		t.Errorf("the flooding /48 has %d sign-ins, want 7", n)
	}
}
