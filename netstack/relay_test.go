package netstack

import (
	"fmt"
	"net/http/httptest"
	"testing"

	"beam.dev/beam/derp/derpserver"
	"beam.dev/beam/types/key"
)

// TestRelayOnly connects two engines that cannot reach each other
// directly (no endpoints, and no disco keys, so they cannot learn each
// other's addresses) through an in-process relay server.
func TestRelayOnly(t *testing.T) {
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
		other := nodes[1-i]
		cfg := n.cfg
		cfg.DERPMap = derpMap
		cfg.HomeDERP = 1
		p := other.peer()
		p.Endpoints = nil
		p.DiscoKey = key.DiscoPublic{}
		p.HomeDERP = 1
		cfg.Peers = []Peer{p}
		if err := n.e.Reconfig(cfg); err != nil {
			t.Fatal(err)
		}
	}
	// Both must be on the relay before traffic starts, or the first
	// handshake is lost and WireGuard waits 5 s to retry.
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
	pc, err := b.e.ListenPacket("udp", ":7")
	if err != nil {
		t.Fatal(err)
	}
	udpEchoServer(t, pc)
	checkTCPEcho(t, t.Context(), a, fmt.Sprintf("%v:7", b.v4))
	checkTCPEcho(t, t.Context(), a, fmt.Sprintf("[%v]:7", b.v6))
	checkUDPEcho(t, t.Context(), a, fmt.Sprintf("%v:7", b.v4))
	for _, n := range nodes {
		st := n.e.Status()
		if len(st) != 1 || st[0].Path != "relay" || st[0].Endpoint.IsValid() || st[0].RxBytes == 0 {
			t.Fatalf("status: %+v, want one peer reached through the relay", st)
		}
	}
}
