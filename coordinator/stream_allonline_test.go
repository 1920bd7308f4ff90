package coordinator_test

import (
	"testing"
	"time"

	"beam.dev/beam/coordinator"
	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// TestOnlineBurstAllOnline checks how a node that got its full map
// before a burst of connections learns that its peers came online: a
// node of version 22 or later gets one message with PeersAllOnline
// rather than the online state of each peer, one of version 21 every
// state as before, and both end with every peer online.
func TestOnlineBurstAllOnline(t *testing.T) {
	const n = 120
	c := startCoord(t, func(o *coordinator.Options) { o.KeepAliveInterval = time.Minute })
	ak := c.authKey(t, coordinator.AuthKeyOptions{Reusable: true})
	privs := registerMany(t, c, ak, "n", n)
	watcher := newNode(t, c.URL)
	watcher.register(t, ak, "watcher")
	observers := map[string]*node{}
	for _, name := range []string{"new", "old"} {
		observers[name] = newNode(t, c.URL)
		observers[name].register(t, ak, "observer-"+name)
	}
	versions := map[string]int{"new": wire.CapabilityVersion, "old": wire.AllOnlineVersion - 1}

	// The observers' handlers wait, before taking what changed, until
	// every node is online, so that their next delta has every flip.
	held := map[key.NodePublic]bool{observers["new"].NodeKey(): true, observers["old"].NodeKey(): true}
	release := make(chan struct{})
	restore := coordinator.SetStreamHookForTest(func(k key.NodePublic) {
		if held[k] {
			<-release
		}
	})
	defer restore()
	defer func() {
		select {
		case <-release:
		default:
			close(release)
		}
	}()

	streams := map[string]*rawStream{}
	maps := map[string]*wire.NetMap{}
	for name, obs := range observers {
		rs := openRawStream(t, c, obs.priv, versions[name])
		time.AfterFunc(60*time.Second, rs.close) // a read that hangs fails
		mr, _ := rs.next()
		maps[name] = (*wire.NetMap)(nil).Apply(mr, time.Now())
		if len(maps[name].Peers) != n+2 {
			t.Fatalf("%s: full map has %d peers, want %d", name, len(maps[name].Peers), n+2)
		}
		streams[name] = rs
	}
	w := watch(t, watcher)
	streamAll(t, c, privs)
	allOnline := func(nm *wire.NetMap) bool {
		on := 0
		for _, p := range nm.Peers {
			if p.Online {
				on++
			}
		}
		return on == n+2
	}
	w.waitFor("every peer online", 30*time.Second, allOnline)
	close(release)

	for name, rs := range streams {
		nm := maps[name]
		var allMsgs, states int
		for !allOnline(nm) {
			mr, _ := rs.next()
			if mr.PeersAllOnline {
				allMsgs++
			}
			states += len(mr.PeersOnline)
			nm = nm.Apply(mr, time.Now())
		}
		t.Logf("%s: %d PeersAllOnline messages, %d online states", name, allMsgs, states)
		switch name {
		case "new":
			if allMsgs == 0 || states > n/2 {
				t.Errorf("%s: %d PeersAllOnline messages and %d online states, want PeersAllOnline and few states", name, allMsgs, states)
			}
		case "old":
			if allMsgs != 0 || states < n {
				t.Errorf("%s: %d PeersAllOnline messages and %d online states, want none and one per peer", name, allMsgs, states)
			}
		}
	}
}
