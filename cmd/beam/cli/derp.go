package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"beam.dev/beam/configs"
	"beam.dev/beam/coordinator"
	"beam.dev/beam/derp/derpserver"
	"beam.dev/beam/internal/tcpcc"
	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// DERPOptions are the settings of beam derp: its flags and config file
// fill the configs.DERP.
type DERPOptions struct {
	configs.DERP
	// ConfigFile is --config.
	ConfigFile string
	// cmdline holds the config keys the command line set.
	cmdline []string

	// ready, if set, is called with the bound HTTP and STUN addresses
	// (for tests).
	ready func(httpAddr, stunAddr string)
}

// NewCmdDERP returns the beam derp command.
func NewCmdDERP(f *Factory, runF func(*DERPOptions) error) *cobra.Command {
	opts := &DERPOptions{}
	cmd := &cobra.Command{
		Use:   "derp",
		Short: "Run a relay server with a STUN responder",
		Long: `Run a relay server: nodes that cannot reach each other directly exchange
their (end-to-end encrypted) WireGuard packets through it. It also answers
STUN so nodes learn their public address.

The relay serves /derp (Upgrade: DERP, or WebSocket), /derp/probe and
/generate_204 for latency checks, and /derp/stats (JSON counters) to loopback
clients only.

Relays of one region mesh with each other: give each one the others' URLs
with --mesh-with and the same secret in --mesh-key-file. Pin each peer to
its key (the machine_key it logs at start) as URL#KEY, e.g.
--mesh-with http://relay2:3340#mkey:...; a relay at that URL with another
key is refused before it is sent anything. An unpinned peer is trusted
whatever key it has, with a warning.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := loadConfig(cmd.Flags(), f.ErrOut, opts.ConfigFile, &opts.DERP); err != nil {
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
			return runDERP(cmd.Context(), f, opts)
		},
	}
	fl := cmd.Flags()
	def := configs.DefaultDERP()
	fl.StringVar(&opts.ConfigFile, "config", "", configUsage)
	fl.StringVar(&opts.Addr, "addr", def.Addr, "address to serve HTTP (or HTTPS with --tls-cert) on")
	fl.StringVar(&opts.STUNAddr, "stun-addr", def.STUNAddr, `UDP address of the STUN responder; "" disables it`)
	fl.StringVar(&opts.STUNAltAddr, "stun-alt-addr", def.STUNAltAddr, configs.STUNAltUsage)
	fl.StringVar(&opts.TLSCert, "tls-cert", "", "TLS certificate PEM file (with --tls-key); plain HTTP if unset")
	fl.StringVar(&opts.TLSKey, "tls-key", "", "TLS private key PEM file")
	fl.StringVar(&opts.VerifyClients, "verify-clients", "", "coordinator URL; admit only node keys it knows (needs --verify-token-file)")
	fl.StringVar(&opts.VerifyTokenFile, "verify-token-file", "", "file holding the coordinator's relay token (the coordinator's DATA/relay.token); read again on SIGHUP, after which the previous token is still presented for 10m to a coordinator that refuses the new one, so coordinators and relays may take a rotated token in either order")
	fl.StringSliceVar(&opts.MeshWith, "mesh-with", nil, "comma-separated URLs of the region's other relays, each pinned to its key as URL#mkey:... (the machine_key it logs)")
	fl.StringVar(&opts.MeshKeyFile, "mesh-key-file", "", "file holding the region's mesh key (needed with --mesh-with)")
	fl.StringVar(&opts.KeyFile, "key-file", "", "machine key file, created 0600 if missing (default STATE/derp.key)")
	fl.StringVar(&opts.StateDir, "state", def.StateDir, "state directory (created 0700)")
	fl.StringVar(&opts.LogLevel, "log-level", def.LogLevel, "log level: debug, info, warn, error")
	fl.IntVar(&opts.MaxConns, "max-conns", 0, "cap on connections (0: 3/4 of the open files limit; -1: none); when it is full, a new connection pushes out one of the address holding the most, and connections idle 90s between requests are closed")
	bindRelayLimits(fl, &opts.RelayLimits)
	registerTelemetry(fl, &opts.Telemetry)
	return cmd
}

func runDERP(ctx context.Context, f *Factory, opts *DERPOptions) error {
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	level := new(slog.LevelVar)
	if err := reloadLevel(level, opts.LogLevel); err != nil {
		return err
	}
	hup := reloadSignal(opts.ConfigFile != "" || opts.VerifyClients != "") // the relay token is read again
	defer stopSignal(hup)
	logger := f.Logger(level)
	nofile := raiseFileLimit()
	if (opts.TLSCert == "") != (opts.TLSKey == "") {
		return errors.New("--tls-cert and --tls-key go together")
	}
	var meshWith []derpserver.MeshPeer
	for _, m := range opts.MeshWith {
		u, k, err := configs.ParseMeshPeer(m)
		if err != nil {
			return fmt.Errorf("bad --mesh-with %q: %w", m, err)
		}
		pu, err := url.Parse(u)
		if err != nil || (pu.Scheme != "http" && pu.Scheme != "https") || pu.Host == "" {
			return fmt.Errorf("bad --mesh-with URL %q: want http(s)://host[:port]", u)
		}
		meshWith = append(meshWith, derpserver.MeshPeer{URL: u, Key: k})
	}
	var meshKey string
	if opts.MeshKeyFile != "" {
		b, err := os.ReadFile(opts.MeshKeyFile)
		if err != nil {
			return fmt.Errorf("read --mesh-key-file: %w", err)
		}
		meshKey = strings.TrimSpace(string(b))
		if len(meshKey) < 16 {
			return fmt.Errorf("mesh key in %s is too short (want at least 16 characters)", opts.MeshKeyFile)
		}
	}
	if len(opts.MeshWith) > 0 && meshKey == "" {
		return errors.New("--mesh-with needs --mesh-key-file")
	}
	keyFile := opts.KeyFile
	if keyFile == "" {
		if opts.StateDir == "" {
			return errors.New("--state or --key-file is required")
		}
		if err := os.MkdirAll(opts.StateDir, 0o700); err != nil {
			return fmt.Errorf("create state directory: %w", err)
		}
		keyFile = filepath.Join(opts.StateDir, "derp.key")
	}
	priv, err := loadOrCreateMachineKey(keyFile)
	if err != nil {
		return err
	}
	var verify func(context.Context, key.NodePublic) error
	var relayToken *verifyToken // nil without --verify-clients
	if opts.VerifyClients != "" {
		if opts.VerifyTokenFile == "" {
			return errors.New("--verify-clients needs --verify-token-file: the coordinator answers relays only (its DATA/relay.token)")
		}
		tok, err := readVerifyToken(opts.VerifyTokenFile)
		if err != nil {
			return err
		}
		relayToken = &verifyToken{url: strings.TrimSuffix(opts.VerifyClients, "/") + wire.PathDERPVerify, hc: &http.Client{Timeout: 10 * time.Second}}
		relayToken.set(tok)
		verify = relayToken.verify
	}

	// Relay connections ask for BBR (see internal/tcpcc).
	ln, err := tcpcc.ListenConfig().Listen(ctx, "tcp", opts.Addr)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	if verify == nil {
		logger.Warn("relay admits any node key (no --verify-clients): anyone who can reach it may relay through it, within --relay-rate each; give it the coordinator's URL and relay token to admit only its nodes")
	}
	relay, err := assembleRelay(withRelayLimits(derpserver.Options{
		PrivateKey:   priv,
		Logger:       logger,
		VerifyClient: verify,
		MeshKey:      meshKey,
		MeshWith:     meshWith,
	}, &opts.RelayLimits), opts.STUNAddr, opts.STUNAltAddr, logger)
	if err != nil {
		ln.Close()
		return err
	}
	defer relay.close()
	srv, pc, altPC := relay.srv, relay.stun, relay.stunAlt
	stopTelemetry, err := startTelemetry(ctx, &opts.Telemetry, logger, nil, roleRegistry(srv.Collector()))
	if err != nil {
		return err
	}
	defer stopTelemetry()
	mux := http.NewServeMux()
	mux.Handle("/", srv)
	mux.HandleFunc("/derp/stats", func(w http.ResponseWriter, r *http.Request) {
		if !isLoopback(r.RemoteAddr) || !loopbackPage(r) {
			http.Error(w, "stats are served to loopback clients only", http.StatusForbidden)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(srv.Stats())
	})
	lim := connLimits(opts.MaxConns, shareAlone, nofile, controlConnsPerSource)
	logLimits(logger, "relay", nofile, lim)
	ln, hs := limitedServer(ln, lim, mux, logger)

	stunAddr := ""
	if pc != nil {
		stunAddr = pc.LocalAddr().String()
	}
	stunAlt := ""
	if altPC != nil {
		stunAlt = altPC.LocalAddr().String()
	}
	rate, burst := opts.RelayLimits.Bytes()
	logger.Info("relay listening", "addr", ln.Addr().String(), "stun", stunAddr, "stun_alt", stunAlt, "tls", opts.TLSCert != "",
		"machine_key", priv.Public().String(), "mesh_with", len(opts.MeshWith), "verify_clients", opts.VerifyClients != "",
		"relay_rate", relayRateText(rate), "relay_burst", configs.FormatByteRate(burst))
	if opts.ready != nil {
		opts.ready(ln.Addr().String(), stunAddr)
	}

	if hup != nil {
		start := opts.DERP
		defer watchReload(ctx, reloadSpec[configs.DERP]{
			ConfigFile: opts.ConfigFile, Defaults: configs.DefaultDERP, Start: &start, Cmdline: opts.cmdline,
			Validate: validateOnly[configs.DERP], Logger: logger,
			HUP: hup,
			Apply: func(_, next *configs.DERP) ([]string, error) {
				if _, err := parseLevel(next.LogLevel); err != nil {
					return nil, err
				}
				applied := []string{"log_level"}
				if relayToken != nil {
					// The running --verify-token-file, read again.
					tok, err := readVerifyToken(opts.VerifyTokenFile)
					if err != nil {
						return nil, err
					}
					if relayToken.set(tok) {
						applied = append(applied, "relay_token")
					}
				}
				return applied, reloadLevel(level, next.LogLevel)
			},
		})()
	}
	var wg sync.WaitGroup
	errc := make(chan error, 2)
	stunCtx, stopSTUN := context.WithCancel(ctx)
	defer stopSTUN()
	relay.serveSTUN(stunCtx, &wg, logger, func(err error) {
		select {
		case errc <- err:
		default: // another error ends the run already
		}
	})
	wg.Go(func() {
		var err error
		if opts.TLSCert != "" {
			err = hs.ServeTLS(ln, opts.TLSCert, opts.TLSKey)
		} else {
			err = hs.Serve(ln)
		}
		if !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("serve: %w", err)
		}
	})
	var runErr error
	select {
	case runErr = <-errc:
	case <-ctx.Done():
	}
	logger.Info("shutting down")
	srv.Close() // tells clients to reconnect elsewhere and ends hijacked conns
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := hs.Shutdown(sctx); err != nil {
		hs.Close()
	}
	stopSTUN()
	wg.Wait()
	return runErr
}

// bindRelayLimits binds --relay-rate and --relay-burst (beam derp, beam
// server).
func bindRelayLimits(fl *pflag.FlagSet, l *configs.RelayLimits) {
	fl.StringVar(&l.RelayRate, "relay-rate", "", configs.RelayRateUsage)
	fl.StringVar(&l.RelayBurst, "relay-burst", "", configs.RelayBurstUsage)
}

// withRelayLimits returns opts with each client's send rate and burst
// set from l.
func withRelayLimits(opts derpserver.Options, l *configs.RelayLimits) derpserver.Options {
	rate, burst := l.Bytes()
	opts.PerClientRateBytes = float64(rate)
	opts.PerClientBurstBytes = int(burst)
	return opts
}

// relayRateText is a relay rate for the log: "off" for none.
func relayRateText(rate int64) string {
	if rate == 0 {
		return "off"
	}
	return configs.FormatByteRate(rate)
}

// loopbackPage reports whether r names the server by an IP address or
// localhost (not a DNS name rebound to loopback) and any Origin or Referer
// is a loopback page (not another site's page in the user's browser).
func loopbackPage(r *http.Request) bool {
	isLocal := func(host string) bool {
		if strings.EqualFold(host, "localhost") {
			return true
		}
		a, err := netip.ParseAddr(host)
		return err == nil && a.Unmap().IsLoopback()
	}
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	if _, err := netip.ParseAddr(host); err != nil && !strings.EqualFold(host, "localhost") {
		return false
	}
	for _, h := range []string{"Origin", "Referer"} {
		for _, v := range r.Header.Values(h) {
			if u, err := url.Parse(v); err != nil || !isLocal(u.Hostname()) {
				return false
			}
		}
	}
	return true
}

// isLoopback reports whether the host of a "host:port" remote address is a
// loopback address.
func isLoopback(remoteAddr string) bool {
	ap, err := netip.ParseAddrPort(remoteAddr)
	return err == nil && ap.Addr().Unmap().IsLoopback()
}

// verifyToken asks the coordinator at url whether a node key may use the
// relay, presenting the relay token, which a reload may replace. For
// tokenOverlap after a reload replaced it, a key the coordinator refuses
// because it does not take the new token (it has not reloaded yet) is
// asked again with the previous one: coordinators and relays reload at
// different moments, and nodes in between must not be refused.
type verifyToken struct {
	url   string
	hc    *http.Client
	now   func() time.Time // nil: time.Now
	check atomic.Pointer[verifyChecks]
	token atomic.Pointer[string]
}

// verifyChecks are the checks of the current token and, until prevUntil,
// of the previous one (nil: none).
type verifyChecks struct {
	cur, prev func(context.Context, key.NodePublic) error
	prevUntil time.Time
}

// tokenOverlap is how long a relay still presents its previous token
// after a reload replaced it, as long as a coordinator still takes its
// previous one.
const tokenOverlap = coordinator.RelayTokenOverlap

func (v *verifyToken) clock() time.Time {
	if v.now != nil {
		return v.now()
	}
	return time.Now()
}

// set makes tok the token presented from now on, and reports whether it
// changed; the one it replaces is still presented to a coordinator that
// refuses tok, for tokenOverlap.
func (v *verifyToken) set(tok string) bool {
	old := v.token.Load()
	if old != nil && *old == tok {
		return false
	}
	c := &verifyChecks{cur: derpserver.VerifyWithCoordinator(v.url, tok, v.hc)}
	if cur := v.check.Load(); cur != nil {
		c.prev, c.prevUntil = cur.cur, v.clock().Add(tokenOverlap)
	}
	v.check.Store(c)
	v.token.Store(&tok)
	return true
}

// verify is a derpserver.Options.VerifyClient with the current token, or
// the previous one while it overlaps.
func (v *verifyToken) verify(ctx context.Context, k key.NodePublic) error {
	c := v.check.Load()
	err := c.cur(ctx, k)
	if err != nil && c.prev != nil && errors.Is(err, derpserver.ErrTokenRefused) && v.clock().Before(c.prevUntil) {
		return c.prev(ctx, k)
	}
	return err
}

// readVerifyToken reads --verify-token-file.
func readVerifyToken(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read --verify-token-file: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if len(tok) < 16 {
		return "", fmt.Errorf("relay token in %s is too short (want at least 16 characters)", path)
	}
	return tok, nil
}
