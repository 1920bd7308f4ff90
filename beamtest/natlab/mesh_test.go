package natlab

import (
	"fmt"
	"testing"
	"time"

	"beam.dev/beam/beamtest/nslab"
)

// TestRelayMesh puts alice and bob behind hard NATs (no direct path) with
// two meshed relays in one region, and lets each reach only one of them
// (each router refuses TCP to the other relay): alice is homed on relay 1,
// bob on relay 2, and their traffic crosses the mesh.
func TestRelayMesh(t *testing.T) {
	w := newWorld(t, worldConfig{meshed: true})
	ctx := t.Context()
	a, b := w.addDevice("alice", nslab.NATHard), w.addDevice("bob", nslab.NATHard)
	r1, r2 := w.relays[0], w.relays[1]
	refuse := func(r *nslab.Router, relay *relay) {
		t.Helper()
		script := fmt.Sprintf("add rule ip nslab block ip daddr %s tcp dport %d reject with tcp reset\n", relay.host.Addr(), relayPort)
		if err := nft(ctx, r, script); err != nil {
			t.Fatal(err)
		}
	}
	refuse(a.host.Router(), r2)
	refuse(b.host.Router(), r1)
	if err := upPair(ctx, a, b); err != nil {
		t.Fatal(err)
	}
	run := mustReach(t, a, b, pathRelay, time.Now(), 30*time.Second)

	s1, err := r1.stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s2, err := r2.stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	data := testData(1<<20, 5)
	took, err := a.transfer(ctx, b.name, data, 60*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	e1, err := r1.stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	e2, err := r2.stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	text := fmt.Sprintf("hard-hard over a relay mesh: path %s after %v; 1 MiB in %v; relay 1: %d clients (%d mesh), forwarded %d packets, relayed %d bytes; relay 2: %d clients (%d mesh), forwarded %d packets, relayed %d bytes (during the transfer)\n",
		run.Path, run.ToWant, took.Round(time.Millisecond),
		e1.Clients, e1.MeshClients, e1.PacketsForwarded-s1.PacketsForwarded, e1.BytesRelayed-s1.BytesRelayed,
		e2.Clients, e2.MeshClients, e2.PacketsForwarded-s2.PacketsForwarded, e2.BytesRelayed-s2.BytesRelayed)
	t.Log(text)
	writeArtefact(t, w.out, "relay-mesh", map[string]any{
		"path": run, "transfer_ms": msDur(took),
		"relay1_before": s1, "relay1_after": e1, "relay2_before": s2, "relay2_after": e2,
	}, text)
	if run.Path != pathRelay {
		t.Errorf("path %q, want relay", run.Path)
	}
	// Each relay has its own device plus the other relay as clients, and
	// forwards its device's packets over the mesh.
	for i, s := range []relayStats{e1, e2} {
		if s.Clients-s.MeshClients < 1 || s.MeshClients < 1 {
			t.Errorf("relay %d: %d clients of which %d mesh; want its device and a mesh peer", i+1, s.Clients, s.MeshClients)
		}
	}
	if d := e1.PacketsForwarded - s1.PacketsForwarded; d < 100 {
		t.Errorf("relay 1 forwarded %d packets over the mesh during a 1 MiB transfer, want alice's packets", d)
	}
	if d := e2.PacketsForwarded - s2.PacketsForwarded; d < 10 {
		t.Errorf("relay 2 forwarded %d packets over the mesh during a 1 MiB transfer, want bob's acknowledgements", d)
	}
}
