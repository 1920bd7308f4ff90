package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"beam.dev/beam/configs"
	"beam.dev/beam/coordclient"
	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// startTestCoordinator runs beam coordinator on a loopback port and
// returns its URL and a stop func that waits for it to return.
func startTestCoordinator(t *testing.T, dataDir string, extra ...string) (string, func()) {
	t.Helper()
	return startTestCoordinatorEnv(t, nil, dataDir, extra...)
}

// startTestCoordinatorEnv is startTestCoordinator with an environment.
func startTestCoordinatorEnv(t *testing.T, env map[string]string, dataDir string, extra ...string) (string, func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var errOut bytes.Buffer
	f := &Factory{Out: &bytes.Buffer{}, ErrOut: &errOut, Getenv: func(k string) string { return env[k] }}
	ready := make(chan string, 1)
	cmd := NewCmdCoordinator(f, func(o *CoordinatorOptions) error {
		o.ready = func(addr string) { ready <- addr }
		return runCoordinator(ctx, f, o)
	})
	cmd.SetArgs(append([]string{"--addr", "127.0.0.1:0", "--data", dataDir}, extra...))
	done := make(chan error, 1)
	go func() { done <- cmd.Execute() }()
	select {
	case addr := <-ready:
		return "http://" + addr, func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("coordinator returned %v", err)
			}
		}
	case err := <-done:
		cancel()
		t.Fatalf("coordinator exited: %v (log: %s)", err, errOut.String())
	case <-time.After(10 * time.Second):
		t.Fatal("coordinator did not start")
	}
	return "", nil
}

// runAdmin runs beam admin with args and env, returning stdout and the error.
func runAdmin(t *testing.T, env map[string]string, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	f := &Factory{Out: &out, ErrOut: &bytes.Buffer{}, Getenv: func(k string) string { return env[k] }}
	cmd := NewCmdAdmin(f)
	cmd.SetArgs(args)
	cmd.SetOut(&bytes.Buffer{})
	cmd.SetErr(&bytes.Buffer{})
	cmd.SilenceUsage, cmd.SilenceErrors = true, true
	err := cmd.Execute()
	return out.String(), err
}

func TestCoordinatorAndAdminCommands(t *testing.T) {
	data := filepath.Join(t.TempDir(), "coord")
	url, stop := startTestCoordinator(t, data, "--derp", "http://127.0.0.1:3340", "--dev=false")

	for _, name := range []string{"admin.token", "coordinator.key", "coordinator.db"} {
		if _, err := os.Stat(filepath.Join(data, name)); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	for name, want := range map[string]os.FileMode{".": 0o700, "admin.token": 0o600, "coordinator.key": 0o600, "coordinator.db": 0o600} {
		st, _ := os.Stat(filepath.Join(data, name))
		if st.Mode().Perm() != want {
			t.Errorf("%s mode = %v, want %v", name, st.Mode().Perm(), want)
		}
	}
	tokenBytes := mustReadFile(t, filepath.Join(data, "admin.token"))
	token := strings.TrimSpace(string(tokenBytes))
	if token == "" {
		t.Fatal("admin.token is empty")
	}
	env := map[string]string{"BEAM_ADMIN_TOKEN": token}

	out, err := runAdmin(t, env, "authkey", "create", "--coordinator", url, "--reusable", "--expiry", "1h")
	if err != nil {
		t.Fatal(err)
	}
	authKey := strings.TrimSpace(out)
	if strings.Count(out, "\n") != 1 || !strings.HasPrefix(authKey, "beamkey-") {
		t.Fatalf("authkey create printed %q, want only the key", out)
	}

	// A node registers with the key and sees the relay map.
	cl, err := coordclient.New(coordclient.Options{ServerURL: url, PrivateKey: key.NewNode()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Register(context.Background(), coordclient.RegisterParams{AuthKey: authKey, Hostname: "laptop"}); err != nil {
		t.Fatal(err)
	}

	env["BEAM_COORDINATOR"] = url // from here on, the URL comes from the environment
	out, err = runAdmin(t, env, "nodes", "list", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var nodes []*wire.Node
	if err := json.Unmarshal([]byte(out), &nodes); err != nil || len(nodes) != 1 || nodes[0].Name != "laptop" {
		t.Fatalf("nodes list --json = %s (%v)", out, err)
	}
	if out, err = runAdmin(t, env, "nodes", "list"); err != nil || !strings.Contains(out, "laptop.default.beam.internal.") {
		t.Fatalf("nodes list = %q, %v", out, err)
	}
	out, err = runAdmin(t, env, "authkey", "list")
	if err != nil || !strings.Contains(out, authKey[:len("beamkey-")+12]) || strings.Contains(out, authKey) {
		t.Fatalf("authkey list = %q, %v; want the prefix and never the key", out, err)
	}
	if _, err := runAdmin(t, env, "nodes", "expire", "laptop"); err != nil {
		t.Fatal(err)
	}
	if _, err := runAdmin(t, env, "nodes", "remove", "laptop"); err != nil {
		t.Fatal(err)
	}
	if _, err := runAdmin(t, env, "nodes", "remove", "laptop"); err == nil || !strings.Contains(err.Error(), "no node") {
		t.Fatalf("second remove = %v, want no node", err)
	}
	if out, _ = runAdmin(t, env, "nodes", "list", "--json"); strings.TrimSpace(out) != "[]" {
		t.Fatalf("nodes after remove = %s", out)
	}

	// Errors are one readable line.
	for _, tc := range []struct {
		env  map[string]string
		args []string
		want string
	}{
		{map[string]string{"BEAM_COORDINATOR": url, "BEAM_ADMIN_TOKEN": "wrong"}, []string{"nodes", "list"}, "refused the admin token"},
		{map[string]string{"BEAM_ADMIN_TOKEN": token}, []string{"nodes", "list"}, "no coordinator"},
		{map[string]string{"BEAM_COORDINATOR": url}, []string{"nodes", "list"}, "no admin token"},
		{map[string]string{"BEAM_COORDINATOR": "http://127.0.0.1:1", "BEAM_ADMIN_TOKEN": token}, []string{"nodes", "list"}, "cannot reach the coordinator at http://127.0.0.1:1 (connect: connection refused)"},
	} {
		_, err := runAdmin(t, tc.env, tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") || strings.Contains(err.Error(), "%!") {
			t.Errorf("admin %v with %v = %v, want one line containing %q", tc.args, tc.env, err, tc.want)
		}
	}
	tokFile := filepath.Join(t.TempDir(), "tok")
	os.WriteFile(tokFile, []byte(token+"\n"), 0o600)
	if _, err := runAdmin(t, map[string]string{}, "--coordinator", url, "--token-file", tokFile, "authkey", "list"); err != nil {
		t.Fatalf("--token-file: %v", err)
	}
	stop()

	// A restart keeps the token and machine key.
	keyBefore := mustReadFile(t, filepath.Join(data, "coordinator.key"))
	url, stop = startTestCoordinator(t, data)
	defer stop()
	tokenAfter := mustReadFile(t, filepath.Join(data, "admin.token"))
	keyAfter := mustReadFile(t, filepath.Join(data, "coordinator.key"))
	if !bytes.Equal(tokenBytes, tokenAfter) || !bytes.Equal(keyBefore, keyAfter) {
		t.Fatal("restart rewrote admin.token or coordinator.key")
	}
	env["BEAM_COORDINATOR"] = url
	if _, err := runAdmin(t, env, "authkey", "list"); err != nil {
		t.Fatalf("token after restart: %v", err)
	}
}

func TestCoordinatorDERPFlags(t *testing.T) {
	m, err := coordinatorDERPMap(&configs.Coordinator{DERPURLs: []string{"https://relay1.example.test", "http://127.0.0.1:3340/"}})
	if err != nil {
		t.Fatal(err)
	}
	if got := m.Regions[1].Nodes[0].STUNAddr; got != "relay1.example.test:3478" {
		t.Errorf("region 1 STUN = %q", got)
	}
	if got := m.Regions[2].Nodes[0]; got.STUNAddr != "127.0.0.1:3478" || got.URL != "http://127.0.0.1:3340" {
		t.Errorf("region 2 node = %+v", got)
	}
	m, err = coordinatorDERPMap(&configs.Coordinator{DERPURLs: []string{"http://127.0.0.1:3340"}, STUN: []string{"127.0.0.1:3479"}})
	if err != nil || m.Regions[1].Nodes[0].STUNAddr != "127.0.0.1:3479" {
		t.Errorf("--stun override: %+v, %v", m, err)
	}
	m, err = coordinatorDERPMap(&configs.Coordinator{DERPURLs: []string{"http://203.0.113.10:3340"}, STUN: []string{"203.0.113.10:3478,[2001:db8::10]:3478"}})
	if err != nil {
		t.Fatal(err)
	}
	if nodes := m.Regions[1].Nodes; len(nodes) != 2 || nodes[0].STUNAddr != "203.0.113.10:3478" || nodes[0].STUNAltPort != 3479 ||
		nodes[1].STUNAddr != "[2001:db8::10]:3478" || !nodes[1].STUNOnly || nodes[1].URL != "" || nodes[1].Name != "1b" {
		t.Errorf("--stun with an IPv6 address: nodes %+v, want the relay with the IPv4 STUN address and a STUN-only node with the IPv6 one", nodes)
	}
	for _, bad := range []*configs.Coordinator{
		{DERPURLs: []string{"http://a"}, STUN: []string{"a:1,nohostport"}},
		{DERPURLs: []string{"ftp://x"}},
		{DERPURLs: []string{"http://a", "http://b", "http://c"}, STUN: []string{"a:1", "b:2"}},
		{STUN: []string{"a:1"}},
		{DERPURLs: []string{"http://a"}, STUN: []string{"nohostport"}},
	} {
		if _, err := coordinatorDERPMap(bad); err == nil {
			t.Errorf("coordinatorDERPMap(%+v) = nil error", bad)
		}
	}
	path := filepath.Join(t.TempDir(), "derp.json")
	os.WriteFile(path, []byte(`{"regions":{"7":{"region_id":7,"region_code":"x","nodes":[{"name":"7a","region_id":7,"url":"http://127.0.0.1:1"}]}}}`), 0o600)
	if m, err := coordinatorDERPMap(&configs.Coordinator{DERPMapFile: path}); err != nil || m.Regions[7] == nil {
		t.Errorf("--derp-map: %+v, %v", m, err)
	}
	os.WriteFile(path, []byte(`{"regionz":{}}`), 0o600)
	if _, err := coordinatorDERPMap(&configs.Coordinator{DERPMapFile: path}); err == nil {
		t.Error("--derp-map with unknown field accepted")
	}
}

// mustReadFile returns the contents of a file that must exist and not be
// empty.
func mustReadFile(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) == 0 {
		t.Fatalf("%s is empty", name)
	}
	return b
}
