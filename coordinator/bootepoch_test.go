package coordinator_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"io"
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

// epoch returns the boot epoch c gives out with its key.
func (c *coord) epoch(t testing.TB) []byte {
	t.Helper()
	resp, err := http.Get(c.URL + wire.PathKey)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	e, err := hex.DecodeString(resp.Header.Get(wire.HeaderBootEpoch))
	if err != nil || len(e) != wire.BootEpochLen {
		t.Fatalf("%s = %q (%v), want %d bytes in hex", wire.HeaderBootEpoch, resp.Header.Get(wire.HeaderBootEpoch), err, wire.BootEpochLen)
	}
	return e
}

// recorder is a transport that records, as someone on the path would,
// the sealed requests a node sends and the error codes it gets.
type recorder struct {
	mu    sync.Mutex // guards the following fields
	sent  map[string][][]byte
	codes []wire.ErrorCode // of every answer to a sealed request; "" for 200
}

func (r *recorder) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Method != http.MethodPost || req.Body == nil {
		return http.DefaultTransport.RoundTrip(req)
	}
	b, err := io.ReadAll(req.Body)
	req.Body.Close()
	if err != nil {
		return nil, err
	}
	req = req.Clone(req.Context())
	req.Body = io.NopCloser(bytes.NewReader(b))
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	var code wire.ErrorCode
	if resp.StatusCode != http.StatusOK {
		eb, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		resp.Body = io.NopCloser(bytes.NewReader(eb))
		var body wire.ErrorBody
		json.Unmarshal(eb, &body)
		code = body.Code
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.sent == nil {
		r.sent = make(map[string][][]byte)
	}
	r.sent[req.URL.Path] = append(r.sent[req.URL.Path], b)
	r.codes = append(r.codes, code)
	return resp, nil
}

// last returns the last request sent to path.
func (r *recorder) last(t testing.TB, path string) []byte {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.sent[path]
	if len(s) == 0 {
		t.Fatalf("no request to %s recorded", path)
	}
	return s[len(s)-1]
}

// count returns how many answers had code.
func (r *recorder) count(code wire.ErrorCode) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, c := range r.codes {
		if c == code {
			n++
		}
	}
	return n
}

// newRecordedNode is newNode with its requests going through rec.
func newRecordedNode(t testing.TB, url string, rec *recorder) *node {
	t.Helper()
	priv := key.NewNode()
	cl, err := coordclient.New(coordclient.Options{ServerURL: url, PrivateKey: priv, DiscoKey: key.NewDisco().Public(), HTTPClient: &http.Client{Transport: rec}})
	if err != nil {
		t.Fatal(err)
	}
	return &node{priv: priv, Client: cl}
}

// nodeName returns the name of the node k on c; "" if it has none.
func nodeName(t *testing.T, c *coord, k key.NodePublic) string {
	t.Helper()
	nodes, err := c.Server.Nodes(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		if n.Key == k {
			return n.Name
		}
	}
	return ""
}

func servesRoute(c *coord, host string) bool {
	for _, r := range c.Server.Routes(context.Background()) {
		if r.Host == host {
			return true
		}
	}
	return false
}

// TestBootEpochRestartReplay: on SQLite, where the replay cache lives
// in memory only, sealed requests recorded on the path before a restart
// (a node's logout, its rename since undone, an expose of a route since
// removed) are refused
// after it for their boot epoch and change nothing; the nodes that
// lived through the restart carry on without an error reaching them
// (their client fetches the new epoch and sends again); an older node's
// request, without an epoch, is still taken.
func TestBootEpochRestartReplay(t *testing.T) {
	c := startCoord(t, edgeOpts("", ""))
	ak := c.authKey(t, coordinator.AuthKeyOptions{Reusable: true})
	ctx := t.Context()
	rec := &recorder{}

	// alpha publishes a route, then removes it.
	alpha := newRecordedNode(t, c.URL, rec)
	alpha.register(t, ak, "alpha")
	const host = "app." + edgeDomain
	if _, err := alpha.Expose(ctx, wire.ExposeRequest{Name: "app", Proto: "http", Port: 3000}); err != nil {
		t.Fatal(err)
	}
	expose := rec.last(t, wire.PathExpose)
	if _, err := alpha.Expose(ctx, wire.ExposeRequest{Name: "app", Proto: "http", Remove: true}); err != nil {
		t.Fatal(err)
	}
	// beta logs out, then joins again.
	beta := newRecordedNode(t, c.URL, rec)
	beta.register(t, ak, "beta")
	if _, err := beta.Register(ctx, coordclient.RegisterParams{Logout: true}); err != nil {
		t.Fatal(err)
	}
	logout := rec.last(t, wire.PathRegister)
	beta.register(t, ak, "beta")
	// beta renames itself, and back.
	beta.register(t, "", "beta-old")
	rename := rec.last(t, wire.PathRegister)
	beta.register(t, "", "beta")

	replays := []struct {
		name string
		path string
		body []byte
	}{
		{"beta's logout", wire.PathRegister, logout},
		{"beta's rename", wire.PathRegister, rename},
		{"alpha's expose", wire.PathExpose, expose},
	}
	for _, r := range replays {
		if st, eb, _ := rawPost(t, c.URL, r.path, r.body); st != http.StatusUnauthorized || eb.Code != wire.CodeReplay {
			t.Fatalf("%s replayed before the restart: %d %q, want 401 %s", r.name, st, eb.Code, wire.CodeReplay)
		}
	}
	wa := watch(t, alpha)
	wa.waitFor("alpha sees beta", 10*time.Second, func(nm *wire.NetMap) bool { return peerNamed(nm, "beta") != nil })

	c.restart()
	for _, r := range replays {
		if st, eb, _ := rawPost(t, c.URL, r.path, r.body); st != http.StatusUnauthorized || eb.Code != wire.CodeStaleEpoch {
			t.Errorf("%s replayed after the restart: %d %q, want 401 %s", r.name, st, eb.Code, wire.CodeStaleEpoch)
		}
	}
	switch got := nodeName(t, c, beta.priv.Public()); got {
	case "beta":
	case "":
		t.Error("beta's replayed logout removed it")
	default:
		t.Errorf("beta is named %q after the replays, want beta", got)
	}
	if servesRoute(c, host) {
		t.Errorf("alpha's replayed expose published %s again", host)
	}

	// The nodes carry on: alpha's map stream comes back (and sees beta
	// rename itself), and its and beta's requests are taken.
	stale := rec.count(wire.CodeStaleEpoch)
	beta.register(t, "", "beta-two")
	wa.waitFor("alpha's stream, back after the restart, sees beta renamed", 30*time.Second, func(nm *wire.NetMap) bool { return peerNamed(nm, "beta-two") != nil })
	if _, err := alpha.Expose(ctx, wire.ExposeRequest{Name: "app", Proto: "http", Port: 3000}); err != nil {
		t.Fatalf("expose after the restart: %v", err)
	}
	if !servesRoute(c, host) {
		t.Errorf("%s not published after alpha's expose", host)
	}
	if got := rec.count(wire.CodeStaleEpoch) - stale; got < 2 {
		t.Errorf("%d requests of the nodes refused for their epoch after the restart, want at least 2 (beta's rejoin, alpha's stream or expose): the path where the client fetches the epoch again did not run", got)
	}

	// An older node's request carries no epoch and is taken as before.
	legacy := sealEnvelope(t, alpha.priv.Public(), alpha.priv, c.priv.Public(), wire.MapRequest{
		Version: wire.BootEpochVersion - 1, NodeKey: alpha.priv.Public(), Hostname: "alpha", Timestamp: time.Now(),
	})
	if st, eb, _ := rawPost(t, c.URL, wire.PathMap, legacy); st != http.StatusOK {
		t.Errorf("map request of version %d without an epoch: %d %+v, want 200", wire.BootEpochVersion-1, st, eb)
	}
	// A request of this version without an epoch, or with a wrong one, is not.
	for _, epoch := range [][]byte{nil, make([]byte, wire.BootEpochLen), []byte("short")} {
		req := sealEnvelope(t, alpha.priv.Public(), alpha.priv, c.priv.Public(), wire.MapRequest{
			Version: wire.CapabilityVersion, NodeKey: alpha.priv.Public(), Epoch: epoch, Timestamp: time.Now(),
		})
		if st, eb, _ := rawPost(t, c.URL, wire.PathMap, req); st != http.StatusUnauthorized || eb.Code != wire.CodeStaleEpoch {
			t.Errorf("map request with epoch %x: %d %q, want 401 %s", epoch, st, eb.Code, wire.CodeStaleEpoch)
		}
	}
}

// TestBootEpochReplicas: two coordinators on one PostgreSQL database
// have an epoch each. A node moves between them as one and then the
// other restarts: each move to one that restarted since the node last
// used it is refused once for the epoch and sent again, unseen by the
// node's caller, and those refusals do not count against the rate
// limit of its address (a burst of 2 would lock it out).
func TestBootEpochReplicas(t *testing.T) {
	pg := pgtest.New(t)
	dsn := pg.NewDatabase(t)
	priv := key.NewMachine()
	opts := func(o *coordinator.Options) {
		edgeOpts("", "")(o)
		o.MachineRequestRate, o.MachineRequestBurst = 0.001, 2
	}
	ca := startCoordWith(t, dsn, priv, opts)
	cb := startCoordWith(t, dsn, priv, opts)
	if bytes.Equal(ca.epoch(t), cb.epoch(t)) {
		t.Fatal("two coordinators have the same boot epoch")
	}
	ak := ca.authKey(t, coordinator.AuthKeyOptions{Reusable: true})
	rec := &recorder{}
	n := newRecordedNode(t, ca.URL+","+cb.URL, rec)
	n.register(t, ak, "alpha")

	// Stop the coordinator the node talks to; its next request goes to
	// the other, and the stopped one starts again with a new epoch.
	cur, other := ca, cb
	const rounds = 4
	for i := range rounds {
		cur.stop()
		name := "r" + strings.Repeat("x", i)
		if _, err := n.Expose(t.Context(), wire.ExposeRequest{Name: name, Proto: "http", Port: 3000}); err != nil {
			t.Fatalf("round %d: expose once %s stopped: %v", i, cur.URL, err)
		}
		if !servesRoute(other, name+"."+edgeDomain) {
			t.Errorf("round %d: %s has no route %s", i, other.URL, name)
		}
		cur.start()
		cur, other = other, cur
	}
	if got, want := rec.count(wire.CodeStaleEpoch), rounds-1; got < want {
		t.Errorf("%d requests refused for their epoch, want at least %d (each move but the first)", got, want)
	}
	if got := rec.count(wire.CodeRateLimited); got != 0 {
		t.Errorf("%d requests rate limited, want 0", got)
	}

	// The map stream, opened on a coordinator restarted since the node
	// last used it, comes up too.
	cur.restart()
	stale := rec.count(wire.CodeStaleEpoch)
	w := watch(t, n)
	w.waitFor("alpha's map stream", 30*time.Second, func(nm *wire.NetMap) bool { return nm.Self != nil })
	if rec.count(wire.CodeStaleEpoch) == stale {
		t.Errorf("the map stream was not refused for its epoch first, want it refused once and opened again")
	}
}
