package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestPeerRelaySettingsE2E: the peer relay server's limits given to beam up
// are in force in the running server (beam status --json), beam set
// changes them at once without restarting the server, beam set prints
// them, and a bad value is refused with the flag named. A policy change
// that stops designating the node withdraws its offer at once (its peer
// and beam status say so), and one that designates it again restores it.
func TestPeerRelaySettingsE2E(t *testing.T) {
	c := newCluster(t)
	key := strings.TrimSpace(c.mustBeam("admin", "authkey", "create", "--coordinator", c.url, "--reusable", "--expiry", "1h"))
	relay := c.device("relay")
	port := freePort(t)
	relay.mustUp("--authkey", key, "--relay-server="+strconv.Itoa(port), "--relay-server-max-sessions", "10", "--relay-server-session-rate", "100Mbit")
	pr := relay.status().PeerRelay
	if pr == nil || pr.Port != uint16(port) || pr.MaxSessions != 10 || pr.MaxSessionsPerPeer != 32 || pr.BytesPerSecond != 12_500_000 {
		t.Fatalf("relay server after beam up: %+v, want port %d, 10 sessions, 32 per peer (default), 12500000 B/s", pr, port)
	}

	out := c.mustBeam(relay.args("set", "--relay-server-max-sessions-per-peer", "2", "--relay-server-session-rate", "1Gbit")...)
	if !strings.Contains(out, "max sessions 10, per peer 2, session rate 1Gbit/s") {
		t.Errorf("beam set printed %q, want the limits in force", out)
	}
	pr = relay.status().PeerRelay
	if pr == nil || pr.Port != uint16(port) || pr.MaxSessions != 10 || pr.MaxSessionsPerPeer != 2 || pr.BytesPerSecond != 125_000_000 {
		t.Errorf("relay server after beam set: %+v, want port %d, 10 sessions, 2 per peer, 125000000 B/s", pr, port)
	}

	_, errOut, err := c.beam(nil, relay.args("set", "--relay-server-max-sessions", "-1")...)
	if err == nil || !strings.Contains(errOut, "--relay-server-max-sessions") {
		t.Errorf("beam set --relay-server-max-sessions -1: err %v, stderr %q; want it refused naming the flag", err, errOut)
	}
	if pr := relay.status().PeerRelay; pr == nil || pr.MaxSessions != 10 {
		t.Errorf("after a refused change: %+v, want 10 sessions still", pr)
	}

	// The default policy designates every node: a peer sees the offer.
	viewer := c.device("viewer")
	viewer.mustUp("--authkey", key)
	offered := func(d *device, name string) bool {
		for _, p := range d.status().Peers {
			if p.Name == name {
				return p.PeerRelay
			}
		}
		return false
	}
	waitFor(t, 20*time.Second, "viewer sees relay's peer relay", func() bool { return offered(viewer, "relay") })
	if pr := relay.status().PeerRelay; pr == nil || !pr.Offered {
		t.Errorf("relay's status under the default policy: %+v, want offered", pr)
	}
	setPolicy := func(peerRelays string) {
		t.Helper()
		path := filepath.Join(c.dir, "policy.hujson")
		body := `{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}], "peerRelays": [` + peerRelays + `]}`
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		c.mustBeam("admin", "--coordinator", c.url, "policy", "set", path)
	}
	// A policy naming another node only: the offer goes at once (the
	// relay makes no map request meanwhile).
	setPolicy(`"100.64.255.254"`)
	start := time.Now()
	waitFor(t, 10*time.Second, "viewer sees the offer withdrawn", func() bool { return !offered(viewer, "relay") })
	waitFor(t, 10*time.Second, "relay's status says not offered", func() bool {
		pr := relay.status().PeerRelay
		return pr != nil && !pr.Offered
	})
	t.Logf("offer withdrawn everywhere %v after the policy change", time.Since(start).Round(time.Millisecond))
	if out := c.mustBeam(relay.args("status")...); !strings.Contains(out, "not offered to peers") {
		t.Errorf("beam status of a relay the policy does not name:\n%s\nwant it to say the server is not offered", out)
	}
	setPolicy(`"*"`)
	waitFor(t, 10*time.Second, "viewer sees the offer again", func() bool { return offered(viewer, "relay") })
	waitFor(t, 10*time.Second, "relay's status says offered", func() bool {
		pr := relay.status().PeerRelay
		return pr != nil && pr.Offered
	})
}
