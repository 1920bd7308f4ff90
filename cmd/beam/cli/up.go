package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"beam.dev/beam/configs"
	"beam.dev/beam/coordclient"
	"beam.dev/beam/localapi/apitype"
	"beam.dev/beam/localclient"
)

// UpOptions are the flags of beam up.
type UpOptions struct {
	// Coordinator is the coordinator URL, or several comma-separated.
	Coordinator string
	AuthKey     string
	Hostname    string
	ShieldsUp   bool
	ForceReauth bool
	JSON        bool
	Timeout     time.Duration
	Daemon      DaemonOptions
	// ConfigFile is --config.
	ConfigFile string

	shieldsUpSet bool
	coordinators []string // the --coordinator flags
}

// NewCmdUp returns the beam up command.
func NewCmdUp(f *Factory, in *instanceFlags, runF func(*UpOptions) error) *cobra.Command {
	o := &UpOptions{}
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Join the mesh (starting the daemon if none runs)",
		Long: `Join the mesh, starting the daemon if none answers on the socket. If the join
fails, a daemon this command started is stopped again.

The daemon settings (--socks5, --http-proxy, --dns-listen, --dns-upstream,
--port, --hostname, --shields-up, --operator, --relay-server) apply at once on a running daemon
and are kept in its state; 'beam set' changes them without joining again.

--config FILE reads the same settings from a HuJSON file: its keys are this
command's flags with _ for - (coordinator, authkey, hostname, shields_up,
timeout, socks5, dns_upstream, ...), plus state and socket as in beam daemon's
file (beam's --state and --socket, and BEAM_STATE and BEAM_SOCKET, win); a
flag given on the command line wins over the file.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			given, err := loadUpConfig(cmd.Flags(), f, in, o)
			if err != nil {
				return err
			}
			o.shieldsUpSet = given("shields-up")
			o.Daemon.Socket, o.Daemon.StateDir = in.socketPath(f), in.stateDir(f)
			if err := checkRelayFlags(given, &o.Daemon); err != nil {
				return err
			}
			o.Daemon.Prefs = prefsFromFlags(given, &o.Daemon)
			if o.AuthKey == "" {
				o.AuthKey = f.getenv("BEAM_AUTHKEY")
			}
			o.Coordinator = strings.Join(o.coordinators, ",")
			if o.Coordinator == "" {
				o.Coordinator = f.getenv("BEAM_COORDINATOR")
			}
			if o.Coordinator != "" {
				if _, err := coordclient.SplitServerURLs(o.Coordinator); err != nil {
					return fmt.Errorf("--coordinator: %w", err)
				}
			}
			if err := checkTelemetry(&o.Daemon.Telemetry); err != nil {
				return err
			}
			if runF != nil {
				return runF(o)
			}
			return runUp(cmd.Context(), f, in, o)
		},
	}
	cmd.Flags().StringVar(&o.ConfigFile, "config", "", configUsage)
	cmd.Flags().StringSliceVar(&o.coordinators, "coordinator", nil, "coordinator URL; several coordinators sharing one database: comma-separated or repeated, the node streams from one and moves to the next when it dies (env BEAM_COORDINATOR; default: the stored ones)")
	cmd.Flags().StringVar(&o.AuthKey, "authkey", "", "auth key to register with (env BEAM_AUTHKEY)")
	cmd.Flags().StringVar(&o.Hostname, "hostname", "", "name to register (default: the host's name)")
	cmd.Flags().BoolVar(&o.ShieldsUp, "shields-up", false, "refuse all inbound connections from peers")
	cmd.Flags().BoolVar(&o.ForceReauth, "force-reauth", false, "authenticate again even if a node key is stored: with --authkey, or by signing in (or approval) at the URL printed")
	cmd.Flags().BoolVar(&o.JSON, "json", false, "print the result as JSON")
	cmd.Flags().DurationVar(&o.Timeout, "timeout", 10*time.Minute, "how long to wait for the mesh (and for approval of a node without an auth key)")
	daemonFlags(cmd, &o.Daemon)
	cmd.Flags().StringVar(&o.Daemon.TUN, "tun", "", "if beam up starts the daemon, start it in kernel TUN mode on this device (--tun alone: "+defaultTUNName+"; --tun=NAME; root or CAP_NET_ADMIN)")
	cmd.Flags().Lookup("tun").NoOptDefVal = defaultTUNName
	return cmd
}

// upFile is beam up's config file (--config): the join's own keys and
// the daemon settings beam up passes on, each named as its flag. Its
// fields point at what the flags are bound to in UpOptions, so
// loadConfig fills them and the command line still wins.
type upFile struct {
	StateDir     *string           `json:"state"`
	Socket       *string           `json:"socket"`
	Coordinator  *[]string         `json:"coordinator"`
	AuthKey      *string           `json:"authkey"`
	Hostname     *string           `json:"hostname"`
	ShieldsUp    *bool             `json:"shields_up"`
	Timeout      *configs.Duration `json:"timeout"`
	Port         *uint16           `json:"port"`
	SOCKS5       *string           `json:"socks5"`
	HTTPProxy    *string           `json:"http_proxy"`
	DNSListen    *string           `json:"dns_listen"`
	DNSUpstreams *[]string         `json:"dns_upstream"`
	LogLevel     *string           `json:"log_level"`
	ACMECA       *string           `json:"acme_ca"`
	ACMECARoot   *string           `json:"acme_ca_root"`
	ACMEEmail    *string           `json:"acme_email"`
	Operator     *string           `json:"operator"`
	RelayServer  *string           `json:"relay_server"`
	RelayMax     *int              `json:"relay_server_max_sessions"`
	RelayPerPeer *int              `json:"relay_server_max_sessions_per_peer"`
	RelayRate    *string           `json:"relay_server_session_rate"`
	TUN          *string           `json:"tun"`
	MetricsAddr  *string           `json:"metrics_addr"`
	DebugAddr    *string           `json:"debug_addr"`
}

// loadUpConfig reads o.ConfigFile (if any) into o under the command
// line's flags, applies its state and socket unless beam's flags or the
// environment name them, and checks the result. given reports whether a
// flag's setting came from the command line or the file.
func loadUpConfig(fl *pflag.FlagSet, f *Factory, in *instanceFlags, o *UpOptions) (given func(flag string) bool, err error) {
	if o.ConfigFile == "" {
		return fl.Changed, nil
	}
	d := &o.Daemon.Daemon
	var state, socket string
	given, err = loadConfig(fl, f.ErrOut, o.ConfigFile, &upFile{
		StateDir: &state, Socket: &socket,
		Coordinator: &o.coordinators, AuthKey: &o.AuthKey, Hostname: &o.Hostname, ShieldsUp: &o.ShieldsUp,
		Timeout: (*configs.Duration)(&o.Timeout), Port: &d.Port, SOCKS5: &d.SOCKS5, HTTPProxy: &d.HTTPProxy,
		DNSListen: &d.DNSListen, DNSUpstreams: &d.DNSUpstreams, LogLevel: &d.LogLevel,
		ACMECA: &d.ACMECA, ACMECARoot: &d.ACMECARoot, ACMEEmail: &d.ACMEEmail, Operator: &d.Operator,
		RelayServer: &d.RelayServer, RelayMax: &d.RelayServerMaxSessions, RelayPerPeer: &d.RelayServerMaxSessionsPerPeer,
		RelayRate: &d.RelayServerSessionRate, TUN: &d.TUN, MetricsAddr: &d.Telemetry.MetricsAddr, DebugAddr: &d.Telemetry.DebugAddr,
	})
	if err != nil {
		return nil, err
	}
	n := configs.Node{Coordinator: strings.Join(o.coordinators, ","), SOCKS5: d.SOCKS5, HTTPProxy: d.HTTPProxy, DNSListen: d.DNSListen,
		DNSUpstreams: d.DNSUpstreams, ACMECA: d.ACMECA, LogLevel: d.LogLevel}
	if err := errors.Join(n.Validate(), d.ValidateRelayLimits()); err != nil {
		return nil, fmt.Errorf("config %s: %w", o.ConfigFile, err)
	}
	if in.state == "" && f.getenv("BEAM_STATE") == "" {
		in.state = state
	}
	if in.socket == "" && f.getenv("BEAM_SOCKET") == "" {
		in.socket = socket
	}
	return given, nil
}

func runUp(ctx context.Context, f *Factory, in *instanceFlags, o *UpOptions) error {
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	lc := in.client(f)
	var started *startedDaemon
	if st, err := lc.Status(ctx); err != nil {
		// Start a daemon only where none runs: a daemon that refuses this
		// user (socket permissions, not its operator) is not replaced.
		nr, ok := errors.AsType[*localclient.NotRunningError](err)
		if !ok || errors.Is(nr.Err, fs.ErrPermission) {
			return err
		}
		d, err := startDaemon(ctx, lc, o)
		if err != nil {
			return err
		}
		started = d
	} else {
		if o.Daemon.Telemetry != (TelemetryOptions{}) {
			fmt.Fprintf(f.ErrOut, "warning: --metrics-addr and --debug-addr apply when a daemon starts; the daemon on %s is already running (beam daemon stop, then beam up again)\n", lc.Socket)
		}
		if o.Daemon.TUN != "" && st.TUN != o.Daemon.TUN {
			mode := "in userspace mode"
			if st.TUN != "" {
				mode = "on TUN device " + st.TUN
			}
			fmt.Fprintf(f.ErrOut, "warning: --tun applies when a daemon starts; the daemon on %s is already running %s (beam daemon stop, then beam up --tun again)\n", lc.Socket, mode)
		}
	}
	req := apitype.UpRequest{
		Coordinator: o.Coordinator,
		AuthKey:     o.AuthKey,
		Hostname:    o.Hostname,
		ForceReauth: o.ForceReauth,
	}
	if !o.Daemon.Prefs.IsZero() {
		req.Prefs = &o.Daemon.Prefs
	}
	if o.shieldsUpSet {
		req.ShieldsUp = &o.ShieldsUp
	}
	// While the daemon registers, show an approval code if the
	// coordinator asks for one.
	waitCtx, stopWait := context.WithCancel(ctx)
	waitDone := make(chan struct{})
	go func() {
		defer close(waitDone)
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-waitCtx.Done():
				return
			case <-tick.C:
			}
			st, err := lc.Status(waitCtx)
			if err == nil && st.AuthCode != "" {
				fmt.Fprintf(f.ErrOut, "To add this node, open this URL and sign in (or approve it there as an admin):\n\n\t%s\n\nor ask an admin to run:\n\n\tbeam admin nodes approve %s\n\nWaiting...\n", st.AuthURL, st.AuthCode)
				openBrowser(st.AuthURL)
				return
			}
		}
	}()
	resp, err := lc.Up(ctx, req)
	stopWait()
	<-waitDone
	if err != nil {
		if started != nil {
			// Leave nothing behind that this command started for a join
			// that did not happen.
			if serr := started.stop(lc); serr != nil {
				return &noteError{err: err, note: fmt.Sprintf("and the daemon beam up started for this did not stop: %v; log: %s", serr, started.logPath)}
			}
			return &noteError{err: err, note: "beam up stopped the daemon it had started for this; log: " + started.logPath}
		}
		return err
	}
	if o.JSON {
		enc := json.NewEncoder(f.Out)
		enc.SetIndent("", "  ")
		return enc.Encode(resp)
	}
	if resp.NameChanged {
		fmt.Fprintf(f.ErrOut, "note: the name %q was taken; this node is %q\n", o.Hostname, resp.Name)
	}
	ips := make([]string, len(resp.IPs))
	for i, ip := range resp.IPs {
		ips[i] = ip.String()
	}
	fmt.Fprintf(f.Out, "%s %s\n", resp.Name, strings.Join(ips, " "))
	return nil
}

// noteError adds a note to an error, in its text and in its user message.
type noteError struct {
	err  error
	note string
}

func (e *noteError) Error() string       { return e.err.Error() + " (" + e.note + ")" }
func (e *noteError) Unwrap() error       { return e.err }
func (e *noteError) UserMessage() string { return ErrorMessage(e.err) + " (" + e.note + ")" }

// startedDaemon is a daemon beam up started.
type startedDaemon struct {
	cmd     *exec.Cmd
	exited  chan struct{} // closed when it exited
	logPath string
}

// stop asks the daemon to exit and waits for it; after a grace period it
// is killed.
func (d *startedDaemon) stop(lc *localclient.Client) error {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := lc.Shutdown(ctx); err != nil {
		d.cmd.Process.Signal(os.Interrupt)
	}
	select {
	case <-d.exited:
		return nil
	case <-ctx.Done():
	}
	d.cmd.Process.Kill()
	select {
	case <-d.exited:
		return nil
	case <-time.After(5 * time.Second):
		return fmt.Errorf("pid %d does not exit", d.cmd.Process.Pid)
	}
}

// startDaemon runs `beam daemon` detached, logging to STATE/beam.log, and
// waits until it answers on the socket. The settings among o's flags go
// to the daemon with the up request, not on its command line.
func startDaemon(ctx context.Context, lc *localclient.Client, o *UpOptions) (*startedDaemon, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find beam binary: %w", err)
	}
	if err := os.MkdirAll(o.Daemon.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("create state dir: %w", err)
	}
	logPath := filepath.Join(o.Daemon.StateDir, "beam.log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open daemon log: %w", err)
	}
	defer logf.Close()
	args := []string{"--socket", o.Daemon.Socket, "--state", o.Daemon.StateDir, "daemon", "--log-level", o.Daemon.LogLevel}
	for _, fv := range [][2]string{{"--hostname", o.Hostname},
		{"--acme-ca", o.Daemon.ACMECA}, {"--acme-ca-root", o.Daemon.ACMECARoot}, {"--acme-email", o.Daemon.ACMEEmail},
		{"--metrics-addr", o.Daemon.Telemetry.MetricsAddr}, {"--debug-addr", o.Daemon.Telemetry.DebugAddr}} {
		if fv[1] != "" {
			args = append(args, fv[0], fv[1])
		}
	}
	if o.Daemon.TUN != "" {
		args = append(args, "--tun="+o.Daemon.TUN)
	}
	cmd := exec.Command(exe, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = detachAttr()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start daemon: %w", err)
	}
	d := &startedDaemon{cmd: cmd, exited: make(chan struct{}), logPath: logPath}
	var waitErr error
	go func() {
		waitErr = cmd.Wait()
		close(d.exited)
	}()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-d.exited:
			return nil, fmt.Errorf("daemon exited at start (%v): %s", waitErr, lastLogLine(logPath))
		case <-ctx.Done():
			d.stop(lc)
			return nil, errors.New("daemon did not start in time; see " + logPath)
		case <-tick.C:
			if lc.Alive(ctx) {
				return d, nil
			}
		}
	}
}

// lastLogLine returns the last line of the daemon log at path (where a
// daemon that failed at start wrote why), or a pointer to the file.
func lastLogLine(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "see " + path
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return lines[len(lines)-1] + " (log: " + path + ")"
}

// NewCmdDown returns the beam down command.
func NewCmdDown(f *Factory, in *instanceFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "down",
		Short: "Leave the mesh but keep this node's identity (the daemon keeps running; beam daemon stop stops it)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return in.client(f).Down(cmd.Context())
		},
	}
}

// NewCmdLogout returns the beam logout command.
func NewCmdLogout(f *Factory, in *instanceFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "logout",
		Short: "Deregister this node from the coordinator and forget its key",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return in.client(f).Logout(cmd.Context())
		},
	}
}
