package coordinator_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"beam.dev/beam/coordclient"
	"beam.dev/beam/coordinator"
	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// rawPost sends body to path and returns the status and decoded error body.
func rawPost(t *testing.T, url, path string, body []byte) (int, wire.ErrorBody, []byte) {
	t.Helper()
	resp, err := http.Post(url+path, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var eb wire.ErrorBody
	json.Unmarshal(b, &eb)
	return resp.StatusCode, eb, b
}

// sealEnvelope builds an envelope naming envKey with msg sealed by sealer.
func sealEnvelope(t *testing.T, envKey key.NodePublic, sealer key.NodePrivate, to key.MachinePublic, msg any) []byte {
	t.Helper()
	clear, err := json.Marshal(msg)
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(map[string]any{"node_key": envKey, "sealed": sealer.SealTo(to, clear)})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestControlProtocolRefusals(t *testing.T) {
	c := startCoord(t, nil)
	mk := c.priv.Public()
	victim := key.NewNode()
	attacker := key.NewNode()
	ak := c.authKey(t, coordinator.AuthKeyOptions{Reusable: true})

	// The victim registers properly.
	good := sealEnvelope(t, victim.Public(), victim, mk, wire.RegisterRequest{Version: 1, NodeKey: victim.Public(), AuthKey: ak, Hostname: "victim", Timestamp: time.Now()})
	if st, eb, _ := rawPost(t, c.URL, "/machine/register", good); st != http.StatusOK {
		t.Fatalf("good register: %d %+v", st, eb)
	}

	shortBox := base64.StdEncoding.EncodeToString([]byte("tiny"))
	tests := []struct {
		name       string
		path       string
		body       []byte
		wantStatus int
		wantCode   wire.ErrorCode
	}{
		{"replayed register", "/machine/register", good, 401, wire.CodeReplay},
		{"not json", "/machine/register", []byte("hello"), 400, wire.CodeBadRequest},
		{"empty", "/machine/map", nil, 400, wire.CodeBadRequest},
		{"missing key", "/machine/map", []byte(`{"sealed":"` + base64.StdEncoding.EncodeToString(make([]byte, 64)) + `"}`), 400, wire.CodeBadRequest},
		{"bad key text", "/machine/map", []byte(`{"node_key":"nodekey:zz","sealed":"AAAA"}`), 400, wire.CodeBadRequest},
		{"short box", "/machine/map", []byte(`{"node_key":"` + victim.Public().String() + `","sealed":"` + shortBox + `"}`), 400, wire.CodeBadRequest},
		{"box by another key", "/machine/map",
			sealEnvelope(t, victim.Public(), attacker, mk, wire.MapRequest{Version: 1, NodeKey: victim.Public(), Endpoints: nil, Timestamp: time.Now()}),
			401, wire.CodeBadSeal},
		{"box to another coordinator", "/machine/map",
			sealEnvelope(t, victim.Public(), victim, key.NewMachine().Public(), wire.MapRequest{Version: 1, NodeKey: victim.Public(), Timestamp: time.Now()}),
			401, wire.CodeBadSeal},
		{"sealed key differs from envelope", "/machine/map",
			sealEnvelope(t, attacker.Public(), attacker, mk, wire.MapRequest{Version: 1, NodeKey: victim.Public(), Timestamp: time.Now()}),
			401, wire.CodeKeyMismatch},
		{"register as victim", "/machine/register",
			sealEnvelope(t, attacker.Public(), attacker, mk, wire.RegisterRequest{Version: 1, NodeKey: victim.Public(), AuthKey: ak, Timestamp: time.Now()}),
			401, wire.CodeKeyMismatch},
		{"garbage inside box", "/machine/map", sealEnvelope(t, victim.Public(), victim, mk, "not a request"), 400, wire.CodeBadRequest},
		{"timestamp in the past", "/machine/map",
			sealEnvelope(t, victim.Public(), victim, mk, wire.MapRequest{Version: 1, NodeKey: victim.Public(), Timestamp: time.Now().Add(-10 * time.Minute)}),
			401, wire.CodeClockSkew},
		{"timestamp in the future", "/machine/map",
			sealEnvelope(t, victim.Public(), victim, mk, wire.MapRequest{Version: 1, NodeKey: victim.Public(), Timestamp: time.Now().Add(10 * time.Minute)}),
			401, wire.CodeClockSkew},
		{"unknown node map", "/machine/map",
			sealEnvelope(t, attacker.Public(), attacker, mk, wire.MapRequest{Version: 1, NodeKey: attacker.Public(), Timestamp: time.Now()}),
			403, wire.CodeNodeNotRegistered},
		{"unknown approval code", "/machine/register",
			sealEnvelope(t, attacker.Public(), attacker, mk, wire.RegisterRequest{Version: 1, NodeKey: attacker.Public(), Followup: "NOPE2345", Timestamp: time.Now()}),
			403, wire.CodeApprovalExpired},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st, eb, raw := rawPost(t, c.URL, tc.path, tc.body)
			if st != tc.wantStatus || eb.Code != tc.wantCode {
				t.Fatalf("got %d %q (%s), want %d %q", st, eb.Code, raw, tc.wantStatus, tc.wantCode)
			}
			if len(raw) > 300 {
				t.Errorf("error body is %d bytes; want a short error", len(raw))
			}
		})
	}

	// The refused requests changed nothing about the victim.
	nodes, _ := c.Server.Nodes(context.Background())
	if len(nodes) != 1 || nodes[0].Key != victim.Public() || len(nodes[0].Endpoints) != 0 {
		t.Fatalf("nodes after attacks = %+v", nodes)
	}
}

func TestGetKey(t *testing.T) {
	c := startCoord(t, nil)
	resp, err := http.Get(c.URL + "/key")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	k, err := key.ParseMachinePublic(strings.TrimSpace(string(b)))
	if err != nil || k != c.priv.Public() {
		t.Fatalf("GET /key = %q (%v), want %v", b, err, c.priv.Public())
	}
}

// TestServerSetup checks GET /server/setup: 404 from a coordinator with
// no public setup; from one with it, the setup of the moment to anyone,
// but how the certificate's order went (the CA, its error text, which
// names internal hosts and resolvers) only with the admin token.
func TestServerSetup(t *testing.T) {
	_, err := coordclient.ServerSetup(t.Context(), startCoord(t, nil).URL, "", nil)
	if ce, ok := errors.AsType[*coordclient.Error](err); !ok || ce.Status != http.StatusNotFound {
		t.Errorf("setup of a coordinator without one: %v, want a 404 error", err)
	}
	var state atomic.Value
	state.Store(wire.CertPending)
	const secretError = "Get \"https://acme.corp.internal:14000/dir\": dial tcp: lookup acme.corp.internal on 10.1.2.3:53: no such host"
	c := startCoord(t, func(o *coordinator.Options) {
		o.ServerSetup = func() *wire.ServerSetup {
			return &wire.ServerSetup{Domain: "example.test", PublicIPs: []netip.Addr{netip.MustParseAddr("192.0.2.1")}, HTTPSPort: 443,
				Certificate: &wire.CertStatus{Name: "*.example.test", State: state.Load().(string),
					CA: "https://acme.corp.internal:14000/dir", Orders: 3, Problem: "connection", Error: secretError, Changed: time.Now()}}
		}
	})
	for _, want := range []string{wire.CertPending, wire.CertFailed} {
		state.Store(want)
		for _, tc := range []struct {
			name, token string
			full        bool
		}{
			{"anyone", "", false},
			{"wrong token", testToken + "x", false},
			{"admin", testToken, true},
		} {
			t.Run(want+" "+tc.name, func(t *testing.T) {
				got, err := coordclient.ServerSetup(t.Context(), c.URL, tc.token, nil)
				if err != nil {
					t.Fatal(err)
				}
				if got.Domain != "example.test" || len(got.PublicIPs) != 1 || got.HTTPSPort != 443 || got.Certificate == nil ||
					got.Certificate.State != want || got.Certificate.Name != "*.example.test" {
					t.Fatalf("setup = %+v, want example.test at 192.0.2.1 with HTTPS and a %s certificate", got, want)
				}
				cs := *got.Certificate
				hidden := wire.CertStatus{Name: cs.Name, State: cs.State}
				if tc.full && (cs.Error != secretError || cs.CA == "" || cs.Orders != 3 || cs.Problem == "" || cs.Changed.IsZero()) {
					t.Errorf("admin's certificate status = %+v, want the order's details", cs)
				}
				if !tc.full && cs != hidden {
					t.Errorf("certificate status told without the admin token = %+v, want only name and state", cs)
				}
			})
		}
	}
}

func TestAdminRequiresToken(t *testing.T) {
	c := startCoord(t, nil)
	c.authKey(t, coordinator.AuthKeyOptions{})
	registered := newNode(t, c.URL).register(t, c.authKey(t, coordinator.AuthKeyOptions{}), "secretive").Node
	routes := []struct{ method, path, body string }{
		{"POST", "/api/v1/authkeys", `{"reusable":true}`},
		{"GET", "/api/v1/authkeys", ""},
		{"DELETE", "/api/v1/authkeys/beamkey-000000000000", ""},
		{"GET", "/api/v1/nodes", ""},
		{"DELETE", "/api/v1/nodes/secretive", ""},
		{"POST", "/api/v1/nodes/secretive/expire", ""},
		{"GET", "/api/v1/unknown", ""},
	}
	for _, auth := range []string{"", "Bearer wrong", "Bearer " + testToken + "x", "Basic " + testToken, testToken} {
		for _, rt := range routes {
			t.Run(rt.method+" "+rt.path+" "+auth, func(t *testing.T) {
				req, _ := http.NewRequest(rt.method, c.URL+rt.path, strings.NewReader(rt.body))
				if auth != "" {
					req.Header.Set("Authorization", auth)
				}
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusUnauthorized {
					t.Fatalf("status %d, want 401", resp.StatusCode)
				}
				if len(b) > 120 || bytes.Contains(b, []byte("secretive")) || bytes.Contains(b, []byte("beamkey")) {
					t.Fatalf("401 body leaks or is long: %s", b)
				}
			})
		}
	}
	// Nothing changed.
	nodes, _ := c.Server.Nodes(context.Background())
	if len(nodes) != 1 || !nodes[0].KeyExpiry.Equal(registered.KeyExpiry) {
		t.Fatalf("nodes = %+v", nodes)
	}
}

func TestDERPVerify(t *testing.T) {
	const relayToken = "relay-token-0123456789"
	c := startCoord(t, func(o *coordinator.Options) { o.RelayToken = relayToken })
	n := newNode(t, c.URL)
	n.register(t, c.authKey(t, coordinator.AuthKeyOptions{}), "relayuser")
	ask := func(k, token string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest("GET", c.URL+"/api/v1/derp/verify?key="+k, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	// Only relays (and the admin) may ask: anyone else learns nothing,
	// whether the key is registered or not.
	var bodies []string
	for _, k := range []string{n.NodeKey().String(), key.NewNode().Public().String(), "garbage"} {
		for _, tok := range []string{"", "wrong", relayToken + "x"} {
			resp := ask(k, tok)
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusUnauthorized {
				t.Errorf("verify %.20s with token %q: %d, want 401", k, tok, resp.StatusCode)
			}
			bodies = append(bodies, string(b))
		}
	}
	for _, b := range bodies[1:] {
		if b != bodies[0] {
			t.Errorf("refusals differ: %q and %q", bodies[0], b)
		}
	}
	if resp := ask(n.NodeKey().String(), testToken); resp.StatusCode != 200 {
		t.Errorf("verify with the admin token: %d, want 200", resp.StatusCode)
	}
	check := func(k string, wantStatus int, wantAllow bool) {
		t.Helper()
		resp := ask(k, relayToken)
		defer resp.Body.Close()
		var v struct{ Allow bool }
		json.NewDecoder(resp.Body).Decode(&v)
		if resp.StatusCode != wantStatus || v.Allow != wantAllow {
			t.Errorf("verify %s = %d %v, want %d %v", k, resp.StatusCode, v.Allow, wantStatus, wantAllow)
		}
	}
	check(n.NodeKey().String(), 200, true)
	check(key.NewNode().Public().String(), 403, false)
	check("garbage", 400, false)
	if err := c.Server.ExpireNode(context.Background(), "relayuser"); err != nil {
		t.Fatal(err)
	}
	check(n.NodeKey().String(), 403, false)
	if err := c.Server.RemoveNode(context.Background(), "relayuser"); err != nil {
		t.Fatal(err)
	}
	check(n.NodeKey().String(), 403, false)
}

// TestRawStreamFramesAndKeepAlive reads a map stream by hand: a full first
// frame, then keepalives carrying ControlTime.
func TestRawStreamFramesAndKeepAlive(t *testing.T) {
	c := startCoord(t, func(o *coordinator.Options) { o.KeepAliveInterval = 50 * time.Millisecond })
	n := newNode(t, c.URL)
	n.register(t, c.authKey(t, coordinator.AuthKeyOptions{}), "raw")
	body := sealEnvelope(t, n.NodeKey(), n.priv, c.priv.Public(), wire.MapRequest{Version: 1, NodeKey: n.NodeKey(), Stream: true, Timestamp: time.Now()})
	resp, err := http.Post(c.URL+"/machine/map", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get(wire.HeaderKeepAlive) != "50" {
		t.Fatalf("status %d, keepalive header %q", resp.StatusCode, resp.Header.Get(wire.HeaderKeepAlive))
	}
	read := func() *wire.MapResponse {
		t.Helper()
		var hdr [4]byte
		if _, err := io.ReadFull(resp.Body, hdr[:]); err != nil {
			t.Fatal(err)
		}
		size := binary.BigEndian.Uint32(hdr[:])
		if size == 0 || size > wire.MaxFrameSize {
			t.Fatalf("frame size %d", size)
		}
		buf := make([]byte, size)
		if _, err := io.ReadFull(resp.Body, buf); err != nil {
			t.Fatal(err)
		}
		clear, ok := n.priv.OpenFrom(c.priv.Public(), buf)
		if !ok {
			t.Fatal("frame does not open")
		}
		var mr wire.MapResponse
		if err := json.Unmarshal(clear, &mr); err != nil {
			t.Fatal(err)
		}
		return &mr
	}
	first := read()
	if first.Self == nil || first.Self.Name != "raw" || first.DNS == nil || first.DNS.Domain != "default.beam.internal" ||
		!first.PacketFilterSet || first.ControlTime.IsZero() || !first.Self.Online {
		t.Fatalf("first frame not full: %+v", first)
	}
	last := first.ControlTime
	for range 3 {
		ka := read()
		if !ka.KeepAlive || ka.ControlTime.IsZero() || ka.ControlTime.Before(last) {
			t.Fatalf("want keepalive with ControlTime, got %+v", ka)
		}
		last = ka.ControlTime
	}
}
