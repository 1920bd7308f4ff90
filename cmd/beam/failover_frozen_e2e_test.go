//go:build unix

package main

import (
	"strings"
	"syscall"
	"testing"
	"time"

	"beam.dev/beam/beamtest/pgtest"
)

// TestCoordinatorFrozen: a coordinator whose machine stops answering
// without closing its connections (a frozen process: SIGSTOP) keeps its
// nodes' streams open but silent. With --keepalive 1s a node given
// another replica's URL moves there once the stream has been silent 5 s
// past the keepalive, not the 35 s the default keepalive makes it wait.
func TestCoordinatorFrozen(t *testing.T) {
	pg := pgtest.New(t)
	dsn := pg.NewDatabase(t)
	c1 := newClusterTB(t, "--db", dsn, "--keepalive", "1s")
	c2 := replicaOf(t, c1)
	key := strings.TrimSpace(c1.mustBeam("admin", "authkey", "create", "--coordinator", c1.url, "--reusable"))
	d := c1.device("frozen")
	d.upOn([]string{c1.url, c2.url}, key)
	if got := d.streamingFrom(); got != c1.url {
		t.Fatalf("streams from %q, want its first URL %s", got, c1.url)
	}
	if err := c1.coord.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer c1.coord.Process.Signal(syscall.SIGCONT)
	frozen := time.Now()
	// 1 s keepalive + 5 s margin, then a stream request to the replica;
	// 30 s bounds it on a loaded machine, under the 35 s of the default.
	waitFor(t, 30*time.Second, "the device streams from the replica", func() bool {
		u := d.streamingFrom()
		return u != "" && u != c1.url
	})
	t.Logf("moved to %s %v after the freeze", d.streamingFrom(), time.Since(frozen).Round(time.Millisecond))
}
