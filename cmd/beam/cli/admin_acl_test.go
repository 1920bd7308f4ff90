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

	"beam.dev/beam/coordclient"
	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// runAdminErr runs beam admin like runAdmin and also returns stderr.
func runAdminErr(t *testing.T, env map[string]string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errOut bytes.Buffer
	f := &Factory{Out: &out, ErrOut: &errOut, Getenv: func(k string) string { return env[k] }}
	cmd := NewCmdAdmin(f)
	cmd.SetArgs(args)
	cmd.SetOut(&bytes.Buffer{})
	cmd.SetErr(&bytes.Buffer{})
	cmd.SilenceUsage, cmd.SilenceErrors = true, true
	err = cmd.Execute()
	return out.String(), errOut.String(), err
}

func TestAdminAccessControlCommands(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "coord")
	url, stop := startTestCoordinator(t, data, "--dev=false")
	defer stop()
	tokenBytes, _ := os.ReadFile(filepath.Join(data, "admin.token"))
	env := map[string]string{"BEAM_ADMIN_TOKEN": strings.TrimSpace(string(tokenBytes)), "BEAM_COORDINATOR": url}
	must := func(args ...string) string {
		t.Helper()
		out, errOut, err := runAdminErr(t, env, args...)
		if err != nil {
			t.Fatalf("beam admin %s: %v (%s)", strings.Join(args, " "), err, errOut)
		}
		return out
	}

	must("users", "create", "alice")
	if out := must("users", "list"); !strings.Contains(out, "alice") {
		t.Fatalf("users list = %q", out)
	}
	if _, _, err := runAdminErr(t, env, "authkey", "create", "--tag", "tag:db"); err == nil || !strings.Contains(err.Error(), "tagOwners") {
		t.Fatalf("key with an unlisted tag = %v", err)
	}

	// policy check / set: problems come out as FILE:LINE:COLUMN.
	bad := filepath.Join(dir, "bad.hujson")
	os.WriteFile(bad, []byte("{\n  \"acls\": [\n    {\"action\": \"accept\", \"src\": [\"mallory\"], \"dst\": [\"*:*\"]},\n  ],\n}\n"), 0o600)
	failing := filepath.Join(dir, "failing.hujson")
	os.WriteFile(failing, []byte(`{
  "tagOwners": {"tag:db": []},
  "acls": [{"action": "accept", "src": ["alice"], "dst": ["tag:db:*"]}],
  "tests": [{"src": "alice", "deny": ["tag:db:22"]}],
}
`), 0o600)
	good := filepath.Join(dir, "good.hujson")
	goodSrc := `{
  // alice reaches the database on 5432 only.
  "tagOwners": {"tag:db": []},
  "acls": [{"action": "accept", "src": ["alice"], "dst": ["tag:db:5432"]}],
  "tests": [{"src": "alice", "accept": ["tag:db:5432"], "deny": ["tag:db:22"]}],
}
`
	os.WriteFile(good, []byte(goodSrc), 0o600)
	for _, verb := range []string{"check", "set"} {
		_, errOut, err := runAdminErr(t, env, "policy", verb, bad)
		if err == nil || !strings.Contains(errOut, bad+":3:34: unknown user or host \"mallory\"") {
			t.Errorf("policy %s bad: err %v, stderr %q", verb, err, errOut)
		}
		_, errOut, err = runAdminErr(t, env, "policy", verb, failing)
		if err == nil || !strings.Contains(errOut, failing+":4:39: test failed: alice -> tag:db:22: accepted, want denied") {
			t.Errorf("policy %s failing: err %v, stderr %q", verb, err, errOut)
		}
	}
	if out := must("policy", "check", good); !strings.Contains(out, "OK") {
		t.Fatalf("policy check good = %q", out)
	}
	must("policy", "set", good)
	if out := must("policy", "get"); out != goodSrc {
		t.Fatalf("policy get = %q, want %q", out, goodSrc)
	}
	secret := strings.TrimSpace(must("authkey", "create", "--tag", "tag:db", "--key-expiry", "0"))
	if !strings.HasPrefix(secret, "beamkey-") {
		t.Fatalf("authkey create = %q", secret)
	}
	userKey := strings.TrimSpace(must("authkey", "create", "--user", "alice", "--key-expiry", "30d"))

	cl, _ := coordclient.New(coordclient.Options{ServerURL: url, PrivateKey: key.NewNode()})
	r, err := cl.Register(context.Background(), coordclient.RegisterParams{AuthKey: userKey, Hostname: "laptop"})
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Until(r.Node.KeyExpiry); d < 29*24*time.Hour || d > 30*24*time.Hour {
		t.Fatalf("key expiry of a --key-expiry 30d node = %v", r.Node.KeyExpiry)
	}
	if out := must("nodes", "set-expiry", "laptop", "never"); !strings.Contains(out, "never") {
		t.Fatalf("set-expiry never = %q", out)
	}

	// Interactive approval.
	pending := coordclient.RegisterParams{Hostname: "newbie"}
	codes := make(chan string, 1)
	pending.OnAuthURL = func(_, code string) { codes <- code }
	nb, _ := coordclient.New(coordclient.Options{ServerURL: url, PrivateKey: key.NewNode()})
	done := make(chan error, 1)
	go func() {
		_, err := nb.Register(context.Background(), pending)
		done <- err
	}()
	code := <-codes
	if out := must("nodes", "pending"); !strings.Contains(out, code) || !strings.Contains(out, "newbie") {
		t.Fatalf("nodes pending = %q", out)
	}
	if _, _, err := runAdminErr(t, env, "nodes", "approve", "ZZZZ2222", "--user", "alice"); err == nil || !strings.Contains(err.Error(), "no node is waiting") {
		t.Fatalf("approve of an unknown code = %v", err)
	}
	must("nodes", "approve", code, "--user", "alice")
	if err := <-done; err != nil {
		t.Fatalf("approved Register = %v", err)
	}

	var entries []wire.AuditEntry
	if err := json.Unmarshal([]byte(must("audit", "--json")), &entries); err != nil || len(entries) == 0 {
		t.Fatalf("audit --json: %v", err)
	}
	actions := map[string]bool{}
	for _, e := range entries {
		actions[e.Action] = true
	}
	for _, a := range []string{"user.create", "policy.set", "authkey.create", "node.register", "node.set_expiry", "node.approve"} {
		if !actions[a] {
			t.Errorf("audit lacks %s: %+v", a, entries)
		}
	}
	if out := must("audit"); !strings.Contains(out, "policy.set") || strings.Contains(out, secret) || strings.Contains(out, userKey) {
		t.Fatalf("audit = %q", out)
	}

	// A node tagged tag:db, then tag:db dropped from tagOwners: the list
	// shows the node carrying a tag no owner grants, until it is listed
	// again.
	dbNode, _ := coordclient.New(coordclient.Options{ServerURL: url, PrivateKey: key.NewNode()})
	if _, err := dbNode.Register(context.Background(), coordclient.RegisterParams{AuthKey: secret, Hostname: "db"}); err != nil {
		t.Fatal(err)
	}
	dbRow := func() string {
		t.Helper()
		for line := range strings.SplitSeq(must("nodes", "list"), "\n") {
			if strings.HasPrefix(line, "db ") {
				return line
			}
		}
		t.Fatal("nodes list has no db row")
		return ""
	}
	if row := strings.TrimSpace(dbRow()); !strings.HasSuffix(row, " tag:db") {
		t.Errorf("db row = %q under a policy listing tag:db, want it to end with its owner tag:db, unmarked", row)
	}
	noDB := filepath.Join(dir, "nodb.hujson")
	os.WriteFile(noDB, []byte(`{"acls": [{"action": "accept", "src": ["alice"], "dst": ["alice:*"]}]}`), 0o600)
	must("policy", "set", noDB)
	if row := dbRow(); !strings.Contains(row, "tag:db(no owner)") {
		t.Errorf("db row = %q after tag:db left tagOwners, want tag:db(no owner)", row)
	}
	if out := must("nodes", "list"); !strings.Contains(out, "no longer lists") {
		t.Errorf("nodes list = %q, want the note explaining (no owner)", out)
	}
	must("policy", "set", good)
	if row := dbRow(); strings.Contains(row, "no owner") {
		t.Errorf("db row = %q once tag:db is listed again, want no mark", row)
	}
}
