package udprelay

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"testing"
	"time"

	"beam.dev/beam/derp"
	"beam.dev/beam/netstack/internal/disco"
	"beam.dev/beam/netstack/internal/udpoffload"
	"beam.dev/beam/types/key"
)

// clock is a settable clock for Options.Now.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

type testServer struct {
	*Server
	addr  netip.AddrPort
	clock *clock
}

func startServer(t *testing.T, opts Options) *testServer {
	t.Helper()
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	addr := conn.LocalAddr().(*net.UDPAddr).AddrPort()
	clk := &clock{t: time.Unix(1_800_000_000, 0)}
	opts.DiscoKey = key.NewDisco()
	opts.Addrs = func() []netip.AddrPort { return []netip.AddrPort{addr} }
	opts.Now = clk.Now
	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(conn) }()
	t.Cleanup(func() {
		conn.Close()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return &testServer{Server: s, addr: addr, clock: clk}
}

// waitStats waits until cond holds for the server's stats (the server
// handles datagrams on its own goroutine), failing after 5 s.
func (s *testServer) waitStats(t *testing.T, what string, cond func(Stats) bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond(s.Stats()) {
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: stats %+v", what, s.Stats())
		}
		runtime.Gosched()
	}
}

// client is one peer of a session, on its own loopback socket.
type client struct {
	t      *testing.T
	node   key.NodePublic
	key    key.DiscoPrivate
	conn   *net.UDPConn
	srv    netip.AddrPort
	shared key.DiscoShared
}

func newClient(t *testing.T, s *testServer) *client {
	t.Helper()
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	k := key.NewDisco()
	return &client{t: t, node: key.NewNode().Public(), key: k, conn: conn, srv: s.addr, shared: k.Shared(s.DiscoPublic())}
}

func (c *client) pub() key.DiscoPublic { return c.key.Public() }

// party is c as a session's peer.
func (c *client) party() Party { return Party{Node: c.node, Disco: c.pub()} }

// newParty returns a peer with new keys.
func newParty() Party { return Party{Node: key.NewNode().Public(), Disco: key.NewDisco().Public()} }

func (c *client) send(pkt []byte) {
	c.t.Helper()
	if _, err := c.conn.WriteToUDPAddrPort(pkt, c.srv); err != nil {
		c.t.Fatal(err)
	}
}

// control sends m to the server for session vni, sealed by c.
func (c *client) control(vni uint32, m disco.Message) []byte {
	pkt := AppendHeader(nil, TypeControl, vni)
	pkt = disco.AppendPacket(pkt, c.pub(), c.shared, m)
	c.send(pkt)
	return pkt
}

func (c *client) data(vni uint32, payload string) {
	c.send(append(AppendHeader(nil, TypeData, vni), payload...))
}

// read returns the next datagram, failing after 5 s.
func (c *client) read() []byte {
	c.t.Helper()
	c.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 2048)
	n, err := c.conn.Read(buf)
	if err != nil {
		c.t.Fatalf("read: %v", err)
	}
	return buf[:n]
}

// challenge sends BindRelay and returns the server's challenge.
func (c *client) challenge(vni uint32) [32]byte {
	c.t.Helper()
	c.control(vni, &disco.BindRelay{VNI: vni})
	pkt := c.read()
	typ, gotVNI, ok := ParseHeader(pkt)
	if !ok || typ != TypeControl || gotVNI != vni {
		c.t.Fatalf("answer to BindRelay: header %v %d %v, want control %d", typ, gotVNI, ok, vni)
	}
	_, sealed, ok := disco.Sender(pkt[HeaderLen:])
	if !ok {
		c.t.Fatal("answer to BindRelay is not disco")
	}
	m, err := disco.Open(c.shared, sealed)
	if err != nil {
		c.t.Fatalf("open challenge: %v", err)
	}
	ch, ok := m.(*disco.Challenge)
	if !ok || ch.VNI != vni {
		c.t.Fatalf("got %#v, want a Challenge for %d", m, vni)
	}
	return ch.Challenge
}

// bind runs the whole handshake.
func (c *client) bind(vni uint32) {
	c.t.Helper()
	c.control(vni, &disco.Answer{VNI: vni, Challenge: c.challenge(vni)})
}

// expectData reads one datagram and checks it is payload for vni.
func (c *client) expectData(vni uint32, payload string) {
	c.t.Helper()
	pkt := c.read()
	want := append(AppendHeader(nil, TypeData, vni), payload...)
	if !bytes.Equal(pkt, want) {
		c.t.Fatalf("got %q, want %q", pkt, want)
	}
}

// pair allocates a session for two new clients and binds both.
func pair(t *testing.T, s *testServer) (a, b *client, vni uint32) {
	t.Helper()
	a, b = newClient(t, s), newClient(t, s)
	al, err := s.Allocate(a.party(), b.party())
	if err != nil {
		t.Fatal(err)
	}
	a.bind(al.VNI)
	b.bind(al.VNI)
	return a, b, al.VNI
}

func TestForward(t *testing.T) {
	s := startServer(t, Options{})
	a, b, vni := pair(t, s)
	a.data(vni, "hello b")
	b.expectData(vni, "hello b")
	b.data(vni, "hello a")
	a.expectData(vni, "hello a")
	st := s.Stats()
	if st.Sessions != 1 || st.Bound != 1 || st.Binds != 2 || st.Packets != 2 {
		t.Errorf("stats = %+v, want 1 bound session, 2 binds, 2 packets", st)
	}
	// The allocation names both peers and the server's address, and a
	// second Allocate of the pair (from either side) is the same session.
	al, err := s.Allocate(b.party(), a.party())
	if err != nil {
		t.Fatal(err)
	}
	if al.VNI != vni || len(al.Addrs) != 1 || al.Addrs[0] != s.addr {
		t.Errorf("second allocation = %+v, want VNI %d at %v", al, vni, s.addr)
	}
}

// TestForwardBatch: a run of datagrams sent at once (UDP_SEGMENT on
// Linux, which the server reads back coalesced with UDP_GRO) arrives as
// the same datagrams, in order, with a dropped one (another session's)
// in the middle left out.
func TestForwardBatch(t *testing.T) {
	s := startServer(t, Options{})
	a, b, vni := pair(t, s)
	const n, size = 20, 200
	var batch []byte
	for i := range n {
		v := vni
		if i == 7 {
			v = vni + 1 // no such session
		}
		pkt := AppendHeader(nil, TypeData, v)
		pkt = append(pkt, bytes.Repeat([]byte{byte(i)}, size-HeaderLen)...)
		batch = append(batch, pkt...)
	}
	w := &writer{conn: a.conn, gso: udpoffload.SupportsGSO(a.conn), oob: make([]byte, udpoffload.GROControlSize)}
	if err := w.send(batch, size, s.addr); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if i == 7 {
			continue
		}
		pkt := b.read()
		if len(pkt) != size || pkt[HeaderLen] != byte(i) {
			t.Fatalf("datagram %d: %d bytes starting %d, want %d bytes of %d", i, len(pkt), pkt[HeaderLen], size, i)
		}
	}
	if st := s.Stats(); st.Packets != n-1 || st.DroppedOther != 1 {
		t.Errorf("stats = %+v, want %d forwarded and 1 dropped", st, n-1)
	}
}

// TestRebind: a peer whose address changed (NAT rebinding) binds again
// and traffic follows it.
func TestRebind(t *testing.T) {
	s := startServer(t, Options{})
	a, b, vni := pair(t, s)
	moved := newClient(t, s)
	moved.key, moved.shared = a.key, a.shared
	moved.bind(vni)
	b.data(vni, "to the new address")
	moved.expectData(vni, "to the new address")
}

func TestForgedBinding(t *testing.T) {
	s := startServer(t, Options{})
	a, b, vni := pair(t, s)
	mallory := newClient(t, s)

	// Data from an address that is not bound goes nowhere.
	mallory.data(vni, "from mallory")
	// A BindRelay sealed by a key that is not one of the session's
	// peers is not answered.
	mallory.control(vni, &disco.BindRelay{VNI: vni})
	// A's Answer replayed from another address binds nothing: the
	// challenge went to A's address. Get a fresh challenge for A first.
	ch := a.challenge(vni)
	replay := AppendHeader(nil, TypeControl, vni)
	replay = disco.AppendPacket(replay, a.pub(), a.shared, &disco.Answer{VNI: vni, Challenge: ch})
	mallory.send(replay)
	// A guessed challenge from A's own key (if mallory had it) at
	// mallory's address: no challenge went there.
	mallory.key, mallory.shared = a.key, a.shared
	mallory.control(vni, &disco.Answer{VNI: vni, Challenge: [32]byte{1}})
	// B's data still goes to A's bound address, not to mallory.
	b.data(vni, "for a only")
	a.expectData(vni, "for a only")
	mallory.conn.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	var ne net.Error
	if n, err := mallory.conn.Read(make([]byte, 2048)); !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("mallory received %d bytes (err %v); want nothing", n, err)
	}
	if st := s.Stats(); st.Binds != 2 || st.DroppedOther != 4 {
		t.Errorf("stats = %+v, want 2 binds and 4 dropped", st)
	}
}

func TestWrongSession(t *testing.T) {
	s := startServer(t, Options{})
	a, b, vni := pair(t, s)
	// Data and binds naming another session are dropped.
	a.data(vni+1, "wrong vni")
	a.control(vni+1, &disco.BindRelay{VNI: vni + 1})
	// A BindRelay whose sealed VNI differs from the header's is refused.
	a.control(vni, &disco.BindRelay{VNI: vni + 1})
	// Not a peer relay packet at all.
	a.send([]byte("garbage"))
	a.data(vni, "right vni")
	b.expectData(vni, "right vni")
	if st := s.Stats(); st.DroppedOther != 4 || st.Packets != 1 {
		t.Errorf("stats = %+v, want 4 dropped and 1 forwarded", st)
	}
}

func TestUnboundPeer(t *testing.T) {
	s := startServer(t, Options{})
	a, b := newClient(t, s), newClient(t, s)
	al, err := s.Allocate(a.party(), b.party())
	if err != nil {
		t.Fatal(err)
	}
	a.bind(al.VNI)
	a.data(al.VNI, "b is not bound yet")
	b.bind(al.VNI)
	a.data(al.VNI, "now it is")
	b.expectData(al.VNI, "now it is")
}

func TestRateBound(t *testing.T) {
	const pps = 1000 // burst: 100 packets
	s := startServer(t, Options{PacketsPerSecond: pps})
	a, b, vni := pair(t, s)
	// 150: more than the burst. They go in runs of 50, each followed by
	// a BindRelay whose answer shows the server has handled the run, so
	// the server's socket buffer never holds more than a run, however
	// late the server gets to read on a loaded machine (300 at once
	// overflowed the default 208 KiB buffer: 832 bytes each).
	const sent, run = 150, 50
	for i := range sent {
		a.data(vni, "x")
		if (i+1)%run == 0 {
			a.challenge(vni)
		}
	}
	// The clock stands still, so only the burst passes; then it moves on
	// and the marker passes too.
	s.clock.Advance(time.Second)
	a.data(vni, "marker")
	got := 0
	for {
		pkt := b.read()
		if bytes.HasSuffix(pkt, []byte("marker")) {
			break
		}
		got++
	}
	if want := pps / 10; got != want {
		t.Errorf("forwarded %d of %d packets at a standing clock, want the burst, %d", got, sent, want)
	}
	if st := s.Stats(); st.DroppedRate != sent-pps/10 {
		t.Errorf("DroppedRate = %d, want %d", st.DroppedRate, sent-pps/10)
	}
}

func TestByteRateBound(t *testing.T) {
	s := startServer(t, Options{BytesPerSecond: 100 << 10}) // burst: 64 KiB
	a, b, vni := pair(t, s)
	big := string(bytes.Repeat([]byte("y"), 1000))
	// 70 packets: more than the burst, in runs of 10 that the server has
	// handled before the next is sent (as in TestRateBound).
	for i := range 70 {
		a.data(vni, big)
		if (i+1)%10 == 0 {
			a.challenge(vni)
		}
	}
	s.clock.Advance(time.Second)
	a.data(vni, "marker")
	got := 0
	for {
		if pkt := b.read(); bytes.HasSuffix(pkt, []byte("marker")) {
			break
		}
		got++
	}
	// 64 KiB of 1,008-byte packets.
	if want := (64 << 10) / (1000 + HeaderLen); got != want {
		t.Errorf("forwarded %d packets of 1 KB, want %d", got, want)
	}
}

func TestExpiry(t *testing.T) {
	s := startServer(t, Options{IdleTimeout: time.Minute, BindTimeout: 10 * time.Second})
	a, b, vni := pair(t, s)
	a.data(vni, "before")
	b.expectData(vni, "before")

	s.clock.Advance(time.Minute + time.Second)
	a.data(vni, "after expiry")
	if st := s.Stats(); st.Sessions != 0 || st.Expired != 1 {
		t.Fatalf("stats after idle timeout = %+v, want no sessions, 1 expired", st)
	}
	// A new session works, and nothing of the old one came through.
	al, err := s.Allocate(a.party(), b.party())
	if err != nil {
		t.Fatal(err)
	}
	if al.VNI == vni {
		t.Fatalf("new session reuses expired VNI %d", vni)
	}
	a.bind(al.VNI)
	b.bind(al.VNI)
	a.data(al.VNI, "new session")
	b.expectData(al.VNI, "new session")

	// A session only one side binds goes after BindTimeout.
	c, d := newClient(t, s), newClient(t, s)
	al2, err := s.Allocate(c.party(), d.party())
	if err != nil {
		t.Fatal(err)
	}
	c.bind(al2.VNI)
	s.clock.Advance(11 * time.Second)
	if st := s.Stats(); st.Sessions != 1 || st.Expired != 2 {
		t.Errorf("stats after bind timeout = %+v, want 1 session, 2 expired", st)
	}
}

func TestCountBound(t *testing.T) {
	s := startServer(t, Options{MaxSessions: 2, MaxSessionsPerPeer: 1})
	k := make([]Party, 6)
	for i := range k {
		k[i] = newParty()
	}
	tests := []struct {
		name string
		a, b int
		ok   bool
	}{
		{"first", 0, 1, true},
		{"same pair again", 1, 0, true},
		{"per-peer bound", 0, 2, false},
		{"per-peer bound, other side", 3, 1, false},
		{"second", 2, 3, true},
		{"total bound", 4, 5, false},
		{"self", 4, 4, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := s.Allocate(k[tc.a], k[tc.b])
			if got := err == nil; got != tc.ok {
				t.Fatalf("Allocate: err = %v, want ok %v", err, tc.ok)
			}
			if err != nil && !errors.Is(err, ErrRefused) {
				t.Errorf("err = %v, want ErrRefused", err)
			}
		})
	}
	if st := s.Stats(); st.Sessions != 2 || st.Refused != 3 {
		t.Errorf("stats = %+v, want 2 sessions and 3 refused", st)
	}
}

// TestSetLimits: new bounds apply at once: to allocations, and to the
// rate of a live session.
func TestSetLimits(t *testing.T) {
	s := startServer(t, Options{})
	if got, want := s.Limits(), (Limits{DefaultMaxSessions, DefaultMaxSessionsPerPeer, DefaultPacketsPerSecond, DefaultBytesPerSecond}); got != want {
		t.Fatalf("Limits() = %+v, want the defaults %+v", got, want)
	}
	a, b, vni := pair(t, s)
	s.SetLimits(Limits{MaxSessions: 1, PacketsPerSecond: 640})
	if got, want := s.Limits(), (Limits{1, DefaultMaxSessionsPerPeer, 640, DefaultBytesPerSecond}); got != want {
		t.Errorf("Limits() = %+v, want %+v", got, want)
	}
	if _, err := s.Allocate(newParty(), newParty()); !errors.Is(err, ErrRefused) {
		t.Errorf("second session with MaxSessions 1: err = %v, want ErrRefused", err)
	}
	// The live session's burst is now 64 packets (a tenth of a second at
	// 640/s, at least 64), at a standing clock.
	for i := range 100 {
		a.data(vni, "x")
		if (i+1)%50 == 0 {
			a.challenge(vni)
		}
	}
	s.clock.Advance(time.Second)
	a.data(vni, "marker")
	got := 0
	for {
		if pkt := b.read(); bytes.HasSuffix(pkt, []byte("marker")) {
			break
		}
		got++
	}
	if got != 64 {
		t.Errorf("forwarded %d of 100 packets after SetLimits(640 packets/s), want the new burst, 64", got)
	}
	// Zero goes back to the defaults.
	s.SetLimits(Limits{})
	if _, err := s.Allocate(newParty(), newParty()); err != nil {
		t.Errorf("after SetLimits(Limits{}): %v, want the default bounds", err)
	}
}

func TestHeader(t *testing.T) {
	tests := []struct {
		name string
		pkt  []byte
		ok   bool
	}{
		{"data", AppendHeader(nil, TypeData, 5), true},
		{"control", AppendHeader(nil, TypeControl, 5), true},
		{"short", AppendHeader(nil, TypeData, 5)[:7], false},
		{"unknown type", []byte{magic, 2, 0, 0, 0, 0, 0, 5}, false},
		{"reserved set", []byte{magic, 0, 1, 0, 0, 0, 0, 5}, false},
		{"wireguard", []byte{4, 0, 0, 0, 1, 2, 3, 4}, false},
		{"disco", []byte("BEAM💡xxxxxx"), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, vni, ok := ParseHeader(tc.pkt)
			if ok != tc.ok || ok && vni != 5 {
				t.Errorf("ParseHeader = %d, %v; want 5, %v", vni, ok, tc.ok)
			}
		})
	}
}

func FuzzHandle(f *testing.F) {
	f.Add(AppendHeader([]byte{}, TypeData, 1))
	f.Add(append(AppendHeader(nil, TypeControl, 1), "BEAM💡"...))
	f.Add([]byte("garbage"))
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		f.Fatal(err)
	}
	defer conn.Close()
	s, err := New(Options{DiscoKey: key.NewDisco(), Addrs: func() []netip.AddrPort { return nil }})
	if err != nil {
		f.Fatal(err)
	}
	src := netip.MustParseAddrPort("127.0.0.1:9")
	f.Fuzz(func(t *testing.T, pkt []byte) {
		s.handle(conn, pkt, src)
	})
}

// TestControlJunk: control packets for no session, or sealed by a key
// that is not the session's, at a high rate, do not keep a session's
// peers from binding: they are dropped before any rate limit.
func TestControlJunk(t *testing.T) {
	s := startServer(t, Options{})
	a, b := newClient(t, s), newClient(t, s)
	al, err := s.Allocate(a.party(), b.party())
	if err != nil {
		t.Fatal(err)
	}
	mallory := newClient(t, s)
	// The clock stands still: no limiter refills while this runs.
	const junk = 2000
	for i := range junk {
		if i%2 == 0 {
			mallory.control(al.VNI, &disco.BindRelay{VNI: al.VNI})
		} else {
			mallory.control(al.VNI+1+uint32(i), &disco.BindRelay{VNI: al.VNI + 1 + uint32(i)})
		}
	}
	a.bind(al.VNI)
	b.bind(al.VNI)
	a.data(al.VNI, "after the junk")
	b.expectData(al.VNI, "after the junk")
	if st := s.Stats(); st.Binds != 2 {
		t.Errorf("stats = %+v, want 2 binds", st)
	}
}

// TestControlRate: one side of a session gets at most controlBurst
// control packets opened at once; the other side is not affected.
func TestControlRate(t *testing.T) {
	s := startServer(t, Options{})
	a, b := newClient(t, s), newClient(t, s)
	al, err := s.Allocate(a.party(), b.party())
	if err != nil {
		t.Fatal(err)
	}
	for range controlBurst {
		a.challenge(al.VNI)
	}
	a.control(al.VNI, &disco.BindRelay{VNI: al.VNI})
	b.bind(al.VNI) // b's side has its own allowance
	a.conn.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	var ne net.Error
	if n, err := a.conn.Read(make([]byte, 2048)); !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("BindRelay beyond the burst answered (%d bytes, err %v); want nothing", n, err)
	}
	s.clock.Advance(time.Second)
	a.bind(al.VNI)
	a.data(al.VNI, "bound")
	b.expectData(al.VNI, "bound")
}

// TestForgedSenderDoesNotStarveBind: packets that claim to come from a
// session's peer (its disco key and the VNI travel in clear) but do not
// open with its key do not use up that peer's control allowance.
func TestForgedSenderDoesNotStarveBind(t *testing.T) {
	s := startServer(t, Options{})
	a, b := newClient(t, s), newClient(t, s)
	al, err := s.Allocate(a.party(), b.party())
	if err != nil {
		t.Fatal(err)
	}
	mallory := newClient(t, s)
	junk := key.NewDisco().Shared(key.NewDisco().Public())
	const forged = 3 * controlBurst
	for range forged {
		pkt := AppendHeader(nil, TypeControl, al.VNI)
		mallory.send(disco.AppendPacket(pkt, a.pub(), junk, &disco.BindRelay{VNI: al.VNI}))
	}
	s.waitStats(t, "the forged packets dropped", func(st Stats) bool { return st.DroppedOther >= forged })
	a.bind(al.VNI) // fails if the Challenge does not come
	b.bind(al.VNI)
	a.data(al.VNI, "bound despite the forgeries")
	b.expectData(al.VNI, "bound despite the forgeries")
}

// TestUnpaddedBindRelay: a BindRelay shorter than the Challenge it would
// draw (an unpadded one) gets no Challenge, and binds nothing.
func TestUnpaddedBindRelay(t *testing.T) {
	s := startServer(t, Options{})
	a, b := newClient(t, s), newClient(t, s)
	al, err := s.Allocate(a.party(), b.party())
	if err != nil {
		t.Fatal(err)
	}
	body := binary.BigEndian.AppendUint32([]byte{disco.TypeBindRelay, 0}, al.VNI)
	raw := a.pub().Raw32()
	pkt := AppendHeader(nil, TypeControl, al.VNI)
	pkt = append(pkt, derp.DiscoMagic...)
	pkt = append(pkt, raw[:]...)
	pkt = append(pkt, a.shared.Seal(body)...)
	a.send(pkt)
	a.conn.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	var ne net.Error
	if n, err := a.conn.Read(make([]byte, 2048)); !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("unpadded BindRelay answered (%d bytes, err %v); want nothing", n, err)
	}
	// A padded one is answered with a Challenge no longer than itself.
	req := a.control(al.VNI, &disco.BindRelay{VNI: al.VNI})
	if got := a.read(); len(got) > len(req) {
		t.Errorf("Challenge of %d bytes for a BindRelay of %d", len(got), len(req))
	}
	if st := s.Stats(); st.DroppedOther != 1 {
		t.Errorf("stats = %+v, want 1 dropped", st)
	}
}

// TestDiscoRotation: a node that takes a new disco key for every
// Allocate (any map request can set one) replaces its session with a
// peer instead of adding one, so two colluding nodes hold one session
// and cannot fill the server; and one node's sessions are bounded per
// node key whatever its disco key.
func TestDiscoRotation(t *testing.T) {
	s := startServer(t, Options{MaxSessions: 4, MaxSessionsPerPeer: 2})
	a, b := newParty(), newParty()
	var last uint32
	for i := range 10 {
		a.Disco, b.Disco = key.NewDisco().Public(), key.NewDisco().Public()
		al, err := s.Allocate(a, b)
		if err != nil {
			t.Fatalf("rotation %d: %v, want the pair's session replaced", i, err)
		}
		if al.VNI == last {
			t.Fatalf("rotation %d: same session %d for new disco keys", i, al.VNI)
		}
		last = al.VNI
	}
	if st := s.Stats(); st.Sessions != 1 || st.Released != 9 {
		t.Errorf("after 10 rotations: %+v, want 1 session, 9 released", st)
	}
	// Other partners: the per-node bound holds across a's disco keys.
	for i := range 3 {
		a.Disco = key.NewDisco().Public()
		_, err := s.Allocate(a, newParty())
		if ok := i == 0; (err == nil) != ok {
			t.Fatalf("a's session %d with a new partner (a has 1 already): err = %v, want ok %v (2 per peer)", i+2, err, ok)
		}
	}
	// The server still has room for the others.
	if _, err := s.Allocate(newParty(), newParty()); err != nil {
		t.Errorf("an honest pair after the rotations: %v, want a session", err)
	}
}

// TestDiscoRotationEndsOldSession: the session of a node's previous disco
// key forwards nothing once the pair's new session exists.
func TestDiscoRotationEndsOldSession(t *testing.T) {
	s := startServer(t, Options{})
	a, b, vni := pair(t, s)
	a.data(vni, "before")
	b.expectData(vni, "before")

	a2 := newClient(t, s)
	a2.node = a.node // a's node, a new process
	al, err := s.Allocate(a2.party(), b.party())
	if err != nil {
		t.Fatal(err)
	}
	a.data(vni, "old key")
	a2.bind(al.VNI)
	b.bind(al.VNI)
	a2.data(al.VNI, "new key")
	b.expectData(al.VNI, "new key")
	expectNothing(t, b)
}

// expectNothing checks that c has no datagram waiting. Sends on loopback
// are delivered before they return, so a datagram the server forwarded
// before it handled a later one is already there.
func expectNothing(t *testing.T, c *client) {
	t.Helper()
	c.conn.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	buf := make([]byte, 2048)
	if n, err := c.conn.Read(buf); err == nil {
		t.Errorf("got %q, want nothing", buf[:n])
	}
}

// TestRetain: Retain ends the sessions of peers the server's node no
// longer serves, and their packets are dropped from then on; other
// sessions go on.
func TestRetain(t *testing.T) {
	s := startServer(t, Options{})
	a, b, vni := pair(t, s)
	c, d, vni2 := pair(t, s)
	a.data(vni, "before")
	b.expectData(vni, "before")

	gone := b.party()
	if n := s.Retain(func(p Party) bool { return p != gone }); n != 1 {
		t.Errorf("Retain released %d sessions, want 1", n)
	}
	before := s.Stats()
	a.data(vni, "after a's peer left")
	b.data(vni, "from the peer that left")
	// The server reads one socket in order: once d has c's packet, a's
	// and b's were handled.
	c.data(vni2, "marker")
	d.expectData(vni2, "marker")
	expectNothing(t, b)
	expectNothing(t, a)
	st := s.Stats()
	if st.Sessions != 1 || st.Released != 1 || st.Packets != before.Packets+1 || st.DroppedOther != before.DroppedOther+2 {
		t.Errorf("stats after Retain %+v, before %+v; want 1 session, 1 released, 1 more packet forwarded and 2 more dropped", st, before)
	}
	// Its peers cannot bind the session again.
	a.control(vni, &disco.BindRelay{VNI: vni})
	c.data(vni2, "marker 2")
	d.expectData(vni2, "marker 2")
	expectNothing(t, a)

	// A peer with another disco key than the one kept is not served.
	cur := c.party()
	cur.Disco = key.NewDisco().Public()
	s.Retain(func(p Party) bool { return p.Node != cur.Node || p.Disco == cur.Disco })
	if st := s.Stats(); st.Sessions != 0 || st.Released != 2 {
		t.Errorf("stats after c's disco key changed %+v, want no session, 2 released", st)
	}
}

// TestOneSidedSession: a session one of whose peers sends nothing on it
// for sideTimeout ends, however much the other sends (the silent peer
// dropped it: the other is no longer its peer); a session with traffic
// both ways, a packet every 10 s each, goes on.
func TestOneSidedSession(t *testing.T) {
	s := startServer(t, Options{})
	a, b, vni := pair(t, s)
	c, d, vni2 := pair(t, s)
	for i := 1; i <= 4; i++ {
		s.clock.Advance(10 * time.Second)
		c.data(vni2, "to d")
		d.expectData(vni2, "to d")
		d.data(vni2, "to c")
		c.expectData(vni2, "to c")
		a.data(vni, "to b")
		if i <= 3 {
			b.expectData(vni, "to b")
			continue
		}
		// b silent for 40 s: dropped. Once d has the marker, a's
		// packet was handled.
		c.data(vni2, "marker")
		d.expectData(vni2, "marker")
		expectNothing(t, b)
	}
	if st := s.Stats(); st.Sessions != 1 || st.Expired != 1 {
		t.Errorf("stats %+v, want the two-way session only, 1 expired", st)
	}
}

// TestLateSecondBind: a side that bound early and could send nothing
// until the other side bound is not taken for silent: the side timeout
// counts from when the session became two-way.
func TestLateSecondBind(t *testing.T) {
	s := startServer(t, Options{})
	a, b := newClient(t, s), newClient(t, s)
	al, err := s.Allocate(a.party(), b.party())
	if err != nil {
		t.Fatal(err)
	}
	bound := func(n uint64) {
		t.Helper()
		s.waitStats(t, fmt.Sprintf("%d binds", n), func(st Stats) bool { return st.Binds >= n })
	}
	a.bind(al.VNI)
	bound(1)
	s.clock.Advance(25 * time.Second)
	b.bind(al.VNI)
	bound(2)
	s.clock.Advance(10 * time.Second) // 35 s after a bound, 10 s after b did
	a.data(al.VNI, "first words")
	b.expectData(al.VNI, "first words")
}

// TestUnagreedSessionsDoNotExhaust: sessions other nodes ask for with a
// peer count against that peer only once it binds them, so nodes the
// policy does not let it see (it never binds their sessions) cannot use
// up its sessions; each asker is still bounded, and so is the peer by
// the sessions it asked for or bound.
func TestUnagreedSessionsDoNotExhaust(t *testing.T) {
	s := startServer(t, Options{MaxSessionsPerPeer: 2})
	v := newClient(t, s)
	attackers := []Party{newParty(), newParty(), newParty()}
	unbound := make([]uint32, len(attackers))
	for i, a := range attackers {
		al, err := s.Allocate(a, v.party())
		if err != nil {
			t.Fatalf("attacker %d's session with v: %v, want one (it counts against the attacker only)", i, err)
		}
		unbound[i] = al.VNI
	}
	// An asker is still bounded: the first attacker has 1 session.
	for i := range 2 {
		_, err := s.Allocate(attackers[0], newParty())
		if ok := i == 0; (err == nil) != ok {
			t.Fatalf("attacker's session %d: err = %v, want ok %v (2 per peer)", i+2, err, ok)
		}
	}

	// v is not locked out: an honest peer gets a session with it.
	c := newClient(t, s)
	al, err := s.Allocate(c.party(), v.party())
	if err != nil {
		t.Fatalf("honest session with v after %d unbound ones: %v", len(attackers), err)
	}
	c.bind(al.VNI)
	v.bind(al.VNI)
	c.data(al.VNI, "to v")
	v.expectData(al.VNI, "to v")

	// v's bind counted: v asks for one more session, then it is full.
	if _, err := s.Allocate(v.party(), newParty()); err != nil {
		t.Fatalf("v's second session: %v", err)
	}
	if _, err := s.Allocate(v.party(), newParty()); !errors.Is(err, ErrRefused) {
		t.Errorf("v's third session: err = %v, want ErrRefused", err)
	}
	if _, err := s.Allocate(newParty(), v.party()); !errors.Is(err, ErrRefused) {
		t.Errorf("a session with v, which has 2: err = %v, want ErrRefused", err)
	}
	// Nor can v go past its bound by binding sessions others asked for.
	before := s.Stats()
	v.control(unbound[1], &disco.Answer{VNI: unbound[1], Challenge: v.challenge(unbound[1])})
	s.waitStats(t, "the bind refused", func(st Stats) bool { return st.Refused > before.Refused })
	if st := s.Stats(); st.Binds != before.Binds {
		t.Errorf("v bound a third session: %+v, want its bind refused", st)
	}
}
