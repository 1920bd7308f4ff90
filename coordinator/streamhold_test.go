package coordinator_test

import (
	"sync/atomic"
	"testing"
	"time"

	"beam.dev/beam/coordinator"
	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// TestHeldFlipsWaitAsStreamsOpen checks that a stream holding online
// flips, whose wait (a millisecond per open stream) grows as more streams
// open, waits on to the longer one without computing a delta at the
// shorter, and then sends the flips in one delta: in a connect burst
// every stream would otherwise compute its deltas once per wait only to
// hold them again.
func TestHeldFlipsWaitAsStreamsOpen(t *testing.T) {
	c := startCoord(t, func(o *coordinator.Options) { o.KeepAliveInterval = time.Minute })
	ak := c.authKey(t, coordinator.AuthKeyOptions{Reusable: true})
	const attempts = 3
	privs := registerMany(t, c, ak, "n", 2*attempts)
	var observer atomic.Pointer[key.NodePublic]
	var computed atomic.Int32
	defer coordinator.SetStreamHookForTest(func(k key.NodePublic) {
		if o := observer.Load(); o != nil && *o == k {
			computed.Add(1)
		}
	})()
	// Opened streams count this many more, and then more yet: the
	// wait grows from about 0.8 s to 2.5 s.
	const first, more = 800, 1700
	for i := range attempts {
		obsKey, newcomer := privs[2*i].Public(), privs[2*i+1]
		obs := openRawStream(t, c, privs[2*i], wire.CapabilityVersion)
		if mr, _ := obs.next(); len(mr.Peers) != 2*attempts-1 {
			t.Fatalf("full map has %d peers, want %d", len(mr.Peers), 2*attempts-1)
		}
		fullAt := time.Now()
		restore := c.Server.AddOpenStreamsForTest(first)
		observer.Store(&obsKey)
		computed.Store(0)
		nc := openRawStream(t, c, newcomer, wire.CapabilityVersion) // online
		nc.next()
		raisedAt := time.Since(fullAt)
		restoreMore := c.Server.AddOpenStreamsForTest(more)

		mr, _ := obs.next()
		took := time.Since(fullAt)
		deltas := computed.Load()
		restoreMore()
		restore()
		obs.close()
		nc.close()
		if on, ok := mr.PeersOnline[newcomer.Public()]; !ok || !on || len(mr.PeersChanged)+len(mr.PeersRemoved) > 0 {
			t.Fatalf("first delta = %+v, want the newcomer online", mr)
		}
		if raisedAt > first*time.Millisecond*3/4 {
			// The wait may have ended before it grew: no conclusion.
			t.Logf("attempt %d: the newcomer took %v to stream", i, raisedAt)
			continue
		}
		if took < (first+more)*time.Millisecond-200*time.Millisecond {
			t.Errorf("the newcomer's online flip came %v after the full map, want the grown wait, %v", took, (first+more)*time.Millisecond)
		}
		if deltas != 1 {
			t.Errorf("the stream computed %d deltas for the flip, want 1", deltas)
		}
		return
	}
	t.Fatalf("in %d attempts the newcomer never streamed soon enough to test the grown wait", attempts)
}
