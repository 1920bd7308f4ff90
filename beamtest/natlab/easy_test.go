package natlab

import (
	"fmt"
	"testing"
	"time"

	"beam.dev/beam/beamtest/nslab"
)

const (
	// easyDirectWithin is how soon after both are up two devices behind
	// easy NATs must have a direct path.
	easyDirectWithin = 5 * time.Second
	// easyTransfer is how much the relay-bypass check moves.
	easyTransfer = 2 << 20
	// easyRelayAllowance is how many bytes the relay may carry during that
	// transfer (disco and keepalives, not the data).
	easyRelayAllowance = 64 << 10
)

// TestEasyEasyDirect joins two devices behind easy NATs: they must reach a
// direct path within 5 s of both being up, and then a 2 MiB transfer must
// leave the relay's byte counter almost where it was, while both NATs
// forward it as UDP.
func TestEasyEasyDirect(t *testing.T) {
	w, a, b, start := newPair(t, worldConfig{}, nslab.NATEasy, nslab.NATEasy)
	ctx := t.Context()
	run := mustReach(t, a, b, pathDirect, start, 30*time.Second)
	if time.Duration(run.ToWant) > easyDirectWithin {
		t.Errorf("direct path after %v, want within %v of both being up", run.ToWant, easyDirectWithin)
	}

	r := w.relays[0]
	before, err := r.stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ra, rb := a.host.Router(), b.host.Router()
	ca, cb := ra.Counters(), rb.Counters()
	took, err := a.transfer(ctx, b.name, testData(easyTransfer, 2), 60*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	after, err := r.stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ca2, cb2 := ra.Counters(), rb.Counters()
	relayed := after.BytesRelayed - before.BytesRelayed
	udpA, udpB := ca2.UDPOut-ca.UDPOut, cb2.UDPOut-cb.UDPOut
	text := fmt.Sprintf("easy-easy: direct after %v (first round trip %v, relay %v); %d KiB in %v; relay carried %d bytes (%d packets) meanwhile; UDP packets out: alice's NAT %d, bob's NAT %d\n",
		run.ToWant, run.FirstTraffic, run.ToRelay, easyTransfer>>10, took.Round(time.Millisecond),
		relayed, after.PacketsRelayed-before.PacketsRelayed, udpA, udpB)
	t.Log(text)
	writeArtefact(t, w.out, "easy-easy", map[string]any{
		"path": run, "transfer_bytes": easyTransfer, "transfer_ms": msDur(took),
		"relay_before": before, "relay_after": after, "udp_out_alice": udpA, "udp_out_bob": udpB,
	}, text)
	if relayed > easyRelayAllowance {
		t.Errorf("the relay carried %d bytes during a %d-byte direct transfer, want at most %d", relayed, easyTransfer, easyRelayAllowance)
	}
	// The transfer went as UDP through both NATs. The engine sends with
	// UDP segmentation offload, so netfilter counts a burst of up to 64
	// datagrams as one packet: expect at least 1/64 of the ~1500 data
	// datagrams, and some acknowledgements back.
	if udpA < easyTransfer/1500/64 || udpB < 10 {
		t.Errorf("UDP packets out during the transfer: alice's NAT %d, bob's NAT %d; want the transfer's packets", udpA, udpB)
	}
}
