package main

import (
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestEdgeRefusesCoordinatorWithoutEdgeDomain starts beam edge against a
// coordinator with no --edge-domain: it must exit at once saying so,
// rather than run and leave beam expose to fail later.
func TestEdgeRefusesCoordinatorWithoutEdgeDomain(t *testing.T) {
	c := newCluster(t)
	key := strings.TrimSpace(c.mustBeam("admin", "--coordinator", c.url, "authkey", "create", "--edge"))
	dir := c.dir
	out, errOut, err := c.beam(nil, "edge", "--coordinator", c.url, "--authkey", key, "--domain", "example.test",
		"--state", filepath.Join(dir, "edge"), "--socket", filepath.Join(dir, "edge.sock"),
		"--http-addr", "127.0.0.1:"+strconv.Itoa(freePort(t)), "--https-addr", "")
	if err == nil {
		t.Fatalf("beam edge ran against a coordinator without an edge domain\nstdout: %s\nstderr: %s", out, errOut)
	}
	for _, want := range []string{"has no edge domain", "--edge-domain"} {
		if !strings.Contains(errOut, want) {
			t.Errorf("stderr does not say %q:\n%s", want, errOut)
		}
	}
}

// TestServerRefusesNoCertificates checks that a public beam server with
// HTTPS but no zone to answer DNS-01 is refused before it listens, and
// that loopback listeners under a public domain are warned about.
func TestServerRefusesNoCertificates(t *testing.T) {
	c := &cluster{t: t, bin: buildBeam(t), dir: t.TempDir()}
	out, errOut, err := c.beam(nil, "server", "--domain", "example.test", "--data", filepath.Join(c.dir, "srv"),
		"--addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--https-addr", "127.0.0.1:0", "--dns-addr", "", "--stun-addr", "")
	if err == nil {
		t.Fatalf("beam server with --dns-addr \"\" ran\nstdout: %s\nstderr: %s", out, errOut)
	}
	for _, want := range []string{"no way to get certificates", "--https-addr \"\""} {
		if !strings.Contains(errOut, want) {
			t.Errorf("stderr does not say %q:\n%s", want, errOut)
		}
	}
	for _, want := range []string{"WARNING: --addr 127.0.0.1:0 listens on loopback only", "WARNING: --http-addr 127.0.0.1:0 listens on loopback only"} {
		if !strings.Contains(errOut, want) {
			t.Errorf("stderr does not warn %q:\n%s", want, errOut)
		}
	}
}
