package wire

import (
	"encoding/json"
	"net/netip"
	"slices"
	"testing"
	"time"

	"beam.dev/beam/types/key"
)

func TestNetMapApply(t *testing.T) {
	a, b, c := key.NewNode().Public(), key.NewNode().Public(), key.NewNode().Public()
	now := time.Now()
	full := &MapResponse{
		Self:  &Node{Key: a, Name: "alpha"},
		Peers: []*Node{{Key: b, Name: "beta", Online: true}},
	}
	nm := (*NetMap)(nil).Apply(full, now)
	if len(nm.Peers) != 1 || nm.Peers[0].Name != "beta" {
		t.Fatalf("after full map: peers = %+v", nm.Peers)
	}
	nm2 := nm.Apply(&MapResponse{
		PeersChanged: []*Node{{Key: c, Name: "charlie", Endpoints: []netip.AddrPort{netip.MustParseAddrPort("192.0.2.1:41641")}}},
		PeersOnline:  map[key.NodePublic]bool{b: false},
	}, now)
	if len(nm2.Peers) != 2 || nm2.Peers[0].Name != "beta" || nm2.Peers[0].Online {
		t.Fatalf("after delta: peers = %+v", nm2.Peers)
	}
	if !nm.Peers[0].Online {
		t.Fatal("Apply modified the original netmap")
	}
	nm3 := nm2.Apply(&MapResponse{PeersRemoved: []key.NodePublic{b}}, now)
	if len(nm3.Peers) != 1 || nm3.Peers[0].Key != c {
		t.Fatalf("after remove: peers = %+v", nm3.Peers)
	}
	if nm3.Self.Name != "alpha" {
		t.Fatalf("self lost: %+v", nm3.Self)
	}
}

func TestControlNow(t *testing.T) {
	local := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	nm := (*NetMap)(nil).Apply(&MapResponse{KeepAlive: true, ControlTime: local.Add(time.Hour)}, local)
	got := nm.ControlNow(local.Add(time.Minute))
	if want := local.Add(time.Hour + time.Minute); !got.Equal(want) {
		t.Fatalf("ControlNow = %v, want %v", got, want)
	}
}

func FuzzMapResponseJSON(f *testing.F) {
	f.Add([]byte(`{"keep_alive":true}`))
	f.Add([]byte(`{"self":{"key":"nodekey:0000000000000000000000000000000000000000000000000000000000000000","addresses":["100.64.0.1/32"]},"peers":[]}`))
	f.Add([]byte(`{"peers_online":{"nodekey:zz":true}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var resp MapResponse
		if err := json.Unmarshal(b, &resp); err != nil {
			return
		}
		nm := (*NetMap)(nil).Apply(&resp, time.Now())
		if _, err := json.Marshal(nm); err != nil {
			t.Fatalf("marshal netmap: %v", err)
		}
	})
}

func TestEmptyEdgeRoutesRoundTrip(t *testing.T) {
	nm := (*NetMap)(nil).Apply(&MapResponse{EdgeRoutes: []EdgeRoute{{Host: "a.example.test", Proto: "http"}}}, time.Now())
	b, err := json.Marshal(&MapResponse{EdgeRoutes: []EdgeRoute{}})
	if err != nil {
		t.Fatal(err)
	}
	var resp MapResponse
	if err := json.Unmarshal(b, &resp); err != nil {
		t.Fatal(err)
	}
	if nm2 := nm.Apply(&resp, time.Now()); len(nm2.EdgeRoutes) != 0 {
		t.Fatalf("an empty route list (%s) did not clear the routes: %v", b, nm2.EdgeRoutes)
	}
}

func TestNetMapApplyFilterSets(t *testing.T) {
	p := netip.MustParsePrefix
	now := time.Now()
	rule := FilterRule{SrcSets: []string{"group:eng"}, DstPorts: []NetPortRange{{IP: p("100.64.0.1/32"), First: 22, Last: 22}}}
	nm := (*NetMap)(nil).Apply(&MapResponse{
		Self:            &Node{Name: "db"},
		PacketFilter:    []FilterRule{rule},
		PacketFilterSet: true,
		FilterSets:      map[string][]netip.Prefix{"group:eng": {p("100.64.0.2/32"), p("100.64.0.3/32")}},
	}, now)
	tests := []struct {
		name   string
		change FilterSetChange
		want   []netip.Prefix
	}{
		{"add", FilterSetChange{Name: "group:eng", Add: []netip.Prefix{p("100.64.0.4/32")}}, []netip.Prefix{p("100.64.0.2/32"), p("100.64.0.3/32"), p("100.64.0.4/32")}},
		{"add present", FilterSetChange{Name: "group:eng", Add: []netip.Prefix{p("100.64.0.2/32")}}, []netip.Prefix{p("100.64.0.2/32"), p("100.64.0.3/32")}},
		{"remove", FilterSetChange{Name: "group:eng", Remove: []netip.Prefix{p("100.64.0.2/32")}}, []netip.Prefix{p("100.64.0.3/32")}},
		{"remove then add", FilterSetChange{Name: "group:eng", Remove: []netip.Prefix{p("100.64.0.3/32")}, Add: []netip.Prefix{p("100.64.0.3/32")}}, []netip.Prefix{p("100.64.0.2/32"), p("100.64.0.3/32")}},
		{"replace", FilterSetChange{Name: "group:eng", Replace: true, Add: []netip.Prefix{p("100.64.0.9/32")}}, []netip.Prefix{p("100.64.0.9/32")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			next := nm.Apply(&MapResponse{FilterSetChanges: []FilterSetChange{tt.change}}, now)
			if got := next.FilterSets["group:eng"]; !slices.Equal(got, tt.want) {
				t.Errorf("set = %v, want %v", got, tt.want)
			}
			if got := nm.FilterSets["group:eng"]; len(got) != 2 {
				t.Errorf("the change modified the earlier netmap's set: %v", got)
			}
			ex := next.ExpandedFilter()
			if len(ex) != 1 || len(ex[0].SrcSets) != 0 || !slices.Equal(ex[0].SrcIPs, tt.want) {
				t.Errorf("ExpandedFilter = %+v, want one rule from %v", ex, tt.want)
			}
		})
	}
	// A new filter replaces the sets.
	next := nm.Apply(&MapResponse{PacketFilter: []FilterRule{}, PacketFilterSet: true}, now)
	if next.FilterSets != nil || len(next.PacketFilter) != 0 {
		t.Errorf("after an empty filter: sets %v, filter %v", next.FilterSets, next.PacketFilter)
	}
}

// TestMapResponseMerge joins a message split across three frames: lists
// are appended in order, online states and the other fields of later
// frames added, and More follows the last frame.
func TestMapResponseMerge(t *testing.T) {
	a, b, c, d := key.NewNode().Public(), key.NewNode().Public(), key.NewNode().Public(), key.NewNode().Public()
	m := &MapResponse{Self: &Node{Name: "self"}, Peers: []*Node{{Key: a}}, PacketFilterSet: true, More: true}
	m.Merge(&MapResponse{Peers: []*Node{{Key: b}, {Key: c}}, PeersOnline: map[key.NodePublic]bool{a: true}, More: true})
	m.Merge(&MapResponse{Peers: []*Node{{Key: d}}, PeersRemoved: []key.NodePublic{c}, DNS: &DNSConfig{Domain: "x.test"}})
	var got []key.NodePublic
	for _, p := range m.Peers {
		got = append(got, p.Key)
	}
	if want := []key.NodePublic{a, b, c, d}; !slices.Equal(got, want) {
		t.Errorf("peers = %v, want %v", got, want)
	}
	if m.More || m.Self == nil || m.Self.Name != "self" || !m.PacketFilterSet || m.DNS == nil || !m.PeersOnline[a] ||
		!slices.Equal(m.PeersRemoved, []key.NodePublic{c}) {
		t.Errorf("merged = %+v", m)
	}
}
