package main

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"
	"time"

	"beam.dev/beam/localapi/apitype"
)

// TestPingAndNetcheck runs beam ping and beam netcheck against two devices
// of a `beam server --dev` (which brings a relay and a STUN server).
func TestPingAndNetcheck(t *testing.T) {
	c, _ := startDevServer(t)
	a, b := c.device("alpha"), c.device("beta")
	a.mustUp()
	b.mustUp()
	waitFor(t, 10*time.Second, "alpha sees beta", func() bool { return len(a.status().Peers) == 1 })

	out := c.mustBeam(a.args("ping", "beta", "-c", "5", "--until-direct")...)
	re := regexp.MustCompile(`pong from beta \(100\.64\.\d+\.\d+\) via (\S+) in \S+`)
	m := re.FindAllStringSubmatch(out, -1)
	if len(m) == 0 {
		t.Fatalf("beam ping printed %q", out)
	}
	if last := m[len(m)-1][1]; !strings.Contains(last, ":") || strings.HasPrefix(last, "DERP(") {
		t.Fatalf("last pong via %q, want a direct address (output %q)", last, out)
	}
	if _, _, err := c.beam(nil, a.args("ping", "nosuch", "-c", "1")...); err == nil {
		t.Fatal("ping of an unknown name exited 0")
	}

	var r apitype.NetcheckReport
	if err := json.Unmarshal([]byte(c.mustBeam(a.args("netcheck", "--json")...)), &r); err != nil {
		t.Fatal(err)
	}
	if !r.UDP || !strings.HasPrefix(r.GlobalV4, "127.0.0.1:") || len(r.RegionLatency) == 0 || r.PreferredRelay == "" {
		t.Fatalf("netcheck = %+v, want UDP, a mapped 127.0.0.1 address, a region latency and a preferred relay", r)
	}
	if len(r.LocalAddrs) == 0 || len(r.Missing) != 0 {
		t.Fatalf("netcheck = %+v, want local addresses and nothing missing", r)
	}
	if txt := c.mustBeam(a.args("netcheck")...); !strings.Contains(txt, "UDP: true") || !strings.Contains(txt, "Nearest relay: DERP(") {
		t.Fatalf("netcheck text = %q", txt)
	}
}

// TestNetcheckWithoutSTUN: a coordinator whose relay map names no STUN
// server still gets a report of UDP and the local addresses, saying what
// is missing, instead of an error.
func TestNetcheckWithoutSTUN(t *testing.T) {
	c := newCluster(t)
	key := strings.TrimSpace(c.mustBeam("admin", "authkey", "create", "--coordinator", c.url))
	a := c.device("alpha")
	a.mustUp("--authkey", key)
	var r apitype.NetcheckReport
	if err := json.Unmarshal([]byte(c.mustBeam(a.args("netcheck", "--json")...)), &r); err != nil {
		t.Fatal(err)
	}
	if !r.UDP || len(r.LocalAddrs) == 0 || r.GlobalV4 != "" || len(r.RegionLatency) != 0 {
		t.Fatalf("netcheck = %+v, want UDP and local addresses, no public address or latency", r)
	}
	if len(r.Missing) != 1 || !strings.Contains(r.Missing[0], "no STUN servers") {
		t.Fatalf("netcheck missing = %q, want one line naming the absent STUN servers", r.Missing)
	}
	txt := c.mustBeam(a.args("netcheck")...)
	if !strings.Contains(txt, "Missing: the relay map has no STUN servers") || strings.Contains(txt, "IPv4:") {
		t.Fatalf("netcheck text = %q, want the missing STUN named and no IPv4 line", txt)
	}
}
