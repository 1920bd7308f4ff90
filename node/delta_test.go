package node

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"testing"
	"time"

	"beam.dev/beam/netstack"
	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// TestPeerDeltaMatchesWalk follows random netmap deltas and clock steps
// as applyLocked does (the changed peers alone while deltaApplies, else
// a walk of the netmap) and checks the engine's peers and the MagicDNS
// records against what the netmap gives from scratch at every step:
// endpoint and online changes, renames, new and removed peers, keys that
// expire by the clock or by a delta, a self whose key expires, and clock
// skew.
func TestPeerDeltaMatchesWalk(t *testing.T) {
	for seed := range uint64(20) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { testPeerDeltaMatchesWalk(t, seed) })
	}
}

func testPeerDeltaMatchesWalk(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 2))
	t0 := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	keys := make([]key.NodePublic, 60)
	for i := range keys {
		keys[i] = key.NodePublicFromRaw32([32]byte{byte(i), 7})
	}
	now := t0
	peer := func() *wire.Node {
		i := rng.IntN(len(keys))
		p := &wire.Node{
			ID: wire.NodeID(i + 2), Key: keys[i], Name: fmt.Sprintf("p%d", rng.IntN(80)),
			Addresses: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{100, 64, 1, byte(i)}), 32)},
			Endpoints: []netip.AddrPort{netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(rng.IntN(4))}), 41641)},
			Online:    rng.IntN(2) == 0,
		}
		switch rng.IntN(6) {
		case 0:
			p.KeyExpiry = now.Add(time.Duration(rng.IntN(20)) * time.Second)
		case 1:
			p.KeyExpiry = now.Add(-time.Second)
		case 2:
			p.Addresses = nil
		}
		return p
	}
	full := &wire.MapResponse{
		Self: &wire.Node{Key: key.NewNode().Public(), Name: "self", Addresses: []netip.Prefix{netip.MustParsePrefix("100.64.0.1/32")}},
		DNS:  &wire.DNSConfig{Domain: "default.beam.internal"}, ControlTime: now,
	}
	for range 40 {
		full.PeersChanged = append(full.PeersChanged, peer())
	}
	nm := (*wire.NetMap)(nil).Apply(full, now)
	enginePeers := func(nm *wire.NetMap, at time.Time) map[key.NodePublic]netstack.Peer {
		m := map[key.NodePublic]netstack.Peer{}
		for _, p := range engineConfig(nm, at, false, nil).Peers {
			m[p.Key] = p
		}
		return m
	}
	cur, curNM, until := enginePeers(nm, now), nm, nextExpiry(nm, now)
	recNM, recUntil, rec := nm, nextExpiry(nm, now), dnsRecords(nm, now, nil)
	deltas, dnsDeltas := 0, 0
	for step := range 400 {
		var mr wire.MapResponse
		switch r := rng.IntN(12); {
		case r < 4:
			for range 1 + rng.IntN(2) {
				mr.PeersChanged = append(mr.PeersChanged, peer())
			}
		case r < 6:
			mr.PeersRemoved = []key.NodePublic{keys[rng.IntN(len(keys))]}
		case r < 8:
			mr.PeersOnline = map[key.NodePublic]bool{keys[rng.IntN(len(keys))]: rng.IntN(2) == 0}
		case r == 8:
			s := *nm.Self
			s.KeyExpiry = now.Add(time.Duration(rng.IntN(30)) * time.Second)
			mr.Self = &s
		case r == 9:
			mr.KeepAlive, mr.ControlTime = true, now.Add(time.Duration(rng.IntN(5))*time.Second)
		default:
			now = now.Add(time.Duration(rng.IntN(3000)) * time.Millisecond)
		}
		nm = nm.Apply(&mr, now)

		if deltaApplies(curNM, nm, now, until) {
			deltas++
			var set []netstack.Peer
			var remove []key.NodePublic
			set, remove, until = peerDelta(curNM, nm, now, until, cur)
			for _, k := range remove {
				delete(cur, k)
			}
			for _, p := range set {
				cur[p.Key] = p
			}
		} else {
			set, remove := peerChanges(nm, now, cur)
			for _, k := range remove {
				delete(cur, k)
			}
			for _, p := range set {
				cur[p.Key] = p
			}
			until = nextExpiry(nm, now)
		}
		curNM = nm
		if want := enginePeers(nm, now); !maps.EqualFunc(cur, want, func(a, b netstack.Peer) bool { return reflect.DeepEqual(a, b) }) {
			t.Fatalf("step %d: engine peers %v, want %v", step, slices.Collect(maps.Keys(cur)), slices.Collect(maps.Keys(want)))
		}

		if nm != recNM || !now.Before(recUntil) {
			if ch, u, ok := recordsDelta(recNM, nm, rec, now, recUntil); ok {
				for name, as := range ch {
					if len(as) == 0 {
						delete(rec.Hosts, name)
					} else {
						rec.Hosts[name] = as
					}
				}
				recUntil = u
				if len(ch) > 0 {
					dnsDeltas++
				}
			} else {
				rec = dnsRecords(nm, now, nil)
				recUntil = nextExpiry(nm, now)
			}
			recNM = nm
		}
		if want := dnsRecords(nm, now, nil); !reflect.DeepEqual(rec, want) {
			t.Fatalf("step %d: records %v, want %v", step, rec.Hosts, want.Hosts)
		}
	}
	if deltas < 100 {
		t.Errorf("%d of 400 steps took the changed peers alone; want at least 100", deltas)
	}
	if dnsDeltas < 10 {
		t.Errorf("%d of 400 steps changed MagicDNS names without a rebuild; want at least 10", dnsDeltas)
	}
}

// TestApplyLockedDelta checks applyLocked's result with a real engine
// after one-peer deltas: the engine has exactly the peers the netmap
// gives it, and MagicDNS the netmap's names.
func TestApplyLockedDelta(t *testing.T) {
	nd, err := New(Options{StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nd.Close() })
	e, err := netstack.New(netstack.Options{PrivateKey: key.NewNode()})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	nm := benchNetMap(50, now)
	nd.mu.Lock()
	nd.engine, nd.netmap = e, nm
	nd.applyLocked()
	nd.mu.Unlock()

	moved := *nm.Peers[3]
	moved.Endpoints = []netip.AddrPort{netip.MustParseAddrPort("192.0.2.9:9")}
	renamed := *nm.Peers[4]
	renamed.Name = "renamed"
	gone := []string{nm.Peers[4].Name, nm.Peers[6].Name} // renamed, removed
	added := &wire.Node{ID: 999, Key: key.NewNode().Public(), Name: "added", Addresses: []netip.Prefix{netip.MustParsePrefix("100.65.9.9/32")}}
	for i, mr := range []*wire.MapResponse{
		{PeersChanged: []*wire.Node{&moved}},
		{PeersOnline: map[key.NodePublic]bool{nm.Peers[5].Key: true}},
		{PeersChanged: []*wire.Node{&renamed}},
		{PeersChanged: []*wire.Node{added}},
		{PeersRemoved: []key.NodePublic{nm.Peers[6].Key}},
	} {
		nm = nd.receive(nm, mr)
		nd.mu.Lock()
		var got []key.NodePublic
		for _, st := range e.Status() {
			got = append(got, st.Key)
		}
		var want []key.NodePublic
		for _, p := range engineConfig(nm, time.Now(), false, nil).Peers {
			want = append(want, p.Key)
		}
		byKey := func(a, b key.NodePublic) int {
			ra, rb := a.Raw32(), b.Raw32()
			return slices.Compare(ra[:], rb[:])
		}
		slices.SortFunc(got, byKey)
		slices.SortFunc(want, byKey)
		if !slices.Equal(got, want) {
			t.Errorf("message %d: engine has %d peers, want %d", i, len(got), len(want))
		}
		if p := nd.enginePeers[moved.Key]; !slices.Equal(p.Endpoints, moved.Endpoints) {
			t.Errorf("message %d: moved peer's endpoints %v, want %v", i, p.Endpoints, moved.Endpoints)
		}
		if rec := dnsRecords(nm, time.Now(), nd.upstreamsLocked()); !reflect.DeepEqual(rec, nd.lastRecords) {
			t.Errorf("message %d: MagicDNS records differ from the netmap's", i)
		}
		nd.mu.Unlock()
	}
	// MagicDNS answers from what the resolver was given.
	for name, want := range map[string]string{"added": "100.65.9.9", "renamed": renamed.Addresses[0].Addr().String(), nm.Peers[0].Name: nm.Peers[0].Addresses[0].Addr().String()} {
		got, err := nd.resolver.LookupNetIP(t.Context(), name+".default.beam.internal")
		if err != nil || !slices.Contains(got, netip.MustParseAddr(want)) {
			t.Errorf("%s resolves to %v (%v), want %s", name, got, err, want)
		}
	}
	for _, name := range gone {
		if got, err := nd.resolver.LookupNetIP(t.Context(), name+".default.beam.internal"); err == nil {
			t.Errorf("%s resolves to %v, want not found", name, got)
		}
	}
}
