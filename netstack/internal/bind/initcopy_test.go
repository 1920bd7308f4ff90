package bind

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"

	"beam.dev/beam/types/key"
	"golang.zx2c4.com/wireguard/conn"
)

// handshakeMsg returns a handshake message of type typ and the size
// classify wants, with sender index sender, receiver index receiver (for
// a response) and a random ephemeral key.
func handshakeMsg(typ, sender, receiver uint32) []byte {
	var p []byte
	switch typ {
	case msgInitiation:
		p = make([]byte, initiationSize)
		rand.Read(p[8:40])
	case msgResponse:
		p = make([]byte, responseSize)
		binary.LittleEndian.PutUint32(p[8:], receiver)
		rand.Read(p[12:44])
	}
	binary.LittleEndian.PutUint32(p, typ)
	binary.LittleEndian.PutUint32(p[4:], sender)
	return p
}

// TestInitiationCopies: of the copies of one handshake initiation a peer
// sprays over its paths (two UDP sockets of ours, the relay) and resends,
// wireguard-go gets one. Its parallel handshake workers answer two copies
// handled at once twice, the second answer's session replacing the first,
// and the initiator's packets on the first were then dropped until its
// 15 s timer started a new handshake. A copy arriving once the
// initiation is answered gets the answer again, back the way it came; a
// copy of an unanswered initiation goes over again after initCopyHold;
// copies of a response are dropped too.
func TestInitiationCopies(t *testing.T) {
	fr := &fakeRelay{}
	b, err := New(Options{PrivateKey: key.NewNode(), Relay: fr})
	if err != nil {
		t.Fatal(err)
	}
	fns, port, err := b.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if len(fns) != 3 {
		t.Fatalf("got %d receive funcs, want 3 (IPv4, IPv6, relay)", len(fns))
	}
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	peerKey := key.NewNode().Public()
	const region = 7
	b.SetPeers([]PeerConfig{{Key: peerKey, HomeRegion: region, Endpoints: []netip.AddrPort{pc.LocalAddr().(*net.UDPAddr).AddrPort()}}})
	p := b.peers[peerKey].p
	dst := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: int(port)}

	// overUDP sends pkt from the peer's address and returns the
	// endpoint wireguard-go gets it with, or nil if the bind dropped it.
	overUDP := func(pkt []byte) conn.Endpoint {
		t.Helper()
		if _, err := pc.WriteToUDP(pkt, dst); err != nil {
			t.Fatal(err)
		}
		bufs := [][]byte{make([]byte, 2048)}
		sizes, eps := []int{0}, []conn.Endpoint{nil}
		if n, err := fns[0](bufs, sizes, eps); err != nil || n != 1 {
			t.Fatalf("receive: n=%d err=%v", n, err)
		}
		if sizes[0] == 0 {
			return nil
		}
		if !bytes.Equal(bufs[0][:sizes[0]], pkt) {
			t.Fatalf("handed over %d bytes that are not the datagram", sizes[0])
		}
		return eps[0]
	}
	// overRelay delivers pkt through the relay and reports whether it
	// reached the relay ReceiveFunc.
	overRelay := func(pkt []byte) bool {
		t.Helper()
		b.DeliverRelayed(region, peerKey, pkt)
		select {
		case r := <-b.rs.queue:
			b.rs.put(r.buf)
			return true
		default:
			return false
		}
	}
	// answered reads what the peer's address got within wait: the
	// datagram, or nil.
	answered := func(wait time.Duration) []byte {
		t.Helper()
		pc.SetReadDeadline(time.Now().Add(wait))
		buf := make([]byte, 2048)
		n, _, err := pc.ReadFromUDP(buf)
		if err != nil {
			return nil
		}
		return buf[:n]
	}

	init := handshakeMsg(msgInitiation, 0x11, 0)
	ep := overUDP(init)
	if ep == nil {
		t.Fatal("first copy of an initiation: dropped, want it handed to wireguard-go")
	}
	if ep := overUDP(init); ep != nil {
		t.Error("second copy over UDP: handed over, want dropped")
	}
	if overRelay(init) {
		t.Error("copy through the relay: handed over, want dropped")
	}
	if got := answered(100 * time.Millisecond); got != nil {
		t.Fatalf("unanswered initiation: the peer got %d bytes from a copy, want nothing", len(got))
	}

	// wireguard-go answers; a copy soon after (sprayed, in flight)
	// gets nothing more.
	resp := handshakeMsg(msgResponse, 0x22, 0x11)
	if err := b.Send([][]byte{resp}, ep); err != nil {
		t.Fatal(err)
	}
	if got := answered(5 * time.Second); !bytes.Equal(got, resp) {
		t.Fatalf("the peer got %x, want the response", got)
	}
	if ep := overUDP(init); ep != nil {
		t.Error("copy right after the response: handed over, want dropped")
	}
	if got := answered(100 * time.Millisecond); got != nil {
		t.Errorf("copy right after the response: the peer got %d bytes, want nothing yet", len(got))
	}

	// A resend respResendEvery later: the answer was lost; it goes
	// again, over UDP and through the relay, each the way the copy came.
	p.initCopies.mu.Lock()
	p.initCopies.respAt -= int64(respResendEvery)
	p.initCopies.mu.Unlock()
	if ep := overUDP(init); ep != nil {
		t.Error("resent initiation: handed over, want dropped")
	}
	if got := answered(5 * time.Second); !bytes.Equal(got, resp) {
		t.Errorf("resent initiation over UDP: the peer got %x, want the response again", got)
	}
	p.initCopies.mu.Lock()
	p.initCopies.respAt -= int64(respResendEvery)
	p.initCopies.mu.Unlock()
	fr.take()
	if overRelay(init) {
		t.Error("resent initiation through the relay: handed over, want dropped")
	}
	if sent := fr.take(); len(sent) != 1 || sent[0].region != region || sent[0].dst != peerKey || sent[0].n != responseSize {
		t.Errorf("resent initiation through the relay: relay sent %+v, want the response to the peer in region %d", sent, region)
	}

	// A new initiation goes over; copies of it, unanswered, go over
	// again after initCopyHold.
	init2 := handshakeMsg(msgInitiation, 0x33, 0)
	if ep := overUDP(init2); ep == nil {
		t.Fatal("new initiation: dropped, want it handed over")
	}
	if ep := overUDP(init2); ep != nil {
		t.Error("copy of the new initiation: handed over, want dropped")
	}
	p.initCopies.mu.Lock()
	for i := range p.initCopies.pending {
		p.initCopies.pending[i].at -= int64(initCopyHold)
	}
	p.initCopies.mu.Unlock()
	if ep := overUDP(init2); ep == nil {
		t.Error("copy of an initiation unanswered for initCopyHold: dropped, want it handed over")
	}
	if ep := overUDP(init2); ep != nil {
		t.Error("next copy: handed over, want dropped")
	}
	// The response to the first initiation, sent again by the bind
	// above, is not an answer to this one.
	if got := answered(100 * time.Millisecond); got != nil {
		t.Errorf("unanswered new initiation: the peer got %d bytes, want nothing", len(got))
	}

	// Responses from the peer: each is handed over once.
	presp := handshakeMsg(msgResponse, 0x44, 0x55)
	if ep := overUDP(presp); ep == nil {
		t.Fatal("response: dropped, want it handed over")
	}
	if overRelay(presp) {
		t.Error("copy of the response through the relay: handed over, want dropped")
	}
	if ep := overUDP(presp); ep != nil {
		t.Error("copy of the response over UDP: handed over, want dropped")
	}
	if ep := overUDP(handshakeMsg(msgResponse, 0x46, 0x55)); ep == nil {
		t.Error("another response: dropped, want it handed over")
	}
	// Transport data is never held back.
	for i := range 2 {
		if ep := overUDP(transport(0x22, 64)); ep == nil {
			t.Errorf("transport data %d: dropped, want it handed over", i)
		}
	}
}

// TestInitResentUntilAnswered: an initiation is resent (Maintain, after
// initRetryAfter) until the peer answers it, however much other WireGuard
// traffic the peer sends meanwhile: a peer still sending on a session of
// this node's previous process is what makes a restarted node start a
// handshake, and before, that traffic stopped the resends, so a lost
// initiation or answer waited for WireGuard's own retry after 5 s.
func TestInitResentUntilAnswered(t *testing.T) {
	b, err := New(Options{PrivateKey: key.NewNode()})
	if err != nil {
		t.Fatal(err)
	}
	fns, port, err := b.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	peerKey := key.NewNode().Public()
	b.SetPeers([]PeerConfig{{Key: peerKey, Endpoints: []netip.AddrPort{pc.LocalAddr().(*net.UDPAddr).AddrPort()}}})
	dst := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: int(port)}
	fromPeer := func(pkt []byte) {
		t.Helper()
		if _, err := pc.WriteToUDP(pkt, dst); err != nil {
			t.Fatal(err)
		}
		bufs := [][]byte{make([]byte, 2048)}
		if n, err := fns[0](bufs, []int{0}, []conn.Endpoint{nil}); err != nil || n != 1 {
			t.Fatalf("receive: n=%d err=%v", n, err)
		}
	}
	// toPeer reads what the peer got within wait; nil if nothing.
	toPeer := func(wait time.Duration) []byte {
		t.Helper()
		pc.SetReadDeadline(time.Now().Add(wait))
		buf := make([]byte, 2048)
		n, _, err := pc.ReadFromUDP(buf)
		if err != nil {
			return nil
		}
		return buf[:n]
	}
	ep, err := b.ParseEndpoint(peerKey.String())
	if err != nil {
		t.Fatal(err)
	}
	init := handshakeMsg(msgInitiation, 0x61, 0)
	if err := b.Send([][]byte{init}, ep); err != nil {
		t.Fatal(err)
	}
	if got := toPeer(5 * time.Second); !bytes.Equal(got, init) {
		t.Fatalf("the peer got %x, want the initiation", got)
	}
	// Data of a session we do not have, and a response to another
	// initiation: no answer.
	fromPeer(transport(0x99, 64))
	fromPeer(handshakeMsg(msgResponse, 0x71, 0x62))
	b.AgeForTest(peerKey, initRetryAfter)
	b.Maintain()
	if got := toPeer(5 * time.Second); !bytes.Equal(got, init) {
		t.Fatalf("unanswered after %v, with other traffic from the peer: the peer got %x, want the initiation again", initRetryAfter, got)
	}
	// The answer.
	fromPeer(handshakeMsg(msgResponse, 0x72, 0x61))
	b.AgeForTest(peerKey, initRetryAfter)
	b.Maintain()
	if got := toPeer(200 * time.Millisecond); got != nil {
		t.Errorf("answered: the peer got %d bytes, want nothing", len(got))
	}
}

// TestForgedCopiesDoNotHold: a copy of an initiation or a response that
// differs from the genuine one in an encrypted field (anyone can make
// one: the sender index and ephemeral key travel in clear, and mac1's
// key is the responder's public key) is no copy of it. wireguard-go
// refuses the forgery; the genuine message that follows must still reach
// it, not be dropped as a copy.
func TestForgedCopiesDoNotHold(t *testing.T) {
	b, err := New(Options{PrivateKey: key.NewNode()})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	peerKey := key.NewNode().Public()
	b.SetPeers([]PeerConfig{{Key: peerKey, Endpoints: []netip.AddrPort{netip.MustParseAddrPort("192.0.2.7:41641")}}})
	p := b.peers[peerKey].p
	e := newEndpoint(p, netip.MustParseAddrPort("192.0.2.7:41641"))
	now := time.Now().UnixNano()
	for _, tc := range []struct {
		name    string
		genuine []byte
		at      int // a byte of an encrypted field
	}{
		{"initiation", handshakeMsg(msgInitiation, 0x11, 0), 100},
		{"response", handshakeMsg(msgResponse, 0x22, 0x33), 50},
	} {
		forged := bytes.Clone(tc.genuine)
		forged[tc.at] ^= 1
		if !b.admitHandshake(p, e, forged, now) {
			t.Fatalf("%s: the forgery was dropped; it goes to wireguard-go, which refuses it", tc.name)
		}
		if !b.admitHandshake(p, e, tc.genuine, now) {
			t.Errorf("%s: the genuine message after a forged copy was dropped, want it handed over", tc.name)
		}
		if b.admitHandshake(p, e, tc.genuine, now) {
			t.Errorf("%s: a true copy of the genuine message was handed over, want dropped", tc.name)
		}
	}
}

// TestResentAnswerOnlyOverTrustedPaths: a copy of an answered initiation
// from an address the bind learned from such a copy (a captured
// initiation replayed from a forged source) draws no answer: the node
// must not reflect answers at addresses an attacker names. From the
// peer's known address it does, at most maxRespResends times.
func TestResentAnswerOnlyOverTrustedPaths(t *testing.T) {
	b, err := New(Options{PrivateKey: key.NewNode()})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.Open(0); err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	listen := func() *net.UDPConn {
		pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { pc.Close() })
		return pc
	}
	known, victim := listen(), listen()
	knownAddr := known.LocalAddr().(*net.UDPAddr).AddrPort()
	peerKey := key.NewNode().Public()
	b.SetPeers([]PeerConfig{{Key: peerKey, Endpoints: []netip.AddrPort{knownAddr}}})
	p := b.peers[peerKey].p
	fromKnown := newEndpoint(p, knownAddr)
	fromVictim := newEndpoint(p, victim.LocalAddr().(*net.UDPAddr).AddrPort())
	got := func(pc *net.UDPConn) bool {
		pc.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		n, _, err := pc.ReadFromUDP(make([]byte, 2048))
		return err == nil && n == responseSize
	}

	init := handshakeMsg(msgInitiation, 0x11, 0)
	now := time.Now().UnixNano()
	if !b.admitHandshake(p, fromKnown, init, now) {
		t.Fatal("first copy dropped")
	}
	p.noteResponse(handshakeMsg(msgResponse, 0x22, 0x11), fromKnown) // wireguard-go answered
	resends := 0
	for i := range maxRespResends + 3 {
		now += int64(respResendEvery)
		b.admitHandshake(p, fromVictim, init, now)
		if got(victim) {
			t.Fatalf("replay %d from an address only the copy vouches for drew the answer", i)
		}
		now += int64(respResendEvery)
		b.admitHandshake(p, fromKnown, init, now)
		if got(known) {
			resends++
		}
	}
	if resends != maxRespResends {
		t.Errorf("the peer's known address got the answer %d times, want %d", resends, maxRespResends)
	}
}

// TestForgedInitiationKeepsAnswer: an initiation wireguard-go has not
// answered (a forgery from a spoofed source: wireguard-go refuses it, and
// the bind cannot tell) does not replace the answered one: a copy of the
// genuine initiation resent after it still gets the saved answer, rather
// than waiting for the initiator's retry after 5 s. A forgery sharing the
// genuine initiation's sender index, arriving before the answer, does not
// take the answer either.
func TestForgedInitiationKeepsAnswer(t *testing.T) {
	b, err := New(Options{PrivateKey: key.NewNode()})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.Open(0); err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	knownAddr := pc.LocalAddr().(*net.UDPAddr).AddrPort()
	peerKey := key.NewNode().Public()
	b.SetPeers([]PeerConfig{{Key: peerKey, Endpoints: []netip.AddrPort{knownAddr}}})
	p := b.peers[peerKey].p
	fromKnown := newEndpoint(p, knownAddr)
	fromSpoofed := newEndpoint(p, netip.MustParseAddrPort("192.0.2.9:41641"))
	gotAnswer := func(want []byte) bool {
		pc.SetReadDeadline(time.Now().Add(time.Second))
		buf := make([]byte, 2048)
		n, _, err := pc.ReadFromUDP(buf)
		return err == nil && bytes.Equal(buf[:n], want)
	}

	now := time.Now().UnixNano()
	for _, tc := range []struct {
		name string
		// forgeBefore: the forgery arrives before wireguard-go answers.
		forgeBefore bool
		// sameSender: the forgery copies the genuine sender index.
		sameSender bool
	}{
		{"forgery after the answer", false, false},
		{"forgery with the sender index after the answer", false, true},
		{"forgery with the sender index before the answer", true, true},
	} {
		sender := uint32(0x100 + len(tc.name))
		init := handshakeMsg(msgInitiation, sender, 0)
		forged := handshakeMsg(msgInitiation, sender+1, 0)
		if tc.sameSender {
			forged = bytes.Clone(init)
			forged[100] ^= 1
		}
		resp := handshakeMsg(msgResponse, 0x22, sender)
		now += int64(initCopyHold)
		if !b.admitHandshake(p, fromKnown, init, now) {
			t.Fatalf("%s: the genuine initiation was dropped", tc.name)
		}
		if tc.forgeBefore && !b.admitHandshake(p, fromSpoofed, forged, now) {
			t.Fatalf("%s: the forgery was dropped; it goes to wireguard-go, which refuses it", tc.name)
		}
		p.noteResponse(resp, fromKnown) // wireguard-go answered the genuine one
		if !tc.forgeBefore && !b.admitHandshake(p, fromSpoofed, forged, now) {
			t.Fatalf("%s: the forgery was dropped; it goes to wireguard-go, which refuses it", tc.name)
		}
		now += int64(respResendEvery)
		if b.admitHandshake(p, fromKnown, init, now) {
			t.Errorf("%s: resent genuine copy handed over, want the saved answer sent instead", tc.name)
		}
		if !gotAnswer(resp) {
			t.Errorf("%s: resent genuine copy drew no answer, want the saved one", tc.name)
		}
	}
}
