package cli

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"

	"beam.dev/beam/coordinator"
	"beam.dev/beam/coordinator/sqlstore"
	"beam.dev/beam/types/key"
)

// relayTokenFailStore is a store that fails every write of the relay
// token's hash while fail is set, alone or with other settings, as a
// database that goes away between two writes would.
type relayTokenFailStore struct {
	*sqlstore.Store
	fail atomic.Bool
}

const relayTokenSettingForTest = "relay_token_sha256"

var errRelayWrite = errors.New("injected: relay token write failed")

func (s *relayTokenFailStore) SetSetting(ctx context.Context, name string, v []byte) error {
	if name == relayTokenSettingForTest && s.fail.Load() {
		return errRelayWrite
	}
	return s.Store.SetSetting(ctx, name, v)
}

func (s *relayTokenFailStore) SetSettings(ctx context.Context, values map[string][]byte) error {
	if _, ok := values[relayTokenSettingForTest]; ok && s.fail.Load() {
		return errRelayWrite
	}
	return s.Store.SetSettings(ctx, values)
}

// TestReloadTokensAllOrNothing: a reload whose relay token cannot be
// stored changes neither token (it used to store and apply the new admin
// token first); once the store takes writes again, the same reload
// changes both.
func TestReloadTokensAllOrNothing(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	st, err := sqlstore.Open(ctx, filepath.Join(dir, "coordinator.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	fs := &relayTokenFailStore{Store: st}
	const oldAdmin, oldRelay = "old-admin-token-0123456789", "old-relay-token-0123456789"
	const newAdmin, newRelay = "new-admin-token-0123456789", "new-relay-token-0123456789"
	srv, err := coordinator.New(coordinator.Options{Store: fs, PrivateKey: key.NewMachine(), AdminToken: oldAdmin, RelayToken: oldRelay})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	write := func(name, tok string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(tok+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("admin.token", newAdmin)
	write("relay.token", newRelay)
	storedAdmin := func() []byte {
		b, err := st.Setting(ctx, "admin_token_sha256")
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	before := storedAdmin()

	fs.fail.Store(true)
	var level slog.LevelVar
	if _, err := reloadCoordinator(ctx, srv, &level, "", "info", dir); !errors.Is(err, errRelayWrite) {
		t.Fatalf("reload with the relay token's write failing: %v, want the write's error", err)
	}
	if !srv.AdminTokenValid(oldAdmin) || srv.AdminTokenValid(newAdmin) {
		t.Errorf("after the failed reload the new admin token is in force, want the old one")
	}
	if !srv.RelayTokenValid(oldRelay) || srv.RelayTokenValid(newRelay) {
		t.Errorf("after the failed reload the new relay token is in force, want the old one")
	}
	if got := storedAdmin(); string(got) != string(before) {
		t.Errorf("after the failed reload the stored admin token hash changed")
	}

	fs.fail.Store(false)
	applied, err := reloadCoordinator(ctx, srv, &level, "", "info", dir)
	if err != nil {
		t.Fatal(err)
	}
	if !srv.AdminTokenValid(newAdmin) || !srv.RelayTokenValid(newRelay) {
		t.Errorf("after the reload the new tokens are not both in force")
	}
	if got, want := applied, []string{"log_level", "admin_token", "relay_token"}; !slices.Equal(got, want) {
		t.Errorf("applied %v, want %v", got, want)
	}
}
