package coordclient

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"testing"
	"time"

	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// TestRunResponses checks that RunResponses hands over each frame as
// sent, the full map that starts every stream marked first, across a
// reconnect, and ends with the stream's terminal error.
func TestRunResponses(t *testing.T) {
	peer := &wire.Node{Name: "peer", Key: key.NewNode().Public()}
	fc, cl := newFake(t, func(fc *fakeCoord, w http.ResponseWriter, r *http.Request, nk key.NodePublic) {
		fc.mu.Lock()
		n := fc.streams
		fc.mu.Unlock()
		fc.frame(w, nk, &wire.MapResponse{Self: &wire.Node{Name: "me"}, Peers: []*wire.Node{peer}})
		fc.frame(w, nk, &wire.MapResponse{PeersOnline: map[key.NodePublic]bool{peer.Key: true}})
		if n == 2 {
			w.Header().Set(wire.TrailerError, string(wire.CodeNodeRemoved)+": removed")
		}
		// End the stream: the first time the client reconnects, the
		// second time the trailer ends Run for good.
	})
	fc.keepMS = "60000"
	type got struct {
		first  bool
		peers  int
		online bool
	}
	var gots []got
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	err := cl.RunResponses(ctx, func(resp *wire.MapResponse, first bool) {
		gots = append(gots, got{first, len(resp.Peers), resp.PeersOnline[peer.Key]})
	})
	if !errors.Is(err, ErrNodeRemoved) {
		t.Fatalf("RunResponses = %v, want ErrNodeRemoved", err)
	}
	want := []got{{true, 1, false}, {false, 0, true}, {true, 1, false}, {false, 0, true}}
	if len(gots) != len(want) {
		t.Fatalf("got %d responses %+v, want %+v", len(gots), gots, want)
	}
	for i := range want {
		if gots[i] != want[i] {
			t.Errorf("response %d = %+v, want %+v", i, gots[i], want[i])
		}
	}
}

// TestRunResponsesHonorsRetryAfter checks that a stream ended by a
// coordinator's shutdown with a retry-after trailer is opened again
// after that wait, not after the short backoff that follows a stream
// that had its full map.
func TestRunResponsesHonorsRetryAfter(t *testing.T) {
	const retryAfter = 1200 * time.Millisecond
	ended := make(chan time.Time, 1)
	_, cl := newFake(t, func(fc *fakeCoord, w http.ResponseWriter, r *http.Request, nk key.NodePublic) {
		fc.mu.Lock()
		n := fc.streams
		fc.mu.Unlock()
		fc.frame(w, nk, &wire.MapResponse{Self: &wire.Node{Name: "me"}})
		if n == 1 {
			w.Header().Set(wire.TrailerError, string(wire.CodeUnavailable)+": coordinator is shutting down")
			w.Header().Set(wire.TrailerRetryAfter, strconv.FormatInt(retryAfter.Milliseconds(), 10))
			ended <- time.Now()
			return
		}
		<-r.Context().Done()
	})
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	reopened := make(chan time.Time, 1)
	firsts := 0
	err := cl.RunResponses(ctx, func(resp *wire.MapResponse, first bool) {
		if first {
			firsts++
			if firsts == 2 {
				reopened <- time.Now()
				cancel()
			}
		}
	})
	if err != nil {
		t.Fatalf("RunResponses = %v, want nil once canceled", err)
	}
	select {
	case t1 := <-reopened:
		if gap := t1.Sub(<-ended); gap < retryAfter {
			t.Errorf("stream reopened %v after the shutdown, want at least the %v asked for", gap, retryAfter)
		}
	default:
		t.Fatal("stream not reopened")
	}
}

// TestRunResponsesBacksOffQuickEnds: a coordinator that sends a map and
// ends every stream at once, asking the node to come back in 1 ms, does
// not get a reconnect loop: the wait asked for has a floor, and streams
// that end at once reset no backoff.
func TestRunResponsesBacksOffQuickEnds(t *testing.T) {
	_, cl := newFake(t, func(fc *fakeCoord, w http.ResponseWriter, r *http.Request, nk key.NodePublic) {
		fc.frame(w, nk, &wire.MapResponse{Self: &wire.Node{Name: "me"}})
		w.Header().Set(wire.TrailerError, string(wire.CodeUnavailable)+": going away")
		w.Header().Set(wire.TrailerRetryAfter, "1")
	})
	const run = 3 * time.Second
	ctx, cancel := context.WithTimeout(t.Context(), run)
	defer cancel()
	streams := 0
	if err := cl.RunResponses(ctx, func(_ *wire.MapResponse, first bool) {
		if first {
			streams++
		}
	}); err != nil {
		t.Fatalf("RunResponses = %v, want nil once canceled", err)
	}
	if most := 8; streams > most || streams < 2 { // 500 ms apart at least, over 3 s
		t.Errorf("%d streams in %v, want 2 to %d", streams, run, most)
	}
}

// TestRunResponsesDropsHeldAfterFailedResume: a stream that offered the
// peers held and ended before its first message (a coordinator that
// cannot send the resumed message) makes the next stream offer none, so
// that it gets a full map instead of failing the same way for ever.
func TestRunResponsesDropsHeldAfterFailedResume(t *testing.T) {
	peer := &wire.Node{Name: "peer", Key: key.NewNode().Public(), Rev: 1}
	fc, cl := newFake(t, func(fc *fakeCoord, w http.ResponseWriter, r *http.Request, nk key.NodePublic) {
		fc.mu.Lock()
		n := fc.streams
		fc.mu.Unlock()
		if n == 2 {
			return // ends before its first message
		}
		fc.frame(w, nk, &wire.MapResponse{Self: &wire.Node{Name: "me"}, Peers: []*wire.Node{peer}})
		if n == 3 {
			<-r.Context().Done()
		}
	})
	fc.keepMS = "60000"
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	firsts := 0
	if err := cl.RunResponses(ctx, func(_ *wire.MapResponse, first bool) {
		if first {
			if firsts++; firsts == 2 {
				cancel()
			}
		}
	}); err != nil {
		t.Fatalf("RunResponses = %v, want nil once canceled", err)
	}
	fc.mu.Lock()
	defer fc.mu.Unlock()
	if len(fc.offered) != 3 {
		t.Fatalf("%d streams, want 3", len(fc.offered))
	}
	for i, want := range []bool{false, true, false} {
		if got := fc.offered[i] != nil; got != want {
			t.Errorf("stream %d offered a digest: %v, want %v", i+1, got, want)
		}
	}
}
