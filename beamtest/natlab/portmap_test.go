package natlab

import (
	"bytes"
	"context"
	"encoding/json"
	"net/netip"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"beam.dev/beam/beamtest/nslab"
	"beam.dev/beam/localapi/apitype"
)

const (
	// portMapLifetime is the mapping lifetime the mapped device asks
	// for: short, so the test sees renewals (every half of it).
	portMapLifetime = 4 * time.Second
	// portMapWithin bounds the wait for the direct path.
	portMapWithin = 15 * time.Second
	// portMapRenewals is how many map requests (the first and renewals)
	// the router must see, and portMapRenewWithin how soon.
	portMapRenewals    = 3
	portMapRenewWithin = 20 * time.Second
	// portMapSlowGateway is how long the gateway is held while netcheck
	// probes it: past one LAN exchange's old 500 ms bound, within the
	// probe's.
	portMapSlowGateway = 800 * time.Millisecond
)

var mappedRE = regexp.MustCompile(`external=(\S+)`)

// TestPortMapHardHard joins two devices behind hard NATs (a random public
// port for each destination), which only reach each other through the
// relay on their own (TestGrid). The router of one runs miniupnpd (UPnP
// IGD, NAT-PMP and PCP; or UPnP alone) and its daemon runs with
// --port-mapping: it maps
// its WireGuard port, advertises the mapped address, and the pair goes
// direct. The mapping is renewed before it expires, beam netcheck names
// the protocols the gateway offers, and the mapping is gone from the
// router once the daemon has stopped.
func TestPortMapHardHard(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts nslab.MiniUPnPdOptions
		// proto is the protocol the mapping must use, offers what
		// netcheck must list, and request a log line of miniupnpd's
		// that marks each map request of that protocol.
		proto, offers, request string
	}{
		{"PCP", nslab.MiniUPnPdOptions{}, "PCP", "PCP, NAT-PMP, UPnP", "60bytes"},
		{"UPnP", nslab.MiniUPnPdOptions{UPnPOnly: true}, "UPnP", "UPnP", "AddPortMapping: ext port"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testPortMapHardHard(t, tc.opts, tc.proto, tc.offers, tc.request)
		})
	}
}

func testPortMapHardHard(t *testing.T, opts nslab.MiniUPnPdOptions, proto, offers, request string) {
	w := newWorld(t, worldConfig{})
	ctx := t.Context()
	var (
		router *nslab.Router
		upnpd  *nslab.Proc
	)
	a := w.addDeviceWith("mapped", nslab.NATHard, func(h *nslab.Host) {
		router = h.Router()
		opts.STUN = netip.AddrPortFrom(w.srv.Addr(), stunPort)
		upnpd = router.StartMiniUPnPd(opts)
	}, "--port-mapping", "--port-mapping-lifetime", portMapLifetime.String())
	b := w.addDevice("hard", nslab.NATHard)
	if err := upPair(ctx, a, b); err != nil {
		t.Fatal(err)
	}
	r := reachPath(ctx, a, b, pathDirect, time.Now(), portMapWithin)
	t.Logf("hard/hard with a port mapping on one side: path %s (peer sees %s) after %v; %s", r.Path, r.PeerPath, r.ToWant, r.Err)
	if !r.ok() {
		t.Errorf("hard/hard with a port mapping: want a direct path within %v: %s", portMapWithin, r.Err)
	}

	// The daemon logged the mapping it advertises; the router holds it.
	line, err := a.daemon.WaitOutput(ctx, `msg="port mapping"`)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("daemon: %s", line)
	mapped := ""
	if m := mappedRE.FindStringSubmatch(line); m != nil {
		mapped = m[1]
	}
	// The peer's direct path is the mapped address.
	if p, ok, err := b.peer(ctx, a.name); err != nil || !ok || p.Endpoint != mapped {
		t.Errorf("%s sees %s at %q (%v, %v), want the mapped address %q", b.name, a.name, p.Endpoint, ok, err, mapped)
	}
	if m := router.PortMappings(); len(m) != 1 {
		t.Errorf("router holds %d port mappings, want 1: %q", len(m), m)
	}

	// Renewals: miniupnpd logs each map request.
	start := time.Now()
	for {
		n := bytes.Count(upnpd.Stderr(), []byte(request))
		if n >= portMapRenewals {
			t.Logf("%d map requests seen %v after the path check (lifetime asked %v)", n, time.Since(start).Round(time.Millisecond), portMapLifetime)
			break
		}
		if time.Since(start) > portMapRenewWithin {
			t.Fatalf("router saw %d map requests in %v, want %d (renewals every %v)", n, portMapRenewWithin, portMapRenewals, portMapLifetime/2)
		}
		select {
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}

	// beam netcheck names what the gateway offers, even when the gateway
	// is slower than a LAN round trip: miniupnpd is held for
	// portMapSlowGateway while the probe waits (a busy router, or a host
	// as loaded as CI's).
	nctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	resumed := holdProc(t, upnpd, portMapSlowGateway)
	out, err := a.beam(nctx, nil, "netcheck", "--json")
	<-resumed
	if err != nil {
		t.Fatal(err)
	}
	var rep apitype.NetcheckReport
	if err := json.Unmarshal(out, &rep); err != nil {
		t.Fatalf("beam netcheck --json: %v: %s", err, out)
	}
	if rep.PortMapping == nil {
		t.Fatalf("beam netcheck --json has no port_mapping: %s", out)
	}
	pm := rep.PortMapping
	if got := strings.Join(pm.Protocols, ", "); got != offers {
		t.Errorf("netcheck protocols = %q, want %q", got, offers)
	}
	if pm.Gateway != router.LANAddr().String() || pm.Protocol != proto || !strings.HasPrefix(pm.Mapped, router.Addr().String()+":") {
		t.Errorf("netcheck port mapping = %+v, want gateway %v and a %s mapping on %v", pm, router.LANAddr(), proto, router.Addr())
	}
	text, err := a.beam(nctx, nil, "netcheck")
	if err != nil {
		t.Fatal(err)
	}
	if want := "PortMapping: " + offers + " (gateway"; !strings.Contains(string(text), want) {
		t.Errorf("beam netcheck lacks %q:\n%s", want, text)
	}
	t.Logf("beam netcheck:\n%s", text)

	// Stopping the daemon deletes the mapping (miniupnpd keeps running).
	if err := a.daemon.Stop(); err != nil {
		t.Errorf("stop daemon: %v", err)
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

// holdProc stops p (SIGSTOP) and lets it go on (SIGCONT) after d; the
// returned channel closes once it has. The test's end resumes it too.
func holdProc(t *testing.T, p *nslab.Proc, d time.Duration) <-chan struct{} {
	t.Helper()
	if err := syscall.Kill(p.PID(), syscall.SIGSTOP); err != nil {
		t.Fatalf("stop pid %d: %v", p.PID(), err)
	}
	resume := func() { syscall.Kill(p.PID(), syscall.SIGCONT) }
	t.Cleanup(resume)
	done := make(chan struct{})
	go func() {
		defer close(done)
		<-time.After(d)
		resume()
	}()
	return done
}
