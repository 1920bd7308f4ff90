package coordinator_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"beam.dev/beam/beamtest/pgtest"
	"beam.dev/beam/coordclient"
	"beam.dev/beam/coordinator"
	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// Hardening tests: what an attacker without the right secret can and
// cannot do. This file grows with every new route.

// adminRoutes are every admin route, with bodies that would succeed given
// the token.
var adminRoutes = []struct{ method, path, body string }{
	{"POST", "/api/v1/authkeys", `{"reusable":true}`},
	{"GET", "/api/v1/authkeys", ""},
	{"DELETE", "/api/v1/authkeys/beamkey-000000000000", ""},
	{"GET", "/api/v1/nodes", ""},
	{"DELETE", "/api/v1/nodes/secretive", ""},
	{"POST", "/api/v1/nodes/secretive/expire", ""},
	{"PUT", "/api/v1/nodes/secretive/expiry", `{"expiry":"never"}`},
	{"POST", "/api/v1/users", `{"name":"mallory"}`},
	{"GET", "/api/v1/users", ""},
	{"DELETE", "/api/v1/users/alice", ""},
	{"GET", "/api/v1/policy", ""},
	{"PUT", "/api/v1/policy", `{"acls": []}`},
	{"POST", "/api/v1/policy/check", `{"acls": []}`},
	{"GET", "/api/v1/registrations", ""},
	{"POST", "/api/v1/registrations/ABCD2345/approve", `{"user":"alice"}`},
	{"GET", "/api/v1/audit", ""},
	{"GET", "/api/v1/unknown", ""},
}

// TestAttackAdminWithoutToken: every admin route refuses a missing,
// malformed, wrong or expired (replaced) token with a short 401 that
// leaks nothing, and changes nothing.
func TestAttackAdminWithoutToken(t *testing.T) {
	c := startCoord(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	setupACL(t, c, `{"tagOwners": {"tag:secret": []}, "acls": [{"action": "accept", "src": ["alice"], "dst": ["*:*"]}]}`, "alice")
	newNode(t, c.URL).register(t, c.authKey(t, coordinator.AuthKeyOptions{User: "alice"}), "secretive")
	pendingCode := make(chan string, 1)
	go newNode(t, c.URL).Register(ctx, coordclient.RegisterParams{Hostname: "waiting", OnAuthURL: func(_, code string) { pendingCode <- code }})
	code := <-pendingCode
	before, _ := c.Server.Audit(ctx, 1000)

	// (TestAttackReplacedTokenRefused covers a token that was replaced.)
	for _, auth := range []string{"", "Bearer", "Bearer ", "Bearer wrong", "Bearer " + testToken + "x", "bearer " + testToken,
		"Basic " + testToken, testToken, "Bearer  " + testToken, "Bearer " + testToken[:len(testToken)-1], "Bearer " + strings.Repeat("A", 10000)} {
		for _, rt := range adminRoutes {
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
				t.Fatalf("%s %s with %.20q: status %d, want 401", rt.method, rt.path, auth, resp.StatusCode)
			}
			for _, leak := range []string{"secretive", "alice", "beamkey", "tag:secret", code, "waiting", "100.64."} {
				if bytes.Contains(b, []byte(leak)) {
					t.Fatalf("%s %s: 401 body leaks %q: %s", rt.method, rt.path, leak, b)
				}
			}
			if len(b) > 120 {
				t.Fatalf("%s %s: 401 body is %d bytes", rt.method, rt.path, len(b))
			}
		}
	}
	after, _ := c.Server.Audit(ctx, 1000)
	if len(after) != len(before) {
		t.Fatalf("refused requests left %d audit entries", len(after)-len(before))
	}
	if p := c.Server.PendingRegistrations(); len(p) != 1 {
		t.Fatalf("pending registrations = %+v", p)
	}
	if got := string(c.Server.Policy()); !strings.Contains(got, "tag:secret") {
		t.Fatalf("policy changed: %s", got)
	}
}

// TestAttackReplacedTokenRefused: after the admin token is replaced, the
// old one is refused by every route.
func TestAttackReplacedTokenRefused(t *testing.T) {
	tok := "first-admin-token-0123456789abcdef"
	c := startCoord(t, func(o *coordinator.Options) { o.AdminToken = tok })
	if _, err := coordclient.NewAdmin(c.URL, tok, nil).ListNodes(context.Background()); err != nil {
		t.Fatal(err)
	}
	tok = "second-admin-token-0123456789abcdef"
	c.restart()
	old := coordclient.NewAdmin(c.URL, "first-admin-token-0123456789abcdef", nil)
	if _, err := old.ListUsers(context.Background()); !isErr(err, coordclient.ErrUnauthorized) {
		t.Fatalf("old token = %v, want ErrUnauthorized", err)
	}
	if _, err := coordclient.NewAdmin(c.URL, tok, nil).ListUsers(context.Background()); err != nil {
		t.Fatalf("new token = %v", err)
	}
}

// TestAttackForgedAndReplayedRegistration: a registration sealed by one
// key cannot be passed off as another's, and an approval code does not
// work for another node key.
func TestAttackForgedAndReplayedRegistration(t *testing.T) {
	c := startCoord(t, nil)
	mk := c.priv.Public()
	victim, attacker := key.NewNode(), key.NewNode()
	ak := c.authKey(t, coordinator.AuthKeyOptions{})

	// The victim's sealed request, lifted into an envelope naming the
	// attacker's key: the box does not open with it.
	clear, _ := json.Marshal(wire.RegisterRequest{Version: wire.CapabilityVersion, NodeKey: victim.Public(), AuthKey: ak, Hostname: "victim", Epoch: c.epoch(t), Timestamp: time.Now()})
	sealed := victim.SealTo(mk, clear)
	lifted, _ := json.Marshal(map[string]any{"node_key": attacker.Public(), "sealed": base64.StdEncoding.EncodeToString(sealed)})
	if st, eb, _ := rawPost(t, c.URL, "/machine/register", lifted); st != http.StatusUnauthorized || eb.Code != wire.CodeBadSeal {
		t.Fatalf("victim's box under the attacker's key: %d %q, want 401 bad_seal", st, eb.Code)
	}
	// The attacker seals a request naming the victim's key with its own key.
	forged := sealEnvelope(t, victim.Public(), attacker, mk, wire.RegisterRequest{Version: wire.CapabilityVersion, NodeKey: victim.Public(), AuthKey: ak, Epoch: c.epoch(t), Timestamp: time.Now()})
	if st, eb, _ := rawPost(t, c.URL, "/machine/register", forged); st != http.StatusUnauthorized || eb.Code != wire.CodeBadSeal {
		t.Fatalf("forged seal: %d %q, want 401 bad_seal", st, eb.Code)
	}
	// The genuine request works once; its replay is refused.
	good, _ := json.Marshal(map[string]any{"node_key": victim.Public(), "sealed": base64.StdEncoding.EncodeToString(sealed)})
	if st, eb, _ := rawPost(t, c.URL, "/machine/register", good); st != http.StatusOK {
		t.Fatalf("genuine register: %d %+v", st, eb)
	}
	if st, eb, _ := rawPost(t, c.URL, "/machine/register", good); st != http.StatusUnauthorized || eb.Code != wire.CodeReplay {
		t.Fatalf("replay: %d %q, want 401 replay", st, eb.Code)
	}
	// The auth key was one-off: the attacker cannot reuse it either.
	if _, err := newNode(t, c.URL).Register(context.Background(), coordclient.RegisterParams{AuthKey: ak}); !isErr(err, coordclient.ErrAuthKeyInvalid) {
		t.Fatalf("reuse of the spent key = %v", err)
	}

	// A pending node's approval code, followed up by another key.
	codes := make(chan string, 1)
	waiter := newNode(t, c.URL)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go waiter.Register(ctx, coordclient.RegisterParams{Hostname: "waiter", OnAuthURL: func(_, code string) { codes <- code }})
	code := <-codes
	steal := sealEnvelope(t, attacker.Public(), attacker, mk, wire.RegisterRequest{Version: wire.CapabilityVersion, NodeKey: attacker.Public(), Followup: code, Epoch: c.epoch(t), Timestamp: time.Now()})
	if st, eb, _ := rawPost(t, c.URL, "/machine/register", steal); st != http.StatusForbidden || eb.Code != wire.CodeForbidden {
		t.Fatalf("followup with another node's code: %d %q, want 403 forbidden", st, eb.Code)
	}
	if err := c.Server.ApproveRegistration(context.Background(), code, coordinator.Approval{}); err != nil {
		t.Fatal(err)
	}
	steal = sealEnvelope(t, attacker.Public(), attacker, mk, wire.RegisterRequest{Version: wire.CapabilityVersion, NodeKey: attacker.Public(), Followup: code, Epoch: c.epoch(t), Timestamp: time.Now()})
	if st, _, _ := rawPost(t, c.URL, "/machine/register", steal); st == http.StatusOK {
		t.Fatal("attacker registered with an approved code meant for another node")
	}
	nodes, _ := c.Server.Nodes(context.Background())
	for _, n := range nodes {
		if n.Key == attacker.Public() {
			t.Fatal("attacker's key is registered")
		}
	}
}

// TestAttackReplayOfRequestBeforeRegistration: a node key's request
// sent before the key registered is refused (the key is unknown) without
// being recorded, as anyone can send such requests with keys of their
// own. Once the key registers, a captured copy must stay refused: here a
// logout, whose replay would remove the node. A node whose clock is
// minutes behind registers and logs out normally, since its requests are
// compared with its own registration's stamp.
func TestAttackReplayOfRequestBeforeRegistration(t *testing.T) {
	c := startCoord(t, nil)
	mk := c.priv.Public()
	post := func(msg wire.RegisterRequest, nk key.NodePrivate) []byte {
		return sealEnvelope(t, nk.Public(), nk, mk, msg)
	}
	for _, tc := range []struct {
		name string
		skew time.Duration // the node's clock minus the coordinator's
	}{
		{"clock right", 0},
		{"clock three minutes behind", -3 * time.Minute},
		{"clock three minutes ahead", 3 * time.Minute},
	} {
		t.Run(tc.name, func(t *testing.T) {
			victim := key.NewNode()
			stamp := func() time.Time { return time.Now().Add(tc.skew) }
			early := post(wire.RegisterRequest{Version: wire.CapabilityVersion, NodeKey: victim.Public(), Logout: true, Epoch: c.epoch(t), Timestamp: stamp()}, victim)
			if st, eb, _ := rawPost(t, c.URL, wire.PathRegister, early); st != http.StatusForbidden || eb.Code != wire.CodeNodeNotRegistered {
				t.Fatalf("logout before registering: %d %q, want 403 %s", st, eb.Code, wire.CodeNodeNotRegistered)
			}
			reg := post(wire.RegisterRequest{Version: wire.CapabilityVersion, NodeKey: victim.Public(), AuthKey: c.authKey(t, coordinator.AuthKeyOptions{}),
				Hostname: "victim", Epoch: c.epoch(t), Timestamp: stamp()}, victim)
			if st, eb, _ := rawPost(t, c.URL, wire.PathRegister, reg); st != http.StatusOK {
				t.Fatalf("register: %d %+v", st, eb)
			}
			if st, eb, _ := rawPost(t, c.URL, wire.PathRegister, early); st != http.StatusUnauthorized || eb.Code != wire.CodeReplay {
				t.Fatalf("replayed logout from before registering: %d %q, want 401 %s", st, eb.Code, wire.CodeReplay)
			}
			if !hasNode(t, c, victim.Public()) {
				t.Fatal("the replayed logout removed the node")
			}
			// The node's own logout, stamped after its registration, works.
			late := post(wire.RegisterRequest{Version: wire.CapabilityVersion, NodeKey: victim.Public(), Logout: true, Epoch: c.epoch(t), Timestamp: stamp()}, victim)
			if st, eb, _ := rawPost(t, c.URL, wire.PathRegister, late); st != http.StatusOK {
				t.Fatalf("logout after registering: %d %+v", st, eb)
			}
			if hasNode(t, c, victim.Public()) {
				t.Fatal("the node's logout did not remove it")
			}
		})
	}
}

// TestReplayBeforeRegistrationElsewhere: the request a key sent before
// it registered stays refused on a coordinator that did not see the
// registration: the same coordinator after a restart (SQLite), and
// another coordinator on the same PostgreSQL database. The requests are
// of a node older than wire.BootEpochVersion, which carry no boot epoch
// and rely on the stamp of the registration; a newer node's are refused
// there for their epoch (TestBootEpochRestartReplay,
// TestBootEpochReplicas).
func TestReplayBeforeRegistrationElsewhere(t *testing.T) {
	pg := pgtest.New(t)
	priv := key.NewMachine()
	for _, tc := range []struct {
		name string
		// start returns where the node registers and where the
		// attacker replays, started the second after the first is used.
		start func(t *testing.T) (register *coord, replay func() *coord)
	}{
		{"restart", func(t *testing.T) (*coord, func() *coord) {
			c := startCoord(t, nil)
			return c, func() *coord { c.restart(); return c }
		}},
		{"another coordinator", func(t *testing.T) (*coord, func() *coord) {
			dsn := pg.NewDatabase(t)
			return startCoordOn(t, dsn, priv), func() *coord { return startCoordOn(t, dsn, priv) }
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, other := tc.start(t)
			mk := c.priv.Public()
			victim := key.NewNode()
			const legacy = wire.BootEpochVersion - 1
			early := sealEnvelope(t, victim.Public(), victim, mk, wire.RegisterRequest{Version: legacy, NodeKey: victim.Public(), Logout: true, Timestamp: time.Now()})
			if st, eb, _ := rawPost(t, c.URL, wire.PathRegister, early); st != http.StatusForbidden || eb.Code != wire.CodeNodeNotRegistered {
				t.Fatalf("logout before registering: %d %q, want 403 %s", st, eb.Code, wire.CodeNodeNotRegistered)
			}
			reg := sealEnvelope(t, victim.Public(), victim, mk, wire.RegisterRequest{Version: legacy, NodeKey: victim.Public(),
				AuthKey: c.authKey(t, coordinator.AuthKeyOptions{}), Hostname: "victim", Timestamp: time.Now()})
			if st, eb, _ := rawPost(t, c.URL, wire.PathRegister, reg); st != http.StatusOK {
				t.Fatalf("register: %d %+v", st, eb)
			}
			o := other()
			if st, eb, _ := rawPost(t, o.URL, wire.PathRegister, early); st != http.StatusUnauthorized || eb.Code != wire.CodeReplay {
				t.Fatalf("logout from before registering, replayed there: %d %q, want 401 %s", st, eb.Code, wire.CodeReplay)
			}
			if !hasNode(t, o, victim.Public()) {
				t.Fatal("the replayed logout removed the node")
			}
		})
	}
}

func hasNode(t *testing.T, c *coord, k key.NodePublic) bool {
	t.Helper()
	nodes, err := c.Server.Nodes(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		if n.Key == k {
			return true
		}
	}
	return false
}

// syncBuffer is a bytes.Buffer safe for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestAttackSecretsNeverLogged runs registrations, approvals and admin
// actions with debug logging and checks that no auth key, admin token or
// private key appears in the logs.
func TestAttackSecretsNeverLogged(t *testing.T) {
	var logs syncBuffer
	logger := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	c := startCoord(t, func(o *coordinator.Options) { o.Logger = logger; o.EphemeralTimeout = 50 * time.Millisecond })
	ctx := context.Background()
	admin := coordclient.NewAdmin(c.URL, testToken, nil)
	if _, err := admin.CreateUser(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	var secrets []string
	client := func() (*coordclient.Client, key.NodePrivate) {
		priv := key.NewNode()
		text, _ := priv.MarshalText()
		secrets = append(secrets, string(text), strings.TrimPrefix(string(text), "privkey:"))
		cl, err := coordclient.New(coordclient.Options{ServerURL: c.URL, PrivateKey: priv, Logger: logger})
		if err != nil {
			t.Fatal(err)
		}
		return cl, priv
	}
	mtext, _ := c.priv.MarshalText()
	secrets = append(secrets, string(mtext), testToken)

	for _, r := range []coordclient.AuthKeyRequest{{User: "alice"}, {Reusable: true}, {Ephemeral: true}} {
		k, _, err := admin.CreateAuthKey(ctx, r)
		if err != nil {
			t.Fatal(err)
		}
		secrets = append(secrets, k, k[strings.LastIndex(k, "-")+1:])
		cl, _ := client()
		if _, err := cl.Register(ctx, coordclient.RegisterParams{AuthKey: k, Hostname: "n"}); err != nil {
			t.Fatal(err)
		}
		// A second use of a one-off key is refused (and logged as such).
		if !r.Reusable {
			cl2, _ := client()
			cl2.Register(ctx, coordclient.RegisterParams{AuthKey: k, Hostname: "again"})
		}
		ctx2, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		cl.Run(ctx2, func(*wire.NetMap) {})
		cancel()
	}
	// Wrong keys and tokens are not echoed either.
	wrongKey := "beamkey-0123456789ab-" + strings.Repeat("f", 48)
	secrets = append(secrets, wrongKey, "wrong-admin-token-secret")
	cl, _ := client()
	cl.Register(ctx, coordclient.RegisterParams{AuthKey: wrongKey})
	coordclient.NewAdmin(c.URL, "wrong-admin-token-secret", nil).ListNodes(ctx)
	// Interactive approval, policy and node admin.
	codes := make(chan string, 1)
	icl, _ := client()
	done := make(chan error, 1)
	go func() {
		_, err := icl.Register(ctx, coordclient.RegisterParams{Hostname: "inter", OnAuthURL: func(_, code string) { codes <- code }})
		done <- err
	}()
	if err := admin.Approve(ctx, <-codes, "alice", nil); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := admin.SetPolicy(ctx, []byte(`{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}`)); err != nil {
		t.Fatal(err)
	}
	admin.SetPolicy(ctx, []byte(`{"acls": [{"action": "accept", "src": ["nobody"], "dst": ["*:*"]}]}`))
	if err := admin.ExpireNode(ctx, "n"); err != nil {
		t.Fatal(err)
	}
	entries, err := c.Server.Audit(ctx, 1000)
	if err != nil || len(entries) < 8 {
		t.Fatalf("audit = %d entries, %v", len(entries), err)
	}
	c.stop()

	out := logs.String()
	if !strings.Contains(out, "level=DEBUG") || !strings.Contains(out, "node registered") {
		t.Fatalf("debug logs missing; got:\n%s", out)
	}
	for _, s := range secrets {
		if strings.Contains(out, s) {
			t.Errorf("logs contain a secret %.16q...", s)
		}
	}
	for _, e := range entries {
		for _, s := range secrets {
			if strings.Contains(e.Target+e.Detail, s) {
				t.Errorf("audit entry %+v holds a secret", e)
			}
		}
	}
}
