package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"beam.dev/beam/coordclient"
	"beam.dev/beam/localapi/apitype"
	"beam.dev/beam/node"
)

// barePort makes `beam PORT` (what `npx beam 3000` runs) publish a
// port: `beam expose PORT` on the network this machine is in, else
// after `beam up` to the server BEAM_SERVER (or BEAM_COORDINATOR) names
// or the daemon's state remembers, else on a local dev server run in
// this process, with a loopback URL and how to get a public one.
func barePort(root *cobra.Command, f *Factory, in *instanceFlags) {
	root.Example = `  beam 3000        publish port 3000: beam expose 3000 on this machine's network
                   (with BEAM_SERVER set, beam up to it first; with nothing set up,
                   on a local dev server with a loopback URL)`
	root.Args = cobra.MaximumNArgs(1)
	root.RunE = func(cmd *cobra.Command, args []string) error {
		if len(args) == 0 {
			return cmd.Help()
		}
		p, err := strconv.ParseUint(args[0], 10, 16)
		if err != nil || p == 0 {
			return fmt.Errorf("unknown command %q for \"beam\"%s (beam PORT publishes a port 1-65535; beam --help lists the commands)", args[0], didYouMean(cmd, args[0]))
		}
		return runBarePort(cmd.Context(), f, in, uint16(p))
	}
}

func runBarePort(ctx context.Context, f *Factory, in *instanceFlags, port uint16) error {
	server := f.getenv("BEAM_SERVER")
	if server == "" {
		server = f.getenv("BEAM_COORDINATOR")
	}
	expose := &ExposeOptions{Port: port, Inspect: true}
	st, err := in.client(f).Status(ctx)
	if err == nil && st.State == apitype.StateRunning && (server == "" || coordclient.SameServers(server, st.Coordinator)) {
		return runExpose(ctx, f, in, expose)
	}
	if server == "" && err == nil && st.Coordinator != "" {
		server = st.Coordinator
	}
	if server == "" {
		server = savedCoordinator(in.stateDir(f))
	}
	if server == "" {
		return runBarePortDev(ctx, f, port)
	}
	uo := &UpOptions{Coordinator: server, AuthKey: f.getenv("BEAM_AUTHKEY"), Timeout: 10 * time.Minute}
	uo.Daemon.Socket, uo.Daemon.StateDir, uo.Daemon.LogLevel = in.socketPath(f), in.stateDir(f), "info"
	up := *f
	up.Out = f.ErrOut // stdout carries the URL alone, as beam expose's does
	if err := runUp(ctx, &up, in, uo); err != nil {
		return err
	}
	return runExpose(ctx, f, in, expose)
}

// savedCoordinator returns the coordinator a daemon's state directory
// remembers from an earlier beam up, or "".
func savedCoordinator(stateDir string) string {
	b, err := os.ReadFile(filepath.Join(stateDir, "state.json"))
	if err != nil {
		return ""
	}
	var st struct {
		Coordinator string `json:"coordinator"`
	}
	if json.Unmarshal(b, &st) != nil {
		return ""
	}
	return st.Coordinator
}

// runBarePortDev publishes port on a dev server (beam server --dev) and a
// device, both in this process with their state in a temporary directory
// that goes when it ends: the URL works on this machine only.
func runBarePortDev(ctx context.Context, f *Factory, port uint16) error {
	dir, err := os.MkdirTemp("", "beam-dev-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	srv, err := startLocalDevServer(ctx, f, filepath.Join(dir, "server"), "127.0.0.1:0")
	if err != nil {
		return err
	}
	// The server stops with ctx; its data goes with dir only once it
	// has (its edge node saves its state on the way out).
	defer func() { cancel(); srv.wait() }()
	hostname, _ := os.Hostname()
	n, err := node.New(node.Options{StateDir: filepath.Join(dir, "device"), Hostname: hostname})
	if err != nil {
		return err
	}
	defer n.Close()
	if _, err := n.Up(ctx, apitype.UpRequest{Coordinator: srv.URL}); err != nil {
		return fmt.Errorf("join the local dev server: %w", err)
	}
	ex, err := n.Expose(ctx, apitype.ExposeRequest{Port: port, Proto: "http"})
	if err != nil {
		return fmt.Errorf("expose %d: %w", port, err)
	}
	fmt.Fprintln(f.Out, ex.URL)
	if h := loopbackHint(ex.URL); h != "" {
		fmt.Fprintln(f.ErrOut, h)
	}
	if ex.Warning != "" {
		fmt.Fprintln(f.ErrOut, "warning:", ex.Warning)
	}
	fmt.Fprintf(f.ErrOut, `
This URL works on this machine only: nothing is set up, so beam runs a local
dev server (beam server --dev) until it stops. For a public URL, run a server
on a host with a public address and a domain:
    beam server --domain example.com          (beam server --help; or use someone's)
then here, with an auth key from its admin (beam admin authkey create):
    BEAM_SERVER=http://example.com:8080 BEAM_AUTHKEY=KEY beam %d

forwarding %s -> 127.0.0.1:%d; Ctrl-C to stop
`, port, ex.URL, port)
	select {
	case <-ctx.Done():
		return nil
	case err := <-srv.Done:
		if err == nil {
			err = errors.New("stopped")
		}
		return fmt.Errorf("local dev server: %w", err)
	}
}
