package bind

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"beam.dev/beam/types/key"
	"go.uber.org/goleak"
	"golang.zx2c4.com/wireguard/conn"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func newBind(t *testing.T) *Bind {
	t.Helper()
	b, err := New(Options{PrivateKey: key.NewNode()})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// recvAll runs fn once and reports its result.
func recvOnce(fn conn.ReceiveFunc, n int) <-chan error {
	ch := make(chan error, 1)
	go func() {
		bufs := make([][]byte, n)
		for i := range bufs {
			bufs[i] = make([]byte, 2048)
		}
		_, err := fn(bufs, make([]int, n), make([]conn.Endpoint, n))
		ch <- err
	}()
	return ch
}

func TestCloseOpenCycles(t *testing.T) {
	b := newBind(t)
	var port uint16
	for i := range 5 {
		fns, p, err := b.Open(port)
		if err != nil {
			t.Fatalf("cycle %d: Open: %v", i, err)
		}
		if len(fns) != 2 {
			t.Fatalf("cycle %d: got %d receive funcs, want 2 (IPv4, IPv6)", i, len(fns))
		}
		if port != 0 && p != port {
			t.Fatalf("cycle %d: reopened on port %d, want %d", i, p, port)
		}
		port = p
		if _, _, err := b.Open(port); !errors.Is(err, conn.ErrBindAlreadyOpen) {
			t.Fatalf("second Open: got %v, want ErrBindAlreadyOpen", err)
		}
		var waits []<-chan error
		for _, fn := range fns {
			waits = append(waits, recvOnce(fn, b.BatchSize()))
		}
		if err := b.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		for _, w := range waits {
			select {
			case err := <-w:
				if !errors.Is(err, net.ErrClosed) {
					t.Fatalf("receive after Close: got %v, want net.ErrClosed", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("receive func still blocked after Close")
			}
		}
		// Calls after Close fail the same way.
		for _, fn := range fns {
			if err := <-recvOnce(fn, 1); !errors.Is(err, net.ErrClosed) {
				t.Fatalf("receive on closed bind: got %v, want net.ErrClosed", err)
			}
		}
		if err := b.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
	}
}

func transport(receiver uint32, n int) []byte {
	p := make([]byte, n)
	binary.LittleEndian.PutUint32(p, msgTransport)
	binary.LittleEndian.PutUint32(p[4:], receiver)
	return p
}

func TestReceiveAttribution(t *testing.T) {
	a := newBind(t)
	fns, port, err := a.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	peerKey := key.NewNode().Public()

	known, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer known.Close()
	stranger, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer stranger.Close()
	knownAP := known.LocalAddr().(*net.UDPAddr).AddrPort()
	a.SetPeers([]PeerConfig{{Key: peerKey, Endpoints: []netip.AddrPort{knownAP}}})

	aAddr := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: int(port)}
	recv := func(from *net.UDPConn, pkt []byte) *Endpoint {
		t.Helper()
		if _, err := from.WriteToUDP(pkt, aAddr); err != nil {
			t.Fatal(err)
		}
		bufs := [][]byte{make([]byte, 2048)}
		sizes := []int{0}
		eps := []conn.Endpoint{nil}
		n, err := fns[0](bufs, sizes, eps)
		if err != nil || n != 1 {
			t.Fatalf("receive: n=%d err=%v", n, err)
		}
		if sizes[0] == 0 {
			return nil
		}
		if sizes[0] != len(pkt) {
			t.Fatalf("size %d, want %d", sizes[0], len(pkt))
		}
		return eps[0].(*Endpoint)
	}

	// From a candidate address: tied to the peer, with the real source
	// for cookies.
	e := recv(known, transport(7, 48))
	if e == nil || e.peer == nil || e.peer.key != peerKey || e.src != knownAP {
		t.Fatalf("datagram from candidate: got %+v, want peer endpoint at %v", e, knownAP)
	}
	if got, want := e.DstIP(), knownAP.Addr(); got != want {
		t.Errorf("DstIP = %v, want %v", got, want)
	}
	// Garbage from a candidate is still dropped.
	if e := recv(known, []byte("hello")); e != nil {
		t.Fatalf("garbage from candidate was accepted: %+v", e)
	}
	// An unknown address naming an index we never handed out: dropped.
	if e := recv(stranger, transport(7, 48)); e != nil {
		t.Fatalf("unknown sender was accepted: %+v", e)
	}
	// Once we sent a handshake for the peer with sender index 9, data
	// naming index 9 from a new address is tied to the peer (roaming).
	init := make([]byte, initiationSize)
	binary.LittleEndian.PutUint32(init, msgInitiation)
	binary.LittleEndian.PutUint32(init[4:], 9)
	ep, err := a.ParseEndpoint(peerKey.String())
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Send([][]byte{init}, ep); err != nil {
		t.Fatalf("Send: %v", err)
	}
	// The initiation went to the candidate.
	known.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 512)
	if n, _, err := known.ReadFromUDP(buf); err != nil || n != initiationSize {
		t.Fatalf("candidate got n=%d err=%v, want the initiation", n, err)
	}
	e = recv(stranger, transport(9, 48))
	strangerAP := stranger.LocalAddr().(*net.UDPAddr).AddrPort()
	if e == nil || e.peer == nil || e.peer.key != peerKey || e.src != strangerAP {
		t.Fatalf("roamed datagram: got %+v, want peer endpoint at %v", e, strangerAP)
	}
	// Not confirmed until wireguard-go uses the endpoint to send.
	if pp := a.PeerPath(peerKey); pp.Endpoint == strangerAP {
		t.Fatalf("address confirmed before authentication: %+v", pp)
	}
	if err := a.Send([][]byte{transport(1, 48)}, e); err != nil {
		t.Fatal(err)
	}
	if pp := a.PeerPath(peerKey); pp.Endpoint != strangerAP || pp.Path != "direct" {
		t.Fatalf("after send via roamed endpoint: %+v, want %v", pp, strangerAP)
	}
	stranger.SetReadDeadline(time.Now().Add(2 * time.Second))
	if n, _, err := stranger.ReadFromUDP(buf); err != nil || n != 48 {
		t.Fatalf("roamed address got n=%d err=%v, want the data packet", n, err)
	}

	// Removing the peer cuts it off.
	a.SetPeers(nil)
	if e := recv(known, transport(9, 48)); e != nil {
		t.Fatalf("datagram from removed peer accepted: %+v", e)
	}
	if err := a.Send([][]byte{transport(1, 48)}, ep); err == nil {
		t.Fatal("Send to removed peer succeeded")
	}
	if _, err := a.ParseEndpoint(peerKey.String()); err == nil {
		t.Fatal("ParseEndpoint of removed peer succeeded")
	}
}

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		name string
		pkt  []byte
		kind packetKind
		recv uint32
	}{
		{"empty", nil, kindGarbage, 0},
		{"short", []byte{1, 0, 0}, kindGarbage, 0},
		{"initiation", pad([]byte{1, 0, 0, 0}, initiationSize), kindInitiation, 0},
		{"initiation wrong size", pad([]byte{1, 0, 0, 0}, initiationSize-1), kindGarbage, 0},
		{"reserved bytes set", pad([]byte{1, 1, 0, 0}, initiationSize), kindGarbage, 0},
		{"response", pad([]byte{2, 0, 0, 0, 1, 0, 0, 0, 5, 0, 0, 0}, responseSize), kindReceiver, 5},
		{"cookie", pad([]byte{3, 0, 0, 0, 6, 0, 0, 0}, cookieReplySize), kindReceiver, 6},
		{"keepalive", pad([]byte{4, 0, 0, 0, 7, 0, 0, 0}, 32), kindReceiver, 7},
		{"transport too short", pad([]byte{4, 0, 0, 0, 7, 0, 0, 0}, 31), kindGarbage, 0},
		{"type 5", pad([]byte{5, 0, 0, 0}, 100), kindGarbage, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			kind, recv := classify(tc.pkt)
			if kind != tc.kind || recv != tc.recv {
				t.Errorf("classify = (%v, %d), want (%v, %d)", kind, recv, tc.kind, tc.recv)
			}
		})
	}
}

func pad(b []byte, n int) []byte {
	out := make([]byte, n)
	copy(out, b)
	return out
}

// FuzzClassify checks that classification never panics, agrees with the
// size rules, and that the opener rejects anything but a well-formed
// initiation for us.
func FuzzClassify(f *testing.F) {
	f.Add([]byte{})                                          // empty datagram
	f.Add(pad([]byte{1, 0, 0, 0}, initiationSize))           // initiation with bad mac1
	f.Add(pad([]byte{2, 0, 0, 0, 1, 0, 0, 0}, responseSize)) // response
	f.Add(pad([]byte{3, 0, 0, 0}, cookieReplySize))          // cookie reply
	f.Add(pad([]byte{4, 0, 0, 0, 9, 0, 0, 0}, 80))           // data
	f.Add([]byte("GET / HTTP/1.1\r\n"))                      // stray text
	priv := key.NewNode()
	o := newInitiationOpener(priv.Raw32(), priv.Public().Raw32())
	f.Fuzz(func(t *testing.T, pkt []byte) {
		kind, _ := classify(pkt)
		switch kind {
		case kindInitiation:
			if len(pkt) != initiationSize {
				t.Fatalf("initiation of size %d", len(pkt))
			}
		case kindReceiver:
			if len(pkt) < minTransportSize {
				t.Fatalf("receiver message of size %d", len(pkt))
			}
		}
		if _, ok := o.open(pkt); ok {
			t.Fatal("opener accepted a fuzzed initiation")
		}
		senderIndex(pkt)
	})
}

func TestReceiveDoesNotAllocate(t *testing.T) {
	if raceEnabled {
		// The race detector allocates on its own.
		t.Log("allocation count not meaningful under -race; checking the receive path runs")
	}
	a := newBind(t)
	fns, port, err := a.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	src, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	a.SetPeers([]PeerConfig{{Key: key.NewNode().Public(), Endpoints: []netip.AddrPort{src.LocalAddr().(*net.UDPAddr).AddrPort()}}})
	dst := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: int(port)}
	const runs = 50
	pkt := transport(3, 96)
	for range runs + 1 {
		if _, err := src.WriteToUDP(pkt, dst); err != nil {
			t.Fatal(err)
		}
	}
	bufs := make([][]byte, a.BatchSize())
	for i := range bufs {
		bufs[i] = make([]byte, 2048)
	}
	sizes := make([]int, len(bufs))
	eps := make([]conn.Endpoint, len(bufs))
	// Read one datagram per call so every run finds one waiting.
	one, oneSizes, oneEps := bufs[:1], sizes[:1], eps[:1]
	allocs := testing.AllocsPerRun(runs, func() {
		n, err := fns[0](one, oneSizes, oneEps)
		if err != nil || n != 1 || oneSizes[0] != len(pkt) {
			t.Fatalf("receive: n=%d size=%d err=%v", n, oneSizes[0], err)
		}
	})
	if !raceEnabled && allocs != 0 {
		t.Fatalf("receive allocates %.1f times per call, want 0", allocs)
	}
}

// fakeRelay records what the bind sends through the relay.
type fakeRelay struct {
	mu   sync.Mutex
	sent []relaySent
}

type relaySent struct {
	region int
	dst    key.NodePublic
	n      int
}

func (f *fakeRelay) Send(region int, dst key.NodePublic, pkts [][]byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, pkt := range pkts {
		f.sent = append(f.sent, relaySent{region, dst, len(pkt)})
	}
	return nil
}

func (f *fakeRelay) take() []relaySent {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.sent
	f.sent = nil
	return s
}

func TestRelayPath(t *testing.T) {
	fr := &fakeRelay{}
	b, err := New(Options{PrivateKey: key.NewNode(), Relay: fr})
	if err != nil {
		t.Fatal(err)
	}
	peerKey := key.NewNode().Public()
	b.SetPeers([]PeerConfig{{Key: peerKey, HomeRegion: 3}})
	for cycle := range 3 {
		fns, _, err := b.Open(0)
		if err != nil {
			t.Fatal(err)
		}
		if len(fns) != 3 {
			t.Fatalf("got %d receive funcs, want 3 (IPv4, IPv6, relay)", len(fns))
		}
		relayRecv := fns[2]

		// Packets from strangers or that are not WireGuard are dropped.
		b.DeliverRelayed(3, key.NewNode().Public(), transport(1, 48))
		b.DeliverRelayed(3, peerKey, []byte("not wireguard"))
		b.DeliverRelayed(3, peerKey, transport(1, 64))
		bufs := [][]byte{make([]byte, 2048), make([]byte, 2048)}
		sizes := make([]int, 2)
		eps := make([]conn.Endpoint, 2)
		n, err := relayRecv(bufs, sizes, eps)
		if err != nil || n != 1 || sizes[0] != 64 {
			t.Fatalf("cycle %d: relay receive: n=%d sizes=%v err=%v, want the one peer packet", cycle, n, sizes, err)
		}
		e := eps[0].(*Endpoint)
		if e.peer == nil || e.peer.key != peerKey || !e.isRelay() {
			t.Fatalf("relayed endpoint: %+v", e)
		}
		// wireguard-go answering over the relayed endpoint confirms the relay path.
		if err := b.Send([][]byte{transport(5, 48)}, e); err != nil {
			t.Fatal(err)
		}
		if got := fr.take(); len(got) != 1 || got[0] != (relaySent{3, peerKey, 48}) {
			t.Fatalf("relay sends: %+v", got)
		}
		if pp := b.PeerPath(peerKey); pp.Path != "relay" || pp.Region != 3 {
			t.Fatalf("path: %+v, want relay region 3", pp)
		}
		w := recvOnce(relayRecv, 2)
		if err := b.Close(); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-w:
			if !errors.Is(err, net.ErrClosed) {
				t.Fatalf("relay receive after Close: %v, want net.ErrClosed", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("relay receive still blocked after Close")
		}
		// Delivered while closed: dropped, not queued for the next Open.
		b.DeliverRelayed(3, peerKey, transport(1, 64))
	}
	// Without a confirmed path, initiations go to the relay and candidates.
	b2, err := New(Options{PrivateKey: key.NewNode(), Relay: fr})
	if err != nil {
		t.Fatal(err)
	}
	b2.SetPeers([]PeerConfig{{Key: peerKey, HomeRegion: 4, Endpoints: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:9")}}})
	if _, _, err := b2.Open(0); err != nil {
		t.Fatal(err)
	}
	defer b2.Close()
	ep, _ := b2.ParseEndpoint(peerKey.String())
	init := make([]byte, initiationSize)
	binary.LittleEndian.PutUint32(init, msgInitiation)
	if err := b2.Send([][]byte{init}, ep); err != nil {
		t.Fatal(err)
	}
	if got := fr.take(); len(got) != 1 || got[0].region != 4 {
		t.Fatalf("initiation relay sends: %+v, want one to region 4", got)
	}
}

// TestFamilies: the bind reports which sockets it opened. An IPv6 listen
// address the host does not have (as on a host without IPv6) leaves only
// the IPv4 socket, and the bind still opens.
func TestFamilies(t *testing.T) {
	for _, tc := range []struct {
		name   string
		addr6  netip.Addr
		v4, v6 bool
	}{
		{"both", netip.Addr{}, true, true},
		{"no IPv6 address", netip.MustParseAddr("2001:db8::1"), true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := New(Options{PrivateKey: key.NewNode(), ListenAddr6: tc.addr6})
			if err != nil {
				t.Fatal(err)
			}
			if _, _, err := b.Open(0); err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			if v4, v6 := b.Families(); v4 != tc.v4 || v6 != tc.v6 {
				t.Errorf("Families() = %v, %v; want %v, %v", v4, v6, tc.v4, tc.v6)
			}
		})
	}
}

// TestInitResentWhenRegionKnown: a handshake initiation sent while the
// peer's relay region was unknown (its netmap entry came before its
// region did) goes out through the region as soon as an update names it,
// instead of waiting for WireGuard's retry.
func TestInitResentWhenRegionKnown(t *testing.T) {
	fr := &fakeRelay{}
	b, err := New(Options{PrivateKey: key.NewNode(), Relay: fr})
	if err != nil {
		t.Fatal(err)
	}
	peerKey := key.NewNode().Public()
	b.SetPeers([]PeerConfig{{Key: peerKey}})
	if _, _, err := b.Open(0); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	init := make([]byte, initiationSize)
	binary.LittleEndian.PutUint32(init, msgInitiation)
	ep, err := b.ParseEndpoint(peerKey.String())
	if err != nil {
		t.Fatal(err)
	}
	b.Send([][]byte{init}, ep) // no path at all: an error, and nothing sent
	if s := fr.take(); len(s) != 0 {
		t.Fatalf("sent through the relay with no region known: %v", s)
	}
	b.UpdatePeers([]PeerConfig{{Key: peerKey, HomeRegion: 2}}, nil)
	s := fr.take()
	if len(s) != 1 || s[0].region != 2 || s[0].dst != peerKey || s[0].n != initiationSize {
		t.Errorf("after the region became known: relay sends %+v, want the initiation to region 2", s)
	}
	// Another update naming the same region sends nothing more.
	b.UpdatePeers([]PeerConfig{{Key: peerKey, HomeRegion: 2}}, nil)
	if s := fr.take(); len(s) != 0 {
		t.Errorf("a second update resent %v", s)
	}
}

// TestSendPastBatchSize sends more datagrams in one Send than BatchSize,
// none of which can share a UDP_SEGMENT message (each is longer than the
// one before): wireguard-go sends as many as its TUN device reads at
// once (128 on a kernel TUN device with offloads), whatever the bind's
// BatchSize.
func TestSendPastBatchSize(t *testing.T) {
	a := newBind(t)
	fns, port, err := a.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	peer, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	peerKey := key.NewNode().Public()
	a.SetPeers([]PeerConfig{{Key: peerKey, Endpoints: []netip.AddrPort{peer.LocalAddr().(*net.UDPAddr).AddrPort()}}})
	// A datagram from the peer's address gives its endpoint.
	if _, err := peer.WriteToUDP(transport(7, 48), &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: int(port)}); err != nil {
		t.Fatal(err)
	}
	bufs, sizes, eps := [][]byte{make([]byte, 2048)}, []int{0}, []conn.Endpoint{nil}
	if n, err := fns[0](bufs, sizes, eps); err != nil || n != 1 || sizes[0] == 0 {
		t.Fatalf("receive: n=%d size=%d err=%v", n, sizes[0], err)
	}
	n := 3*a.BatchSize() + 5
	var out [][]byte
	for i := range n {
		out = append(out, transport(1, 48+i))
	}
	if err := a.Send(out, eps[0]); err != nil {
		t.Fatalf("Send of %d datagrams: %v", n, err)
	}
	buf := make([]byte, 2048)
	peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	for i := range n {
		got, _, err := peer.ReadFromUDP(buf)
		if err != nil {
			t.Fatalf("datagram %d of %d: %v", i, n, err)
		}
		if want := 48 + i; got != want {
			t.Fatalf("datagram %d: %d bytes, want %d", i, got, want)
		}
	}
}
