package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"beam.dev/beam/beamtest/pgtest"
)

// TestTwoCoordinatorsOnPostgres runs two `beam coordinator --db
// postgres://...` processes on one private PostgreSQL server, as replicas
// of one coordinator: the second starts on a copy of the first's data
// directory, so both have the same machine key (nodes seal requests to
// it) and admin token. A device that joins through the first and one
// that joins through the second see each other online and ping each
// other; a rename made on the first reaches the device on the second.
func TestTwoCoordinatorsOnPostgres(t *testing.T) {
	srv := pgtest.New(t)
	dsn := srv.NewDatabase(t)
	c1 := newClusterTB(t, "--db", dsn)
	c2 := &cluster{t: t, bin: c1.bin, dir: t.TempDir(), token: c1.token, coordArgs: c1.coordArgs}
	c2.addr = "127.0.0.1:" + strconv.Itoa(freePort(t))
	c2.url = "http://" + c2.addr
	copyCoordinatorKeys(t, filepath.Join(c1.dir, "coord"), filepath.Join(c2.dir, "coord"))
	c2.startCoordinator()

	key := strings.TrimSpace(c1.mustBeam("admin", "authkey", "create", "--coordinator", c1.url, "--reusable"))
	a, b := c1.device("alpha"), c2.device("beta")
	a.mustUp("--authkey", key)
	b.mustUp("--authkey", key)
	// Measured: well under a second on a loaded machine.
	waitFor(t, 15*time.Second, "alpha (on coordinator 1) sees beta (on coordinator 2) online", func() bool { return hasPeer(a, "beta", true) })
	waitFor(t, 15*time.Second, "beta sees alpha online", func() bool { return hasPeer(b, "alpha", true) })

	out := c1.mustBeam(a.args("ping", "beta", "-c", "3")...)
	if !strings.Contains(out, "pong from beta") {
		t.Fatalf("beam ping beta on alpha printed %q, want a pong", out)
	}
	out = c2.mustBeam(b.args("ping", "alpha", "-c", "3")...)
	if !strings.Contains(out, "pong from alpha") {
		t.Fatalf("beam ping alpha on beta printed %q, want a pong", out)
	}

	c1.mustBeam("admin", "nodes", "rename", "alpha", "alpha-one", "--coordinator", c1.url)
	start := time.Now()
	waitFor(t, 15*time.Second, "beta sees alpha's new name, given on the other coordinator", func() bool { return hasPeer(b, "alpha-one", false) })
	t.Logf("rename reached beta's netmap in %v", time.Since(start).Round(time.Millisecond))
	if hasPeer(b, "alpha", false) {
		t.Errorf("beta still lists alpha under its old name")
	}
}

// copyCoordinatorKeys copies the machine key and the tokens of the
// coordinator data directory from to a new data directory to.
func copyCoordinatorKeys(t *testing.T, from, to string) {
	t.Helper()
	if err := os.MkdirAll(to, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"coordinator.key", "admin.token", "relay.token"} {
		b, err := os.ReadFile(filepath.Join(from, name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}
