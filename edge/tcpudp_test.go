package edge

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"beam.dev/beam/internal/proxyproto"
)

// parseProxyHeader is a PROXY protocol v1/v2 decoder written from
// haproxy's proxy-protocol.txt, independent of the encoder.
func parseProxyHeader(br *bufio.Reader) (version int, src, dst netip.AddrPort, err error) {
	sig, err := br.Peek(12)
	if err != nil {
		return 0, src, dst, err
	}
	if string(sig) == "\r\n\r\n\x00\r\nQUIT\n" {
		var hdr [16]byte
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			return 0, src, dst, err
		}
		if hdr[12]>>4 != 2 || hdr[12]&0xf != 1 {
			return 0, src, dst, fmt.Errorf("ver_cmd %#x", hdr[12])
		}
		body := make([]byte, binary.BigEndian.Uint16(hdr[14:]))
		if _, err := io.ReadFull(br, body); err != nil {
			return 0, src, dst, err
		}
		switch hdr[13] {
		case 0x11:
			if len(body) < 12 {
				return 0, src, dst, errors.New("short v4 body")
			}
			s, _ := netip.AddrFromSlice(body[0:4])
			d, _ := netip.AddrFromSlice(body[4:8])
			return 2, netip.AddrPortFrom(s, binary.BigEndian.Uint16(body[8:])), netip.AddrPortFrom(d, binary.BigEndian.Uint16(body[10:])), nil
		case 0x21:
			if len(body) < 36 {
				return 0, src, dst, errors.New("short v6 body")
			}
			s, _ := netip.AddrFromSlice(body[0:16])
			d, _ := netip.AddrFromSlice(body[16:32])
			return 2, netip.AddrPortFrom(s, binary.BigEndian.Uint16(body[32:])), netip.AddrPortFrom(d, binary.BigEndian.Uint16(body[34:])), nil
		}
		return 0, src, dst, fmt.Errorf("family %#x", hdr[13])
	}
	line, err := br.ReadString('\n')
	if err != nil {
		return 0, src, dst, err
	}
	f := strings.Fields(strings.TrimSuffix(line, "\r\n"))
	if len(f) != 6 || f[0] != "PROXY" || (f[1] != "TCP4" && f[1] != "TCP6") || !strings.HasSuffix(line, "\r\n") {
		return 0, src, dst, fmt.Errorf("bad v1 line %q", line)
	}
	sa, err1 := netip.ParseAddr(f[2])
	da, err2 := netip.ParseAddr(f[3])
	sp, err3 := strconv.ParseUint(f[4], 10, 16)
	dp, err4 := strconv.ParseUint(f[5], 10, 16)
	if err := errors.Join(err1, err2, err3, err4); err != nil {
		return 0, src, dst, err
	}
	return 1, netip.AddrPortFrom(sa, uint16(sp)), netip.AddrPortFrom(da, uint16(dp)), nil
}

// proxyOrigin accepts TCP connections, parses a PROXY header if want > 0,
// reports what it saw on the first line, then echoes.
func proxyOrigin(t *testing.T, want int) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				if want > 0 {
					v, src, dst, err := parseProxyHeader(br)
					if err != nil {
						fmt.Fprintf(c, "error %v\n", err)
						return
					}
					fmt.Fprintf(c, "v%d %v %v\n", v, src, dst)
				} else {
					fmt.Fprintf(c, "plain\n")
				}
				io.Copy(c, br)
			}()
		}
	}()
	return ln.Addr().String()
}

func TestTCPRouteProxyProtocol(t *testing.T) {
	for _, v := range []int{0, 1, 2} {
		t.Run(fmt.Sprint("v", v), func(t *testing.T) {
			ov := newOverlay()
			e := newTestEdge(t, ov, Options{})
			target := ov.add(proxyOrigin(t, v))
			setRoutes(t, e, Route{Proto: ProtoTCP, PublicPort: 7000, Targets: []netip.AddrPort{target}, Policy: Policy{ProxyProtocol: v}})
			addr := serve(t, "tcp", func(ctx context.Context, ln net.Listener) error { return e.ServeTCP(ctx, 7000, ln) })
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			br := bufio.NewReader(c)
			line, err := br.ReadString('\n')
			if err != nil {
				t.Fatal(err)
			}
			want := "plain\n"
			if v > 0 {
				want = fmt.Sprintf("v%d %v %v\n", v, c.LocalAddr(), c.RemoteAddr())
			}
			if line != want {
				t.Fatalf("origin saw %q, want %q", line, want)
			}
			// Echo, then half-close: the origin's EOF comes back.
			io.WriteString(c, "hello through the edge")
			c.(*net.TCPConn).CloseWrite()
			rest, err := io.ReadAll(br)
			if err != nil || string(rest) != "hello through the edge" {
				t.Errorf("echo = %q, %v", rest, err)
			}
		})
	}
}

func TestTCPRoutePolicyAndMissingRoute(t *testing.T) {
	ov := newOverlay()
	e := newTestEdge(t, ov, Options{})
	target := ov.add(proxyOrigin(t, 0))
	setRoutes(t, e, Route{Proto: ProtoTCP, PublicPort: 7001, Targets: []netip.AddrPort{target},
		Policy: Policy{DenyCIDRs: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}}})
	for _, port := range []uint16{7001, 7002} {
		addr := serve(t, "tcp", func(ctx context.Context, ln net.Listener) error { return e.ServeTCP(ctx, port, ln) })
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		b, err := io.ReadAll(c)
		c.Close()
		if err != nil || len(b) != 0 {
			t.Errorf("port %d: read %q, %v; want the connection closed without data", port, b, err)
		}
	}
}

func TestProxyHeaderEncoding(t *testing.T) {
	v4s, v4d := mustAP("192.0.2.1:1234"), mustAP("198.51.100.2:443")
	v6s := mustAP("[2001:db8::1]:5555")
	tests := []struct {
		name     string
		v        int
		src, dst netip.AddrPort
		want     string
	}{
		{"v1 tcp4", 1, v4s, v4d, "PROXY TCP4 192.0.2.1 198.51.100.2 1234 443\r\n"},
		{"v1 tcp6 mixed", 1, v6s, v4d, "PROXY TCP6 2001:db8::1 ::ffff:198.51.100.2 5555 443\r\n"},
		{"v1 unknown", 1, netip.AddrPort{}, v4d, "PROXY UNKNOWN\r\n"},
		{"v2 tcp4", 2, v4s, v4d, "\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c\xc0\x00\x02\x01\xc6\x33\x64\x02\x04\xd2\x01\xbb"},
		{"v2 local", 2, netip.AddrPort{}, v4d, "\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := proxyproto.AppendHeader(nil, tt.v, "tcp", tt.src, tt.dst)
			if !bytes.Equal(got, []byte(tt.want)) {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
	// v2 over IPv6 round-trips through the decoder.
	hdr := proxyproto.AppendHeader(nil, 2, "tcp", v6s, mustAP("[2001:db8::2]:80"))
	v, s, d, err := parseProxyHeader(bufio.NewReader(bytes.NewReader(hdr)))
	if err != nil || v != 2 || s != v6s || d != mustAP("[2001:db8::2]:80") {
		t.Errorf("v6 round trip: %d %v %v %v", v, s, d, err)
	}
}

func TestUDPRoute(t *testing.T) {
	ov := newOverlay()
	e := newTestEdge(t, ov, Options{UDPIdleTimeout: 300 * time.Millisecond})
	// The origin echoes each datagram prefixed with the sender's address.
	opc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer opc.Close()
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := opc.ReadFrom(buf)
			if err != nil {
				return
			}
			opc.WriteTo(fmt.Appendf(nil, "%v|%s", from, buf[:n]), from)
		}
	}()
	target := ov.add(opc.LocalAddr().String())
	setRoutes(t, e, Route{Proto: ProtoUDP, PublicPort: 5353, Targets: []netip.AddrPort{target}})

	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	edgeAddr := pc.LocalAddr()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- e.ServeUDP(ctx, 5353, pc) }()
	defer func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("ServeUDP = %v", err)
		}
	}()

	// exchange sends msg from c and returns the origin-side source address
	// and the echoed message.
	exchange := func(c net.PacketConn, msg string) (string, string) {
		t.Helper()
		if _, err := c.WriteTo([]byte(msg), edgeAddr); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 2048)
		n, _, err := c.ReadFrom(buf)
		if err != nil {
			t.Fatalf("no reply to %q: %v", msg, err)
		}
		from, body, _ := strings.Cut(string(buf[:n]), "|")
		return from, body
	}
	c1, _ := net.ListenPacket("udp", "127.0.0.1:0")
	c2, _ := net.ListenPacket("udp", "127.0.0.1:0")
	defer c1.Close()
	defer c2.Close()
	f1a, b1 := exchange(c1, "one-a")
	f2, b2 := exchange(c2, "two")
	f1b, b3 := exchange(c1, "one-b")
	if b1 != "one-a" || b2 != "two" || b3 != "one-b" {
		t.Errorf("replies crossed: %q %q %q", b1, b2, b3)
	}
	if f1a != f1b || f1a == f2 {
		t.Errorf("flows: client1 %s then %s, client2 %s; want client1 stable and apart from client2", f1a, f1b, f2)
	}
	// A large datagram stays one datagram.
	big := strings.Repeat("x", 1400)
	if _, body := exchange(c1, big); body != big {
		t.Errorf("large datagram came back as %d bytes", len(body))
	}
	// After the idle timeout the flow is gone; a new one starts.
	// Flows hold per-client slots, so their count shows expiry.
	flows := func() int {
		e.clients.mu.Lock()
		defer e.clients.mu.Unlock()
		return e.clients.n[netip.MustParseAddr("127.0.0.1")]
	}
	if n := flows(); n != 2 {
		t.Errorf("%d flows, want 2", n)
	}
	waitFor(t, 5*time.Second, "flow expiry", func() bool { return flows() == 0 })
	if f, _ := exchange(c1, "again"); f == f1a {
		t.Errorf("after expiry the flow still uses %s", f)
	}
}
