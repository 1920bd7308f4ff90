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

// splitRoutes cuts the edge routes of f, the message the stream of node
// nk is about to send, when they pass routeFrameBytes: f keeps the first
// part, and the frames returned carry the rest, to be sent right after
// f as parts of the same message (wire.MapResponse.More). A node older
// than routesSplitVersion cannot join them: f keeps what fits one frame
// (an edge serves those), and the routes left out are logged as an
// error, rather than the frame failing the stream.
func (es *edgeRoutes) splitRoutes(nk key.NodePublic, f *mapFrame, log *slog.Logger) []*mapFrame {
	routes := f.resp.EdgeRoutes
	if len(routes) < 2 {
		return nil
	}
	all, err := json.Marshal(routes)
	if err != nil || len(all) <= routeFrameBytes {
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
	// least one route each.
	parts := func(limit int) [][]wire.EdgeRoute {
		var out [][]wire.EdgeRoute
		start, size := 0, 0
		for i, r := range routes {
			b, _ := json.Marshal(r)
			if i > start && size+len(b)+1 > limit {
				out = append(out, routes[start:i:i])
				start, size = i, 0
			}
			size += len(b) + 1
		}
		return append(out, routes[start:])
	}
	if version < routesSplitVersion {
		kept := parts(frameSplitAt / 2)[0]
		log.Error("edge route list too large for one map frame and the edge is too old to take it in parts: some routes are left out; upgrade the edge",
			"routes", len(routes), "kept", len(kept), "bytes", len(all), "version", version)
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

// sendSplit sends f with sendFrame, followed by the frames of an edge's
// routes that splitRoutes cuts off it.
func (es *edgeRoutes) sendSplit(nk key.NodePublic, f *mapFrame, sendFrame func(*mapFrame) error, log *slog.Logger) error {
	rest := es.splitRoutes(nk, f, log)
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
