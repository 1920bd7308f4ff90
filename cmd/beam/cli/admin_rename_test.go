package cli

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"beam.dev/beam/coordclient"
	"beam.dev/beam/types/key"
)

func TestAdminNodesRename(t *testing.T) {
	data := filepath.Join(t.TempDir(), "coord")
	url, stop := startTestCoordinator(t, data, "--dev=false")
	defer stop()
	tok, err := os.ReadFile(filepath.Join(data, "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"BEAM_ADMIN_TOKEN": strings.TrimSpace(string(tok)), "BEAM_COORDINATOR": url}
	out, err := runAdmin(t, env, "authkey", "create", "--reusable")
	if err != nil {
		t.Fatal(err)
	}
	authKey := strings.TrimSpace(out)
	for _, host := range []string{"laptop", "desktop"} {
		cl, err := coordclient.New(coordclient.Options{ServerURL: url, PrivateKey: key.NewNode()})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cl.Register(context.Background(), coordclient.RegisterParams{AuthKey: authKey, Hostname: host}); err != nil {
			t.Fatal(err)
		}
	}

	out, err = runAdmin(t, env, "nodes", "rename", "laptop", "work")
	if err != nil {
		t.Fatalf("nodes rename: %v", err)
	}
	if want := "laptop is now work (work.default.beam.internal.)\n"; out != want {
		t.Errorf("nodes rename printed %q, want %q", out, want)
	}
	if out, err := runAdmin(t, env, "nodes", "list"); err != nil || !strings.Contains(out, "work.default.beam.internal.") || strings.Contains(out, "laptop.default") {
		t.Errorf("nodes list after rename = %q, %v", out, err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"nodes", "rename", "laptop", "x"}, `no node "laptop"`},
		{[]string{"nodes", "rename", "desktop", "work"}, "taken"},
		{[]string{"nodes", "rename", "desktop", "not_a_label"}, "DNS label"},
		{[]string{"nodes", "rename", "desktop"}, "accepts 2 arg"},
	} {
		if _, err := runAdmin(t, env, tc.args...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: error %v, want one containing %q", tc.args, err, tc.want)
		}
	}
}
