package netstack

import (
	"encoding/binary"
	"net/netip"
	"testing"
)

// icmpError builds an ICMP (or ICMPv6, for IPv6 addresses) message of type
// typ from src to dst quoting the packet quoted.
func icmpError(typ uint8, src, dst netip.Addr, quoted []byte) []byte {
	body := make([]byte, 8+len(quoted))
	body[0] = typ
	copy(body[8:], quoted)
	if src.Is4() {
		p := make([]byte, 20+len(body))
		p[0] = 0x45
		binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
		p[8] = 64
		p[9] = protoICMP
		s, d := src.As4(), dst.As4()
		copy(p[12:], s[:])
		copy(p[16:], d[:])
		copy(p[20:], body)
		return p
	}
	p := make([]byte, 40+len(body))
	p[0] = 0x60
	binary.BigEndian.PutUint16(p[4:], uint16(len(body)))
	p[6] = protoICMPv6
	p[7] = 64
	s, d := src.As16(), dst.As16()
	copy(p[8:], s[:])
	copy(p[24:], d[:])
	copy(p[40:], body)
	return p
}

// TestPacketFilterICMPErrors: with shields up or a filter, an ICMP error
// passes only if it quotes a packet this node sent to the error's sender
// (a UDP or echo flow it opened, or TCP); other ICMP types that are not
// echoes (redirects, timestamps) never pass.
func TestPacketFilterICMPErrors(t *testing.T) {
	me, peer, other := netip.MustParseAddr("100.64.0.2"), netip.MustParseAddr("100.64.0.1"), netip.MustParseAddr("100.64.0.3")
	me6, peer6 := netip.MustParseAddr("fd7a:115c:a1e0::2"), netip.MustParseAddr("fd7a:115c:a1e0::1")
	ourUDP := ipv4Packet(protoUDP, me, peer, 4000, 53, 0)
	ourEcho := ipv4Packet(protoICMP, me, peer, 8, 77, 0)
	ourUDP6 := ipv6Packet(protoUDP, me6, peer6, 4000, 53, 0)
	// Quoted packets are often cut to the IP header and 8 bytes.
	ourTCP := ipv4Packet(protoTCP, me, peer, 4001, 22, tcpSYN)[:28]

	for _, cfg := range []struct {
		name string
		cfg  Config
	}{
		{"shields up", Config{ShieldsUp: true}},
		{"deny policy", Config{Filter: &Filter{}}},
	} {
		for _, tc := range []struct {
			name string
			pkt  []byte
			want bool
		}{
			{"unreachable about our UDP flow", icmpError(3, peer, me, ourUDP), true},
			{"unreachable about our UDP flow, cut short", icmpError(3, peer, me, ourUDP[:28]), true},
			{"time exceeded about our echo", icmpError(11, peer, me, ourEcho), true},
			{"unreachable about our TCP", icmpError(3, peer, me, ourTCP), true},
			{"ipv6 packet too big about our UDP flow", icmpError(2, peer6, me6, ourUDP6), true},
			{"unreachable about a flow we did not open", icmpError(3, peer, me, ipv4Packet(protoUDP, me, peer, 4002, 53, 0)), false},
			{"unreachable from another peer", icmpError(3, other, me, ourUDP), false},
			{"unreachable quoting the peer's own packet", icmpError(3, peer, me, ipv4Packet(protoUDP, peer, me, 53, 4000, 0)), false},
			{"unreachable quoting garbage", icmpError(3, peer, me, []byte{0x45, 1, 2}), false},
			{"unreachable quoting nothing", icmpError(3, peer, me, nil), false},
			{"redirect", icmpError(5, peer, me, ourUDP), false},
			{"timestamp request", icmpError(13, peer, me, nil), false},
			{"ipv6 redirect", icmpError(137, peer6, me6, ourUDP6), false},
		} {
			t.Run(cfg.name+"/"+tc.name, func(t *testing.T) {
				f := &packetFilter{now: func() int64 { return 1000 }}
				f.pol.Store(newPolicy(&cfg.cfg))
				for _, out := range [][]byte{ourUDP, ourEcho, ourUDP6, ourTCP} {
					f.outbound(out)
				}
				if got := f.inbound(tc.pkt); got != tc.want {
					t.Errorf("inbound = %v, want %v", got, tc.want)
				}
			})
		}
	}
}
