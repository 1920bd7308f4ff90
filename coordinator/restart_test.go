package coordinator_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"beam.dev/beam/coordclient"
	"beam.dev/beam/coordinator"
	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// TestShutdownSpreadsReconnects checks that a coordinator shutting down
// tells each streaming node when to come back, and that the nodes do:
// none before the least wait (a node that only backed off would be back
// within a quarter second), all soon after the most, each with a new
// full map from the restarted coordinator.
func TestShutdownSpreadsReconnects(t *testing.T) {
	const n = 4
	c := startCoord(t, nil)
	ak := c.authKey(t, coordinator.AuthKeyOptions{Reusable: true})
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()

	type event struct {
		i     int
		first bool // a full map, else the stream ended
		at    time.Time
	}
	events := make(chan event, 8*n)
	for i := range n {
		cl, err := coordclient.New(coordclient.Options{ServerURL: c.URL, PrivateKey: key.NewNode(), DiscoKey: key.NewDisco().Public(),
			OnConnState: func(up bool) {
				if !up {
					events <- event{i, false, time.Now()}
				}
			}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cl.Register(ctx, coordclient.RegisterParams{AuthKey: ak, Hostname: "n", OS: "linux"}); err != nil {
			t.Fatal(err)
		}
		wg.Go(func() {
			cl.RunResponses(ctx, func(_ *wire.MapResponse, first bool) {
				if first {
					events <- event{i, true, time.Now()}
				}
			})
		})
	}
	next := func(what string) event {
		t.Helper()
		select {
		case ev := <-events:
			return ev
		case <-time.After(30 * time.Second):
			t.Fatalf("no %s within 30 s", what)
			return event{}
		}
	}
	for range n {
		if ev := next("first full map"); !ev.first {
			t.Fatalf("node %d's stream ended before its first full map", ev.i)
		}
	}

	c.restart()
	// up is when the restarted coordinator listens again: on a loaded
	// machine its start can outlast the wait it asked for, and a node
	// that came back before it backs off a little.
	up := time.Now()
	least, most := coordinator.RestartWaitsForTest(n)
	ended := make(map[int]time.Time)
	for len(ended) < n {
		ev := next("stream end")
		if ev.first {
			t.Fatalf("node %d had a new full map before every stream had ended", ev.i)
		}
		ended[ev.i] = ev.at
	}
	back := make(map[int]bool)
	for len(back) < n {
		ev := next("new full map")
		if !ev.first {
			t.Fatalf("node %d's stream to the restarted coordinator ended", ev.i)
		}
		gap := ev.at.Sub(ended[ev.i])
		if gap < least {
			t.Errorf("node %d back %v after its stream ended, want at least the %v the coordinator asks", ev.i, gap, least)
		}
		// Generous: the wait asked for, or the restart if that took
		// longer, plus a loaded machine's reconnect.
		due := ended[ev.i].Add(most)
		if up.After(due) {
			due = up
		}
		if late := ev.at.Sub(due); late > 10*time.Second {
			t.Errorf("node %d back %v after its stream ended and %v after the coordinator listened again, want about %v at most", ev.i, gap, ev.at.Sub(up), most)
		}
		back[ev.i] = true
	}
}
