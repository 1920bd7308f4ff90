// Package coordinator is Beam's control plane: networks, pre-auth keys,
// node registration, overlay addresses and names, policy, and the
// per-node netmap stream (a full map, then deltas).
//
// A Server is an http.Handler; it never opens listeners. Its state lives in
// a Store the caller injects (beam.dev/beam/coordinator/sqlstore implements
// it) and in memory: the coordinator keeps every node in memory and writes
// through to the store. Several coordinators may share a store that
// implements NodeFeed (PostgreSQL): each follows the others' changes to
// nodes, the policy, DNS settings, routes, domains and pending approvals,
// and tells its own streams (fanout.go).
//
// Every control request is sealed with NaCl box between the node key and
// the coordinator's machine key (see protocol.go), so only the holder of a
// node key can register or update that node. Its endpoints are the
// wire.Path constants.
//
// The Server is split by job, each a type with its own state and locks
// around a core of nodes, networks and map streams (see Server): the
// registry (register.go, approve.go, rename.go, authkeys.go), edge
// routes and domains (routes.go, expose.go, claim.go, domains.go,
// dnsconfig.go, txt_node.go), access control (acl.go), the map stream
// (stream.go) and the admin HTTP API (adminhttp.go). The core's node and
// network tables are in nodes.go; the store interfaces, one per use, in
// store.go and next to the job that uses them (RouteStore, DomainStore).
package coordinator

import (
	"cmp"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// DefaultNetwork is the name of the network created on first start.
const DefaultNetwork = "default"

// DefaultBaseDomain is the base domain when Options.BaseDomain is empty.
const DefaultBaseDomain = "beam.internal"

const adminTokenSetting = "admin_token_sha256"

// PolicyFunc decides, for the node self, which nodes of its network it may
// see and which inbound packets it accepts. all holds every unexpired node
// of self's network, self included. It runs with the coordinator's lock
// held and must not call back into the Server.
type PolicyFunc func(self *wire.Node, all []*wire.Node) (filter []wire.FilterRule, visible []*wire.Node)

// Options configures a Server.
type Options struct {
	// Store keeps networks, keys and nodes. Required.
	Store Store
	// PrivateKey is the coordinator's machine key. Required.
	PrivateKey key.MachinePrivate
	// Logger receives logs; nil discards them.
	Logger *slog.Logger
	// AdminToken, if set, becomes the admin API's bearer token (only its
	// hash is stored). Empty keeps the token whose hash is already stored;
	// with none stored, the admin API refuses every request.
	AdminToken string
	// RelayToken, if set, is the bearer token relays present to ask
	// GET wire.PathDERPVerify whether a node key may use them (the admin
	// token may ask too). Nobody else may: the answer tells whether a
	// key is registered. Only its hash is kept, in memory.
	RelayToken string
	// BaseDomain is the parent of every network's domain; empty means
	// DefaultBaseDomain.
	BaseDomain string
	// DERPMap is the relay map handed to nodes; nil means none.
	DERPMap *wire.DERPMap
	// DevMode lets nodes on this host register without an auth key, into
	// the default network: requests that come over loopback and are
	// addressed to loopback (localRequest). Others need a key as usual.
	DevMode bool
	// KeepAliveInterval is how often an idle map stream gets a keepalive;
	// zero means 30 seconds.
	KeepAliveInterval time.Duration
	// NodeKeyExpiry is how long the key of an untagged node stays valid
	// when its auth key does not set it: a user's nodes, and nodes with
	// neither user nor tag (plain auth keys, dev mode). Zero means
	// DefaultNodeKeyExpiry; negative means never. Tagged and edge nodes
	// do not expire unless their auth key says so.
	NodeKeyExpiry time.Duration
	// EphemeralTimeout is how long an ephemeral node may stay offline
	// before it is deleted; zero means one minute.
	EphemeralTimeout time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Policy, if set, overrides the access policy (the stored HuJSON
	// policy, see SetPolicy) in deciding visibility and packet filters.
	// It is meant for tests.
	Policy PolicyFunc
	// Approver serves the page a node waiting for interactive approval
	// is sent to (/register/CODE); nil means a page that says how to
	// approve with beam admin.
	Approver Approver

	// EdgeDomain is the public edge's domain ("example.test"): exposed
	// routes get NAME.EdgeDomain. Empty disables wire.PathExpose. The
	// Store must implement RouteStore and DomainStore.
	EdgeDomain string
	// EdgeHost is the edge's host name in tcp:// and udp:// route URLs;
	// empty means EdgeDomain.
	EdgeHost string
	// EdgeTCPPorts and EdgeUDPPorts are the edge ports given to tcp and
	// udp routes; the zero range refuses such routes.
	EdgeTCPPorts, EdgeUDPPorts PortRange
	// EdgePortFree, if set, reports whether the edge can listen on a
	// public port (proto "tcp" or "udp"): a new route is given only a
	// port it can, so one that another program on the edge's host holds
	// is skipped instead of handed out dead. beam server, whose edge
	// runs on the coordinator's host, sets it.
	EdgePortFree func(proto string, port uint16) bool
	// EdgeHTTPURL is the URL template of http routes, {host} replaced by
	// the route's host ("http://{host}:18081"); empty means "https://{host}".
	EdgeHTTPURL string
	// RouteQuota bounds the routes, edge ports and route option bytes of
	// each node and each user; its zero fields mean DefaultRouteQuota's.
	RouteQuota RouteQuota
	// Zone is the public DNS zone edges set ACME TXT records in; nil
	// means none (wire.PathTXT and the TXT admin API then fail).
	Zone Zone
	// LookupTXT and LookupCNAME check custom-domain proofs; nil means
	// net.DefaultResolver's.
	LookupTXT   func(ctx context.Context, name string) ([]string, error)
	LookupCNAME func(ctx context.Context, name string) (string, error)
	// DNS, if not nil, replaces the stored DNS settings at start; nil
	// keeps them (see SetDNSSettings).
	DNS *wire.DNSSettings
	// AdminAuth, if set, is asked about an admin API request whose bearer
	// token is not the admin token (an OIDC ID token of an admin): ok
	// admits it, and the audit log names who ("admin:WHO").
	AdminAuth func(r *http.Request) (who string, ok bool)
	// ServerSetup, if not nil, is answered to GET wire.PathServerSetup:
	// in full to a caller with the admin token, and without the details
	// of the certificate's order to anyone else (publicSetup); nil
	// answers 404.
	ServerSetup func() *wire.ServerSetup
	// MachineRequestRate and MachineRequestBurst are the token bucket of
	// each source address (an IPv4 address, an IPv6 /64) on the sealed
	// endpoints (register, map, expose, TXT): requests per second and
	// the most at once. Zero means DefaultMachineRequestRate and
	// DefaultMachineRequestBurst; a negative rate means no limit.
	MachineRequestRate  float64
	MachineRequestBurst int
	// NodeRequestRate and NodeRequestBurst are the token bucket of each
	// registered node on the sealed endpoints, whatever its address.
	// Zero means DefaultNodeRequestRate and DefaultNodeRequestBurst; a
	// negative rate means no limit.
	NodeRequestRate  float64
	NodeRequestBurst int
	// OnlineGrace is how long the nodes streaming when the coordinator
	// shuts down stay online without a stream after it, while they come
	// back (grace.go); 0 means 45.5 s, the longest wait a shutdown asks
	// of a node plus the longest backoff of one that came back too early
	// plus a margin.
	OnlineGrace time.Duration
}

// Server is the coordinator. It is an http.Handler serving the control
// protocol (wire.PathKey, wire.PathRegister, ...), the relay client check
// (wire.PathDERPVerify) and the admin API (under wire.PathAdminPrefix).
//
// Server is the core its jobs share (nodes, networks, map streams, the
// store, the sealed-request codec, the audit log) and the composition of
// those jobs, each on its own type with its own state and locks:
//
//   - registry (register.go, approve.go, rename.go, authkeys.go): auth keys,
//     registration, names and overlay addresses, and the registrations
//     waiting for approval;
//   - edgeRoutes (routes.go, expose.go, claim.go, domains.go,
//     dnsconfig.go, txt_node.go): public edge routes, custom domains, DNS
//     settings and the public zone's TXT records;
//   - adminAPI (adminhttp.go): the admin HTTP API and its credentials;
//   - access control (acl.go) and the map stream (stream.go).
//
// The exported methods are the coordinator's Go API (the console and
// beam server use it); those of a job forward to it.
//
// Locks, in order: reg.mu or edge.changeMu (never both), persistMu, mu,
// then edge.mu (a leaf) or a session's mu. Handlers of map streams run on
// net/http's goroutines; ServeHTTP counts them in wg so Close can wait for
// them, and the janitor goroutine is counted there too.
type Server struct {
	store        Store
	priv         key.MachinePrivate
	pubText      string
	logger       *slog.Logger
	baseDomain   string
	keepAlive    time.Duration
	ephemeral    time.Duration
	now          func() time.Time
	policy       PolicyFunc
	relayHash    atomic.Pointer[[]byte]         // SHA-256 of the relay token; nil means none (SetRelayToken replaces it)
	prevRelay    atomic.Pointer[prevRelayToken] // the relay token a reload replaced; nil: none
	mux          *http.ServeMux
	replay       replayCache
	machineLimit *sourceLimiter // limits.go
	nodeLimit    *keyLimiter[key.NodePublic]
	sharedReplay *sharedReplay // replay.go
	epoch        bootEpoch     // this start's boot epoch (replay.go)
	boxes        sharedKeys    // box keys shared with nodes (sharedkeys.go)
	derpMap      atomic.Pointer[wire.DERPMap]
	serverSetup  func() *wire.ServerSetup // nil: none
	// graceUntil is when the online grace of the nodes streaming at the
	// last shutdown ends (grace.go); zero if none. Set before the Server
	// runs.
	graceUntil time.Time
	// graceFrom is when the record that put nodes in grace was written.
	graceFrom time.Time
	// onlineGrace is Options.OnlineGrace or its default.
	onlineGrace time.Duration
	// onlineRecord: the start found a record of streaming nodes, which
	// onlineLoop clears; seenAtRecord are the nodes of one too old for a
	// grace, last seen when it was written, whose last seen onlineLoop
	// persists.
	onlineRecord bool
	seenAtRecord []key.NodePublic

	ctx    context.Context // canceled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	persistMu sync.Mutex // orders write-through of node snapshots

	mu       sync.Mutex // guards the following fields
	closed   bool
	networks map[int64]*Network
	netNames map[string]*Network
	nodes    map[key.NodePublic]*nodeEntry
	*streams // the map streams and the views they share (stream.go, streamview.go)

	edge *edgeRoutes // public edge routes, domains and DNS settings (routes.go)

	*access // policy, compiled visibility and filters, audit log (acl.go, access.go, audit.go)

	met *metrics // metrics.go

	admin *adminAPI // the admin HTTP API (adminhttp.go)
	reg   *registry // registration, auth keys, names, addresses, approval (register.go)
	fan   *fanout   // changes other coordinators on the store make (fanout.go)
}

// nodeEntry is a node in memory. Guarded by Server.mu.
type nodeEntry struct {
	rec NodeRecord
	// offlineSince is when the node's last stream ended (or when it was
	// loaded or registered without one); zero while online.
	offlineSince time.Time
	// expiryHandled is set once the coordinator acted on the key expiring.
	expiryHandled bool
	// version is the protocol version of its last map request; 0 if none
	// since the coordinator started.
	version int
	// remote is whether the node streams from another coordinator on the
	// same store, or did from one that stopped beating (fanout.go).
	remote Presence
	// grace is set while the node, streaming when the coordinator last
	// shut down, counts as online without a stream (grace.go).
	grace bool
	// peerRelayAsked is the peer relay port of the node's last map
	// request here (0: none), which rec.Node.PeerRelay shows while the
	// policy designates the node (see redesignatePeerRelaysLocked).
	peerRelayAsked uint16
}

// New returns a Server on opts, loading its state from opts.Store and
// creating the default network if needed.
func New(opts Options) (*Server, error) {
	if opts.Store == nil {
		return nil, errors.New("coordinator: Options.Store is required")
	}
	if opts.PrivateKey.IsZero() {
		return nil, errors.New("coordinator: Options.PrivateKey is required")
	}
	s := &Server{
		store:       opts.Store,
		priv:        opts.PrivateKey,
		pubText:     opts.PrivateKey.Public().String(),
		logger:      opts.Logger,
		baseDomain:  opts.BaseDomain,
		keepAlive:   opts.KeepAliveInterval,
		ephemeral:   opts.EphemeralTimeout,
		now:         opts.Now,
		policy:      opts.Policy,
		serverSetup: opts.ServerSetup,
		onlineGrace: cmp.Or(opts.OnlineGrace, onlineGrace),
		networks:    make(map[int64]*Network),
		netNames:    make(map[string]*Network),
		nodes:       make(map[key.NodePublic]*nodeEntry),
		met:         newMetrics(),
		epoch:       newBootEpoch(),
	}
	if s.logger == nil {
		s.logger = slog.New(slog.DiscardHandler)
	}
	s.logger = s.logger.With("component", "coordinator")
	if s.baseDomain == "" {
		s.baseDomain = DefaultBaseDomain
	}
	if s.keepAlive <= 0 {
		s.keepAlive = 30 * time.Second
	}
	if s.ephemeral <= 0 {
		s.ephemeral = time.Minute
	}
	if s.now == nil {
		s.now = time.Now
	}
	s.derpMap.Store(opts.DERPMap)
	s.streams = newStreams(s)
	s.admin = &adminAPI{core: s, auth: opts.AdminAuth}
	s.reg = newRegistry(s, opts)
	s.fan = newFanout(s, opts.Store)
	s.sharedReplay = newSharedReplay(s, opts.Store)
	s.machineLimit = newSourceLimiter(opts.MachineRequestRate, opts.MachineRequestBurst)
	nodeRate, nodeBurst := opts.NodeRequestRate, opts.NodeRequestBurst
	if nodeRate == 0 {
		nodeRate = DefaultNodeRequestRate
	}
	if nodeBurst <= 0 {
		nodeBurst = DefaultNodeRequestBurst
	}
	s.nodeLimit = newKeyLimiter[key.NodePublic](nodeRate, nodeBurst)
	es, err := newEdgeRoutes(s, opts)
	if err != nil {
		return nil, err
	}
	s.edge = es

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if opts.RelayToken != "" {
		h := sha256.Sum256([]byte(opts.RelayToken))
		hash := h[:]
		s.relayHash.Store(&hash)
	}
	if err := s.fan.checkReplica(ctx, opts); err != nil {
		return nil, err
	}
	if err := s.load(ctx, opts.AdminToken); err != nil {
		return nil, err
	}
	if err := s.edge.load(ctx, opts.DNS != nil); err != nil {
		return nil, err
	}
	if err := s.initAccessControl(ctx, opts); err != nil {
		return nil, err
	}
	s.mux, _ = s.routes()
	s.ctx, s.cancel = context.WithCancel(context.Background())
	if opts.DevMode {
		s.logger.Warn("DEV MODE: nodes connecting from loopback may register WITHOUT an auth key; never use this on a shared machine")
	}
	s.wg.Add(1)
	go s.janitorLoop()
	if s.fan.feed == nil {
		s.wg.Add(1)
		go s.onlineLoop(s.graceUntil)
	}
	s.startAccessControl()
	s.fan.start()
	return s, nil
}

// load reads networks and nodes from the store.
func (s *Server) load(ctx context.Context, adminToken string) error {
	if adminToken != "" {
		h := sha256.Sum256([]byte(adminToken))
		h2 := h[:]
		if err := s.store.SetSetting(ctx, adminTokenSetting, h2); err != nil {
			return fmt.Errorf("coordinator: store admin token hash: %w", err)
		}
		s.admin.tokenHash.Store(&h2)
	} else {
		h, err := s.store.Setting(ctx, adminTokenSetting)
		switch {
		case err == nil && len(h) == sha256.Size:
			s.admin.tokenHash.Store(&h)
		case err == nil || errors.Is(err, ErrNotFound):
		default:
			return fmt.Errorf("coordinator: load admin token hash: %w", err)
		}
	}
	if _, err := s.store.EnsureNetwork(ctx, DefaultNetwork, DefaultNetwork+"."+s.baseDomain); err != nil {
		return fmt.Errorf("coordinator: create default network: %w", err)
	}
	nets, err := s.store.Networks(ctx)
	if err != nil {
		return fmt.Errorf("coordinator: load networks: %w", err)
	}
	for _, n := range nets {
		s.networks[n.ID] = n
		s.netNames[n.Name] = n
	}
	nodes, err := s.store.Nodes(ctx)
	if err != nil {
		return fmt.Errorf("coordinator: load nodes: %w", err)
	}
	now := s.now()
	for _, rec := range nodes {
		rec.Node.Online = false
		s.nodes[rec.Node.Key] = &nodeEntry{rec: *rec, offlineSince: now}
		s.reg.useIPv4(rec.Node.Addresses, true)
		s.floorFromRecord(rec, now)
	}
	if s.graceUntil, err = s.loadOnline(ctx, now); err != nil {
		return fmt.Errorf("coordinator: load nodes streaming at shutdown: %w", err)
	}
	return nil
}

// Close ends all map streams, stops background work and waits for every
// goroutine of the Server to return. It does not close the Store.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	rctx, rcancel := context.WithTimeout(context.Background(), 5*time.Second)
	s.recordOnline(rctx)
	rcancel()
	s.cancel()
	s.wg.Wait()
	s.fan.flush()
	return nil
}

// enter counts a request in s.wg, or reports false once the Server is closed.
func (s *Server) enter() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.wg.Add(1)
	return true
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !s.enter() {
		writeError(w, errorf(http.StatusServiceUnavailable, wire.CodeUnavailable, "coordinator is shutting down"))
		return
	}
	defer s.wg.Done()
	defer func() {
		// A bug in one handler must not take the coordinator down.
		if p := recover(); p != nil {
			if p == http.ErrAbortHandler {
				panic(p)
			}
			s.logger.Error("handler panic", "path", r.URL.Path, "panic", fmt.Sprint(p))
			writeError(w, errorf(http.StatusInternalServerError, wire.CodeInternal, "internal error"))
		}
	}()
	s.mux.ServeHTTP(w, r)
}

// routes returns the Server's mux and, nested in it under
// wire.PathAdminPrefix behind adminAPI.require, the admin API's mux. Every
// pattern is a method and a wire.Path constant (TestRoutesAreWirePaths).
func (s *Server) routes() (mux, admin *http.ServeMux) {
	mux = http.NewServeMux()
	mux.HandleFunc("GET "+wire.PathKey, s.handleKey)
	mux.HandleFunc("GET "+wire.PathKeyProof, s.handleKeyProof)
	mux.HandleFunc("POST "+wire.PathRegister, bindReplies(s.reg.handleRegister))
	mux.HandleFunc("GET "+wire.PathApprovalPage, s.reg.handleApprovalPage)
	mux.HandleFunc("POST "+wire.PathMap, bindReplies(s.handleMap))
	mux.HandleFunc("GET "+wire.PathDERPVerify, s.handleDERPVerify)
	mux.HandleFunc("GET "+wire.PathServerSetup, s.handleServerSetup)
	mux.HandleFunc("POST "+wire.PathExpose, bindReplies(s.edge.handleExpose))
	mux.HandleFunc("POST "+wire.PathTXT, bindReplies(s.edge.handleTXT))
	admin = http.NewServeMux()
	s.admin.register(admin)
	s.accessRoutes(mux, admin)
	mux.Handle(wire.PathAdminPrefix, s.admin.require(admin))
	return mux, admin
}

func (s *Server) handleServerSetup(w http.ResponseWriter, r *http.Request) {
	if s.serverSetup == nil {
		writeError(w, errorf(http.StatusNotFound, wire.CodeNotFound, "this coordinator has no public server setup (it is not run by beam server with a domain)"))
		return
	}
	setup := s.serverSetup()
	if !bearerIs(r, s.admin.hash()) {
		setup = publicSetup(setup)
	}
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, setup)
}

// publicSetup is what GET wire.PathServerSetup tells anyone: what a
// device probes from outside before it joins (the domain, the addresses
// the zone publishes, the ports of the public listeners, which anyone can
// find by asking the zone and scanning), and whether the wildcard
// certificate is issued (as a TLS handshake would tell). Why an ACME
// order failed, the CA's URL and the order's history are the admin's:
// the error text names internal resolvers, proxies and CA hosts. The
// setup check on the server (beam server check) presents the admin token
// and gets them.
func publicSetup(full *wire.ServerSetup) *wire.ServerSetup {
	s := *full
	if c := full.Certificate; c != nil {
		s.Certificate = &wire.CertStatus{Name: c.Name, State: c.State}
	}
	return &s
}

func (s *Server) handleKey(w http.ResponseWriter, r *http.Request) {
	w.Header().Set(wire.HeaderVersion, versionHeader)
	w.Header().Set(wire.HeaderBootEpoch, s.epoch.text)
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	io.WriteString(w, s.pubText)
}

// sealedRequest is a control request that opened with its node key and
// passed the freshness check, but is not yet recorded against replays
// (Server.seeRequest).
type sealedRequest struct {
	nk   key.NodePublic
	hash [32]byte // SHA-256 of the sealed box
	ts   time.Time
	now  time.Time // when it was checked
	seen bool      // recorded by seeRequest
	// bound is set when the request carries this start's boot epoch:
	// no other coordinator or start takes it (replay.go).
	bound bool
}

// openRequest reads and opens a sealed control request into v, then
// checks that its node key is the envelope's and that its timestamp is
// within MaxClockSkew, and that it is sealed for this start's boot epoch
// (bootEpoch.check). It does not record it: anyone can seal a request
// with a key they just made, so recording happens only once the request
// proves it can change something (seeRequest). hdr returns the sealed
// request's node key and timestamp after decoding.
func (s *Server) openRequest(w http.ResponseWriter, r *http.Request, v any, hdr func() (key.NodePublic, time.Time)) (*sealedRequest, *apiError) {
	// The connection's own writer: MaxBytesReader tells it to close the
	// connection after a body too large.
	cw := w
	if rw, ok := w.(*replyWriter); ok {
		cw = rw.ResponseWriter
	}
	body, err := io.ReadAll(http.MaxBytesReader(cw, r.Body, maxRequestSize))
	if err != nil {
		return nil, errorf(http.StatusBadRequest, wire.CodeBadRequest, "read request: too large or cut short")
	}
	env, err := decodeEnvelope(body)
	if err != nil {
		if aerr := s.chargeSource(w, r); aerr != nil {
			return nil, aerr
		}
		return nil, errorf(http.StatusBadRequest, wire.CodeBadRequest, "malformed envelope")
	}
	s.mu.Lock()
	known := s.nodes[env.NodeKey] != nil
	s.mu.Unlock()
	if !known {
		if aerr := s.chargeSource(w, r); aerr != nil {
			return nil, aerr
		}
	}
	clear, ok := s.boxes.open(s.priv, env.NodeKey, env.Sealed, known)
	if !ok {
		if known {
			if aerr := s.chargeSource(w, r); aerr != nil {
				return nil, aerr
			}
		}
		return nil, errorf(http.StatusUnauthorized, wire.CodeBadSeal, "sealed request does not open with node_key and this coordinator's key")
	}
	if err := jsonUnmarshal(clear, v); err != nil {
		return nil, errorf(http.StatusBadRequest, wire.CodeBadRequest, "malformed sealed request")
	}
	if aerr := setReplyNonce(w, v); aerr != nil {
		return nil, aerr
	}
	nk, ts := hdr()
	if nk != env.NodeKey {
		return nil, errorf(http.StatusUnauthorized, wire.CodeKeyMismatch, "sealed node key differs from the envelope's")
	}
	s.setReplyBox(w, nk) // errors from here on are sealed (bind.go)
	now := s.now()
	if d := now.Sub(ts); d > MaxClockSkew || d < -MaxClockSkew {
		return nil, errorf(http.StatusUnauthorized, wire.CodeClockSkew, "request timestamp is %s away from the coordinator's clock", d.Round(time.Second))
	}
	// A request sealed for another start (or replica) is refused before
	// it is charged to the node's own bucket: the node sends it again
	// at once (coordclient), and someone replaying a node's old
	// requests does not drain its bucket with them.
	bound, aerr := s.epoch.check(v)
	if aerr != nil {
		return nil, aerr
	}
	if known {
		// Its own bucket, whatever its address (chargeSource spares a
		// registered node what others at its address send).
		if aerr := s.chargeNode(w, nk); aerr != nil {
			return nil, aerr
		}
	}
	return &sealedRequest{nk: nk, hash: sha256.Sum256(env.Sealed), ts: ts, now: now, bound: bound}, nil
}

// seeRequest records q against replays, in memory and, unless it is
// bound to this start's boot epoch, on a shared store, and refuses it if
// it was seen before. It is called once q is known to
// come from a registered node key or to carry a valid credential, before
// anything is changed on its behalf; calling it again for the same q
// does nothing.
func (s *Server) seeRequest(ctx context.Context, q *sealedRequest) *apiError {
	if q.seen {
		return nil
	}
	if !s.replay.add(q.nk, q.hash, q.ts, q.now) || !q.bound && !s.sharedReplay.add(ctx, q.hash, q.now) {
		return errorf(http.StatusUnauthorized, wire.CodeReplay, "request was already seen")
	}
	q.seen = true
	s.mu.Lock()
	known := s.nodes[q.nk] != nil
	s.mu.Unlock()
	if !known {
		// q may register its key (it carries a credential). The key's
		// requests from before were refused as unregistered without
		// being recorded, so once it is registered their replays would
		// be new: refuse every request of the key stamped before q.
		// Stamps are the node's own clock, so a node whose clock is off
		// still has its later requests admitted.
		s.replay.raiseFloor(q.nk, q.ts.Add(-time.Nanosecond), q.now)
	}
	return nil
}

// floorFromRecord refuses the requests of rec's key stamped before the
// request that registered it, on a coordinator that learns of the node
// from the store (another registered it, or this one before a restart):
// seeRequest did so only where the registration happened. Only a
// registration recent enough that an earlier stamp could still pass the
// freshness check needs it.
func (s *Server) floorFromRecord(rec *NodeRecord, now time.Time) {
	if rec.RegStamp.IsZero() || rec.RegStamp.Before(now.Add(-MaxClockSkew)) {
		return
	}
	s.replay.raiseFloor(rec.Node.Key, rec.RegStamp.Add(-time.Nanosecond), now)
}

// readRequest is openRequest for the endpoints only registered nodes may
// use (map, expose, TXT): it refuses a node key the coordinator does not
// know, unrecorded (such a request changes nothing, so its replay is as
// harmless as the request), and records the others with seeRequest.
func (s *Server) readRequest(w http.ResponseWriter, r *http.Request, v any, hdr func() (key.NodePublic, time.Time)) (key.NodePublic, *apiError) {
	q, aerr := s.openRequest(w, r, v, hdr)
	if aerr != nil {
		return key.NodePublic{}, aerr
	}
	s.fan.ensureNode(r.Context(), q.nk) // registered through another coordinator
	s.mu.Lock()
	known := s.nodes[q.nk] != nil
	s.mu.Unlock()
	if !known {
		return key.NodePublic{}, errorf(http.StatusForbidden, wire.CodeNodeNotRegistered, "node not registered")
	}
	if aerr := s.seeRequest(r.Context(), q); aerr != nil {
		return key.NodePublic{}, aerr
	}
	return q.nk, nil
}

// writeSealed writes v as JSON sealed to nk, with the key bound to the
// request's nonce when it had one (bind.go).
func (s *Server) writeSealed(w http.ResponseWriter, nk key.NodePublic, v any) {
	b, err := jsonMarshal(v)
	if err != nil {
		writeError(w, errorf(http.StatusInternalServerError, wire.CodeInternal, "encode response"))
		return
	}
	box, _ := s.replyKey(w, nk)
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Write(box.Seal(b))
}

// localRequest reports whether r comes from this host in the sense dev
// mode trusts: over a loopback connection, addressed to a loopback name
// (127.0.0.0/8, ::1, localhost, *.localhost; any port), and not sent by a
// browser on behalf of another site's page.
//
// The peer address alone is not enough. A web page the user visits can
// have the browser send requests to 127.0.0.1 under a name of the page's
// own that it re-points there (DNS rebinding); such requests come over
// loopback but carry that name in Host, and Origin or Sec-Fetch-Site tell
// of the other site. A reverse proxy on this host relays other hosts'
// requests over loopback too, under the public name. Neither is local:
// it needs an auth key, or approval, like a request from anywhere else.
//
// A peer's connection that a node would forward to this host's loopback
// is stopped by the node, which counts its coordinators' ports among its
// own listeners and forwards nothing to them.
func localRequest(r *http.Request) bool {
	if !remoteIsLoopback(r) || !loopbackHost(r.Host) {
		return false
	}
	if o := r.Header.Get("Origin"); o != "" {
		u, err := url.Parse(o)
		if err != nil || u.Host == "" || !strings.EqualFold(u.Host, r.Host) {
			return false
		}
	}
	switch r.Header.Get("Sec-Fetch-Site") {
	case "cross-site", "same-site":
		return false
	}
	return true
}

// loopbackHost reports whether a Host header's host names this host's
// loopback: a loopback address, localhost, or a name under localhost.
func loopbackHost(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	if host == "localhost" || strings.HasSuffix(host, ".localhost") {
		return true
	}
	a, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(host, "["), "]"))
	return err == nil && a.Zone() == "" && a.Unmap().IsLoopback()
}

func remoteIsLoopback(r *http.Request) bool {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return false
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.Unmap().IsLoopback()
}

// SetDERPMap replaces the relay map and pushes it to every streaming node.
func (s *Server) SetDERPMap(m *wire.DERPMap) {
	s.derpMap.Store(m)
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, ss := range s.sessions {
		ss.markDERP()
	}
}

func (s *Server) handleDERPVerify(w http.ResponseWriter, r *http.Request) {
	if !bearerIs(r, s.relayTokenHash()) && !bearerIs(r, s.prevRelayHash()) && !bearerIs(r, s.admin.hash()) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="beam"`)
		writeError(w, errorf(http.StatusUnauthorized, wire.CodeUnauthorized, "missing or wrong relay token"))
		return
	}
	w.Header().Set("Content-Type", "application/json")
	nk, err := key.ParseNodePublic(r.URL.Query().Get("key"))
	if err != nil {
		w.WriteHeader(http.StatusBadRequest)
		jsonEncode(w, wire.DERPVerifyResponse{})
		return
	}
	allow := s.AdmitsToRelay(nk)
	if !allow {
		w.WriteHeader(http.StatusForbidden)
	}
	jsonEncode(w, wire.DERPVerifyResponse{Allow: allow})
}

// AdmitsToRelay reports whether the node key k may use the region's
// relays: it is the key of a node this coordinator knows whose key has not
// expired. It is the check wire.PathDERPVerify answers, for a relay that
// runs in the coordinator's process (beam server).
func (s *Server) AdmitsToRelay(k key.NodePublic) bool {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.nodes[k]
	return e != nil && !e.rec.Node.Expired(now)
}

// bearerIs reports whether r carries a bearer token whose SHA-256 is
// hash (never, for a nil hash).
func bearerIs(r *http.Request, hash []byte) bool {
	const prefix = "Bearer "
	auth := r.Header.Get("Authorization")
	if hash == nil || len(auth) <= len(prefix) || auth[:len(prefix)] != prefix {
		return false
	}
	got := sha256.Sum256([]byte(auth[len(prefix):]))
	return subtle.ConstantTimeCompare(got[:], hash) == 1
}

// janitorLoop deletes ephemeral nodes that stayed offline, ends streams of
// nodes whose key expired, prunes the replay cache and drops expired
// approvals with their uncollected auth keys.
func (s *Server) janitorLoop() {
	defer s.wg.Done()
	every := min(max(s.ephemeral/4, 10*time.Millisecond), 5*time.Second)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
		now := s.now()
		s.replay.prune(now)
		s.machineLimit.sweep(now)
		s.nodeLimit.sweep(now)
		for _, l := range []*logLimiter{&s.reg.refusedLog, &s.reg.waitingLog, &s.reg.droppedLog} {
			l.flush(s.logger, now)
		}
		s.sharedReplay.prune(s.ctx, now)
		s.reg.pruneApprovals(s.ctx)
		var drop []key.NodePublic
		s.mu.Lock()
		for k, e := range s.nodes {
			if e.rec.Node.Ephemeral && s.sessions[k] == nil && e.remote == PresenceNone && !e.offlineSince.IsZero() && now.Sub(e.offlineSince) >= s.ephemeral {
				drop = append(drop, k)
				continue
			}
			if !e.expiryHandled && e.rec.Node.Expired(now) {
				e.expiryHandled = true
				s.expireLocked(e)
			}
		}
		s.mu.Unlock()
		for _, k := range drop {
			if err := s.removeNode(s.ctx, k, wire.CodeNodeRemoved, "ephemeral node went offline"); err != nil && !errors.Is(err, ErrNotFound) {
				s.logger.Warn("delete ephemeral node", "node", k.ShortString(), "err", err)
			} else if err == nil {
				s.logger.Info("deleted offline ephemeral node", "node", k.ShortString())
				s.audit(s.ctx, actorCoordinator, "node.remove", k.ShortString(), "ephemeral node went offline")
			}
		}
	}
}
