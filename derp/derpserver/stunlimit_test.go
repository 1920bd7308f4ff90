package derpserver_test

import (
	"errors"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"beam.dev/beam/derp"
	"beam.dev/beam/derp/derpserver"
)

// startServerSTUN serves s's STUN responder on a loopback UDP socket
// until the test ends.
func startServerSTUN(t *testing.T, s *derpserver.Server) *net.UDPAddr {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	ctx := t.Context()
	wg.Go(func() {
		if err := s.ServeSTUN(ctx, pc); err != nil {
			t.Errorf("ServeSTUN: %v", err)
		}
	})
	t.Cleanup(func() {
		wg.Wait()
		pc.Close()
	})
	return pc.LocalAddr().(*net.UDPAddr)
}

// stunSource is a UDP socket on loopback address ip that sends Binding
// requests to a responder.
type stunSource struct {
	t    *testing.T
	conn *net.UDPConn
	dst  *net.UDPAddr
}

func newSTUNSource(t *testing.T, ip string, dst *net.UDPAddr) *stunSource {
	t.Helper()
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(ip)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &stunSource{t: t, conn: conn, dst: dst}
}

// send sends n Binding requests.
func (s *stunSource) send(n int) {
	s.t.Helper()
	for range n {
		_, req := derp.STUNBindingRequest()
		if _, err := s.conn.WriteToUDP(req, s.dst); err != nil {
			s.t.Fatal(err)
		}
	}
}

// answers reads n answers, failing the test if they do not come.
func (s *stunSource) answers(n int) {
	s.t.Helper()
	s.conn.SetReadDeadline(time.Now().Add(testTimeout))
	buf := make([]byte, 1500)
	for i := range n {
		m, _, err := s.conn.ReadFromUDP(buf)
		if err != nil {
			s.t.Fatalf("answer %d of %d from %v: %v", i+1, n, s.conn.LocalAddr(), err)
		}
		if _, mapped, err := derp.ParseSTUNResponse(buf[:m]); err != nil || mapped != s.conn.LocalAddr().(*net.UDPAddr).AddrPort() {
			s.t.Fatalf("answer %d: mapped %v, %v", i+1, mapped, err)
		}
	}
}

// noAnswer checks that no answer is waiting. The responder answers in
// the order requests arrive, and loopback delivers at once, so a check
// made after a later request's answer has arrived sees any answer to an
// earlier one.
func (s *stunSource) noAnswer() {
	s.t.Helper()
	s.conn.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	buf := make([]byte, 1500)
	if _, _, err := s.conn.ReadFromUDP(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		s.t.Fatalf("%v got an answer past its limit (err %v)", s.conn.LocalAddr(), err)
	}
}

func frozenClock() time.Time { return time.Unix(1e9, 0) }

func TestSTUNRateLimitPerSource(t *testing.T) {
	s := derpserver.New(derpserver.Options{})
	t.Cleanup(func() { s.Close() })
	const burst = 8
	derpserver.SetSTUNLimitForTest(s, burst, 16, frozenClock)
	addr := startServerSTUN(t, s)
	a := newSTUNSource(t, "127.0.0.2", addr)
	b := newSTUNSource(t, "127.0.0.3", addr)

	a.send(burst)
	a.answers(burst)
	a.send(5) // past the limit
	b.send(1) // another source still gets its answer
	b.answers(1)
	a.noAnswer()
	if got := s.Stats().STUNDropped; got != 5 {
		t.Fatalf("STUNDropped = %d, want 5", got)
	}
	// A second port of the same relay shares the limit.
	addr2 := startServerSTUN(t, s)
	a2 := newSTUNSource(t, "127.0.0.2", addr2)
	a2.send(1)
	b.send(1)
	b.answers(1)
	a2.noAnswer()
	reg := prometheus.NewRegistry()
	reg.MustRegister(s.Collector())
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var got float64 = -1
	for _, mf := range mfs {
		if mf.GetName() == "beam_relay_stun_dropped_total" {
			got = mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	if got != 6 {
		t.Fatalf("beam_relay_stun_dropped_total = %v, want 6", got)
	}
}

func TestSTUNRateLimitTableFull(t *testing.T) {
	s := derpserver.New(derpserver.Options{})
	t.Cleanup(func() { s.Close() })
	const burst = 8
	derpserver.SetSTUNLimitForTest(s, burst, 2, frozenClock)
	addr := startServerSTUN(t, s)
	a := newSTUNSource(t, "127.0.0.2", addr)
	b := newSTUNSource(t, "127.0.0.3", addr)
	a.send(1)
	a.answers(1)
	b.send(1)
	b.answers(1)

	// The table is full: new sources share one bucket of burst.
	c := newSTUNSource(t, "127.0.0.4", addr)
	d := newSTUNSource(t, "127.0.0.5", addr)
	c.send(burst)
	c.answers(burst)
	c.send(1)
	d.send(3)
	a.send(1) // a known source keeps its own bucket
	a.answers(1)
	c.noAnswer()
	d.noAnswer()
	if got := s.Stats().STUNDropped; got != 4 {
		t.Fatalf("STUNDropped = %d, want 4", got)
	}
}

// TestSTUNLimitAllowsNodeBursts checks that the default limits answer
// every request of a burst far larger than one node's discovery round
// (two requests per relay address): many nodes behind one NAT address
// refreshing at once.
func TestSTUNLimitAllowsNodeBursts(t *testing.T) {
	s := derpserver.New(derpserver.Options{})
	t.Cleanup(func() { s.Close() })
	addr := startServerSTUN(t, s)
	a := newSTUNSource(t, "127.0.0.2", addr)
	for range 4 {
		a.send(50)
		a.answers(50)
	}
	if got := s.Stats().STUNDropped; got != 0 {
		t.Fatalf("STUNDropped = %d, want 0", got)
	}
}
