package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestAdminFindsLocalCoordinator: on the coordinator's host, every admin
// command finds the coordinator and its token from the discovery file,
// with the user's copy or with --data; a token found there is not sent to
// another coordinator; the user's copy goes away when the coordinator
// stops.
func TestAdminFindsLocalCoordinator(t *testing.T) {
	run := t.TempDir()
	env := map[string]string{"XDG_RUNTIME_DIR": run}
	data := filepath.Join(t.TempDir(), "coord")
	url, stop := startTestCoordinatorEnv(t, env, data)
	userCopy := filepath.Join(run, "beam", "coordinator.json")

	d, err := readDiscovery(filepath.Join(data, "coordinator.json"))
	if err != nil {
		t.Fatal(err)
	}
	if d.URL != url {
		t.Errorf("discovered URL = %q, want %q", d.URL, url)
	}
	if fi, err := os.Stat(userCopy); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("user copy: %v, %v; want a 0600 file", fi, err)
	}

	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
	}{
		{"user copy", env, []string{"authkey", "create"}},
		{"--data", nil, []string{"--data", data, "authkey", "create"}},
		{"user copy, URL given", map[string]string{"XDG_RUNTIME_DIR": run, "BEAM_COORDINATOR": url}, []string{"dns", "config", "get"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := runAdmin(t, tc.env, tc.args...)
			if err != nil {
				t.Fatalf("admin %v: %v", tc.args, err)
			}
			if strings.TrimSpace(out) == "" {
				t.Errorf("admin %v printed nothing", tc.args)
			}
		})
	}

	// Another coordinator's URL never gets this one's token.
	_, err = runAdmin(t, map[string]string{"XDG_RUNTIME_DIR": run, "BEAM_COORDINATOR": "http://127.0.0.1:1"}, "nodes", "list")
	if err == nil || !strings.Contains(err.Error(), "no admin token") {
		t.Errorf("other coordinator: got %v, want no admin token", err)
	}
	// Nothing found: the error says what to do.
	_, err = runAdmin(t, map[string]string{"XDG_RUNTIME_DIR": t.TempDir()}, "nodes", "list")
	if err == nil || !strings.Contains(err.Error(), "--coordinator") {
		t.Errorf("no coordinator: got %v, want a hint naming --coordinator", err)
	}
	_, err = runAdmin(t, nil, "--data", t.TempDir(), "nodes", "list")
	if err == nil || !strings.Contains(err.Error(), "no coordinator runs with --data") {
		t.Errorf("--data without a coordinator: got %v", err)
	}

	stop()
	if _, err := os.Stat(userCopy); !os.IsNotExist(err) {
		t.Errorf("user copy after stop: %v, want it removed", err)
	}
	if _, err := os.Stat(filepath.Join(data, "coordinator.json")); !os.IsNotExist(err) {
		t.Errorf("data dir copy after stop: %v, want it removed", err)
	}
}
