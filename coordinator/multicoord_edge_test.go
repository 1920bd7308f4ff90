package coordinator_test

import (
	"slices"
	"sync"
	"testing"
	"time"

	"beam.dev/beam/beamtest/pgtest"
	"beam.dev/beam/coordinator"
	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// TestExposeWaitsForRemoteEdges: beam expose on one coordinator answers
// once an edge streaming from another coordinator was sent the route (the
// other records it in the database), as it does for edges streaming from
// the same one; an edge that does not take it holds the answer up for
// edgeDeliveryWait at most.
func TestExposeWaitsForRemoteEdges(t *testing.T) {
	pg := pgtest.New(t)
	dsn := pg.NewDatabase(t)
	priv := key.NewMachine()
	mod := edgeOpts("20000-20009", "")
	ca, cb := startCoordWith(t, dsn, priv, mod), startCoordWith(t, dsn, priv, mod)
	ak := ca.authKey(t, coordinator.AuthKeyOptions{Reusable: true})
	b := newNode(t, cb.URL)
	b.register(t, ak, "bravo")
	edge := newNode(t, ca.URL)
	edge.register(t, ca.authKey(t, coordinator.AuthKeyOptions{Edge: true}), "edge")
	we := watch(t, edge)
	wb := watch(t, b)
	wb.waitFor("bravo streams", fanoutWait, func(nm *wire.NetMap) bool { return nm.Self != nil })
	// cb must know the edge streams from ca before it can wait for it.
	edgeOnline := func() bool {
		ns, err := cb.Server.Nodes(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		return slices.ContainsFunc(ns, func(n *wire.Node) bool { return n.Edge && n.Online })
	}
	deadline := time.After(fanoutWait)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !edgeOnline() {
		select {
		case <-deadline:
			t.Fatal("the edge streaming from ca is not online on cb")
		case <-tick.C:
		}
	}

	// Hold the edge's stream (on ca) before it takes the route.
	edgeKey := edge.priv.Public()
	var hold sync.WaitGroup
	hold.Add(1)
	restore := coordinator.SetStreamHookForTest(func(k key.NodePublic) {
		if k == edgeKey {
			hold.Wait()
		}
	})
	defer restore()
	released := false
	release := func() {
		if !released {
			released = true
			hold.Done()
		}
	}
	defer release()

	type result struct {
		resp *wire.ExposeResponse
		took time.Duration
	}
	done := make(chan result, 1)
	start := time.Now()
	go func() {
		resp, err := b.Expose(t.Context(), wire.ExposeRequest{Proto: "tcp", Port: 5432})
		if err != nil {
			t.Errorf("expose: %v", err)
		}
		done <- result{resp, time.Since(start)}
	}()
	// Measured: the route reaches the other coordinator's edge stream
	// in tens of ms; while the stream is held, the answer waits.
	select {
	case r := <-done:
		t.Fatalf("expose answered after %v, while the edge on the other coordinator was not sent the route", r.took)
	case <-time.After(500 * time.Millisecond):
	}
	release()
	var r result
	select {
	case r = <-done:
	case <-time.After(fanoutWait):
		t.Fatal("expose did not answer once the edge was sent the route")
	}
	t.Logf("expose answered %v after it was sent, with the edge's stream held for 500 ms", r.took.Round(time.Millisecond))
	if r.resp == nil || r.resp.Route == nil {
		t.Fatal("no route")
	}
	host := r.resp.Route.Host
	we.waitFor("the edge on the other coordinator has bravo's route", fanoutWait, func(nm *wire.NetMap) bool {
		return slices.ContainsFunc(nm.EdgeRoutes, func(er wire.EdgeRoute) bool { return er.Host == host })
	})

	// An edge whose stream never takes the route holds an expose up for
	// edgeDeliveryWait (2 s), not longer.
	var hold2 sync.WaitGroup
	hold2.Add(1)
	defer hold2.Done()
	coordinator.SetStreamHookForTest(func(k key.NodePublic) {
		if k == edgeKey {
			hold2.Wait()
		}
	})
	start = time.Now()
	if _, err := b.Expose(t.Context(), wire.ExposeRequest{Proto: "tcp", Port: 8443}); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < time.Second || took > 10*time.Second {
		t.Errorf("expose with the edge's stream held answered after %v, want about 2 s", took)
	}
}
