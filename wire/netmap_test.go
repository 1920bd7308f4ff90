package wire

import (
	"encoding/json"
	"net/netip"
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
