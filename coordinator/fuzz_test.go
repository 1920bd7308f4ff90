package coordinator_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"beam.dev/beam/coordinator"
	"beam.dev/beam/coordinator/sqlstore"
	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// FuzzControlRequest feeds arbitrary bodies to the control endpoints: the
// envelope JSON, the sealed box and the JSON inside. Nothing may panic
// (the handler turns panics into 500) and every answer is 200 or a 4xx.
func FuzzControlRequest(f *testing.F) {
	fixed := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	st, err := sqlstore.Open(context.Background(), ":memory:")
	if err != nil {
		f.Fatal(err)
	}
	defer st.Close()
	// Fixed keys so seeds stay valid: the machine and one registered node.
	mpriv := key.NewMachine()
	// The clock stands still, so a per-source bucket would never refill:
	// with the machine rate on, the fuzzer's requests (all from one
	// address) would be refused with 429 after the burst.
	srv, err := coordinator.New(coordinator.Options{Store: st, PrivateKey: mpriv, Now: func() time.Time { return fixed }, DevMode: true, MachineRequestRate: -1, NodeRequestRate: -1})
	if err != nil {
		f.Fatal(err)
	}
	defer srv.Close()
	node := key.NewNode()
	ak, _ := srv.CreateAuthKey(context.Background(), coordinator.AuthKeyOptions{Reusable: true})
	seal := func(envKey key.NodePublic, v any) []byte {
		clear, _ := json.Marshal(v)
		b, _ := json.Marshal(map[string]any{"node_key": envKey, "sealed": node.SealTo(mpriv.Public(), clear)})
		return b
	}
	// Seeds: a valid registration, a valid endpoint update, a valid stream
	// open, a key mismatch, JSON junk inside a valid box, and plain junk.
	f.Add(uint8(0), seal(node.Public(), wire.RegisterRequest{Version: 1, NodeKey: node.Public(), AuthKey: ak, Hostname: "fz", Timestamp: fixed}))
	f.Add(uint8(1), seal(node.Public(), wire.MapRequest{Version: 1, NodeKey: node.Public(), Timestamp: fixed}))
	f.Add(uint8(1), seal(node.Public(), wire.MapRequest{Version: 1, NodeKey: node.Public(), Stream: true, Timestamp: fixed}))
	f.Add(uint8(1), seal(key.NewNode().Public(), wire.MapRequest{Version: 1, NodeKey: node.Public(), Timestamp: fixed}))
	f.Add(uint8(0), seal(node.Public(), []int{1, 2, 3}))
	f.Add(uint8(0), []byte(`{"node_key":"nodekey:00","sealed":"!!"}`))
	f.Add(uint8(1), []byte(`{}`))
	f.Add(uint8(0), []byte{0xff, 0xfe})
	f.Fuzz(func(t *testing.T, which uint8, body []byte) {
		path := "/machine/register"
		if which%2 == 1 {
			path = "/machine/map"
		}
		ctx, cancel := context.WithCancel(context.Background())
		cancel() // a stream ends right after its first frame
		req := httptest.NewRequestWithContext(ctx, http.MethodPost, path, bytes.NewReader(body))
		req.RemoteAddr = "127.0.0.1:1"
		rec := httptest.NewRecorder()
		srv.ServeHTTP(rec, req)
		switch rec.Code {
		case http.StatusOK, http.StatusBadRequest, http.StatusUnauthorized, http.StatusForbidden:
		default:
			t.Fatalf("%s: status %d: %s", path, rec.Code, rec.Body.Bytes())
		}
	})
}
