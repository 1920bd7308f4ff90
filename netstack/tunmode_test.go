package netstack

import (
	"encoding/binary"
	"net/netip"
	"slices"
	"testing"
	"time"

	"beam.dev/beam/netstack/internal/inflight"
	"golang.zx2c4.com/wireguard/tun"
)

// recordingTUN is a tun.Device that keeps what is written to it and reads
// the packets queued in toRead.
type recordingTUN struct {
	tun.Device // nil: only Read and Write are used
	written    [][]byte
	toRead     [][]byte
}

func (r *recordingTUN) Write(bufs [][]byte, offset int) (int, error) {
	for _, b := range bufs {
		r.written = append(r.written, slices.Clone(b[offset:]))
	}
	return len(bufs), nil
}

func (r *recordingTUN) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	n := 0
	for n < len(bufs) && len(r.toRead) > 0 {
		sizes[n] = copy(bufs[n][offset:], r.toRead[0])
		r.toRead = r.toRead[1:]
		n++
	}
	return n, nil
}

// TestTUNFilter checks the filter that TUN mode wraps around the kernel
// device: what a peer's packets may reach on the host, with the same
// policy as the userspace stack.
func TestTUNFilter(t *testing.T) {
	self := netip.MustParseAddr("100.64.0.1")
	self6 := netip.MustParseAddr("fd7a:bea0:b0de::6440:1")
	peer := netip.MustParseAddr("100.64.0.2")
	peer6 := netip.MustParseAddr("fd7a:bea0:b0de::6440:2")
	magic := netip.MustParseAddr("100.100.100.100")
	const offset = 16

	newFilter := func(cfg Config) (*tunFilter, *recordingTUN) {
		rt := &recordingTUN{}
		pf := &packetFilter{now: func() int64 { return 1000 }}
		pf.pol.Store(newPolicy(&cfg))
		tf := &tunFilter{Device: rt, pf: pf}
		overlay := map[netip.Addr]bool{self: true, self6: true}
		tf.ownPorts.Store(newOwnPortSet(cfg.OwnListeners, overlay, cfg.ServiceAddrs))
		return tf, rt
	}
	allow80 := &Filter{Rules: []FilterRule{{
		SrcIPs:   []netip.Prefix{netip.PrefixFrom(peer, 32), netip.PrefixFrom(peer6, 128)},
		DstPorts: []PortRange{{First: 80, Last: 80}},
	}}}
	own := []netip.AddrPort{
		netip.MustParseAddrPort("0.0.0.0:1080"),      // a proxy on every address
		netip.MustParseAddrPort("127.0.0.1:5353"),    // loopback: out of reach anyway
		netip.MustParseAddrPort("100.64.0.1:9090"),   // on the overlay address
		netip.MustParseAddrPort("[::]:8053"),         // IPv6 unspecified
		netip.MustParseAddrPort("198.51.100.2:7777"), // a LAN address: not the overlay's
	}
	tests := []struct {
		name string
		cfg  Config
		pkt  []byte
		want bool
	}{
		{"open policy passes anything", Config{}, ipv4Packet(protoTCP, peer, self, 4000, 22, tcpSYN), true},
		{"allowed port", Config{Filter: allow80}, ipv4Packet(protoTCP, peer, self, 4000, 80, tcpSYN), true},
		{"allowed port v6", Config{Filter: allow80}, ipv6Packet(protoTCP, peer6, self6, 4000, 80, tcpSYN), true},
		{"denied SYN dropped", Config{Filter: allow80}, ipv4Packet(protoTCP, peer, self, 4000, 22, tcpSYN), false},
		{"denied SYN dropped v6", Config{Filter: allow80}, ipv6Packet(protoTCP, peer6, self6, 4000, 22, tcpSYN), false},
		{"segment of an existing connection passes", Config{Filter: allow80}, ipv4Packet(protoTCP, peer, self, 22, 4000, tcpACK), true},
		{"denied UDP dropped", Config{Filter: allow80}, ipv4Packet(protoUDP, peer, self, 4000, 53, 0), false},
		{"shields up", Config{ShieldsUp: true}, ipv4Packet(protoTCP, peer, self, 4000, 80, tcpSYN), false},
		{"shields up, allowed inbound", Config{ShieldsUp: true, AllowInbound: []uint16{80}}, ipv4Packet(protoTCP, peer, self, 4000, 80, tcpSYN), true},
		{"own listener on every address", Config{OwnListeners: own}, ipv4Packet(protoTCP, peer, self, 4000, 1080, tcpSYN), false},
		{"own listener on every address, UDP", Config{OwnListeners: own}, ipv4Packet(protoUDP, peer, self, 4000, 1080, 0), false},
		{"own listener on the overlay address", Config{OwnListeners: own}, ipv4Packet(protoTCP, peer, self, 4000, 9090, tcpSYN), false},
		{"own listener on [::]", Config{OwnListeners: own}, ipv6Packet(protoTCP, peer6, self6, 4000, 8053, tcpSYN), false},
		{"own loopback listener's port is the host's to serve", Config{OwnListeners: own}, ipv4Packet(protoTCP, peer, self, 4000, 5353, tcpSYN), true},
		{"own LAN listener's port is the host's to serve", Config{OwnListeners: own}, ipv4Packet(protoTCP, peer, self, 4000, 7777, tcpSYN), true},
		{"service address refused", Config{ServiceAddrs: []netip.Addr{magic}}, ipv4Packet(protoUDP, peer, magic, 4000, 53, 0), false},
		{"service address refused, even TCP segments", Config{ServiceAddrs: []netip.Addr{magic}}, ipv4Packet(protoTCP, peer, magic, 4000, 53, tcpACK), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tf, rt := newFilter(tt.cfg)
			buf := append(make([]byte, offset), tt.pkt...)
			other := append(make([]byte, offset), ipv4Packet(protoTCP, peer, self, 22, 4000, tcpACK)...)
			if _, err := tf.Write([][]byte{buf, other}, offset); err != nil {
				t.Fatal(err)
			}
			got := len(rt.written) == 2
			if got != tt.want {
				t.Errorf("passed = %v, want %v (written %d of 2)", got, tt.want, len(rt.written))
			}
			if len(rt.written) == 0 || !slices.Equal(rt.written[len(rt.written)-1], other[offset:]) {
				t.Errorf("the accepted packet beside it did not pass")
			}
		})
	}

	t.Run("replies to flows the host opened", func(t *testing.T) {
		tf, rt := newFilter(Config{Filter: allow80})
		reply := append(make([]byte, offset), ipv4Packet(protoUDP, peer, self, 53, 4000, 0)...)
		tf.Write([][]byte{reply}, offset)
		if len(rt.written) != 0 {
			t.Fatalf("an unsolicited UDP datagram passed")
		}
		rt.toRead = [][]byte{ipv4Packet(protoUDP, self, peer, 4000, 53, 0)}
		bufs := [][]byte{make([]byte, 1500)}
		if n, _ := tf.Read(bufs, make([]int, 1), offset); n != 1 {
			t.Fatalf("Read = %d packets, want 1", n)
		}
		reply = append(make([]byte, offset), ipv4Packet(protoUDP, peer, self, 53, 4000, 0)...)
		tf.Write([][]byte{reply}, offset)
		if len(rt.written) != 1 {
			t.Fatalf("the reply to a flow the host opened was dropped")
		}
	})
}

func TestDropDeviceAddrs(t *testing.T) {
	e := &Engine{tun: &tunFilter{}, overlay: map[netip.Addr]bool{netip.MustParseAddr("100.64.0.1"): true}}
	e.cfg.ServiceAddrs = []netip.Addr{netip.MustParseAddr("100.100.100.100")}
	eps := []netip.AddrPort{
		netip.MustParseAddrPort("198.51.100.2:41641"),
		netip.MustParseAddrPort("100.64.0.1:41641"),
		netip.MustParseAddrPort("100.100.100.100:41641"),
		netip.MustParseAddrPort("127.0.0.1:41641"),
	}
	got := e.dropDeviceAddrs(slices.Clone(eps))
	want := []netip.AddrPort{eps[0], eps[3]}
	if !slices.Equal(got, want) {
		t.Errorf("dropDeviceAddrs = %v, want %v", got, want)
	}
}

// TestTCPResetFor checks the reset the TUN filter answers a refused SYN
// with: addressed back to the peer, acknowledging the SYN, with valid
// checksums.
func TestTCPResetFor(t *testing.T) {
	self := netip.MustParseAddr("100.64.0.1")
	peer := netip.MustParseAddr("100.64.0.2")
	self6 := netip.MustParseAddr("fd7a:bea0:b0de::6440:1")
	peer6 := netip.MustParseAddr("fd7a:bea0:b0de::6440:2")
	withSeq := func(p []byte, l4off int, seq uint32, payload int) []byte {
		binary.BigEndian.PutUint32(p[l4off+4:], seq)
		p = append(p, make([]byte, payload)...)
		if p[0]>>4 == 4 {
			binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
		} else {
			binary.BigEndian.PutUint16(p[4:], uint16(len(p)-40))
		}
		return p
	}
	fragment := ipv4Packet(protoTCP, peer, self, 4000, 22, tcpSYN)
	fragment[6] = 0x20 // more fragments
	tests := []struct {
		name     string
		pkt      []byte
		l4off    int
		wantAck  uint32 // 0: no reset
		src, dst netip.Addr
	}{
		{"SYN v4", withSeq(ipv4Packet(protoTCP, peer, self, 4000, 22, tcpSYN), 20, 1000, 0), 20, 1001, self, peer},
		{"SYN v4 with data", withSeq(ipv4Packet(protoTCP, peer, self, 4000, 22, tcpSYN), 20, 0xffffffff, 5), 20, 5, self, peer},
		{"SYN v6", withSeq(ipv6Packet(protoTCP, peer6, self6, 4000, 22, tcpSYN), 40, 7, 0), 40, 8, self6, peer6},
		{"SYN-ACK", ipv4Packet(protoTCP, peer, self, 4000, 22, tcpSYN|tcpACK), 20, 0, self, peer},
		{"ACK", ipv4Packet(protoTCP, peer, self, 4000, 22, tcpACK), 20, 0, self, peer},
		{"UDP", ipv4Packet(protoUDP, peer, self, 4000, 53, 0), 20, 0, self, peer},
		{"fragment", fragment, 20, 0, self, peer},
		{"truncated", ipv4Packet(protoTCP, peer, self, 4000, 22, tcpSYN)[:30], 20, 0, self, peer},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rst := tcpResetFor(tt.pkt)
			if tt.wantAck == 0 {
				if rst != nil {
					t.Fatalf("tcpResetFor = %x, want nil", rst)
				}
				return
			}
			pi, ok := parsePacket(rst)
			if !ok {
				t.Fatalf("reset %x does not parse", rst)
			}
			if pi.proto != protoTCP || pi.src != tt.src || pi.dst != tt.dst || pi.sport != 22 || pi.dport != 4000 {
				t.Errorf("reset = %+v, want TCP %v:22 -> %v:4000", pi, tt.src, tt.dst)
			}
			tcp := rst[len(rst)-20:]
			if got := tcp[13]; got != tcpFlagRST|tcpFlagACK {
				t.Errorf("flags = %#x, want RST|ACK", got)
			}
			if got := binary.BigEndian.Uint32(tcp[8:12]); got != tt.wantAck {
				t.Errorf("ack = %d, want %d", got, tt.wantAck)
			}
			var sum uint32
			if tt.src.Is4() {
				if c := checksum(0, rst[:20]); c != 0xffff {
					t.Errorf("IPv4 header checksum does not verify: sum %#x", c)
				}
				sum = uint32(checksum(0, rst[12:20]))
			} else {
				sum = uint32(checksum(0, rst[8:40]))
			}
			if c := checksum(sum+protoTCP+20, tcp); c != 0xffff {
				t.Errorf("TCP checksum does not verify: sum %#x", c)
			}
		})
	}

	t.Run("the filter answers a denied SYN, not a denied datagram", func(t *testing.T) {
		rt := &recordingTUN{}
		pf := &packetFilter{now: func() int64 { return 1000 }}
		pf.pol.Store(newPolicy(&Config{Filter: &Filter{Rules: []FilterRule{{
			SrcIPs:   []netip.Prefix{netip.PrefixFrom(peer, 32)},
			DstPorts: []PortRange{{First: 80, Last: 80}},
		}}}}))
		var replies [][]byte
		tf := &tunFilter{Device: rt, pf: pf, reply: func(p []byte) { replies = append(replies, p) }}
		const offset = 16
		for _, p := range [][]byte{
			ipv4Packet(protoTCP, peer, self, 4000, 22, tcpSYN), // denied: reset
			ipv4Packet(protoUDP, peer, self, 4000, 53, 0),      // denied: nothing
			ipv4Packet(protoTCP, peer, self, 4001, 80, tcpSYN), // allowed: passes
		} {
			tf.Write([][]byte{append(make([]byte, offset), p...)}, offset)
		}
		if len(rt.written) != 1 {
			t.Errorf("%d packets reached the host, want 1 (the allowed SYN)", len(rt.written))
		}
		if len(replies) != 1 {
			t.Fatalf("%d replies, want 1 (a reset for the denied SYN)", len(replies))
		}
		if pi, _ := parsePacket(replies[0]); pi.dst != peer || pi.sport != 22 {
			t.Errorf("reply = %+v, want a reset from port 22 to %v", pi, peer)
		}
	})
}

// TestSteer checks the port rewriting of the engine's TUN-mode listeners:
// a peer's segments to addr:port reach the bound port, the host's replies
// leave from port again, and checksums stay valid.
func TestSteer(t *testing.T) {
	self := netip.MustParseAddr("100.64.0.1")
	peer := netip.MustParseAddr("100.64.0.2")
	self6 := netip.MustParseAddr("fd7a:bea0:b0de::6440:1")
	peer6 := netip.MustParseAddr("fd7a:bea0:b0de::6440:2")
	s := &steerMap{
		in:  map[netip.AddrPort]uint16{netip.AddrPortFrom(self, 80): 40000, netip.AddrPortFrom(self6, 80): 40001},
		out: map[netip.AddrPort]uint16{netip.AddrPortFrom(self, 40000): 80, netip.AddrPortFrom(self6, 40001): 80},
	}
	withSum := func(p []byte) []byte {
		p = append(p, "some payload"...)
		var sum uint32
		var tcp []byte
		if p[0]>>4 == 4 {
			binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
			sum, tcp = uint32(checksum(0, p[12:20])), p[20:]
		} else {
			binary.BigEndian.PutUint16(p[4:], uint16(len(p)-40))
			sum, tcp = uint32(checksum(0, p[8:40])), p[40:]
		}
		binary.BigEndian.PutUint16(tcp[16:], ^checksum(sum+protoTCP+uint32(len(tcp)), tcp))
		return p
	}
	valid := func(p []byte) bool {
		var sum uint32
		var tcp []byte
		if p[0]>>4 == 4 {
			sum, tcp = uint32(checksum(0, p[12:20])), p[20:]
		} else {
			sum, tcp = uint32(checksum(0, p[8:40])), p[40:]
		}
		return checksum(sum+protoTCP+uint32(len(tcp)), tcp) == 0xffff
	}
	tests := []struct {
		name           string
		pkt            []byte
		in             bool
		sport, dport   uint16
		wantS, wantDst uint16
	}{
		{"peer to a steered port", withSum(ipv4Packet(protoTCP, peer, self, 5000, 80, tcpSYN)), true, 5000, 80, 5000, 40000},
		{"peer to a steered port v6", withSum(ipv6Packet(protoTCP, peer6, self6, 5000, 80, tcpACK)), true, 5000, 80, 5000, 40001},
		{"reply from the bound port", withSum(ipv4Packet(protoTCP, self, peer, 40000, 5000, tcpSYN|tcpACK)), false, 40000, 5000, 80, 5000},
		{"reply from the bound port v6", withSum(ipv6Packet(protoTCP, self6, peer6, 40001, 5000, tcpACK)), false, 40001, 5000, 80, 5000},
		{"another port", withSum(ipv4Packet(protoTCP, peer, self, 5000, 81, tcpSYN)), true, 5000, 81, 5000, 81},
		{"the host dialing out from port 80 is left alone", withSum(ipv4Packet(protoTCP, self, peer, 80, 5000, tcpSYN)), false, 80, 5000, 80, 5000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s.rewrite(tt.pkt, tt.in)
			pi, _ := parsePacket(tt.pkt)
			if pi.sport != tt.wantS || pi.dport != tt.wantDst {
				t.Errorf("ports = %d -> %d, want %d -> %d", pi.sport, pi.dport, tt.wantS, tt.wantDst)
			}
			if !valid(tt.pkt) {
				t.Errorf("TCP checksum does not verify after the rewrite")
			}
		})
	}
}

// TestTUNFilterWindows checks that TUN mode counts the packets
// wireguard-go holds, as the userspace TUN does: what Read hands it stays
// in the outbound window (the bind releases it when sent), and Write
// releases the inbound window by every packet it is given, refused or
// not.
func TestTUNFilterWindows(t *testing.T) {
	self := netip.MustParseAddr("100.64.0.1")
	peer := netip.MustParseAddr("100.64.0.2")
	const offset = 16
	out, in := inflight.New(100, time.Hour), inflight.New(100, time.Hour)
	rt := &recordingTUN{}
	pf := &packetFilter{now: func() int64 { return 1000 }}
	pf.pol.Store(newPolicy(&Config{Filter: &Filter{}})) // nothing inbound allowed
	tf := &tunFilter{Device: rt, pf: pf, outWin: out, inWin: in, readWait: out.NewWaiter()}

	rt.toRead = [][]byte{
		ipv4Packet(protoUDP, self, peer, 4000, 53, 0),
		ipv4Packet(protoUDP, self, peer, 4001, 53, 0),
		ipv4Packet(protoUDP, self, peer, 4002, 53, 0),
	}
	bufs := [][]byte{make([]byte, 1500), make([]byte, 1500), make([]byte, 1500), make([]byte, 1500)}
	if n, err := tf.Read(bufs, make([]int, len(bufs)), offset); n != 3 || err != nil {
		t.Fatalf("Read = %d, %v; want 3 packets", n, err)
	}
	if got := out.Len(); got != 3 {
		t.Errorf("outbound window holds %d after reading 3 packets, want 3", got)
	}

	in.Add(5) // the bind handed wireguard-go five packets
	reply := append(make([]byte, offset), ipv4Packet(protoUDP, peer, self, 53, 4000, 0)...)
	refused := append(make([]byte, offset), ipv4Packet(protoUDP, peer, self, 53, 9999, 0)...)
	tf.Write([][]byte{reply, refused}, offset)
	if len(rt.written) != 1 {
		t.Fatalf("%d packets reached the host, want the reply alone", len(rt.written))
	}
	if got := in.Len(); got != 3 {
		t.Errorf("inbound window holds %d after 2 of 5 packets were written, want 3", got)
	}
}
