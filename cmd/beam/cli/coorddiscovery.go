package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"beam.dev/beam/coordclient"
	"beam.dev/beam/types/key"
)

// The coordinator's discovery file lets beam admin find a coordinator on
// its own host without flags: `beam coordinator` and `beam server` write
// DATA/coordinator.json once they listen, and a copy at
// USERDIR/beam/coordinator.json (see userDiscoveryPath). Both name the URL that
// reaches the coordinator from this host, the admin token file, the
// coordinator's machine public key and its process ID. Both are removed at
// a clean shutdown if they still name this coordinator. A file left by a
// crash names a port that anyone on the host may listen on next: beam admin
// sends the token to the URL only once the server there proves that it
// holds the machine key (checkDiscovered).
const discoveryName = "coordinator.json"

// coordDiscovery is the content of a discovery file.
type coordDiscovery struct {
	// URL reaches the coordinator from its own host.
	URL string `json:"url"`
	// TokenFile is the absolute path of the admin token file.
	TokenFile string `json:"admin_token_file"`
	// DataDir is the absolute path of the coordinator's data directory.
	DataDir string `json:"data_dir"`
	// MachineKey is the coordinator's machine public key; zero in a file
	// written before it was recorded (then DataDir/coordinator.key says).
	MachineKey key.MachinePublic `json:"machine_key"`
	// PID is the coordinator's process ID; 0 in a file written before it
	// was recorded.
	PID int `json:"pid,omitempty"`
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
// at addr with its data in dataDir and machine public key mk. It returns
// a func that removes both files if they still name this coordinator
// (its data directory and process). A user copy that cannot be written
// is not an error (the data directory's copy still serves --data); the
// returned error is about the data directory's copy.
func writeDiscovery(f *Factory, dataDir string, addr *net.TCPAddr, mk key.MachinePublic) (cleanup func(), err error) {
	abs, err := filepath.Abs(dataDir)
	if err != nil {
		return func() {}, fmt.Errorf("write %s: %w", discoveryName, err)
	}
	pid := os.Getpid()
	d := coordDiscovery{URL: loopbackURL(addr), TokenFile: filepath.Join(abs, "admin.token"), DataDir: abs, MachineKey: mk, PID: pid}
	b, _ := json.MarshalIndent(d, "", "  ")
	b = append(b, '\n')
	dp := filepath.Join(abs, discoveryName)
	if err := writeFileAtomic(dp, b); err != nil {
		return func() {}, fmt.Errorf("write %s: %w", discoveryName, err)
	}
	ours := func(path string) {
		if cur, err := readDiscovery(path); err == nil && cur.DataDir == abs && cur.PID == pid {
			os.Remove(path)
		}
	}
	up := userDiscoveryPath(f)
	if up == "" {
		return func() { ours(dp) }, nil
	}
	if err := os.MkdirAll(filepath.Dir(up), 0o700); err != nil {
		return func() { ours(dp) }, nil
	}
	if err := writeFileAtomic(up, b); err != nil {
		return func() { ours(dp) }, nil
	}
	return func() { ours(up); ours(dp) }, nil
}

// checkDiscovered returns nil if the server at d.URL proves that it
// holds the machine key of the coordinator that wrote the discovery file
// at dpath (d.MachineKey, else the public half of
// d.DataDir/coordinator.key). beam admin calls it before it sends an
// admin token there: after the coordinator stops, anyone on the host may
// listen on its port.
func checkDiscovered(ctx context.Context, d *coordDiscovery, dpath string) error {
	mk := d.MachineKey
	if mk.IsZero() {
		kp := filepath.Join(d.DataDir, "coordinator.key")
		b, err := os.ReadFile(kp)
		if err != nil {
			return fmt.Errorf("%s names no machine key, and reading %s: %w (run beam admin as the coordinator's user, or set BEAM_COORDINATOR and BEAM_ADMIN_TOKEN)", dpath, kp, err)
		}
		var priv key.MachinePrivate
		if err := priv.UnmarshalText([]byte(strings.TrimSpace(string(b)))); err != nil {
			return fmt.Errorf("read machine key %s: %w", kp, err)
		}
		mk = priv.Public()
	}
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	err := coordclient.CheckMachineKey(ctx, nil, d.URL, mk)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, coordclient.ErrUnreachable):
		return adminErr(err)
	}
	who := "The coordinator"
	if d.PID != 0 {
		who = fmt.Sprintf("The coordinator (pid %d)", d.PID)
	}
	return fmt.Errorf("the server at %s is not the coordinator of %s: it did not prove it holds machine key %s, so beam admin did not send it the admin token. %s that wrote %s may have stopped and another program now listens on its port: start the coordinator again, or name one with --coordinator and BEAM_ADMIN_TOKEN", d.URL, d.DataDir, mk.ShortString(), who, dpath)
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
		return nil, path, fmt.Errorf("no coordinator runs with --data %s (no %s, which it writes while it runs)", dataDir, path)
	case err != nil:
		return nil, path, err
	}
	return d, path, nil
}
