package node_test

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"beam.dev/beam/beamtest/harness"
	"beam.dev/beam/coordclient"
	"beam.dev/beam/coordinator"
	"beam.dev/beam/localapi/apitype"
	"beam.dev/beam/node"
)

// switchProxy forwards to one coordinator or another at one URL: a
// coordinator given a new key, or someone on the path posing as it.
type switchProxy struct {
	to atomic.Pointer[httputil.ReverseProxy]
}

func (p *switchProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) { p.to.Load().ServeHTTP(w, r) }

func (p *switchProxy) point(t *testing.T, c *harness.Cluster) {
	u, err := url.Parse(c.URL)
	if err != nil {
		t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.FlushInterval = -1
	p.to.Store(rp)
}

// serverKeyOf returns the machine key c serves at GET /key.
func serverKeyOf(t *testing.T, c *harness.Cluster) string {
	t.Helper()
	resp, err := http.Get(c.URL + "/key")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// pinnedKey returns the coordinator key pinned in the state in dir.
func pinnedKey(t *testing.T, dir string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "state.json"))
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		ServerKey string `json:"server_key"`
	}
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	return st.ServerKey
}

// TestServerKeyPinned: a node keeps the machine key of the coordinator it
// joined across restarts and refuses a coordinator at the same URL with
// another key, until it logs out and joins that one.
func TestServerKeyPinned(t *testing.T) {
	a := harness.NewCluster(t, harness.Options{})
	b := harness.NewCluster(t, harness.Options{})
	keyA, keyB := serverKeyOf(t, a), serverKeyOf(t, b)
	p := &switchProxy{}
	p.point(t, a)
	hs := httptest.NewServer(p)
	t.Cleanup(func() { hs.CloseClientConnections(); hs.Close() })

	dir := t.TempDir()
	start := func() *node.Node {
		n, err := node.New(node.Options{StateDir: dir, Hostname: "pin", UpTimeout: 20 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { n.Close() })
		return n
	}
	n := start()
	if _, err := n.Up(opCtx(t), apitype.UpRequest{Coordinator: hs.URL, AuthKey: a.AuthKey(coordinator.AuthKeyOptions{}), Hostname: "pin"}); err != nil {
		t.Fatalf("Up: %v", err)
	}
	if got := pinnedKey(t, dir); got != keyA {
		t.Fatalf("pinned key after joining = %q, want the coordinator's %q", got, keyA)
	}
	n.Close()

	// The same URL now answers with another key: the restarted daemon
	// refuses it and keeps the key it joined with.
	p.point(t, b)
	hs.CloseClientConnections()
	n = start()
	if err := n.Start(); err != nil {
		t.Fatal(err)
	}
	_, err := n.Up(opCtx(t), apitype.UpRequest{})
	if !errors.Is(err, coordclient.ErrServerKeyChanged) || !strings.Contains(err.Error(), "beam logout") {
		t.Fatalf("Up against a coordinator with another key = %v, want ErrServerKeyChanged saying to run beam logout", err)
	}
	if got := pinnedKey(t, dir); got != keyA {
		t.Fatalf("pinned key after the refusal = %q, want %q still", got, keyA)
	}
	n.Close()

	// Back to the real coordinator, the node runs on its pinned key.
	p.point(t, a)
	hs.CloseClientConnections()
	n = start()
	if _, err := n.Up(opCtx(t), apitype.UpRequest{}); err != nil {
		t.Fatalf("Up back on the coordinator it joined: %v", err)
	}
	if st := n.Status().State; st != apitype.StateRunning {
		t.Fatalf("state = %s, want %s", st, apitype.StateRunning)
	}

	// A real change of coordinator: logout, then join the new one.
	p.point(t, b)
	hs.CloseClientConnections()
	if err := n.Logout(opCtx(t)); err != nil {
		t.Fatalf("Logout with the coordinator's key changed: %v", err)
	}
	if _, err := n.Up(opCtx(t), apitype.UpRequest{Coordinator: hs.URL, AuthKey: b.AuthKey(coordinator.AuthKeyOptions{}), Hostname: "pin"}); err != nil {
		t.Fatalf("Up after Logout on the new coordinator: %v", err)
	}
	if got := pinnedKey(t, dir); got != keyB {
		t.Fatalf("pinned key after joining the new coordinator = %q, want %q", got, keyB)
	}
}
