package derpserver_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"beam.dev/beam/derp"
	"beam.dev/beam/derp/derpserver"
	"beam.dev/beam/types/key"
)

// meshPair is two relays of one region meshed with each other, each
// pinned to the other's key. dial1, if not nil, is how relay 1 dials
// relay 2 (a path an attacker sits on).
type meshPair struct {
	s1, s2     *derpserver.Server
	url1, url2 string
}

const pairMeshKey = "region-1-secret-mesh-key"

func newMeshPair(t *testing.T, log1, log2 slog.Handler, dial1 func(ctx context.Context, network, addr string) (net.Conn, error)) *meshPair {
	t.Helper()
	l1, l2 := listen(t), listen(t)
	u1, u2 := "http://"+l1.Addr().String(), "http://"+l2.Addr().String()
	k1, k2 := key.NewMachine(), key.NewMachine()
	if log1 == nil {
		log1 = slog.DiscardHandler
	}
	if log2 == nil {
		log2 = slog.DiscardHandler
	}
	s1 := derpserver.New(derpserver.Options{PrivateKey: k1, Logger: slog.New(log1), MeshKey: pairMeshKey,
		MeshWith: []derpserver.MeshPeer{{URL: u2, Key: k2.Public()}}, MeshDialContext: dial1})
	s2 := derpserver.New(derpserver.Options{PrivateKey: k2, Logger: slog.New(log2), MeshKey: pairMeshKey,
		MeshWith: []derpserver.MeshPeer{{URL: u1, Key: k1.Public()}}})
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
	return &meshPair{s1: s1, s2: s2, url1: h1.URL, url2: h2.URL}
}

// waitPath sends from a to b's key until b gets a packet through the
// mesh, and returns the first packet b got.
func waitPath(t *testing.T, a, b *derp.Client, kb key.NodePublic, payload string) derp.ReceivedPacket {
	t.Helper()
	stop := sendUntil(a, kb, []byte(payload))
	defer stop()
	return recvPacket(t, b)
}

// TestMeshFramesFromClientRefused has an ordinary client of a meshed
// relay (anyone who reaches the relay's port and holds a node key of its
// own) send the frames only mesh peers may send: a forward packet in
// another node's name and a watch for every client's presence. The relay
// disconnects it, says why at warn, and delivers nothing it sent.
func TestMeshFramesFromClientRefused(t *testing.T) {
	for _, tc := range []struct {
		name string
		send func(c *derp.Client, src, dst key.NodePublic) error
	}{
		{"forward packet", func(c *derp.Client, src, dst key.NodePublic) error {
			return c.ForwardPacket(src, dst, []byte("forged in A's name"))
		}},
		{"watch conns", func(c *derp.Client, _, _ key.NodePublic) error { return c.WatchConns() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			warned := newLogWatch("mesh-only frame without proving the region's mesh key")
			p := newMeshPair(t, nil, warned, nil)
			ka, kb := key.NewNode(), key.NewNode()
			a := dial(t, p.url1, ka, false)
			b := dial(t, p.url2, kb, false)
			waitPath(t, a, b, kb.Public(), "warm up")

			hostile := dial(t, p.url2, key.NewNode(), false)
			if err := tc.send(hostile, ka.Public(), kb.Public()); err != nil {
				t.Fatal(err)
			}
			for _, m := range recvErr(t, hostile) {
				if _, ok := m.(derp.PeerPresentMessage); ok {
					t.Errorf("hostile client got %#v: presence is for mesh peers only", m)
				}
			}
			warned.wait(t)

			// What B gets next is A's, not the forgery: the mesh still
			// works and carried nothing the hostile client sent.
			if err := a.Send(kb.Public(), []byte("from A")); err != nil {
				t.Fatal(err)
			}
			for {
				got := recvPacket(t, b)
				if string(got.Data) == "warm up" {
					continue
				}
				if got.Source != ka.Public() || string(got.Data) != "from A" {
					t.Fatalf("B got %q from %v, want only A's own packets", got.Data, got.Source)
				}
				break
			}
		})
	}
}

// TestMeshLinkRefusesInjection puts an attacker on the path of a
// plain-HTTP mesh link, past the handshake (which it cannot fake, as it
// does not know the mesh key): it adds one frame to the first connection,
// right after the handshake. Towards relay 2, a forward packet in A's
// name for B; towards relay 1, the presence of a node that is on neither
// relay, which would send relay 1's packets for it into the mesh. Each
// relay refuses the injected bytes: the link drops with a warning and
// comes up again, and nothing injected has any effect.
func TestMeshLinkRefusesInjection(t *testing.T) {
	ka, kb, ghost := key.NewNode(), key.NewNode(), key.NewNode()
	kaRaw, kbRaw, ghostRaw := ka.Public().Raw32(), kb.Public().Raw32(), ghost.Public().Raw32()
	for _, tc := range []struct {
		name string
		// toServer: the injected frame goes to relay 2 (the dialed
		// relay); else to relay 1 (the dialing relay).
		toServer bool
		frame    []byte
		warnOn   int // which relay warns
		warning  string
	}{
		{"forward packet to the dialed relay", true,
			frameBytes(derp.FrameForwardPacket, kaRaw[:], kbRaw[:], []byte("injected in A's name")),
			2, "mesh link carried a record that does not authenticate"},
		{"presence to the dialing relay", false,
			frameBytes(derp.FramePeerPresent, ghostRaw[:]),
			1, "mesh link carried a record that does not authenticate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			warned := newLogWatch(tc.warning)
			var log1, log2 slog.Handler
			if tc.warnOn == 1 {
				log1 = warned
			} else {
				log2 = warned
			}
			var injected atomic.Bool
			clientsUp := make(chan struct{}) // inject once A and B are there to be fooled
			dial1 := func(ctx context.Context, network, addr string) (net.Conn, error) {
				select {
				case <-clientsUp:
				case <-ctx.Done():
					return nil, ctx.Err()
				}
				nc, err := (&net.Dialer{}).DialContext(ctx, network, addr)
				if err != nil || injected.Swap(true) {
					return nc, err // later connections pass untouched
				}
				sc := &splicedConn{Conn: nc}
				if tc.toServer {
					sc.out = &splicer{frames: 1, inject: tc.frame} // after the client info
				} else {
					sc.in = &splicer{frames: 2, inject: tc.frame} // after server key and server info
				}
				return sc, nil
			}
			p := newMeshPair(t, log1, log2, dial1)
			a := dial(t, p.url1, ka, false)
			b := dial(t, p.url2, kb, false)
			close(clientsUp)

			got := waitPath(t, a, b, kb.Public(), "from A")
			if got.Source != ka.Public() || string(got.Data) != "from A" {
				t.Fatalf("B's first packet is %q from %v, want A's own", got.Data, got.Source)
			}
			// The ghost is on no relay: relay 1 answers "not here" at
			// once rather than forwarding into the mesh.
			if err := a.Send(ghost.Public(), []byte("for the ghost")); err != nil {
				t.Fatal(err)
			}
			for {
				m := recv(t, a)
				if g, ok := m.(derp.PeerGoneMessage); ok && g.Peer == ghost.Public() {
					if g.Reason != derp.PeerGoneNotHere {
						t.Fatalf("A got %#v, want not here for the ghost", g)
					}
					break
				}
			}
			if st := p.s1.Stats(); st.RemoteClients != 1 {
				t.Errorf("relay 1 Stats = %+v, want one remote client (B)", st)
			}
			warned.wait(t)
		})
	}
}

func frameBytes(t derp.FrameType, parts ...[]byte) []byte {
	var b bytes.Buffer
	bw := bufio.NewWriter(&b)
	derp.WriteFrame(bw, t, parts...)
	bw.Flush()
	return b.Bytes()
}

// splicedConn is a conn on which an attacker adds bytes: out to what
// is written, in to what is read.
type splicedConn struct {
	net.Conn
	out, in *splicer
	mu      sync.Mutex // guards pending
	pending []byte     // read from Conn and spliced, not yet returned
}

func (c *splicedConn) Write(p []byte) (int, error) {
	if c.out == nil {
		return c.Conn.Write(p)
	}
	if _, err := c.Conn.Write(c.out.feed(p)); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (c *splicedConn) Read(p []byte) (int, error) {
	if c.in == nil {
		return c.Conn.Read(p)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for len(c.pending) == 0 {
		buf := make([]byte, 32<<10)
		n, err := c.Conn.Read(buf)
		c.pending = c.in.feed(buf[:n])
		if err != nil && len(c.pending) == 0 {
			return 0, err
		}
	}
	n := copy(p, c.pending)
	c.pending = c.pending[n:]
	return n, nil
}

// splicer follows one direction of a relay connection (an HTTP head,
// then frames) and adds inject after the first frames frames.
type splicer struct {
	frames int
	inject []byte

	head   []byte // the HTTP head so far
	inHead bool   // past the HTTP head
	hdr    []byte // the current frame's header so far
	remain int    // payload bytes left of the current frame
	done   bool
}

// feed returns p with inject added where it belongs.
func (s *splicer) feed(p []byte) []byte {
	var out []byte
	for i, c := range p {
		if s.done {
			return append(out, p[i:]...)
		}
		out = append(out, c)
		switch {
		case !s.inHead:
			s.head = append(s.head, c)
			s.inHead = bytes.HasSuffix(s.head, []byte("\r\n\r\n"))
			continue
		case s.remain > 0:
			s.remain--
		default:
			s.hdr = append(s.hdr, c)
			if len(s.hdr) < derp.FrameHeaderLen {
				continue
			}
			s.remain = int(binary.BigEndian.Uint32(s.hdr[1:]))
			s.hdr = nil
		}
		if s.remain == 0 && s.hdr == nil {
			s.frames--
			if s.frames == 0 {
				out = append(out, s.inject...)
				s.done = true
			}
		}
	}
	return out
}

// TestMeshRefusesOldPeer has a relay that proves the mesh key but speaks
// protocol version 3 (which sends frames after the handshake as they
// are) or 4 (whose record keys only the dialed relay makes fresh) dial a
// relay: it is refused with a reason, and the relay warns.
func TestMeshRefusesOldPeer(t *testing.T) {
	for _, version := range []int{3, 4} {
		t.Run(fmt.Sprint("version ", version), func(t *testing.T) {
			warned := newLogWatch("does not take fresh mesh keys from both sides")
			_, url := newServer(t, derpserver.Options{Logger: slog.New(warned), MeshKey: pairMeshKey})
			peer := key.NewNode()
			ft, p, _ := handshakeWith(t, url, peer.Public(), func(server key.MachinePublic, challenge []byte) []byte {
				info, _ := json.Marshal(derp.ClientInfo{Version: version, Challenge: challenge,
					MeshProof: derp.MeshProof(pairMeshKey, challenge, server.Raw32(), peer.Public().Raw32())})
				return peer.SealTo(server, info)
			})
			if want := fmt.Sprintf("version %d or later", derp.MinMeshVersion); ft != derp.FrameHealth || !strings.Contains(string(p), want) {
				t.Fatalf("protocol %d mesh peer got frame %#x %q, want health saying %q", version, ft, p, want)
			}
			warned.wait(t)
		})
	}
}

// TestMeshRefusesMissingNonce has a current mesh peer leave out its mesh
// nonce (or send a short one): the relay refuses it rather than make
// record keys without the client's fresh part.
func TestMeshRefusesMissingNonce(t *testing.T) {
	for _, nonce := range [][]byte{nil, make([]byte, derp.MeshNonceLen-1)} {
		t.Run(fmt.Sprint(len(nonce), " bytes"), func(t *testing.T) {
			_, url := newServer(t, derpserver.Options{MeshKey: pairMeshKey})
			peer := key.NewNode()
			ft, p, _ := handshakeWith(t, url, peer.Public(), func(server key.MachinePublic, challenge []byte) []byte {
				info, _ := json.Marshal(derp.ClientInfo{Version: derp.ProtocolVersion, Challenge: challenge, MeshNonce: nonce,
					MeshProof: derp.MeshProof(pairMeshKey, challenge, server.Raw32(), peer.Public().Raw32())})
				return peer.SealTo(server, info)
			})
			if ft != derp.FrameHealth || !strings.Contains(string(p), "mesh nonce") {
				t.Fatalf("mesh peer with a %d-byte nonce got frame %#x %q, want health about the mesh nonce", len(nonce), ft, p)
			}
		})
	}
}

// TestMeshReplayedSessionRefused puts a recording attacker on the path of
// a plain-HTTP mesh link. It records relay 2's side of the first
// connection (its server key, server info and sealed records, among them
// B's presence), resets the link, and when relay 1 dials again plays the
// recording back as if it were relay 2. Relay 1 refuses the replayed
// handshake (the server's proof does not cover its new nonce), sends
// nothing after its client info (no record under a key it used before),
// and learns nothing from the stale records: B is not on the mesh for it
// until the real relay 2 is back. The next real connection's first
// record, the same watch frame as the first connection's, has other
// bytes: each connection seals under keys of its own.
func TestMeshReplayedSessionRefused(t *testing.T) {
	refused := newLogWatch("did not prove the mesh key for this connection")
	var mu sync.Mutex
	var real []*recordingConn // relay 1's real connections to relay 2
	dials := 0
	clientsUp := make(chan struct{}) // record once A and B are there
	release := make(chan struct{})   // lets relay 1 reach relay 2 again
	replayOut := make(chan []byte, 1)
	dial1 := func(ctx context.Context, network, addr string) (net.Conn, error) {
		select {
		case <-clientsUp:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		mu.Lock()
		n := dials
		dials++
		var first *recordingConn
		if len(real) > 0 {
			first = real[0]
		}
		mu.Unlock()
		if n == 1 {
			// The replay: relay 2's recorded side, played back.
			recorded := first.inBytes()
			local, attacker := net.Pipe()
			go attacker.Write(recorded)
			go func() {
				b, _ := io.ReadAll(attacker)
				replayOut <- b
			}()
			return local, nil
		}
		if n > 1 {
			select {
			case <-release:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		nc, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		rc := &recordingConn{Conn: nc}
		mu.Lock()
		real = append(real, rc)
		mu.Unlock()
		return rc, nil
	}
	p := newMeshPair(t, refused, nil, dial1)
	ka, kb := key.NewNode(), key.NewNode()
	a := dial(t, p.url1, ka, false)
	b := dial(t, p.url2, kb, false)
	close(clientsUp)
	waitPath(t, a, b, kb.Public(), "recorded")

	// Reset the link: relay 1 dials again and meets the replay.
	mu.Lock()
	real[0].Conn.Close()
	mu.Unlock()
	refused.wait(t)
	var sent []byte
	select {
	case sent = <-replayOut:
	case <-time.After(testTimeout):
		t.Fatal("the replayed connection did not end")
	}
	rest, ok := skipHandshake(sent)
	if !ok {
		t.Fatalf("relay 1 sent %d bytes on the replayed connection, want an HTTP head and a client info", len(sent))
	}
	if len(rest) != 0 {
		t.Errorf("relay 1 sent %d bytes after its client info on the replayed connection, want none", len(rest))
	}
	if st := p.s1.Stats(); st.RemoteClients != 0 {
		t.Errorf("relay 1 Stats = %+v after the replay, want no remote clients (B's presence was a stale record)", st)
	}
	if err := a.Send(kb.Public(), []byte("while replayed")); err != nil {
		t.Fatal(err)
	}
	for {
		m := recv(t, a)
		if g, ok := m.(derp.PeerGoneMessage); ok && g.Peer == kb.Public() {
			if g.Reason != derp.PeerGoneNotHere {
				t.Fatalf("A got %#v, want not here for B", g)
			}
			break
		}
	}

	// The real relay 2 again: the link comes back.
	close(release)
	stop := sendUntil(a, kb.Public(), []byte("after"))
	for string(recvPacket(t, b).Data) != "after" {
	}
	stop()

	mu.Lock()
	out1, out2 := real[0].outBytes(), real[1].outBytes()
	mu.Unlock()
	r1, ok1 := firstRecord(out1)
	r2, ok2 := firstRecord(out2)
	if !ok1 || !ok2 {
		t.Fatalf("no sealed record after the handshake (%d, %d bytes sent)", len(out1), len(out2))
	}
	if bytes.Equal(r1, r2) {
		t.Errorf("two connections sealed their first frame into the same %d bytes: the record key was reused", len(r1))
	}
}

// skipHandshake returns what a dialing relay sent after its HTTP head and
// client info frame.
func skipHandshake(b []byte) ([]byte, bool) {
	i := bytes.Index(b, []byte("\r\n\r\n"))
	if i < 0 {
		return nil, false
	}
	b = b[i+4:]
	if len(b) < derp.FrameHeaderLen || derp.FrameType(b[0]) != derp.FrameClientInfo {
		return nil, false
	}
	n := int(binary.BigEndian.Uint32(b[1:derp.FrameHeaderLen]))
	if len(b) < derp.FrameHeaderLen+n {
		return nil, false
	}
	return b[derp.FrameHeaderLen+n:], true
}

// firstRecord returns the first sealed record a dialing relay sent after
// its handshake.
func firstRecord(b []byte) ([]byte, bool) {
	rest, ok := skipHandshake(b)
	if !ok || len(rest) < 4 {
		return nil, false
	}
	n := int(binary.BigEndian.Uint32(rest))
	if len(rest) < 4+n {
		return nil, false
	}
	return rest[:4+n], true
}

// recordingConn keeps a copy of every byte read and written.
type recordingConn struct {
	net.Conn
	mu      sync.Mutex
	in, out bytes.Buffer
}

func (c *recordingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.mu.Lock()
	c.in.Write(p[:n])
	c.mu.Unlock()
	return n, err
}

func (c *recordingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.mu.Lock()
	c.out.Write(p[:n])
	c.mu.Unlock()
	return n, err
}

func (c *recordingConn) inBytes() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return bytes.Clone(c.in.Bytes())
}

func (c *recordingConn) outBytes() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return bytes.Clone(c.out.Bytes())
}

// TestMeshFairUnderFlood sends a paced stream (1,000 packets of 1,200
// bytes a second, as a call or a remote desktop sends) from a client of
// relay 1 to one of relay 2 while four other pairs flood 60 KB packets
// across the same mesh link as fast as they can. The link's forward
// queue is shared by every client whose packets cross it; the paced
// stream must lose less than 1% of its packets. Before, the queue
// dropped the oldest packet whoever sent it, and the paced stream lost
// a tenth to a quarter of its packets.
func TestMeshFairUnderFlood(t *testing.T) {
	const (
		flooders = 4
		paced    = 1000 // packets, 1 ms apart
		pacedLen = 1200
	)
	p := newMeshPair(t, nil, nil, nil)
	ka, kb := key.NewNode(), key.NewNode()
	a, b := dial(t, p.url1, ka, false), dial(t, p.url2, kb, false)
	waitPath(t, a, b, kb.Public(), "warm")

	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	var flooded atomic.Int64
	for range flooders {
		ks, kr := key.NewNode(), key.NewNode()
		s, r := dial(t, p.url1, ks, false), dial(t, p.url2, kr, false)
		waitPath(t, s, r, kr.Public(), "warm")
		wg.Go(func() {
			for {
				if _, err := r.Recv(); err != nil {
					return
				}
			}
		})
		wg.Go(func() {
			big := make([]byte, 60_000)
			for ctx.Err() == nil {
				if err := s.Send(kr.Public(), big); err != nil {
					return
				}
				flooded.Add(1)
			}
		})
		context.AfterFunc(ctx, func() { s.Close(); r.Close() })
	}

	// b counts the paced packets it gets, by sequence number.
	seen := make(map[uint32]bool)
	all := make(chan struct{})
	done := make(chan struct{})
	var gotN atomic.Int64
	go func() {
		defer close(done)
		for {
			m, err := b.Recv()
			if err != nil {
				return
			}
			if pk, ok := m.(derp.ReceivedPacket); ok && len(pk.Data) == pacedLen {
				if i := binary.BigEndian.Uint32(pk.Data); !seen[i] {
					seen[i] = true
					if gotN.Add(1) == paced {
						close(all)
					}
				}
			}
		}
	}()
	// Send at 1,000 packets a second on average: a tick late (a loaded
	// machine) sends what is due.
	start := time.Now()
	tick := time.NewTicker(time.Millisecond)
	buf := make([]byte, pacedLen)
	for i := 0; i < paced; {
		<-tick.C
		for due := min(paced, int(time.Since(start)/time.Millisecond)+1); i < due; i++ {
			binary.BigEndian.PutUint32(buf, uint32(i))
			if err := a.Send(kb.Public(), buf); err != nil {
				t.Fatal(err)
			}
		}
	}
	tick.Stop()
	sent := time.Since(start)
	// What is still queued arrives within a moment.
	select {
	case <-all:
	case <-time.After(3 * time.Second):
	}
	n := gotN.Load()
	cancel()
	b.Close()
	<-done
	st := p.s1.Stats()
	lost := float64(paced-n) / paced
	t.Logf("paced: %d of %d packets in %v (%.2f%% lost); flood: %d packets of 60 KB sent; relay 1 forwarded %d, dropped %d at the mesh link",
		n, paced, sent.Round(time.Millisecond), 100*lost, flooded.Load(), st.PacketsForwarded, st.DropsGone)
	if st.DropsGone == 0 {
		t.Errorf("the flood never filled the mesh link's queue (no drops): the test proves nothing")
	}
	if lost >= 0.01 {
		t.Errorf("the paced stream lost %.2f%% of its packets across the flooded mesh link, want under 1%%", 100*lost)
	}
}
