package cli

import (
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"beam.dev/beam/localclient"
)

// instanceFlags select one daemon instance: its socket and state directory.
type instanceFlags struct {
	socket string
	state  string
}

func (in *instanceFlags) register(cmd *cobra.Command) {
	cmd.PersistentFlags().StringVar(&in.socket, "socket", "", "path of the daemon's local API socket (env BEAM_SOCKET)")
	cmd.PersistentFlags().StringVar(&in.state, "state", "", "daemon state directory (env BEAM_STATE)")
}

// systemSocket is where the system daemon (configs/systemd) listens.
const systemSocket = "/run/beam/beamd.sock"

// socketPath returns the chosen socket: flag or env; else, when a state
// directory was chosen (flag or env), STATE/beamd.sock, so one state
// directory always goes with one socket; else the system daemon's socket
// for root, or for a user when the system daemon runs (it lets its
// operator in); else one in the user's runtime or state directory.
func (in *instanceFlags) socketPath(f *Factory) string {
	if in.socket != "" {
		return in.socket
	}
	if s := f.getenv("BEAM_SOCKET"); s != "" {
		return s
	}
	if in.state != "" || f.getenv("BEAM_STATE") != "" {
		return filepath.Join(in.stateDir(f), "beamd.sock")
	}
	if os.Geteuid() == 0 {
		return systemSocket
	}
	if fi, err := os.Stat(systemSocket); err == nil && fi.Mode().Type() == os.ModeSocket {
		return systemSocket
	}
	if d := f.getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "beam", "beamd.sock")
	}
	return filepath.Join(in.stateDir(f), "beamd.sock")
}

// stateDir returns the chosen state directory: flag, env, or the default.
func (in *instanceFlags) stateDir(f *Factory) string {
	if in.state != "" {
		return in.state
	}
	if s := f.getenv("BEAM_STATE"); s != "" {
		return s
	}
	if os.Geteuid() == 0 {
		return "/var/lib/beam"
	}
	if d := f.getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "beam")
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return ".beam"
	}
	return filepath.Join(home, ".local", "state", "beam")
}

func (in *instanceFlags) client(f *Factory) *localclient.Client {
	return &localclient.Client{Socket: in.socketPath(f)}
}
