package netstack

import (
	"crypto/rand"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"beam.dev/beam/types/key"
)

// natProxy stands between a client engine and a server engine like a NAT:
// the client sends to front; the proxy forwards from an outside socket
// whose port changes on rebind, as a NAT mapping does when it expires.
type natProxy struct {
	t      testing.TB
	front  *net.UDPConn
	server *net.UDPAddr

	mu      sync.Mutex // guards the following fields
	client  *net.UDPAddr
	outside *net.UDPConn

	wg sync.WaitGroup
}

func newNATProxy(t testing.TB, server netip.AddrPort) *natProxy {
	front, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	p := &natProxy{t: t, front: front, server: net.UDPAddrFromAddrPort(server)}
	p.rebind()
	p.wg.Add(1)
	go p.frontLoop()
	t.Cleanup(func() {
		front.Close()
		p.mu.Lock()
		p.outside.Close()
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

func (p *natProxy) frontAddr() netip.AddrPort {
	return p.front.LocalAddr().(*net.UDPAddr).AddrPort()
}

func (p *natProxy) outsideAddr() netip.AddrPort {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.outside.LocalAddr().(*net.UDPAddr).AddrPort()
}

// rebind replaces the outside socket: the server sees a new source port.
func (p *natProxy) rebind() {
	o, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		p.t.Fatal(err)
	}
	p.mu.Lock()
	old := p.outside
	p.outside = o
	p.mu.Unlock()
	if old != nil {
		old.Close()
	}
	p.wg.Add(1)
	go p.outsideLoop(o)
}

func (p *natProxy) frontLoop() {
	defer p.wg.Done()
	buf := make([]byte, 65536)
	for {
		n, from, err := p.front.ReadFromUDP(buf)
		if err != nil {
			return
		}
		p.mu.Lock()
		p.client = from
		o := p.outside
		p.mu.Unlock()
		o.WriteToUDP(buf[:n], p.server)
	}
}

func (p *natProxy) outsideLoop(o *net.UDPConn) {
	defer p.wg.Done()
	buf := make([]byte, 65536)
	for {
		n, _, err := o.ReadFromUDP(buf)
		if err != nil {
			return
		}
		p.mu.Lock()
		c := p.client
		p.mu.Unlock()
		if c != nil {
			p.front.WriteToUDP(buf[:n], c)
		}
	}
}

func TestRoaming(t *testing.T) {
	nodes := newNodes(t, 2, nil)
	a, b := nodes[0], nodes[1]
	resetPeers(t, nodes)
	ln, err := a.e.Listen("tcp", ":7")
	if err != nil {
		t.Fatal(err)
	}
	tcpEchoServer(t, ln)

	// b reaches a only through the NAT; a knows no endpoint for b, so it
	// must learn b's address from b's handshake. Disco is off for this
	// test: it checks learning from WireGuard traffic alone (with disco,
	// a would have found b's own address by pinging it).
	aPort := a.e.LocalPort()
	nat := newNATProxy(t, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), aPort))
	bcfg := b.cfg
	bcfg.Peers = []Peer{a.peer()}
	bcfg.Peers[0].Endpoints = []netip.AddrPort{nat.frontAddr()}
	bcfg.Peers[0].DiscoKey = key.DiscoPublic{}
	if err := b.e.Reconfig(bcfg); err != nil {
		t.Fatal(err)
	}
	acfg := a.cfg
	acfg.Peers = []Peer{b.peer()}
	acfg.Peers[0].Endpoints = nil
	acfg.Peers[0].DiscoKey = key.DiscoPublic{}
	if err := a.e.Reconfig(acfg); err != nil {
		t.Fatal(err)
	}

	conn, err := b.e.DialContext(t.Context(), "tcp", fmt.Sprintf("%v:7", a.v4))
	if err != nil {
		t.Fatalf("dial through NAT: %v", err)
	}
	defer conn.Close()
	echo := func() {
		t.Helper()
		msg := make([]byte, 3000)
		rand.Read(msg)
		conn.SetDeadline(time.Now().Add(15 * time.Second))
		if _, err := conn.Write(msg); err != nil {
			t.Fatalf("write: %v", err)
		}
		got := make([]byte, len(msg))
		if _, err := ioReadFull(conn, got); err != nil {
			t.Fatalf("read: %v", err)
		}
		if string(got) != string(msg) {
			t.Fatal("echo mismatch")
		}
	}
	echo()
	wantEndpoint := func(want netip.AddrPort) {
		t.Helper()
		st := a.e.Status()
		if len(st) != 1 || st[0].Endpoint != want || st[0].Path != "direct" {
			t.Fatalf("a's view of b: %+v, want endpoint %v", st, want)
		}
	}
	wantEndpoint(nat.outsideAddr())

	for range 2 {
		nat.rebind()
		echo()
		wantEndpoint(nat.outsideAddr())
	}
	// New connections work too.
	checkTCPEcho(t, t.Context(), b, fmt.Sprintf("%v:7", a.v4))
}

func ioReadFull(c net.Conn, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		m, err := c.Read(b[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}
