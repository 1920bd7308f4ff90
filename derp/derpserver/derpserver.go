// Package derpserver is Beam's relay server and STUN responder.
//
// A Server relays packets between nodes that cannot reach each other
// directly. It never opens listeners: it accepts connections handed to
// Accept, or serves HTTP as an http.Handler (the "/derp" upgrade, its
// WebSocket variant, and "/derp/probe" and "/generate_204" for latency
// checks). ServeSTUN answers STUN Binding requests, rate-limited per
// source address, on a PacketConn it is given.
//
// Relays of one region mesh with each other: each dials the others with
// the region's mesh key, watches which clients they hold, and forwards
// packets for those clients one hop. A peer pinned to its machine key
// (MeshPeer.Key) that presents another is refused before it is sent
// anything. After the handshake a mesh connection's bytes travel in
// sealed records (derp.MeshRecords) under keys fresh from both sides (the
// server's challenge and the dialing relay's nonce), so nothing recorded
// from one mesh connection passes on another; only a connection that
// proved the mesh key may send mesh frames (forward packet, watch conns).
//
// Policies:
//   - A client proves it holds the node key it claims by sealing its client
//     info with it; with Options.VerifyClient set, the key must also be
//     admitted by it, at the handshake and again every
//     Options.ReverifyInterval while it stays connected.
//   - Duplicate connections for one node key: the newest wins. The older
//     connection gets a health frame saying it was replaced and is closed.
//   - A packet addressed to its own sender is dropped.
//   - Each client has bounded send queues, one for disco packets and one for
//     everything else; a full queue drops its oldest packet. The queues of
//     all clients together are bounded too (Options.MaxQueueBytes).
//   - A mesh link's forward queue, shared by every client whose packets
//     cross it, serves the sources in turn by bytes and, when full, drops
//     the packets of the source holding the most, so that one client's
//     flood does not cost the others their packets.
//   - When a client disconnects, every client that sent to it gets a peer
//     gone frame.
package derpserver

import (
	"bufio"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/subtle"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"beam.dev/beam/derp"
	"beam.dev/beam/types/key"
)

// Options configures a Server.
type Options struct {
	// PrivateKey is the relay's machine key. If zero, New generates a
	// random one (fine for tests; real relays load a stored key so clients
	// see a stable identity).
	PrivateKey key.MachinePrivate
	// Logger receives the server's logs; nil discards them.
	Logger *slog.Logger
	// VerifyClient decides whether a node key may connect; nil admits
	// every key that proves itself. Mesh peers bypass it.
	VerifyClient func(ctx context.Context, k key.NodePublic) error
	// ReverifyInterval is how often the keys of connected clients are
	// checked again with VerifyClient, so that a node removed from the
	// coordinator loses the relay too. A client whose key VerifyClient
	// now refuses with an error that wraps ErrNotAdmitted (and not
	// ErrTokenRefused, which says nothing of the key) is told so and
	// disconnected; other errors (the check could not be made) leave it
	// connected. 60s if zero; unused without VerifyClient.
	ReverifyInterval time.Duration
	// MeshKey is the secret shared by the relays of a region; empty means
	// this server neither accepts nor makes mesh connections.
	MeshKey string
	// MeshWith lists the other relays of the region to mesh with. Ignored
	// (with an error logged) without a MeshKey. A peer that turns out to
	// be this server itself is skipped.
	MeshWith []MeshPeer
	// MeshDialContext dials mesh peers; a net.Dialer if nil.
	MeshDialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	// MeshTLSConfig is used to dial https:// mesh peers; the system
	// defaults if nil.
	MeshTLSConfig *tls.Config
	// PerClientRateBytes is each client's sustained send rate in bytes per
	// second; 0 means unlimited. Mesh peers are not limited.
	PerClientRateBytes float64
	// PerClientBurstBytes is each client's burst allowance; if smaller
	// than one maximum-size frame (or zero) it is raised to that.
	PerClientBurstBytes int
	// SendQueueDepth bounds the non-disco packets queued per client;
	// 4096 if zero. SendQueueBytes bounds their bytes; 2 MiB if zero (the
	// worst case of 32 maximum-size packets). Past either bound the oldest
	// packets are dropped. Queue memory is taken only while packets wait.
	SendQueueDepth int
	SendQueueBytes int
	// MaxQueueBytes bounds the bytes queued for all clients together;
	// 256 MiB if zero (128 clients' full queues). While over it, a
	// packet queued for a client drops that client's oldest packets
	// first, down to itself.
	MaxQueueBytes int
	// DiscoQueueDepth is the number of disco packets queued per client; 16
	// if zero.
	DiscoQueueDepth int
	// WriteTimeout bounds each write to a client; a client that does not
	// take its data in time is disconnected. 5s if zero.
	WriteTimeout time.Duration
	// KeepAliveInterval is how often idle clients get a keepalive; 60s if
	// zero.
	KeepAliveInterval time.Duration
	// HandshakeTimeout bounds the handshake; 10s if zero.
	HandshakeTimeout time.Duration
}

// Stats are counters of a Server since New.
type Stats struct {
	// Clients is the number of connected clients, mesh peers included.
	Clients int `json:"clients"`
	// MeshClients is how many of Clients are meshed relays.
	MeshClients int `json:"mesh_clients"`
	// RemoteClients is the number of clients known to be on meshed relays.
	RemoteClients int `json:"remote_clients"`
	// Accepted counts completed handshakes.
	Accepted int64 `json:"accepted"`
	// Refused counts failed or refused handshakes.
	Refused int64 `json:"refused"`
	// PacketsRelayed and BytesRelayed count packets written to their
	// destination client.
	PacketsRelayed int64 `json:"packets_relayed"`
	BytesRelayed   int64 `json:"bytes_relayed"`
	// PacketsForwarded counts packets handed to a meshed relay.
	PacketsForwarded int64 `json:"packets_forwarded"`
	// PacketsDropped counts every dropped packet; the fields after it
	// break it down by reason.
	PacketsDropped   int64 `json:"packets_dropped"`
	DropsQueueFull   int64 `json:"drops_queue_full"`
	DropsUnknownDest int64 `json:"drops_unknown_dest"`
	DropsToSelf      int64 `json:"drops_to_self"`
	DropsGone        int64 `json:"drops_gone"`
	// STUNDropped counts STUN requests Server.ServeSTUN left unanswered
	// because their source was past its rate limit.
	STUNDropped int64 `json:"stun_dropped"`
}

// Server is a relay server. Create it with New; it is safe for concurrent
// use.
//
// Goroutines: Accept runs on its caller's goroutine and starts, per client,
// one reader and one sendLoop in an errgroup; New starts one goroutine per
// mesh peer. Close waits for all of them.
//
// Lock order: Server.mu before sclient.pmu.
type Server struct {
	privateKey key.MachinePrivate
	publicKey  key.MachinePublic
	meshNode   key.NodePrivate // this server's identity towards mesh peers
	logger     *slog.Logger
	opts       Options

	ctx    context.Context // canceled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup // Accept calls and mesh loops

	closeOnce sync.Once
	warnLimit *rate.Limiter // warnings a client can cause

	mu       sync.RWMutex // guards the following fields
	closed   bool
	clients  map[key.NodePublic]*sclient                // newest connection per key
	watchers map[*sclient]struct{}                      // mesh peers watching our clients
	remote   map[key.NodePublic]*meshPeer               // clients on meshed relays
	sentTo   map[key.NodePublic]map[key.NodePublic]bool // dst -> srcs that sent to it
	meshUp   int                                        // connected outbound mesh links

	accepted, refused                atomic.Int64
	packetsRelayed, bytesRelayed     atomic.Int64
	packetsForwarded                 atomic.Int64
	dropsQueueFull, dropsUnknownDest atomic.Int64
	dropsToSelf, dropsGone           atomic.Int64

	queueBudget *queueBudget // shared by the clients' send queues

	stunLimit   *stunLimiter // shared by ServeSTUN's responders
	stunDropped atomic.Int64
}

// New returns a Server that relays with the given options and starts its
// mesh connections. It does not listen on its own: hand it connections with
// Accept or serve it over HTTP.
func New(opts Options) *Server {
	if opts.PrivateKey.IsZero() {
		opts.PrivateKey = key.NewMachine()
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if len(opts.MeshWith) > 0 && opts.MeshKey == "" {
		opts.Logger.Error("derpserver: MeshWith ignored: no MeshKey set")
		opts.MeshWith = nil
	}
	if opts.SendQueueDepth <= 0 {
		opts.SendQueueDepth = 4096
	}
	if opts.SendQueueBytes <= 0 {
		opts.SendQueueBytes = 2 << 20
	}
	if opts.MaxQueueBytes <= 0 {
		opts.MaxQueueBytes = 256 << 20
	}
	if opts.DiscoQueueDepth <= 0 {
		opts.DiscoQueueDepth = 16
	}
	if opts.WriteTimeout <= 0 {
		opts.WriteTimeout = 5 * time.Second
	}
	if opts.KeepAliveInterval <= 0 {
		opts.KeepAliveInterval = 60 * time.Second
	}
	if opts.HandshakeTimeout <= 0 {
		opts.HandshakeTimeout = 10 * time.Second
	}
	if opts.ReverifyInterval <= 0 {
		opts.ReverifyInterval = 60 * time.Second
	}
	if opts.PerClientBurstBytes < derp.MaxFrameSize {
		opts.PerClientBurstBytes = derp.MaxFrameSize
	}
	s := &Server{
		privateKey: opts.PrivateKey,
		publicKey:  opts.PrivateKey.Public(),
		meshNode:   key.NewNode(),
		logger:     opts.Logger.With("component", "derpserver"),
		opts:       opts,
		clients:    make(map[key.NodePublic]*sclient),
		watchers:   make(map[*sclient]struct{}),
		remote:     make(map[key.NodePublic]*meshPeer),
		sentTo:     make(map[key.NodePublic]map[key.NodePublic]bool),
		warnLimit:  rate.NewLimiter(1, 10),
		stunLimit:  newSTUNLimiter(stunRate, stunBurst, stunMaxSources),
	}
	s.queueBudget = &queueBudget{max: int64(opts.MaxQueueBytes)}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	for _, p := range opts.MeshWith {
		mp := newMeshPeer(s, p)
		if p.Key.IsZero() {
			mp.logger.Warn("mesh peer's server key is not pinned: whoever answers at this URL gets the packets forwarded to it; pin it as URL#KEY with the key the peer logs as machine_key")
		}
		s.wg.Go(func() { mp.run(s.ctx) })
	}
	if opts.VerifyClient != nil {
		s.wg.Go(s.reverifyLoop)
	}
	return s
}

// reverifyLoop checks the keys of the connected clients with VerifyClient
// every ReverifyInterval, one at a time, and disconnects those it now
// refuses (see Options.ReverifyInterval).
func (s *Server) reverifyLoop() {
	t := time.NewTicker(s.opts.ReverifyInterval)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
		s.mu.RLock()
		cs := make([]*sclient, 0, len(s.clients))
		for _, c := range s.clients {
			if !c.isMesh {
				cs = append(cs, c)
			}
		}
		s.mu.RUnlock()
		for _, c := range cs {
			if s.ctx.Err() != nil {
				return
			}
			ctx, cancel := context.WithTimeout(s.ctx, s.opts.HandshakeTimeout)
			err := s.opts.VerifyClient(ctx, c.key)
			cancel()
			if err == nil || !errors.Is(err, ErrNotAdmitted) || errors.Is(err, ErrTokenRefused) {
				continue
			}
			if s.warnLimit.Allow() {
				c.logger.Info("node key no longer admitted; disconnected it", "err", err)
			}
			c.unadmitted.Store(true)
			c.cancel()
		}
	}
}

// PublicKey returns the server's machine public key.
func (s *Server) PublicKey() key.MachinePublic { return s.publicKey }

// Close tells every client the server is restarting, closes them, stops
// mesh links and waits for all of the server's goroutines and Accept calls
// to return. It is safe to call more than once.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		s.cancel()
		s.wg.Wait()
	})
	return nil
}

// Stats returns the server's counters.
func (s *Server) Stats() Stats {
	st := Stats{
		Accepted:         s.accepted.Load(),
		Refused:          s.refused.Load(),
		PacketsRelayed:   s.packetsRelayed.Load(),
		BytesRelayed:     s.bytesRelayed.Load(),
		PacketsForwarded: s.packetsForwarded.Load(),
		DropsQueueFull:   s.dropsQueueFull.Load(),
		DropsUnknownDest: s.dropsUnknownDest.Load(),
		DropsToSelf:      s.dropsToSelf.Load(),
		DropsGone:        s.dropsGone.Load(),
		STUNDropped:      s.stunDropped.Load(),
	}
	st.PacketsDropped = st.DropsQueueFull + st.DropsUnknownDest + st.DropsToSelf + st.DropsGone
	s.mu.RLock()
	st.Clients = len(s.clients)
	for _, c := range s.clients {
		if c.isMesh {
			st.MeshClients++
		}
	}
	st.RemoteClients = len(s.remote)
	s.mu.RUnlock()
	return st
}

// Accept serves one relay client on nc, which has already been upgraded
// (the 101 response is written), until the client leaves, ctx is done or
// the server closes. brw, if not nil, holds bytes already buffered from nc
// and the writer to use; remoteAddr names the client in logs. Accept closes
// nc before it returns.
func (s *Server) Accept(ctx context.Context, nc net.Conn, brw *bufio.ReadWriter, remoteAddr string) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		nc.Close()
		return
	}
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()
	defer nc.Close()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stopServer := context.AfterFunc(s.ctx, cancel)
	defer stopServer()

	if brw == nil {
		brw = bufio.NewReadWriter(bufio.NewReaderSize(nc, 4<<10), bufio.NewWriterSize(nc, 4<<10))
	}
	logger := s.logger.With("remote", remoteAddr)
	// The handshake is bounded by a deadline and interrupted by closing
	// nc when ctx ends, but only until the server info goes out: a client
	// that got it is served by run, which says goodbye properly. (Moving a
	// deadline into the past would not do: on a WebSocket conn a deadline
	// that fires mid-write breaks the conn for good.)
	nc.SetDeadline(time.Now().Add(s.opts.HandshakeTimeout))
	var hsMu sync.Mutex
	hsDone := false
	stop := context.AfterFunc(ctx, func() {
		hsMu.Lock()
		defer hsMu.Unlock()
		if !hsDone {
			nc.Close()
		}
	})
	defer stop()
	c, serverInfo, err := s.handshake(ctx, nc, brw, logger)
	if err != nil {
		s.refused.Add(1)
		logger.Debug("handshake failed", "err", err)
		return
	}
	c.cancel = cancel
	hsMu.Lock()
	hsDone = true
	hsMu.Unlock()
	// Register before the client learns the handshake is done, so that
	// packets sent to it as soon as its Dial returns find it.
	s.register(c)
	err = derp.WriteFrame(brw.Writer, derp.FrameServerInfo, serverInfo)
	if err == nil {
		err = brw.Flush()
	}
	if err != nil {
		s.unregister(c)
		c.releaseQueues()
		s.refused.Add(1)
		logger.Debug("send server info", "err", err)
		return
	}
	nc.SetDeadline(time.Time{})
	if c.isMesh {
		// From here on, a mesh connection's bytes travel in sealed
		// records (derp.MeshRecords); the reader takes what the
		// handshake read ahead.
		rr, rw := derp.MeshRecords(s.opts.MeshKey, c.meshChallenge, c.info.MeshNonce, s.publicKey.Raw32(), c.key.Raw32(), true, brw.Reader, nc)
		c.br = bufio.NewReaderSize(rr, meshBufSize)
		c.bw = bufio.NewWriterSize(rw, meshBufSize)
	}
	s.accepted.Add(1)
	c.logger.Debug("client connected", "mesh", c.isMesh)
	err = c.run(ctx)
	s.unregister(c)
	c.releaseQueues()
	switch mo, ok := errors.AsType[*meshOnlyError](err); {
	case ok:
		if s.warnLimit.Allow() {
			c.logger.Warn("disconnected a client that sent a mesh-only frame without proving the region's mesh key", "frame", mo.name)
		}
	case errors.Is(err, derp.ErrMeshRecord):
		c.logger.Warn("mesh link carried a record that does not authenticate (injected or altered on the way); disconnected it", "err", err)
	default:
		c.logger.Debug("client disconnected", "err", err)
	}
}

// meshBufSize is the size of a mesh connection's buffers: it carries
// the packets of every client whose peers are on the other relay.
const meshBufSize = 64 << 10

// refuse tells the client why it is refused, best effort.
func refuse(nc net.Conn, bw *bufio.Writer, reason string) {
	nc.SetWriteDeadline(time.Now().Add(time.Second))
	if derp.WriteFrame(bw, derp.FrameHealth, []byte(reason)) == nil {
		bw.Flush()
	}
}

// maxClientInfoLen bounds the FrameClientInfo payload.
const maxClientInfoLen = 32 + key.SealOverhead + 1024

// handshake reads and checks the client's info. It returns the new client
// and the sealed server info to send once the client is registered.
func (s *Server) handshake(ctx context.Context, nc net.Conn, brw *bufio.ReadWriter, logger *slog.Logger) (*sclient, []byte, error) {
	pub := s.publicKey.Raw32()
	var challenge [derp.ChallengeLen]byte
	rand.Read(challenge[:])
	if err := derp.WriteFrame(brw.Writer, derp.FrameServerKey, []byte(derp.Magic), pub[:], challenge[:]); err != nil {
		return nil, nil, fmt.Errorf("send server key: %w", err)
	}
	if err := brw.Flush(); err != nil {
		return nil, nil, fmt.Errorf("send server key: %w", err)
	}
	t, p, err := derp.ReadFrame(brw.Reader, maxClientInfoLen, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("read client info: %w", err)
	}
	if t != derp.FrameClientInfo {
		return nil, nil, fmt.Errorf("got frame type %#x, want client info", byte(t))
	}
	raw, sealed, err := derp.ParseClientInfoPayload(p)
	if err != nil {
		return nil, nil, err
	}
	clientKey := key.NodePublicFromRaw32(raw)
	msg, ok := s.privateKey.OpenFrom(clientKey, sealed)
	if !ok {
		refuse(nc, brw.Writer, "client key not proven")
		return nil, nil, fmt.Errorf("client %s: client info box does not open", clientKey.ShortString())
	}
	var info derp.ClientInfo
	if err := json.Unmarshal(msg, &info); err != nil {
		refuse(nc, brw.Writer, "bad client info")
		return nil, nil, fmt.Errorf("client %s: decode client info: %w", clientKey.ShortString(), err)
	}
	if subtle.ConstantTimeCompare(info.Challenge, challenge[:]) != 1 {
		refuse(nc, brw.Writer, "client info does not answer this connection's challenge (replayed or stale)")
		return nil, nil, fmt.Errorf("client %s: client info does not carry this connection's challenge", clientKey.ShortString())
	}
	isMesh := false
	if len(info.MeshProof) > 0 {
		want := derp.MeshProof(s.opts.MeshKey, challenge[:], pub, raw)
		if s.opts.MeshKey == "" || !hmac.Equal(info.MeshProof, want) {
			refuse(nc, brw.Writer, "mesh key mismatch")
			return nil, nil, fmt.Errorf("client %s: mesh key mismatch", clientKey.ShortString())
		}
		if info.Version < derp.MinMeshVersion {
			// It knows the mesh key, so this is the operator's to fix,
			// not noise: say so at warn.
			logger.Warn("refusing mesh peer: its relay protocol version does not take fresh mesh keys from both sides (a recorded mesh session could be replayed to it); upgrade it",
				"peer_version", info.Version, "min_version", derp.MinMeshVersion)
			refuse(nc, brw.Writer, fmt.Sprintf("mesh needs relay protocol version %d or later (fresh record keys from both sides); the dialing relay speaks %d", derp.MinMeshVersion, info.Version))
			return nil, nil, fmt.Errorf("client %s: mesh peer speaks protocol version %d", clientKey.ShortString(), info.Version)
		}
		if len(info.MeshNonce) != derp.MeshNonceLen {
			refuse(nc, brw.Writer, fmt.Sprintf("mesh client info needs a %d-byte mesh nonce", derp.MeshNonceLen))
			return nil, nil, fmt.Errorf("client %s: mesh nonce of %d bytes, want %d", clientKey.ShortString(), len(info.MeshNonce), derp.MeshNonceLen)
		}
		isMesh = true
	} else if s.opts.VerifyClient != nil {
		if err := s.opts.VerifyClient(ctx, clientKey); err != nil {
			refuse(nc, brw.Writer, "node key not admitted")
			return nil, nil, fmt.Errorf("client %s: not admitted: %w", clientKey.ShortString(), err)
		}
	}
	si := derp.ServerInfo{Version: derp.ProtocolVersion}
	if isMesh {
		si.MeshProof = derp.ServerMeshProof(s.opts.MeshKey, challenge[:], info.MeshNonce, pub, raw)
	}
	var lim *rate.Limiter
	if s.opts.PerClientRateBytes > 0 && !isMesh {
		lim = rate.NewLimiter(rate.Limit(s.opts.PerClientRateBytes), s.opts.PerClientBurstBytes)
		si.TokenBucketBytesPerSecond = int(s.opts.PerClientRateBytes)
		si.TokenBucketBytesBurst = s.opts.PerClientBurstBytes
	}
	sib, err := json.Marshal(si)
	if err != nil {
		return nil, nil, fmt.Errorf("marshal server info: %w", err)
	}
	c := newSClient(s, nc, brw, clientKey, info, isMesh, lim, logger)
	if isMesh {
		c.meshChallenge = challenge[:]
	}
	return c, s.privateKey.SealTo(clientKey, sib), nil
}

// register makes c the connection for its key, evicting an older one.
func (s *Server) register(c *sclient) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if old := s.clients[c.key]; old != nil {
		old.logger.Debug("replaced by a newer connection")
		old.evicted.Store(true)
		old.cancel()
	}
	s.clients[c.key] = c
	if !c.isMesh {
		for w := range s.watchers {
			w.queuePeerUpdate(peerUpdate{key: c.key, present: true})
		}
	}
}

// unregister removes c if it is still the connection for its key, and
// tells senders and watchers that the key is gone.
func (s *Server) unregister(c *sclient) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.watchers, c)
	if s.clients[c.key] != c {
		return // replaced by a newer connection
	}
	delete(s.clients, c.key)
	for dst := range c.sentTo {
		delete(s.sentTo[dst], c.key)
	}
	if c.isMesh {
		return
	}
	for w := range s.watchers {
		w.queuePeerUpdate(peerUpdate{key: c.key, present: false})
	}
	if _, ok := s.remote[c.key]; !ok {
		s.notifyGoneLocked(c.key)
	}
}

// notifyGoneLocked sends a peer gone frame for k to every connected client
// that sent to it. s.mu must be held.
func (s *Server) notifyGoneLocked(k key.NodePublic) {
	for src := range s.sentTo[k] {
		if sc := s.clients[src]; sc != nil {
			sc.queueCtrl(ctrlMsg{typ: derp.FramePeerGone, key: k, reason: derp.PeerGoneDisconnected})
		}
	}
	delete(s.sentTo, k)
}

// noteSentTo records that src sent to dst, for peer gone notices.
func (s *Server) noteSentTo(src, dst key.NodePublic) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.sentTo[dst]
	if m == nil {
		m = make(map[key.NodePublic]bool)
		s.sentTo[dst] = m
	}
	m[src] = true
}

// addWatcher subscribes the mesh peer c to client presence.
func (s *Server) addWatcher(c *sclient) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.watchers[c]; ok {
		return
	}
	s.watchers[c] = struct{}{}
	for k, sc := range s.clients {
		if !sc.isMesh {
			c.queuePeerUpdate(peerUpdate{key: k, present: true})
		}
	}
}

// route delivers a packet from src (connected here as from) to dst.
func (s *Server) route(from *sclient, dst key.NodePublic, data []byte) {
	src := from.key
	if dst == src {
		s.dropsToSelf.Add(1)
		return
	}
	s.mu.RLock()
	dc := s.clients[dst]
	mp := s.remote[dst]
	s.mu.RUnlock()
	switch {
	case dc != nil:
		from.noteSentTo(dst)
		dc.enqueuePacket(src, data)
	case mp != nil:
		from.noteSentTo(dst)
		mp.forward(src, dst, data)
	default:
		s.dropsUnknownDest.Add(1)
		from.queueCtrl(ctrlMsg{typ: derp.FramePeerGone, key: dst, reason: derp.PeerGoneNotHere})
	}
}

// deliverForwarded delivers a packet a mesh peer forwarded; it is never
// forwarded again.
func (s *Server) deliverForwarded(src, dst key.NodePublic, data []byte) {
	s.mu.RLock()
	dc := s.clients[dst]
	s.mu.RUnlock()
	if dc == nil {
		s.dropsUnknownDest.Add(1)
		return
	}
	dc.enqueuePacket(src, data)
}
