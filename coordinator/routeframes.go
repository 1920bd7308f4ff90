package coordinator

import (
	"encoding/json"
	"log/slog"

	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// routesSplitVersion is the first wire.CapabilityVersion whose nodes join
// the EdgeRoutes of a message split across frames.
const routesSplitVersion = 18

// routeFrameBytes is the most JSON of routes one frame carries when an
// edge's route list is cut across frames: well within frameSplitAt,
// whatever else the message's first frame holds. Tests lower it.
var routeFrameBytes = frameSplitAt / 4

// routeSplit is one map stream's state for cutting its edge's route
// list (splitRoutes). It belongs to the stream's goroutine.
type routeSplit struct {
	log *slog.Logger
	// leftOut is set once the stream logged that its edge, too old to
	// take a route list in parts, is left without some routes: it is
	// logged once a stream, not at every message.
	leftOut bool
}

// splitRoutes cuts the edge routes of f, the message the stream of node
// nk is about to send, when they pass routeFrameBytes: f keeps the first
// part, and the frames returned carry the rest, to be sent right after
// f as parts of the same message (wire.MapResponse.More). A node older
// than routesSplitVersion cannot join them: f keeps what fits one frame
// (an edge serves those), and the routes left out are logged as an
// error (once a stream: rs), rather than the frame failing the stream.
//
// The list is measured from its routes' JSON, each encoded once into a
// byte count, not into memory, which also gives where to cut: the list's
// own JSON is "[" + the routes' joined by "," + "]".
func (es *edgeRoutes) splitRoutes(nk key.NodePublic, f *mapFrame, rs *routeSplit) []*mapFrame {
	routes := f.resp.EdgeRoutes
	if len(routes) < 2 {
		return nil
	}
	sizes := make([]int, len(routes))
	var n byteCount
	enc := json.NewEncoder(&n) // as json.Marshal encodes, plus a newline
	total := 1                 // "[", and "," or "]" after each route
	for i := range routes {
		before := n
		if err := enc.Encode(&routes[i]); err != nil {
			return nil // the frame's encoding fails, and says why
		}
		sizes[i] = int(n-before) - 1
		total += sizes[i] + 1
	}
	if total <= routeFrameBytes {
		return nil
	}
	s := es.core
	s.mu.Lock()
	var version int
	if e := s.nodes[nk]; e != nil {
		version = e.version
	}
	s.mu.Unlock()
	// parts cuts routes into runs of at most limit bytes of JSON, at
	// least one route each: a run's JSON is 1 byte ("[") plus each
	// route's and the "," or "]" after it.
	parts := func(limit int) [][]wire.EdgeRoute {
		var out [][]wire.EdgeRoute
		start, size := 0, 1
		for i, n := range sizes {
			if i > start && size+n+1 > limit {
				out = append(out, routes[start:i:i])
				start, size = i, 1
			}
			size += n + 1
		}
		return append(out, routes[start:])
	}
	if version < routesSplitVersion {
		kept := parts(frameSplitAt / 2)[0]
		if !rs.leftOut {
			rs.leftOut = true
			rs.log.Error("edge route list too large for one map frame and the edge is too old to take it in parts: some routes are left out; upgrade the edge (logged once for this stream)",
				"routes", len(routes), "kept", len(kept), "bytes", total, "version", version)
		}
		f.resp.EdgeRoutes = kept
		return nil
	}
	ps := parts(routeFrameBytes)
	f.resp.EdgeRoutes = ps[0]
	rest := make([]*mapFrame, 0, len(ps)-1)
	for _, p := range ps[1:] {
		rest = append(rest, &mapFrame{resp: &wire.MapResponse{EdgeRoutes: p}})
	}
	return rest
}

// byteCount is an io.Writer that counts what is written to it.
type byteCount int

func (c *byteCount) Write(p []byte) (int, error) {
	*c += byteCount(len(p))
	return len(p), nil
}

// sendSplit sends f with sendFrame, followed by the frames of an edge's
// routes that splitRoutes cuts off it; rs is the stream's.
func (es *edgeRoutes) sendSplit(nk key.NodePublic, f *mapFrame, sendFrame func(*mapFrame) error, rs *routeSplit) error {
	rest := es.splitRoutes(nk, f, rs)
	if len(rest) == 0 {
		return sendFrame(f)
	}
	more := f.more
	markMore(f, true)
	err := sendFrame(f)
	markMore(f, more)
	if err != nil {
		return err
	}
	for i, rf := range rest {
		markMore(rf, more || i < len(rest)-1)
		if err := sendFrame(rf); err != nil {
			return err
		}
	}
	return nil
}

// markMore says whether more frames of f's message follow it: in
// f.more, which the encoding of a frame with peers writes, and in the
// MapResponse of one without, which is encoded as it is.
func markMore(f *mapFrame, more bool) {
	f.more = more
	if len(f.peers) == 0 && !f.full {
		f.resp.More = more
	}
}
