package natlab

import (
	"fmt"
	"testing"
	"time"

	"beam.dev/beam/beamtest/nslab"
)

// rebindRecovery is how soon traffic must flow again after a NAT forgets
// its mappings.
const rebindRecovery = 10 * time.Second

// TestNATRebinding flushes the conntrack table of alice's NAT (and bob's,
// if bob is behind one) in the middle of a steady flow, as a NAT reboot
// would: the mappings change, and traffic must recover within 10 s, with
// the TCP stream intact.
func TestNATRebinding(t *testing.T) {
	runVariants(t, []pairVariant{
		{A: nslab.NATEasy, B: nslab.NATNone},
		{A: nslab.NATHard, B: nslab.NATNone},
		{A: nslab.NATEasy, B: nslab.NATEasy},
		{A: nslab.NATHard, B: nslab.NATHard}, // over the relay
	}, testNATRebinding)
}

func testNATRebinding(t *testing.T, v pairVariant) {
	w, a, b, start := newPair(t, worldConfig{}, v.A, v.B)
	ctx := t.Context()
	want := expectedPath(v.A, v.B)
	before := mustReach(t, a, b, want, start, 30*time.Second)

	f, err := startFlow(ctx, a, b.name)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.waitEchoes(ctx, 50, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	routers := []*nslab.Router{a.host.Router()}
	if r := b.host.Router(); r != nil {
		routers = append(routers, r)
	}
	bBefore, _, err := b.peer(ctx, a.name)
	if err != nil {
		t.Fatal(err)
	}
	flushedAt := time.Now()
	for _, r := range routers {
		r.FlushConntrack()
	}
	recovered, recErr := f.recoveredAfter(ctx, flushedAt, rebindRecovery)
	if recErr != nil {
		t.Errorf("traffic did not recover after the NAT flush: %v", recErr)
	} else if err := f.waitEchoes(ctx, f.received()+50, 10*time.Second); err != nil {
		// Keep the flow going a little so that a later stall shows.
		t.Errorf("flow after recovery: %v", err)
	}
	res := f.close(15 * time.Second)
	after, err := a.cliPeer(ctx, b.name)
	if err != nil {
		t.Fatal(err)
	}
	bAfter, _, err := b.peer(ctx, a.name)
	if err != nil {
		t.Fatal(err)
	}

	text := fmt.Sprintf("%s: flushed conntrack of %d router(s) mid-flow; first line sent after the flush echoed after %v; "+
		"longest gap %v (ending %v into the flow); %d lines sent, %d echoed; alice's path %s %s -> %s %s; bob's path %s %s -> %s %s\n",
		v.name(), len(routers), recovered.Round(time.Millisecond), res.MaxGap, res.MaxGapAt, res.Sent, res.Received,
		before.Path, before.Endpoint, after.Path, after.Endpoint, bBefore.Path, bBefore.Endpoint, bAfter.Path, bAfter.Endpoint)
	t.Log(text)
	writeArtefact(t, w.out, "rebind-"+v.name(), map[string]any{
		"variant":      v.name(),
		"recovered_ms": msDur(recovered),
		"flow":         res,
		"before":       before,
		"after":        after,
		"peer_before":  bBefore,
		"peer_after":   bAfter,
	}, text)

	if res.Err != "" {
		t.Errorf("flow: %s", res.Err)
	}
	if recovered > rebindRecovery || time.Duration(res.MaxGap) > rebindRecovery {
		t.Errorf("traffic stopped for %v after the NAT flush, want under %v", res.MaxGap, rebindRecovery)
	}
	if !satisfies(after.Path, want) {
		t.Errorf("path after the flush is %q, want %s", after.Path, want)
	}
}
