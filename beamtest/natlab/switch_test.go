package natlab

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"beam.dev/beam/beamtest/nslab"
)

const (
	// switchUpgradeMaxGap is the longest pause a flow may show while its
	// path upgrades from relay to direct. An upgrade should not pause the
	// flow at all: measured 29-106 ms (the flow's own 20 ms spacing plus
	// scheduling) in 6 upgrades; the bound is ten times that.
	switchUpgradeMaxGap = time.Second
	// switchFallbackMaxGap is the longest pause a flow may show when its
	// direct path dies and traffic falls back to the relay: a second of
	// quiet before the relay carries a copy, then a round trip. Measured
	// 1.42-1.43 s in 3 runs; the bound leaves 1.5 s for a loaded machine.
	switchFallbackMaxGap = 3 * time.Second
	// switchLimit bounds each path change.
	switchLimit = 30 * time.Second
)

// switchPhase is one step of TestPathSwitchZeroLoss.
type switchPhase struct {
	Name   string `json:"name"`
	At     msDur  `json:"at_ms"`      // since the flow started
	Took   msDur  `json:"took_ms"`    // until status showed the new path
	MaxGap msDur  `json:"max_gap_ms"` // longest pause of the flow in the phase
	Err    string `json:"error,omitempty"`
}

// TestPathSwitchZeroLoss keeps a steady flow of numbered lines (50 a
// second, echoed back over TCP) going between two devices behind easy NATs
// while the path changes under it: UDP between the NATs starts cut (the
// relay carries the flow), is let through (the path must upgrade to
// direct), is cut again (traffic must fall back to the relay) and let
// through again. The relay's STUN and the relay itself stay reachable
// throughout. Every line must come back once and in order, with no pause
// longer than 1 s during an upgrade or 3 s after a cut.
func TestPathSwitchZeroLoss(t *testing.T) {
	w := newWorld(t, worldConfig{})
	ctx := t.Context()
	a, b := w.addDevice("alice", nslab.NATEasy), w.addDevice("bob", nslab.NATEasy)
	ra, peer := a.host.Router(), b.host.PublicAddr()
	if err := cutUDP(ctx, ra, peer, true); err != nil {
		t.Fatal(err)
	}
	if err := upPair(ctx, a, b); err != nil {
		t.Fatal(err)
	}
	mustReach(t, a, b, pathRelay, time.Now(), switchLimit)

	f, err := startFlow(ctx, a, b.name)
	if err != nil {
		t.Fatal(err)
	}
	watch := watchPath(ctx, a, b.name, f.start)
	if err := f.waitEchoes(ctx, 50, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	var phases []switchPhase
	step := func(name string, cut bool, want string, maxGap time.Duration) {
		at := time.Now()
		ph := switchPhase{Name: name, At: msDur(at.Sub(f.start)), Took: -1}
		if err := cutUDP(ctx, ra, peer, cut); err != nil {
			t.Fatal(err)
		}
		took, err := watch.waitFor(ctx, want, switchLimit)
		if err != nil {
			ph.Err = err.Error()
		} else {
			ph.Took = msDur(took)
		}
		// Two more seconds of flow on the new path.
		if err := f.waitEchoes(ctx, f.received()+100, 10*time.Second); err != nil {
			ph.Err = strings.TrimSpace(ph.Err + "; " + err.Error())
		}
		ph.MaxGap = msDur(f.maxGapBetween(at, time.Now()))
		if ph.Err == "" && time.Duration(ph.MaxGap) > maxGap {
			ph.Err = fmt.Sprintf("flow paused %v, want at most %v", ph.MaxGap, maxGap)
		}
		phases = append(phases, ph)
	}
	step("upgrade to direct", false, pathDirect, switchUpgradeMaxGap)
	step("cut: fall back to relay", true, pathRelay, switchFallbackMaxGap)
	step("upgrade to direct again", false, pathDirect, switchUpgradeMaxGap)
	res := f.close(20 * time.Second)
	events := watch.close()

	var text strings.Builder
	for _, ph := range phases {
		fmt.Fprintf(&text, "%-26s at %8v: new path after %v, longest pause %v %s\n", ph.Name, ph.At, ph.Took, ph.MaxGap, ph.Err)
	}
	fmt.Fprintf(&text, "flow: %d lines sent, %d echoed, longest pause %v (ending %v in); pauses over %v: %v\n",
		res.Sent, res.Received, res.MaxGap, res.MaxGapAt, gapReport, res.Gaps)
	fmt.Fprintf(&text, "path changes seen by alice: %v\n", events)
	t.Log(text.String())
	writeArtefact(t, w.out, "path-switch", map[string]any{"phases": phases, "flow": res, "paths": events}, text.String())
	for _, ph := range phases {
		if ph.Err != "" {
			t.Errorf("%s: %s", ph.Name, ph.Err)
		}
	}
	if res.Err != "" {
		t.Errorf("flow: %s", res.Err)
	}
}
