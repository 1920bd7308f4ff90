package cli

import (
	"testing"
)

func TestOtherFamilySTUN(t *testing.T) {
	tests := []struct {
		name      string
		host      string
		publicIPs []string
		want      []string
	}{
		{"IPv4 host lists IPv6", "203.0.113.10", []string{"203.0.113.10", "2001:db8::10"}, []string{"[2001:db8::10]:3478"}},
		{"IPv6 host lists IPv4", "2001:db8::10", []string{"203.0.113.10", "2001:db8::10", "2001:db8::11"}, []string{"203.0.113.10:3478"}},
		{"two IPv6", "203.0.113.10", []string{"2001:db8::10", "2001:db8::11"}, []string{"[2001:db8::10]:3478", "[2001:db8::11]:3478"}},
		{"host name", "beam.example.test", []string{"2001:db8::10"}, nil},
		{"no public IPs", "203.0.113.10", nil, nil},
		{"bad public IP", "203.0.113.10", []string{"nonsense"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			nodes := otherFamilySTUN(tt.host, 3478, tt.publicIPs)
			var got []string
			for i, n := range nodes {
				if !n.STUNOnly || n.URL != "" || n.RegionID != 1 || n.Name != "1"+string(rune('b'+i)) {
					t.Errorf("node %d = %+v, want a STUN-only node 1%c of region 1", i, n, 'b'+i)
				}
				got = append(got, n.STUNAddr)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("STUN addresses %q, want %q", got, tt.want)
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Errorf("STUN addresses %q, want %q", got, tt.want)
				}
			}
		})
	}
}
