package derpserver_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"beam.dev/beam/derp"
	"beam.dev/beam/derp/derpserver"
	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testTimeout bounds every wait in these tests.
const testTimeout = 10 * time.Second

func newServer(t testing.TB, opts derpserver.Options) (*derpserver.Server, string) {
	t.Helper()
	s := derpserver.New(opts)
	hs := httptest.NewServer(s)
	t.Cleanup(func() {
		s.Close()
		hs.Close()
	})
	return s, hs.URL
}

func dial(t testing.TB, url string, priv key.NodePrivate, ws bool) *derp.Client {
	t.Helper()
	c, err := derp.Dial(t.Context(), url, priv, derp.ClientOptions{WebSocket: ws})
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// recv returns the next message that is not a keepalive. It closes the
// client if nothing comes within testTimeout.
func recv(t testing.TB, c *derp.Client) derp.ReceivedMessage {
	t.Helper()
	timer := time.AfterFunc(testTimeout, func() { c.Close() })
	defer timer.Stop()
	for {
		m, err := c.Recv()
		if err != nil {
			t.Fatalf("recv: %v", err)
		}
		if _, ok := m.(derp.KeepAliveMessage); ok {
			continue
		}
		return m
	}
}

func recvPacket(t testing.TB, c *derp.Client) derp.ReceivedPacket {
	t.Helper()
	m := recv(t, c)
	p, ok := m.(derp.ReceivedPacket)
	if !ok {
		t.Fatalf("got %T %+v, want ReceivedPacket", m, m)
	}
	return p
}

// recvErr waits until Recv fails and returns the messages seen before.
func recvErr(t testing.TB, c *derp.Client) []derp.ReceivedMessage {
	t.Helper()
	timer := time.AfterFunc(testTimeout, func() { t.Error("Recv did not fail in time"); c.Close() })
	defer timer.Stop()
	var msgs []derp.ReceivedMessage
	for {
		m, err := c.Recv()
		if err != nil {
			return msgs
		}
		msgs = append(msgs, m)
	}
}

func TestRelay(t *testing.T) {
	for _, tc := range []struct {
		name     string
		wsA, wsB bool
	}{
		{"raw", false, false},
		{"websocket", true, true},
		{"mixed", false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, url := newServer(t, derpserver.Options{})
			ka, kb := key.NewNode(), key.NewNode()
			a := dial(t, url, ka, tc.wsA)
			b := dial(t, url, kb, tc.wsB)
			if a.ServerPublicKey() != s.PublicKey() {
				t.Fatalf("ServerPublicKey = %v, want %v", a.ServerPublicKey(), s.PublicKey())
			}
			big := bytes.Repeat([]byte{0xab}, derp.MaxPacketSize)
			for i, msg := range [][]byte{[]byte("hello"), []byte(derp.DiscoMagic + "disco"), big} {
				if err := a.Send(kb.Public(), msg); err != nil {
					t.Fatal(err)
				}
				p := recvPacket(t, b)
				if p.Source != ka.Public() || !bytes.Equal(p.Data, msg) {
					t.Fatalf("packet %d: got %d bytes from %v, want %d bytes from %v", i, len(p.Data), p.Source, len(msg), ka.Public())
				}
			}
			if err := b.Send(ka.Public(), []byte("reply")); err != nil {
				t.Fatal(err)
			}
			if p := recvPacket(t, a); p.Source != kb.Public() || string(p.Data) != "reply" {
				t.Fatalf("got %q from %v, want reply from B", p.Data, p.Source)
			}
			if err := a.Send(kb.Public(), make([]byte, derp.MaxPacketSize+1)); err == nil {
				t.Error("Send of an oversized packet succeeded")
			}
			if err := a.SendPing([8]byte{1, 2, 3}); err != nil {
				t.Fatal(err)
			}
			if m := recv(t, a); m != (derp.PongMessage{1, 2, 3}) {
				t.Fatalf("got %#v, want pong", m)
			}
			st := s.Stats()
			if st.Clients != 2 || st.PacketsRelayed != 4 || st.BytesRelayed != int64(5+len(derp.DiscoMagic)+5+len(big)+5) {
				t.Fatalf("Stats = %+v, want 2 clients, 4 packets", st)
			}
		})
	}
}

// TestSendBatch sends batches, raw and over WebSocket, and reads them
// with RecvReuse: every packet arrives, in order, and intact until the
// next read; a batch holding an oversized packet is refused whole.
func TestSendBatch(t *testing.T) {
	for _, ws := range []bool{false, true} {
		t.Run(fmt.Sprintf("websocket=%v", ws), func(t *testing.T) {
			_, url := newServer(t, derpserver.Options{})
			ka, kb := key.NewNode(), key.NewNode()
			a := dial(t, url, ka, ws)
			b := dial(t, url, kb, ws)
			var want [][]byte
			for i := range 100 {
				want = append(want, bytes.Repeat([]byte{byte(i)}, 1000+i*13))
			}
			want = append(want, bytes.Repeat([]byte{0xab}, derp.MaxPacketSize))
			for i := 0; i < len(want); i += 32 {
				if err := a.SendBatch(kb.Public(), want[i:min(i+32, len(want))]); err != nil {
					t.Fatal(err)
				}
			}
			timer := time.AfterFunc(testTimeout, func() { b.Close() })
			defer timer.Stop()
			for i := 0; i < len(want); {
				m, err := b.RecvReuse()
				if err != nil {
					t.Fatalf("packet %d: %v", i, err)
				}
				p, ok := m.(derp.ReceivedPacket)
				if !ok {
					continue
				}
				if p.Source != ka.Public() || !bytes.Equal(p.Data, want[i]) {
					t.Fatalf("packet %d: got %d bytes from %v, want %d bytes from %v", i, len(p.Data), p.Source, len(want[i]), ka.Public())
				}
				i++
			}
			if err := a.SendBatch(kb.Public(), [][]byte{[]byte("fits"), make([]byte, derp.MaxPacketSize+1)}); err == nil {
				t.Error("SendBatch with an oversized packet succeeded")
			}
			if err := a.Send(kb.Public(), []byte("after")); err != nil {
				t.Fatal(err)
			}
			if p := recvPacket(t, b); string(p.Data) != "after" {
				t.Errorf("after the refused batch got %q, want \"after\" (nothing of the batch)", p.Data)
			}
		})
	}
}

// handshakeAs speaks the handshake by hand: it claims the node key claim
// but seals its client info with sealer.
func handshakeAs(t *testing.T, url string, claim key.NodePublic, sealer key.NodePrivate) (derp.FrameType, []byte) {
	t.Helper()
	ft, p, _ := handshakeWith(t, url, claim, func(server key.MachinePublic, challenge []byte) []byte {
		info, _ := json.Marshal(derp.ClientInfo{Version: derp.ProtocolVersion, Challenge: challenge})
		return sealer.SealTo(server, info)
	})
	return ft, p
}

// handshakeWith speaks the handshake by hand, claiming the node key claim
// and sending the box seal returns for the server's key and challenge. It
// returns the server's reply and the box it sent.
func handshakeWith(t *testing.T, url string, claim key.NodePublic, seal func(server key.MachinePublic, challenge []byte) []byte) (derp.FrameType, []byte, []byte) {
	t.Helper()
	nc, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(testTimeout))
	fmt.Fprintf(nc, "GET /derp HTTP/1.1\r\nHost: relay\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n")
	br := bufio.NewReader(nc)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("status %s, want 101", resp.Status)
	}
	ft, p, err := derp.ReadFrame(br, derp.MaxFrameSize, nil)
	if err != nil || ft != derp.FrameServerKey {
		t.Fatalf("server key frame: %#x, %v", ft, err)
	}
	raw, challenge, err := derp.ParseServerKeyPayload(p)
	if err != nil {
		t.Fatal(err)
	}
	sealed := seal(key.MachinePublicFromRaw32(raw), challenge)
	bw := bufio.NewWriter(nc)
	derp.WriteFrame(bw, derp.FrameClientInfo, derp.AppendClientInfoPayload(nil, claim.Raw32(), sealed))
	bw.Flush()
	ft, p, err = derp.ReadFrame(br, derp.MaxFrameSize, nil)
	if err != nil {
		t.Fatalf("read reply: %v", err)
	}
	if ft != derp.FrameServerInfo {
		if _, _, err := derp.ReadFrame(br, derp.MaxFrameSize, nil); err == nil {
			t.Error("refused connection stayed open")
		}
	}
	return ft, p, sealed
}

// TestReplayedClientInfoRefused records an honest client's sealed client
// info and replays it on a new connection, as someone watching a relay
// over plain HTTP could: the box opens (it was sealed with the real key)
// but answers an old challenge, so it is refused. So is a box with no
// challenge at all.
func TestReplayedClientInfoRefused(t *testing.T) {
	s, url := newServer(t, derpserver.Options{})
	victim := key.NewNode()
	ft, _, recorded := handshakeWith(t, url, victim.Public(), func(server key.MachinePublic, challenge []byte) []byte {
		info, _ := json.Marshal(derp.ClientInfo{Version: derp.ProtocolVersion, Challenge: challenge})
		return victim.SealTo(server, info)
	})
	if ft != derp.FrameServerInfo {
		t.Fatalf("honest handshake got frame %#x, want server info", ft)
	}
	ft, p, _ := handshakeWith(t, url, victim.Public(), func(key.MachinePublic, []byte) []byte { return recorded })
	if ft != derp.FrameHealth || !strings.Contains(string(p), "challenge") {
		t.Fatalf("replayed client info got frame %#x %q, want health about the challenge", ft, p)
	}
	ft, p, _ = handshakeWith(t, url, victim.Public(), func(server key.MachinePublic, _ []byte) []byte {
		info, _ := json.Marshal(derp.ClientInfo{Version: 1})
		return victim.SealTo(server, info)
	})
	if ft != derp.FrameHealth || !strings.Contains(string(p), "challenge") {
		t.Fatalf("client info without a challenge got frame %#x %q, want health about the challenge", ft, p)
	}
	if got := s.Stats().Refused; got != 2 {
		t.Errorf("Stats.Refused = %d, want 2", got)
	}
}

func TestUnprovenKeyRefused(t *testing.T) {
	s, url := newServer(t, derpserver.Options{})
	victim, attacker := key.NewNode(), key.NewNode()
	if ft, _ := handshakeAs(t, url, attacker.Public(), attacker); ft != derp.FrameServerInfo {
		t.Fatalf("honest handshake got frame %#x, want server info", ft)
	}
	ft, p := handshakeAs(t, url, victim.Public(), attacker)
	if ft != derp.FrameHealth || !strings.Contains(string(p), "not proven") {
		t.Fatalf("claimed key got frame %#x %q, want health 'not proven'", ft, p)
	}
	if got := s.Stats().Refused; got != 1 {
		t.Errorf("Stats.Refused = %d, want 1", got)
	}
}

func TestVerifyClient(t *testing.T) {
	allowed, denied := key.NewNode(), key.NewNode()
	var mu sync.Mutex
	var asked []key.NodePublic
	coord := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != wire.PathDERPVerify {
			http.NotFound(w, r)
			return
		}
		if r.Header.Get("Authorization") != "Bearer relay-secret" {
			http.Error(w, "no relay token", http.StatusUnauthorized)
			return
		}
		k, err := key.ParseNodePublic(r.URL.Query().Get("key"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		mu.Lock()
		asked = append(asked, k)
		mu.Unlock()
		// The coordinator's answer, as wire defines it.
		if k == allowed.Public() {
			json.NewEncoder(w).Encode(wire.DERPVerifyResponse{Allow: true})
			return
		}
		w.WriteHeader(http.StatusForbidden)
		json.NewEncoder(w).Encode(wire.DERPVerifyResponse{Allow: false})
	}))
	defer coord.Close()

	_, url := newServer(t, derpserver.Options{VerifyClient: derpserver.VerifyWithCoordinator(coord.URL+wire.PathDERPVerify, "relay-secret", coord.Client())})
	dial(t, url, allowed, false)
	_, err := derp.Dial(t.Context(), url, denied, derp.ClientOptions{})
	if !errors.Is(err, derp.ErrRefused) {
		t.Fatalf("dial with unknown key: err = %v, want ErrRefused", err)
	}
	mu.Lock()
	got := append([]key.NodePublic(nil), asked...)
	mu.Unlock()
	if len(got) != 2 || got[0] != allowed.Public() || got[1] != denied.Public() {
		t.Errorf("coordinator was asked %v, want [allowed denied]", got)
	}

	verify := derpserver.VerifyWithCoordinator(coord.URL+wire.PathDERPVerify, "relay-secret", nil)
	if err := verify(t.Context(), denied.Public()); !errors.Is(err, derpserver.ErrNotAdmitted) {
		t.Errorf("verify(denied) = %v, want ErrNotAdmitted", err)
	}
	if err := verify(t.Context(), allowed.Public()); err != nil {
		t.Errorf("verify(allowed) = %v, want nil", err)
	}
	noToken := derpserver.VerifyWithCoordinator(coord.URL+wire.PathDERPVerify, "", nil)
	if err := noToken(t.Context(), allowed.Public()); !errors.Is(err, derpserver.ErrNotAdmitted) {
		t.Errorf("verify(allowed) without the relay token = %v, want ErrNotAdmitted", err)
	}
}

// sendUntil sends pkt from c to dst every few milliseconds until the
// returned stop func is called. It waits for a path that needs time to
// form (mesh presence) without sleeping on a guess.
func sendUntil(c *derp.Client, dst key.NodePublic, pkt []byte) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			if c.Send(dst, pkt) != nil {
				return
			}
			select {
			case <-done:
				return
			case <-tick.C:
			}
		}
	})
	return func() { close(done); wg.Wait() }
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

func TestMesh(t *testing.T) {
	const meshKey = "region-1-secret"
	// Each server needs the other's URL, so listen first.
	l1, l2 := listen(t), listen(t)
	u1, u2 := "http://"+l1.Addr().String(), "http://"+l2.Addr().String()
	k1, k2 := key.NewMachine(), key.NewMachine()
	// s1 lists itself too (unpinned, found out on dial) and pins s2; s2
	// pins s1.
	s1 := derpserver.New(derpserver.Options{PrivateKey: k1, MeshKey: meshKey, MeshWith: []derpserver.MeshPeer{{URL: u1}, {URL: u2, Key: k2.Public()}}})
	s2 := derpserver.New(derpserver.Options{PrivateKey: k2, MeshKey: meshKey, MeshWith: []derpserver.MeshPeer{{URL: u1, Key: k1.Public()}}})
	h1 := &httptest.Server{Listener: l1, Config: &http.Server{Handler: s1}}
	h2 := &httptest.Server{Listener: l2, Config: &http.Server{Handler: s2}}
	h1.Start()
	h2.Start()
	t.Cleanup(func() {
		s1.Close()
		s2.Close()
		h1.Close()
		h2.Close()
	})

	ka, kb := key.NewNode(), key.NewNode()
	a := dial(t, h1.URL, ka, false)
	b := dial(t, h2.URL, kb, true)

	stop := sendUntil(a, kb.Public(), []byte("a to b"))
	p := recvPacket(t, b)
	stop()
	if p.Source != ka.Public() || string(p.Data) != "a to b" {
		t.Fatalf("B got %q from %v, want 'a to b' from A", p.Data, p.Source)
	}
	stop = sendUntil(b, ka.Public(), []byte("b to a"))
	for {
		m := recv(t, a)
		if _, ok := m.(derp.PeerGoneMessage); ok {
			continue // "not here" answers from before the mesh formed
		}
		p, ok := m.(derp.ReceivedPacket)
		if !ok || p.Source != kb.Public() || string(p.Data) != "b to a" {
			t.Fatalf("A got %#v, want 'b to a' from B", m)
		}
		break
	}
	stop()
	if st := s1.Stats(); st.PacketsForwarded == 0 || st.RemoteClients == 0 || st.MeshClients != 1 {
		t.Errorf("s1 Stats = %+v, want forwarded packets, remote clients and one mesh client", st)
	}

	// When B leaves relay 2, A (who sent to B) hears it is gone.
	b.Close()
	for {
		m := recv(t, a)
		if g, ok := m.(derp.PeerGoneMessage); ok && g.Peer == kb.Public() && g.Reason == derp.PeerGoneDisconnected {
			break
		}
	}
}

// logWatch is a slog handler that reports when a record whose message
// contains want is logged.
type logWatch struct {
	want string
	once sync.Once
	seen chan struct{}
}

func newLogWatch(want string) *logWatch { return &logWatch{want: want, seen: make(chan struct{})} }

func (w *logWatch) Enabled(context.Context, slog.Level) bool { return true }
func (w *logWatch) Handle(_ context.Context, r slog.Record) error {
	if strings.Contains(r.Message, w.want) {
		w.once.Do(func() { close(w.seen) })
	}
	return nil
}
func (w *logWatch) WithAttrs([]slog.Attr) slog.Handler { return w }
func (w *logWatch) WithGroup(string) slog.Handler      { return w }

func (w *logWatch) wait(t *testing.T) {
	t.Helper()
	select {
	case <-w.seen:
	case <-time.After(testTimeout):
		t.Fatalf("no log %q within %v", w.want, testTimeout)
	}
}

// TestMeshImpostorRefused puts an impostor at the URL where a relay with a
// pinned key should be: a real relay of the same region (it knows the
// mesh key, so the mesh proofs alone pass) with another machine key. The
// pinning relay refuses it before sending it anything, so it gets no
// client info, no watch, and none of the packets for its clients. An
// unpinned relay, for comparison, meshes with the impostor.
func TestMeshImpostorRefused(t *testing.T) {
	const meshKey = "region-1-secret"
	impostor, impostorURL := newServer(t, derpserver.Options{MeshKey: meshKey})
	real := key.NewMachine() // the relay that should be at impostorURL
	if impostor.PublicKey() == real.Public() {
		t.Fatal("impostor has the real relay's key")
	}

	refused := newLogWatch("refusing mesh peer")
	s1, url1 := newServer(t, derpserver.Options{
		Logger:   slog.New(refused),
		MeshKey:  meshKey,
		MeshWith: []derpserver.MeshPeer{{URL: impostorURL, Key: real.Public()}},
	})
	refused.wait(t)
	if st := impostor.Stats(); st.Accepted != 0 || st.MeshClients != 0 {
		t.Errorf("impostor Stats = %+v after the pinned relay refused it, want nothing accepted, no mesh client", st)
	}

	// A client of the impostor is unknown to s1: a packet for it is
	// answered "not here", never forwarded.
	ka, kb := key.NewNode(), key.NewNode()
	a := dial(t, url1, ka, false)
	dial(t, impostorURL, kb, false)
	if err := a.Send(kb.Public(), []byte("for b")); err != nil {
		t.Fatal(err)
	}
	m := recv(t, a)
	if g, ok := m.(derp.PeerGoneMessage); !ok || g.Peer != kb.Public() || g.Reason != derp.PeerGoneNotHere {
		t.Fatalf("A got %#v, want PeerGone(not here) for B", m)
	}
	if st := s1.Stats(); st.PacketsForwarded != 0 || st.RemoteClients != 0 || st.DropsUnknownDest != 1 {
		t.Errorf("s1 Stats = %+v, want nothing forwarded, no remote clients, one drop for an unknown destination", st)
	}
	// Clients, not Accepted: the server registers a client before its
	// Dial returns but counts it accepted just after, and the pinning
	// relay's retries (refused) come and go meanwhile.
	if st := impostor.Stats(); st.PacketsRelayed != 0 || st.Clients != 1 || st.MeshClients != 0 {
		t.Errorf("impostor Stats = %+v, want only its own client connected and nothing relayed", st)
	}

	// The same impostor, unpinned: the link comes up.
	up := newLogWatch("mesh link up")
	newServer(t, derpserver.Options{Logger: slog.New(up), MeshKey: meshKey, MeshWith: []derpserver.MeshPeer{{URL: impostorURL}}})
	up.wait(t)
	if st := impostor.Stats(); st.MeshClients != 1 {
		t.Errorf("impostor Stats = %+v with an unpinned relay meshed, want one mesh client", st)
	}
}

func TestMeshWrongKeyRefused(t *testing.T) {
	s, url := newServer(t, derpserver.Options{MeshKey: "right"})
	_, err := derp.Dial(t.Context(), url, key.NewNode(), derp.ClientOptions{MeshKey: "wrong"})
	if !errors.Is(err, derp.ErrRefused) {
		t.Fatalf("dial with wrong mesh key: err = %v, want ErrRefused", err)
	}
	// A server without a mesh key refuses every mesh key.
	_, url2 := newServer(t, derpserver.Options{})
	if _, err := derp.Dial(t.Context(), url2, key.NewNode(), derp.ClientOptions{MeshKey: "right"}); !errors.Is(err, derp.ErrRefused) {
		t.Fatalf("dial meshless server with a mesh key: err = %v, want ErrRefused", err)
	}
	// An ordinary client may not use mesh frames.
	c := dial(t, url, key.NewNode(), false)
	if err := c.WatchConns(); err != nil {
		t.Fatal(err)
	}
	recvErr(t, c)
	if got := s.Stats().Refused; got != 1 {
		t.Errorf("Stats.Refused = %d, want 1", got)
	}
	c2, err := derp.Dial(t.Context(), url, key.NewNode(), derp.ClientOptions{MeshKey: "right"})
	if err != nil {
		t.Fatalf("dial with the right mesh key: %v", err)
	}
	c2.Close()
}

func TestSlowReaderDoesNotBlockOthers(t *testing.T) {
	s, url := newServer(t, derpserver.Options{SendQueueDepth: 8, WriteTimeout: time.Minute})
	ka, kslow, kfast := key.NewNode(), key.NewNode(), key.NewNode()
	a := dial(t, url, ka, false)
	// The slow client's socket buffer is small so the server's writes to
	// it block soon.
	slow, err := derp.Dial(t.Context(), url, kslow, derp.ClientOptions{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			if err == nil {
				c.(*net.TCPConn).SetReadBuffer(64 << 10)
			}
			return c, err
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	fast := dial(t, url, kfast, false)

	const n = 2000
	pkt := make([]byte, 8<<10)
	for i := range n {
		pkt[0], pkt[1] = byte(i>>8), byte(i)
		if err := a.Send(kslow.Public(), pkt); err != nil {
			t.Fatal(err)
		}
	}
	// While the slow client reads nothing, the fast one is served.
	if err := a.Send(kfast.Public(), []byte("fast")); err != nil {
		t.Fatal(err)
	}
	if p := recvPacket(t, fast); string(p.Data) != "fast" {
		t.Fatalf("fast got %q", p.Data)
	}
	if d := s.Stats().DropsQueueFull; d == 0 {
		t.Fatal("no packets dropped for the slow reader")
	}
	// The newest packet survives drop-oldest and arrives last.
	got := 0
	for {
		p := recvPacket(t, slow)
		got++
		if int(p.Data[0])<<8|int(p.Data[1]) == n-1 {
			break
		}
	}
	if got >= n {
		t.Errorf("slow reader got %d packets, want fewer than %d (oldest dropped)", got, n)
	}
}

func TestDuplicateConnectionNewestWins(t *testing.T) {
	_, url := newServer(t, derpserver.Options{})
	k, kb := key.NewNode(), key.NewNode()
	old := dial(t, url, k, false)
	newer := dial(t, url, k, true)
	msgs := recvErr(t, old)
	if len(msgs) == 0 {
		t.Fatal("old connection closed without a message")
	}
	if h, ok := msgs[len(msgs)-1].(derp.HealthMessage); !ok || !strings.Contains(h.Problem, "replaced") {
		t.Fatalf("old connection's last message = %#v, want health 'replaced'", msgs[len(msgs)-1])
	}
	b := dial(t, url, kb, false)
	if err := b.Send(k.Public(), []byte("to newest")); err != nil {
		t.Fatal(err)
	}
	if p := recvPacket(t, newer); string(p.Data) != "to newest" {
		t.Fatalf("newest got %q", p.Data)
	}
}

func TestPeerGone(t *testing.T) {
	_, url := newServer(t, derpserver.Options{})
	ka, kb, nobody := key.NewNode(), key.NewNode(), key.NewNode()
	a := dial(t, url, ka, false)
	b := dial(t, url, kb, false)
	if err := a.Send(kb.Public(), []byte("hi")); err != nil {
		t.Fatal(err)
	}
	recvPacket(t, b)
	b.Close()
	if m := recv(t, a); m != (derp.PeerGoneMessage{Peer: kb.Public(), Reason: derp.PeerGoneDisconnected}) {
		t.Fatalf("got %#v, want peer gone (disconnected) for B", m)
	}
	if err := a.Send(nobody.Public(), []byte("anyone?")); err != nil {
		t.Fatal(err)
	}
	if m := recv(t, a); m != (derp.PeerGoneMessage{Peer: nobody.Public(), Reason: derp.PeerGoneNotHere}) {
		t.Fatalf("got %#v, want peer gone (not here)", m)
	}
}

func TestSendToSelfDropped(t *testing.T) {
	s, url := newServer(t, derpserver.Options{})
	k := key.NewNode()
	c := dial(t, url, k, false)
	if err := c.Send(k.Public(), []byte("me")); err != nil {
		t.Fatal(err)
	}
	if err := c.SendPing([8]byte{9}); err != nil {
		t.Fatal(err)
	}
	// Frames are handled in order, so the pong comes after the self
	// packet would have.
	if m := recv(t, c); m != (derp.PongMessage{9}) {
		t.Fatalf("got %#v, want only the pong", m)
	}
	if st := s.Stats(); st.DropsToSelf != 1 || st.PacketsRelayed != 0 {
		t.Fatalf("Stats = %+v, want 1 drop to self, 0 relayed", st)
	}
}

func TestCloseEndsClients(t *testing.T) {
	s := derpserver.New(derpserver.Options{})
	hs := httptest.NewServer(s)
	defer hs.Close()
	var clients []*derp.Client
	for i := range 4 {
		c, err := derp.Dial(t.Context(), hs.URL, key.NewNode(), derp.ClientOptions{WebSocket: i%2 == 1})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		clients = append(clients, c)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if got := s.Stats().Clients; got != 0 {
		t.Errorf("Stats.Clients after Close = %d, want 0", got)
	}
	for i, c := range clients {
		msgs := recvErr(t, c)
		if len(msgs) == 0 {
			t.Fatalf("client %d: closed without a restarting message", i)
		}
		if r, ok := msgs[len(msgs)-1].(derp.ServerRestartingMessage); !ok || r.ReconnectIn <= 0 || r.TryFor <= 0 {
			t.Fatalf("client %d: last message %#v, want ServerRestartingMessage with hints", i, msgs[len(msgs)-1])
		}
	}
	if _, err := derp.Dial(t.Context(), hs.URL, key.NewNode(), derp.ClientOptions{}); err == nil {
		t.Fatal("dial after Close succeeded")
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

// TestRateLimit sends n full packets through a relay that limits each
// client to rateBytes a second. The burst covers one frame; the rest must
// wait for tokens, so the transfer takes at least minTime. It must not
// take much longer either (a limiter slower than its setting would pass
// the first check alone): at most 1.5 x minTime plus twice what the same
// transfer takes through an unlimited relay in the same run, which
// absorbs a loaded machine's slowness; a limiter at half its rate would
// need 2 x minTime.
func TestRateLimit(t *testing.T) {
	const (
		rateBytes = 4 << 20
		n         = 64
	)
	pkt := make([]byte, derp.MaxPacketSize)
	// transfer sends n packets from one client to another through the
	// relay at url and returns how long until the last arrived.
	transfer := func(url string) time.Duration {
		ka, kb := key.NewNode(), key.NewNode()
		a := dial(t, url, ka, false)
		b := dial(t, url, kb, false)
		start := time.Now()
		var wg sync.WaitGroup
		wg.Go(func() {
			for range n {
				if err := a.Send(kb.Public(), pkt); err != nil {
					t.Error(err)
					return
				}
			}
		})
		for range n {
			recvPacket(t, b)
		}
		elapsed := time.Since(start)
		wg.Wait()
		return elapsed
	}

	// The queue holds the whole transfer, so a slow receiver loses nothing.
	queue := 2 * n * (derp.MaxPacketSize + 32)
	_, unlimitedURL := newServer(t, derpserver.Options{SendQueueBytes: queue})
	baseline := transfer(unlimitedURL)

	_, url := newServer(t, derpserver.Options{PerClientRateBytes: rateBytes, SendQueueBytes: queue})
	a := dial(t, url, key.NewNode(), false)
	if si := a.ServerInfo(); si.TokenBucketBytesPerSecond != rateBytes || si.TokenBucketBytesBurst < derp.MaxFrameSize {
		t.Fatalf("ServerInfo = %+v, want the token bucket", si)
	}
	elapsed := transfer(url)
	waitBytes := n*(derp.MaxPacketSize+32) - derp.MaxFrameSize
	minTime := time.Duration(waitBytes) * time.Second / rateBytes
	maxTime := minTime*3/2 + 2*baseline
	t.Logf("%d packets of %d bytes: %v at %d B/s (%v unlimited); want %v to %v", n, len(pkt), elapsed, rateBytes, baseline, minTime, maxTime)
	if elapsed < minTime || elapsed > maxTime {
		t.Fatalf("%d packets of %d bytes took %v, want %v to %v at %d B/s", n, len(pkt), elapsed, minTime, maxTime, rateBytes)
	}
}

func TestHTTPEndpoints(t *testing.T) {
	_, url := newServer(t, derpserver.Options{})
	for _, tc := range []struct {
		path string
		want int
	}{
		{"/derp/probe", http.StatusOK},
		{"/generate_204", http.StatusNoContent},
		{"/derp", http.StatusUpgradeRequired},
		{"/other", http.StatusNotFound},
	} {
		resp, err := http.Get(url + tc.path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("GET %s = %d, want %d", tc.path, resp.StatusCode, tc.want)
		}
	}
}

// TestReverifyDropsRefusedKey: a relay checks its connected clients' keys
// again every ReverifyInterval. While the check cannot be made (an error
// that is not ErrNotAdmitted: the coordinator is down) the client stays
// and relays; once VerifyClient refuses its key, the client is told why
// and disconnected within an interval or two, and cannot connect again.
// Before, the check ran only at the handshake: a node removed from the
// coordinator kept relaying for as long as its connection lasted.
func TestReverifyDropsRefusedKey(t *testing.T) {
	const interval = 50 * time.Millisecond
	peer, removed := key.NewNode(), key.NewNode()
	var answer atomic.Pointer[error] // VerifyClient's answer for removed; nil admits
	var checks atomic.Int32
	verify := func(_ context.Context, k key.NodePublic) error {
		if k != removed.Public() {
			return nil
		}
		checks.Add(1)
		if err := answer.Load(); err != nil {
			return *err
		}
		return nil
	}
	s, url := newServer(t, derpserver.Options{VerifyClient: verify, ReverifyInterval: interval})
	p := dial(t, url, peer, false)
	c := dial(t, url, removed, false)

	// The coordinator cannot answer for a few intervals: c stays.
	unreachable := fmt.Errorf("verify: coordinator unreachable")
	answer.Store(&unreachable)
	start := checks.Load()
	waitUntil(t, "three checks that could not be made", func() bool { return checks.Load() >= start+3 })
	if err := c.Send(peer.Public(), []byte("still here")); err != nil {
		t.Fatal(err)
	}
	if got := recvPacket(t, p); string(got.Data) != "still here" {
		t.Fatalf("peer got %q", got.Data)
	}

	// Now the key is refused: c is told and dropped.
	refusedAt := time.Now()
	refused := fmt.Errorf("%w: coordinator answered 403 Forbidden", derpserver.ErrNotAdmitted)
	answer.Store(&refused)
	msgs := recvErr(t, c)
	took := time.Since(refusedAt)
	var health string
	for _, m := range msgs {
		if h, ok := m.(derp.HealthMessage); ok {
			health = h.Problem
		}
	}
	t.Logf("dropped %v after the key was refused (interval %v), health %q", took, interval, health)
	if !strings.Contains(health, "no longer admitted") {
		t.Errorf("health before the drop = %q, want it to say the key is no longer admitted", health)
	}
	if took > 2*interval+time.Second {
		t.Errorf("dropped %v after the key was refused, want within about one interval (%v)", took, interval)
	}
	if _, err := derp.Dial(t.Context(), url, removed, derp.ClientOptions{}); !errors.Is(err, derp.ErrRefused) {
		t.Errorf("the refused key connects again: %v, want refused", err)
	}
	// The peer is unaffected.
	if n := s.Stats().Clients; n != 1 {
		t.Errorf("%d clients connected after the drop, want 1 (the admitted peer)", n)
	}
}

// waitUntil polls cond until it holds or testTimeout passes.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(testTimeout)
	for !cond() {
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// TestQueueBudgetSlowReceivers: one client sends 60 KB packets to eight
// clients that never read, through a relay whose queues may hold 1 MiB
// in all (each client's 2 MiB). Once the receivers' sockets are full and
// packets are being dropped, the relay holds at most the budget plus one
// packet per queue. Before, it held each receiver's full queue: 16 MiB
// here, and 1.9 GB for one sender and 404 slow receivers on a real relay.
func TestQueueBudgetSlowReceivers(t *testing.T) {
	const (
		receivers = 8
		budget    = 1 << 20
	)
	s, url := newServer(t, derpserver.Options{MaxQueueBytes: budget, WriteTimeout: time.Minute})
	src := dial(t, url, key.NewNode(), false)
	var dsts []key.NodePublic
	for range receivers {
		k := key.NewNode()
		dial(t, url, k, false) // never reads
		dsts = append(dsts, k.Public())
	}
	// Send until the relay's writers to the receivers have stalled (their
	// sockets are full) for a while, noting the most the relay queued.
	big := make([]byte, 60_000)
	deadline := time.Now().Add(testTimeout)
	peak, lastRelayed, stalled := 0, int64(-1), time.Now()
	for time.Since(stalled) < 300*time.Millisecond {
		if time.Now().After(deadline) {
			t.Fatalf("the relay's writers did not stall in %v: %+v", testTimeout, s.Stats())
		}
		for _, d := range dsts {
			if err := src.Send(d, big); err != nil {
				t.Fatal(err)
			}
		}
		peak = max(peak, derpserver.QueuedBytesForTest(s))
		if n := s.Stats().PacketsRelayed; n != lastRelayed {
			lastRelayed, stalled = n, time.Now()
		}
	}
	t.Logf("at most %d bytes queued for %d receivers that do not read (budget %d); %+v", peak, receivers, budget, s.Stats())
	if s.Stats().DropsQueueFull == 0 {
		t.Fatal("no packet was dropped: the queues never filled")
	}
	if max := budget + receivers*len(big); peak > max {
		t.Errorf("the relay held %d bytes for clients that do not read, want at most %d (the budget plus a packet each)", peak, max)
	}
}
