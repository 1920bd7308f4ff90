package coordinator_test

import (
	"errors"
	"net/netip"
	"slices"
	"testing"

	"beam.dev/beam/coordinator"
	"beam.dev/beam/wire"
)

// TestAuthKeyTagsBounded checks that an auth key takes at most
// wire.MaxTags tags: nodes refuse peers with more.
func TestAuthKeyTagsBounded(t *testing.T) {
	c := startCoord(t, nil)
	setupACL(t, c, engToDB, "alice")
	if _, err := c.Server.CreateAuthKey(t.Context(), coordinator.AuthKeyOptions{Tags: slices.Repeat([]string{"tag:db"}, wire.MaxTags)}); err != nil {
		t.Fatalf("auth key with %d tags: %v", wire.MaxTags, err)
	}
	_, err := c.Server.CreateAuthKey(t.Context(), coordinator.AuthKeyOptions{Tags: slices.Repeat([]string{"tag:db"}, wire.MaxTags+1)})
	if !errors.Is(err, coordinator.ErrInvalid) {
		t.Fatalf("auth key with %d tags: %v, want ErrInvalid", wire.MaxTags+1, err)
	}
}

// TestStoredEndpointsBounded checks that a node's endpoints stored
// before they were bounded (more than wire.MaxEndpoints) reach its peers
// bounded: nodes refuse a peer record with more.
func TestStoredEndpointsBounded(t *testing.T) {
	c := startCoord(t, nil)
	ak := c.authKey(t, coordinator.AuthKeyOptions{Reusable: true})
	privs := registerMany(t, c, ak, "n", 2)
	recs, err := c.Store.Nodes(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(recs, func(r *coordinator.NodeRecord) bool { return r.Node.Key == privs[1].Public() })
	if i < 0 {
		t.Fatal("n1 not stored")
	}
	rec := recs[i]
	for i := range wire.MaxEndpoints + 36 {
		rec.Node.Endpoints = append(rec.Node.Endpoints, netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 51, 100, byte(i)}), 41641))
	}
	if err := c.Store.UpdateNode(t.Context(), rec); err != nil {
		t.Fatal(err)
	}
	c.restart()                                                         // loads the record
	rs := openResumeStream(t, c, privs[0], wire.CapabilityVersion, nil) // decodes binary frames
	mr, _ := rs.next()
	if len(mr.Peers) != 1 || len(mr.Peers[0].Endpoints) != wire.MaxEndpoints {
		t.Fatalf("peers %d, want 1 with %d endpoints", len(mr.Peers), wire.MaxEndpoints)
	}
}
