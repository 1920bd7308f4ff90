package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"beam.dev/beam/beamtest/pgtest"
	"beam.dev/beam/wire"
)

// adminStates returns how coordinator c's admin view shows each node:
// online, unknown or offline.
func adminStates(c *cluster) (map[string]string, error) {
	out, errOut, err := c.beam(nil, "admin", "nodes", "list", "--json", "--coordinator", c.url)
	if err != nil {
		return nil, fmt.Errorf("%v: %s", err, errOut)
	}
	var nodes []wire.Node
	if err := json.Unmarshal([]byte(out), &nodes); err != nil {
		return nil, err
	}
	got := map[string]string{}
	for _, n := range nodes {
		switch {
		case n.Online:
			got[n.Name] = "online"
		case n.Unknown:
			got[n.Name] = "unknown"
		default:
			got[n.Name] = "offline"
		}
	}
	return got, nil
}

// TestOnlineGraceRestartPostgres restarts the only `beam coordinator` on
// PostgreSQL (SIGTERM, then a new process on the same database) while
// three devices stream from it; one of them (gone) is killed while the
// coordinator is down. Right after the restart the admin view shows all
// three online, as before it; alpha's status never shows beta, which
// comes back, as anything but online; gone goes offline, in the admin
// view and for alpha, once the online grace (12 s here) has passed since
// the stop, not before. Before, the restart showed every node offline
// until it came back, and gone at once.
func TestOnlineGraceRestartPostgres(t *testing.T) {
	const grace = 12 * time.Second
	pg := pgtest.New(t)
	c := newClusterTB(t, "--db", pg.NewDatabase(t), "--online-grace", grace.String())
	key := strings.TrimSpace(c.mustBeam("admin", "authkey", "create", "--coordinator", c.url, "--reusable"))
	alpha, beta, gone := c.device("alpha"), c.device("beta"), c.device("gone")
	for _, d := range []*device{alpha, beta, gone} {
		d.mustUp("--authkey", key)
	}
	for _, p := range []string{"beta", "gone"} {
		waitFor(t, 15*time.Second, "alpha sees "+p+" online", func() bool { return peerState(alpha, p) == "online" })
	}

	// Watch how alpha shows beta, from before the stop until it is back.
	var (
		mu     sync.Mutex
		states = map[string]int{}
	)
	stopWatch := make(chan struct{})
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stopWatch:
				return
			case <-tick.C:
			}
			out, _, err := c.beam(nil, alpha.args("status", "--json")...)
			if err != nil {
				continue
			}
			var st struct {
				Peers []struct {
					Name            string
					Online, Unknown bool
				}
			}
			if json.Unmarshal([]byte(out), &st) != nil {
				continue
			}
			for _, p := range st.Peers {
				if p.Name == "beta" {
					state := "online"
					switch {
					case p.Unknown:
						state = "unknown"
					case !p.Online:
						state = "offline"
					}
					mu.Lock()
					states[state]++
					mu.Unlock()
				}
			}
		}
	}()
	defer func() {
		select {
		case <-stopWatch:
		default:
			close(stopWatch)
		}
		<-watched
	}()

	stopped := time.Now()
	c.stopCoordinator()
	gone.crash(t) // streaming at the stop; never back
	c.startCoordinator()
	got, err := adminStates(c)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"alpha", "beta", "gone"} {
		if got[name] != "online" {
			t.Errorf("right after the restart the admin view shows %s %s, want online", name, got[name])
		}
	}
	waitFor(t, 30*time.Second, "alpha back on the coordinator", func() bool { return alpha.status().CoordinatorOnline })
	waitFor(t, 30*time.Second, "beta back on the coordinator", func() bool { return beta.status().CoordinatorOnline })
	waitFor(t, 30*time.Second, "alpha shows gone offline", func() bool { return peerState(alpha, "gone") == "offline" })
	took := time.Since(stopped)
	t.Logf("gone offline for alpha %v after the stop", took.Round(time.Millisecond))
	if took < grace {
		t.Errorf("gone offline %v after the stop, before the grace of %v", took, grace)
	}
	if got, err := adminStates(c); err != nil || got["gone"] != "offline" || got["beta"] != "online" {
		t.Errorf("after the grace the admin view shows %v (%v), want gone offline and beta online", got, err)
	}
	close(stopWatch)
	<-watched
	mu.Lock()
	defer mu.Unlock()
	if states["online"] == 0 || states["offline"] > 0 || states["unknown"] > 0 {
		t.Errorf("alpha showed beta %v across the restart, want online only", states)
	}
}
