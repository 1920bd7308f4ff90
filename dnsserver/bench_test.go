package dnsserver

import (
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/time/rate"
)

// benchTarget is one server under load and the query it gets.
type benchTarget struct {
	name  string
	query []byte
	conns []net.Conn // one per client goroutine
}

const benchClients = 4

func newBenchTarget(b *testing.B, name, addr, qname string) *benchTarget {
	b.Helper()
	m := new(dns.Msg)
	m.SetQuestion(qname, dns.TypeA)
	q, err := m.Pack()
	if err != nil {
		b.Fatal(err)
	}
	tg := &benchTarget{name: name, query: q}
	for range benchClients {
		c, err := net.Dial("udp", addr)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { c.Close() })
		tg.conns = append(tg.conns, c)
	}
	// One round trip each, outside the timing, so caches are warm.
	tg.run(b, benchClients)
	return tg
}

// run sends n queries, spread over the clients, each waiting for its answer,
// and returns how long they took.
func (tg *benchTarget) run(b *testing.B, n int) time.Duration {
	var wg sync.WaitGroup
	errs := make(chan error, len(tg.conns))
	start := time.Now()
	for i, c := range tg.conns {
		share := n / len(tg.conns)
		if i < n%len(tg.conns) {
			share++
		}
		wg.Go(func() {
			buf := make([]byte, 1500)
			q := append([]byte(nil), tg.query...)
			_ = c.SetDeadline(time.Now().Add(30 * time.Second))
			for j := range share {
				q[0], q[1] = byte(j>>8), byte(j)
				if _, err := c.Write(q); err != nil {
					errs <- err
					return
				}
				n, err := c.Read(buf)
				if err != nil {
					errs <- err
					return
				}
				// Answer count (bytes 6-7) must be non-zero and the ID ours.
				if n < 12 || buf[0] != q[0] || buf[1] != q[1] || buf[6]|buf[7] == 0 {
					errs <- &net.AddrError{Err: "bad answer", Addr: tg.name}
					return
				}
			}
		})
	}
	wg.Wait()
	el := time.Since(start)
	close(errs)
	for err := range errs {
		b.Fatalf("%s: %v", tg.name, err)
	}
	return el
}

// BenchmarkServeUDP measures queries per second over loopback UDP, in the same
// run, for: a trivial miekg/dns server answering a fixed A record (the
// baseline), the Resolver answering a local name, the Resolver answering a cached
// upstream name, and the Zone answering a wildcard name. It reports each rate and
// its ratio to the baseline (target >= 0.7).
func BenchmarkServeUDP(b *testing.B) {
	// Baseline: the smallest useful miekg/dns server.
	basePC, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	baseA := net.ParseIP("192.0.2.1")
	base := &dns.Server{PacketConn: basePC, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(req)
		m.Answer = []dns.RR{&dns.A{Hdr: hdr(req.Question[0].Name, dns.TypeA, 10), A: baseA}}
		_ = w.WriteMsg(m)
	})}
	started := make(chan struct{})
	base.NotifyStartedFunc = func() { close(started) }
	baseDone := make(chan error, 1)
	go func() { baseDone <- base.ActivateAndServe() }()
	<-started
	b.Cleanup(func() { _ = base.Shutdown(); <-baseDone })

	up := startUpstream(b, answerA("192.0.2.7", 3600))
	r := NewResolver(ResolverOptions{RateLimit: rate.Inf})
	r.SetRecords(testRecords(up.addr))
	rAddr := startServer(b, r)
	z := NewZone(ZoneOptions{Origin: "example.test", RateLimit: rate.Inf, EdgeAddrs: []netip.Addr{netip.MustParseAddr("192.0.2.10")}})
	zAddr := startServer(b, z)

	targets := []*benchTarget{
		newBenchTarget(b, "baseline", basePC.LocalAddr().String(), "fixed.example."),
		newBenchTarget(b, "resolver-local", rAddr, "beta.default.beam.internal."),
		newBenchTarget(b, "resolver-cached", rAddr, "www.example.com."),
		newBenchTarget(b, "zone", zAddr, "app.example.test."),
	}
	elapsed := make([]time.Duration, len(targets))
	b.ResetTimer()
	// Interleave in rounds so that noise from other load hits every target alike.
	for left := b.N; left > 0; {
		n := min(left, 400)
		for i, tg := range targets {
			elapsed[i] += tg.run(b, n)
		}
		left -= n
	}
	b.StopTimer()
	qps := make([]float64, len(targets))
	for i, tg := range targets {
		qps[i] = float64(b.N) / elapsed[i].Seconds()
		b.ReportMetric(qps[i], tg.name+"-q/s")
	}
	for i, tg := range targets[1:] {
		b.ReportMetric(qps[i+1]/qps[0], tg.name+"/baseline")
	}
}
