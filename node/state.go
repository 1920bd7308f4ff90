package node

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// persisted is what the daemon keeps in its state directory between runs.
// The file is written 0600 in a 0700 directory: it holds the node's
// private key.
type persisted struct {
	PrivateKey  key.NodePrivate `json:"private_key"`
	Coordinator string          `json:"coordinator,omitempty"`
	Hostname    string          `json:"hostname,omitempty"`
	// ServerKey is the coordinator's machine key the node registered
	// with (shared by the replicas of one network), pinned: a
	// coordinator with another key is refused until `beam logout`.
	ServerKey key.MachinePublic `json:"server_key,omitzero"`
	// ServerBinds means the coordinator bound its replies to the node's
	// requests (protocol 17 and later): the node then takes "removed",
	// "expired" and "not registered" from it only sealed.
	ServerBinds bool `json:"server_binds,omitempty"`
	// Registered means the coordinator accepted PrivateKey's public half.
	Registered bool `json:"registered,omitempty"`
	// WantRunning means the user last ran `beam up` (not `beam down`), so
	// a restarted daemon rejoins on its own.
	WantRunning bool `json:"want_running,omitempty"`
	ShieldsUp   bool `json:"shields_up,omitempty"`
	// Unknown means the coordinator answered that it does not know
	// PrivateKey's public half although it had accepted it (it was reset,
	// or the node removed): rejoining needs an auth key.
	Unknown bool `json:"unknown,omitempty"`
	// The daemon settings that `beam set` changes (see apitype.Prefs).
	SOCKS5       string   `json:"socks5,omitempty"`
	HTTPProxy    string   `json:"http_proxy,omitempty"`
	DNSListen    string   `json:"dns_listen,omitempty"`
	DNSUpstreams []string `json:"dns_upstreams,omitempty"`
	Port         uint16   `json:"port,omitempty"`
	Operator     string   `json:"operator,omitempty"`
	// RelayServer and RelayServerPort: run a UDP peer relay server.
	RelayServer     bool   `json:"relay_server,omitempty"`
	RelayServerPort uint16 `json:"relay_server_port,omitempty"`
	// RelayServerMaxSessions, RelayServerMaxSessionsPerPeer and
	// RelayServerSessionRate (bytes per second) bound it; 0: defaults.
	RelayServerMaxSessions        int   `json:"relay_server_max_sessions,omitempty"`
	RelayServerMaxSessionsPerPeer int   `json:"relay_server_max_sessions_per_peer,omitempty"`
	RelayServerSessionRate        int64 `json:"relay_server_session_rate,omitempty"`
	// NetMap is the last netmap, so a daemon restarted while the
	// coordinator is down still reaches its peers.
	NetMap *wire.NetMap `json:"netmap,omitempty"`
}

const stateFile = "state.json"

// loadState reads the state in dir; a missing file is an empty state.
func loadState(dir string) (*persisted, error) {
	b, err := os.ReadFile(filepath.Join(dir, stateFile))
	if errors.Is(err, fs.ErrNotExist) {
		return &persisted{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read state: %w", err)
	}
	var st persisted
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("parse state %s: %w", stateFile, err)
	}
	return &st, nil
}

// save writes st atomically to dir.
func (st *persisted) save(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create state dir: %w", err)
	}
	b, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("encode state: %w", err)
	}
	tmp, err := os.CreateTemp(dir, ".state-*")
	if err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("write state: %w", err)
	}
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("write state: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("write state: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, stateFile)); err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	return nil
}
