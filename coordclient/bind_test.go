package coordclient

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// syncBuffer is a bytes.Buffer safe for a logger and a test at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// TestFrameReplayedWithinStreamRefused: a coordinator of version 17
// seals its frames bound to the stream's request and numbered. A frame
// repeated within the stream (here the one that added peer a, after the
// one that removed it) does not open as the next frame: the client drops
// the stream with a log that says so, and a keeps removed.
func TestFrameReplayedWithinStreamRefused(t *testing.T) {
	peerA := &wire.Node{Name: "a", Key: key.NewNode().Public()}
	var mu sync.Mutex
	n := 0
	fc, cl := newFake(t, func(fc *fakeCoord, w http.ResponseWriter, r *http.Request, nk key.NodePublic) {
		mu.Lock()
		n++
		i := n
		mu.Unlock()
		fc.mu.Lock()
		box := fc.priv.Shared(nk).Bind(fc.nonce)
		fc.mu.Unlock()
		var sealed [][]byte
		send := func(b []byte) {
			var hdr [4]byte
			binary.BigEndian.PutUint32(hdr[:], uint32(len(b)))
			w.Write(hdr[:])
			w.Write(b)
			w.(http.Flusher).Flush()
		}
		frame := func(mr *wire.MapResponse) {
			b, _ := json.Marshal(mr)
			s := box.SealSeqAppend(nil, uint64(len(sealed)), b)
			sealed = append(sealed, s)
			send(s)
		}
		if i > 1 {
			frame(&wire.MapResponse{Self: &wire.Node{Name: "second stream"}})
			<-r.Context().Done()
			return
		}
		frame(&wire.MapResponse{Self: &wire.Node{Name: "me"}})
		frame(&wire.MapResponse{PeersChanged: []*wire.Node{peerA}})
		frame(&wire.MapResponse{PeersRemoved: []key.NodePublic{peerA.Key}})
		send(sealed[1]) // a added again, if taken
		<-r.Context().Done()
	})
	fc.version = "17"
	var logs syncBuffer
	cl.logger = slog.New(slog.NewTextHandler(&logs, nil))
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var maps []*wire.NetMap
	done := make(chan error, 1)
	go func() {
		done <- cl.Run(ctx, func(nm *wire.NetMap) {
			maps = append(maps, nm)
			if nm.Self.Name == "second stream" {
				cancel()
			}
		})
	}()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		cancel()
		<-done
		t.Fatalf("no second stream; %d netmaps", len(maps))
	}
	var names []string
	for _, nm := range maps {
		s := nm.Self.Name + ":"
		for _, p := range nm.Peers {
			s += p.Name
		}
		names = append(names, s)
	}
	if got, want := strings.Join(names, " "), "me: me:a me: second stream:"; got != want {
		t.Errorf("netmaps = %q, want %q", got, want)
	}
	if !strings.Contains(logs.String(), ErrUnboundReply.Error()) || !strings.Contains(logs.String(), "replayed, dropped or reordered") {
		t.Errorf("no log of the refused frame; logs:\n%s", logs.String())
	}
}

// TestUnboundReplyAccepted checks when a reply sealed with the unbound
// key is taken: from a coordinator that says nothing of its version or
// an older one, and has bound no reply before; never from one that says
// it is of version 17 or later, nor after it bound a reply.
func TestUnboundReplyAccepted(t *testing.T) {
	node, machine := key.NewNode(), key.NewMachine()
	plain := node.Shared(machine.Public())
	nonce := bytes.Repeat([]byte{9}, wire.ReplyNonceLen)
	msg := []byte(`{}`)
	tests := []struct {
		name      string
		version   string
		boundSeen bool
		sealed    []byte
		want      bool
	}{
		{"unbound, no version", "", false, machine.Shared(node.Public()).Seal(msg), true},
		{"unbound, version 16", "16", false, machine.Shared(node.Public()).Seal(msg), true},
		{"unbound, version 17", "17", false, machine.Shared(node.Public()).Seal(msg), false},
		{"unbound, version 18", "18", false, machine.Shared(node.Public()).Seal(msg), false},
		{"unbound after a bound reply", "", true, machine.Shared(node.Public()).Seal(msg), false},
		{"bound", "17", false, machine.Shared(node.Public()).Bind(nonce).Seal(msg), true},
		{"bound to another nonce", "", false, machine.Shared(node.Public()).Bind(make([]byte, wire.ReplyNonceLen)).Seal(msg), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := New(Options{ServerURL: "http://127.0.0.1:1", PrivateKey: node})
			if err != nil {
				t.Fatal(err)
			}
			tg := c.current()
			if tt.boundSeen {
				c.sawBound(tg)
			}
			resp := &http.Response{Header: http.Header{}, Body: io.NopCloser(bytes.NewReader(tt.sealed))}
			if tt.version != "" {
				resp.Header.Set(wire.HeaderVersion, tt.version)
			}
			var v struct{}
			err = c.readSealed(&reply{c: c, t: tg, resp: resp, plain: plain, bound: plain.Bind(nonce)}, &v)
			if (err == nil) != tt.want {
				t.Fatalf("readSealed = %v, want accepted %v", err, tt.want)
			}
			if err != nil && !errors.Is(err, ErrBadResponse) {
				t.Errorf("error %v does not match ErrBadResponse", err)
			}
		})
	}
}

// TestReflectedRequestRefused: requests and unbound replies are sealed
// with the same key, so someone on the path who answers a request with
// the node's own sealed request (no recording, no key needed) and drops
// the version header would have it open as an old coordinator's reply.
// Register must not take it as registered, nor the map stream as a map.
func TestReflectedRequestRefused(t *testing.T) {
	coordPub := key.NewMachine().Public() // the coordinator's key; its private half is not needed
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == wire.PathKey {
			io.WriteString(w, coordPub.String())
			return
		}
		var env wire.Envelope
		if err := json.NewDecoder(r.Body).Decode(&env); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if r.URL.Path == wire.PathMap {
			var hdr [4]byte
			binary.BigEndian.PutUint32(hdr[:], uint32(len(env.Sealed)))
			w.Write(hdr[:])
		}
		w.Write(env.Sealed)
	}))
	defer hs.Close()
	var logs syncBuffer
	cl, err := New(Options{ServerURL: hs.URL, PrivateKey: key.NewNode(), DiscoKey: key.NewDisco().Public(), Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	rr, err := cl.Register(t.Context(), RegisterParams{AuthKey: "k", Hostname: "h", OS: "linux"})
	if !errors.Is(err, ErrUnboundReply) {
		t.Fatalf("Register answered with its own request: %+v, %v; want ErrUnboundReply", rr, err)
	}

	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
	defer cancel()
	var maps int
	cl.RunResponses(ctx, func(*wire.MapResponse, bool) { maps++ })
	if maps != 0 {
		t.Errorf("the map stream took %d messages that were its own request sent back", maps)
	}
	if !strings.Contains(logs.String(), "sent back") {
		t.Errorf("no log that the stream was the node's request sent back:\n%s", logs.String())
	}
}
