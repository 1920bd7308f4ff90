// Package node is the Beam daemon: it keeps the node's identity and state,
// registers with the coordinator, streams the netmap and turns each one
// into the engine's configuration and MagicDNS records, and offers the
// operations the local API exposes (up, down, logout, status, dial).
package node

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"beam.dev/beam/coordclient"
	"beam.dev/beam/dnsserver"
	"beam.dev/beam/expose"
	"beam.dev/beam/hostdns"
	"beam.dev/beam/localapi/apitype"
	"beam.dev/beam/netstack"
	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// Options configures a Node.
type Options struct {
	// StateDir holds the node's state (private key, last netmap). Required.
	// New creates it (0700) if needed and locks it while the node lives:
	// a second Node on the same directory fails with *StateInUseError.
	StateDir string
	// Socket is the local API socket the daemon serves; it is recorded
	// with the state lock so a refused second daemon can name it. May be
	// empty.
	Socket string
	// Logger receives the daemon's logs; nil discards them.
	Logger *slog.Logger
	// ListenPort is the UDP port for WireGuard; 0 picks one.
	ListenPort uint16
	// DNSUpstreams are the resolvers MagicDNS forwards other names to when
	// the coordinator names none (usually the host's /etc/resolv.conf).
	DNSUpstreams []netip.AddrPort
	// HTTPClient reaches the coordinator; nil uses a default client.
	HTTPClient *http.Client
	// Hostname is the default hostname to register; empty uses os.Hostname
	// as given by the caller.
	Hostname string
	// UpTimeout bounds how long Up waits for the first netmap; 0 means 30s.
	UpTimeout time.Duration
	// WireGuardName, if set, serves the engine's device read-only at
	// /var/run/wireguard/NAME.sock, where `wg show NAME` and wgctrl find it.
	WireGuardName string
	// TUN, if not empty, runs the data plane in kernel TUN mode on a device
	// of this name (see netstack.Options.TUN; needs root or
	// CAP_NET_ADMIN): apps on the host reach the overlay directly, and
	// peers reach the host's own sockets. Empty: the userspace stack.
	TUN string
	// PortMapping and PortMapLifetime are netstack.Options.PortMapping
	// and PortMapLifetime: ask the NAT gateway for a mapping of the
	// WireGuard port and advertise it. Off by default.
	PortMapping     bool
	PortMapLifetime time.Duration
	// PeerRelay bounds the peer relay server the RelayServer setting
	// (beam set --relay-server) runs; its Port is the setting's. Zero
	// fields are netstack's defaults.
	PeerRelay netstack.PeerRelayOptions
	// NoHostForward keeps peers' connections and flows to ports no
	// listener in the engine claims from reaching the host's loopback
	// (see netstack.Options.NoHostForward): for a program that embeds
	// the node and serves peers only on its own listeners (Listen).
	NoHostForward bool
	// OnNetMap, if non-nil, is called with every netmap from the
	// coordinator, in order, outside the node's locks. An edge uses it to
	// follow its routes. It must not modify the netmap.
	OnNetMap func(*wire.NetMap)

	// ACMEDirectoryURL, if set, makes the daemon terminate TLS itself for
	// its own "tls" routes, with a certificate for each route host that it
	// obtains (and renews) from this ACME directory by DNS-01 through the
	// coordinator's zone, stored under StateDir/certs. Empty: tls routes
	// pass the TLS stream through to the app, which terminates it.
	ACMEDirectoryURL string
	// ACMETrustedRoots, if not nil, are the roots trusted for the ACME
	// server's HTTPS (a private CA); nil means the system roots.
	ACMETrustedRoots *x509.CertPool
	// ACMEEmail is the ACME account's contact; may be empty.
	ACMEEmail string

	// InspectorPort is the first port the request inspector tries on
	// 127.0.0.1 (the next ones if taken); 0 means DefaultInspectorPort.
	InspectorPort uint16
	// InspectorBodyLimit caps each request and response body the
	// inspector keeps; 0 means expose.DefaultBodyLimit.
	InspectorBodyLimit int
}

// Node is the daemon. Create it with New, start it with Start, and stop it
// with Close.
//
// Goroutines: Start's session goroutine (one at a time, owned by the
// session and waited for in stopSessionLocked), the MagicDNS servers (owned
// by the session), and the expiry ticker (inside the session).
type Node struct {
	opts     Options
	logger   *slog.Logger
	resolver *dnsserver.Resolver

	ctx    context.Context // canceled by Close
	cancel context.CancelFunc
	lock   *stateLock // held from New to Close

	upMu sync.Mutex // serializes Up, Down, Logout

	mu            sync.Mutex // guards the following fields
	st            *persisted
	state         apitype.State
	engine        *netstack.Engine
	sess          *session
	netmap        *wire.NetMap
	lastEngineCfg *netstack.Config                 // the last config applied, without its peers
	enginePeers   map[key.NodePublic]netstack.Peer // the peers the engine has, by key (with lastEngineCfg)
	engineNM      *wire.NetMap                     // the netmap enginePeers were made from
	engineUntil   time.Time                        // and when its first key expires (local clock)
	edgeNM        *wire.NetMap                     // the netmap edgeAddrs were taken from
	edgeAddrs     []netip.Addr                     // the overlay addresses of its edge nodes
	filters       filterCache                      // converts the netmap's filter, reusing what did not change
	lastRecords   *dnsserver.Records               // the last MagicDNS records set (applyLocked runs every second)
	recordsNM     *wire.NetMap                     // the netmap lastRecords were built from by applyLocked
	recordsUps    []netip.AddrPort                 // and the upstreams
	recordsUntil  time.Time                        // and when the first key of that netmap expires (local clock)
	controlOnline bool
	lastErr       string
	hosts         hostServers // SOCKS5, HTTP proxy and MagicDNS on host loopback
	allowInbound  []uint16
	authURL       string // pending interactive approval
	authCode      string
	discoKey      key.DiscoPrivate // per-process disco key
	curClient     atomic.Pointer[coordclient.Client]
	eps           atomic.Pointer[endpointsReport]
	uapiStop      func()        // stops the UAPI socket, if served
	streamNM      *wire.NetMap  // the last netmap from the coordinator itself
	nmChanged     chan struct{} // closed and replaced at each netmap from the coordinator

	// keyRefused is the coordinator's machine key change the node
	// refused last (map stream or beam up), until a map arrives, a
	// registration succeeds or the node logs out; nil if none.
	keyRefused *apitype.KeyChange

	hostDNS *hostdns.Manager // the host's resolver in TUN mode; nil otherwise (hostdns.go)
	// netmapProblem is what checkNetMapLocked last logged.
	netmapProblem string

	own ownListeners // the daemon's loopback listeners, kept from peers (ownlisteners.go)
	met nodeMetrics  // metrics.go

	exp *expose.Server // the device side of this node's edge routes
	// uninspected are the local ports whose routes were published with
	// Inspect off, kept out of the inspector; guarded by mu.
	uninspected map[uint16]bool
	// routeApps are in-process apps of routes, by local port (embed.go);
	// guarded by mu.
	routeApps map[uint16]expose.AppDialer

	inspMu sync.Mutex       // guards insp
	insp   *inspectorServer // the request inspector, once asked for (inspector.go)
}

// session is one run of the control loop and the engine's use of it.
type session struct {
	cancel   context.CancelFunc
	done     chan struct{} // closed when all session goroutines exited
	firstMap chan struct{} // closed at the first netmap
	client   *coordclient.Client
	err      error // set before done is closed

	dnsCtx    context.Context
	dnsStop   context.CancelFunc
	dnsWG     sync.WaitGroup
	dnsServed map[netip.Addr]bool // guarded by Node.mu
}

// New returns a Node with its state loaded from opts.StateDir.
func New(opts Options) (*Node, error) {
	if opts.StateDir == "" {
		return nil, errors.New("node: StateDir is required")
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	lock, err := lockStateDir(opts.StateDir, opts.Socket)
	if err != nil {
		return nil, err
	}
	// A TUN-mode run that crashed may have left the host's resolver
	// pointing at its MagicDNS: put it back first.
	if err := hostdns.Recover(opts.StateDir, logger); err != nil {
		logger.Warn("restore the host's DNS settings a previous run left", "err", err)
	}
	st, err := loadState(opts.StateDir)
	if err != nil {
		lock.release()
		return nil, err
	}
	n := &Node{opts: opts, logger: logger, st: st, discoKey: key.NewDisco(), lock: lock}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	n.own.logRate.Interval = 10 * time.Second
	n.exp = expose.New(expose.Options{
		Logger:           logger,
		ACMEDirectoryURL: opts.ACMEDirectoryURL,
		ACMETrustedRoots: opts.ACMETrustedRoots,
		ACMEEmail:        opts.ACMEEmail,
		CertDir:          filepath.Join(opts.StateDir, "certs"),
		SetTXT:           n.setTXTNow,
	})
	n.resolver = dnsserver.NewResolver(dnsserver.ResolverOptions{
		Logger:      logger.With("component", "dns"),
		Dial:        n.dialForDNS,
		AllowSource: func(a netip.Addr) bool { return allowDNSSource(a) && (a.Unmap().IsLoopback() || n.isOverlay(a)) },
		AllowClient: n.allowDNSClient,
		OnServe:     n.setOwnListener,
	})
	n.lastRecords = dnsRecords(st.NetMap, time.Now(), n.upstreamsLocked())
	n.resolver.SetRecords(n.lastRecords)
	if st.Unknown {
		n.lastErr = unknownNodeError(st.Coordinator).Error()
	}
	switch {
	case st.Registered && st.WantRunning:
		n.state = apitype.StateStarting
	case st.Registered:
		n.state = apitype.StateStopped
	case st.PrivateKey.IsZero():
		n.state = apitype.StateNoState
	default:
		n.state = apitype.StateNeedsLogin
	}
	return n, nil
}

// ErrNodeUnknown means the coordinator does not know the node's key any
// more although it had accepted it: it was reset (recreated with a fresh
// data directory) or the node was removed. Joining again needs an auth key.
var ErrNodeUnknown = errors.New("node: the coordinator does not know this node")

// unknownNodeError is ErrNodeUnknown for the coordinator at URL, with what
// to do about it.
type unknownNodeError string

func (e unknownNodeError) Error() string {
	return fmt.Sprintf("the coordinator at %s does not know this node (was it reset, or the node removed?); run `beam up --authkey KEY` to join it again", string(e))
}

func (e unknownNodeError) Is(target error) bool { return target == ErrNodeUnknown }

// allowDNSSource admits MagicDNS queries from loopback and the overlay only.
func allowDNSSource(a netip.Addr) bool {
	a = a.Unmap()
	return a.IsLoopback() || cgnat.Contains(a) || (a.Is6() && a.IsPrivate())
}

var cgnat = wire.OverlayIPv4

// Start serves the host servers the settings name (SOCKS5, HTTP proxy,
// MagicDNS on loopback) and rejoins the mesh if the node was up when it
// last stopped. It returns at once; connecting happens in the background.
func (n *Node) Start() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if err := n.startHostServersLocked(); err != nil {
		return err
	}
	if n.st.Registered && n.st.WantRunning {
		return n.startSessionLocked()
	}
	return nil
}

// Resolver returns the node's MagicDNS resolver.
func (n *Node) Resolver() *dnsserver.Resolver { return n.resolver }

// Up joins the mesh: it registers with req.AuthKey when given (or when the
// node was never registered), starts the engine and the netmap stream, and
// waits for the first netmap.
func (n *Node) Up(ctx context.Context, req apitype.UpRequest) (*apitype.UpResponse, error) {
	n.upMu.Lock()
	defer n.upMu.Unlock()

	if req.Prefs != nil {
		p := cleanPatch(*req.Prefs)
		req.Prefs = &p
		if err := validatePatch(p); err != nil {
			return nil, err
		}
	}
	n.mu.Lock()
	if req.Prefs != nil {
		if err := n.applyPrefsLocked(*req.Prefs); err != nil {
			n.mu.Unlock()
			return nil, err
		}
	}
	if req.Coordinator != "" {
		urls, err := coordclient.SplitServerURLs(req.Coordinator)
		if err != nil {
			n.mu.Unlock()
			return nil, err
		}
		want := strings.Join(urls, ",")
		// A list that shares a coordinator with the stored one (replicas
		// added or removed) names the same network: the registration holds.
		same := coordclient.SameServers(n.st.Coordinator, want)
		if n.st.Coordinator != "" && !same && n.st.Registered && req.AuthKey == "" {
			n.mu.Unlock()
			return nil, fmt.Errorf("node is registered with %s; pass --authkey to join %s", n.st.Coordinator, want)
		}
		if !same {
			n.st.Registered = false
			n.st.ServerKey = key.MachinePublic{} // another network: trust its key on first use
			n.st.ServerBinds = false
		}
		n.st.Coordinator = want
	}
	if n.st.Coordinator == "" {
		n.mu.Unlock()
		return nil, errors.New("no coordinator: pass --coordinator URL")
	}
	if req.Hostname != "" {
		n.st.Hostname = req.Hostname
	}
	if n.st.Hostname == "" {
		n.st.Hostname = n.opts.Hostname
	}
	if req.ShieldsUp != nil {
		n.st.ShieldsUp = *req.ShieldsUp
	}
	if n.st.PrivateKey.IsZero() {
		n.st.PrivateKey = key.NewNode()
	}
	if n.st.Unknown && req.AuthKey == "" && !req.ForceReauth {
		err := unknownNodeError(n.st.Coordinator)
		n.mu.Unlock()
		return nil, err
	}
	needRegister := !n.st.Registered || req.AuthKey != "" || req.ForceReauth || n.state == apitype.StateExpired
	n.stopSessionLocked()
	priv := n.st.PrivateKey
	n.mu.Unlock()

	var resp *apitype.UpResponse
	if needRegister {
		r, err := n.register(ctx, priv, req.AuthKey, req.ForceReauth)
		if err != nil {
			n.setState(apitype.StateNeedsLogin, err)
			return nil, err
		}
		resp = r
	} else {
		// Rejoin: confirm the stored key with the coordinator. If it cannot
		// be reached, carry on with the last netmap.
		r, err := n.register(ctx, priv, "", false)
		switch {
		case errors.Is(err, coordclient.ErrUnreachable):
			n.logger.Warn("coordinator unreachable; running on the last netmap", "err", err)
		case err != nil:
			n.mu.Lock()
			if errors.Is(err, coordclient.ErrNodeNotRegistered) {
				n.st.Registered = false
				n.st.NetMap = nil
				n.st.Unknown = true
				err = unknownNodeError(n.st.Coordinator)
				if serr := n.st.save(n.opts.StateDir); serr != nil {
					n.logger.Warn("save state", "err", serr)
				}
			}
			n.mu.Unlock()
			n.setState(apitype.StateNeedsLogin, err)
			return nil, err
		default:
			resp = r
		}
	}

	n.mu.Lock()
	n.st.Registered = true
	n.st.WantRunning = true
	n.st.Unknown = false
	n.lastErr = ""
	n.keyRefused = nil
	if err := n.st.save(n.opts.StateDir); err != nil {
		n.mu.Unlock()
		return nil, err
	}
	if err := n.startSessionLocked(); err != nil {
		n.mu.Unlock()
		return nil, err
	}
	sess := n.sess
	n.mu.Unlock()

	timeout := n.opts.UpTimeout
	if timeout == 0 {
		timeout = 30 * time.Second
	}
	wait := time.NewTimer(timeout)
	defer wait.Stop()
	select {
	case <-sess.firstMap:
	case <-sess.done:
		return nil, fmt.Errorf("join: %w", sess.err)
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-wait.C:
		n.mu.Lock()
		haveMap := n.netmap != nil
		n.mu.Unlock()
		if !haveMap {
			return nil, errors.New("join: no netmap from the coordinator yet; the daemon keeps trying")
		}
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if resp == nil {
		resp = &apitype.UpResponse{}
	}
	if n.netmap != nil && n.netmap.Self != nil {
		self := n.netmap.Self
		resp.Name, resp.DNSName, resp.IPs = self.Name, self.DNSName, prefixAddrs(self.Addresses)
	}
	return resp, nil
}

// register runs one registration exchange.
func (n *Node) register(ctx context.Context, priv key.NodePrivate, authKey string, reauth bool) (*apitype.UpResponse, error) {
	n.mu.Lock()
	url, host, pinned, binds := n.st.Coordinator, n.st.Hostname, n.st.ServerKey, n.st.ServerBinds
	n.mu.Unlock()
	c, err := coordclient.New(coordclient.Options{
		ServerURL:   url,
		PrivateKey:  priv,
		ServerKey:   pinned,
		ServerBinds: binds,
		HTTPClient:  n.opts.HTTPClient,
		Logger:      n.logger.With("component", "control"),
	})
	if err != nil {
		return nil, err
	}
	params := coordclient.RegisterParams{AuthKey: authKey, Hostname: host, OS: runtime.GOOS, Reauth: reauth}
	if authKey == "" {
		// A new node without a key waits for a person to approve it.
		params.OnAuthURL = func(url, code string) {
			n.mu.Lock()
			defer n.mu.Unlock()
			n.authURL, n.authCode = url, code
			n.state = apitype.StateNeedsApproval
			n.logger.Info("waiting for approval", "url", url, "code", code)
		}
		defer func() {
			n.mu.Lock()
			n.authURL, n.authCode = "", ""
			n.mu.Unlock()
		}()
	}
	r, err := c.Register(ctx, params)
	if err != nil {
		return nil, err
	}
	if r.Error != "" {
		return nil, errors.New(r.Error)
	}
	if r.AuthURL != "" && r.Node == nil {
		return &apitype.UpResponse{AuthURL: r.AuthURL}, fmt.Errorf("approval needed: visit %s", r.AuthURL)
	}
	// Pin the key the node registered with, and remember that the
	// coordinator binds its replies; Up saves the state next.
	n.mu.Lock()
	if n.st.Coordinator == url {
		if k := c.ServerKey(); pinned.IsZero() && !k.IsZero() {
			n.st.ServerKey = k
		}
		n.st.ServerBinds = n.st.ServerBinds || c.Binds()
	}
	n.mu.Unlock()
	out := &apitype.UpResponse{NameChanged: r.NameChanged}
	if r.Node != nil {
		out.Name, out.DNSName, out.IPs = r.Node.Name, r.Node.DNSName, prefixAddrs(r.Node.Addresses)
	}
	return out, nil
}

// startSessionLocked creates the engine if needed and starts the control
// loop. n.mu must be held.
func (n *Node) startSessionLocked() error {
	if n.sess != nil {
		return nil
	}
	if n.engine == nil {
		e, err := netstack.New(netstack.Options{
			PrivateKey:    n.st.PrivateKey,
			DiscoKey:      n.discoKey,
			ListenPort:    n.listenPortLocked(),
			Logger:        n.logger.With("component", "engine"),
			OnEndpoints:   n.onEngineEndpoints,
			OnFlow:        n.onFlow,
			TUN:           n.opts.TUN,
			NoHostForward: n.opts.NoHostForward,

			PortMapping:     n.opts.PortMapping,
			PortMapLifetime: n.opts.PortMapLifetime,
			PeerRelay:       n.peerRelayLocked(),
		})
		if err != nil {
			return fmt.Errorf("start engine: %w", err)
		}
		n.engine = e
		n.lastEngineCfg = nil
		n.startHostDNSLocked()
		if err := n.startUAPILocked(); err != nil {
			n.logger.Warn("WireGuard UAPI socket not served", "err", err)
		}
	}
	s := &session{done: make(chan struct{}), firstMap: make(chan struct{})}
	c, err := coordclient.New(coordclient.Options{
		ServerURL:   n.st.Coordinator,
		PrivateKey:  n.st.PrivateKey,
		ServerKey:   n.st.ServerKey,
		ServerBinds: n.st.ServerBinds,
		OnServerKey: func(k key.MachinePublic) {
			// A node registered before keys were pinned pins the key of
			// the coordinator it streams from.
			n.mu.Lock()
			defer n.mu.Unlock()
			if n.sess == s && n.st.Registered && n.st.ServerKey.IsZero() {
				n.st.ServerKey = k
				if err := n.st.save(n.opts.StateDir); err != nil {
					n.logger.Warn("save state", "err", err)
				}
			}
		},
		DiscoKey:   n.discoKey.Public(),
		HTTPClient: n.opts.HTTPClient,
		Logger:     n.logger.With("component", "control"),
		PeerRelay:  peerRelayPort(n.engine),
		OnConnState: func(up bool) {
			n.mu.Lock()
			defer n.mu.Unlock()
			if n.sess == s {
				n.controlOnline = up
			}
		},
		OnKeyRefused: func(e *coordclient.KeyChangedError) {
			// The stream goes on retrying (the coordinator may be an
			// impostor on the path, and the real one come back); status
			// says why the node is cut off and how to recover if the
			// coordinator was really reset.
			n.mu.Lock()
			defer n.mu.Unlock()
			if n.sess == s {
				n.refuseKeyLocked(e)
			}
		},
	})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(n.ctx)
	s.cancel, s.client = cancel, c
	s.dnsCtx, s.dnsStop = context.WithCancel(ctx)
	s.dnsServed = map[netip.Addr]bool{}
	n.sess = s
	n.state = apitype.StateStarting
	if n.st.NetMap != nil && n.netmap == nil {
		// Start the data plane on the last known netmap at once.
		n.netmap = n.st.NetMap
	}
	n.lastEngineCfg = nil
	n.curClient.Store(c)
	if r := n.eps.Load(); r != nil {
		c.SetEndpoints(r.eps, r.home)
	} else {
		c.SetEndpoints(n.engine.Endpoints(), n.engine.HomeDERP())
	}
	n.applyLocked()
	go func() {
		defer close(s.done)
		defer s.dnsWG.Wait()
		defer s.dnsStop()
		var tickerWG sync.WaitGroup
		tickerWG.Add(1)
		go func() {
			defer tickerWG.Done()
			n.expiryLoop(ctx)
		}()
		err := c.Run(ctx, func(nm *wire.NetMap) { n.onNetMap(s, nm) })
		cancel()
		tickerWG.Wait()
		s.err = err
		if err != nil && !errors.Is(err, context.Canceled) {
			n.logger.Warn("control session ended", "err", err)
			n.mu.Lock()
			if n.sess == s {
				n.sess = nil
				n.curClient.Store(nil)
				n.controlOnline = false
				n.st.Registered = false
				n.st.NetMap = nil
				n.netmap = nil
				n.state = apitype.StateNeedsLogin
				if errors.Is(err, coordclient.ErrNodeExpired) {
					n.state = apitype.StateExpired // shows the re-authenticate hint
				}
				n.lastErr = healthText(err)
				if errors.Is(err, coordclient.ErrNodeNotRegistered) {
					n.st.Unknown = true
					n.lastErr = unknownNodeError(n.st.Coordinator).Error()
				}
				n.applyLocked() // drop every peer: the node was removed
				if serr := n.st.save(n.opts.StateDir); serr != nil {
					n.logger.Warn("save state", "err", serr)
				}
			}
			n.mu.Unlock()
		}
	}()
	return nil
}

// ensureDNSLocked serves MagicDNS inside the netstack on each service
// address not yet served. The servers stop with the session.
func (n *Node) ensureDNSLocked(addrs []netip.Addr) {
	s, e := n.sess, n.engine
	if s == nil || e == nil {
		return
	}
	for _, addr := range addrs {
		if s.dnsServed[addr] {
			continue
		}
		s.dnsServed[addr] = true
		ap := netip.AddrPortFrom(addr, 53).String()
		if pc, err := e.ListenPacket("udp", ap); err == nil {
			s.dnsWG.Add(1)
			go func() {
				defer s.dnsWG.Done()
				_ = n.resolver.ServePacket(s.dnsCtx, pc)
			}()
		} else {
			n.logger.Warn("MagicDNS udp listen", "addr", ap, "err", err)
		}
		if ln, err := e.Listen("tcp", ap); err == nil {
			s.dnsWG.Add(1)
			go func() {
				defer s.dnsWG.Done()
				_ = n.resolver.ServeStream(s.dnsCtx, ln)
			}()
		} else {
			n.logger.Warn("MagicDNS tcp listen", "addr", ap, "err", err)
		}
	}
}

// onNetMap is called by the control client for every new netmap.
func (n *Node) onNetMap(s *session, nm *wire.NetMap) {
	n.mu.Lock()
	if n.sess != s {
		n.mu.Unlock()
		return
	}
	n.netmap = nm
	n.st.NetMap = nm
	n.streamNM = nm
	if n.nmChanged != nil {
		close(n.nmChanged)
		n.nmChanged = nil
	}
	n.controlOnline = true
	n.lastErr = ""
	n.keyRefused = nil
	n.applyLocked()
	select {
	case <-s.firstMap:
	default:
		close(s.firstMap)
		if err := n.st.save(n.opts.StateDir); err != nil {
			n.logger.Warn("save state", "err", err)
		}
	}
	n.mu.Unlock()
	if n.opts.OnNetMap != nil {
		n.opts.OnNetMap(nm)
	}
}

// waitStreamNetMap waits until a netmap from the coordinator satisfies
// cond, or ctx ends.
func (n *Node) waitStreamNetMap(ctx context.Context, cond func(*wire.NetMap) bool) error {
	for {
		n.mu.Lock()
		if n.streamNM != nil && cond(n.streamNM) {
			n.mu.Unlock()
			return nil
		}
		if n.nmChanged == nil {
			n.nmChanged = make(chan struct{})
		}
		ch := n.nmChanged
		n.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// expiryLoop re-applies the netmap every second so expiry takes effect on
// time even when no message arrives.
func (n *Node) expiryLoop(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	saveEvery := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		n.mu.Lock()
		n.applyLocked()
		saveEvery++
		if saveEvery%30 == 0 && n.st.NetMap != nil {
			if err := n.st.save(n.opts.StateDir); err != nil {
				n.logger.Warn("save state", "err", err)
			}
		}
		n.mu.Unlock()
	}
}

// applyLocked pushes the current netmap into the engine and MagicDNS.
func (n *Node) applyLocked() {
	now := time.Now()
	// The records change with the netmap, the upstreams and the clock
	// (a key expiring); at thousands of peers, building and comparing
	// them every second is milliseconds, so only those rebuild them.
	if ups := n.upstreamsLocked(); n.netmap != n.recordsNM || !now.Before(n.recordsUntil) || !slices.Equal(ups, n.recordsUps) {
		if ch, until, ok := recordsDelta(n.recordsNM, n.netmap, n.lastRecords, now, n.recordsUntil); ok && slices.Equal(ups, n.recordsUps) {
			// A netmap made from the last by deltas: the names of the
			// peers that changed alone (none for an endpoint or an
			// online state).
			if len(ch) > 0 {
				n.resolver.UpdateHosts(ch)
				for name, as := range ch {
					if len(as) == 0 {
						delete(n.lastRecords.Hosts, name)
					} else {
						n.lastRecords.Hosts[name] = as
					}
				}
			}
			n.recordsNM, n.recordsUntil = n.netmap, until
		} else {
			if rec := dnsRecords(n.netmap, now, ups); !reflect.DeepEqual(rec, n.lastRecords) {
				n.resolver.SetRecords(rec)
				n.lastRecords = rec
			}
			n.recordsNM, n.recordsUps, n.recordsUntil = n.netmap, ups, nextExpiry(n.netmap, now)
		}
	}
	if n.engine == nil {
		return
	}
	if n.netmap != nil && n.netmap.Self != nil {
		// The coordinator shows the node its own peer relay port only
		// while the policy designates it.
		n.engine.SetPeerRelayOffered(n.netmap.Self.PeerRelay != 0)
	}
	n.checkNetMapLocked()
	cfg := engineBase(n.netmap, n.st.ShieldsUp, n.allowInbound, &n.filters)
	// The edges get a larger share of the forwarded flows and connections:
	// every public client of an edge route comes from the edge's address.
	cfg.Edges = n.edgeAddrsLocked()
	if cfg.ShieldsUp {
		// Published ports stay open to the edges alone: a peer that
		// reached the device-side proxy would skip the edge's checks
		// (basic auth, allowed addresses, sign-in) and its headers.
		cfg.EdgeInbound = n.exposedPortsLocked()
	}
	cfg.OwnListeners = n.own.list()
	var dm *wire.DERPMap
	if n.netmap != nil {
		dm = n.netmap.DERPMap
	}
	cfg.OwnListeners = append(cfg.OwnListeners, serverListeners(n.st.Coordinator, dm)...)
	cfg.OwnListeners = append(cfg.OwnListeners, engineSockets(n.engine)...)
	if n.netmap != nil && n.netmap.Self != nil && n.netmap.Self.Expired(n.netmap.ControlNow(now)) {
		n.state = apitype.StateExpired
	} else if n.sess != nil && n.netmap != nil {
		n.state = apitype.StateRunning
	}
	if n.lastEngineCfg != nil && sameButFilter(n.lastEngineCfg, &cfg) {
		if cfg.Filter != n.lastEngineCfg.Filter {
			// A set of the filter gained or lost a node.
			if err := n.engine.SetFilter(cfg.Filter); err != nil {
				n.logger.Warn("reconfigure engine filter", "err", err)
				return
			}
			n.lastEngineCfg.Filter = cfg.Filter
		}
		// Only peers may have changed: the engine gets those alone,
		// found among the peers the netmap changed when it was made from
		// the last one by deltas, else by a walk of the netmap.
		var (
			set    []netstack.Peer
			remove []key.NodePublic
			until  time.Time
		)
		if deltaApplies(n.engineNM, n.netmap, now, n.engineUntil) {
			set, remove, until = peerDelta(n.engineNM, n.netmap, now, n.engineUntil, n.enginePeers)
		} else {
			set, remove = peerChanges(n.netmap, now, n.enginePeers)
			until = nextExpiry(n.netmap, now)
		}
		if len(set) > 0 || len(remove) > 0 {
			if err := n.engine.UpdatePeers(set, remove); err != nil {
				n.logger.Warn("reconfigure engine peers", "err", err)
				return
			}
			for _, k := range remove {
				delete(n.enginePeers, k)
			}
			for _, p := range set {
				n.enginePeers[p.Key] = p
			}
		}
		n.engineNM, n.engineUntil = n.netmap, until
		n.syncExposeLocked(cfg)
		n.applyHostDNSLocked()
		return
	}
	full := cfg
	forEnginePeer(n.netmap, now, func(p *wire.Node) {
		full.Peers = append(full.Peers, enginePeer(p))
	})
	if err := n.engine.Reconfig(full); err != nil {
		n.logger.Warn("reconfigure engine", "err", err)
		return
	}
	n.enginePeers = make(map[key.NodePublic]netstack.Peer, len(full.Peers))
	for _, p := range full.Peers {
		n.enginePeers[p.Key] = p
	}
	n.engineNM, n.engineUntil = n.netmap, nextExpiry(n.netmap, now)
	n.lastEngineCfg = &cfg
	n.ensureDNSLocked(cfg.ServiceAddrs)
	n.applyHostDNSLocked()
	n.syncExposeLocked(cfg)
}

// setState records a state and the error that caused it.
func (n *Node) setState(s apitype.State, err error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.state = s
	if err != nil {
		n.lastErr = healthText(err)
	}
	if e, ok := errors.AsType[*coordclient.KeyChangedError](err); ok {
		n.refuseKeyLocked(e)
	}
}

// refuseKeyLocked records that the coordinator answered with machine key
// change e, which the node refused, for status. n.mu must be held.
func (n *Node) refuseKeyLocked(e *coordclient.KeyChangedError) {
	n.lastErr = healthText(e)
	if k := n.keyRefused; k != nil && k.Server == e.Server && k.Pinned == e.Pinned.String() && k.Got == e.Got.String() {
		return // keep Since
	}
	n.keyRefused = &apitype.KeyChange{
		Server:   e.Server,
		Pinned:   e.Pinned.String(),
		Got:      e.Got.String(),
		Since:    time.Now(),
		Recovery: "if the coordinator was really reset or given a new key: beam logout, then beam up --authkey KEY (a key from the new coordinator)",
	}
}

// healthText returns what status shows for err: the sentence for a user
// when the error carries one (coordclient's do: what failed and what to do
// next), else the error's own text.
func healthText(err error) string {
	if um, ok := errors.AsType[interface {
		error
		UserMessage() string
	}](err); ok {
		if m := um.UserMessage(); m != "" {
			return m
		}
	}
	return err.Error()
}

// stopSessionLocked stops the control loop, if any, and waits for it.
// It releases and retakes n.mu while waiting.
func (n *Node) stopSessionLocked() {
	s := n.sess
	if s == nil {
		return
	}
	n.sess = nil
	n.curClient.Store(nil)
	s.cancel()
	n.mu.Unlock()
	<-s.done
	n.mu.Lock()
	n.controlOnline = false
}

// Down leaves the mesh but keeps the node's identity and registration.
func (n *Node) Down(ctx context.Context) error {
	n.upMu.Lock()
	defer n.upMu.Unlock()
	n.mu.Lock()
	defer n.mu.Unlock()
	n.stopSessionLocked()
	n.closeEngineLocked()
	n.netmap = nil
	n.st.WantRunning = false
	if n.st.Registered {
		n.state = apitype.StateStopped
	}
	return n.st.save(n.opts.StateDir)
}

// Logout deregisters the node from the coordinator and forgets its key.
func (n *Node) Logout(ctx context.Context) error {
	n.upMu.Lock()
	defer n.upMu.Unlock()
	n.mu.Lock()
	n.stopSessionLocked()
	n.closeEngineLocked()
	st := n.st
	n.mu.Unlock()
	if st.Registered && st.Coordinator != "" {
		c, err := coordclient.New(coordclient.Options{ServerURL: st.Coordinator, PrivateKey: st.PrivateKey, ServerKey: st.ServerKey, HTTPClient: n.opts.HTTPClient})
		if err != nil {
			return err
		}
		// A coordinator with another machine key is not the one the node
		// joined: it is not told, and the node forgets its identity (and
		// the pinned key) all the same, to join again.
		if _, err := c.Register(ctx, coordclient.RegisterParams{Logout: true, Hostname: st.Hostname}); err != nil &&
			!errors.Is(err, coordclient.ErrNodeNotRegistered) && !errors.Is(err, coordclient.ErrServerKeyChanged) {
			return fmt.Errorf("logout: %w", err)
		}
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	// Forget the identity, keep the settings.
	n.st = &persisted{
		Coordinator: st.Coordinator, Hostname: st.Hostname, ShieldsUp: st.ShieldsUp,
		SOCKS5: st.SOCKS5, HTTPProxy: st.HTTPProxy, DNSListen: st.DNSListen,
		DNSUpstreams: st.DNSUpstreams, Port: st.Port, Operator: st.Operator,
	}
	n.netmap = nil
	n.state = apitype.StateNoState
	n.lastErr = ""
	n.keyRefused = nil
	n.lastRecords = dnsRecords(nil, time.Now(), n.upstreamsLocked())
	n.resolver.SetRecords(n.lastRecords)
	return n.st.save(n.opts.StateDir)
}

func (n *Node) closeEngineLocked() {
	n.stopHostDNSLocked()
	n.stopUAPILocked()
	n.exp.Close()
	if n.engine != nil {
		if err := n.engine.Close(); err != nil {
			n.logger.Warn("close engine", "err", err)
		}
		n.engine = nil
		n.lastEngineCfg = nil
	}
}

// SetAllowInbound sets the ports that stay reachable from peers even with
// shields up (the ports `beam expose` publishes).
func (n *Node) SetAllowInbound(ports []uint16) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.allowInbound = append([]uint16(nil), ports...)
	n.applyLocked()
}

// Close stops the node and its engine. The state on disk is kept as is,
// so a restarted daemon rejoins.
func (n *Node) Close() error {
	n.upMu.Lock()
	defer n.upMu.Unlock()
	n.mu.Lock()
	defer n.mu.Unlock()
	n.stopSessionLocked()
	if n.st.NetMap != nil && n.st.Registered {
		if err := n.st.save(n.opts.StateDir); err != nil {
			n.logger.Warn("save state", "err", err)
		}
	}
	n.closeEngineLocked()
	n.stopHostServersLocked()
	n.cancel()
	n.mu.Unlock()
	n.stopInspector()
	n.hosts.wg.Wait() // outside mu: their dials take it
	n.mu.Lock()
	n.lock.release()
	return nil
}

// Status reports the node and its peers.
func (n *Node) Status() *apitype.Status {
	n.mu.Lock()
	nm, state, eng := n.netmap, n.state, n.engine
	st := &apitype.Status{
		State:             state,
		Coordinator:       n.st.Coordinator,
		CoordinatorOnline: n.controlOnline && n.sess != nil,
		Peers:             []apitype.PeerStatus{},
		TUN:               n.opts.TUN,
	}
	if c := n.curClient.Load(); c != nil && st.CoordinatorOnline && strings.Contains(n.st.Coordinator, ",") {
		st.CoordinatorStream = c.ServerURL()
	}
	if n.lastErr != "" {
		st.Health = append(st.Health, n.lastErr)
	}
	if k := n.keyRefused; k != nil {
		kc := *k
		st.CoordinatorKeyChange = &kc
	}
	st.AuthURL, st.AuthCode = n.authURL, n.authCode
	n.mu.Unlock()
	if state == apitype.StateExpired {
		st.Health = append(st.Health, "node key expired: re-authenticate with `beam up --authkey KEY`")
	}
	if nm == nil || nm.Self == nil {
		return st
	}
	if nm.DNS != nil {
		st.DNSDomain = nm.DNS.Domain
	}
	if eng != nil {
		if rs, ok := eng.PeerRelay(); ok {
			st.PeerRelay = &apitype.PeerRelayStatus{
				Port: rs.Port, Sessions: rs.Sessions, Bound: rs.Bound,
				Allocated: rs.Allocated, Refused: rs.Refused, Expired: rs.Expired, Released: rs.Released,
				Packets: rs.Packets, Bytes: rs.Bytes, DroppedRate: rs.DroppedRate, DroppedOther: rs.DroppedOther,
				MaxSessions: rs.MaxSessions, MaxSessionsPerPeer: rs.MaxSessionsPerPeer,
				PacketsPerSecond: rs.PacketsPerSecond, BytesPerSecond: rs.BytesPerSecond,
				Offered: nm.Self.PeerRelay != 0, MappingProtocol: rs.MappingProtocol,
			}
			if rs.Mapped.IsValid() {
				st.PeerRelay.Mapped = rs.Mapped.String()
			}
		}
	}
	now := nm.ControlNow(time.Now())
	self := nodeStatus(nm.Self, now)
	self.Online = state == apitype.StateRunning
	self.Path = "self"
	st.Self = &self
	var es map[key.NodePublic]netstack.PeerStatus
	if eng != nil {
		es = map[key.NodePublic]netstack.PeerStatus{}
		for _, p := range eng.Status() {
			es[p.Key] = p
		}
	}
	for _, p := range nm.Peers {
		ps := nodeStatus(p, now)
		ps.Path = "none"
		if e, ok := es[p.Key]; ok {
			ps.RxBytes, ps.TxBytes, ps.LastHandshake = e.RxBytes, e.TxBytes, e.LastHandshake
			if e.Path != "" {
				ps.Path = e.Path
			}
			if e.Endpoint.IsValid() {
				ps.Endpoint = e.Endpoint.String()
			}
			if e.Path == "relay" && e.DERPRegion != 0 {
				ps.Relay = regionName(nm, e.DERPRegion)
			}
			if e.Path == "peer-relay" {
				ps.Via = peerName(nm, e.Via)
			}
		}
		st.Peers = append(st.Peers, ps)
	}
	return st
}

func nodeStatus(n *wire.Node, now time.Time) apitype.PeerStatus {
	return apitype.PeerStatus{
		Name:      n.Name,
		DNSName:   n.DNSName,
		IPs:       prefixAddrs(n.Addresses),
		Key:       n.Key.String(),
		OS:        n.OS,
		Online:    n.Online,
		Unknown:   n.Unknown,
		KeyExpiry: n.KeyExpiry,
		Expired:   n.Expired(now),
		User:      n.User,
		Tags:      n.Tags,
		PeerRelay: n.PeerRelay != 0,
	}
}

// peerName is the name of peer k in nm, else its short key.
func peerName(nm *wire.NetMap, k key.NodePublic) string {
	if p := nm.PeerByKey(k); p != nil && p.Name != "" {
		return p.Name
	}
	return k.ShortString()
}

// peerRelayLocked is the engine's peer relay server setting.
func (n *Node) peerRelayLocked() *netstack.PeerRelayOptions {
	if !n.st.RelayServer {
		return nil
	}
	o := n.opts.PeerRelay
	o.Port = n.st.RelayServerPort
	if v := n.st.RelayServerMaxSessions; v != 0 {
		o.MaxSessions = v
	}
	if v := n.st.RelayServerMaxSessionsPerPeer; v != 0 {
		o.MaxSessionsPerPeer = v
	}
	if v := n.st.RelayServerSessionRate; v != 0 {
		o.BytesPerSecond = int(v)
	}
	return &o
}

// peerRelayPort is the port of e's peer relay server; 0 if none.
func peerRelayPort(e *netstack.Engine) uint16 {
	if e == nil {
		return 0
	}
	rs, _ := e.PeerRelay()
	return rs.Port
}

func prefixAddrs(ps []netip.Prefix) []netip.Addr {
	out := make([]netip.Addr, 0, len(ps))
	for _, p := range ps {
		out = append(out, p.Addr())
	}
	return out
}

// ErrNotRunning is returned by operations that need the node in the mesh.
var ErrNotRunning = errors.New("node: not running; run `beam up`")

// DialContext dials host:port, where host is a MagicDNS name, an overlay
// address or any other address (reached from the host directly).
func (n *Node) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(address)
	if err != nil {
		return nil, err
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil || p == 0 {
		return nil, fmt.Errorf("dial %s: bad port %q", address, port)
	}
	addrs, err := n.lookup(ctx, host)
	if err != nil {
		return nil, err
	}
	var firstErr error
	for _, a := range addrs {
		c, err := n.dialAddr(ctx, network, netip.AddrPortFrom(a, uint16(p)))
		if err == nil {
			return c, nil
		}
		if firstErr == nil {
			firstErr = err
		}
	}
	return nil, firstErr
}

// lookup resolves host: an IP literal as is, otherwise through MagicDNS.
func (n *Node) lookup(ctx context.Context, host string) ([]netip.Addr, error) {
	host = strings.TrimSuffix(host, ".")
	if a, err := netip.ParseAddr(strings.Trim(host, "[]")); err == nil {
		return []netip.Addr{a}, nil
	}
	addrs, err := n.resolver.LookupNetIP(ctx, host)
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", host, err)
	}
	// Prefer IPv4 overlay addresses: every peer has one.
	slices.SortStableFunc(addrs, func(a, b netip.Addr) int {
		switch {
		case a.Is4() == b.Is4():
			return 0
		case a.Is4():
			return -1
		}
		return 1
	})
	return addrs, nil
}

// isMeshHost reports whether host, a name or an address, is reached over
// the overlay. Names that do not resolve are not.
func (n *Node) isMeshHost(ctx context.Context, host string) bool {
	addrs, err := n.lookup(ctx, host)
	if err != nil {
		return false
	}
	return slices.ContainsFunc(addrs, n.isOverlay)
}

// isOverlay reports whether a belongs on the overlay rather than the host's network.
func (n *Node) isOverlay(a netip.Addr) bool {
	a = a.Unmap()
	if cgnat.Contains(a) {
		return true
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.netmap == nil || n.netmap.Self == nil {
		return false
	}
	for _, p := range n.netmap.Self.Addresses {
		if p.Addr().Is6() && a.Is6() {
			if pfx, err := p.Addr().Prefix(48); err == nil && pfx.Contains(a) {
				return true
			}
		}
	}
	return false
}

func (n *Node) dialAddr(ctx context.Context, network string, ap netip.AddrPort) (net.Conn, error) {
	if n.isOverlay(ap.Addr()) {
		n.mu.Lock()
		e := n.engine
		n.mu.Unlock()
		if e == nil {
			return nil, ErrNotRunning
		}
		return e.DialContext(ctx, network, ap.String())
	}
	var d net.Dialer
	return d.DialContext(ctx, network, ap.String())
}

// dialForDNS lets MagicDNS reach resolvers on the overlay (split DNS) or
// the host's network (upstreams).
func (n *Node) dialForDNS(ctx context.Context, network, address string) (net.Conn, error) {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		var d net.Dialer
		return d.DialContext(ctx, network, address)
	}
	return n.dialAddr(ctx, network, ap)
}

// DNSStatus describes the node's MagicDNS configuration.
func (n *Node) DNSStatus() *apitype.DNSStatus {
	n.mu.Lock()
	nm, ups := n.netmap, n.upstreamsLocked()
	n.mu.Unlock()
	rec := dnsRecords(nm, time.Now(), ups)
	st := &apitype.DNSStatus{
		Domain:        rec.Domain,
		SearchDomains: append([]string{}, rec.SearchDomains...),
		Resolvers:     []string{MagicDNSIPv4.String()},
		Upstreams:     []string{},
		Names:         len(rec.Hosts),
	}
	if nm != nil && nm.Self != nil {
		if a := magicDNSIPv6(nm.Self); a.IsValid() {
			st.Resolvers = append(st.Resolvers, a.String())
		}
	}
	for _, u := range rec.Upstreams {
		st.Upstreams = append(st.Upstreams, u.String())
	}
	for suffix, rs := range rec.Routes {
		if st.Routes == nil {
			st.Routes = map[string][]string{}
		}
		for _, r := range rs {
			st.Routes[suffix] = append(st.Routes[suffix], r.String())
		}
	}
	return st
}
