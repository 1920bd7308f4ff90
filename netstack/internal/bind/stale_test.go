package bind

import (
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"

	"beam.dev/beam/types/key"
	"golang.zx2c4.com/wireguard/conn"
)

// TestStaleSession: transport data from a peer naming a receiver index
// this bind never handed out (a session with an earlier process of the
// node) is reported, at most once per staleSessionEvery; data of our own
// sessions is not.
func TestStaleSession(t *testing.T) {
	stale := make(chan key.NodePublic, 10)
	b, err := New(Options{PrivateKey: key.NewNode(), OnStaleSession: func(k key.NodePublic) { stale <- k }})
	if err != nil {
		t.Fatal(err)
	}
	fns, port, err := b.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	peerKey := key.NewNode().Public()
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	b.SetPeers([]PeerConfig{{Key: peerKey, Endpoints: []netip.AddrPort{pc.LocalAddr().(*net.UDPAddr).AddrPort()}}})
	dst := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: int(port)}
	recv := func(pkt []byte) {
		t.Helper()
		if _, err := pc.WriteToUDP(pkt, dst); err != nil {
			t.Fatal(err)
		}
		bufs := [][]byte{make([]byte, 2048)}
		if n, err := fns[0](bufs, []int{0}, []conn.Endpoint{nil}); err != nil || n != 1 {
			t.Fatalf("receive: n=%d err=%v", n, err)
		}
	}
	reported := func() bool {
		select {
		case k := <-stale:
			if k != peerKey {
				t.Fatalf("reported %v, want the peer %v", k.ShortString(), peerKey.ShortString())
			}
			return true
		default:
			return false
		}
	}

	// Our session: a handshake we sent with sender index 9.
	init := make([]byte, initiationSize)
	binary.LittleEndian.PutUint32(init, msgInitiation)
	binary.LittleEndian.PutUint32(init[4:], 9)
	ep, err := b.ParseEndpoint(peerKey.String())
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Send([][]byte{init}, ep); err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		name string
		pkt  []byte
		want bool
	}{
		{"our session", transport(9, 48), false},
		{"our session again", transport(9, 48), false},
		{"unknown session", transport(7, 48), true},
		{"another unknown session, at once", transport(8, 48), false},
		{"our session after", transport(9, 48), false},
		{"handshake response naming an unknown index", append([]byte{msgResponse, 0, 0, 0, 1, 0, 0, 0, 7, 0, 0, 0}, make([]byte, responseSize-12)...), false},
	}
	for _, s := range steps {
		recv(s.pkt)
		if got := reported(); got != s.want {
			t.Errorf("%s: reported %v, want %v", s.name, got, s.want)
		}
	}
	// After staleSessionEvery, a stale session is reported again.
	b.mu.Lock()
	pe := b.peers[peerKey]
	b.mu.Unlock()
	pe.p.lastStale.Store(time.Now().Add(-staleSessionEvery).UnixNano())
	recv(transport(8, 48))
	if !reported() {
		t.Error("unknown session after staleSessionEvery: not reported, want reported")
	}
}

// TestSessionNeedsWireGuardsWord: a response-shaped datagram from a
// peer's address is not a session until wireguard-go, which checks it,
// sends a transport message after it (before, the datagram alone opened
// the no-session gate for the key lifetime, spoofed or not). A transport
// message arriving after wireguard-go answered is one.
func TestSessionNeedsWireGuardsWord(t *testing.T) {
	resp := make([]byte, responseSize)
	binary.LittleEndian.PutUint32(resp, msgResponse)
	transport := make([]byte, minTransportSize)
	binary.LittleEndian.PutUint32(transport, msgTransport)

	p := &peer{}
	noteHandshake(p, resp, 100)
	if hs := p.lastHandshake.Load(); hs != 0 {
		t.Fatalf("a response arriving alone made a handshake at %d", hs)
	}
	noteSent(p, resp, 150) // wireguard-go sends a response: not a session either
	if hs := p.lastHandshake.Load(); hs != 0 {
		t.Fatalf("a response sent made a handshake at %d", hs)
	}
	noteSent(p, transport, 200)
	if hs, data := p.lastHandshake.Load(), p.lastData.Load(); hs != 100 || data != 200 {
		t.Errorf("after wireguard-go's transport message: handshake %d, data %d; want 100, 200", hs, data)
	}

	q := &peer{}
	noteSent(q, resp, 300) // we answered q's initiation
	noteHandshake(q, transport, 310)
	if hs := q.lastHandshake.Load(); hs != 300 {
		t.Errorf("transport after our response: handshake %d, want 300", hs)
	}
}
