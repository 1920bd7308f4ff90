package netstack

import (
	"fmt"
	"net/http/httptest"
	"testing"

	"beam.dev/beam/derp/derpserver"
)

// TestDebugAlwaysRelay connects two engines that could reach each other
// directly (endpoints and disco keys known), created with
// BEAM_DEBUG_ALWAYS_RELAY=1: their traffic goes through the relay, and
// neither learns a direct path.
func TestDebugAlwaysRelay(t *testing.T) {
	t.Setenv("BEAM_DEBUG_ALWAYS_RELAY", "1")
	srv := derpserver.New(derpserver.Options{})
	hs := httptest.NewServer(srv)
	t.Cleanup(func() {
		hs.CloseClientConnections()
		hs.Close()
		srv.Close()
	})
	derpMap := map[int]DERPRegion{1: {URLs: []string{hs.URL + "/derp"}}}

	nodes := newNodes(t, 2, nil)
	a, b := nodes[0], nodes[1]
	resetPeers(t, nodes)
	for i, n := range nodes {
		cfg := n.cfg
		cfg.DERPMap = derpMap
		cfg.HomeDERP = 1
		p := nodes[1-i].peer()
		p.HomeDERP = 1
		if len(p.Endpoints) == 0 || p.DiscoKey.IsZero() {
			t.Fatalf("peer %d has endpoints %v, disco key %v; want both, so a direct path is possible", 1-i, p.Endpoints, p.DiscoKey)
		}
		cfg.Peers = []Peer{p}
		if err := n.e.Reconfig(cfg); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range nodes {
		if err := n.e.relays.waitConnectedForTest(t.Context(), 1); err != nil {
			t.Fatalf("connect to relay: %v", err)
		}
	}
	ln, err := b.e.Listen("tcp", ":7")
	if err != nil {
		t.Fatal(err)
	}
	tcpEchoServer(t, ln)
	for range 3 {
		checkTCPEcho(t, t.Context(), a, fmt.Sprintf("%v:7", b.v4))
	}
	for i, n := range nodes {
		st := n.e.Status()
		if len(st) != 1 || st[0].Path != "relay" || st[0].Endpoint.IsValid() || st[0].RxBytes == 0 {
			t.Fatalf("node %d status: %+v, want one peer reached through the relay", i, st)
		}
	}
}
