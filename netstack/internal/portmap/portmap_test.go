package portmap

import (
	"bufio"
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeGateway answers PCP and NAT-PMP on one loopback UDP socket the way
// a home router does, and SSDP on another.
type fakeGateway struct {
	t        *testing.T
	pmp, ssd net.PacketConn
	pcp      bool // answer PCP; else answer it as a NAT-PMP-only gateway
	natpmp   bool
	silent   bool // answer nothing
	upnp     bool
	location string // the SSDP answer's LOCATION; empty: the fake's own

	mu       sync.Mutex
	mappings map[uint16]uint16 // internal -> external port
	requests []string
}

var extIP = netip.MustParseAddr("203.0.113.7")

// newFakeGateway starts a gateway that speaks everything, as set changes
// it (if not nil).
func newFakeGateway(t *testing.T, set func(*fakeGateway)) *fakeGateway {
	g := &fakeGateway{t: t, pcp: true, natpmp: true, upnp: true, mappings: map[uint16]uint16{}}
	if set != nil {
		set(g)
	}
	var err error
	if g.pmp, err = net.ListenPacket("udp4", "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	if g.ssd, err = net.ListenPacket("udp4", "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { g.serve(g.pmp, g.answerPMP) })
	wg.Go(func() { g.serve(g.ssd, g.answerSSDP) })
	t.Cleanup(func() { g.pmp.Close(); g.ssd.Close(); wg.Wait() })
	return g
}

func (g *fakeGateway) client() *Client {
	return &Client{Gateway: netip.MustParseAddr("127.0.0.1"), Timeout: 300 * time.Millisecond,
		pmpPort: g.pmp.LocalAddr().(*net.UDPAddr).Port, ssdpPort: g.ssd.LocalAddr().(*net.UDPAddr).Port}
}

func (g *fakeGateway) serve(pc net.PacketConn, answer func(req []byte, from netip.AddrPort) []byte) {
	buf := make([]byte, 1500)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		g.mu.Lock()
		silent := g.silent
		g.mu.Unlock()
		if silent {
			continue
		}
		if resp := answer(buf[:n], from.(*net.UDPAddr).AddrPort()); resp != nil {
			pc.WriteTo(resp, from)
		}
	}
}

func (g *fakeGateway) answerPMP(req []byte, from netip.AddrPort) []byte {
	g.mu.Lock()
	defer g.mu.Unlock()
	switch {
	case !g.pcp && !g.natpmp:
		return nil // nothing listens
	case len(req) >= 2 && req[0] == 0 && g.natpmp:
		switch req[1] {
		case 0:
			g.requests = append(g.requests, "pmp external")
			resp := make([]byte, 12)
			resp[1] = 128
			copy(resp[8:], extIP.AsSlice())
			return resp
		case 1:
			in, life := binary.BigEndian.Uint16(req[4:]), binary.BigEndian.Uint32(req[8:])
			resp := make([]byte, 16)
			resp[1] = 129
			binary.BigEndian.PutUint16(resp[8:], in)
			if life == 0 {
				g.requests = append(g.requests, "pmp delete")
				delete(g.mappings, in)
				return resp
			}
			g.requests = append(g.requests, "pmp map")
			g.mappings[in] = in + 1000
			binary.BigEndian.PutUint16(resp[10:], in+1000)
			binary.BigEndian.PutUint32(resp[12:], life)
			return resp
		}
	case len(req) >= 24 && req[0] == 2 && !g.pcp:
		// A NAT-PMP-only gateway: version 0, result UNSUPP_VERSION.
		g.requests = append(g.requests, "pcp refused")
		return []byte{0, 128 + req[1], 0, 1, 0, 0, 0, 0}
	case len(req) >= 24 && req[0] == 2:
		client := netip.AddrFrom16([16]byte(req[8:24])).Unmap()
		if client != from.Addr() {
			g.t.Errorf("PCP client address %v, sent from %v", client, from.Addr())
		}
		life := binary.BigEndian.Uint32(req[4:])
		resp := make([]byte, len(req))
		copy(resp, req)
		resp[1] = 0x80 | req[1]
		resp[3] = 0
		binary.BigEndian.PutUint32(resp[4:], min(life, 7200))
		if req[1] == 0 {
			g.requests = append(g.requests, "pcp announce")
			return resp[:24]
		}
		in := binary.BigEndian.Uint16(req[40:])
		if life == 0 {
			g.requests = append(g.requests, "pcp delete")
			delete(g.mappings, in)
		} else {
			g.requests = append(g.requests, "pcp map "+string(req[24:36]))
			g.mappings[in] = in + 2000
		}
		binary.BigEndian.PutUint16(resp[42:], in+2000)
		v := extIP.As16()
		copy(resp[44:60], v[:])
		return resp
	}
	return nil
}

func (g *fakeGateway) answerSSDP(req []byte, from netip.AddrPort) []byte {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.upnp || !strings.HasPrefix(string(req), "M-SEARCH * HTTP/1.1\r\n") || !strings.Contains(string(req), "InternetGatewayDevice") {
		return nil
	}
	g.requests = append(g.requests, "ssdp")
	loc := g.location
	if loc == "" {
		loc = "http://127.0.0.1:1/rootDesc.xml"
	}
	return []byte("HTTP/1.1 200 OK\r\nST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\nLOCATION: " + loc + "\r\n\r\n")
}

func (g *fakeGateway) mapped(internal uint16) (uint16, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	p, ok := g.mappings[internal]
	return p, ok
}

func TestMapRenewDelete(t *testing.T) {
	for _, tc := range []struct {
		name      string
		pcp       bool
		wantProto string
		wantPort  uint16
	}{
		{"PCP", true, ProtoPCP, 41641 + 2000},
		{"NAT-PMP only", false, ProtoNATPMP, 41641 + 1000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := newFakeGateway(t, func(g *fakeGateway) { g.pcp = tc.pcp })
			c := g.client()
			ctx := t.Context()
			m, err := c.Map(ctx, 41641, Mapping{})
			if err != nil {
				t.Fatal(err)
			}
			if want := netip.AddrPortFrom(extIP, tc.wantPort); m.Protocol != tc.wantProto || m.External != want || m.Lifetime != DefaultLifetime {
				t.Fatalf("Map = %s %v for %v, want %s %v for %v", m.Protocol, m.External, m.Lifetime, tc.wantProto, want, DefaultLifetime)
			}
			if !m.RenewAt().After(time.Now().Add(DefaultLifetime/2 - time.Minute)) {
				t.Errorf("RenewAt %v, want about an hour from now", m.RenewAt())
			}
			r, err := c.Map(ctx, 41641, m)
			if err != nil {
				t.Fatal(err)
			}
			if r.External != m.External || r.Protocol != m.Protocol || r.nonce != m.nonce {
				t.Errorf("renewal = %+v, want the same mapping as %+v", r, m)
			}
			if _, ok := g.mapped(41641); !ok {
				t.Fatal("gateway holds no mapping")
			}
			if err := c.Delete(ctx, r); err != nil {
				t.Fatal(err)
			}
			if p, ok := g.mapped(41641); ok {
				t.Errorf("gateway still maps port %d after Delete", p)
			}
		})
	}
}

func TestProbe(t *testing.T) {
	for _, tc := range []struct {
		name              string
		pcp, natpmp, upnp bool
		want              string
	}{
		{"all", true, true, true, "PCP NAT-PMP UPnP"},
		{"NAT-PMP only", false, true, false, "NAT-PMP"},
		{"UPnP only", false, false, true, "UPnP"},
		{"none", false, false, false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := newFakeGateway(t, func(g *fakeGateway) { g.pcp, g.natpmp, g.upnp = tc.pcp, tc.natpmp, tc.upnp })
			c := g.client()
			start := time.Now()
			o, err := c.Probe(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.Join(o.Protocols(), " "); got != tc.want {
				t.Errorf("Probe offers %q, want %q", got, tc.want)
			}
			if tc.natpmp && o.ExternalIP != extIP {
				t.Errorf("ExternalIP = %v, want %v", o.ExternalIP, extIP)
			}
			// Silent protocols cost one timeout, in parallel.
			if d := time.Since(start); d > 3*c.Timeout {
				t.Errorf("Probe took %v, want at most %v", d, 3*c.Timeout)
			}
		})
	}
}

// TestSilentGateway checks that every exchange with a gateway that does
// not answer ends within the timeout (plus scheduling slack).
func TestSilentGateway(t *testing.T) {
	g := newFakeGateway(t, func(g *fakeGateway) { g.silent = true })
	c := g.client()
	start := time.Now()
	if _, err := c.Map(t.Context(), 41641, Mapping{}); err == nil {
		t.Fatal("Map succeeded with a silent gateway")
	}
	// PCP, NAT-PMP, then the SSDP search: three timeouts.
	if d := time.Since(start); d > 3*c.Timeout+time.Second {
		t.Errorf("Map took %v, want about %v", d, 3*c.Timeout)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	start = time.Now()
	if _, err := c.Map(ctx, 41641, Mapping{}); err == nil {
		t.Fatal("Map succeeded with a silent gateway")
	}
	if d := time.Since(start); d > 50*time.Millisecond+time.Second {
		t.Errorf("Map with a 50ms context took %v", d)
	}
	g.mu.Lock()
	n := len(g.requests)
	g.mu.Unlock()
	if n != 0 {
		t.Errorf("silent gateway logged %d answered requests", n)
	}
}

func TestNoGateway(t *testing.T) {
	for _, gw := range []netip.Addr{{}, netip.MustParseAddr("0.0.0.0"), netip.MustParseAddr("2001:db8::1")} {
		c := &Client{Gateway: gw}
		if _, err := c.Map(t.Context(), 1, Mapping{}); err == nil {
			t.Errorf("Map with gateway %v succeeded", gw)
		}
		if _, err := c.Probe(t.Context()); err != ErrNoGateway {
			t.Errorf("Probe with gateway %v: %v, want ErrNoGateway", gw, err)
		}
	}
}

func TestParseRoutes(t *testing.T) {
	const header = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
	for _, tc := range []struct {
		name, table string
		want        string
	}{
		{"default via 192.0.2.1", header +
			"eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n" +
			"eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n", "192.0.2.1"},
		{"no default route", header +
			"eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n", ""},
		{"default without a gateway (point to point)", header +
			"tun0\t00000000\t00000000\t0001\t0\t0\t0\t00000000\t0\t0\t0\n", ""},
		{"garbage", header + "eth0\t00000000\tzz\t0003\n", ""},
	} {
		got, err := parseRoutes(bufio.NewScanner(strings.NewReader(tc.table)))
		if tc.want == "" {
			if err == nil {
				t.Errorf("%s: got %v, want ErrNoGateway", tc.name, got)
			}
			continue
		}
		if err != nil || got.String() != tc.want {
			t.Errorf("%s: got %v, %v; want %s", tc.name, got, err, tc.want)
		}
	}
}
