package netstack

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"beam.dev/beam/derp/derpserver"
)

// stunServer runs derpserver.ServeSTUN on a loopback UDP socket until the
// test ends and returns its address.
func stunServer(t testing.TB) netip.AddrPort {
	t.Helper()
	return stunServerOn(t, "udp4", "127.0.0.1:0")
}

// stunServerOn is stunServer on the given network and address.
func stunServerOn(t testing.TB, network, addr string) netip.AddrPort {
	t.Helper()
	return stunServerDelayed(t, network, addr, 0)
}

// stunServerDelayed is stunServerOn whose answers leave delay after the
// request came in, as from a far-away server.
func stunServerDelayed(t testing.TB, network, addr string, delay time.Duration) netip.AddrPort {
	t.Helper()
	pc, err := net.ListenPacket(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	if delay > 0 {
		pc = &delayedWriter{PacketConn: pc, delay: delay}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- derpserver.ServeSTUN(ctx, pc, nil) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("ServeSTUN: %v", err)
		}
		pc.Close()
	})
	return pc.LocalAddr().(*net.UDPAddr).AddrPort()
}

// delayedWriter sends each datagram delay after WriteTo is called.
type delayedWriter struct {
	net.PacketConn
	delay time.Duration
}

func (d *delayedWriter) WriteTo(b []byte, addr net.Addr) (int, error) {
	b = slices.Clone(b)
	time.AfterFunc(d.delay, func() { d.PacketConn.WriteTo(b, addr) })
	return len(b), nil
}

// TestSTUNDiscovery puts a STUN server behind a NAT-like proxy: the
// engine's endpoints must then include the proxy's outside address (what
// the STUN server saw), reported through OnEndpoints too.
func TestSTUNDiscovery(t *testing.T) {
	stun := stunServer(t)
	nat := newNATProxy(t, stun)
	type report struct {
		eps  []netip.AddrPort
		home int
	}
	reports := make(chan report, 16)
	nodes := newNodes(t, 1, func(_ int, o *Options) {
		o.OnEndpoints = func(eps []netip.AddrPort, home int) {
			select {
			case reports <- report{eps, home}:
			default:
			}
		}
	})
	n := nodes[0]
	cfg := n.cfg
	cfg.DERPMap = map[int]DERPRegion{3: {STUNAddrs: []string{nat.frontAddr().String()}}}
	if err := n.e.Reconfig(cfg); err != nil {
		t.Fatal(err)
	}
	want := nat.outsideAddr()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	for {
		select {
		case r := <-reports:
			if !slices.Contains(r.eps, want) {
				continue
			}
			if r.eps[0] != want {
				t.Errorf("endpoints %v: want the STUN mapping %v first", r.eps, want)
			}
			if r.home != 0 {
				t.Errorf("home region %d, want 0 (the region has no relay)", r.home)
			}
			if got := n.e.Endpoints(); !slices.Contains(got, want) {
				t.Errorf("Endpoints() = %v, want it to contain %v", got, want)
			}
			for _, l := range n.e.LocalEndpoints() {
				if !slices.Contains(r.eps, l) {
					t.Errorf("endpoints %v lack local endpoint %v", r.eps, l)
				}
			}
			return
		case <-ctx.Done():
			t.Fatalf("no endpoints report with the STUN mapping %v; Endpoints() = %v", want, n.e.Endpoints())
		}
	}
}

// TestNetcheck asks two STUN servers in two regions. Directly, both see
// the same mapping; with the second behind a NAT-like proxy, the mappings
// differ, as behind a hard NAT. The first region's server answers
// slowDelay late, so the second, lower latency, is the preferred relay
// (not the first by number).
func TestNetcheck(t *testing.T) {
	const slowDelay = 100 * time.Millisecond
	s1, s2 := stunServerDelayed(t, "udp4", "127.0.0.1:0", slowDelay), stunServer(t)
	nat := newNATProxy(t, s2)
	nodes := newNodes(t, 1, nil)
	n := nodes[0]
	local := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), n.e.LocalPort())

	if _, err := n.e.Netcheck(t.Context()); err == nil {
		t.Error("Netcheck without STUN servers: nil error")
	}
	for _, tc := range []struct {
		name   string
		second netip.AddrPort
		varies bool
	}{
		{"easy", s2, false},
		{"hard", nat.frontAddr(), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := n.cfg
			cfg.DERPMap = map[int]DERPRegion{
				1: {URLs: []string{"http://127.0.0.1:1/derp"}, STUNAddrs: []string{s1.String()}},
				2: {URLs: []string{"http://127.0.0.1:1/derp"}, STUNAddrs: []string{tc.second.String()}},
			}
			if err := n.e.Reconfig(cfg); err != nil {
				t.Fatal(err)
			}
			rep, err := n.e.Netcheck(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			if !rep.UDP || rep.GlobalV4 != local {
				t.Errorf("UDP %v, GlobalV4 %v; want true, %v", rep.UDP, rep.GlobalV4, local)
			}
			if rep.MappingVariesByDestIP == nil || *rep.MappingVariesByDestIP != tc.varies {
				t.Errorf("MappingVariesByDestIP = %v, want %v", rep.MappingVariesByDestIP, tc.varies)
			}
			if len(rep.RegionLatency) != 2 || rep.RegionLatency[1] < slowDelay || rep.RegionLatency[2] <= 0 {
				t.Errorf("RegionLatency = %v, want both regions, region 1 at least %v", rep.RegionLatency, slowDelay)
			}
			if rep.PreferredDERP != 2 {
				t.Errorf("PreferredDERP = %d, want 2 (latencies %v)", rep.PreferredDERP, rep.RegionLatency)
			}
		})
	}
}

// TestNetcheckIPv6 asks a STUN server on the IPv6 loopback: the answer
// comes back to the bind's IPv6 socket and is the node's GlobalV6, and an
// IPv6 answer alone says nothing of IPv4.
func TestNetcheckIPv6(t *testing.T) {
	s6 := stunServerOn(t, "udp6", "[::1]:0")
	nodes := newNodes(t, 1, nil)
	n := nodes[0]
	cfg := n.cfg
	cfg.DERPMap = map[int]DERPRegion{4: {STUNAddrs: []string{s6.String()}}}
	if err := n.e.Reconfig(cfg); err != nil {
		t.Fatal(err)
	}
	rep, err := n.e.Netcheck(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	want := netip.AddrPortFrom(netip.IPv6Loopback(), n.e.LocalPort())
	if !rep.UDP || rep.GlobalV6 != want {
		t.Errorf("UDP %v, GlobalV6 %v; want true, %v", rep.UDP, rep.GlobalV6, want)
	}
	if rep.GlobalV4.IsValid() || rep.MappingVariesByDestIP != nil {
		t.Errorf("GlobalV4 %v, MappingVariesByDestIP %v; want both unknown", rep.GlobalV4, rep.MappingVariesByDestIP)
	}
	if rep.RegionLatency[4] <= 0 {
		t.Errorf("RegionLatency = %v, want region 4", rep.RegionLatency)
	}
}

func TestChooseHome(t *testing.T) {
	ms := time.Millisecond
	urls := map[int]bool{1: true, 2: true, 3: true}
	for _, tc := range []struct {
		name      string
		cur, hint int
		lat       map[int]time.Duration
		want      int
	}{
		{"nothing measured: hint", 0, 2, nil, 2},
		{"nothing measured: keep", 3, 2, nil, 3},
		{"nothing measured, no hint: lowest", 0, 0, nil, 1},
		{"first choice: fastest", 0, 0, map[int]time.Duration{1: 50 * ms, 2: 20 * ms}, 2},
		{"clearly better: switch", 1, 1, map[int]time.Duration{1: 50 * ms, 2: 20 * ms}, 2},
		{"not 30% better: stay", 1, 1, map[int]time.Duration{1: 50 * ms, 2: 40 * ms}, 1},
		{"30% better but under 10ms: stay", 1, 1, map[int]time.Duration{1: 12 * ms, 2: 3 * ms}, 1},
		{"current silent: fastest", 1, 1, map[int]time.Duration{2: 80 * ms, 3: 60 * ms}, 3},
		{"region without relay ignored", 1, 1, map[int]time.Duration{1: 80 * ms, 9: 1 * ms}, 1},
		{"current left the map", 7, 0, map[int]time.Duration{2: 5 * ms}, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := chooseHome(tc.cur, tc.hint, tc.lat, urls); got != tc.want {
				t.Errorf("chooseHome(%d, %d, %v) = %d, want %d", tc.cur, tc.hint, tc.lat, got, tc.want)
			}
		})
	}
}

// TestHardNAT: the NAT is hard when two STUN servers saw different
// IPv4 mappings, and unknown (not hard) with fewer than two servers.
func TestHardNAT(t *testing.T) {
	ap := netip.MustParseAddrPort
	s1, s2, s1b := ap("192.0.2.1:3478"), ap("192.0.2.2:3478"), ap("192.0.2.1:3479")
	m1, m2 := ap("203.0.113.9:40000"), ap("203.0.113.9:51234")
	tests := []struct {
		name    string
		results []stunResult
		want    netip.Addr
	}{
		{"no answers", nil, netip.Addr{}},
		{"one server", []stunResult{{server: s1, mapped: m1}}, netip.Addr{}},
		{"one server, two answers that differ", []stunResult{{server: s1, mapped: m1}, {server: s1, mapped: m2}}, netip.Addr{}},
		{"two servers, same mapping", []stunResult{{server: s1, mapped: m1}, {server: s2, mapped: m1}}, netip.Addr{}},
		{"two servers, mappings differ", []stunResult{{server: s1, mapped: m1}, {server: s2, mapped: m2}}, m1.Addr()},
		{"two ports of one server, mappings differ", []stunResult{{server: s1, mapped: m1}, {server: s1b, mapped: m2}}, m1.Addr()},
		{"IPv6 only", []stunResult{{server: ap("[2001:db8::1]:3478"), mapped: ap("[2001:db8::9]:1")}, {server: ap("[2001:db8::2]:3478"), mapped: ap("[2001:db8::9]:2")}}, netip.Addr{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := hardNAT(tc.results); got != tc.want {
				t.Errorf("hardNAT = %v, want %v", got, tc.want)
			}
		})
	}
}
