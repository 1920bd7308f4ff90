package dnsserver

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// listenPair listens on UDP and TCP on the same loopback port.
func listenPair(t testing.TB) (net.PacketConn, net.Listener) {
	t.Helper()
	for range 20 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("listen udp: %v", err)
		}
		ln, err := net.Listen("tcp", pc.LocalAddr().String())
		if err != nil {
			pc.Close()
			continue // port taken for TCP; try another
		}
		return pc, ln
	}
	t.Fatal("no free UDP+TCP port pair on loopback")
	return nil, nil
}

// server is what both Resolver and Zone offer.
type server interface {
	ServePacket(context.Context, net.PacketConn) error
	ServeStream(context.Context, net.Listener) error
}

// startServer serves s on a loopback UDP+TCP port pair until the test ends, and
// checks that both serve calls return nil when stopped.
func startServer(t testing.TB, s server) string {
	t.Helper()
	pc, ln := listenPair(t)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 2)
	go func() { errc <- s.ServePacket(ctx, pc) }()
	go func() { errc <- s.ServeStream(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		for range 2 {
			if err := <-errc; err != nil {
				t.Errorf("serve returned %v, want nil", err)
			}
		}
	})
	addr := pc.LocalAddr().String()
	waitServing(t, addr)
	return addr
}

// waitServing blocks until a DNS server answers on addr over UDP and TCP.
func waitServing(t testing.TB, addr string) {
	t.Helper()
	for _, netw := range []string{"udp", "tcp"} {
		c := &dns.Client{Net: netw, Timeout: 200 * time.Millisecond}
		m := new(dns.Msg)
		m.SetQuestion("ready.invalid.", dns.TypeANY) // answered locally by both servers
		var err error
		for range 25 {
			if _, _, err = c.Exchange(m, addr); err == nil {
				break
			}
		}
		if err != nil {
			t.Fatalf("server on %s/%s never answered: %v", addr, netw, err)
		}
	}
}

// query sends one question with the miekg/dns client and returns the reply.
func query(t testing.TB, netw, addr, name string, qtype uint16) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	return exchange(t, netw, addr, m)
}

func exchange(t testing.TB, netw, addr string, m *dns.Msg) *dns.Msg {
	t.Helper()
	c := &dns.Client{Net: netw, Timeout: 3 * time.Second, UDPSize: 65535}
	r, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("exchange %s %s over %s: %v", m.Question[0].Name, dns.TypeToString[m.Question[0].Qtype], netw, err)
	}
	return r
}

// testUpstream is a real DNS server on loopback that counts the queries it gets.
type testUpstream struct {
	addr    netip.AddrPort
	udp     atomic.Int64
	tcp     atomic.Int64
	handler func(w dns.ResponseWriter, req *dns.Msg, tcp bool)

	mu    sync.Mutex // guards names
	names []string
}

func (u *testUpstream) count() int64 { return u.udp.Load() + u.tcp.Load() }

func (u *testUpstream) seen() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.names...)
}

// startUpstream runs a miekg/dns server with handler h on loopback UDP and TCP.
func startUpstream(t testing.TB, h func(w dns.ResponseWriter, req *dns.Msg, tcp bool)) *testUpstream {
	t.Helper()
	u := &testUpstream{handler: h}
	pc, ln := listenPair(t)
	u.addr = netip.MustParseAddrPort(pc.LocalAddr().String())
	for _, tcp := range []bool{false, true} {
		handler := dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
			if tcp {
				u.tcp.Add(1)
			} else {
				u.udp.Add(1)
			}
			u.mu.Lock()
			u.names = append(u.names, req.Question[0].Name)
			u.mu.Unlock()
			u.handler(w, req, tcp)
		})
		srv := &dns.Server{Handler: handler}
		if tcp {
			srv.Listener = ln
		} else {
			srv.PacketConn = pc
		}
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		done := make(chan error, 1)
		go func() { done <- srv.ActivateAndServe() }()
		select {
		case <-started:
		case err := <-done:
			t.Fatalf("upstream: %v", err)
		}
		t.Cleanup(func() {
			_ = srv.Shutdown()
			<-done
		})
	}
	return u
}

// answerA is an upstream handler giving every A query the address addr with ttl,
// and NODATA with an SOA to anything else.
func answerA(addr string, ttl uint32) func(dns.ResponseWriter, *dns.Msg, bool) {
	return func(w dns.ResponseWriter, req *dns.Msg, _ bool) {
		m := new(dns.Msg)
		m.SetReply(req)
		m.RecursionAvailable = true
		q := req.Question[0]
		if q.Qtype == dns.TypeA {
			m.Answer = append(m.Answer, &dns.A{Hdr: hdr(q.Name, dns.TypeA, ttl), A: net.ParseIP(addr)})
		} else {
			m.Ns = append(m.Ns, testSOA("example.", 300, 60))
		}
		_ = w.WriteMsg(m)
	}
}

func testSOA(zone string, ttl, minttl uint32) *dns.SOA {
	return &dns.SOA{Hdr: hdr(zone, dns.TypeSOA, ttl), Ns: "ns." + zone, Mbox: "h." + zone, Serial: 1, Minttl: minttl}
}

// fakeClock is an injectable clock moved by hand.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// deadAddr returns a loopback UDP address nothing listens on.
func deadAddr(t testing.TB) netip.AddrPort {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ap := netip.MustParseAddrPort(pc.LocalAddr().String())
	pc.Close()
	return ap
}

// blackhole returns a loopback UDP address that reads queries and never answers.
func blackhole(t testing.TB) netip.AddrPort {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() { pc.Close(); <-done })
	return netip.MustParseAddrPort(pc.LocalAddr().String())
}

func addrsOf(m *dns.Msg) []string {
	var out []string
	for _, rr := range m.Answer {
		switch rr := rr.(type) {
		case *dns.A:
			out = append(out, rr.A.String())
		case *dns.AAAA:
			out = append(out, rr.AAAA.String())
		case *dns.PTR:
			out = append(out, rr.Ptr)
		case *dns.TXT:
			out = append(out, rr.Txt...)
		}
	}
	return out
}
