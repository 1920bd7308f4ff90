package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"

	"beam.dev/beam/configs"
	"beam.dev/beam/coordinator"
	"beam.dev/beam/derp/derpserver"
	"beam.dev/beam/dnsserver"
	"beam.dev/beam/edge"
	"beam.dev/beam/internal/tcpcc"
	"beam.dev/beam/internal/version"
	"beam.dev/beam/localapi/apitype"
	"beam.dev/beam/node"
	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// ServerOptions are the settings of beam server: its flags and config
// file fill the configs.Server.
type ServerOptions struct {
	configs.Server
	// ConfigFile is --config.
	ConfigFile string
	// cmdline holds the config keys the command line set.
	cmdline []string

	// ready, if set, is called with the coordinator's listen address and
	// the edge's HTTP address once everything serves (tests).
	ready func(addr, httpAddr string)
}

// NewCmdServer returns the beam server command: coordinator, relay, STUN,
// edge and the public zone in one process.
func NewCmdServer(f *Factory, runF func(*ServerOptions) error) *cobra.Command {
	o := &ServerOptions{}
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run everything on one machine: coordinator, relay + STUN, edge and the public DNS zone",
		Long: `Run coordinator, relay + STUN, edge and the public DNS zone in one process, with SQLite.

  beam server --data ./beam --domain example.com --public-ip 203.0.113.10 --acme-email you@example.com
                                                       a public server: HTTPS with a Let's Encrypt wildcard
                                                       certificate; prints the DNS records to create
  beam server check --domain example.com --public-ip 203.0.113.10
                                                       what the world sees of it, and what to fix
  beam server --dev                                    a local one: no domain, certificates or root;
                                                       devices on this machine join without an auth key
                                                       and beam expose gives http://NAME.localhost:8081`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fl := cmd.Flags()
			given, err := loadConfig(fl, f.ErrOut, o.ConfigFile, &o.Server)
			if err != nil {
				return err
			}
			o.cmdline = cmdlineKeys(fl)
			if o.Dev {
				o.devDefaults(given)
			}
			if o.Domain == "" {
				return errors.New("--domain is required (or use --dev)")
			}
			if err := o.config().Validate(); err != nil {
				return err
			}
			if err := checkTelemetry(&o.Telemetry); err != nil {
				return err
			}
			for _, w := range o.setupWarnings() {
				fmt.Fprintf(f.ErrOut, "WARNING: %s\n", w)
			}
			if err := o.settleACME(); err != nil {
				return err
			}
			if runF != nil {
				return runF(o)
			}
			return runServer(cmd.Context(), f, o)
		},
	}
	cmd.AddCommand(newCmdServerCheck(f))
	fl := cmd.Flags()
	def := configs.DefaultServer()
	fl.StringVar(&o.ConfigFile, "config", "", configUsage)
	fl.StringVar(&o.DataDir, "data", def.DataDir, "data directory (SQLite database, keys, admin token)")
	fl.StringVar(&o.DB, "db", "", dbUsage)
	fl.StringVar(&o.Domain, "domain", "", "public domain: routes are NAME.DOMAIN")
	fl.StringVar(&o.Addr, "addr", def.Addr, "coordinator and relay HTTP listener")
	fl.StringVar(&o.PublicURL, "public-url", "", "URL devices use to reach --addr (default http://DOMAIN:PORT)")
	fl.StringVar(&o.HTTPAddr, "http-addr", def.HTTPAddr, "edge HTTP listener (\"\" disables)")
	fl.StringVar(&o.HTTPSAddr, "https-addr", def.HTTPSAddr, "edge TLS listener, with a wildcard certificate from ACME (\"\" disables: plain HTTP only)")
	fl.BoolVar(&o.NoRedirect, "no-https-redirect", false, "serve http routes over plain HTTP too, instead of redirecting to HTTPS")
	fl.Uint16Var(&o.RedirectPort, "https-redirect-port", 0, "port the HTTPS redirect names, where clients reach --https-addr through a port mapping (0: the listener's own)")
	fl.StringVar(&o.TCPPorts, "tcp-ports", def.TCPPorts, "edge ports for --tcp routes")
	fl.StringVar(&o.UDPPorts, "udp-ports", def.UDPPorts, "edge ports for --udp routes")
	fl.StringVar(&o.STUNAddr, "stun-addr", def.STUNAddr, "STUN responder (\"\" disables)")
	fl.StringVar(&o.STUNAltAddr, "stun-alt-addr", def.STUNAltAddr, configs.STUNAltUsage)
	fl.StringVar(&o.DNSAddr, "dns-addr", def.DNSAddr, "authoritative DNS for DOMAIN (\"\" disables)")
	fl.StringSliceVar(&o.PublicIPs, "public-ip", nil, "the edge's public addresses, for the zone's A/AAAA records")
	fl.StringVar(&o.ACMECA, "acme-ca", "", "ACME directory URL (certificates by DNS-01 through the zone; default Let's Encrypt's production directory)")
	fl.BoolVar(&o.ACMEStaging, "acme-staging", false, "use Let's Encrypt's staging directory (untrusted certificates, generous rate limits) for trying a setup")
	fl.StringVar(&o.ACMECARoot, "acme-ca-root", "", "PEM root of the ACME server's HTTPS certificate")
	fl.StringVar(&o.ACMEEmail, "acme-email", "", "ACME account contact")
	fl.BoolVar(&o.Dev, "dev", false, "local development: loopback listeners, *.localhost URLs, join without an auth key from this machine")
	fl.StringVar(&o.NodeKeyExpiry, "node-key-expiry", def.NodeKeyExpiry, nodeKeyExpiryUsage)
	fl.StringVar(&o.LogLevel, "log-level", def.LogLevel, "debug, info, warn or error")
	fl.IntVar(&o.MaxConns, "max-conns", 0, "cap on connections to --addr, the coordinator and relay (0: 1/4 of the open files limit; -1: none); when it is full, a new connection pushes out one of the address holding the most, and connections idle 90s between requests are closed")
	fl.IntVar(&o.MachineRate, "machine-rate", 0, configs.MachineRateUsage)
	fl.IntVar(&o.NodeRate, "node-rate", 0, configs.NodeRateUsage)
	bindReplicaTimes(fl, &o.ReplicaTimes)
	bindRouteQuota(fl, &o.RouteQuota)
	bindRelayLimits(fl, &o.RelayLimits)
	fl.DurationVar((*time.Duration)(&o.BodyTimeout), "body-timeout", time.Duration(def.BodyTimeout), "longest wait for a byte of a request body at the edge, and grace before it must arrive at 1 KiB/s or more")
	fl.StringVar(&o.PolicyFile, "policy-file", "", policyFileUsage)
	fl.IntVar(&o.EdgeMaxConns, "edge-max-conns", 0, "cap on client connections of the edge's listeners (0: 1/2 of the open files limit; -1: none)")
	registerTelemetry(fl, &o.Telemetry)
	registerOIDC(fl, &o.OIDC)
	return cmd
}

// config returns the settings to validate.
func (o *ServerOptions) config() *configs.Server { return &o.Server }

// devDefaults replaces the flags the user did not set with loopback ones.
func (o *ServerOptions) devDefaults(changed func(string) bool) {
	set := func(name string, p *string, v string) {
		if !changed(name) {
			*p = v
		}
	}
	set("domain", &o.Domain, "localhost")
	set("addr", &o.Addr, "127.0.0.1:8080")
	set("http-addr", &o.HTTPAddr, "127.0.0.1:8081")
	set("https-addr", &o.HTTPSAddr, "")
	set("stun-addr", &o.STUNAddr, "127.0.0.1:3478")
	set("dns-addr", &o.DNSAddr, "")
}

func parsePortRange(s string) (first, last uint16, err error) {
	a, b, ok := strings.Cut(s, "-")
	if !ok {
		b = a
	}
	f, err1 := strconv.ParseUint(strings.TrimSpace(a), 10, 16)
	l, err2 := strconv.ParseUint(strings.TrimSpace(b), 10, 16)
	if err1 != nil || err2 != nil || f == 0 || l < f {
		return 0, 0, fmt.Errorf("bad port range %q: want FIRST-LAST", s)
	}
	return uint16(f), uint16(l), nil
}

func runServer(ctx context.Context, f *Factory, o *ServerOptions) error {
	level := new(slog.LevelVar)
	if err := reloadLevel(level, o.LogLevel); err != nil {
		return err
	}
	hup := reloadSignal(true) // the admin token is read again, at least
	defer stopSignal(hup)
	start := o.Server // as configured: runServer settles some of o (a port 0 picked)
	logger := f.Logger(level)
	nofile := raiseFileLimit()
	if err := os.MkdirAll(o.DataDir, 0o700); err != nil {
		return fmt.Errorf("create data directory: %w", err)
	}
	derpKey, err := loadOrCreateMachineKey(filepath.Join(o.DataDir, "derp.key"))
	if err != nil {
		return err
	}

	// One listener for the coordinator and the relay. Relay connections
	// on it ask for BBR (see internal/tcpcc).
	ln, err := tcpcc.ListenConfig().Listen(ctx, "tcp", o.Addr)
	if err != nil {
		return fmt.Errorf("listen %s: %w", o.Addr, err)
	}
	defer ln.Close()
	addr := ln.Addr().(*net.TCPAddr)
	publicURL, localURL := serverURLs(o, addr)

	var wg sync.WaitGroup
	ctx, cancel := context.WithCancel(ctx)
	defer func() { cancel(); wg.Wait() }()

	// What GET /server/setup answers, filled in as the listeners start.
	setup := &publicSetup{ServerSetup: wire.ServerSetup{Domain: o.Domain, CoordinatorPort: uint16(addr.Port)}}
	for _, ip := range o.PublicIPs {
		if a, err := netip.ParseAddr(ip); err == nil {
			setup.ServerSetup.PublicIPs = append(setup.ServerSetup.PublicIPs, a)
		}
	}

	// The relay and STUN: one region, at the public URL. The relay
	// admits the coordinator's nodes only, once the coordinator is up.
	admit := &relayAdmission{}
	relay, err := assembleRelay(withRelayLimits(derpserver.Options{PrivateKey: derpKey, Logger: logger, VerifyClient: admit.verify}, &o.RelayLimits),
		o.STUNAddr, o.STUNAltAddr, logger)
	if err != nil {
		return err
	}
	defer relay.close()
	relay.serveSTUN(ctx, &wg, logger, nil)
	derpMap := serverDERPMap(publicURL, relay, o.PublicIPs)
	setup.ServerSetup.STUNPort = pcPort(relay.stun)
	setup.ServerSetup.STUNAltPort = pcPort(relay.stunAlt)

	// The public zone.
	zone, dnsPort, err := assembleZone(ctx, &wg, o.Domain, o.Zone, logger)
	if err != nil {
		return err
	}
	setup.ServerSetup.DNSPort = dnsPort

	if o.HTTPAddr != "" {
		// Route URLs name the edge's port: pick it now if it is 0.
		if host, port, err := net.SplitHostPort(o.HTTPAddr); err == nil && port == "0" {
			l, err := net.Listen("tcp", o.HTTPAddr)
			if err != nil {
				return fmt.Errorf("edge http listen: %w", err)
			}
			o.HTTPAddr = net.JoinHostPort(host, strconv.Itoa(l.Addr().(*net.TCPAddr).Port))
			l.Close()
		}
	}

	// The coordinator, with the relay on its listener.
	base := coordinator.Options{DERPMap: derpMap, DevMode: o.Dev, KeepAliveInterval: time.Duration(o.KeepAlive), OnlineGrace: time.Duration(o.OnlineGrace)}
	base.MachineRequestRate, base.MachineRequestBurst = requestRate(o.MachineRate)
	base.NodeRequestRate, base.NodeRequestBurst = requestRate(o.NodeRate)
	base.RouteQuota = routeQuota(&o.RouteQuota)
	if err := serverEdgeOptions(&base, o, zone); err != nil {
		return err
	}
	if !o.Dev {
		base.ServerSetup = setup.get
	}
	cr, err := assembleCoordinator(ctx, coordinatorSpec{
		DataDir: o.DataDir, DB: o.DB, NodeKeyExpiry: o.NodeKeyExpiry, PolicyFile: o.PolicyFile,
		Addr: addr.String(), OIDC: &o.OIDC, Logger: logger, Options: base,
		Store: replicaStore(&o.ReplicaTimes),
	})
	if err != nil {
		return err
	}
	defer cr.close()
	coord, mux := cr.coord, cr.mux
	admit.coord.Store(coord)
	mux.Handle("/derp", relay.srv)
	mux.Handle("/derp/", relay.srv)
	mux.Handle("/generate_204", relay.srv)
	clim := connLimits(o.MaxConns, shareServerControl, nofile, controlConnsPerSource)
	logLimits(logger, "coordinator and relay", nofile, clim)
	cln, hs := limitedServer(refuseForwarded{ln}, clim, mux, logger)
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := hs.Serve(cln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			logger.Error("serve", "err", err)
			cancel()
		}
	}()
	defer hs.Close()
	forget, err := writeDiscovery(f, o.DataDir, addr, cr.machineKey.Public())
	if err != nil {
		return err
	}
	defer forget()
	if o.Dev {
		logger.Warn("DEV MODE: devices connecting from this machine join WITHOUT an auth key; do not expose this server")
	}
	if cr.tokenCreated {
		logger.Info("wrote a new admin token", "file", cr.tokenPath)
	}

	// The edge: a mesh node of its own, registered in-process.
	routes := newRouteFeed()
	en, err := joinServerEdge(ctx, coord, o.DataDir, localURL, routes, logger)
	if err != nil {
		return err
	}
	defer en.Close()
	// The coordinator ends its map streams first, while the listener
	// still serves, so that each node (the edge's too) hears when to
	// come back and the coordinator records who was streaming for its
	// next start; cr.close then finds it closed.
	defer coord.Close()
	elim := connLimits(o.EdgeMaxConns, shareServerEdge, nofile, edgeConnsPerSource)
	logLimits(logger, "edge", nofile, elim)
	var txt edge.TXTSetter
	if zone != nil {
		txt = zoneTXT{zone}
	}
	if o.ACMECA != "" && txt == nil {
		return errors.New("--acme-ca needs --dns-addr: certificates are issued by DNS-01 through the zone")
	}
	er, err := assembleEdge(ctx, edgeSpec{
		Node: en, Options: serverEdge(o, logCertStatus(o, logger)), Limits: elim, TXT: txt,
		Logger: logger, ListenerLogger: logger.With("component", "edge"),
	})
	if err != nil {
		return err
	}
	defer er.close()
	// One metrics listener serves every role's registry.
	stopTelemetry, err := startTelemetry(ctx, &o.Telemetry, logger, en.GuardListener, roleRegistry(coord.Collector()), roleRegistry(relay.srv.Collector()), er.metrics)
	if err != nil {
		return err
	}
	defer stopTelemetry()
	esrv, httpsAddr := er.srv, er.httpsAddr
	httpAddr := ""
	if a := esrv.Addr("http"); a != nil {
		httpAddr = a.String()
	}
	setup.setEdge(esrv.Addr("http"), esrv.Addr("https"), er.certs.status)
	logger.Info("beam server running", "version", version.String(), "coordinator", publicURL, "edge_http", httpAddr, "edge_https", httpsAddr, "domain", o.Domain)
	printServerNext(f, o, publicURL, httpAddr)
	if !o.Dev && len(o.PublicIPs) > 0 {
		wg.Add(1)
		go func() { defer wg.Done(); startupCheck(ctx, o, logger) }()
	}
	defer watchReload(ctx, serverReload(ctx, o, &start, hup, coord, er, level, nofile, logger))()
	if o.ready != nil {
		o.ready(addr.String(), httpAddr)
	}
	return routes.follow(ctx, esrv, logger)
}

// relayAdmission is beam server's relay client check: a node key may use
// the relay while the coordinator of the same process admits it (the
// check its wire.PathDERPVerify answers to relays elsewhere). Until the
// coordinator is set, no key is admitted.
type relayAdmission struct {
	coord atomic.Pointer[coordinator.Server]
}

// verify is a derpserver.Options.VerifyClient.
func (a *relayAdmission) verify(_ context.Context, k key.NodePublic) error {
	if c := a.coord.Load(); c != nil && c.AdmitsToRelay(k) {
		return nil
	}
	return derpserver.ErrNotAdmitted
}

// serverURLs returns the URL devices reach the coordinator and relay
// listener at addr by (--public-url, or one made of the domain or the
// address), and the one the in-process edge joins through: loopback when
// the listener is on every address, else the address it is bound to.
func serverURLs(o *ServerOptions, addr *net.TCPAddr) (publicURL, localURL string) {
	publicURL = o.PublicURL
	if publicURL == "" {
		host := o.Domain
		if o.Dev || addr.IP.IsLoopback() {
			host = addr.IP.String()
		}
		publicURL = "http://" + net.JoinHostPort(host, strconv.Itoa(addr.Port))
	}
	localHost := "127.0.0.1"
	if !addr.IP.IsUnspecified() {
		localHost = addr.IP.String()
	}
	return publicURL, "http://" + net.JoinHostPort(localHost, strconv.Itoa(addr.Port))
}

// joinServerEdge makes the node of beam server's edge (DATA/edge-node)
// and joins it to coord at localURL with an edge auth key, feeding its
// route tables to routes. The caller closes the node.
func joinServerEdge(ctx context.Context, coord *coordinator.Server, dataDir, localURL string, routes routeFeed, logger *slog.Logger) (*node.Node, error) {
	edgeKey, err := serverEdgeAuthKey(ctx, coord)
	if err != nil {
		return nil, err
	}
	en, err := node.New(node.Options{
		StateDir: filepath.Join(dataDir, "edge-node"),
		Logger:   logger.With("component", "edge-node"),
		Hostname: "edge",
		OnNetMap: routes.onNetMap,
	})
	if err != nil {
		return nil, err
	}
	if _, err := en.Up(ctx, apitype.UpRequest{Coordinator: localURL, AuthKey: edgeKey, Hostname: "edge"}); err != nil {
		en.Close()
		return nil, fmt.Errorf("edge joins the mesh: %w", err)
	}
	return en, nil
}

// serverReload is how beam server reloads on SIGHUP: the coordinator's
// policy file and log level, and the edge's limits.
func serverReload(ctx context.Context, o *ServerOptions, start *configs.Server, hup chan os.Signal, coord *coordinator.Server, er *edgeRole,
	level *slog.LevelVar, nofile uint64, logger *slog.Logger) reloadSpec[configs.Server] {
	return reloadSpec[configs.Server]{
		ConfigFile: o.ConfigFile, Defaults: configs.DefaultServer, Start: start, Cmdline: o.cmdline,
		Validate: settleServer, Logger: logger, HUP: hup,
		Apply: func(_, next *configs.Server) ([]string, error) {
			applied, err := reloadCoordinator(ctx, coord, level, next.PolicyFile, next.LogLevel, o.DataDir)
			if err != nil {
				return nil, err
			}
			er.setLimits(connLimits(next.EdgeMaxConns, shareServerEdge, nofile, edgeConnsPerSource), time.Duration(next.BodyTimeout))
			return append(applied, "edge_max_conns", "body_timeout"), nil
		},
	}
}

// settleServer completes and checks settings reloaded from a config file
// as beam server's command does at start: loopback defaults in dev mode,
// a domain, Validate, the ACME directory.
func settleServer(s *configs.Server, given func(flag string) bool) error {
	o := &ServerOptions{Server: *s}
	if o.Dev {
		o.devDefaults(given)
	}
	if o.Domain == "" {
		return errors.New("--domain is required (or use --dev)")
	}
	if err := o.Validate(); err != nil {
		return err
	}
	if err := o.settleACME(); err != nil {
		return err
	}
	*s = o.Server
	return nil
}

// serverDERPMap is beam server's relay map: one region, its relay at the
// public URL, its STUN responders at the same host (and, listening on
// both families, at the public IPs of the other family).
func serverDERPMap(publicURL string, relay *relayRole, publicIPs []string) *wire.DERPMap {
	region := &wire.DERPRegion{RegionID: 1, RegionCode: "server", Name: "beam server", Nodes: []*wire.DERPNode{{Name: "1", RegionID: 1, URL: publicURL}}}
	if relay.stun != nil {
		hostPort := strings.TrimPrefix(strings.TrimPrefix(publicURL, "http://"), "https://")
		stunHost, _, _ := strings.Cut(hostPort, ":")
		if h, _, err := net.SplitHostPort(hostPort); err == nil {
			stunHost = h
		}
		la := relay.stun.LocalAddr().(*net.UDPAddr)
		region.Nodes[0].STUNAddr = net.JoinHostPort(stunHost, strconv.Itoa(la.Port))
		if la.IP.Equal(net.IPv6unspecified) { // serves both families
			region.Nodes = append(region.Nodes, otherFamilySTUN(stunHost, uint16(la.Port), publicIPs)...)
		}
		if relay.stunAlt != nil {
			region.Nodes[0].STUNAltPort = pcPort(relay.stunAlt)
		}
	}
	return &wire.DERPMap{Regions: map[int]*wire.DERPRegion{1: region}}
}

// serverEdge returns the settings of beam server's edge, taken from the
// server's: its domain, listeners, certificates, limits and sign-in, and
// in dev mode route ports on loopback only (serverBindHost).
func serverEdge(o *ServerOptions, onCertStatus func(edge.CertStatus)) *EdgeOptions {
	return &EdgeOptions{
		Edge: configs.Edge{
			Domain: o.Domain, HTTPAddr: o.HTTPAddr, HTTPSAddr: o.HTTPSAddr, NoRedirect: o.NoRedirect, RedirectPort: o.RedirectPort,
			ACMECA: o.ACMECA, ACMECARoot: o.ACMECARoot, ACMEEmail: o.ACMEEmail, StateDir: o.DataDir,
			MaxConns: o.EdgeMaxConns, BodyTimeout: o.BodyTimeout, OIDCProvider: o.OIDCProvider,
			BindHost: serverBindHost(o),
		},
		onCertStatus: onCertStatus,
	}
}

// printServerNext tells the person who started beam server what to run
// next: how devices join, how to get an auth key, how to publish a port.
func printServerNext(f *Factory, o *ServerOptions, publicURL, httpAddr string) {
	w := f.Out
	fmt.Fprintf(w, "beam server is running: coordinator and relay at %s", publicURL)
	if httpAddr != "" {
		fmt.Fprintf(w, ", edge at http://%s", httpAddr)
	}
	fmt.Fprintf(w, "; data in %s", o.DataDir)
	if o.DB != "" {
		fmt.Fprintf(w, ", database %s", describeDB(o.DataDir, o.DB))
	}
	fmt.Fprintln(w)
	printConsoleURL(w, publicURL, o.DataDir)
	if !o.Dev {
		printPublicSetup(w, o, publicURL)
	}
	fmt.Fprintf(w, "\nNext:\n")
	if o.Dev {
		fmt.Fprintf(w, "  join a device on this machine (dev mode: no auth key):\n    beam up --coordinator %s --hostname NAME --state DIR --socket DIR/beamd.sock\n", publicURL)
	}
	fmt.Fprintf(w, "  create an auth key (on this machine, as this user; beam admin finds the server):\n    beam admin authkey create --reusable --expiry 24h\n")
	fmt.Fprintf(w, "  join a device with it:\n    beam up --coordinator %s --authkey KEY --hostname NAME\n", publicURL)
	fmt.Fprintf(w, "  publish a port of a joined device:\n    beam expose PORT\n")
}

// zoneTXT adapts the zone to the certificate manager's TXT setter.
type zoneTXT struct{ z *dnsserver.Zone }

func (t zoneTXT) SetTXT(name string, values []string) { t.z.SetTXT(name, values) }
func (t zoneTXT) DeleteTXT(name string)               { t.z.DeleteTXT(name) }

// otherFamilySTUN returns STUN-only relay map nodes for the public
// addresses (--public-ip) of the family that the relay's STUN host, an IP
// literal, is not of: a server reached at its IPv4 address tells nodes its
// IPv6 one too, so they learn their IPv6 endpoints. A host name needs none:
// nodes look up both of its families.
func otherFamilySTUN(stunHost string, port uint16, publicIPs []string) []*wire.DERPNode {
	host, err := netip.ParseAddr(stunHost)
	if err != nil {
		return nil
	}
	var out []*wire.DERPNode
	for _, s := range publicIPs {
		ip, err := netip.ParseAddr(s)
		if err != nil || ip.Is4() == host.Is4() {
			continue
		}
		out = append(out, &wire.DERPNode{
			Name: fmt.Sprintf("1%c", 'b'+len(out)), RegionID: 1, STUNOnly: true,
			STUNAddr: netip.AddrPortFrom(ip, port).String(),
		})
	}
	return out
}
