package connlimit

import (
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"testing"
	"time"
)

// fakeConn is a connection from src that records its Close.
type fakeConn struct {
	net.Conn // nil: only RemoteAddr and Close are called
	src      netip.Addr
	closed   bool
}

func (f *fakeConn) RemoteAddr() net.Addr {
	return net.TCPAddrFromAddrPort(netip.AddrPortFrom(f.src, 1))
}

func (f *fakeConn) Close() error { f.closed = true; return nil }

// admit offers a new connection from src to c; it returns the fake and
// the admitted conn, nil if refused.
func admit(c *Counter, src string) (*fakeConn, net.Conn) {
	f := &fakeConn{src: netip.MustParseAddr(src)}
	return f, c.Admit(f, nil)
}

func TestCounter(t *testing.T) {
	c := NewCounter(Limits{Max: 4, PerSource: 2})
	for _, tc := range []struct {
		src  string
		want bool
	}{
		{"192.0.2.1", true}, {"192.0.2.1", true}, {"192.0.2.1", false}, // per source
		{"2001:db8::1", true}, {"2001:db8::2", true}, {"2001:db8::3", false}, // one /64
		// The total is 4, held two by two: another source, holding
		// fewer, pushes one of them out; its second would hold as many
		// as the biggest holder, so it is refused.
		{"192.0.2.2", true}, {"192.0.2.2", false},
	} {
		f, got := admit(c, tc.src)
		if (got != nil) != tc.want {
			t.Errorf("Admit from %v: admitted %v, want %v (open %d)", tc.src, got != nil, tc.want, c.Open())
		}
		if got == nil && !f.closed {
			t.Errorf("Admit from %v refused the connection but did not close it", tc.src)
		}
	}
	if got, want := c.Refused(), int64(3); got != want {
		t.Errorf("Refused() = %d, want %d", got, want)
	}
	if got := c.PushedOut(); got != 1 {
		t.Errorf("PushedOut() = %d, want 1", got)
	}
	if got := c.Open(); got != 4 {
		t.Errorf("Open() = %d, want 4", got)
	}
}

// TestPushOut fills the cap from one address: a newcomer from another
// gets in by pushing out the oldest connection of the biggest holder,
// whose own newcomers are refused; a holder with fewer gets in again.
func TestPushOut(t *testing.T) {
	var released []string
	c := NewCounter(Limits{Max: 8})
	var big []*fakeConn
	for i := range 6 {
		f := &fakeConn{src: netip.MustParseAddr("192.0.2.1")}
		if c.Admit(f, func() { released = append(released, fmt.Sprint("big ", i)) }) == nil {
			t.Fatalf("conn %d under the cap refused", i)
		}
		big = append(big, f)
	}
	small1, s1 := admit(c, "192.0.2.2")
	small2, _ := admit(c, "192.0.2.2")
	if s1 == nil || c.Open() != 8 {
		t.Fatalf("open %d, want the cap of 8 full", c.Open())
	}

	// A newcomer from a third address pushes out big's oldest.
	if _, nc := admit(c, "192.0.2.3"); nc == nil {
		t.Fatal("a newcomer from a new address was refused at the full cap, want it admitted")
	}
	if !big[0].closed || big[1].closed {
		t.Errorf("after a newcomer: big's conns closed %v %v, want the oldest only", big[0].closed, big[1].closed)
	}
	if len(released) != 1 || released[0] != "big 0" {
		t.Errorf("release funcs run: %q, want [big 0]", released)
	}
	if small1.closed || small2.closed {
		t.Error("a connection of the smaller holder was pushed out")
	}
	if got := c.Open(); got != 8 {
		t.Errorf("Open() = %d, want 8", got)
	}

	// big (5) is still the biggest: its newcomers are refused.
	if _, nc := admit(c, "192.0.2.1"); nc != nil {
		t.Error("the biggest holder's newcomer was admitted, want it refused")
	}
	// The 192.0.2.2 holds 2: with a third it would still hold fewer
	// than big's 5, so it gets in and big loses its next oldest.
	if _, nc := admit(c, "192.0.2.2"); nc == nil {
		t.Error("a newcomer of a smaller holder was refused, want it admitted")
	}
	if !big[1].closed {
		t.Error("big's second oldest was not pushed out")
	}
	if got := c.PushedOut(); got != 2 {
		t.Errorf("PushedOut() = %d, want 2", got)
	}
	// Closing a pushed-out conn frees nothing more.
	if err := s1.Close(); err != nil {
		t.Fatal(err)
	}
	if got := c.Open(); got != 7 {
		t.Fatalf("Open() after a Close = %d, want 7", got)
	}
	if _, nc := admit(c, "192.0.2.9"); nc == nil {
		t.Error("a newcomer under the cap was refused")
	}
	if got := c.Open(); got != 8 {
		t.Errorf("Open() = %d, want 8", got)
	}
}

// TestPushOutIPv6Group: a holder spreading its connections over the
// /64s of one IPv6 /48 is one holder; a newcomer from another network
// pushes out one of them.
func TestPushOutIPv6Group(t *testing.T) {
	c := NewCounter(Limits{Max: 6})
	var flood []*fakeConn
	for i := range 6 {
		f, nc := admit(c, fmt.Sprintf("2001:db8:1:%x::1", i))
		if nc == nil {
			t.Fatalf("conn %d under the cap refused", i)
		}
		flood = append(flood, f)
	}
	// Another /64 of the same /48 is the same holder: refused.
	if _, nc := admit(c, "2001:db8:1:ff::1"); nc != nil {
		t.Error("a newcomer from the biggest holder's /48 was admitted")
	}
	if _, nc := admit(c, "2001:db8:2::1"); nc == nil {
		t.Fatal("a newcomer from another /48 was refused")
	}
	if !flood[0].closed {
		t.Error("the /48's oldest connection was not pushed out")
	}
}

// TestFairShareKept: a source holding no more than its fair share is
// never pushed out, however the bigger holders come and go; and a new
// source always gets in.
func TestFairShareKept(t *testing.T) {
	const max = 40
	c := NewCounter(Limits{Max: max})
	// Two sources hold 3 and 8, at most the fair share of 40 among 5.
	var kept []*fakeConn
	for range 3 {
		f, _ := admit(c, "198.51.100.1")
		kept = append(kept, f)
	}
	for range 8 {
		f, _ := admit(c, "198.51.100.2")
		kept = append(kept, f)
	}
	// Three flooding sources open and close connections at random, far
	// more than fit.
	rng := rand.New(rand.NewPCG(1, 2))
	var flood []net.Conn
	for i := range 5000 {
		if len(flood) > 0 && rng.IntN(4) == 0 {
			j := rng.IntN(len(flood))
			flood[j].Close()
			flood[j] = flood[len(flood)-1]
			flood = flood[:len(flood)-1]
			continue
		}
		if _, nc := admit(c, fmt.Sprintf("203.0.113.%d", 1+rng.IntN(3))); nc != nil {
			flood = append(flood, nc)
		}
		for _, f := range kept {
			if f.closed {
				t.Fatalf("op %d: a connection of %v, at the fair share or below, was pushed out", i, f.src)
			}
		}
		if got := c.Open(); got > max {
			t.Fatalf("op %d: %d open, over the cap %d", i, got, max)
		}
		checkCounts(t, c)
	}
	if c.PushedOut() == 0 {
		t.Fatal("no connection was ever pushed out: the flood did not fill the cap")
	}
	if c.Refused() == 0 {
		t.Fatal("no flood connection was ever refused")
	}
	// The cap is full; a new source gets in.
	for len(flood) < max {
		_, nc := admit(c, "203.0.113.1")
		if nc == nil {
			break
		}
		flood = append(flood, nc)
	}
	if _, nc := admit(c, "198.51.100.3"); nc == nil {
		t.Fatal("a new source was refused at the full cap")
	}
	for _, f := range kept {
		if f.closed {
			t.Fatalf("a connection of %v was pushed out by a new source", f.src)
		}
	}
}

func TestListener(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := NewCounter(Limits{Max: 2})
	l := Listener(ln, c)
	defer l.Close()
	accepted := make(chan net.Conn, 4)
	go func() {
		for {
			nc, err := l.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- nc
		}
	}()
	dial := func(src string) net.Conn {
		t.Helper()
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
		nc, err := d.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { nc.Close() })
		return nc
	}
	closedByServer := func(nc net.Conn) bool {
		nc.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err := nc.Read(make([]byte, 1))
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			return false
		}
		return err != nil
	}
	var clients []net.Conn
	for range 3 {
		clients = append(clients, dial("127.0.0.1"))
	}
	first, second := <-accepted, <-accepted
	// The third is closed by the listener: its source holds the cap.
	if !closedByServer(clients[2]) {
		t.Fatal("the connection over the cap from the biggest holder stayed open")
	}
	if got := c.Open(); got != 2 {
		t.Fatalf("Open() = %d, want 2", got)
	}
	// One from another address gets in, and the first is closed.
	dial("127.0.0.2")
	third := <-accepted
	if !closedByServer(clients[0]) {
		t.Fatal("the oldest connection of the biggest holder was not pushed out")
	}
	clients[1].SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if _, err := clients[1].Read(make([]byte, 1)); !isTimeout(err) {
		t.Fatalf("the second connection of 127.0.0.1: read %v, want it still open", err)
	}
	first.Close() // already pushed out: frees nothing more
	if got := c.Open(); got != 2 {
		t.Fatalf("Open() after closing a pushed-out conn = %d, want 2", got)
	}
	second.Close()
	third.Close()
	if got := c.Open(); got != 0 {
		t.Fatalf("Open() after closing all = %d, want 0", got)
	}
}

// checkCounts checks the Counter's books against each other: the total,
// the per-source counts, the groups and their lists by count.
func checkCounts(t *testing.T, c *Counter) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	total, most, per := 0, 0, 0
	for k, g := range c.groups {
		n := g.conns.Len()
		if n == 0 {
			t.Fatalf("group %v is empty but kept", k)
		}
		total += n
		most = max(most, n)
		found := false
		for h := c.byCount[n]; h != nil; h = h.next {
			found = found || h == g
		}
		if !found {
			t.Fatalf("group %v with %d conns is not in byCount[%d]", k, n, n)
		}
	}
	listed := 0
	for n, h := range c.byCount {
		for ; h != nil; h = h.next {
			if h.conns.Len() != n {
				t.Fatalf("a group with %d conns is listed in byCount[%d]", h.conns.Len(), n)
			}
			listed++
		}
	}
	if listed != len(c.groups) {
		t.Fatalf("%d groups listed by count, want %d", listed, len(c.groups))
	}
	for _, n := range c.per {
		per += n
	}
	if total != c.total || per != c.total || most != c.most {
		t.Fatalf("books: total %d, groups hold %d, sources %d; most %d, want %d", c.total, total, per, c.most, most)
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}
