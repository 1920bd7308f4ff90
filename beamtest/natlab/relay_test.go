package natlab

import (
	"fmt"
	"testing"
	"time"

	"beam.dev/beam/beamtest/nslab"
)

// relayKillMaxGap is the longest pause a steady flow on a direct path may
// show when the relay dies.
const relayKillMaxGap = time.Second

// TestRelayKilledDirectUnaffected stops the relay while a direct path
// carries a steady flow: the flow must not notice.
func TestRelayKilledDirectUnaffected(t *testing.T) {
	runVariants(t, []pairVariant{
		{A: nslab.NATEasy, B: nslab.NATNone},
		{A: nslab.NATEasy, B: nslab.NATEasy},
	}, testRelayKilled)
}

func testRelayKilled(t *testing.T, v pairVariant) {
	w, a, b, start := newPair(t, worldConfig{}, v.A, v.B)
	ctx := t.Context()
	mustReach(t, a, b, pathDirect, start, 30*time.Second)

	f, err := startFlow(ctx, a, b.name)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.waitEchoes(ctx, 50, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	before, err := w.relays[0].stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	killedAt := time.Now()
	if err := w.relays[0].proc.Stop(); err != nil {
		t.Errorf("stop relay: %v", err)
	}
	stopTook := time.Since(killedAt)
	// Three seconds of flow after the relay is gone.
	if err := f.waitEchoes(ctx, f.received()+150, 10*time.Second); err != nil {
		t.Error(err)
	}
	res := f.close(15 * time.Second)
	after, err := a.cliPeer(ctx, b.name)
	if err != nil {
		t.Fatal(err)
	}

	text := fmt.Sprintf("%s: relay (%d clients, %d bytes relayed) stopped in %v mid-flow; longest gap %v (ending %v into the flow); %d lines sent, %d echoed; path afterwards %s %s\n",
		v.name(), before.Clients, before.BytesRelayed, stopTook.Round(time.Millisecond), res.MaxGap, res.MaxGapAt,
		res.Sent, res.Received, after.Path, after.Endpoint)
	t.Log(text)
	writeArtefact(t, w.out, "relay-killed-"+v.name(), map[string]any{
		"variant":      v.name(),
		"relay_before": before,
		"flow":         res,
		"after":        after,
	}, text)
	if res.Err != "" {
		t.Errorf("flow: %s", res.Err)
	}
	if time.Duration(res.MaxGap) > relayKillMaxGap {
		t.Errorf("flow paused %v when the relay died, want under %v", res.MaxGap, relayKillMaxGap)
	}
	if after.Path != pathDirect {
		t.Errorf("path after the relay died is %q, want direct", after.Path)
	}
}
