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

// FuzzExposeRequest feeds arbitrary bodies to /machine/expose and
// /machine/txt: the envelope, the sealed box and the request inside
// (names, domains, protos, ports, options). Nothing may panic and every
// answer is 200 or one of the documented 4xx/5xx refusals.
func FuzzExposeRequest(f *testing.F) {
	fixed := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	st, err := sqlstore.Open(context.Background(), ":memory:")
	if err != nil {
		f.Fatal(err)
	}
	defer st.Close()
	mpriv := key.NewMachine()
	tcp, _ := coordinator.ParsePortRange("20000-20003")
	srv, err := coordinator.New(coordinator.Options{
		Store: st, PrivateKey: mpriv, Now: func() time.Time { return fixed },
		EdgeDomain: edgeDomain, EdgeTCPPorts: tcp, EdgeUDPPorts: tcp,
		// No DNS in fuzzing: every proof check fails at once.
		LookupTXT:   func(context.Context, string) ([]string, error) { return nil, context.Canceled },
		LookupCNAME: func(context.Context, string) (string, error) { return "", context.Canceled },
	})
	if err != nil {
		f.Fatal(err)
	}
	defer srv.Close()
	node := key.NewNode()
	seal := func(v any) []byte {
		clear, _ := json.Marshal(v)
		b, _ := json.Marshal(map[string]any{"node_key": node.Public(), "sealed": node.SealTo(mpriv.Public(), clear)})
		return b
	}
	ak, _ := srv.CreateAuthKey(context.Background(), coordinator.AuthKeyOptions{Reusable: true})
	rec := httptest.NewRecorder()
	srv.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/machine/register",
		bytes.NewReader(seal(wire.RegisterRequest{Version: 2, NodeKey: node.Public(), AuthKey: ak, Hostname: "fz", Timestamp: fixed}))))
	if rec.Code != http.StatusOK {
		f.Fatalf("register: %d %s", rec.Code, rec.Body.Bytes())
	}
	req := func(r wire.ExposeRequest) []byte {
		r.Version, r.NodeKey, r.Timestamp = 2, node.Public(), fixed
		return seal(r)
	}
	// Seeds: each protocol, a pool re-expose, a remove, reserved and
	// wildcard names, a custom domain, bad options, a TXT request, junk.
	f.Add(false, req(wire.ExposeRequest{Proto: "http", Port: 3000}))
	f.Add(false, req(wire.ExposeRequest{Name: "db", Proto: "tcp", Port: 5432}))
	f.Add(false, req(wire.ExposeRequest{Name: "Game.", Proto: "udp", Port: 27015}))
	f.Add(false, req(wire.ExposeRequest{Name: "app.example.test", Proto: "tls", Port: 443}))
	f.Add(false, req(wire.ExposeRequest{Name: "db", Proto: "tcp", Remove: true}))
	f.Add(false, req(wire.ExposeRequest{Name: "_acme-challenge", Proto: "http", Port: 1}))
	f.Add(false, req(wire.ExposeRequest{Name: "*.x", Proto: "http", Port: 1}))
	f.Add(false, req(wire.ExposeRequest{CustomDomain: "shop.example.com", Proto: "http", Port: 1}))
	f.Add(false, req(wire.ExposeRequest{Proto: "http", Port: 1, Options: wire.RouteOptions{CORS: []string{"*", "x"}}}))
	f.Add(false, req(wire.ExposeRequest{Proto: "tcp", Port: 1, Options: wire.RouteOptions{RateLimit: wire.Rate{Count: 1, Per: 7}}}))
	f.Add(true, seal(wire.TXTRequest{Version: 2, NodeKey: node.Public(), Timestamp: fixed, Name: "_acme-challenge.example.test", Values: []string{"v"}}))
	f.Add(false, seal([]int{1}))
	f.Add(true, []byte(`{"node_key":"nodekey:00","sealed":""}`))
	f.Add(false, []byte{0xff})
	f.Fuzz(func(t *testing.T, txt bool, body []byte) {
		path := "/machine/expose"
		if txt {
			path = "/machine/txt"
		}
		rec := httptest.NewRecorder()
		hr := httptest.NewRequest(http.MethodPost, path, bytes.NewReader(body))
		srv.ServeHTTP(rec, hr)
		switch rec.Code {
		case http.StatusOK, http.StatusBadRequest, http.StatusUnauthorized, http.StatusForbidden, http.StatusNotFound,
			http.StatusConflict, http.StatusNotImplemented, http.StatusServiceUnavailable:
		default:
			t.Fatalf("%s: status %d: %s", path, rec.Code, rec.Body.Bytes())
		}
	})
}
