package coordclient

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// fakeCoord is a minimal coordinator written from the protocol
// description, so the client can be tested against misbehaviour the real
// one never shows (silence, junk frames).
type fakeCoord struct {
	t    *testing.T
	priv key.MachinePrivate
	// onStream writes the stream body after the 200 header; it runs on
	// the handler goroutine and returns when the stream should end.
	onStream func(w http.ResponseWriter, r *http.Request, nk key.NodePublic)
	keepMS   string
	// version, if set, is sent as wire.HeaderVersion.
	version string

	mu      sync.Mutex
	streams int
	updates []*wire.MapRequest
	// offered are the digests the stream requests offered (nil: none).
	offered []*wire.PeersDigest
	// nonce is the reply nonce of the last stream request.
	nonce []byte
}

func (fc *fakeCoord) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case wire.PathKey:
		io.WriteString(w, fc.priv.Public().String())
		return
	case wire.PathMap:
	default:
		http.NotFound(w, r)
		return
	}
	var env wire.Envelope
	if err := json.NewDecoder(r.Body).Decode(&env); err != nil {
		http.Error(w, `{"error":"bad","code":"bad_request"}`, 400)
		return
	}
	clear, ok := fc.priv.OpenFrom(env.NodeKey, env.Sealed)
	if !ok {
		http.Error(w, `{"error":"bad seal","code":"bad_seal"}`, 401)
		return
	}
	var req wire.MapRequest
	json.Unmarshal(clear, &req)
	if !req.Stream {
		fc.mu.Lock()
		fc.updates = append(fc.updates, &req)
		fc.mu.Unlock()
		b, _ := json.Marshal(wire.MapResponse{ControlTime: time.Now()})
		w.Write(fc.priv.SealTo(env.NodeKey, b))
		return
	}
	fc.mu.Lock()
	fc.streams++
	fc.offered = append(fc.offered, req.Peers)
	fc.nonce = req.Nonce
	fc.mu.Unlock()
	if fc.version != "" {
		w.Header().Set(wire.HeaderVersion, fc.version)
	}
	w.Header().Set("Beam-Keepalive-Ms", fc.keepMS)
	w.Header().Add("Trailer", wire.TrailerError)
	w.Header().Add("Trailer", wire.TrailerRetryAfter)
	w.WriteHeader(200)
	fc.onStream(w, r, env.NodeKey)
}

func (fc *fakeCoord) frame(w http.ResponseWriter, nk key.NodePublic, mr *wire.MapResponse) {
	b, _ := json.Marshal(mr)
	sealed := fc.priv.SealTo(nk, b)
	var hdr [4]byte
	binary.BigEndian.PutUint32(hdr[:], uint32(len(sealed)))
	w.Write(hdr[:])
	w.Write(sealed)
	w.(http.Flusher).Flush()
}

func newFake(t *testing.T, onStream func(fc *fakeCoord, w http.ResponseWriter, r *http.Request, nk key.NodePublic)) (*fakeCoord, *Client) {
	fc := &fakeCoord{t: t, priv: key.NewMachine(), keepMS: "50"}
	fc.onStream = func(w http.ResponseWriter, r *http.Request, nk key.NodePublic) { onStream(fc, w, r, nk) }
	hs := httptest.NewServer(fc)
	t.Cleanup(hs.Close)
	cl, err := New(Options{ServerURL: hs.URL, PrivateKey: key.NewNode()})
	if err != nil {
		t.Fatal(err)
	}
	return fc, cl
}

// TestSilentStreamIsDead: a stream that stops sending (no keepalives) is
// dropped after 2x the keepalive interval and reopened.
func TestSilentStreamIsDead(t *testing.T) {
	fc, cl := newFake(t, func(fc *fakeCoord, w http.ResponseWriter, r *http.Request, nk key.NodePublic) {
		fc.frame(w, nk, &wire.MapResponse{Self: &wire.Node{Name: "me"}, ControlTime: time.Now()})
		<-r.Context().Done() // then silence
	})
	ctx, cancel := context.WithCancel(t.Context())
	var got []*wire.NetMap
	done := make(chan error)
	go func() {
		done <- cl.Run(ctx, func(nm *wire.NetMap) {
			got = append(got, nm)
			if len(got) == 3 {
				cancel()
			}
		})
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run = %v, want nil after cancel", err)
		}
	case <-time.After(10 * time.Second):
		cancel()
		<-done
		t.Fatalf("stream not detected dead and reopened; %d netmaps", len(got))
	}
	fc.mu.Lock()
	defer fc.mu.Unlock()
	if fc.streams < 3 || got[2].Self.Name != "me" {
		t.Fatalf("streams = %d, netmaps = %d", fc.streams, len(got))
	}
}

// TestBadFramesReconnect: junk frames end the stream (no panic), and the
// client reconnects; a trailer naming removal ends Run.
func TestBadFramesAndRemovalTrailer(t *testing.T) {
	var n int
	var mu sync.Mutex
	fc, cl := newFake(t, func(fc *fakeCoord, w http.ResponseWriter, r *http.Request, nk key.NodePublic) {
		mu.Lock()
		n++
		i := n
		mu.Unlock()
		switch i {
		case 1: // oversized length
			w.Write([]byte{0xff, 0xff, 0xff, 0xff})
		case 2: // zero length
			w.Write([]byte{0, 0, 0, 0})
		case 3: // box that does not open
			w.Write([]byte{0, 0, 0, 50})
			w.Write(bytes.Repeat([]byte{7}, 50))
		case 4: // cut short
			w.Write([]byte{0, 0, 1, 0, 1, 2})
		default:
			fc.frame(w, nk, &wire.MapResponse{Self: &wire.Node{Name: "me"}})
			w.Header().Set("Beam-Error", "node_removed: removed by an admin")
		}
	})
	_ = fc
	var maps int
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	err := cl.Run(ctx, func(*wire.NetMap) { maps++ })
	if !errors.Is(err, ErrNodeRemoved) {
		t.Fatalf("Run = %v, want ErrNodeRemoved", err)
	}
	if maps != 1 || n != 5 {
		t.Fatalf("maps = %d, streams = %d; want 1, 5", maps, n)
	}
}

func TestSetEndpointsCoalesces(t *testing.T) {
	fc, cl := newFake(t, func(fc *fakeCoord, w http.ResponseWriter, r *http.Request, nk key.NodePublic) {
		fc.frame(w, nk, &wire.MapResponse{Self: &wire.Node{Name: "me"}})
		for {
			select {
			case <-r.Context().Done():
				return
			case <-time.After(20 * time.Millisecond):
				fc.frame(w, nk, &wire.MapResponse{KeepAlive: true})
			}
		}
	})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	started := make(chan struct{}, 1)
	done := make(chan error)
	go func() {
		done <- cl.Run(ctx, func(*wire.NetMap) {
			select {
			case started <- struct{}{}:
			default:
			}
		})
	}()
	<-started
	var last []netip.AddrPort
	for i := range 20 { // a burst
		last = []netip.AddrPort{netip.AddrPortFrom(netip.MustParseAddr("192.0.2.1"), uint16(1000+i))}
		cl.SetEndpoints(last, 2)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		fc.mu.Lock()
		ups := slices.Clone(fc.updates)
		fc.mu.Unlock()
		if len(ups) > 0 && slices.Equal(ups[len(ups)-1].Endpoints, last) {
			if len(ups) > 3 {
				t.Errorf("a burst of 20 SetEndpoints sent %d updates, want few", len(ups))
			}
			if ups[len(ups)-1].HomeDERP != 2 || ups[len(ups)-1].Stream {
				t.Errorf("update = %+v", ups[len(ups)-1])
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("updates = %d, last endpoints never arrived", len(ups))
		}
		<-time.After(10 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestBackoffBounds(t *testing.T) {
	var b backoff
	prev := time.Duration(0)
	for i := range 20 {
		d := b.next()
		hi := min(backoffMin<<min(i, 10), backoffMax)
		if d < hi/2 || d >= hi {
			t.Fatalf("step %d: %v outside [%v, %v)", i, d, hi/2, hi)
		}
		prev = d
	}
	if prev < backoffMax/2 {
		t.Errorf("backoff never reached the cap: %v", prev)
	}
	b.reset()
	if d := b.next(); d >= backoffMin {
		t.Errorf("after reset: %v, want < %v", d, backoffMin)
	}
}

func TestErrorMapping(t *testing.T) {
	for _, tc := range []struct {
		status int
		body   string
		want   error
	}{
		{401, `{"error":"auth key is not valid","code":"auth_key_invalid"}`, ErrAuthKeyInvalid},
		{403, `{"error":"node not registered","code":"node_not_registered"}`, ErrNodeNotRegistered},
		{403, `{"error":"node key expired","code":"node_expired"}`, ErrNodeExpired},
		{401, `not json`, ErrUnauthorized},
		{404, `{"error":"no such node","code":"not_found"}`, ErrNotFound},
	} {
		e := errorFromBody(tc.status, []byte(tc.body))
		if !errors.Is(e, tc.want) {
			t.Errorf("errorFromBody(%d, %s) = %v, want it to match %v", tc.status, tc.body, e, tc.want)
		}
	}
	for _, tc := range []struct {
		name, trailer, retryAfter string
		code                      wire.ErrorCode
		msg                       string
		wait                      time.Duration
	}{
		{"removed", "node_removed: bye", "", wire.CodeNodeRemoved, "bye", 0},
		{"shutdown", "unavailable: coordinator is shutting down", "1500", wire.CodeUnavailable, "coordinator is shutting down", 1500 * time.Millisecond},
		{"wait capped", "unavailable: x", "86400000", wire.CodeUnavailable, "x", maxRetryAfter},
		{"bad wait", "unavailable: x", "soon", wire.CodeUnavailable, "x", 0},
		{"negative wait", "unavailable: x", "-5", wire.CodeUnavailable, "x", 0},
		{"no code", "gone", "", "", "gone", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := errorFromTrailer(tc.trailer, tc.retryAfter)
			if e.Code != tc.code || e.Message != tc.msg || e.RetryAfter != tc.wait {
				t.Errorf("errorFromTrailer(%q, %q) = code %q, message %q, retry after %v; want %q, %q, %v",
					tc.trailer, tc.retryAfter, e.Code, e.Message, e.RetryAfter, tc.code, tc.msg, tc.wait)
			}
		})
	}
	if e := errorFromTrailer("node_removed: bye", ""); !errors.Is(e, ErrNodeRemoved) {
		t.Errorf("trailer error %+v does not match ErrNodeRemoved", e)
	}
}

func TestRegisterUnreachable(t *testing.T) {
	hs := httptest.NewServer(http.NotFoundHandler())
	url := hs.URL
	hs.Close()
	cl, err := New(Options{ServerURL: url, PrivateKey: key.NewNode()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Register(t.Context(), RegisterParams{AuthKey: "k"}); !errors.Is(err, ErrUnreachable) {
		t.Fatalf("Register = %v, want ErrUnreachable", err)
	}
	for _, bad := range []string{"", "ftp://x", "http://"} {
		if _, err := New(Options{ServerURL: bad, PrivateKey: key.NewNode()}); err == nil {
			t.Errorf("New(%q) = nil error", bad)
		}
	}
}

// FuzzReadFrame checks that no byte stream makes the frame reader panic
// or accept an unsealed frame.
func FuzzReadFrame(f *testing.F) {
	node := key.NewNode()
	mk := key.NewMachine()
	good, _ := json.Marshal(wire.MapResponse{KeepAlive: true})
	sealed := mk.SealTo(node.Public(), good)
	var hdr [4]byte
	binary.BigEndian.PutUint32(hdr[:], uint32(len(sealed)))
	f.Add(append(hdr[:], sealed...))                        // one valid keepalive frame
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})                   // length over the cap
	f.Add([]byte{0, 0, 0, 0})                               // zero length
	f.Add([]byte{0, 0, 0, 40, 1, 2, 3})                     // cut short
	f.Add(append([]byte{0, 0, 0, 50}, make([]byte, 50)...)) // junk box
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bytes.NewReader(b)
		for {
			mr, err := readFrame(r, node.Shared(mk.Public()))
			if err != nil {
				return
			}
			if mr == nil {
				t.Fatal("nil frame without error")
			}
		}
	})
}

// TestSplitMessagesJoined: a message split across frames (More) reaches
// the callback once, whole: a full map and a delta each in three frames.
// A message that never ends within wire.MaxMapFrames ends the stream.
func TestSplitMessagesJoined(t *testing.T) {
	peer := func(name string) *wire.Node { return &wire.Node{Name: name, Key: key.NewNode().Public()} }
	endless := make(chan struct{})
	var endOnce sync.Once
	var mu sync.Mutex
	n := 0
	fc, cl := newFake(t, func(fc *fakeCoord, w http.ResponseWriter, r *http.Request, nk key.NodePublic) {
		mu.Lock()
		n++
		i := n
		mu.Unlock()
		if i > 1 {
			// A message that never ends, written at once.
			b, _ := json.Marshal(&wire.MapResponse{Peers: []*wire.Node{peer("x")}, More: true})
			sealed := fc.priv.SealTo(nk, b)
			var frame []byte
			frame = binary.BigEndian.AppendUint32(frame, uint32(len(sealed)))
			frame = append(frame, sealed...)
			w.Write(bytes.Repeat(frame, wire.MaxMapFrames+1))
			w.(http.Flusher).Flush()
			endOnce.Do(func() { close(endless) })
			<-r.Context().Done()
			return
		}
		fc.frame(w, nk, &wire.MapResponse{Self: &wire.Node{Name: "me"}, Peers: []*wire.Node{peer("a")}, PacketFilterSet: true, More: true})
		fc.frame(w, nk, &wire.MapResponse{KeepAlive: true}) // a keepalive cannot come between, but must not break the join
		fc.frame(w, nk, &wire.MapResponse{Peers: []*wire.Node{peer("b"), peer("c")}, More: true})
		fc.frame(w, nk, &wire.MapResponse{Peers: []*wire.Node{peer("d")}})
		fc.frame(w, nk, &wire.MapResponse{PeersChanged: []*wire.Node{peer("e")}, More: true})
		fc.frame(w, nk, &wire.MapResponse{PeersChanged: []*wire.Node{peer("f")}, More: true})
		fc.frame(w, nk, &wire.MapResponse{PeersChanged: []*wire.Node{peer("g")}})
		// The first stream ends here, so that the client opens the
		// endless one.
	})
	// No stream may end for silence: at the fake's usual 50 ms keepalive
	// a loaded machine's scheduling gap between two frames of a message
	// ended the first stream before the message was whole.
	fc.keepMS = "60000"
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var got [][]string
	done := make(chan error, 1)
	go func() {
		done <- cl.Run(ctx, func(nm *wire.NetMap) {
			var names []string
			for _, p := range nm.Peers {
				names = append(names, p.Name)
			}
			got = append(got, names)
		})
	}()
	select {
	case <-endless:
	case <-time.After(10 * time.Second):
		t.Fatal("client never reconnected after the first stream")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run = %v", err)
	}
	want := [][]string{{"a", "b", "c", "d"}, {"a", "b", "c", "d", "e", "f", "g"}}
	if len(got) < 2 || !slices.Equal(got[0], want[0]) || !slices.Equal(got[1], want[1]) {
		t.Fatalf("netmaps' peers = %v, want %v (and nothing from the endless message)", got, want)
	}
	if len(got) != 2 {
		t.Fatalf("%d netmaps, want 2: the endless message must not be handed over", len(got))
	}
}

// TestRunResponsesJoinsSplitMessages: RunResponses hands over a message
// split across frames once, whole, as the first response.
func TestRunResponsesJoinsSplitMessages(t *testing.T) {
	peer := func(name string) *wire.Node { return &wire.Node{Name: name, Key: key.NewNode().Public()} }
	_, cl := newFake(t, func(fc *fakeCoord, w http.ResponseWriter, r *http.Request, nk key.NodePublic) {
		fc.frame(w, nk, &wire.MapResponse{Self: &wire.Node{Name: "me"}, Peers: []*wire.Node{peer("a")}, More: true})
		fc.frame(w, nk, &wire.MapResponse{Peers: []*wire.Node{peer("b")}, More: true})
		fc.frame(w, nk, &wire.MapResponse{Peers: []*wire.Node{peer("c")}})
		<-r.Context().Done()
	})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	type got struct {
		self  string
		peers int
		first bool
	}
	gotc := make(chan got, 4)
	done := make(chan error, 1)
	go func() {
		done <- cl.RunResponses(ctx, func(mr *wire.MapResponse, first bool) {
			g := got{peers: len(mr.Peers), first: first}
			if mr.Self != nil {
				g.self = mr.Self.Name
			}
			gotc <- g
			cancel()
		})
	}()
	if err := <-done; err != nil {
		t.Fatalf("RunResponses = %v", err)
	}
	if g := <-gotc; g != (got{"me", 3, true}) {
		t.Fatalf("first response = %+v, want self me, 3 peers, first", g)
	}
}

// firstConnListener hands its first connection to first and the rest to
// Accept's caller.
type firstConnListener struct {
	net.Listener
	once  sync.Once
	first func(net.Conn)
}

func (l *firstConnListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		taken := false
		l.once.Do(func() { taken = true; go l.first(c) })
		if !taken {
			return c, nil
		}
	}
}

// TestPostRetriesStaleConnection: a coordinator that restarted leaves the
// client a pooled connection that the old process closed; the next sealed
// POST on it is reset. Every sealed request is guarded by the
// coordinator's replay cache, so the client sends it again on a fresh
// connection instead of failing (it failed with "connection reset by
// peer" after a restart under load).
func TestPostRetriesStaleConnection(t *testing.T) {
	fc := &fakeCoord{t: t, priv: key.NewMachine(), keepMS: "50"}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	resets := make(chan struct{}, 1)
	fl := &firstConnListener{Listener: ln, first: func(c net.Conn) {
		defer c.Close()
		br := bufio.NewReader(c)
		// The key, on a connection kept alive for the next request.
		req, err := http.ReadRequest(br)
		if err != nil || req.URL.Path != wire.PathKey {
			t.Errorf("first request on the connection: %v, %v; want GET %s", req, err, wire.PathKey)
			return
		}
		pub := fc.priv.Public().String()
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(pub), pub)
		// The POST that follows on it meets a process that is gone.
		if _, err := http.ReadRequest(br); err != nil {
			t.Errorf("second request on the connection: %v", err)
			return
		}
		c.(*net.TCPConn).SetLinger(0)
		resets <- struct{}{}
	}}
	hs := &http.Server{Handler: fc}
	go hs.Serve(fl)
	t.Cleanup(func() { hs.Close() })
	cl, err := New(Options{ServerURL: "http://" + ln.Addr().String(), PrivateKey: key.NewNode()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cl.sendUpdate(t.Context()); err != nil {
		t.Fatalf("update over a connection reset before its answer: %v", err)
	}
	select {
	case <-resets:
	default:
		t.Fatal("the update never went over the pooled connection: nothing was tested")
	}
	fc.mu.Lock()
	n := len(fc.updates)
	fc.mu.Unlock()
	if n != 1 {
		t.Errorf("the coordinator saw %d updates, want 1", n)
	}
}

// TestRateLimitedRequestRetried: a request the coordinator refuses with
// 429 rate_limited is sent again, fresh, after the Retry-After it asked
// for.
func TestRateLimitedRequestRetried(t *testing.T) {
	fc := &fakeCoord{t: t, priv: key.NewMachine()}
	var mu sync.Mutex
	var seen [][]byte
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == wire.PathMap {
			b, _ := io.ReadAll(r.Body)
			mu.Lock()
			seen = append(seen, b)
			first := len(seen) == 1
			mu.Unlock()
			if first {
				w.Header().Set("Retry-After", "1")
				w.WriteHeader(http.StatusTooManyRequests)
				io.WriteString(w, `{"error":"too many requests from this address","code":"rate_limited"}`)
				return
			}
			r.Body = io.NopCloser(bytes.NewReader(b))
		}
		fc.ServeHTTP(w, r)
	}))
	t.Cleanup(hs.Close)
	cl, err := New(Options{ServerURL: hs.URL, PrivateKey: key.NewNode()})
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	if _, err := cl.sendUpdate(t.Context()); err != nil {
		t.Fatalf("update after one 429: %v", err)
	}
	if d := time.Since(t0); d < time.Second {
		t.Errorf("retried after %v, want the Retry-After of 1s", d)
	}
	if len(seen) != 2 || bytes.Equal(seen[0], seen[1]) {
		t.Errorf("%d requests (same body: %v), want 2 different ones", len(seen), len(seen) == 2 && bytes.Equal(seen[0], seen[1]))
	}
}
