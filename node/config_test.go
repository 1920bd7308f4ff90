package node

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"beam.dev/beam/netstack"
	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

func testNetMap(now time.Time) *wire.NetMap {
	self := &wire.Node{Key: key.NewNode().Public(), Name: "alpha", DNSName: "alpha.default.beam.internal.",
		Addresses: []netip.Prefix{netip.MustParsePrefix("100.64.0.1/32"), netip.MustParsePrefix("fd7a:bea0:b0de::1/128")}}
	beta := &wire.Node{Key: key.NewNode().Public(), Name: "beta", DNSName: "beta.default.beam.internal.",
		Addresses: []netip.Prefix{netip.MustParsePrefix("100.64.0.2/32")},
		Endpoints: []netip.AddrPort{netip.MustParseAddrPort("192.0.2.2:41641")}}
	gamma := &wire.Node{Key: key.NewNode().Public(), Name: "gamma", DNSName: "gamma.default.beam.internal.",
		Addresses: []netip.Prefix{netip.MustParsePrefix("100.64.0.3/32")},
		KeyExpiry: now.Add(time.Hour)}
	return (*wire.NetMap)(nil).Apply(&wire.MapResponse{
		Self:        self,
		Peers:       []*wire.Node{beta, gamma},
		DNS:         &wire.DNSConfig{Domain: "default.beam.internal"},
		ControlTime: now,
	}, now)
}

func TestEngineConfig(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	nm := testNetMap(now)
	cfg := engineConfig(nm, now, false, nil)
	if len(cfg.Peers) != 2 {
		t.Fatalf("got %d peers, want 2", len(cfg.Peers))
	}
	if got, want := cfg.ServiceAddrs, []netip.Addr{MagicDNSIPv4, netip.MustParseAddr("fd7a:bea0:b0de::53")}; len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("service addrs = %v, want %v", got, want)
	}
	// Two hours later (local clock), gamma's key has expired: it is dropped
	// even though no new netmap arrived.
	cfg = engineConfig(nm, now.Add(2*time.Hour), false, nil)
	if len(cfg.Peers) != 1 || cfg.Peers[0].Key != nm.Peers[0].Key {
		t.Fatalf("after expiry peers = %+v, want only beta", cfg.Peers)
	}
	// Clock skew: the coordinator's clock is an hour ahead of ours, so
	// gamma is expired already by the coordinator's time.
	skewed := nm.Apply(&wire.MapResponse{KeepAlive: true, ControlTime: now.Add(90 * time.Minute)}, now)
	if cfg := engineConfig(skewed, now, false, nil); len(cfg.Peers) != 1 {
		t.Fatalf("with skew, peers = %d, want 1", len(cfg.Peers))
	}
	// An expired self has no peers at all.
	selfExp := nm.Apply(&wire.MapResponse{Self: &wire.Node{Key: nm.Self.Key, Name: "alpha", Addresses: nm.Self.Addresses, KeyExpiry: now.Add(time.Minute)}}, now)
	if cfg := engineConfig(selfExp, now.Add(2*time.Minute), false, nil); len(cfg.Peers) != 0 {
		t.Fatalf("expired self has %d peers, want 0", len(cfg.Peers))
	}
	if cfg := engineConfig(nil, now, true, nil); len(cfg.Peers) != 0 || cfg.ShieldsUp {
		t.Fatalf("nil netmap config = %+v", cfg)
	}
}

func TestDNSRecords(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	nm := testNetMap(now)
	rec := dnsRecords(nm, now, nil)
	if rec.Domain != "default.beam.internal" {
		t.Fatalf("domain %q", rec.Domain)
	}
	if got := rec.Hosts["beta.default.beam.internal"]; len(got) != 1 || got[0] != netip.MustParseAddr("100.64.0.2") {
		t.Fatalf("beta = %v", got)
	}
	if got := rec.Hosts["alpha.default.beam.internal"]; len(got) != 2 {
		t.Fatalf("self = %v", got)
	}
	rec = dnsRecords(nm, now.Add(2*time.Hour), nil)
	if _, ok := rec.Hosts["gamma.default.beam.internal"]; ok {
		t.Fatal("expired gamma still resolves")
	}
}

func TestFilterConversion(t *testing.T) {
	f := convertFilter([]wire.FilterRule{{
		SrcIPs:   []netip.Prefix{netip.MustParsePrefix("100.64.0.0/10")},
		DstPorts: []wire.NetPortRange{{IP: netip.MustParsePrefix("100.64.0.1/32"), First: 22, Last: 22}},
		Protos:   []int{6, 999},
	}}, nil)
	if len(f.Rules) != 1 || len(f.Rules[0].DstPorts) != 1 || f.Rules[0].DstPorts[0].First != 22 || len(f.Rules[0].Protos) != 1 {
		t.Fatalf("converted filter = %+v", f)
	}
}

func TestDialBadPort(t *testing.T) {
	n, err := New(Options{StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	for _, addr := range []string{"beta:http", "beta:0", "beta:70000", "beta"} {
		if _, err := n.DialContext(t.Context(), "tcp", addr); err == nil {
			t.Errorf("DialContext(%q) succeeded, want an error", addr)
		}
	}
}

// TestPeerChanges checks the delta the node hands the engine when a netmap
// changes: only peers new or changed, and the keys of those gone (removed
// from the netmap or expired), against what engineConfig would give.
func TestPeerChanges(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	nm := testNetMap(now)
	beta, gamma := nm.Peers[0], nm.Peers[1]
	delta := &wire.Node{Key: key.NewNode().Public(), Name: "delta", Addresses: []netip.Prefix{netip.MustParsePrefix("100.64.0.4/32")}}
	moved := *beta
	moved.Endpoints = []netip.AddrPort{netip.MustParseAddrPort("198.51.100.2:41641")}
	tests := []struct {
		name      string
		nm        *wire.NetMap
		at        time.Time
		set       []key.NodePublic
		remove    []key.NodePublic
		wantCount int // peers of engineConfig for the same netmap
	}{
		{"unchanged", nm, now, nil, nil, 2},
		{"one moved", nm.Apply(&wire.MapResponse{PeersChanged: []*wire.Node{&moved}}, now), now, []key.NodePublic{beta.Key}, nil, 2},
		{"one added", nm.Apply(&wire.MapResponse{PeersChanged: []*wire.Node{delta}}, now), now, []key.NodePublic{delta.Key}, nil, 3},
		{"one removed", nm.Apply(&wire.MapResponse{PeersRemoved: []key.NodePublic{gamma.Key}}, now), now, nil, []key.NodePublic{gamma.Key}, 1},
		{"one expired", nm, now.Add(2 * time.Hour), nil, []key.NodePublic{gamma.Key}, 1},
		{"added and removed", nm.Apply(&wire.MapResponse{PeersChanged: []*wire.Node{delta}, PeersRemoved: []key.NodePublic{beta.Key}}, now), now, []key.NodePublic{delta.Key}, []key.NodePublic{beta.Key}, 2},
		{"no netmap", nil, now, nil, []key.NodePublic{beta.Key, gamma.Key}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cur := map[key.NodePublic]netstack.Peer{}
			for _, p := range engineConfig(nm, now, false, nil).Peers {
				cur[p.Key] = p
			}
			set, remove := peerChanges(tt.nm, tt.at, cur)
			var gotSet []key.NodePublic
			for _, p := range set {
				gotSet = append(gotSet, p.Key)
			}
			sortKeys := func(ks []key.NodePublic) []key.NodePublic {
				slices.SortFunc(ks, func(a, b key.NodePublic) int { return strings.Compare(a.String(), b.String()) })
				return ks
			}
			if !slices.Equal(sortKeys(gotSet), sortKeys(tt.set)) || !slices.Equal(sortKeys(remove), sortKeys(tt.remove)) {
				t.Errorf("got set %v remove %v, want set %v remove %v", gotSet, remove, tt.set, tt.remove)
			}
			// Applying the delta gives engineConfig's peers.
			for _, k := range remove {
				delete(cur, k)
			}
			for _, p := range set {
				cur[p.Key] = p
			}
			full := engineConfig(tt.nm, tt.at, false, nil).Peers
			if len(full) != tt.wantCount || len(cur) != len(full) {
				t.Fatalf("after the delta %d peers, engineConfig has %d, want %d", len(cur), len(full), tt.wantCount)
			}
			for _, p := range full {
				if c, ok := cur[p.Key]; !ok || !slices.Equal(c.Endpoints, p.Endpoints) || !slices.Equal(c.AllowedIPs, p.AllowedIPs) {
					t.Errorf("peer %s after the delta %+v, want %+v", p.Key.ShortString(), c, p)
				}
			}
		})
	}
}

// TestNextExpiry checks when applyLocked must rebuild the MagicDNS records
// at the latest: the first key of the netmap to expire, on the local
// clock (corrected for the coordinator's skew), or within the hour.
func TestNextExpiry(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	nm := testNetMap(now) // gamma expires at now+1h
	soon := nm.Apply(&wire.MapResponse{PeersChanged: []*wire.Node{{Key: key.NewNode().Public(), Name: "delta",
		Addresses: []netip.Prefix{netip.MustParsePrefix("100.64.0.4/32")}, KeyExpiry: now.Add(10 * time.Minute)}}}, now)
	// The coordinator's clock 5 minutes ahead: delta expires 5 minutes
	// earlier on ours.
	skewed := soon.Apply(&wire.MapResponse{KeepAlive: true, ControlTime: now.Add(5 * time.Minute)}, now)
	tests := []struct {
		name string
		nm   *wire.NetMap
		at   time.Time
		want time.Time
	}{
		{"no netmap", nil, now, now.Add(time.Hour)},
		{"first expiry an hour away", nm, now, now.Add(time.Hour)},
		{"first expiry in 10 minutes", soon, now, now.Add(10 * time.Minute)},
		{"skew", skewed, now, now.Add(5 * time.Minute)},
		{"expired keys do not count", soon, now.Add(20 * time.Minute), now.Add(time.Hour)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := nextExpiry(tt.nm, tt.at); !got.Equal(tt.want) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}
