package coordinator

import (
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// TestPendingPerSource fills the approval queue from few and from many
// source addresses: one source never holds more than its bound, a full
// queue makes room from the source holding the most, and approved
// registrations are never dropped.
func TestPendingPerSource(t *testing.T) {
	t0 := time.Unix(1_000_000, 0)
	clock := t0
	s := &Server{logger: slog.New(slog.DiscardHandler), now: func() time.Time { return clock }}
	rg := newRegistry(s, Options{})
	pr := &rg.pending
	add := func(src netip.Addr) *pendingReg {
		t.Helper()
		clock = clock.Add(time.Millisecond)
		p, aerr := rg.addPending(t.Context(), &wire.RegisterRequest{NodeKey: key.NewNode().Public(), Hostname: "h"}, src)
		if aerr != nil {
			t.Fatalf("addPending from %v: %v", src, aerr)
		}
		return p
	}
	flooder := netip.MustParseAddr("198.51.100.1")
	first := add(flooder)
	close(first.done) // approved: kept whatever happens
	for range 100 {
		add(flooder)
	}
	if got := pr.bySource[flooder]; got != maxPendingPerSource {
		t.Fatalf("one source holds %d, want %d", got, maxPendingPerSource)
	}
	if pr.byCode[first.Code] != first {
		t.Fatal("an approved registration was dropped to make room")
	}
	// The same /64 is one source.
	v6 := func(i int) netip.Addr { return netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: byte(i)}) }
	for i := range 20 {
		add(v6(i))
	}
	if got := pr.bySource[sourceKey(v6(0))]; got != maxPendingPerSource {
		t.Fatalf("one /64 holds %d, want %d", got, maxPendingPerSource)
	}

	// Many sources fill the queue; a person's registration gets in, and
	// a refill does not push it out.
	many := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{203, 0, byte(113 + i/250), byte(i % 250)}) }
	for i := range 2 * maxPending {
		add(many(i % 300))
	}
	if len(pr.byCode) != maxPending {
		t.Fatalf("%d registrations wait, want the queue's %d", len(pr.byCode), maxPending)
	}
	person := add(netip.MustParseAddr("192.0.2.7"))
	for i := range 2 * maxPending {
		add(many(i % 300))
	}
	if pr.byCode[person.Code] != person {
		t.Fatal("a flood from many sources pushed out a person's registration")
	}
	if len(pr.byCode) != maxPending {
		t.Fatalf("%d registrations wait, want the queue's %d", len(pr.byCode), maxPending)
	}
	total := 0
	for _, n := range pr.bySource {
		total += n
	}
	if total != len(pr.byCode) {
		t.Fatalf("per-source counts sum to %d, %d registrations wait", total, len(pr.byCode))
	}
}
