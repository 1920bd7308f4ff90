package netstack

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"beam.dev/beam/types/key"
	"go.uber.org/goleak"
)

func TestGarbageIgnored(t *testing.T) {
	nodes := newNodes(t, 2, nil)
	a, b := nodes[0], nodes[1]
	ln, err := a.e.Listen("tcp", ":7")
	if err != nil {
		t.Fatal(err)
	}
	tcpEchoServer(t, ln)
	checkTCPEcho(t, t.Context(), b, fmt.Sprintf("%v:7", a.v4))

	c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), a.e.LocalPort())))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var payloads [][]byte
	for _, n := range []int{0, 1, 3, 4, 31, 32, 64, 92, 148, 1500} {
		p := make([]byte, n)
		rand.Read(p)
		payloads = append(payloads, p)
		// The same sizes with a valid WireGuard type in front.
		for typ := uint32(1); typ <= 4 && n >= 4; typ++ {
			q := make([]byte, n)
			rand.Read(q)
			binary.LittleEndian.PutUint32(q, typ)
			payloads = append(payloads, q)
		}
	}
	for range 5 {
		for _, p := range payloads {
			if _, err := c.Write(p); err != nil {
				t.Fatalf("write garbage: %v", err)
			}
		}
	}
	c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	buf := make([]byte, 2048)
	if n, err := c.Read(buf); err == nil {
		t.Fatalf("garbage got a %d-byte reply", n)
	}
	// The engine still works.
	checkTCPEcho(t, t.Context(), b, fmt.Sprintf("%v:7", a.v4))
	for _, s := range a.e.Status() {
		if s.Endpoint.Port() == uint16(c.LocalAddr().(*net.UDPAddr).Port) {
			t.Fatalf("garbage sender became a peer endpoint: %+v", s)
		}
	}
}

func TestCloseLeavesNoGoroutines(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	nodes := newNodes(t, 2, nil)
	a, b := nodes[0], nodes[1]
	ln, err := a.e.Listen("tcp", ":7")
	if err != nil {
		t.Fatal(err)
	}
	// Forwarded TCP and UDP flows that are still open at Close.
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer hl.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := hl.Accept()
		if err == nil {
			accepted <- c
		}
		close(accepted)
	}()
	fc, err := b.e.DialContext(t.Context(), "tcp", fmt.Sprintf("%v:%d", a.v4, hl.Addr().(*net.TCPAddr).Port))
	if err != nil {
		t.Fatal(err)
	}
	hc := <-accepted
	hu, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer hu.Close()
	uc, err := b.e.DialContext(t.Context(), "udp", fmt.Sprintf("%v:%d", a.v4, hu.LocalAddr().(*net.UDPAddr).Port))
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 10)
	for {
		uc.Write([]byte("x"))
		hu.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		if _, _, err := hu.ReadFrom(buf); err == nil {
			break
		}
	}
	for _, n := range nodes {
		if err := n.e.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		if err := n.e.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
	}
	ln.Close()
	fc.Close()
	uc.Close()
	hc.Close()
	if _, err := a.e.DialContext(t.Context(), "tcp", fmt.Sprintf("%v:7", b.v4)); err == nil {
		t.Fatal("dial after Close succeeded")
	}
	if err := a.e.Reconfig(Config{}); err == nil {
		t.Fatal("Reconfig after Close succeeded")
	}
}

func TestNewValidates(t *testing.T) {
	if _, err := New(Options{}); err == nil {
		t.Fatal("New without a key succeeded")
	}
	e, err := New(Options{PrivateKey: key.NewNode()})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if err := e.Reconfig(Config{Peers: []Peer{{}}}); err == nil {
		t.Fatal("Reconfig with a zero peer key succeeded")
	}
	for _, bad := range [][2]string{{"tcp", "example.com:80"}, {"sctp", "100.64.0.1:1"}, {"tcp4", "[fd7a::1]:80"}, {"tcp", "100.64.0.1"}} {
		if _, err := e.DialContext(t.Context(), bad[0], bad[1]); err == nil {
			t.Errorf("DialContext(%q, %q) succeeded", bad[0], bad[1])
		}
	}
	eps := e.LocalEndpoints()
	if len(eps) < 2 {
		t.Fatalf("LocalEndpoints: %v, want at least the loopbacks", eps)
	}
	last2 := eps[len(eps)-2:]
	if last2[0].Addr() != netip.MustParseAddr("127.0.0.1") || last2[1].Addr() != netip.IPv6Loopback() {
		t.Errorf("LocalEndpoints: %v, want loopbacks last", eps)
	}
	for _, ep := range eps {
		if ep.Port() != e.LocalPort() || ep.Port() == 0 {
			t.Errorf("endpoint %v: port is not LocalPort %d", ep, e.LocalPort())
		}
	}
}

// TestLocalEndpointsFamilies: interface addresses of a family the engine
// has no socket for are not advertised, loopbacks included; link-local,
// loopback and unspecified interface addresses never are.
func TestLocalEndpointsFamilies(t *testing.T) {
	ipnet := func(s string) net.Addr {
		p := netip.MustParsePrefix(s)
		return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
	}
	addrs := []net.Addr{
		ipnet("192.0.2.7/24"), ipnet("2001:db8::7/64"), ipnet("127.0.0.1/8"), ipnet("::1/128"),
		ipnet("fe80::1/64"), ipnet("169.254.1.1/16"), ipnet("0.0.0.0/0"),
		&net.IPAddr{IP: net.ParseIP("198.51.100.1")}, // not an *net.IPNet: skipped
	}
	ap := func(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
	for _, tc := range []struct {
		name   string
		v4, v6 bool
		want   []netip.AddrPort
	}{
		{"both", true, true, []netip.AddrPort{ap("192.0.2.7:41641"), ap("[2001:db8::7]:41641"), ap("127.0.0.1:41641"), ap("[::1]:41641")}},
		{"IPv4 only", true, false, []netip.AddrPort{ap("192.0.2.7:41641"), ap("127.0.0.1:41641")}},
		{"IPv6 only", false, true, []netip.AddrPort{ap("[2001:db8::7]:41641"), ap("[::1]:41641")}},
	} {
		got := localEndpoints(addrs, 41641, tc.v4, tc.v6)
		if fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("%s: localEndpoints = %v, want %v", tc.name, got, tc.want)
		}
	}
}
