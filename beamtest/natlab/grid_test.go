package natlab

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"text/tabwriter"
	"time"

	"beam.dev/beam/beamtest/nslab"
)

// gridKinds are the NAT kinds of the grid, in table order.
var gridKinds = []nslab.NATKind{nslab.NATNone, nslab.NATEasy, nslab.NATHard, nslab.NATUDPBlocked}

// gridPair is one cell of the grid: A (who sends) behind kind A, B behind
// kind B.
type gridPair struct{ A, B nslab.NATKind }

// gridPairs returns every pair of NAT kinds, A before B.
func gridPairs() []gridPair {
	var pairs []gridPair
	for _, a := range gridKinds {
		for _, b := range gridKinds {
			pairs = append(pairs, gridPair{a, b})
		}
	}
	return pairs
}

const (
	// gridParallel is how many pairs join and measure at once.
	gridParallel = 6
	// gridPairLimit bounds each pair's wait for its path.
	gridPairLimit = 30 * time.Second
	// gridLimit bounds the whole grid, lab setup included.
	gridLimit = 3 * time.Minute
)

// kindLabel names a NAT kind in tables and host names.
func kindLabel(k nslab.NATKind) string {
	switch k {
	case nslab.NATNone:
		return "public"
	case nslab.NATUDPBlocked:
		return "udpblk"
	}
	return k.String()
}

// expectedPath is the path a pair must reach: direct whenever UDP can
// flow and at most one side is behind a hard NAT (easy/hard by birthday
// probing: the hard side learns its NAT is hard from the one relay's two
// STUN ports); relayed otherwise (hard/hard, or UDP blocked). A better
// path than expected (direct across two hard NATs) also passes.
func expectedPath(a, b nslab.NATKind) string {
	switch {
	case a == nslab.NATUDPBlocked || b == nslab.NATUDPBlocked:
		return pathRelay
	case a == nslab.NATHard && b == nslab.NATHard:
		return pathRelay
	}
	return pathDirect
}

// gridResult is one row of the grid artefact.
type gridResult struct {
	A      string `json:"a"`
	B      string `json:"b"`
	UpTime msDur  `json:"up_ms"` // beam up of both until each sees the other
	pathRun
}

// TestGrid joins one pair of devices per NAT pair to one coordinator and
// relay, sends traffic from A to B, and reports the path each pair reached
// and how long it took, as a table.
func TestGrid(t *testing.T) {
	gridStart := time.Now()
	w := newWorld(t, worldConfig{})
	pairs := gridPairs()
	type cell struct{ a, b *device }
	cells := make([]cell, len(pairs))
	for i, p := range pairs {
		// Each pair has a network of its own: its devices see only each
		// other, as two devices of a small network would.
		base := kindLabel(p.A) + "-" + kindLabel(p.B)
		key := w.createAuthKey(base)
		cells[i] = cell{w.addDevice(base+"-a", p.A), w.addDevice(base+"-b", p.B)}
		cells[i].a.authKey, cells[i].b.authKey = key, key
	}
	t.Logf("lab with %d devices built in %v", 2*len(pairs), time.Since(gridStart).Round(time.Millisecond))

	results := make([]gridResult, len(pairs))
	sem := make(chan struct{}, gridParallel)
	var wg sync.WaitGroup
	ctx := t.Context()
	for i, p := range pairs {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			res := gridResult{A: kindLabel(p.A), B: kindLabel(p.B)}
			upStart := time.Now()
			if err := upPair(ctx, cells[i].a, cells[i].b); err != nil {
				res.pathRun = pathRun{Want: expectedPath(p.A, p.B), FirstTraffic: -1, ToRelay: -1, ToDirect: -1, ToWant: -1, Err: err.Error()}
				results[i] = res
				return
			}
			start := time.Now()
			res.UpTime = msDur(start.Sub(upStart))
			res.pathRun = reachPath(ctx, cells[i].a, cells[i].b, expectedPath(p.A, p.B), start, gridPairLimit)
			results[i] = res
		})
	}
	wg.Wait()
	elapsed := time.Since(gridStart)

	text := gridTable(results) + "\n" + gridMatrix(results) + fmt.Sprintf("grid of %d pairs in %v (%d at a time, %v per pair at most)\n",
		len(pairs), elapsed.Round(time.Millisecond), gridParallel, gridPairLimit)
	t.Logf("NAT grid (times since both devices were up):\n%s", text)
	writeArtefact(t, w.out, "grid", map[string]any{
		"pairs":      results,
		"elapsed_ms": msDur(elapsed),
	}, text)
	for _, r := range results {
		if !r.ok() {
			t.Errorf("%s -> %s: want %s: %s", r.A, r.B, r.Want, r.Err)
		}
	}
	if elapsed > gridLimit {
		t.Errorf("grid took %v, want under %v", elapsed, gridLimit)
	}
}

// gridTable renders results as an aligned text table.
func gridTable(results []gridResult) string {
	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "A\tB\tWANT\tPATH\tB SEES\tUP\tFIRST RT\tTO RELAY\tTO DIRECT\tTO WANT\tRT OK/FAIL\tRESULT")
	for _, r := range results {
		res := "ok"
		if !r.ok() {
			res = "FAIL"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%v\t%v\t%v\t%v\t%v\t%d/%d\t%s\n", r.A, r.B, r.Want, r.Path, r.PeerPath,
			r.UpTime, r.FirstTraffic, r.ToRelay, r.ToDirect, r.ToWant, r.RoundTrips, r.Failures, res)
	}
	tw.Flush()
	return b.String()
}

// gridMatrix renders results as a matrix, A down and B across: the path
// reached and when, or FAIL and the path expected.
func gridMatrix(results []gridResult) string {
	cell := map[[2]string]string{}
	for _, r := range results {
		c := fmt.Sprintf("%s %v", r.Path, r.ToWant)
		if !r.ok() {
			c = "FAIL (want " + r.Want + ")"
		}
		cell[[2]string{r.A, r.B}] = c
	}
	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	fmt.Fprint(tw, "A \\ B")
	for _, k := range gridKinds {
		fmt.Fprintf(tw, "\t%s", kindLabel(k))
	}
	fmt.Fprintln(tw)
	for _, ka := range gridKinds {
		fmt.Fprint(tw, kindLabel(ka))
		for _, kb := range gridKinds {
			c, ok := cell[[2]string{kindLabel(ka), kindLabel(kb)}]
			if !ok {
				c = "-"
			}
			fmt.Fprintf(tw, "\t%s", c)
		}
		fmt.Fprintln(tw)
	}
	tw.Flush()
	return b.String()
}
