package natlab

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"beam.dev/beam/beamtest/nslab"
	"beam.dev/beam/localapi/apitype"
)

// peerRelayPort is the UDP port of the relay node's peer relay server.
const peerRelayPort = 41700

// peerRelayFallbackMaxGap bounds the pause of a flow when the peer relay
// node goes away: a second of quiet before DERP carries a copy, then a
// round trip (as switchFallbackMaxGap).
const peerRelayFallbackMaxGap = 3 * time.Second

// newPeerRelayWorld builds a world with a public device "relay" that runs
// a peer relay server, and alice and bob behind hard NATs (no direct path
// between them), all joined and seeing each other.
func newPeerRelayWorld(t testing.TB) (w *world, a, b, r *device, start time.Time) {
	t.Helper()
	w = newWorld(t, worldConfig{})
	r = w.addDeviceWith("relay", nslab.NATNone, nil, fmt.Sprintf("--relay-server=%d", peerRelayPort))
	a, b = w.addDevice("alice", nslab.NATHard), w.addDevice("bob", nslab.NATHard)
	ctx := t.Context()
	if err := r.ready(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r.up(ctx); err != nil {
		t.Fatal(err)
	}
	if err := upPair(ctx, a, b); err != nil {
		t.Fatal(err)
	}
	for _, d := range []*device{a, b} {
		if err := d.waitPeer(ctx, r.name, 15*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	return w, a, b, r, time.Now()
}

// status runs `beam status --json` on d.
func (d *device) status(ctx context.Context) (*apitype.Status, error) {
	out, err := d.beam(ctx, nil, "status", "--json")
	if err != nil {
		return nil, err
	}
	var st apitype.Status
	if err := json.Unmarshal(out, &st); err != nil {
		return nil, fmt.Errorf("%s: beam status --json: %w: %s", d.name, err, out)
	}
	return &st, nil
}

// TestPeerRelayHardHard: two devices behind hard NATs, with a public node
// running a peer relay server (beam daemon --relay-server). Their traffic
// goes through the peer relay, not DERP; beam status and beam ping say so;
// when the relay node goes away, a steady flow falls back to DERP with
// only a short pause.
func TestPeerRelayHardHard(t *testing.T) {
	w, a, b, r, start := newPeerRelayWorld(t)
	ctx := t.Context()
	run := mustReach(t, a, b, pathPeerRelay, start, 30*time.Second)
	// Bob confirms the session a round trip after alice does: the
	// status read just after alice's may come before it.
	if run.PeerPath != pathPeerRelay {
		w := watchPath(ctx, b, a.name, start)
		took, err := w.waitFor(ctx, pathPeerRelay, 5*time.Second)
		w.close()
		if err != nil {
			t.Errorf("bob to alice: %v", err)
		}
		run.PeerPath = fmt.Sprintf("%s, then %s after %v", run.PeerPath, pathPeerRelay, took.Round(time.Millisecond))
	}
	p, err := a.cliPeer(ctx, b.name)
	if err != nil {
		t.Fatal(err)
	}
	if p.Via != r.name || !strings.HasSuffix(p.Endpoint, fmt.Sprintf(":%d", peerRelayPort)) {
		t.Errorf("alice's status of bob: via %q at %q, want via %s at port %d", p.Via, p.Endpoint, r.name, peerRelayPort)
	}
	text, err := a.beam(ctx, nil, "status")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(text), "peer-relay via "+r.name) {
		t.Errorf("beam status shows no %q:\n%s", "peer-relay via "+r.name, text)
	}
	// A ping goes over every relayed path and reports the peer relay's
	// pong if it comes within a grace after the first; on a loaded
	// machine the DERP pong can win a round now and then: a few rounds.
	var ping []byte
	for range 3 {
		if ping, err = a.beam(ctx, nil, "ping", "-c", "1", b.name); err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(ping), "via peer-relay "+r.name) {
			break
		}
	}
	if !strings.Contains(string(ping), "via peer-relay "+r.name) {
		t.Errorf("beam ping, 3 rounds: last %q, want a pong via peer-relay %s", ping, r.name)
	}

	f, err := startFlow(ctx, a, b.name)
	if err != nil {
		t.Fatal(err)
	}
	watch := watchPath(ctx, a, b.name, f.start)
	if err := f.waitEchoes(ctx, 50, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	rst, err := r.status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rst.PeerRelay == nil || rst.PeerRelay.Port != peerRelayPort || rst.PeerRelay.Bound < 1 || rst.PeerRelay.Packets == 0 {
		t.Errorf("relay's peer relay status %+v, want a bound session on port %d that forwarded packets", rst.PeerRelay, peerRelayPort)
	}

	// The relay node goes away.
	gone := time.Now()
	if err := r.daemon.Stop(); err != nil {
		t.Errorf("stop the relay node: %v", err)
	}
	took, werr := watch.waitFor(ctx, pathRelay, 30*time.Second)
	if err := f.waitEchoes(ctx, f.received()+100, 15*time.Second); err != nil {
		t.Error(err)
	}
	gap := f.maxGapBetween(gone, time.Now())
	res := f.close(20 * time.Second)
	events := watch.close()
	summary := fmt.Sprintf("hard-hard with a peer relay: %s after %v (peer sees %s), via %s at %s; relay server %+v; relay node stopped: DERP after %v, flow paused %v; flow %d sent, %d echoed; paths %v\n",
		run.Path, run.ToWant, run.PeerPath, p.Via, p.Endpoint, rst.PeerRelay, took.Round(time.Millisecond), gap.Round(time.Millisecond), res.Sent, res.Received, events)
	t.Log(summary)
	writeArtefact(t, w.out, "peer-relay-hard-hard", map[string]any{"reach": run, "peer": p, "relay_server": rst.PeerRelay, "fallback_ms": msDur(took), "fallback_gap_ms": msDur(gap), "flow": res, "paths": events}, summary)
	if werr != nil {
		t.Errorf("after the relay node went away: %v", werr)
	}
	if gap > peerRelayFallbackMaxGap {
		t.Errorf("flow paused %v when the relay node went away, want at most %v", gap, peerRelayFallbackMaxGap)
	}
	if res.Err != "" {
		t.Errorf("flow: %s", res.Err)
	}
}

// BenchmarkPeerRelayVsRelay measures, in one lab, the throughput between
// two devices behind hard NATs over a peer relay and over the TCP relay
// (DERP), interleaved: three transfers of each, the DERP ones while
// alice's router drops UDP to the relay node. It reports both rates and
// their ratio (medians), and for reference the rate of alice's direct
// path to the relay node (what the devices' CPUs allow on this machine).
// The lossy variant impairs alice's link ("loss 1% delay 10ms"), where
// the relay's TCP carries TCP.
func BenchmarkPeerRelayVsRelay(b *testing.B) {
	for _, v := range []struct{ name, netem string }{{"clean", ""}, {"loss1-delay10ms", "loss 1% delay 10ms"}} {
		b.Run(v.name, func(b *testing.B) { benchPeerRelay(b, v.name, v.netem) })
	}
}

func benchPeerRelay(b *testing.B, name, netem string) {
	size := 32 << 20
	if netem != "" {
		size = 8 << 20
	}
	w, alice, bob, r, start := newPeerRelayWorld(b)
	ctx := b.Context()
	if netem != "" {
		alice.host.Router().SetNetem(netem)
	}
	if run := reachPath(ctx, alice, bob, pathPeerRelay, start, 30*time.Second); !run.ok() {
		b.Fatal(run.Err)
	}
	data := testData(size, 17)
	wait := func(path string) {
		b.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			// Traffic makes the path move; look after a round trip.
			alice.roundTrip(ctx, bob.name, 3*time.Second)
			if p, ok, err := alice.peer(ctx, bob.name); err == nil && ok && p.Path == path {
				return
			}
			if time.Now().After(deadline) {
				b.Fatalf("no %s path after 30 s", path)
			}
		}
	}
	var pr, derp, direct []float64
	for range b.N {
		for range 3 {
			if err := cutUDP(ctx, alice.host.Router(), r.host.PublicAddr(), false); err != nil {
				b.Fatal(err)
			}
			wait(pathPeerRelay)
			took, err := alice.transfer(ctx, bob.name, data, 2*time.Minute)
			if err != nil {
				b.Fatal(err)
			}
			pr = append(pr, float64(size)*8/took.Seconds()/1e6)
			if err := cutUDP(ctx, alice.host.Router(), r.host.PublicAddr(), true); err != nil {
				b.Fatal(err)
			}
			wait(pathRelay)
			took, err = alice.transfer(ctx, bob.name, data, 2*time.Minute)
			if err != nil {
				b.Fatal(err)
			}
			derp = append(derp, float64(size)*8/took.Seconds()/1e6)
		}
		if err := cutUDP(ctx, alice.host.Router(), r.host.PublicAddr(), false); err != nil {
			b.Fatal(err)
		}
		if run := reachPath(ctx, alice, r, pathDirect, time.Now(), 30*time.Second); !run.ok() {
			b.Fatal(run.Err)
		}
		for range 3 {
			took, err := alice.transfer(ctx, r.name, data, 2*time.Minute)
			if err != nil {
				b.Fatal(err)
			}
			direct = append(direct, float64(size)*8/took.Seconds()/1e6)
		}
	}
	median := func(v []float64) float64 {
		s := slices.Clone(v)
		slices.Sort(s)
		return s[len(s)/2]
	}
	mp, md, mdir := median(pr), median(derp), median(direct)
	b.ReportMetric(mp, "peer-relay-Mbit/s")
	b.ReportMetric(md, "derp-Mbit/s")
	b.ReportMetric(mdir, "direct-Mbit/s")
	b.ReportMetric(mp/md, "ratio")
	text := fmt.Sprintf("hard-hard %s, %d MiB transfers: peer relay %.1f Mbit/s %.0f, DERP %.1f Mbit/s %.0f, ratio %.2f; alice to the relay node direct %.1f Mbit/s %.0f\n",
		name, size>>20, mp, pr, md, derp, mp/md, mdir, direct)
	b.Log(text)
	writeArtefact(b, w.out, "peer-relay-throughput-"+name, map[string]any{"netem": netem, "peer_relay_mbit_s": pr, "derp_mbit_s": derp, "direct_mbit_s": direct, "ratio": mp / md}, text)
}

// TestPeerRelayPortMapped: the relay node sits behind a hard NAT whose
// router runs miniupnpd (PCP, NAT-PMP, UPnP). With --port-mapping it maps
// its WireGuard port and its peer relay port, and two devices behind hard
// NATs relay through it at the relay port's mapped address (without the
// mapping, the hard NAT would let no BindRelay in). The mappings are
// renewed before they expire; --relay-server=off deletes the relay port's
// mapping (the WireGuard one stays); stopping the daemon deletes the rest.
func TestPeerRelayPortMapped(t *testing.T) {
	w := newWorld(t, worldConfig{})
	ctx := t.Context()
	var (
		router *nslab.Router
		upnpd  *nslab.Proc
	)
	r := w.addDeviceWith("relay", nslab.NATHard, func(h *nslab.Host) {
		router = h.Router()
		upnpd = router.StartMiniUPnPd(nslab.MiniUPnPdOptions{STUN: netip.AddrPortFrom(w.srv.Addr(), stunPort)})
	}, "--port-mapping", "--port-mapping-lifetime", portMapLifetime.String(), fmt.Sprintf("--relay-server=%d", peerRelayPort))
	a, b := w.addDevice("alice", nslab.NATHard), w.addDevice("bob", nslab.NATHard)
	if err := r.ready(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r.up(ctx); err != nil {
		t.Fatal(err)
	}
	if err := upPair(ctx, a, b); err != nil {
		t.Fatal(err)
	}
	for _, d := range []*device{a, b} {
		if err := d.waitPeer(ctx, r.name, 15*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	// waitMapped waits until the relay's status shows the relay port
	// mapped (the first mapping may come a moment after the daemon is up).
	var rst *apitype.Status
	deadline := time.Now().Add(portMapWithin)
	for {
		var err error
		if rst, err = r.status(ctx); err != nil {
			t.Fatal(err)
		}
		if rst.PeerRelay != nil && rst.PeerRelay.Mapped != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("relay's peer relay port not mapped within %v: %+v", portMapWithin, rst.PeerRelay)
		}
		select {
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
	mapped := rst.PeerRelay.Mapped
	if !strings.HasPrefix(mapped, router.Addr().String()+":") || rst.PeerRelay.MappingProtocol != "PCP" {
		t.Errorf("relay port mapped to %s by %q, want an address of the router %v by PCP", mapped, rst.PeerRelay.MappingProtocol, router.Addr())
	}
	relayRule := func(rules []string) bool {
		for _, rule := range rules {
			if strings.HasSuffix(rule, fmt.Sprintf(":%d", peerRelayPort)) {
				return true
			}
		}
		return false
	}
	if m := router.PortMappings(); len(m) != 2 || !relayRule(m) {
		t.Errorf("router holds %q, want 2 mappings: the WireGuard port and the peer relay port %d", m, peerRelayPort)
	}

	start := time.Now()
	run := mustReach(t, a, b, pathPeerRelay, start, 30*time.Second)
	p, err := a.cliPeer(ctx, b.name)
	if err != nil {
		t.Fatal(err)
	}
	if p.Via != r.name || p.Endpoint != mapped {
		t.Errorf("alice's status of bob: via %q at %q, want via %s at the mapped address %s", p.Via, p.Endpoint, r.name, mapped)
	}
	if err := a.roundTrip(ctx, b.name, 5*time.Second); err != nil {
		t.Errorf("round trip through the mapped peer relay: %v", err)
	}

	// Renewals of both ports: miniupnpd logs each PCP map request
	// ("60bytes"), and each port is asked every half lifetime.
	renewStart := time.Now()
	for {
		n := bytes.Count(upnpd.Stderr(), []byte("60bytes"))
		if n >= 2*portMapRenewals {
			t.Logf("%d map requests seen %v after the path check (lifetime asked %v, two ports)", n, time.Since(renewStart).Round(time.Millisecond), portMapLifetime)
			break
		}
		if time.Since(renewStart) > portMapRenewWithin {
			t.Fatalf("router saw %d map requests in %v, want %d (two ports, renewals every %v)", n, portMapRenewWithin, 2*portMapRenewals, portMapLifetime/2)
		}
		select {
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
	if err := a.roundTrip(ctx, b.name, 5*time.Second); err != nil {
		t.Errorf("round trip after renewals: %v", err)
	}
	t.Logf("hard-hard through a port-mapped peer relay: %s after %v (peer sees %s), via %s at %s; mappings %q",
		run.Path, run.ToWant, run.PeerPath, p.Via, p.Endpoint, router.PortMappings())

	// --relay-server=off: the relay port's mapping goes; the WireGuard
	// port is mapped again by the restarted engine.
	if _, err := r.beam(ctx, nil, "set", "--relay-server=off"); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(portMapWithin)
	for {
		m := router.PortMappings()
		if len(m) == 1 && !relayRule(m) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after --relay-server=off the router holds %q, want only the WireGuard port's mapping", m)
		}
		select {
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
	// Stopping the daemon deletes the rest.
	if err := r.daemon.Stop(); err != nil {
		t.Errorf("stop the relay node: %v", err)
	}
	if m := router.PortMappings(); len(m) != 0 {
		t.Errorf("after the daemon stopped the router still holds %q", m)
	}
	select {
	case <-upnpd.Done():
		t.Errorf("miniupnpd exited: %s", upnpd.Stderr())
	default:
	}
}
