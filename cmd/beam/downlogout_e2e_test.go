package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"beam.dev/beam/localapi/apitype"
)

// TestDownUpLogout: beam down leaves the mesh but keeps the identity,
// beam up rejoins with the same name and addresses, and beam logout
// deregisters the node at the coordinator.
func TestDownUpLogout(t *testing.T) {
	c := newCluster(t)
	key := strings.TrimSpace(c.mustBeam("admin", "authkey", "create", "--coordinator", c.url, "--reusable"))
	a, b := c.device("alpha"), c.device("beta")
	a.mustUp("--authkey", key)
	b.mustUp("--authkey", key)
	waitFor(t, 10*time.Second, "alpha sees beta", func() bool { return len(a.status().Peers) == 1 })
	before := b.status().Self

	c.mustBeam(b.args("down")...)
	if st := b.status(); st.State != apitype.StateStopped {
		t.Fatalf("after down: state %s, want %s", st.State, apitype.StateStopped)
	}
	waitFor(t, 10*time.Second, "alpha sees beta offline", func() bool {
		for _, p := range a.status().Peers {
			if p.Name == "beta" {
				return !p.Online
			}
		}
		return false
	})

	b.mustUp()
	after := b.status().Self
	if after == nil || after.Name != before.Name || fmt.Sprint(after.IPs) != fmt.Sprint(before.IPs) {
		t.Fatalf("after down and up: self %+v, want name %s and IPs %v", after, before.Name, before.IPs)
	}

	c.mustBeam(b.args("logout")...)
	if st := b.status(); st.State != apitype.StateNoState || st.Self != nil {
		t.Fatalf("after logout: state %s, self %+v", st.State, st.Self)
	}
	var nodes []struct {
		Name string `json:"name"`
	}
	if err := json.Unmarshal([]byte(c.mustBeam("admin", "nodes", "list", "--json", "--coordinator", c.url)), &nodes); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		if n.Name == "beta" {
			t.Fatal("beta is still registered after logout")
		}
	}
	waitFor(t, 10*time.Second, "alpha drops beta", func() bool { return len(a.status().Peers) == 0 })
}
