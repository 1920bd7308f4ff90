package main

import (
	"strconv"
	"strings"
	"testing"
)

// TestPeerRelayLimitsE2E: the peer relay server's limits given to beam up
// are in force in the running server (beam status --json), beam set
// changes them at once without restarting the server, beam set prints
// them, and a bad value is refused with the flag named.
func TestPeerRelayLimitsE2E(t *testing.T) {
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
}
