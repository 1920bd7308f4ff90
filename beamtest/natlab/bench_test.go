package natlab

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"beam.dev/beam/beamtest/nslab"
)

// timeToDirectRuns is how many fresh joins TestTimeToDirect times.
const timeToDirectRuns = 5

// TestTimeToDirect measures, timeToDirectRuns times with freshly joined
// devices, how long after both are up traffic flows on a direct path, and
// reports the median: across easy NATs (hole punching) and, for
// reference, from behind an easy NAT to a public device.
func TestTimeToDirect(t *testing.T) {
	runVariants(t, []pairVariant{
		{A: nslab.NATEasy, B: nslab.NATNone},
		{A: nslab.NATEasy, B: nslab.NATEasy},
	}, testTimeToDirect)
}

func testTimeToDirect(t *testing.T, v pairVariant) {
	w := newWorld(t, worldConfig{})
	ctx := t.Context()
	var runs []pathRun
	var times []time.Duration
	for i := range timeToDirectRuns {
		a, b := w.addDevice(fmt.Sprintf("a%d", i), v.A), w.addDevice(fmt.Sprintf("b%d", i), v.B)
		if err := upPair(ctx, a, b); err != nil {
			t.Fatal(err)
		}
		r := reachPath(ctx, a, b, pathDirect, time.Now(), 30*time.Second)
		runs = append(runs, r)
		// Stop this pair so the next one measures on a quiet machine.
		a.daemon.Stop()
		b.daemon.Stop()
		if !r.ok() {
			// The next runs would only fail the same way, slowly.
			t.Errorf("run %d: %s", i, r.Err)
			break
		}
		times = append(times, time.Duration(r.ToWant))
	}
	var text strings.Builder
	fmt.Fprintf(&text, "%s: time from both up to traffic on a direct path, %d fresh joins:", v.name(), timeToDirectRuns)
	for _, r := range runs {
		fmt.Fprintf(&text, " %v", r.ToWant)
	}
	med := time.Duration(-1)
	if len(times) > 0 {
		slices.Sort(times)
		med = times[len(times)/2]
	}
	fmt.Fprintf(&text, "; median %v\n", msDur(med))
	t.Log(text.String())
	writeArtefact(t, w.out, "time-to-direct-"+v.name(), map[string]any{"runs": runs, "median_ms": msDur(med)}, text.String())
}
