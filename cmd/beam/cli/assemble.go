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
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"beam.dev/beam/configs"
	"beam.dev/beam/coordinator"
	"beam.dev/beam/coordinator/console"
	"beam.dev/beam/coordinator/sqlstore"
	"beam.dev/beam/derp/derpserver"
	"beam.dev/beam/dnsserver"
	"beam.dev/beam/edge"
	"beam.dev/beam/edgenode"
	"beam.dev/beam/internal/connlimit"
	"beam.dev/beam/node"
	"beam.dev/beam/types/key"
)

// One assembly per role. beam coordinator, beam derp and beam edge each
// run one; beam server runs the coordinator, relay, zone and edge
// assemblies in one process, sharing one listener between the
// coordinator and the relay. An assembly builds its role from the role's
// settings and what the command hands it (a listener's address, a node
// that has joined), and does not serve HTTP itself: the command mounts
// the handlers on its listener.

// coordinatorSpec is what a command gives assembleCoordinator.
type coordinatorSpec struct {
	// DataDir holds coordinator.db, coordinator.key, admin.token and
	// relay.token, created on first start.
	DataDir string
	// DB is the PostgreSQL URL of the database (--db); empty means SQLite,
	// DataDir/coordinator.db.
	DB string
	// Store holds the database's settings besides DB.
	Store sqlstore.Options
	// NodeKeyExpiry and PolicyFile are as configs.Coordinator's.
	NodeKeyExpiry, PolicyFile string
	// Addr is the listener's address, for OIDC's default redirect URL.
	Addr string
	// OIDC is the --oidc-* settings; nil or without an issuer: none.
	OIDC   *configs.OIDC
	Logger *slog.Logger
	// Options holds the role's own settings (relay map, edge, base
	// domain, dev mode, server setup); assembleCoordinator fills in the
	// store, keys, tokens, logger, key expiry and approver.
	Options coordinator.Options
}

// coordinatorRole is an assembled coordinator: its store, the server, and
// the console and sign-in on one mux with it.
type coordinatorRole struct {
	coord *coordinator.Server
	// mux serves the coordinator at /, the console and the sign-in.
	mux          *http.ServeMux
	machineKey   key.MachinePrivate
	tokenPath    string
	tokenCreated bool
	store        *sqlstore.Store
}

// assembleCoordinator opens (or creates) the data directory and builds
// the coordinator, applies --policy-file, and mounts the console.
func assembleCoordinator(ctx context.Context, spec coordinatorSpec) (_ *coordinatorRole, err error) {
	if spec.DataDir == "" {
		return nil, errors.New("--data must not be empty")
	}
	if err := os.MkdirAll(spec.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("create data directory: %w", err)
	}
	r := &coordinatorRole{tokenPath: filepath.Join(spec.DataDir, "admin.token")}
	if r.machineKey, err = loadOrCreateMachineKey(filepath.Join(spec.DataDir, "coordinator.key")); err != nil {
		return nil, err
	}
	token, created, err := loadOrCreateToken(r.tokenPath, "admin token")
	if err != nil {
		return nil, err
	}
	r.tokenCreated = created
	relayToken, _, err := loadOrCreateToken(filepath.Join(spec.DataDir, "relay.token"), "relay token")
	if err != nil {
		return nil, err
	}
	if r.store, err = openCoordinatorStore(ctx, spec.DataDir, spec.DB, spec.Store); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			r.close()
		}
	}()
	nodeExpiry, err := parseNodeKeyExpiry(spec.NodeKeyExpiry)
	if err != nil {
		return nil, err
	}
	copts := spec.Options
	copts.Store = r.store
	copts.PrivateKey = r.machineKey
	copts.Logger = spec.Logger // the coordinator names itself
	copts.AdminToken = token
	copts.RelayToken = relayToken
	copts.NodeKeyExpiry = nodeExpiry
	copts.Approver = console.Approver{} // approval URLs lead to the console
	oidcOpts := spec.OIDC
	if oidcOpts == nil {
		oidcOpts = &configs.OIDC{}
	}
	oidc, err := newOIDC(ctx, oidcOpts, spec.Addr, spec.Logger)
	if err != nil {
		return nil, err
	}
	if oidc != nil {
		copts.Approver = oidc // approval URLs lead to the sign-in
		copts.AdminAuth = oidc.adminAuth
	}
	if r.coord, err = coordinator.New(copts); err != nil {
		return nil, err
	}
	if err := applyPolicyFile(ctx, r.coord, spec.PolicyFile); err != nil {
		return nil, err
	}
	con, err := console.New(console.Options{Coordinator: r.coord, Logger: spec.Logger, SSOURL: oidc.adminURL(), AdminAuth: copts.AdminAuth})
	if err != nil {
		return nil, err
	}
	r.mux = http.NewServeMux()
	r.mux.Handle(console.Path, con)
	r.mux.Handle("/", r.coord)
	if oidc != nil {
		if err := oidc.attach(r.coord, con, r.mux, spec.Logger); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// close stops the coordinator and closes its store.
func (r *coordinatorRole) close() {
	if r.coord != nil {
		r.coord.Close()
	}
	if r.store != nil {
		r.store.Close()
	}
}

// relayRole is an assembled relay: the server and its STUN responders,
// bound but not yet serving. The command mounts srv on its mux.
type relayRole struct {
	srv           *derpserver.Server
	stun, stunAlt net.PacketConn // nil when disabled
}

// assembleRelay builds a relay with opts and binds its STUN responders
// (stunAddr "" disables them; stunAlt as --stun-alt-addr).
func assembleRelay(opts derpserver.Options, stunAddr, stunAlt string, logger *slog.Logger) (_ *relayRole, err error) {
	r := &relayRole{}
	defer func() {
		if err != nil {
			r.close()
		}
	}()
	if stunAddr != "" {
		if r.stun, err = net.ListenPacket("udp", stunAddr); err != nil {
			return nil, fmt.Errorf("listen STUN: %w", err)
		}
	}
	if r.stunAlt, err = listenSTUNAlt(r.stun, stunAddr, stunAlt, logger); err != nil {
		return nil, err
	}
	r.srv = derpserver.New(opts)
	return r, nil
}

// serveSTUN answers STUN on the relay's responders until ctx ends, in
// goroutines wg waits for; onErr is told why one stopped early.
func (r *relayRole) serveSTUN(ctx context.Context, wg *sync.WaitGroup, logger *slog.Logger, onErr func(error)) {
	for _, s := range []struct {
		pc   net.PacketConn
		what string
	}{{r.stun, "serve STUN"}, {r.stunAlt, "serve second STUN port"}} {
		if s.pc == nil {
			continue
		}
		wg.Go(func() {
			if err := r.srv.ServeSTUN(ctx, s.pc); err != nil && onErr != nil {
				onErr(fmt.Errorf("%s: %w", s.what, err))
			}
		})
	}
}

// pcPort returns the port of pc, 0 if nil.
func pcPort(pc net.PacketConn) uint16 {
	if pc == nil {
		return 0
	}
	return uint16(pc.LocalAddr().(*net.UDPAddr).Port)
}

// close stops the relay and its responders.
func (r *relayRole) close() {
	if r.srv != nil {
		r.srv.Close()
	}
	for _, pc := range []net.PacketConn{r.stun, r.stunAlt} {
		if pc != nil {
			pc.Close()
		}
	}
}

// assembleZone starts the public DNS zone for domain on z.DNSAddr (UDP
// and TCP) until ctx ends, in goroutines wg waits for. It returns the zone
// and its UDP port; a nil zone when z.DNSAddr is "".
func assembleZone(ctx context.Context, wg *sync.WaitGroup, domain string, z configs.Zone, logger *slog.Logger) (*dnsserver.Zone, uint16, error) {
	if z.DNSAddr == "" {
		return nil, 0, nil
	}
	var edgeAddrs []netip.Addr
	for _, s := range z.PublicIPs {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, 0, fmt.Errorf("bad --public-ip %q", s)
		}
		edgeAddrs = append(edgeAddrs, a)
	}
	zone := dnsserver.NewZone(dnsserver.ZoneOptions{Origin: domain, NS: []string{"ns1." + domain}, EdgeAddrs: edgeAddrs, Logger: logger})
	pc, err := net.ListenPacket("udp", z.DNSAddr)
	if err != nil {
		return nil, 0, fmt.Errorf("dns listen: %w", err)
	}
	zln, err := net.Listen("tcp", z.DNSAddr)
	if err != nil {
		pc.Close()
		return nil, 0, fmt.Errorf("dns listen: %w", err)
	}
	wg.Go(func() { zone.ServePacket(ctx, pc) })
	wg.Go(func() { zone.ServeStream(ctx, zln) })
	return zone, pcPort(pc), nil
}

// edgeSpec is what a command gives assembleEdge.
type edgeSpec struct {
	// Node has joined the mesh: the edge reaches devices through it.
	Node *node.Node
	// Options is the edge's settings (beam server derives them from its
	// own: serverEdge).
	Options *EdgeOptions
	// Limits caps the edge's client connections.
	Limits connlimit.Limits
	// TXT publishes ACME DNS-01 challenges.
	TXT edge.TXTSetter
	// WarnNoHTTPS logs when the HTTPS listener is off for want of
	// certificates.
	WarnNoHTTPS bool
	Logger      *slog.Logger
	// ListenerLogger is the logger of the edge's listeners.
	ListenerLogger *slog.Logger
}

// edgeRole is an assembled edge, serving on its listeners.
type edgeRole struct {
	e     *edge.Edge
	srv   *edgenode.Server
	rep   *edgenode.Reporter
	certs edgeCerts
	// metrics is the registry of the edge and its node.
	metrics *prometheus.Registry
	// httpsAddr is the TLS listener's address setting, "" when off.
	httpsAddr string
}

// assembleEdge builds the edge on spec.Node, gets its certificates and
// opens its listeners.
func assembleEdge(ctx context.Context, spec edgeSpec) (_ *edgeRole, err error) {
	o, logger, n := spec.Options, spec.Logger, spec.Node
	r := &edgeRole{}
	defer func() {
		if err != nil {
			r.close()
		}
	}()
	r.rep = edgenode.NewReporter(n.DialContext, logger.With("component", "edge-report"))
	signIn, err := edgeSignIn(&o.OIDCProvider, logger)
	if err != nil {
		return nil, err
	}
	if r.e, err = newEdge(n.DialContext, o.Domain, spec.Limits, time.Duration(o.BodyTimeout), r.rep, signIn, logger); err != nil {
		return nil, err
	}
	r.metrics = roleRegistry(r.e.Collector(), n.Collector())
	if r.certs, err = edgeCertificates(ctx, o, r.e, spec.TXT, logger, r.metrics); err != nil {
		return nil, err
	}
	r.httpsAddr = o.HTTPSAddr
	if r.certs.get == nil {
		if r.httpsAddr != "" && spec.WarnNoHTTPS {
			logger.Warn("no --acme-ca or --tls-cert: HTTPS listener disabled")
		}
		r.httpsAddr = ""
	}
	r.srv, err = edgenode.New(edgenode.Options{
		Edge: r.e, HTTPAddr: o.HTTPAddr, HTTPSAddr: r.httpsAddr, GetCertificate: r.certs.get,
		BindHost: o.BindHost, Reporter: r.rep, Logger: spec.ListenerLogger,
	})
	if err != nil {
		return nil, err
	}
	redirectToHTTPS(r.e, r.srv, !o.NoRedirect, o.RedirectPort)
	return r, nil
}

// setLimits changes the edge's connection caps and body timeout while it
// runs, keeping its connections.
func (r *edgeRole) setLimits(lim connlimit.Limits, bodyTimeout time.Duration) {
	var o edge.Options
	edgeLimits(&o, lim, bodyTimeout)
	r.e.SetLimits(edge.Limits{MaxConns: o.MaxConns, MaxConnsPerClient: o.MaxConnsPerClient, BodyTimeout: o.BodyTimeout})
}

// close closes the listeners, the edge, its certificate renewals and its
// reporter.
func (r *edgeRole) close() {
	if r.srv != nil {
		r.srv.Close()
	}
	if r.certs.close != nil {
		r.certs.close()
	}
	if r.e != nil {
		r.e.Close()
	}
	if r.rep != nil {
		r.rep.Close()
	}
}
