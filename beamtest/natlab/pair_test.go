package natlab

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"beam.dev/beam/beamtest/nslab"
)

// pairVariant is a pair of NAT kinds a test runs on.
type pairVariant struct {
	A, B nslab.NATKind
}

func (v pairVariant) name() string { return kindLabel(v.A) + "-" + kindLabel(v.B) }

// runVariants runs fn as a subtest per variant (each builds its own lab).
func runVariants(t *testing.T, variants []pairVariant, fn func(t *testing.T, v pairVariant)) {
	t.Helper()
	for _, v := range variants {
		t.Run(v.name(), func(t *testing.T) { fn(t, v) })
	}
}

// newPair builds a world with devices alice (kind ka) and bob (kind kb),
// joins both, and returns when they see each other, with the time they
// were both up.
func newPair(t *testing.T, cfg worldConfig, ka, kb nslab.NATKind) (*world, *device, *device, time.Time) {
	t.Helper()
	w := newWorld(t, cfg)
	a, b := w.addDevice("alice", ka), w.addDevice("bob", kb)
	if err := upPair(t.Context(), a, b); err != nil {
		t.Fatal(err)
	}
	return w, a, b, time.Now()
}

// mustReach runs reachPath and fails the test unless the pair reached want.
func mustReach(t *testing.T, a, b *device, want string, start time.Time, limit time.Duration) pathRun {
	t.Helper()
	r := reachPath(t.Context(), a, b, want, start, limit)
	t.Logf("%s -> %s: path %s (peer sees %s) endpoint %s; first round trip %v, relay %v, direct %v, %s reached %v",
		a.name, b.name, r.Path, r.PeerPath, r.Endpoint, r.FirstTraffic, r.ToRelay, r.ToDirect, want, r.ToWant)
	if !r.ok() {
		t.Fatalf("%s -> %s: %s", a.name, b.name, r.Err)
	}
	return r
}

// nft runs an nftables script in the router's namespace. It is
// goroutine-safe.
func nft(ctx context.Context, r *nslab.Router, script string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cmd := r.Command(ctx, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("nft in %s: %w: %s", r.Name(), err, out)
	}
	return nil
}

// cutUDP makes router r drop (cut) or pass again (!cut) UDP between its
// LAN and the address peer, in both directions, using the router's
// "block" chain, which it flushes first. UDP to everyone else (the relay's
// STUN) still flows; TCP (the relay path) is untouched.
func cutUDP(ctx context.Context, r *nslab.Router, peer netip.Addr, cut bool) error {
	script := "flush chain ip nslab block\n"
	if cut {
		script += fmt.Sprintf("add rule ip nslab block ip daddr %s meta l4proto udp drop\nadd rule ip nslab block ip saddr %s meta l4proto udp drop\n", peer, peer)
	}
	return nft(ctx, r, script)
}
