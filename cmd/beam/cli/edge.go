package cli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"

	"beam.dev/beam/configs"
	"beam.dev/beam/coordclient"
	"beam.dev/beam/edge"
	"beam.dev/beam/edgenode"
	"beam.dev/beam/internal/connlimit"
	"beam.dev/beam/localapi/apitype"
	"beam.dev/beam/node"
	"beam.dev/beam/wire"
)

// EdgeOptions are the settings of beam edge: its flags and config file
// fill the configs.Edge.
type EdgeOptions struct {
	configs.Edge
	// ConfigFile is --config.
	ConfigFile string
	// cmdline holds the config keys the command line set.
	cmdline []string

	// onCertStatus, if set, is told each change of the ACME wildcard
	// certificate's status (beam server explains failed orders).
	onCertStatus func(edge.CertStatus)
}

// NewCmdEdge returns the beam edge command: a public ingress that is a
// mesh node of its own.
func NewCmdEdge(f *Factory, in *instanceFlags, runF func(*EdgeOptions) error) *cobra.Command {
	o := &EdgeOptions{}
	cmd := &cobra.Command{
		Use:   "edge",
		Short: "Run a public edge: HTTP(S), TLS passthrough, TCP and UDP routes into the mesh",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			given, err := loadConfig(cmd.Flags(), f.ErrOut, o.ConfigFile, &o.Edge)
			if err != nil {
				return err
			}
			o.cmdline = cmdlineKeys(cmd.Flags())
			// --state or BEAM_STATE win over the file's state.
			if !given("state") || in.state != "" || f.getenv("BEAM_STATE") != "" {
				o.StateDir = in.stateDir(f)
			}
			if o.AuthKey == "" {
				o.AuthKey = f.getenv("BEAM_AUTHKEY")
			}
			if o.Domain == "" {
				return errors.New("--domain is required")
			}
			if err := o.Validate(); err != nil {
				return err
			}
			if err := checkTelemetry(&o.Telemetry); err != nil {
				return err
			}
			if runF != nil {
				return runF(o)
			}
			return runEdge(cmd.Context(), f, o)
		},
	}
	fl := cmd.Flags()
	def := configs.DefaultEdge()
	fl.StringVar(&o.ConfigFile, "config", "", configUsage)
	fl.StringVar(&o.Coordinator, "coordinator", "", "coordinator URL (several replicas on one database: comma-separated)")
	fl.StringVar(&o.AuthKey, "authkey", "", "an edge auth key (beam admin authkey create --edge) (env BEAM_AUTHKEY)")
	fl.StringVar(&o.Domain, "domain", "", "the public domain routes live under (NAME.DOMAIN)")
	fl.StringVar(&o.HTTPAddr, "http-addr", def.HTTPAddr, "plain HTTP listener (\"\" disables)")
	fl.StringVar(&o.HTTPSAddr, "https-addr", def.HTTPSAddr, "TLS listener (\"\" disables); needs --acme-ca or --tls-cert")
	fl.BoolVar(&o.NoRedirect, "no-https-redirect", false, "serve http routes over plain HTTP too, instead of redirecting to HTTPS")
	fl.Uint16Var(&o.RedirectPort, "https-redirect-port", 0, "port the HTTPS redirect names, where clients reach --https-addr through a port mapping (0: the listener's own)")
	fl.StringVar(&o.BindHost, "bind-host", "", "address TCP and UDP route ports listen on (default all)")
	fl.StringVar(&o.ACMECA, "acme-ca", "", "ACME directory URL for certificates (wildcard by DNS-01 through the coordinator's zone)")
	fl.StringVar(&o.ACMECARoot, "acme-ca-root", "", "PEM file of the root that signs the ACME server's HTTPS certificate")
	fl.StringVar(&o.ACMEEmail, "acme-email", "", "ACME account contact")
	fl.StringVar(&o.TLSCert, "tls-cert", "", "a fixed certificate (PEM) instead of ACME")
	fl.StringVar(&o.TLSKey, "tls-key", "", "the key of --tls-cert")
	fl.Uint16Var(&o.Port, "port", 0, "UDP port for WireGuard (0 picks one)")
	fl.StringVar(&o.Hostname, "hostname", def.Hostname, "this edge's node name")
	fl.StringVar(&o.LogLevel, "log-level", def.LogLevel, "debug, info, warn or error")
	fl.IntVar(&o.MaxConns, "max-conns", 0, "cap on client connections of all listeners (0: 3/4 of the open files limit; -1: none)")
	fl.DurationVar((*time.Duration)(&o.BodyTimeout), "body-timeout", time.Duration(def.BodyTimeout), "longest wait for a byte of a request body, and grace before it must arrive at 1 KiB/s or more")
	registerTelemetry(fl, &o.Telemetry)
	registerOIDCProvider(fl, &o.OIDCProvider, "routes exposed with --oidc sign people in there (register https://ROUTE/.beam/oidc/callback)")
	return cmd
}

// edgeTXT publishes ACME challenges through the node's coordinator.
type edgeTXT struct {
	n      *node.Node
	logger *slog.Logger
}

func (t edgeTXT) SetTXT(name string, values []string) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := t.n.SetTXT(ctx, name, values); err != nil {
		t.logger.Warn("publish ACME TXT record", "name", name, "err", err)
	}
}

func (t edgeTXT) DeleteTXT(name string) { t.SetTXT(name, nil) }

func runEdge(ctx context.Context, f *Factory, o *EdgeOptions) error {
	level := new(slog.LevelVar)
	if err := reloadLevel(level, o.LogLevel); err != nil {
		return err
	}
	hup := reloadSignal(o.ConfigFile != "")
	defer stopSignal(hup)
	logger := f.Logger(level)
	nofile := raiseFileLimit()
	routes := newRouteFeed()
	n, err := node.New(node.Options{
		StateDir:   o.StateDir,
		Logger:     logger,
		ListenPort: o.Port,
		Hostname:   o.Hostname,
		OnNetMap:   routes.onNetMap,
	})
	if err != nil {
		return err
	}
	defer n.Close()
	if _, err := n.Up(ctx, apitype.UpRequest{Coordinator: o.Coordinator, AuthKey: o.AuthKey, Hostname: o.Hostname}); err != nil {
		return fmt.Errorf("join the mesh: %w", err)
	}
	if err := checkEdgeDomain(ctx, n, o.Coordinator); err != nil {
		return err
	}
	lim := connLimits(o.MaxConns, shareAlone, nofile, edgeConnsPerSource)
	logLimits(logger, "edge", nofile, lim)
	er, err := assembleEdge(ctx, edgeSpec{
		Node: n, Options: o, Limits: lim, TXT: edgeTXT{n: n, logger: logger},
		WarnNoHTTPS: true, Logger: logger, ListenerLogger: logger,
	})
	if err != nil {
		return err
	}
	defer er.close()
	stopTelemetry, err := startTelemetry(ctx, &o.Telemetry, logger, n.GuardListener, er.metrics)
	if err != nil {
		return err
	}
	defer stopTelemetry()
	srv, httpsAddr := er.srv, er.httpsAddr
	if hup != nil {
		start := o.Edge
		defer watchReload(ctx, reloadSpec[configs.Edge]{
			ConfigFile: o.ConfigFile, Defaults: configs.DefaultEdge, Start: &start, Cmdline: o.cmdline,
			Validate: func(next *configs.Edge, given func(string) bool) error {
				// What came from the environment at start stays.
				if !given("authkey") {
					next.AuthKey = start.AuthKey
				}
				if !given("state") {
					next.StateDir = start.StateDir
				}
				return next.Validate()
			},
			Logger: logger,
			HUP:    hup,
			Apply: func(_, next *configs.Edge) ([]string, error) {
				if err := reloadLevel(level, next.LogLevel); err != nil {
					return nil, err
				}
				er.setLimits(connLimits(next.MaxConns, shareAlone, nofile, edgeConnsPerSource), time.Duration(next.BodyTimeout))
				return []string{"log_level", "max_conns", "body_timeout"}, nil
			},
		})()
	}
	logger.Info("edge running", "domain", o.Domain, "http", o.HTTPAddr, "https", httpsAddr)
	return routes.follow(ctx, srv, logger)
}

// checkEdgeDomain refuses to run an edge whose coordinator has no edge
// domain: it would serve no routes, and every beam expose would fail. It
// asks the coordinator to publish a route for the edge node, which a
// coordinator with an edge domain refuses without changing anything
// (edges expose nothing) and one without answers edge_disabled.
func checkEdgeDomain(ctx context.Context, n *node.Node, coord string) error {
	_, err := n.Expose(ctx, apitype.ExposeRequest{Port: 1, Proto: "http"})
	var ce *coordclient.Error
	if errors.As(err, &ce) && ce.Code == wire.CodeEdgeDisabled {
		return fmt.Errorf("the coordinator at %s has no edge domain, so this edge would serve nothing and beam expose would fail: start the coordinator with --edge-domain DOMAIN (the --domain of this edge), or run beam server, which is coordinator and edge in one", coord)
	}
	return nil
}

// routeFeed carries the latest edge route table from a node's netmaps to
// the edge's listeners; older tables not yet taken are dropped.
type routeFeed chan []wire.EdgeRoute

func newRouteFeed() routeFeed { return make(routeFeed, 1) }

// onNetMap is a node.Options.OnNetMap that feeds the routes.
func (f routeFeed) onNetMap(nm *wire.NetMap) {
	select {
	case <-f:
	default:
	}
	f <- nm.EdgeRoutes
}

// follow applies route tables to srv until ctx ends.
func (f routeFeed) follow(ctx context.Context, srv *edgenode.Server, logger *slog.Logger) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case rs := <-f:
			if err := srv.Update(rs); err != nil {
				logger.Warn("routes", "err", err)
			}
		}
	}
}

// redirectToHTTPS makes e redirect plain-HTTP requests of http routes to
// the HTTPS listener of srv, when on and srv has one, naming port (see
// redirectPort).
func redirectToHTTPS(e *edge.Edge, srv *edgenode.Server, on bool, port uint16) {
	if p := redirectPort(srv.Addr("https"), port); on && p != 0 {
		e.SetHTTPSRedirect(p)
	}
}

// redirectPort is the port a redirect to the HTTPS listener https names:
// override if set (clients reach the listener through a port mapping),
// else the listener's own; 0 if there is no HTTPS listener.
func redirectPort(https net.Addr, override uint16) uint16 {
	a, ok := https.(*net.TCPAddr)
	switch {
	case !ok:
		return 0
	case override != 0:
		return override
	default:
		return uint16(a.Port)
	}
}

// newEdge returns an edge for domain that reaches devices through dial,
// logging each request at debug level and telling rep about each.
func newEdge(dial func(ctx context.Context, network, addr string) (net.Conn, error), domain string, lim connlimit.Limits, bodyTimeout time.Duration, rep *edgenode.Reporter, signIn edge.SignIn, logger *slog.Logger) (*edge.Edge, error) {
	opts := edge.Options{
		Dial:   dial,
		Domain: domain,
		SignIn: signIn,
		Logger: logger.With("component", "edge"),
		OnRequest: func(l edge.RequestLog) {
			// The check spares every request the six allocations of
			// boxing the attributes for a line that is not written.
			if logger.Enabled(context.Background(), slog.LevelDebug) {
				logger.Debug("request", "host", l.Host, "method", l.Method, "path", l.Path, "status", l.Status, "duration", l.Duration, "client", l.ClientIP)
			}
			rep.Observe(l)
		},
	}
	edgeLimits(&opts, lim, bodyTimeout)
	return edge.New(opts)
}

// edgeCerts is the edge's TLS certificate source.
type edgeCerts struct {
	// get is the GetCertificate of the edge's TLS listener; nil means no
	// certificates (no HTTPS).
	get func(*tls.ClientHelloInfo) (*tls.Certificate, error)
	// status is the ACME wildcard certificate's status; nil when the
	// certificates do not come from ACME.
	status func() edge.CertStatus
	// close stops renewals.
	close func()
}

// edgeCertificates returns the TLS certificate source for the edge: a
// fixed certificate, an ACME manager, or none.
func edgeCertificates(ctx context.Context, o *EdgeOptions, e *edge.Edge, txt edge.TXTSetter, logger *slog.Logger, reg prometheus.Registerer) (edgeCerts, error) {
	switch {
	case o.TLSCert != "":
		cert, err := tls.LoadX509KeyPair(o.TLSCert, o.TLSKey)
		if err != nil {
			return edgeCerts{}, fmt.Errorf("load --tls-cert: %w", err)
		}
		return edgeCerts{get: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return &cert, nil }, close: func() {}}, nil
	case o.ACMECA != "":
		var roots *x509.CertPool
		if o.ACMECARoot != "" {
			pem, err := os.ReadFile(o.ACMECARoot)
			if err != nil {
				return edgeCerts{}, fmt.Errorf("read --acme-ca-root: %w", err)
			}
			roots = x509.NewCertPool()
			if !roots.AppendCertsFromPEM(pem) {
				return edgeCerts{}, fmt.Errorf("--acme-ca-root %s holds no PEM certificate", o.ACMECARoot)
			}
		}
		cm, err := edge.NewCertManager(edge.CertOptions{
			Domain:        o.Domain,
			TXT:           txt,
			DirectoryURL:  o.ACMECA,
			TrustedRoots:  roots,
			Email:         o.ACMEEmail,
			StorageDir:    filepath.Join(o.StateDir, "certs"),
			OnDemand:      e.HasHTTPRoute,
			TLSListenAddr: o.HTTPSAddr,
			OnStatus:      o.onCertStatus,
			Logger:        logger.With("component", "acme"),
		})
		if err != nil {
			return edgeCerts{}, err
		}
		if reg != nil {
			reg.MustRegister(cm.Collector())
		}
		go func() {
			if err := cm.ManageWildcard(ctx); err != nil && ctx.Err() == nil {
				logger.Warn("wildcard certificate", "err", err)
			}
		}()
		return edgeCerts{get: cm.GetCertificate, status: cm.Status, close: func() { cm.Close() }}, nil
	}
	return edgeCerts{close: func() {}}, nil
}
