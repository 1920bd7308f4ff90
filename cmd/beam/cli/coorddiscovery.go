package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
)

// The coordinator's discovery file lets beam admin find a coordinator on
// its own host without flags: `beam coordinator` and `beam server` write
// DATA/coordinator.json once they listen, and a copy at
// USERDIR/beam/coordinator.json (see userDiscoveryPath). Both name the URL that
// reaches the coordinator from this host and the admin token file. The copy
// is removed at a clean shutdown if it still names this coordinator.
const discoveryName = "coordinator.json"

// coordDiscovery is the content of a discovery file.
type coordDiscovery struct {
	// URL reaches the coordinator from its own host.
	URL string `json:"url"`
	// TokenFile is the absolute path of the admin token file.
	TokenFile string `json:"admin_token_file"`
	// DataDir is the absolute path of the coordinator's data directory.
	DataDir string `json:"data_dir"`
}

// userDiscoveryPath returns USERDIR/beam/coordinator.json, or "" if the
// environment names no such directory. USERDIR is $XDG_RUNTIME_DIR, else
// $XDG_CONFIG_HOME, else $HOME/.config (%AppData% on Windows).
func userDiscoveryPath(f *Factory) string {
	for _, d := range []string{f.getenv("XDG_RUNTIME_DIR"), f.getenv("XDG_CONFIG_HOME"), f.getenv("APPDATA")} {
		if d != "" {
			return filepath.Join(d, "beam", discoveryName)
		}
	}
	if h := f.getenv("HOME"); h != "" {
		return filepath.Join(h, ".config", "beam", discoveryName)
	}
	return ""
}

// loopbackURL returns the URL that reaches a listener at addr from its own
// host: loopback in place of an unspecified address.
func loopbackURL(addr *net.TCPAddr) string {
	host := addr.IP.String()
	switch {
	case addr.IP == nil || addr.IP.IsUnspecified() && addr.IP.To4() != nil:
		host = "127.0.0.1"
	case addr.IP.IsUnspecified():
		host = "::1"
	}
	return "http://" + net.JoinHostPort(host, strconv.Itoa(addr.Port))
}

// writeDiscovery writes the discovery files for a coordinator listening
// at addr with its data in dataDir. It returns a func that removes the
// user's copy if it still names this coordinator. A user copy that cannot
// be written is not an error (the data directory's copy still serves
// --data); the returned error is about the data directory's copy.
func writeDiscovery(f *Factory, dataDir string, addr *net.TCPAddr) (cleanup func(), err error) {
	abs, err := filepath.Abs(dataDir)
	if err != nil {
		return func() {}, fmt.Errorf("write %s: %w", discoveryName, err)
	}
	d := coordDiscovery{URL: loopbackURL(addr), TokenFile: filepath.Join(abs, "admin.token"), DataDir: abs}
	b, _ := json.MarshalIndent(d, "", "  ")
	b = append(b, '\n')
	if err := writeFileAtomic(filepath.Join(abs, discoveryName), b); err != nil {
		return func() {}, fmt.Errorf("write %s: %w", discoveryName, err)
	}
	up := userDiscoveryPath(f)
	if up == "" {
		return func() {}, nil
	}
	if err := os.MkdirAll(filepath.Dir(up), 0o700); err != nil {
		return func() {}, nil
	}
	if err := writeFileAtomic(up, b); err != nil {
		return func() {}, nil
	}
	return func() {
		if cur, err := readDiscovery(up); err == nil && cur.DataDir == abs {
			os.Remove(up)
		}
	}, nil
}

// writeFileAtomic replaces path with data, 0600.
func writeFileAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

func readDiscovery(path string) (*coordDiscovery, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var d coordDiscovery
	if err := json.Unmarshal(b, &d); err != nil {
		return nil, fmt.Errorf("parse %s: %w", path, err)
	}
	return &d, nil
}

// discover finds the local coordinator: DATA/coordinator.json when a data
// directory is given, else the user's discovery file. It returns nil, nil
// when there is none, and names the file it read.
func discover(f *Factory, dataDir string) (*coordDiscovery, string, error) {
	path := userDiscoveryPath(f)
	if dataDir != "" {
		path = filepath.Join(dataDir, discoveryName)
	}
	if path == "" {
		return nil, "", nil
	}
	d, err := readDiscovery(path)
	switch {
	case errors.Is(err, fs.ErrNotExist) && dataDir == "":
		return nil, "", nil
	case errors.Is(err, fs.ErrNotExist):
		return nil, path, fmt.Errorf("no coordinator has run with --data %s (no %s)", dataDir, path)
	case err != nil:
		return nil, path, err
	}
	return d, path, nil
}
