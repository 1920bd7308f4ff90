package coordinator_test

import (
	"context"
	"testing"

	"beam.dev/beam/coordclient"
	"beam.dev/beam/coordinator"
	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// TestPeerRelayPolicy: a node's peer relay port reaches its peers only
// if the policy's "peerRelays" designates it; another node offering one
// is shown to its peers without it.
func TestPeerRelayPolicy(t *testing.T) {
	c := startCoord(t, nil)
	if err := c.Server.SetPolicy(context.Background(), []byte(`{
		"tagOwners": {"tag:relay": [], "tag:plain": []},
		"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],
		"peerRelays": ["tag:relay"],
	}`)); err != nil {
		t.Fatal(err)
	}
	relayKey := c.authKey(t, coordinator.AuthKeyOptions{Tags: []string{"tag:relay"}})
	plainKey := c.authKey(t, coordinator.AuthKeyOptions{Reusable: true, Tags: []string{"tag:plain"}})
	offering := func(name, ak string) *node {
		priv := key.NewNode()
		cl, err := coordclient.New(coordclient.Options{ServerURL: c.URL, PrivateKey: priv, DiscoKey: key.NewDisco().Public(), PeerRelay: 41700})
		if err != nil {
			t.Fatal(err)
		}
		n := &node{priv: priv, Client: cl}
		n.register(t, ak, name)
		return n
	}
	viewer := newNode(t, c.URL)
	viewer.register(t, plainKey, "viewer")
	w := watch(t, viewer)
	rw := watch(t, offering("relay", relayKey))
	mw := watch(t, offering("mallory", plainKey))
	nm := w.waitFor("both online, relay's port", wait, func(nm *wire.NetMap) bool {
		r, m := peerNamed(nm, "relay"), peerNamed(nm, "mallory")
		return r != nil && m != nil && r.Online && m.Online && r.PeerRelay == 41700
	})
	if got := peerNamed(nm, "mallory").PeerRelay; got != 0 {
		t.Errorf("mallory's peer relay port as its peers see it = %d, want 0 (not designated)", got)
	}

	// A policy change moves the offers with its netmap update, without
	// the nodes making another map request: relay stops, mallory starts.
	if err := c.Server.SetPolicy(context.Background(), []byte(`{
		"tagOwners": {"tag:relay": [], "tag:plain": []},
		"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],
		"peerRelays": ["tag:plain"],
	}`)); err != nil {
		t.Fatal(err)
	}
	w.waitFor("offers follow the new policy", wait, func(nm *wire.NetMap) bool {
		r, m := peerNamed(nm, "relay"), peerNamed(nm, "mallory")
		return r != nil && m != nil && r.PeerRelay == 0 && m.PeerRelay == 41700
	})
	// Both sides see their own offer too.
	mw.waitFor("mallory sees its own offer", wait, func(nm *wire.NetMap) bool { return nm.Self != nil && nm.Self.PeerRelay == 41700 })
	rw.waitFor("relay sees its offer withdrawn", wait, func(nm *wire.NetMap) bool { return nm.Self != nil && nm.Self.PeerRelay == 0 })
	// A node that asked for none is offered none, designated or not.
	w.waitFor("viewer offers none", wait, func(nm *wire.NetMap) bool { return nm.Self != nil && nm.Self.PeerRelay == 0 })
}
