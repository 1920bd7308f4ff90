package cli

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"beam.dev/beam/configs"
	"beam.dev/beam/coordinator"
	"beam.dev/beam/coordinator/console"
	"beam.dev/beam/coordinator/sqlstore"
	"beam.dev/beam/internal/version"
	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// CoordinatorOptions are the settings of beam coordinator: its flags and
// config file fill the configs.Coordinator.
type CoordinatorOptions struct {
	configs.Coordinator
	// ConfigFile is --config.
	ConfigFile string
	// cmdline holds the config keys the command line set.
	cmdline []string

	// ready, if set, is called with the listening address (for tests).
	ready func(addr string)
}

// NewCmdCoordinator returns the beam coordinator command.
func NewCmdCoordinator(f *Factory, runF func(*CoordinatorOptions) error) *cobra.Command {
	opts := &CoordinatorOptions{}
	cmd := &cobra.Command{
		Use:   "coordinator",
		Short: "Run the coordination server",
		Long: `Run the coordination server: registration, overlay addresses and names,
and the netmap stream for every node.

On first start it creates the data directory with coordinator.db (SQLite;
with --db postgres://... the database is PostgreSQL's instead), coordinator.key (the machine key), admin.token (the admin API token; only
its hash is kept in the database) and relay.token (what relays started with
--verify-clients present to ask whether a node may use them; give it to
them with --verify-token-file). Once it listens it writes
DATA/coordinator.json (its URL, admin token file, machine public key and
process ID) and a copy for beam admin on this host, which then needs
neither --coordinator nor a token; both are removed when it stops. beam
admin sends the token to that URL only after the server there proves it
holds the machine key.

Several coordinators may share one --db database as replicas: start each on a
copy of the first one's coordinator.key, admin.token and relay.token (a
coordinator with other secrets is refused while another runs), and give nodes
every URL: beam up --coordinator URL1,URL2.

On SIGHUP it reads admin.token and relay.token again (and --config and
--policy-file): to rotate the admin token, write the new one into every
replica's admin.token and send each SIGHUP; the relay token likewise, and
write it into the relays' --verify-token-file and send them SIGHUP, in
either order within 10 minutes: for 10 minutes after a reload replaced
it, a coordinator still takes the old relay token, and a relay (beam
derp) still presents its old one to a coordinator that refuses the new
one, so no node is refused meanwhile (a restart drops the old token at
once). A token file that is missing or too short is refused with an error
in the log, and both running tokens stay; so do they when the new ones
cannot be stored.

From elsewhere:

  export BEAM_COORDINATOR=http://HOST:PORT BEAM_ADMIN_TOKEN=$(cat DATA/admin.token)`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := loadConfig(cmd.Flags(), f.ErrOut, opts.ConfigFile, &opts.Coordinator); err != nil {
				return err
			}
			opts.cmdline = cmdlineKeys(cmd.Flags())
			if err := opts.Validate(); err != nil {
				return err
			}
			if err := checkTelemetry(&opts.Telemetry); err != nil {
				return err
			}
			if runF != nil {
				return runF(opts)
			}
			return runCoordinator(cmd.Context(), f, opts)
		},
	}
	fl := cmd.Flags()
	def := configs.DefaultCoordinator()
	fl.StringVar(&opts.ConfigFile, "config", "", configUsage)
	fl.StringVar(&opts.Addr, "addr", def.Addr, "address to serve HTTP on")
	fl.StringVar(&opts.DataDir, "data", def.DataDir, "data directory (created 0700)")
	fl.StringVar(&opts.DB, "db", "", dbUsage)
	fl.StringArrayVar(&opts.DERPURLs, "derp", nil, "relay base URL; repeat for more regions")
	fl.StringArrayVar(&opts.STUN, "stun", nil, "STUN host:port for the --derp relays (one for all, or one per --derp; several comma-separated, such as the relay's IPv4 and IPv6 addresses); default host:3478")
	fl.IntVar(&opts.STUNAltPort, "stun-alt-port", 0, "port of the relays' second STUN responder, on the --stun host (0: the --stun port + 1, as beam derp serves by default; -1: none)")
	fl.StringVar(&opts.DERPMapFile, "derp-map", "", "JSON file with the full relay map (instead of --derp)")
	fl.StringVar(&opts.BaseDomain, "base-domain", def.BaseDomain, "base DNS domain; networks get NETWORK.BASE")
	fl.BoolVar(&opts.Dev, "dev", false, "dev mode: nodes on loopback may register without an auth key")
	fl.StringVar(&opts.NodeKeyExpiry, "node-key-expiry", def.NodeKeyExpiry, nodeKeyExpiryUsage)
	fl.StringVar(&opts.PolicyFile, "policy-file", "", policyFileUsage)
	fl.StringVar(&opts.LogLevel, "log-level", def.LogLevel, "log level: debug, info, warn, error")
	fl.IntVar(&opts.MaxConns, "max-conns", 0, "cap on connections (0: 3/4 of the open files limit; -1: none); when it is full, a new connection pushes out one of the address holding the most, and connections idle 90s between requests are closed")
	fl.IntVar(&opts.MachineRate, "machine-rate", 0, configs.MachineRateUsage)
	fl.IntVar(&opts.NodeRate, "node-rate", 0, configs.NodeRateUsage)
	bindReplicaTimes(fl, &opts.ReplicaTimes)
	bindRouteQuota(fl, &opts.RouteQuota)
	bindCoordinatorEdgeFlags(cmd, &opts.CoordinatorEdge, def.CoordinatorEdge)
	registerTelemetry(fl, &opts.Telemetry)
	registerOIDC(fl, &opts.OIDC)
	return cmd
}

func runCoordinator(ctx context.Context, f *Factory, opts *CoordinatorOptions) error {
	if ctx == nil {
		ctx = context.Background()
	}
	level := new(slog.LevelVar)
	if err := reloadLevel(level, opts.LogLevel); err != nil {
		return err
	}
	hup := reloadSignal(true) // the admin token is read again, at least
	defer stopSignal(hup)
	logger := f.Logger(level)
	nofile := raiseFileLimit()
	derpMap, err := coordinatorDERPMap(&opts.Coordinator)
	if err != nil {
		return err
	}
	base := coordinator.Options{BaseDomain: opts.BaseDomain, DERPMap: derpMap, DevMode: opts.Dev, KeepAliveInterval: time.Duration(opts.KeepAlive), OnlineGrace: time.Duration(opts.OnlineGrace)}
	base.MachineRequestRate, base.MachineRequestBurst = requestRate(opts.MachineRate)
	base.NodeRequestRate, base.NodeRequestBurst = requestRate(opts.NodeRate)
	base.RouteQuota = routeQuota(&opts.RouteQuota)
	if err := applyCoordinatorEdge(&opts.CoordinatorEdge, &base); err != nil {
		return err
	}
	role, err := assembleCoordinator(ctx, coordinatorSpec{
		DataDir: opts.DataDir, DB: opts.DB, NodeKeyExpiry: opts.NodeKeyExpiry, PolicyFile: opts.PolicyFile,
		Addr: opts.Addr, OIDC: &opts.OIDC, Logger: logger, Options: base,
		Store: replicaStore(&opts.ReplicaTimes),
	})
	if err != nil {
		return err
	}
	defer role.close()
	srv, mux := role.coord, role.mux
	stopTelemetry, err := startTelemetry(ctx, &opts.Telemetry, logger, nil, roleRegistry(srv.Collector()))
	if err != nil {
		return err
	}
	defer stopTelemetry()

	ln, err := net.Listen("tcp", opts.Addr)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	lim := connLimits(opts.MaxConns, shareAlone, nofile, controlConnsPerSource)
	logLimits(logger, "coordinator", nofile, lim)
	ln, hs := limitedServer(ln, lim, mux, logger)
	if role.tokenCreated {
		logger.Info("wrote a new admin token", "file", role.tokenPath)
	}
	logger.Info("coordinator listening", "version", version.String(), "addr", ln.Addr().String(), "data", opts.DataDir, "db", describeDB(opts.DataDir, opts.DB), "machine_key", role.machineKey.Public().String())
	forget, err := writeDiscovery(f, opts.DataDir, ln.Addr().(*net.TCPAddr), role.machineKey.Public())
	if err != nil {
		ln.Close()
		return err
	}
	defer forget()
	printCoordinatorNext(f, opts, loopbackURL(ln.Addr().(*net.TCPAddr)), derpMap != nil)
	if opts.ready != nil {
		opts.ready(ln.Addr().String())
	}
	start := opts.Coordinator
	defer watchReload(ctx, reloadSpec[configs.Coordinator]{
		ConfigFile: opts.ConfigFile, Defaults: configs.DefaultCoordinator, Start: &start, Cmdline: opts.cmdline,
		Validate: validateOnly[configs.Coordinator], Logger: logger,
		HUP: hup,
		Apply: func(_, next *configs.Coordinator) ([]string, error) {
			return reloadCoordinator(ctx, srv, level, next.PolicyFile, next.LogLevel, opts.DataDir)
		},
	})()
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	logger.Info("shutting down")
	srv.Close() // ends map streams so Shutdown does not wait on them
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := hs.Shutdown(sctx); err != nil {
		hs.Close()
	}
	<-errc
	return nil
}

// coordinatorDERPMap builds the relay map from --derp-map or --derp/--stun.
func coordinatorDERPMap(opts *configs.Coordinator) (*wire.DERPMap, error) {
	if opts.DERPMapFile != "" {
		if len(opts.DERPURLs) > 0 {
			return nil, errors.New("use either --derp-map or --derp, not both")
		}
		b, err := os.ReadFile(opts.DERPMapFile)
		if err != nil {
			return nil, fmt.Errorf("read --derp-map: %w", err)
		}
		m, err := configs.ParseDERPMap(b)
		if err != nil {
			return nil, fmt.Errorf("--derp-map %s: %w", opts.DERPMapFile, err)
		}
		return m, nil
	}
	if len(opts.DERPURLs) == 0 {
		if len(opts.STUN) > 0 {
			return nil, errors.New("--stun needs --derp")
		}
		return nil, nil
	}
	if len(opts.STUN) > 1 && len(opts.STUN) != len(opts.DERPURLs) {
		return nil, fmt.Errorf("got %d --stun for %d --derp; give one for all or one per relay", len(opts.STUN), len(opts.DERPURLs))
	}
	m := &wire.DERPMap{Regions: make(map[int]*wire.DERPRegion)}
	for i, raw := range opts.DERPURLs {
		u, err := url.Parse(raw)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Hostname() == "" {
			return nil, fmt.Errorf("bad --derp URL %q: want http(s)://host[:port]", raw)
		}
		id := i + 1
		stunAddr := net.JoinHostPort(u.Hostname(), "3478")
		switch len(opts.STUN) {
		case 1:
			stunAddr = opts.STUN[0]
		case len(opts.DERPURLs):
			stunAddr = opts.STUN[i]
		}
		// More addresses of the relay's STUN responder (its IPv6 one)
		// follow the first, comma-separated, as STUN-only nodes.
		stunAddr, more, _ := strings.Cut(stunAddr, ",")
		_, stunPort, err := net.SplitHostPort(stunAddr)
		if err != nil {
			return nil, fmt.Errorf("bad --stun %q: want host:port", stunAddr)
		}
		var altPort uint16
		switch n, _ := strconv.Atoi(stunPort); {
		case opts.STUNAltPort > 0:
			altPort = uint16(opts.STUNAltPort)
		case opts.STUNAltPort == 0 && n > 0 && n < 65535:
			altPort = uint16(n + 1)
		}
		m.Regions[id] = &wire.DERPRegion{
			RegionID:   id,
			RegionCode: fmt.Sprintf("r%d", id),
			Name:       u.Host,
			Nodes: []*wire.DERPNode{{
				Name:        fmt.Sprintf("%da", id),
				RegionID:    id,
				URL:         strings.TrimRight(raw, "/"),
				STUNAddr:    stunAddr,
				STUNAltPort: altPort,
			}},
		}
		for j, a := range strings.Split(more, ",") {
			if more == "" {
				break
			}
			if _, _, err := net.SplitHostPort(a); err != nil {
				return nil, fmt.Errorf("bad --stun %q: want host:port", a)
			}
			m.Regions[id].Nodes = append(m.Regions[id].Nodes, &wire.DERPNode{
				Name: fmt.Sprintf("%d%c", id, 'b'+j), RegionID: id, STUNAddr: a, STUNOnly: true,
			})
		}
	}
	return m, nil
}

// loadOrCreateMachineKey reads the machine key at path, or creates it 0600.
func loadOrCreateMachineKey(path string) (key.MachinePrivate, error) {
	var k key.MachinePrivate
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		if err := k.UnmarshalText([]byte(strings.TrimSpace(string(b)))); err != nil {
			return k, fmt.Errorf("read machine key %s: %w", path, err)
		}
		return k, nil
	case !errors.Is(err, fs.ErrNotExist):
		return k, fmt.Errorf("read machine key: %w", err)
	}
	k = key.NewMachine()
	text, _ := k.MarshalText()
	if err := writeFileExcl(path, append(text, '\n')); err != nil {
		return k, fmt.Errorf("write machine key: %w", err)
	}
	return k, nil
}

// loadOrCreateToken reads the token (the admin or relay token: name) at
// path, or writes a new random one 0600. It reports whether it created
// the token.
func loadOrCreateToken(path, name string) (string, bool, error) {
	tok, err := readToken(path, name)
	switch {
	case err == nil:
		return tok, false, nil
	case !errors.Is(err, fs.ErrNotExist):
		return "", false, err
	}
	var raw [32]byte
	rand.Read(raw[:])
	tok = hex.EncodeToString(raw[:])
	if err := writeFileExcl(path, []byte(tok+"\n")); err != nil {
		return "", false, fmt.Errorf("write %s: %w", name, err)
	}
	return tok, true, nil
}

// writeFileExcl creates path 0600 with data; it fails if path exists.
func writeFileExcl(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	return f.Close()
}

// printCoordinatorNext tells the person who started beam coordinator what
// to run next: how to get an auth key and join a device.
func printCoordinatorNext(f *Factory, o *CoordinatorOptions, url string, relays bool) {
	w := f.Out
	fmt.Fprintf(w, "beam coordinator is running at %s; data in %s", url, o.DataDir)
	if o.DB != "" {
		fmt.Fprintf(w, ", database %s", describeDB(o.DataDir, o.DB))
	}
	fmt.Fprintln(w)
	printConsoleURL(w, url, o.DataDir)
	fmt.Fprintf(w, "\nNext:\n")
	if o.Dev {
		fmt.Fprintf(w, "  join a device on this machine (dev mode: no auth key):\n    beam up --coordinator %s --hostname NAME\n", url)
	}
	fmt.Fprintf(w, "  create an auth key (on this machine, as this user; beam admin finds the coordinator):\n    beam admin authkey create --reusable --expiry 24h\n")
	fmt.Fprintf(w, "  join a device with it:\n    beam up --coordinator %s --authkey KEY --hostname NAME\n", url)
	if !relays {
		fmt.Fprintf(w, "  no relay or STUN server (--derp): devices connect only directly; beam server runs one with the coordinator\n")
	}
}

// printConsoleURL says where the web console is and how to sign in: with
// the one-time link beam admin console prints, which it gives only once
// the server proved it holds the coordinator's key (a browser opening
// this URL later gets whatever listens on the port then), or with the
// admin token.
func printConsoleURL(w io.Writer, base, dataDir string) {
	fmt.Fprintf(w, "web console at %s%s (sign in with a one-time link: beam admin console; or with the admin token in %s)\n", strings.TrimRight(base, "/"), console.Path, filepath.Join(dataDir, "admin.token"))
	u, err := url.Parse(base)
	if err != nil || u.Scheme != "http" {
		return
	}
	if a, err := netip.ParseAddr(u.Hostname()); (err == nil && a.IsLoopback()) || u.Hostname() == "localhost" {
		return
	}
	port := u.Port()
	if port == "" {
		port = "80"
	}
	fmt.Fprintf(w, "  over plain HTTP it takes a sign-in only on this machine: from elsewhere use a TLS proxy, or\n    ssh -L %s:127.0.0.1:%s %s   and open http://127.0.0.1:%s%s\n", port, port, u.Hostname(), port, console.Path)
}

// applyPolicyFile sets the policy in the file at path ("" leaves the
// stored one) on coord.
func applyPolicyFile(ctx context.Context, coord *coordinator.Server, path string) error {
	if path == "" {
		return nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read --policy-file: %w", err)
	}
	if err := coord.SetPolicy(ctx, b); err != nil {
		return fmt.Errorf("--policy-file %s: %w", path, err)
	}
	return nil
}

// reloadCoordinator applies what a coordinator reloads: its policy file
// (read again, refused whole if invalid), log level, and admin and relay
// tokens (dataDir's admin.token and relay.token, read again:
// "admin_token" and "relay_token" are among the applied keys when they
// changed). Everything is read and checked before anything is applied, and
// the two tokens are stored together (coordinator.Server.SetTokens): a
// token file that cannot be read or is too short, a policy that does not
// check, or a store that fails to take the tokens refuses the reload, and
// both running tokens stay (and the running policy). The policy is stored
// after the tokens: a store that fails then refuses the reload with the
// new tokens in force and the old policy, which the next reload stores.
func reloadCoordinator(ctx context.Context, coord *coordinator.Server, level *slog.LevelVar, policyFile, logLevel, dataDir string) ([]string, error) {
	l, err := parseLevel(logLevel)
	if err != nil {
		return nil, err
	}
	token, err := readToken(filepath.Join(dataDir, "admin.token"), "admin token")
	if err != nil {
		return nil, err
	}
	relayToken, err := readToken(filepath.Join(dataDir, "relay.token"), "relay token")
	if err != nil {
		return nil, err
	}
	var pol []byte
	if policyFile != "" {
		if pol, err = os.ReadFile(policyFile); err != nil {
			return nil, fmt.Errorf("read --policy-file: %w", err)
		}
		if _, err := coord.CheckPolicy(ctx, pol); err != nil {
			return nil, fmt.Errorf("--policy-file %s: %w", policyFile, err)
		}
	}
	adminChanged, relayChanged, err := coord.SetTokens(ctx, token, relayToken)
	if err != nil {
		return nil, err
	}
	applied := []string{"log_level"}
	if adminChanged {
		applied = append(applied, "admin_token")
	}
	if relayChanged {
		applied = append(applied, "relay_token")
	}
	if policyFile != "" {
		if err := coord.SetPolicy(ctx, pol); err != nil {
			return nil, fmt.Errorf("--policy-file %s: %w", policyFile, err)
		}
		applied = append(applied, "policy_file")
	}
	level.Set(l)
	return applied, nil
}

// readToken reads the token file at path (the admin or relay token:
// name).
func readToken(path, name string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read %s: %w", name, err)
	}
	tok := strings.TrimSpace(string(b))
	if len(tok) < 16 {
		return "", fmt.Errorf("%s in %s is too short (want at least 16 characters)", name, path)
	}
	return tok, nil
}

// policyFileUsage is the help of --policy-file.
const policyFileUsage = "HuJSON access policy applied at start and on every SIGHUP (default: the stored one, set with beam admin policy set)"

// nodeKeyExpiryUsage is the help of --node-key-expiry.
const nodeKeyExpiryUsage = "default key expiry of untagged nodes (a user's, and those with neither user nor tag: plain auth keys, dev mode) whose auth key sets none: e.g. 180d, 720h, or never; tagged nodes do not expire by default"

// parseNodeKeyExpiry parses --node-key-expiry: a duration like 720h or
// 30d, or "never" (or "0"), returned as a negative duration.
func parseNodeKeyExpiry(s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	if s == "never" || s == "0" {
		return -1, nil
	}
	d, err := parseExpiryArg(s)
	if err != nil {
		return 0, fmt.Errorf("--node-key-expiry: %w", err)
	}
	return d, nil
}

// requestRate turns --machine-rate or --node-rate into coordinator.Options'
// MachineRequestRate and MachineRequestBurst, or NodeRequestRate and
// NodeRequestBurst: rate a second in bursts of 10x; 0 keeps the
// defaults, -1 lifts the limit.
func requestRate(rate int) (float64, int) {
	switch {
	case rate == 0:
		return 0, 0
	case rate < 0:
		return -1, 0
	}
	return float64(rate), 10 * rate
}

// bindRouteQuota binds the route quota flags (--max-routes-per-node, ...;
// beam coordinator and beam server) to q.
func bindRouteQuota(fl *pflag.FlagSet, q *configs.RouteQuota) {
	for _, f := range q.Fields() {
		fl.IntVar(f.V, f.Flag, 0, f.Usage)
	}
}

// routeQuota turns the route quota settings into the coordinator's.
func routeQuota(q *configs.RouteQuota) coordinator.RouteQuota {
	return coordinator.RouteQuota{
		NodeRoutes: q.MaxRoutesPerNode, UserRoutes: q.MaxRoutesPerUser,
		NodePorts: q.MaxEdgePortsPerNode, UserPorts: q.MaxEdgePortsPerUser, NetworkPorts: q.MaxEdgePortsPerNetwork,
		RouteOptionBytes: q.MaxRouteOptions, NodeOptionBytes: q.MaxRouteOptionsPerNode, UserOptionBytes: q.MaxRouteOptionsPerUser,
	}
}

// bindReplicaTimes binds --keepalive, --online-grace, --stale-after and --unknown-timeout
// (beam coordinator and beam server) to r.
func bindReplicaTimes(fl *pflag.FlagSet, r *configs.ReplicaTimes) {
	fl.DurationVar((*time.Duration)(&r.KeepAlive), "keepalive", 0, "how often an idle map stream gets a keepalive (0: 30s); nodes with other coordinators to move to leave one silent 5s longer")
	fl.DurationVar((*time.Duration)(&r.OnlineGrace), "online-grace", 0, "how long nodes streaming when the coordinator shuts down stay online while they come back to its restart or another replica (0: 45.5s); those not back by then go offline")
	fl.DurationVar((*time.Duration)(&r.StaleAfter), "stale-after", 0, "with other coordinators on the --db database: how long one may miss heartbeats (every 3s) before its nodes show as unknown (0: 15s); give every replica the same")
	fl.DurationVar((*time.Duration)(&r.UnknownTimeout), "unknown-timeout", 0, "how long the nodes of a coordinator gone from the --db database stay unknown, unless they stream from another, before they are offline (0: 2m)")
}

// replicaStore returns the database options of r.
func replicaStore(r *configs.ReplicaTimes) sqlstore.Options {
	return sqlstore.Options{StaleAfter: time.Duration(r.StaleAfter), UnknownTimeout: time.Duration(r.UnknownTimeout)}
}
