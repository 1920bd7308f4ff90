package bind

import (
	"maps"
	"net/netip"
	"testing"

	"beam.dev/beam/types/key"
)

// TestUpdatePeers checks that UpdatePeers leaves the same peer table and
// address table as SetPeers with the resulting peer list, for additions,
// changes and removals, and that new peers start asleep with WakePeer.
func TestUpdatePeers(t *testing.T) {
	ap := func(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
	pcs := []PeerConfig{
		{Key: key.NewNode().Public(), Endpoints: []netip.AddrPort{ap("127.0.0.1:1001"), ap("127.0.0.2:1001")}, DiscoKey: key.NewDisco().Public()},
		{Key: key.NewNode().Public(), Endpoints: []netip.AddrPort{ap("127.0.0.1:1002")}, HomeRegion: 1},
		{Key: key.NewNode().Public(), Endpoints: []netip.AddrPort{ap("127.0.0.1:1003")}, DiscoKey: key.NewDisco().Public()},
	}
	woken := 0
	inc, err := New(Options{PrivateKey: key.NewNode(), DiscoKey: key.NewDisco(), WakePeer: func(key.NodePublic) { woken++ }})
	if err != nil {
		t.Fatal(err)
	}
	inc.UpdatePeers(pcs, nil)
	moved := pcs[1]
	moved.Endpoints = []netip.AddrPort{ap("127.0.0.9:1002")}
	rekeyed := pcs[2]
	rekeyed.DiscoKey = key.NewDisco().Public()
	added := PeerConfig{Key: key.NewNode().Public(), Endpoints: []netip.AddrPort{ap("127.0.0.1:1004")}}
	inc.UpdatePeers([]PeerConfig{moved, rekeyed, added}, []key.NodePublic{pcs[0].Key, key.NewNode().Public()})

	full := newBind(t)
	full.SetPeers([]PeerConfig{moved, rekeyed, added})

	table := func(b *Bind) map[netip.AddrPort]key.NodePublic {
		out := map[netip.AddrPort]key.NodePublic{}
		for a, e := range b.addrs.all() {
			out[a] = e.peer.key
		}
		return out
	}
	if got, want := table(inc), table(full); !maps.Equal(got, want) {
		t.Errorf("address table after UpdatePeers %v, want %v (SetPeers)", got, want)
	}
	if len(inc.peers) != 3 || inc.peers[pcs[0].Key] != nil {
		t.Errorf("peers after UpdatePeers: %d, removed one present %v; want 3 without it", len(inc.peers), inc.peers[pcs[0].Key] != nil)
	}
	if pe := inc.byDisco[rekeyed.DiscoKey]; pe == nil || pe.p.key != rekeyed.Key {
		t.Errorf("new disco key of a peer not indexed")
	}
	if pe := inc.byDisco[pcs[2].DiscoKey]; pe != nil {
		t.Errorf("old disco key of a peer still indexed")
	}
	if pe := inc.byDisco[pcs[0].DiscoKey]; pe != nil {
		t.Errorf("disco key of a removed peer still indexed")
	}
	for k, pe := range inc.peers {
		if !pe.p.asleep.Load() {
			t.Errorf("peer %s awake, want asleep until SetAwake", k.ShortString())
		}
	}
	inc.SetAwake(added.Key, true)
	if inc.peers[added.Key].p.asleep.Load() {
		t.Errorf("peer asleep after SetAwake(true)")
	}
	inc.wake(inc.peers[added.Key].p)
	inc.wake(inc.peers[moved.Key].p)
	if woken != 1 {
		t.Errorf("WakePeer called %d times, want 1 (for the peer asleep)", woken)
	}
}
