package cli

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"

	"beam.dev/beam/configs"
	"beam.dev/beam/hostdns"
	"beam.dev/beam/internal/telemetry"
	"beam.dev/beam/localapi"
	"beam.dev/beam/localapi/apitype"
	"beam.dev/beam/localclient"
	"beam.dev/beam/node"
)

// DaemonOptions are the settings of beam daemon: its flags and config
// file fill the configs.Daemon.
type DaemonOptions struct {
	configs.Daemon
	// ConfigFile is --config.
	ConfigFile string
	// cmdline holds the config keys the command line set.
	cmdline  []string
	Socket   string
	StateDir string
	// Prefs holds the settings given as flags or in the config file
	// (only those given): they replace the stored ones.
	Prefs apitype.PrefsPatch
}

// daemonFlags registers the daemon's own flags on cmd (beam up passes them on).
func daemonFlags(cmd *cobra.Command, o *DaemonOptions) {
	cmd.Flags().Uint16Var(&o.Port, "port", 0, "UDP port for WireGuard (0 picks one; kept in the state)")
	cmd.Flags().StringVar(&o.SOCKS5, "socks5", "", "serve a SOCKS5 proxy into the mesh on this loopback address (e.g. 127.0.0.1:1080; kept in the state, \"\" stops it)")
	cmd.Flags().StringVar(&o.HTTPProxy, "http-proxy", "", "serve an HTTP proxy into the mesh on this loopback address (kept in the state, \"\" stops it)")
	cmd.Flags().StringVar(&o.DNSListen, "dns-listen", "", "also serve MagicDNS on this loopback address, UDP and TCP (kept in the state, \"\" stops it)")
	cmd.Flags().StringSliceVar(&o.DNSUpstreams, "dns-upstream", nil, "upstream resolvers for other names (default: env BEAM_DNS_UPSTREAM, else /etc/resolv.conf; kept in the state)")
	cmd.Flags().StringVar(&o.RelayServer, "relay-server", "", relayServerUsage+" (kept in the state)")
	cmd.Flags().Lookup("relay-server").NoOptDefVal = "on"
	relayLimitFlags(cmd.Flags(), o, " (kept in the state)")
	cmd.Flags().StringVar(&o.Operator, "operator", "", "local user who may use the daemon's socket besides its own user and root (Linux; kept in the state, \"\" removes it)")
	cmd.Flags().StringVar(&o.LogLevel, "log-level", configs.DefaultDaemon().LogLevel, "debug, info, warn or error")
	cmd.Flags().StringVar(&o.ACMECA, "acme-ca", "", "ACME directory URL: terminate TLS of this device's --tls-passthrough routes with its own certificate, obtained by DNS-01 through the coordinator (default: the app terminates TLS)")
	cmd.Flags().StringVar(&o.ACMECARoot, "acme-ca-root", "", "PEM file of the roots to trust for the ACME server's HTTPS (default: the system roots)")
	cmd.Flags().StringVar(&o.ACMEEmail, "acme-email", "", "contact email of the ACME account")
	registerTelemetry(cmd.Flags(), &o.Telemetry)
}

// NewCmdDaemon returns the beam daemon command: the headless daemon.
func NewCmdDaemon(f *Factory, in *instanceFlags, runF func(*DaemonOptions) error) *cobra.Command {
	o := &DaemonOptions{}
	cmd := &cobra.Command{
		Use:   "daemon [--tun [NAME]]",
		Short: "Run the node daemon in the foreground (beam up starts one if needed)",
		Long: `Run the node daemon in the foreground (beam up starts one if needed).

The settings --socks5, --http-proxy, --dns-listen, --dns-upstream, --port and
--operator are kept in the state directory: a daemon started without them uses
the stored ones, and 'beam set' changes them while the daemon runs.
One daemon holds a state directory at a time; a second one is refused with the
first one's PID and socket. With --state alone, the socket is STATE/beamd.sock.
'beam daemon stop' stops the daemon that answers on the socket ('beam down'
leaves the mesh and keeps the daemon running).

With --tun (root or CAP_NET_ADMIN, Linux), the daemon runs WireGuard on a
kernel TUN device (default name beam0) instead of its userspace stack: every
app on the host reaches peers at their overlay addresses and MagicDNS names,
and peers reach the host's own sockets on its overlay addresses, subject to
the same policy. The device, its routes and the resolver settings go when the
daemon stops or leaves the mesh, and after a crash at its next start.`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return nil
			}
			if len(args) == 1 && cmd.Flags().Changed("tun") && o.TUN == defaultTUNName {
				return nil
			}
			return fmt.Errorf("unexpected argument %q (only --tun takes a NAME)", args[0])
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 1 {
				o.TUN = args[0]
			}
			given, err := loadConfig(cmd.Flags(), f.ErrOut, o.ConfigFile, &o.Daemon)
			if err != nil {
				return err
			}
			if o.ConfigFile != "" {
				if err := o.Validate(); err != nil {
					return err
				}
			}
			if err := checkRelayFlags(given, o); err != nil {
				return err
			}
			o.cmdline = cmdlineKeys(cmd.Flags())
			// The file's state and socket, unless beam's flags or the
			// environment name them.
			if in.state == "" && f.getenv("BEAM_STATE") == "" {
				in.state = o.Daemon.StateDir
			}
			if in.socket == "" && f.getenv("BEAM_SOCKET") == "" {
				in.socket = o.Daemon.Socket
			}
			o.Socket, o.StateDir = in.socketPath(f), in.stateDir(f)
			o.Prefs = prefsFromFlags(given, o)
			if runF != nil {
				return runF(o)
			}
			return runDaemon(cmd.Context(), f, o)
		},
	}
	cmd.AddCommand(newCmdDaemonStop(f, in))
	daemonFlags(cmd, o)
	cmd.Flags().StringVar(&o.ConfigFile, "config", "", configUsage)
	cmd.Flags().StringVar(&o.Hostname, "hostname", "", "default hostname to register (default: the host's name)")
	cmd.Flags().StringVar(&o.TUN, "tun", "", "run on a kernel TUN device of this name (default "+defaultTUNName+" when --tun has no NAME; needs root or CAP_NET_ADMIN)")
	cmd.Flags().Lookup("tun").NoOptDefVal = defaultTUNName
	cmd.Flags().BoolVar(&o.PortMapping, "port-mapping", false, "ask the NAT gateway (the default route's next hop) for a mapping of the WireGuard port by PCP, NAT-PMP or UPnP and advertise it, so peers behind hard NATs can reach this device directly; renewed while the daemon runs, deleted when it stops")
	cmd.Flags().DurationVar((*time.Duration)(&o.PortMappingLifetime), "port-mapping-lifetime", 0, "lifetime asked for the port mapping, renewed halfway through (0: 2h)")
	cmd.Flags().StringVar(&o.WGName, "wg-name", "", "serve the WireGuard device read-only as NAME for `wg show NAME` and wgctrl (/var/run/wireguard/NAME.sock)")
	return cmd
}

// defaultTUNName is the device --tun creates when given no name.
const defaultTUNName = "beam0"

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("bad --log-level %q: want debug, info, warn or error", s)
	}
	return l, nil
}

func runDaemon(ctx context.Context, f *Factory, o *DaemonOptions) error {
	level := new(slog.LevelVar)
	if err := reloadLevel(level, o.LogLevel); err != nil {
		return err
	}
	hup := reloadSignal(o.ConfigFile != "")
	defer stopSignal(hup)
	logger := f.Logger(level)
	if err := checkTelemetry(&o.Telemetry); err != nil {
		return err
	}
	hostUpstreams, err := defaultUpstreams(f, o.StateDir)
	if err != nil {
		return err
	}
	hostname := o.Hostname
	if hostname == "" {
		hostname, _ = os.Hostname()
	}
	var acmeRoots *x509.CertPool
	if o.ACMECARoot != "" {
		pem, err := os.ReadFile(o.ACMECARoot)
		if err != nil {
			return fmt.Errorf("--acme-ca-root: %w", err)
		}
		acmeRoots = x509.NewCertPool()
		if !acmeRoots.AppendCertsFromPEM(pem) {
			return fmt.Errorf("--acme-ca-root %s: no PEM certificates", o.ACMECARoot)
		}
	}
	lockSocket := o.Socket // recorded with the state lock: absolute, so it names the socket from anywhere
	if abs, err := filepath.Abs(o.Socket); err == nil {
		lockSocket = abs
	}
	n, err := node.New(node.Options{
		StateDir:         o.StateDir,
		Socket:           lockSocket,
		Logger:           logger,
		ListenPort:       o.Port,
		DNSUpstreams:     hostUpstreams,
		Hostname:         hostname,
		WireGuardName:    o.WGName,
		ACMEDirectoryURL: o.ACMECA,
		ACMETrustedRoots: acmeRoots,
		ACMEEmail:        o.ACMEEmail,
		TUN:              o.TUN,
		PortMapping:      o.PortMapping,
		PortMapLifetime:  time.Duration(o.PortMappingLifetime),
	})
	if err != nil {
		return err
	}
	defer n.Close()
	metrics := roleRegistry(n.Collector())
	stopTelemetry, err := startTelemetry(ctx, &o.Telemetry, logger, n.GuardListener, metrics)
	if err != nil {
		return err
	}
	defer stopTelemetry()
	ln, err := localapi.ListenUnix(o.Socket)
	if err != nil {
		return err
	}
	defer ln.Close()
	// Settings given as flags replace the stored ones and are kept.
	if !o.Prefs.IsZero() {
		if _, err := n.SetPrefs(ctx, o.Prefs); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, 1)
	api := localapi.New(n, localapi.Options{Logger: logger, Shutdown: cancel, Socket: o.Socket, Metrics: prometheus.Gatherers{telemetry.NewProcessRegistry(), metrics}})
	srv := api.Server()
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := srv.Serve(api.Listener(ln)); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("local API: %w", err)
		}
	}()
	// The socket answers until the node has stopped and released its
	// state, so a client that waits for the socket to go quiet (beam
	// daemon stop) knows the state is free.
	defer func() {
		n.Close()
		srv.Close()
		wg.Wait()
	}()
	if err := n.Start(); err != nil {
		return err
	}
	defer startMemoryRelease(memoryIdleWindow, memoryIdleCPU)()
	pidFile := filepath.Join(o.StateDir, "daemon.pid")
	if err := os.WriteFile(pidFile, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o600); err != nil {
		return fmt.Errorf("write pid file: %w", err)
	}
	defer os.Remove(pidFile)
	logger.Info("daemon started", "socket", o.Socket, "state", o.StateDir, "pid", os.Getpid())
	if hup != nil {
		start := o.Daemon
		defer watchReload(ctx, reloadSpec[configs.Daemon]{
			ConfigFile: o.ConfigFile, Defaults: configs.DefaultDaemon, Start: &start, Cmdline: o.cmdline,
			Validate: validateOnly[configs.Daemon], Logger: logger, HUP: hup,
			Apply: func(cur, next *configs.Daemon) ([]string, error) {
				return reloadDaemon(ctx, n, level, cur, next)
			},
		})()
	}
	select {
	case <-ctx.Done():
		logger.Info("daemon stopping")
		return nil
	case err := <-errc:
		return err
	}
}

// defaultUpstreams is where MagicDNS forwards other names when no
// --dns-upstream is set: BEAM_DNS_UPSTREAM (comma-separated IP or IP:PORT)
// if given, else the host's resolvers.
func defaultUpstreams(f *Factory, stateDir string) ([]netip.AddrPort, error) {
	if env := f.getenv("BEAM_DNS_UPSTREAM"); env != "" {
		ups, err := dnsUpstreams(strings.FieldsFunc(env, func(r rune) bool { return r == ',' || r == ' ' }), stateDir)
		if err != nil {
			return nil, fmt.Errorf("BEAM_DNS_UPSTREAM: %w", err)
		}
		return ups, nil
	}
	return dnsUpstreams(nil, stateDir)
}

// dnsUpstreams parses --dns-upstream values, or reads /etc/resolv.conf as
// it was before a TUN-mode daemon of stateDir managed it.
func dnsUpstreams(flags []string, stateDir string) ([]netip.AddrPort, error) {
	var out []netip.AddrPort
	for _, s := range flags {
		if ap, err := netip.ParseAddrPort(s); err == nil {
			out = append(out, ap)
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("bad --dns-upstream %q: want IP or IP:PORT", s)
		}
		out = append(out, netip.AddrPortFrom(a, 53))
	}
	if len(flags) > 0 {
		return out, nil
	}
	conf, err := hostdns.OriginalResolvConf(stateDir, "")
	if err != nil {
		return nil, nil
	}
	for _, a := range hostdns.Nameservers(conf) {
		if a != node.MagicDNSIPv4 {
			out = append(out, netip.AddrPortFrom(a, 53))
		}
	}
	return out, nil
}

// reloadDaemon applies what a daemon reloads: its log level and the
// settings beam set changes while it runs (the proxies, the DNS listener
// and upstreams, the operator), as beam set does. The WireGuard port
// needs a restart.
func reloadDaemon(ctx context.Context, n *node.Node, level *slog.LevelVar, cur, next *configs.Daemon) ([]string, error) {
	l, err := parseLevel(next.LogLevel)
	if err != nil {
		return nil, err
	}
	changed := configs.ChangedKeys(cur, next)
	p := prefsFromFlags(func(flag string) bool { return slices.Contains(changed, configs.FlagKey(flag)) }, &DaemonOptions{Daemon: *next})
	p.Port = nil
	if !p.IsZero() {
		if _, err := n.SetPrefs(ctx, p); err != nil {
			return nil, err
		}
	}
	level.Set(l)
	return []string{"log_level", "socks5", "http_proxy", "dns_listen", "dns_upstream", "operator",
		"relay_server_max_sessions", "relay_server_max_sessions_per_peer", "relay_server_session_rate"}, nil
}

// prefsFromFlags returns the settings among o's daemon flags that were
// given (on the command line, or in the config file: see loadConfig).
func prefsFromFlags(given func(flag string) bool, o *DaemonOptions) apitype.PrefsPatch {
	var p apitype.PrefsPatch
	if given("socks5") {
		p.SOCKS5 = &o.SOCKS5
	}
	if given("http-proxy") {
		p.HTTPProxy = &o.HTTPProxy
	}
	if given("dns-listen") {
		p.DNSListen = &o.DNSListen
	}
	if given("dns-upstream") {
		p.DNSUpstreams = &o.DNSUpstreams
	}
	if given("port") {
		p.Port = &o.Port
	}
	if given("operator") {
		p.Operator = &o.Operator
	}
	if given("relay-server") {
		// Validate rejected a bad value already.
		if on, port, err := parseRelayServer(o.RelayServer); err == nil {
			p.RelayServer, p.RelayServerPort = &on, port
		}
	}
	if given("relay-server-max-sessions") {
		p.RelayServerMaxSessions = &o.RelayServerMaxSessions
	}
	if given("relay-server-max-sessions-per-peer") {
		p.RelayServerMaxSessionsPerPeer = &o.RelayServerMaxSessionsPerPeer
	}
	if given("relay-server-session-rate") {
		// checkRelayFlags rejected a bad value already.
		if r, err := configs.ParseByteRate(o.RelayServerSessionRate); err == nil {
			p.RelayServerSessionRate = &r
		}
	}
	return p
}

// newCmdDaemonStop returns beam daemon stop.
func newCmdDaemonStop(f *Factory, in *instanceFlags) *cobra.Command {
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "stop",
		Short: "Stop the daemon that answers on the socket (its state is kept; beam up starts it again)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			lc := in.client(f)
			if err := stopDaemon(ctx, lc); err != nil {
				return err
			}
			fmt.Fprintf(f.ErrOut, "daemon on %s stopped\n", lc.Socket)
			return nil
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", 30*time.Second, "how long to wait for the daemon to exit")
	return cmd
}

// stopDaemon asks the daemon on lc's socket to exit and waits until
// nothing answers there any more.
func stopDaemon(ctx context.Context, lc *localclient.Client) error {
	if err := lc.Shutdown(ctx); err != nil {
		return fmt.Errorf("stop daemon: %w", err)
	}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for lc.Alive(ctx) {
		select {
		case <-ctx.Done():
			return fmt.Errorf("stop daemon: still answering on %s", lc.Socket)
		case <-tick.C:
		}
	}
	return nil
}
