package coordinator

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync/atomic"
	"testing"

	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// countHandler counts the records logged at level Error.
type countHandler struct{ errors atomic.Int32 }

func (h *countHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *countHandler) Handle(_ context.Context, r slog.Record) error {
	if r.Level == slog.LevelError {
		h.errors.Add(1)
	}
	return nil
}
func (h *countHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *countHandler) WithGroup(string) slog.Handler      { return h }

func testRoutes(n int) []wire.EdgeRoute {
	routes := make([]wire.EdgeRoute, n)
	for i := range routes {
		routes[i] = wire.EdgeRoute{Host: fmt.Sprintf("r%d.edge.test", i), Proto: "http", Target: netip.MustParseAddrPort("100.64.0.2:3000"),
			// Escaped in JSON: the measure must count what the encoding writes.
			Options: wire.RouteOptions{HeaderAdd: map[string]string{"X-Note": fmt.Sprintf("<&> é %d", i)}}}
	}
	return routes
}

// TestSplitRoutes: an edge's route list is measured exactly (a list whose
// JSON is routeFrameBytes stays whole, one byte more is cut), cut into
// parts within the bound and in order for an edge that joins them, and
// for an older edge cut to what fits one frame with the routes left out
// logged once a stream, not at every message.
func TestSplitRoutes(t *testing.T) {
	routes := testRoutes(40)
	all, err := json.Marshal(routes)
	if err != nil {
		t.Fatal(err)
	}
	oldSplit, oldRoute := frameSplitAt, routeFrameBytes
	t.Cleanup(func() { frameSplitAt, routeFrameBytes = oldSplit, oldRoute })
	newEdge, oldEdge := key.NewNode().Public(), key.NewNode().Public()
	es := &edgeRoutes{core: &Server{nodes: map[key.NodePublic]*nodeEntry{
		newEdge: {version: routesSplitVersion},
		oldEdge: {version: routesSplitVersion - 1},
	}}}
	frame := func() *mapFrame { return &mapFrame{resp: &wire.MapResponse{EdgeRoutes: slices.Clone(routes)}} }
	h := &countHandler{}
	rs := &routeSplit{log: slog.New(h)}

	routeFrameBytes = len(all)
	if rest := es.splitRoutes(newEdge, frame(), rs); rest != nil {
		t.Errorf("a list of exactly routeFrameBytes (%d) of JSON cut in %d more frames, want none", len(all), len(rest))
	}
	routeFrameBytes = len(all) - 1
	if rest := es.splitRoutes(newEdge, frame(), rs); len(rest) == 0 {
		t.Errorf("a list one byte over routeFrameBytes was not cut")
	}

	routeFrameBytes = len(all) / 5
	f := frame()
	rest := es.splitRoutes(newEdge, f, rs)
	got := slices.Clone(f.resp.EdgeRoutes)
	for i, rf := range append([]*mapFrame{f}, rest...) {
		b, _ := json.Marshal(rf.resp.EdgeRoutes)
		if len(b) > routeFrameBytes {
			t.Errorf("part %d: %d bytes of routes, want at most %d", i, len(b), routeFrameBytes)
		}
		if i > 0 {
			got = append(got, rf.resp.EdgeRoutes...)
		}
	}
	if len(rest) < 4 || !slices.EqualFunc(got, routes, func(a, b wire.EdgeRoute) bool { return a.Host == b.Host }) {
		t.Errorf("%d more frames joining to %d routes, want at least 4 joining to the %d in order", len(rest), len(got), len(routes))
	}
	if n := h.errors.Load(); n != 0 {
		t.Errorf("%d errors logged for an edge that takes routes in parts", n)
	}

	frameSplitAt = 2 * routeFrameBytes // an old edge keeps what fits half a frame
	for i := range 5 {
		f := frame()
		if rest := es.splitRoutes(oldEdge, f, rs); rest != nil || len(f.resp.EdgeRoutes) == 0 || len(f.resp.EdgeRoutes) >= len(routes) {
			t.Fatalf("message %d to an old edge: kept %d routes and %d more frames, want some of the %d routes in one frame", i, len(f.resp.EdgeRoutes), len(rest), len(routes))
		}
	}
	if n := h.errors.Load(); n != 1 {
		t.Errorf("five messages to an old edge on one stream logged %d errors, want 1", n)
	}
	es.splitRoutes(oldEdge, frame(), &routeSplit{log: slog.New(h)})
	if n := h.errors.Load(); n != 2 {
		t.Errorf("a new stream of the old edge: %d errors in all, want 2 (once a stream)", n)
	}
}
