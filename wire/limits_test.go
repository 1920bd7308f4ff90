package wire

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"
)

func TestCleanEndpoints(t *testing.T) {
	ap := netip.MustParseAddrPort
	many := make([]netip.AddrPort, 0, 30000)
	for i := range 30000 {
		many = append(many, ap(fmt.Sprintf("198.51.100.%d:%d", i%250+1, 1000+i)))
	}
	tests := []struct {
		name string
		in   []netip.AddrPort
		want []netip.AddrPort
	}{
		{"nil", nil, nil},
		{"clean", []netip.AddrPort{ap("198.51.100.1:41641"), ap("[2001:db8::1]:41641")}, []netip.AddrPort{ap("198.51.100.1:41641"), ap("[2001:db8::1]:41641")}},
		{"duplicates", []netip.AddrPort{ap("198.51.100.1:41641"), ap("198.51.100.1:41641"), ap("[::ffff:198.51.100.1]:41641")}, []netip.AddrPort{ap("198.51.100.1:41641")}},
		{"unusable", []netip.AddrPort{ap("0.0.0.0:41641"), ap("[::]:41641"), ap("224.0.0.1:41641"), ap("[ff02::1]:41641"),
			ap("255.255.255.255:41641"), ap("198.51.100.1:0"), ap("[fe80::1%eth0]:41641"), {}, ap("198.51.100.2:41641")},
			[]netip.AddrPort{ap("198.51.100.2:41641")}},
		{"too many", many, many[:MaxEndpoints]},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := CleanEndpoints(tc.in); !slices.Equal(got, tc.want) {
				t.Errorf("got %d %v, want %d %v", len(got), got, len(tc.want), tc.want)
			}
		})
	}
}
