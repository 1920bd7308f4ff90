package bind

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"beam.dev/beam/netstack/internal/disco"
	"beam.dev/beam/netstack/internal/udpoffload"
	"beam.dev/beam/types/key"
	"golang.zx2c4.com/wireguard/conn"
)

// sendGSO sends segs from c to dst in one UDP_SEGMENT message: all but
// the last must have the same size.
func sendGSO(t *testing.T, c *net.UDPConn, dst netip.AddrPort, segs ...[]byte) {
	t.Helper()
	var msg []byte
	for _, s := range segs {
		msg = append(msg, s...)
	}
	oob := udpoffload.PutGSOSize(make([]byte, udpoffload.GSOControlSize), uint16(len(segs[0])))
	if _, _, err := c.WriteMsgUDPAddrPort(msg, oob, dst); err != nil {
		t.Fatalf("send with UDP_SEGMENT: %v", err)
	}
}

func listenLoopback(t *testing.T) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func fill(n int, b byte) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = b + byte(i)
	}
	return p
}

// TestBatchReceiverGRO sends one UDP_SEGMENT message over loopback to a
// socket with and without UDP_GRO and checks both hand out the same
// datagrams: with it the kernel keeps the message whole and the receiver
// splits it, without it the kernel splits it.
func TestBatchReceiverGRO(t *testing.T) {
	segs := [][]byte{fill(300, 1), fill(300, 2), fill(300, 3), fill(300, 4), fill(77, 5)}
	for _, gro := range []bool{true, false} {
		name := "without GRO"
		if gro {
			name = "with GRO"
		}
		t.Run(name, func(t *testing.T) {
			rc := listenLoopback(t)
			s := &udpSocket{conn: rc}
			if gro {
				if s.gro = udpoffload.EnableGRO(rc); !s.gro {
					t.Fatal("kernel refused UDP_GRO on a loopback socket")
				}
			}
			r, err := newBatchReceiver(s, 3)
			if err != nil {
				t.Fatal(err)
			}
			// A read that waits for datagrams that never come fails
			// the test instead of hanging it.
			rc.SetReadDeadline(time.Now().Add(5 * time.Second))
			sc := listenLoopback(t)
			sendGSO(t, sc, rc.LocalAddr().(*net.UDPAddr).AddrPort(), segs...)
			src := sc.LocalAddr().(*net.UDPAddr).AddrPort()

			bufs := [][]byte{make([]byte, 2048), make([]byte, 2048), make([]byte, 2048)}
			var got [][]byte
			for len(got) < len(segs) {
				n, err := r.read(bufs)
				if err != nil {
					t.Fatalf("read: %v", err)
				}
				if n == 0 || n > len(bufs) {
					t.Fatalf("read returned %d datagrams", n)
				}
				if gro && len(got) == 0 {
					// The kernel kept the message whole and said so.
					if len(r.split.msgs) != 1 || r.split.msgs[0].n != 4*300+77 || r.split.msgs[0].seg != 300 {
						t.Fatalf("first read got messages %+v, want one of %d bytes in segments of 300", r.split.msgs, 4*300+77)
					}
				}
				for i := range n {
					if r.addr(i) != src {
						t.Errorf("datagram %d from %v, want %v", len(got), r.addr(i), src)
					}
					got = append(got, append([]byte(nil), bufs[i][:r.size(i)]...))
				}
			}
			if len(got) != len(segs) {
				t.Fatalf("got %d datagrams, want %d", len(got), len(segs))
			}
			for i := range segs {
				if string(got[i]) != string(segs[i]) {
					t.Errorf("datagram %d: %d bytes, want %d bytes of segment %d", i, len(got[i]), len(segs[i]), i)
				}
			}
		})
	}
}

// TestBatchReceiverGROClose checks that datagrams still held from a read
// before Close are not handed out after it.
func TestBatchReceiverGROClose(t *testing.T) {
	rc := listenLoopback(t)
	s := &udpSocket{conn: rc, gro: udpoffload.EnableGRO(rc)}
	if !s.gro {
		t.Fatal("kernel refused UDP_GRO on a loopback socket")
	}
	r, err := newBatchReceiver(s, 2)
	if err != nil {
		t.Fatal(err)
	}
	sc := listenLoopback(t)
	sendGSO(t, sc, rc.LocalAddr().(*net.UDPAddr).AddrPort(), fill(100, 0), fill(100, 1), fill(100, 2))
	bufs := [][]byte{make([]byte, 2048)}
	if n, err := r.read(bufs); n != 1 || err != nil {
		t.Fatalf("read: n=%d err=%v, want one datagram", n, err)
	}
	s.closed.Store(true)
	rc.Close()
	if n, err := r.read(bufs); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read after close: n=%d err=%v, want net.ErrClosed", n, err)
	}
	if n, err := r.read(bufs); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("second read after close: n=%d err=%v, want net.ErrClosed", n, err)
	}
}

// TestReceiveGROClassifiesEachDatagram sends a WireGuard data packet, a
// disco ping, a STUN response and a short WireGuard packet as one
// coalesced message and checks the bind treats each on its own: the data
// packets reach wireguard-go attributed to the peer, the ping is answered
// with a pong, the STUN response goes to OnSTUN.
func TestReceiveGROClassifiesEachDatagram(t *testing.T) {
	peerDisco := key.NewDisco()
	peerNode := key.NewNode().Public()
	var (
		stunMu  sync.Mutex
		stunGot [][]byte
	)
	a, err := New(Options{
		PrivateKey: key.NewNode(),
		DiscoKey:   key.NewDisco(),
		OnSTUN: func(pkt []byte, src netip.AddrPort) {
			stunMu.Lock()
			defer stunMu.Unlock()
			stunGot = append(stunGot, append([]byte(nil), pkt...))
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	fns, port, err := a.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if !a.v4.gro {
		t.Fatal("kernel refused UDP_GRO on the bind's IPv4 socket")
	}
	// A receive that waits for datagrams that never come fails the test
	// instead of hanging it.
	a.v4.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	pc := listenLoopback(t)
	peerAP := pc.LocalAddr().(*net.UDPAddr).AddrPort()
	a.SetPeers([]PeerConfig{{Key: peerNode, Endpoints: []netip.AddrPort{peerAP}, DiscoKey: peerDisco.Public()}})

	shared := peerDisco.Shared(a.DiscoPublic())
	txID := [12]byte{1, 2, 3}
	ping := disco.AppendPacket(nil, peerDisco.Public(), shared, &disco.Ping{TxID: txID, NodeKey: peerNode})
	size := len(ping)
	data := transport(7, size)
	data[size-1] = 0xd1
	stun := make([]byte, size)
	copy(stun, []byte{0x01, 0x01, 0, byte(size - 20), 0x21, 0x12, 0xa4, 0x42})
	short := transport(7, size-40)
	sendGSO(t, pc, netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), port), data, ping, stun, short)

	// Two buffers per call: the four datagrams take two calls.
	bufs := [][]byte{make([]byte, 2048), make([]byte, 2048)}
	sizes := make([]int, 2)
	eps := make([]conn.Endpoint, 2)
	var gotSizes []int
	var gotEps []conn.Endpoint
	for len(gotSizes) < 4 {
		n, err := fns[0](bufs, sizes, eps)
		if err != nil {
			t.Fatalf("receive: %v", err)
		}
		gotSizes = append(gotSizes, sizes[:n]...)
		gotEps = append(gotEps, eps[:n]...)
		if n > 0 && sizes[0] == size && bufs[0][size-1] != 0xd1 {
			t.Fatal("first datagram's bytes are not the data packet's")
		}
	}
	wantSizes := []int{size, 0, 0, size - 40}
	if len(gotSizes) != 4 {
		t.Fatalf("got %d datagrams, want 4", len(gotSizes))
	}
	for i, want := range wantSizes {
		if gotSizes[i] != want {
			t.Errorf("datagram %d: size %d, want %d", i, gotSizes[i], want)
		}
	}
	for _, i := range []int{0, 3} {
		e, _ := gotEps[i].(*Endpoint)
		if e == nil || e.peer == nil || e.peer.key != peerNode || e.src != peerAP {
			t.Errorf("datagram %d: endpoint %+v, want the peer at %v", i, gotEps[i], peerAP)
		}
	}
	stunMu.Lock()
	if len(stunGot) != 1 || string(stunGot[0]) != string(stun) {
		t.Errorf("OnSTUN got %d messages, want the one STUN response of %d bytes", len(stunGot), size)
	}
	stunMu.Unlock()

	// The ping was answered from the coalesced message.
	pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 2048)
	for {
		n, _, err := pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("waiting for the pong: %v", err)
		}
		sender, sealed, ok := disco.Sender(buf[:n])
		if !ok || sender != a.DiscoPublic() {
			continue // the bind's own ping back, or anything else
		}
		m, err := disco.Open(shared, sealed)
		if err != nil {
			t.Fatalf("open disco reply: %v", err)
		}
		if pong, ok := m.(*disco.Pong); ok {
			if pong.TxID != txID || pong.Src != peerAP {
				t.Fatalf("pong %+v, want TxID %x and Src %v", pong, txID, peerAP)
			}
			break
		}
	}
}

// countHandler counts the log records whose message contains want.
type countHandler struct {
	want string
	n    atomic.Int64
	last atomic.Pointer[slog.Record]
}

func (h *countHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *countHandler) Handle(_ context.Context, r slog.Record) error {
	if strings.Contains(r.Message, h.want) {
		h.n.Add(1)
		h.last.Store(&r)
	}
	return nil
}
func (h *countHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *countHandler) WithGroup(string) slog.Handler      { return h }

// TestReceiveGROOversizedCounted sends three datagrams larger than the
// receive buffers as one coalesced message: each is dropped, all three are
// counted, and the drop is logged once, not per datagram or per read.
func TestReceiveGROOversizedCounted(t *testing.T) {
	h := &countHandler{want: "larger than the receive buffer"}
	a, err := New(Options{PrivateKey: key.NewNode(), Logger: slog.New(h)})
	if err != nil {
		t.Fatal(err)
	}
	fns, port, err := a.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if !a.v4.gro {
		t.Fatal("kernel refused UDP_GRO on the bind's IPv4 socket")
	}
	a.v4.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	pc := listenLoopback(t)
	const segSize, bufSize = 1200, 1000
	sendGSO(t, pc, netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), port),
		transport(7, segSize), transport(7, segSize), transport(7, segSize))

	bufs := [][]byte{make([]byte, bufSize), make([]byte, bufSize)}
	sizes := make([]int, 2)
	eps := make([]conn.Endpoint, 2)
	seen := 0
	for seen < 3 {
		n, err := fns[0](bufs, sizes, eps)
		if err != nil {
			t.Fatalf("receive: %v", err)
		}
		for i := range n {
			if sizes[i] != 0 {
				t.Errorf("datagram %d handed out with %d bytes, want dropped", seen+i, sizes[i])
			}
		}
		seen += n
	}
	if got := a.OversizedDrops(); got != 3 {
		t.Errorf("OversizedDrops = %d, want 3", got)
	}
	if got := h.n.Load(); got != 1 {
		t.Errorf("logged %d times, want once", got)
	}
	if r := h.last.Load(); r != nil {
		attrs := map[string]string{}
		r.Attrs(func(a slog.Attr) bool { attrs[a.Key] = a.Value.String(); return true })
		if attrs["size"] != "1200" || attrs["buffer"] != "1000" {
			t.Errorf("log attributes %v, want size 1200 and buffer 1000", attrs)
		}
	}
}
