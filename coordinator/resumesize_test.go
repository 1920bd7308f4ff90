package coordinator_test

import (
	"testing"

	"beam.dev/beam/coordinator"
	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// TestResumeTooLargeSendsFullMap checks that a node whose resumed first
// message would not fit a frame (its list of peers offline too long; it
// is never split) gets a full map, split across frames, instead: the
// coordinator failed the stream before it, and the node offered the same
// digest again and again.
func TestResumeTooLargeSendsFullMap(t *testing.T) {
	c := startCoord(t, nil)
	ak := c.authKey(t, coordinator.AuthKeyOptions{Reusable: true})
	privs := registerMany(t, c, ak, "n", 60)
	self := privs[0]

	rs := openResumeStream(t, c, self, wire.CapabilityVersion, nil)
	full, _ := rs.next()
	rs.close()
	if len(full.Peers) != 59 {
		t.Fatalf("first map: %d peers, want 59", len(full.Peers))
	}
	digest := digestOf(full.Peers)
	rs = openResumeStream(t, c, self, wire.CapabilityVersion, digest)
	kept, keptSize := rs.next()
	rs.close()
	if !kept.PeersKept || len(kept.PeersOffline) != 59 {
		t.Fatalf("resumed: kept %v, %d offline; want 59 offline kept", kept.PeersKept, len(kept.PeersOffline))
	}

	// A frame limit the resumed message passes by about a third of its
	// list of peers offline (each key is over 64 bytes of it).
	limit := keptSize - 59*64/3
	defer coordinator.SetFrameSplitAtForTest(limit)()
	rs = openResumeStream(t, c, self, wire.CapabilityVersion, digest)
	mr, size := rs.nextFrame()
	peers := len(mr.Peers)
	for frames := 1; ; frames++ {
		if max := limit + 4 + key.SealOverhead; size > max {
			t.Errorf("frame %d is %d bytes, over %d", frames, size, max)
		}
		if mr.PeersKept {
			t.Fatalf("frame limit %d: the resumed message (%d bytes) kept the peers; want a full map", limit, keptSize)
		}
		if !mr.More {
			break
		}
		mr, size = rs.nextFrame()
		peers += len(mr.Peers)
	}
	if peers != 59 {
		t.Fatalf("full map of %d peers, want 59", peers)
	}
}
