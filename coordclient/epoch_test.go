package coordclient

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"

	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// epochCoord is a coordinator's expose endpoint that checks boot
// epochs (wire.BootEpochVersion) as the coordinator does.
type epochCoord struct {
	priv key.MachinePrivate

	mu      sync.Mutex
	epoch   []byte // nil: a coordinator without epochs
	restart bool   // draw a new epoch after every key fetch (a coordinator that restarts all the time)
	fetches int    // GET /key
	posts   int    // POST /machine/expose
	got     [][]byte
}

func (ec *epochCoord) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ec.mu.Lock()
	defer ec.mu.Unlock()
	switch r.URL.Path {
	case wire.PathKey:
		ec.fetches++
		if ec.epoch != nil {
			w.Header().Set(wire.HeaderBootEpoch, hex.EncodeToString(ec.epoch))
		}
		if ec.restart {
			ec.epoch = bytes.Repeat([]byte{byte(100 + ec.fetches)}, wire.BootEpochLen)
		}
		io.WriteString(w, ec.priv.Public().String())
		return
	case wire.PathExpose:
	default:
		http.NotFound(w, r)
		return
	}
	ec.posts++
	var env wire.Envelope
	json.NewDecoder(r.Body).Decode(&env)
	clear, ok := ec.priv.OpenFrom(env.NodeKey, env.Sealed)
	if !ok {
		http.Error(w, `{"error":"bad seal","code":"bad_seal"}`, http.StatusUnauthorized)
		return
	}
	var req wire.ExposeRequest
	json.Unmarshal(clear, &req)
	ec.got = append(ec.got, req.Epoch)
	if !bytes.Equal(req.Epoch, ec.epoch) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		json.NewEncoder(w).Encode(wire.ErrorBody{Error: "stale", Code: wire.CodeStaleEpoch})
		return
	}
	b, _ := json.Marshal(wire.ExposeResponse{URL: "https://app.example.test"})
	w.Header().Set(wire.HeaderVersion, strconv.Itoa(wire.CapabilityVersion))
	w.Write(ec.priv.Shared(env.NodeKey).Bind(req.Nonce).Seal(b))
}

// TestBootEpochRefetch: the client seals the epoch its coordinator gave
// with its key; refused for it (the coordinator restarted), it fetches
// the key and epoch again and sends the request once more, so the
// caller sees no error; a coordinator that refuses the new epoch too
// gets no third request (the error reaches the caller); one without
// epochs gets requests without one.
func TestBootEpochRefetch(t *testing.T) {
	first := bytes.Repeat([]byte{1}, wire.BootEpochLen)
	second := bytes.Repeat([]byte{2}, wire.BootEpochLen)
	expose := func(c *Client) error {
		_, err := c.Expose(t.Context(), wire.ExposeRequest{Proto: "http", Port: 3000})
		return err
	}
	newClient := func(t *testing.T, ec *epochCoord) *Client {
		srv := httptest.NewServer(ec)
		t.Cleanup(srv.Close)
		c, err := New(Options{ServerURL: srv.URL, PrivateKey: key.NewNode()})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	counts := func(t *testing.T, ec *epochCoord, fetches, posts int) {
		t.Helper()
		ec.mu.Lock()
		defer ec.mu.Unlock()
		if ec.fetches != fetches || ec.posts != posts {
			t.Errorf("%d key fetches and %d requests, want %d and %d", ec.fetches, ec.posts, fetches, posts)
		}
	}

	t.Run("restarted", func(t *testing.T) {
		ec := &epochCoord{priv: key.NewMachine(), epoch: first}
		c := newClient(t, ec)
		if err := expose(c); err != nil {
			t.Fatalf("expose: %v", err)
		}
		ec.mu.Lock()
		ec.epoch = second
		ec.mu.Unlock()
		if err := expose(c); err != nil {
			t.Fatalf("expose after the restart: %v, want no error", err)
		}
		counts(t, ec, 2, 3)
		if got := ec.got; !bytes.Equal(got[0], first) || !bytes.Equal(got[1], first) || !bytes.Equal(got[2], second) {
			t.Errorf("epochs sent %x, want %x %x %x", got, first, first, second)
		}
	})
	t.Run("restarting all the time", func(t *testing.T) {
		ec := &epochCoord{priv: key.NewMachine(), epoch: first, restart: true}
		c := newClient(t, ec)
		var e *Error
		if err := expose(c); !errors.As(err, &e) || e.Code != wire.CodeStaleEpoch {
			t.Fatalf("expose: %v, want a %s error", err, wire.CodeStaleEpoch)
		}
		counts(t, ec, 2, 2) // sent again once, not more
	})
	t.Run("no epochs", func(t *testing.T) {
		ec := &epochCoord{priv: key.NewMachine()}
		c := newClient(t, ec)
		for range 2 {
			if err := expose(c); err != nil {
				t.Fatalf("expose: %v", err)
			}
		}
		counts(t, ec, 1, 2)
		for i, e := range ec.got {
			if e != nil {
				t.Errorf("request %d carries epoch %x to a coordinator without epochs", i, e)
			}
		}
	})
}
