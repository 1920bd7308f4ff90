package coordinator_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"

	"beam.dev/beam/coordclient"
	"beam.dev/beam/coordinator"
	"beam.dev/beam/wire"
)

// recordingProxy stands on the path between nodes and a coordinator, as
// an attacker on a plain http:// link could: it passes requests on and
// records the first response to each path; once told to replay a path,
// it answers that path's requests with the recording instead.
type recordingProxy struct {
	t        testing.TB
	upstream string
	URL      string

	mu       sync.Mutex // guards the following fields
	cond     *sync.Cond
	recorded map[string]*recording
	replay   map[string]bool
	replayed map[string]int           // responses replayed, by path
	live     []context.CancelFunc     // of requests passed on, to reset them
	headers  map[string]http.Header   // of the recordings
	statuses map[string]int           // of the recordings
	done     map[string]chan struct{} // closed when a path's recording is complete
}

// recording is the body of a recorded response, growing while it
// streams; cut, if not 0, is how much of it to replay.
type recording struct {
	buf bytes.Buffer
	cut int
}

func newRecordingProxy(t testing.TB, upstream string) *recordingProxy {
	p := &recordingProxy{t: t, upstream: upstream, recorded: map[string]*recording{}, replay: map[string]bool{},
		replayed: map[string]int{}, headers: map[string]http.Header{}, statuses: map[string]int{}, done: map[string]chan struct{}{}}
	p.cond = sync.NewCond(&p.mu)
	hs := httptest.NewServer(p)
	t.Cleanup(hs.Close)
	t.Cleanup(p.reset) // before hs.Close: end the streams passed on
	p.URL = hs.URL
	return p
}

func (p *recordingProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	path := r.URL.Path
	p.mu.Lock()
	if p.replay[path] && p.recorded[path] != nil {
		rec := p.recorded[path]
		body := bytes.Clone(rec.buf.Bytes())
		if rec.cut > 0 {
			body = body[:rec.cut]
		}
		hdr, status := p.headers[path], p.statuses[path]
		p.mu.Unlock()
		io.Copy(io.Discard, r.Body)
		for k, v := range hdr {
			w.Header()[k] = v
		}
		w.WriteHeader(status)
		w.Write(body)
		p.mu.Lock()
		p.replayed[path]++
		p.cond.Broadcast()
		p.mu.Unlock()
		return
	}
	ctx, cancel := context.WithCancel(r.Context())
	p.live = append(p.live, cancel)
	var rec *recording
	if p.recorded[path] == nil && r.Method == http.MethodPost {
		rec = &recording{}
		p.recorded[path] = rec
		p.done[path] = make(chan struct{})
	}
	p.mu.Unlock()
	defer cancel()

	req, err := http.NewRequestWithContext(ctx, r.Method, p.upstream+r.URL.RequestURI(), r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	req.Header = r.Header.Clone()
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	if rec != nil {
		p.mu.Lock()
		p.headers[path], p.statuses[path] = resp.Header.Clone(), resp.StatusCode
		p.mu.Unlock()
		defer close(p.done[path])
	}
	w.WriteHeader(resp.StatusCode)
	buf := make([]byte, 32<<10)
	for {
		n, err := resp.Body.Read(buf)
		if n > 0 {
			if rec != nil {
				p.mu.Lock()
				rec.buf.Write(buf[:n])
				p.mu.Unlock()
			}
			w.Write(buf[:n])
			w.(http.Flusher).Flush()
		}
		if err != nil {
			return
		}
	}
}

// cut marks the recording of path as it is now as the part to replay.
func (p *recordingProxy) cut(path string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	rec := p.recorded[path]
	if rec == nil {
		p.t.Fatalf("nothing recorded for %s", path)
	}
	rec.cut = rec.buf.Len()
}

// startReplay makes the proxy answer path from its recording and resets
// every request it passed on.
func (p *recordingProxy) startReplay(path string) {
	p.mu.Lock()
	p.replay[path] = true
	p.mu.Unlock()
	p.reset()
}

// reset ends every request the proxy passed on (their connections too).
func (p *recordingProxy) reset() {
	p.mu.Lock()
	live := p.live
	p.live = nil
	p.mu.Unlock()
	for _, cancel := range live {
		cancel()
	}
}

// waitReplayed waits until the proxy replayed path n times.
func (p *recordingProxy) waitReplayed(path string, n int, d time.Duration) {
	p.t.Helper()
	timer := time.AfterFunc(d, func() {
		p.mu.Lock()
		p.cond.Broadcast()
		p.mu.Unlock()
	})
	defer timer.Stop()
	deadline := time.Now().Add(d)
	p.mu.Lock()
	defer p.mu.Unlock()
	for p.replayed[path] < n {
		if time.Now().After(deadline) {
			p.t.Fatalf("proxy replayed %s %d times in %v, want %d", path, p.replayed[path], d, n)
		}
		p.cond.Wait()
	}
}

// TestReplayedMapStreamRefused plays an attacker on the path of a plain
// http:// coordinator link: it records alpha's map stream, in which gamma
// is a peer; gamma is removed and alpha drops it; then the attacker cuts
// alpha's stream and answers the streams alpha opens again with the
// recording, up to where gamma was alpha's peer. alpha must refuse it (the stream's frames are sealed for
// another request) and keep gamma dropped, the replayed stream after
// stream.
func TestReplayedMapStreamRefused(t *testing.T) {
	c := startCoord(t, nil)
	ak := c.authKey(t, coordinator.AuthKeyOptions{Reusable: true})
	proxy := newRecordingProxy(t, c.URL)
	alpha := newNode(t, proxy.URL)
	alpha.register(t, ak, "alpha")
	gamma := newNode(t, c.URL)
	gamma.register(t, ak, "gamma")
	gw := watch(t, gamma)
	gw.waitFor("gamma's map", 10*time.Second, func(nm *wire.NetMap) bool { return nm.Self != nil })
	aw := watch(t, alpha)
	aw.waitFor("gamma in alpha's map", 10*time.Second, func(nm *wire.NetMap) bool { return peerNamed(nm, "gamma") != nil })
	proxy.cut(wire.PathMap) // what the attacker will replay: a stream with gamma

	if err := c.Server.RemoveNode(context.Background(), "gamma"); err != nil {
		t.Fatal(err)
	}
	aw.waitFor("gamma dropped from alpha's map", 10*time.Second, func(nm *wire.NetMap) bool { return peerNamed(nm, "gamma") == nil })

	proxy.startReplay(wire.PathMap)
	// The second replay shows alpha took the first one and came back:
	// had it accepted the recording, gamma would be in its map again.
	proxy.waitReplayed(wire.PathMap, 2, 20*time.Second)
	aw.mu.Lock()
	nm := aw.nm
	aw.mu.Unlock()
	if peerNamed(nm, "gamma") != nil {
		t.Fatalf("alpha took the replayed stream: gamma is its peer again")
	}
}

// TestReplayedReplyRefused: a response to a register or expose request,
// recorded on the path and replayed for the node's next request of the
// same kind, is refused (its key is bound to the first request's nonce).
func TestReplayedReplyRefused(t *testing.T) {
	tests := []struct {
		name string
		path string
		call func(n *node, i int) error
	}{
		{"register", wire.PathRegister, func(n *node, i int) error {
			_, err := n.Register(context.Background(), coordclient.RegisterParams{Hostname: "alpha" + strconv.Itoa(i)})
			return err
		}},
		{"expose", wire.PathExpose, func(n *node, i int) error {
			_, err := n.Expose(context.Background(), wire.ExposeRequest{Name: "app" + strconv.Itoa(i), Proto: "http", Port: 3000})
			return err
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := startCoord(t, edgeOpts("", ""))
			ak := c.authKey(t, coordinator.AuthKeyOptions{Reusable: true})
			direct := newNode(t, c.URL)
			direct.register(t, ak, "alpha")
			proxy := newRecordingProxy(t, c.URL)
			n := &node{priv: direct.priv}
			cl, err := coordclient.New(coordclient.Options{ServerURL: proxy.URL, PrivateKey: direct.priv})
			if err != nil {
				t.Fatal(err)
			}
			n.Client = cl
			if err := tt.call(n, 1); err != nil {
				t.Fatalf("first %s: %v", tt.name, err)
			}
			proxy.startReplay(tt.path)
			err = tt.call(n, 2)
			proxy.waitReplayed(tt.path, 1, 10*time.Second)
			if !errors.Is(err, coordclient.ErrUnboundReply) || !errors.Is(err, coordclient.ErrBadResponse) {
				t.Fatalf("%s answered with a replayed reply: err = %v, want ErrUnboundReply", tt.name, err)
			}
		})
	}
}

// TestRepliesBoundByVersion checks what a node of each version gets on
// the wire: a node of version 16 (no nonce) frames that open with the
// shared key, as before; a node of version 17 frames bound to its nonce
// and numbered, which open with the shared key no more. Both see the
// coordinator's version in wire.HeaderVersion.
func TestRepliesBoundByVersion(t *testing.T) {
	c := startCoord(t, nil)
	ak := c.authKey(t, coordinator.AuthKeyOptions{Reusable: true})
	tests := []struct {
		name    string
		version int
		nonce   []byte
	}{
		{"version 16", 16, nil},
		{"version 17 and later", wire.CapabilityVersion, bytes.Repeat([]byte{7}, wire.ReplyNonceLen)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := newNode(t, c.URL)
			n.register(t, ak, "n")
			clear, _ := json.Marshal(&wire.MapRequest{Version: tt.version, NodeKey: n.priv.Public(), Stream: true, Nonce: tt.nonce, Epoch: c.epoch(t), Timestamp: time.Now()})
			env, _ := json.Marshal(wire.Envelope{NodeKey: n.priv.Public(), Sealed: n.priv.SealTo(c.priv.Public(), clear)})
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, c.URL+wire.PathMap, bytes.NewReader(env))
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %s", resp.Status)
			}
			if got, want := resp.Header.Get(wire.HeaderVersion), strconv.Itoa(wire.CapabilityVersion); got != want {
				t.Errorf("%s = %q, want %q", wire.HeaderVersion, got, want)
			}
			shared := n.priv.Shared(c.priv.Public())
			for seq := range uint64(2) { // the full map, then a keepalive
				var hdr [4]byte
				if _, err := io.ReadFull(resp.Body, hdr[:]); err != nil {
					t.Fatalf("frame %d: %v", seq, err)
				}
				fr := make([]byte, binary.BigEndian.Uint32(hdr[:]))
				if _, err := io.ReadFull(resp.Body, fr); err != nil {
					t.Fatalf("frame %d: %v", seq, err)
				}
				_, plainOK := shared.Open(fr)
				var boundOK bool
				if tt.nonce != nil {
					_, boundOK = shared.Bind(tt.nonce).OpenSeq(fr, seq)
				}
				if plainOK != (tt.nonce == nil) || boundOK != (tt.nonce != nil) {
					t.Fatalf("frame %d: opens with the shared key %v, bound as frame %d %v; want %v, %v", seq, plainOK, seq, boundOK, tt.nonce == nil, tt.nonce != nil)
				}
			}
		})
	}
	// A nonce of the wrong length is refused.
	n := newNode(t, c.URL)
	n.register(t, ak, "short")
	clear, _ := json.Marshal(&wire.MapRequest{Version: wire.CapabilityVersion, NodeKey: n.priv.Public(), Nonce: []byte{1, 2, 3}, Timestamp: time.Now()})
	env, _ := json.Marshal(wire.Envelope{NodeKey: n.priv.Public(), Sealed: n.priv.SealTo(c.priv.Public(), clear)})
	resp, err := http.Post(c.URL+wire.PathMap, "application/json", bytes.NewReader(env))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("a 3-byte nonce: status %s, want 400", resp.Status)
	}
}
