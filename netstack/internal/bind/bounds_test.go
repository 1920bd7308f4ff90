package bind

import (
	"fmt"
	"net/netip"
	"testing"

	"beam.dev/beam/types/key"
)

// TestPeerEndpointsBounded: a peer configured with 30,000 endpoints (as
// an old or hostile coordinator could send) keeps at most
// 64 usable candidates, without the multicast, unspecified
// and port-0 ones.
func TestPeerEndpointsBounded(t *testing.T) {
	var eps []netip.AddrPort
	eps = append(eps, netip.MustParseAddrPort("224.0.0.1:41641"), netip.MustParseAddrPort("0.0.0.0:41641"),
		netip.MustParseAddrPort("198.51.100.1:0"), netip.MustParseAddrPort("[ff02::1]:41641"))
	for i := range 30000 {
		eps = append(eps, netip.MustParseAddrPort(fmt.Sprintf("198.51.100.%d:%d", i%250+1, 1000+i)))
	}
	b := newBind(t)
	k := key.NewNode().Public()
	b.UpdatePeers([]PeerConfig{{Key: k, Endpoints: eps, DiscoKey: key.NewDisco().Public()}}, nil)
	b.mu.Lock()
	defer b.mu.Unlock()
	pe := b.peers[k]
	cands := *pe.p.candidates.Load()
	if len(cands) != maxPeerEndpoints {
		t.Errorf("got %d candidates, want %d", len(cands), maxPeerEndpoints)
	}
	if len(pe.eps) > maxPeerEndpoints {
		t.Errorf("got %d endpoints kept, want at most %d", len(pe.eps), maxPeerEndpoints)
	}
	for _, ap := range cands {
		if ap.Addr().IsMulticast() || ap.Addr().IsUnspecified() || ap.Port() == 0 {
			t.Errorf("candidate %v kept, want it dropped", ap)
		}
	}
	if cands[0] != eps[4] {
		t.Errorf("first candidate %v, want the first usable endpoint %v", cands[0], eps[4])
	}
}
