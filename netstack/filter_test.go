package netstack

import (
	"encoding/binary"
	"net/netip"
	"testing"
)

// ipv4Packet builds an IPv4 packet with a transport header.
func ipv4Packet(proto uint8, src, dst netip.Addr, sport, dport uint16, tcpFlags byte) []byte {
	l4len := 8
	if proto == protoTCP {
		l4len = 20
	}
	p := make([]byte, 20+l4len)
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
	p[8] = 64
	p[9] = proto
	s, d := src.As4(), dst.As4()
	copy(p[12:], s[:])
	copy(p[16:], d[:])
	l4 := p[20:]
	switch proto {
	case protoTCP, protoUDP:
		binary.BigEndian.PutUint16(l4[0:], sport)
		binary.BigEndian.PutUint16(l4[2:], dport)
		if proto == protoTCP {
			l4[12] = 5 << 4
			l4[13] = tcpFlags
		}
	case protoICMP:
		l4[0] = byte(sport) // type
		binary.BigEndian.PutUint16(l4[4:], dport)
	}
	return p
}

func ipv6Packet(proto uint8, src, dst netip.Addr, sport, dport uint16, tcpFlags byte) []byte {
	v4 := ipv4Packet(proto, netip.AddrFrom4([4]byte{}), netip.AddrFrom4([4]byte{}), sport, dport, tcpFlags)
	l4 := v4[20:]
	p := make([]byte, 40+len(l4))
	p[0] = 0x60
	binary.BigEndian.PutUint16(p[4:], uint16(len(l4)))
	p[6] = proto
	p[7] = 64
	s, d := src.As16(), dst.As16()
	copy(p[8:], s[:])
	copy(p[24:], d[:])
	copy(p[40:], l4)
	return p
}

const (
	tcpSYN = 0x02
	tcpACK = 0x10
)

func TestPacketFilter(t *testing.T) {
	peerA := netip.MustParseAddr("100.64.0.1")
	peerC := netip.MustParseAddr("100.64.0.3")
	me := netip.MustParseAddr("100.64.0.2")
	me6 := netip.MustParseAddr("fd7a:115c:a1e0::2")
	peerA6 := netip.MustParseAddr("fd7a:115c:a1e0::1")
	var now int64 = 1000
	newFilter := func(cfg Config) *packetFilter {
		f := &packetFilter{now: func() int64 { return now }}
		f.pol.Store(newPolicy(&cfg))
		return f
	}
	rule := &Filter{Rules: []FilterRule{{
		SrcIPs:   []netip.Prefix{netip.PrefixFrom(peerA, 32), netip.PrefixFrom(peerA6, 128)},
		DstPorts: []PortRange{{First: 80, Last: 81}},
	}, {
		SrcIPs:   []netip.Prefix{netip.MustParsePrefix("100.64.0.0/10")},
		DstPorts: []PortRange{{Prefix: netip.PrefixFrom(me, 32), First: 53, Last: 53}},
		Protos:   []uint8{protoUDP},
	}}}
	for _, tc := range []struct {
		name string
		cfg  Config
		pkt  []byte
		want bool
	}{
		{"open accepts", Config{}, ipv4Packet(protoTCP, peerC, me, 1000, 22, tcpSYN), true},
		{"open accepts garbage", Config{}, []byte{1, 2, 3}, true},
		{"rule port", Config{Filter: rule}, ipv4Packet(protoTCP, peerA, me, 1000, 80, tcpSYN), true},
		{"rule port range end", Config{Filter: rule}, ipv4Packet(protoTCP, peerA, me, 1000, 81, tcpSYN), true},
		{"other port", Config{Filter: rule}, ipv4Packet(protoTCP, peerA, me, 1000, 22, tcpSYN), false},
		{"other source", Config{Filter: rule}, ipv4Packet(protoTCP, peerC, me, 1000, 80, tcpSYN), false},
		{"ipv6 rule", Config{Filter: rule}, ipv6Packet(protoTCP, peerA6, me6, 1000, 80, tcpSYN), true},
		{"ipv6 other port", Config{Filter: rule}, ipv6Packet(protoTCP, peerA6, me6, 1000, 22, tcpSYN), false},
		{"established tcp", Config{Filter: rule}, ipv4Packet(protoTCP, peerC, me, 1000, 22, tcpACK), true},
		{"syn-ack", Config{Filter: rule}, ipv4Packet(protoTCP, peerC, me, 22, 1000, tcpSYN|tcpACK), true},
		{"udp proto rule", Config{Filter: rule}, ipv4Packet(protoUDP, peerC, me, 1000, 53, 0), true},
		{"udp rule wrong dst", Config{Filter: rule}, ipv6Packet(protoUDP, peerA6, me6, 1000, 53, 0), false},
		{"tcp to udp-only rule", Config{Filter: rule}, ipv4Packet(protoTCP, peerC, me, 1000, 53, tcpSYN), false},
		{"ping allowed by rule", Config{Filter: rule}, ipv4Packet(protoICMP, peerA, me, 8, 1, 0), true},
		{"ping not allowed", Config{Filter: rule}, ipv4Packet(protoICMP, peerC, me, 8, 1, 0), false},
		{"malformed", Config{Filter: rule}, []byte{0x45, 0, 0}, false},
		{"shields up", Config{ShieldsUp: true}, ipv4Packet(protoTCP, peerA, me, 1000, 80, tcpSYN), false},
		{"shields up allow", Config{ShieldsUp: true, AllowInbound: []uint16{80}}, ipv4Packet(protoTCP, peerA, me, 1000, 80, tcpSYN), true},
		{"shields up allow udp", Config{ShieldsUp: true, AllowInbound: []uint16{80}}, ipv4Packet(protoUDP, peerA, me, 1000, 80, 0), true},
		{"shields up ping", Config{ShieldsUp: true, AllowInbound: []uint16{80}}, ipv4Packet(protoICMP, peerA, me, 8, 1, 0), false},
		{"shields up, edge port from the edge", Config{ShieldsUp: true, EdgeInbound: []uint16{80}, Edges: []netip.Addr{peerA}}, ipv4Packet(protoTCP, peerA, me, 1000, 80, tcpSYN), true},
		{"shields up, edge port from a peer", Config{ShieldsUp: true, EdgeInbound: []uint16{80}, Edges: []netip.Addr{peerA}}, ipv4Packet(protoTCP, peerC, me, 1000, 80, tcpSYN), false},
		{"shields up, other port from the edge", Config{ShieldsUp: true, EdgeInbound: []uint16{80}, Edges: []netip.Addr{peerA}}, ipv4Packet(protoTCP, peerA, me, 1000, 81, tcpSYN), false},
		{"shields up, edge port from the edge over ipv6", Config{ShieldsUp: true, EdgeInbound: []uint16{80}, Edges: []netip.Addr{peerA6}}, ipv6Packet(protoTCP, peerA6, me6, 1000, 80, tcpSYN), true},
		{"shields up and filter", Config{ShieldsUp: true, AllowInbound: []uint16{22}, Filter: rule}, ipv4Packet(protoTCP, peerA, me, 1000, 22, tcpSYN), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := newFilter(tc.cfg).inbound(tc.pkt); got != tc.want {
				t.Errorf("inbound = %v, want %v", got, tc.want)
			}
		})
	}

	t.Run("replies", func(t *testing.T) {
		f := newFilter(Config{Filter: &Filter{}})
		reply := ipv4Packet(protoUDP, peerC, me, 53, 4000, 0)
		if f.inbound(reply) {
			t.Fatal("unsolicited UDP accepted")
		}
		f.outbound(ipv4Packet(protoUDP, me, peerC, 4000, 53, 0))
		if !f.inbound(reply) {
			t.Fatal("UDP reply to our flow dropped")
		}
		if f.inbound(ipv4Packet(protoUDP, peerC, me, 54, 4000, 0)) {
			t.Fatal("UDP from another port accepted")
		}
		echoReply := ipv4Packet(protoICMP, peerC, me, 0, 77, 0)
		if f.inbound(echoReply) {
			t.Fatal("unsolicited echo reply accepted")
		}
		f.outbound(ipv4Packet(protoICMP, me, peerC, 8, 77, 0))
		if !f.inbound(echoReply) {
			t.Fatal("echo reply dropped")
		}
		now += int64(flowTimeout.Seconds()) + 1
		if f.inbound(reply) {
			t.Fatal("reply accepted after the flow expired")
		}
	})
}

// FuzzParsePacket feeds arbitrary bytes (as a peer could send inside the
// tunnel) to the filter's parser and both directions of the filter.
func FuzzParsePacket(f *testing.F) {
	me := netip.MustParseAddr("100.64.0.2")
	peer := netip.MustParseAddr("100.64.0.1")
	f.Add(ipv4Packet(protoTCP, peer, me, 1, 80, tcpSYN))                                                       // TCP SYN
	f.Add(ipv4Packet(protoUDP, peer, me, 1, 53, 0))                                                            // UDP
	f.Add(ipv4Packet(protoICMP, peer, me, 8, 1, 0))                                                            // ICMP echo
	f.Add(ipv6Packet(protoTCP, netip.MustParseAddr("fd7a::1"), netip.MustParseAddr("fd7a::2"), 1, 80, tcpSYN)) // IPv6 TCP
	f.Add([]byte{0x60, 0, 0, 0, 0, 8, 44, 64})                                                                 // truncated IPv6 fragment
	f.Add([]byte{0x4f, 0, 0, 20})                                                                              // bad IHL
	pf := &packetFilter{now: func() int64 { return 1 }}
	pf.pol.Store(newPolicy(&Config{Filter: &Filter{Rules: []FilterRule{{SrcIPs: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}, DstPorts: []PortRange{{First: 80, Last: 80}}}}}}))
	f.Fuzz(func(t *testing.T, pkt []byte) {
		pi, ok := parsePacket(pkt)
		if ok && !pi.fragment && (pi.proto == protoTCP || pi.proto == protoUDP) && len(pkt) < 28 {
			t.Fatalf("parsed ports from a %d-byte packet", len(pkt))
		}
		pf.outbound(pkt)
		pf.inbound(pkt)
	})
}

// BenchmarkFilter measures the per-packet cost of the inbound filter
// against the open (no filter) fast path.
func BenchmarkFilter(b *testing.B) {
	me := netip.MustParseAddr("100.64.0.2")
	peer := netip.MustParseAddr("100.64.0.1")
	var rules []FilterRule
	for i := range 20 {
		rules = append(rules, FilterRule{
			SrcIPs:   []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{100, 64, 1, byte(i)}), 32), netip.PrefixFrom(peer, 32)},
			DstPorts: []PortRange{{First: uint16(1000 + i), Last: uint16(1000 + i)}},
		})
	}
	pkts := map[string][]byte{
		"tcp-data": ipv4Packet(protoTCP, peer, me, 5000, 1019, tcpACK),
		"tcp-syn":  ipv4Packet(protoTCP, peer, me, 5000, 1019, tcpSYN),
		"udp":      ipv4Packet(protoUDP, peer, me, 5000, 1019, 0),
	}
	for _, name := range []string{"tcp-data", "tcp-syn", "udp"} {
		pkt := pkts[name]
		var base float64
		for _, mode := range []string{"none", "filter"} {
			b.Run(name+"/"+mode, func(b *testing.B) {
				cfg := Config{}
				if mode == "filter" {
					cfg.Filter = &Filter{Rules: rules}
				}
				pf := &packetFilter{now: func() int64 { return 1 }}
				pf.pol.Store(newPolicy(&cfg))
				for b.Loop() {
					if !pf.inbound(pkt) {
						b.Fatal("dropped")
					}
				}
				ns := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
				if mode == "none" {
					base = ns
				} else if base > 0 {
					b.ReportMetric(ns/base, "x-vs-none")
				}
			})
		}
	}
}
