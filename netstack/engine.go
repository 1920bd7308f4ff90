// Package netstack is Beam's embeddable userspace data plane: a
// wireguard-go device over a gVisor TCP/IP stack, with Beam's magic bind
// underneath. Programs reach the overlay through DialContext, Listen and
// ListenPacket, which return plain net types; connections from peers to
// the node's overlay addresses that no local listener claims are forwarded
// to the same port on the host's loopback, subject to shields-up and the
// packet filter.
//
// Peers are reached over direct UDP, or through their home relay (DERP)
// region while no direct path is confirmed (see Config.DERPMap). Direct
// paths are found with disco (pings, pongs and call-me-maybe through the
// relay, which punch both NATs at once) to the endpoints each node learns
// by STUN from its WireGuard socket (Endpoints, Options.OnEndpoints); Ping
// and Netcheck expose both to the CLI. A node whose STUN servers saw
// different mappings (a NAT that maps each destination to another port)
// finds paths to nodes behind friendlier NATs by birthday probing: it opens
// many ports towards the peer and the peer probes random ports of its
// public IP (see the bind's birthday.go).
//
// wireguard-go is given a peer only while there is traffic to or from it
// (peers.go): every peer of the config is known to the bind, and the one a
// packet concerns is added to wireguard-go just before wireguard-go sees
// that packet, whichever side sends first; a peer idle for five minutes is
// removed again. Reconfig applies only what changed, and UpdatePeers
// changes single peers for the cost of those peers.
//
// Connections do not outlive a process at either end: when a peer
// restarts (its disco key changes) the engine probes its TCP connections
// with the peer, and a restarted engine that receives data of a session it
// never had starts a handshake; either way the peer's connections with
// the old process are reset at once rather than left waiting.
//
// Packet flow:
//
//	peer --UDP/relay--> bind --> wireguard-go (decrypt) --> filter --> gVisor --> listener / forwarder --> 127.0.0.1:port
//	app --> DialContext --> gVisor --> flow table --> wireguard-go (encrypt) --> bind --UDP--> peer
//
// Goroutines: wireguard-go's (owned by its device), gVisor's (owned by the
// stack), the engine's forwarding goroutines (counted in Engine.wg),
// discoveryLoop (STUN refresh and bind housekeeping) and peerLoop (idle
// peers leave wireguard-go), both counted in Engine.loopWG, and one per
// relay region in use (counted in relays.wg). Close stops them
// all and waits for them.
package netstack

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"beam.dev/beam/netstack/internal/bind"
	"beam.dev/beam/netstack/internal/gv"
	"beam.dev/beam/netstack/internal/inflight"
	"beam.dev/beam/types/key"
	"golang.zx2c4.com/wireguard/device"
)

// Options configures an Engine. Only PrivateKey is required.
type Options struct {
	// PrivateKey is the node's WireGuard key. Required.
	PrivateKey key.NodePrivate
	// ListenPort is the UDP port for WireGuard and direct paths, on all
	// addresses of both families. Zero picks a free port.
	ListenPort uint16
	// Logger receives the engine's logs. Nil discards them.
	Logger *slog.Logger
	// MaxInFlightTCP caps inbound TCP connection attempts being set up
	// at once (a SYN flood guard); further SYNs are ignored. Zero means 512.
	MaxInFlightTCP int
	// MTU is the overlay (inner) MTU. Zero means 1280, which fits inside
	// any IPv6 path after WireGuard's 80 bytes of overhead; larger values
	// only help where every path between peers carries larger datagrams.
	MTU int
	// UDPIdleTimeout is how long a forwarded inbound UDP flow's host
	// socket lives without traffic. Zero means 2 minutes.
	UDPIdleTimeout time.Duration
	// UDPUnrepliedTimeout is how long a forwarded inbound UDP flow whose
	// host socket never answered lives without traffic. Zero means 10
	// seconds; it is never longer than UDPIdleTimeout.
	UDPUnrepliedTimeout time.Duration
	// MaxUDPFlows caps concurrently forwarded inbound UDP flows. Zero
	// means 1024. One source overlay address may hold an eighth of them,
	// an edge's (Config.Edges) half.
	MaxUDPFlows int
	// MaxTCPConns caps concurrently forwarded inbound TCP connections,
	// each of which holds a host socket. Zero means a quarter of the
	// process's open-file limit, at least 256. One source overlay address
	// may hold an eighth of them, an edge's half; over that, a SYN gets
	// a RST.
	MaxTCPConns int
	// HostDialTimeout bounds connecting to a host port for an inbound
	// TCP connection. Zero means 5 seconds.
	HostDialTimeout time.Duration
	// CongestionControl is the overlay TCP congestion control, "bbr",
	// "cubic" or "reno". Empty means "bbr" (see gv.Options).
	CongestionControl string
	// DiscoKey is the node's disco key, which seals path discovery
	// messages. Zero generates one for this process (the usual case: the
	// node reports DiscoPublic to the coordinator, which hands it to
	// peers).
	DiscoKey key.DiscoPrivate
	// OnEndpoints, if set, is called when the node's endpoints (interface
	// addresses and STUN-mapped public addresses, with the WireGuard
	// port) or its home relay region change, so the node can report them
	// to the coordinator. It runs on an engine goroutine, never
	// concurrently with itself, and must not call Close.
	OnEndpoints func(eps []netip.AddrPort, homeDERP int)
	// OnFlow, if set, is called as each inbound TCP connection or UDP
	// flow forwarded to the host starts (Flow.End zero) and as it ends
	// (not in TUN mode, where nothing is forwarded), on the flow's
	// goroutine; it must return quickly.
	OnFlow func(Flow)
	// PortMapping asks the NAT gateway (PortMapGateway, else the IPv4
	// default route's next hop) for a mapping of the WireGuard port, by
	// PCP, NAT-PMP or UPnP IGD, advertises the public address it grants as an
	// endpoint, renews the mapping before it expires and deletes it on
	// Close (see portmap.go). Off by default: it sends to the gateway,
	// which tests and programs outside a lab must not do unasked.
	PortMapping bool
	// PortMapGateway, if valid, is the gateway PortMapping asks instead
	// of the default route's next hop.
	PortMapGateway netip.Addr
	// PortMapLifetime is the mapping lifetime asked; it is renewed
	// halfway through the shorter of this and the one granted. Zero
	// means 2 hours.
	PortMapLifetime time.Duration
	// TUN, if not empty, runs the engine in kernel TUN mode (Linux, with
	// root or CAP_NET_ADMIN): WireGuard runs on a kernel TUN device of this
	// name, created by New with its offloads (TCP segmentation and receive
	// coalescing), instead of the userspace stack. The host's own TCP/IP
	// then serves the overlay: the engine puts Config.Addresses and
	// Config.ServiceAddrs on the device and routes Config.Routes through
	// it, inbound flows that the filter accepts reach the host's sockets
	// (nothing is forwarded to loopback), and DialContext, Listen and
	// ListenPacket use host sockets. The device, its addresses and its
	// routes go when the engine closes or the process exits. Empty: the
	// userspace stack (no privileges needed).
	TUN string
	// NoHostForward refuses inbound TCP connections (with a reset) and
	// UDP flows that no listener of the engine claims, instead of
	// forwarding them to the host's loopback: for a program that embeds
	// the engine and serves peers only on its own listeners (package
	// beamnet). Ignored in TUN mode, where nothing is forwarded.
	NoHostForward bool
	// PeerRelay, if set, runs a UDP peer relay server on the node (see
	// PeerRelayOptions). Nil: none.
	PeerRelay *PeerRelayOptions
}

// Engine is a running data plane. Its methods are safe for concurrent use.
type Engine struct {
	log   *slog.Logger
	opts  Options
	bind  *bind.Bind
	stack *gv.Stack // nil in TUN mode
	dev   *device.Device
	tun   *tunFilter // TUN mode only (Options.TUN); else nil
	host  hostNet    // TUN mode only

	steerMu sync.Mutex                // guards steered
	steered map[netip.AddrPort]uint16 // TUN mode: listener address peers dial -> bound port (see listenSteered)
	relays  *relays
	pf      packetFilter

	ctx    context.Context // canceled by Close
	cancel context.CancelFunc

	udpFlows, tcpConns *fwdBudget // forwarded inbound UDP flows and TCP connections (fwdbudget.go)

	ownRefused atomic.Uint64 // inbound connections and flows refused by Config.OwnListeners
	ownLogAt   atomic.Int64  // unix nanoseconds of the last such refusal logged

	// disc is endpoint discovery and relay latency (discovery.go).
	disc discovery
	// pmap is the port mapping (portmap.go), with Options.PortMapping.
	pmap portMapState
	// loopWG counts discoveryLoop.
	loopWG sync.WaitGroup
	// prs is the peer relay server (Options.PeerRelay); nil if none.
	prs *peerRelayServer

	// ps is the per-peer state: which peers wireguard-go has (peers.go).
	ps peerTable

	mu      sync.Mutex // guards the following fields
	closed  bool
	cfg     Config                  // last applied config, with UpdatePeers' changes
	overlay map[netip.Addr]bool     // overlay addresses (forwarded)
	own     map[netip.AddrPort]bool // Config.OwnListeners: never forwarded to
	active  map[closer]struct{}     // forwarded connections, closed on Close
	wg      sync.WaitGroup          // forwarding goroutines; Add only under mu while !closed

	// noSessionBudget is how many packets the TUN reader hands
	// wireguard-go for a peer without a session (see admit), and
	// noSessionDrops counts the packets it dropped over that.
	noSessionBudget int
	noSessionDrops  atomic.Uint64
}

// closer is a forwarded connection the engine closes on Close.
type closer interface{ Close() error }

// New starts an engine with no addresses and no peers; call Reconfig to
// give it both.
func New(opts Options) (*Engine, error) {
	if opts.PrivateKey.IsZero() {
		return nil, errors.New("netstack: Options.PrivateKey is required")
	}
	if opts.UDPIdleTimeout == 0 {
		opts.UDPIdleTimeout = 2 * time.Minute
	}
	if opts.MaxUDPFlows == 0 {
		opts.MaxUDPFlows = 1024
	}
	if opts.UDPUnrepliedTimeout == 0 {
		opts.UDPUnrepliedTimeout = 10 * time.Second
	}
	opts.UDPUnrepliedTimeout = min(opts.UDPUnrepliedTimeout, opts.UDPIdleTimeout)
	if opts.MaxTCPConns == 0 {
		opts.MaxTCPConns = defaultMaxTCPConns()
	}
	if opts.HostDialTimeout == 0 {
		opts.HostDialTimeout = 5 * time.Second
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	e := &Engine{
		log:     log.With("component", "netstack"),
		opts:    opts,
		ctx:     ctx,
		cancel:  cancel,
		overlay: make(map[netip.Addr]bool),
		active:  make(map[closer]struct{}),

		udpFlows: newFwdBudget(opts.MaxUDPFlows),
		tcpConns: newFwdBudget(opts.MaxTCPConns),
	}
	e.ps.init()
	e.pf.now = func() int64 { return time.Now().Unix() }
	e.pf.pol.Store(&policy{open: true})

	if opts.DiscoKey.IsZero() {
		opts.DiscoKey = key.NewDisco()
		e.opts.DiscoKey = opts.DiscoKey
	}
	e.disc.init()
	e.noSessionBudget = inflightWindow(runtime.GOMAXPROCS(0))
	e.relays = newRelays(e, opts.PrivateKey)
	// The windows are released by the TUN, gVisor's or the kernel's
	// (tunFilter).
	inWin, outWin := newWindows()
	var relayServer bind.RelayServer
	if opts.PeerRelay != nil {
		if opts.PeerRelay.Port != 0 && opts.PeerRelay.Port == opts.ListenPort {
			cancel()
			return nil, errPeerRelayPort
		}
		prs, err := e.startPeerRelay(opts.PeerRelay)
		if err != nil {
			cancel()
			return nil, fmt.Errorf("netstack: %w", err)
		}
		e.prs, relayServer = prs, prs.srv
		stop := cancel
		cancel = func() { stop(); prs.close() }
	}
	b, err := bind.New(bind.Options{
		RelayServer: relayServer,
		Inbound:     inWin,
		Outbound:    outWin,
		PrivateKey:  opts.PrivateKey,
		Logger:      e.log.With("component", "bind"),
		Relay:       e.relays,
		DiscoKey:    opts.DiscoKey,
		OnSTUN:      e.onSTUN,
		// A peer still sending on a session of this node's previous
		// process gets a handshake at once: its connections to that
		// process then reach this stack, which resets them.
		OnStaleSession: e.onStaleSession,
		WakePeer:       e.wakePeer,
		RelayOnly:      debugAlwaysRelay(),
		// Nothing a peer sends through this process's forwarders reaches
		// the bind (the node also lists its port as its own listener).
		FromHostForward: isForwarded,
	})
	if err != nil {
		cancel()
		return nil, fmt.Errorf("netstack: %w", err)
	}
	e.bind = b
	closeTUN := func() {}
	if opts.TUN != "" {
		mtu := opts.MTU
		if mtu == 0 {
			mtu = 1280
		}
		tf, hn, err := e.newTUNDevice(opts.TUN, mtu, outWin, inWin)
		if err != nil {
			cancel()
			return nil, err
		}
		e.tun, e.host = tf, hn
		e.dev = device.NewDevice(tf, b, wgLogger(e.log)) // closes tf
	} else {
		st, err := gv.New(gv.Options{
			MTU:               opts.MTU,
			Logger:            e.log,
			MaxInFlightTCP:    opts.MaxInFlightTCP,
			CongestionControl: opts.CongestionControl,
			HandleTCP:         e.handleTCP,
			HandleUDP:         e.handleUDP,
			Inbound:           e.pf.inbound,
			Outbound:          e.outbound,
			InboundWindow:     inWin,
			OutboundWindow:    outWin,
		})
		if err != nil {
			cancel()
			return nil, fmt.Errorf("netstack: %w", err)
		}
		e.stack = st
		e.dev = device.NewDevice(st.TUN(), b, wgLogger(e.log))
		closeTUN = func() { st.Close() }
	}
	priv := opts.PrivateKey.Raw32()
	uapi := fmt.Sprintf("private_key=%s\nlisten_port=%d\n", hex.EncodeToString(priv[:]), opts.ListenPort)
	if err := e.dev.IpcSet(uapi); err != nil {
		e.dev.Close()
		closeTUN()
		cancel()
		return nil, fmt.Errorf("netstack: configure device: %w", err)
	}
	if err := e.dev.Up(); err != nil {
		e.dev.Close()
		closeTUN()
		cancel()
		return nil, fmt.Errorf("netstack: bring device up: %w", err)
	}
	e.loopWG.Add(1)
	go func() {
		defer e.loopWG.Done()
		e.discoveryLoop()
	}()
	e.loopWG.Go(e.peerLoop)
	if opts.PortMapping {
		e.loopWG.Go(e.portMapLoop)
	}
	return e, nil
}

// onStaleSession starts a handshake with a peer that sends transport data
// of a session this engine never had (see bind.Options.OnStaleSession).
func (e *Engine) onStaleSession(k key.NodePublic) {
	if !e.track(nil) {
		return
	}
	go func() {
		defer e.untrack(nil)
		e.wakePeer(k)
		p := e.dev.LookupPeer(device.NoisePublicKey(k.Raw32()))
		if p == nil {
			return
		}
		e.log.Debug("peer sends on a session this node does not have; starting a handshake", "peer", k.ShortString())
		p.SendHandshakeInitiation(false)
	}()
}

// peerRestarted ends our connections with a peer's previous process: it
// drops the WireGuard session (the new process cannot decrypt it), and
// probes every TCP connection with the peer. The probes wait for the new
// handshake, and the peer's new stack answers each with a RST, so even a
// connection that only receives learns at once that its data will not
// come.
func (e *Engine) peerRestarted(p Peer) {
	// A peer asleep has no session to drop; its probes below wake it.
	if wp := e.dev.LookupPeer(device.NoisePublicKey(p.Key.Raw32())); wp != nil {
		wp.ExpireCurrentKeypairs()
	}
	if e.stack == nil {
		// TUN mode: the host's TCP learns of the restart from the
		// peer's new stack, which answers its next segment with a RST.
		e.log.Info("peer restarted", "peer", p.Key.ShortString())
		return
	}
	n := e.stack.ProbeTCP(func(a netip.Addr) bool {
		for _, pfx := range p.AllowedIPs {
			if pfx.Contains(a) {
				return true
			}
		}
		return false
	})
	e.log.Info("peer restarted; probing its connections", "peer", p.Key.ShortString(), "connections", n)
}

func wgLogger(log *slog.Logger) *device.Logger {
	l := log.With("component", "wireguard")
	return &device.Logger{
		Verbosef: func(format string, args ...any) {
			if l.Enabled(context.Background(), slog.LevelDebug) {
				l.Debug(fmt.Sprintf(format, args...))
			}
		},
		Errorf: func(format string, args ...any) {
			l.Warn(fmt.Sprintf(format, args...))
		},
	}
}

// outbound sees every packet the stack sends, before wireguard-go does,
// and reports whether wireguard-go gets it.
func (e *Engine) outbound(pkt []byte) bool {
	if !e.noteOutbound(pkt) {
		return false
	}
	e.pf.outbound(pkt)
	return true
}

// LocalPort returns the UDP port the engine receives WireGuard on.
func (e *Engine) LocalPort() uint16 { return e.bind.LocalPort() }

// LocalEndpoints returns this host's interface addresses with LocalPort:
// non-loopback addresses first, then 127.0.0.1 and ::1. Peers on the same
// host or network can reach the node at these. Addresses of a family the
// engine has no UDP socket for (IPv6 on a host without it) are left out.
func (e *Engine) LocalEndpoints() []netip.AddrPort {
	addrs, _ := net.InterfaceAddrs()
	v4, v6 := e.bind.Families()
	return e.dropDeviceAddrs(localEndpoints(addrs, e.LocalPort(), v4, v6))
}

// localEndpoints is LocalEndpoints for the interface addresses addrs.
func localEndpoints(addrs []net.Addr, port uint16, v4, v6 bool) []netip.AddrPort {
	usable := func(ip netip.Addr) bool { return ip.Is4() && v4 || ip.Is6() && v6 }
	var out []netip.AddrPort
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		ip, ok := netip.AddrFromSlice(ipn.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		if ip.IsLoopback() || ip.IsLinkLocalUnicast() || ip.IsMulticast() || ip.IsUnspecified() || !usable(ip) {
			continue
		}
		out = append(out, netip.AddrPortFrom(ip, port))
	}
	for _, ip := range []netip.Addr{netip.AddrFrom4([4]byte{127, 0, 0, 1}), netip.IPv6Loopback()} {
		if usable(ip) {
			out = append(out, netip.AddrPortFrom(ip, port))
		}
	}
	return out
}

// Close stops the engine: WireGuard, the stack, every forwarded
// connection. It returns after all of the engine's goroutines have exited
// and is idempotent.
func (e *Engine) Close() error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil
	}
	e.closed = true
	active := make([]closer, 0, len(e.active))
	for c := range e.active {
		active = append(active, c)
	}
	e.mu.Unlock()

	e.cancel()
	e.loopWG.Wait()
	e.closePeers()
	e.prs.close()
	e.relays.close()
	for _, c := range active {
		c.Close()
	}
	// The device closes the TUN and the bind and waits for its goroutines.
	e.dev.Close()
	if e.stack != nil {
		e.stack.Close()
	}
	e.wg.Wait()
	return nil
}

// track registers a forwarding goroutine (and c, if non-nil, to be closed
// on Close). It returns false once the engine is closing.
func (e *Engine) track(c closer) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return false
	}
	e.wg.Add(1)
	if c != nil {
		e.active[c] = struct{}{}
	}
	return true
}

// untrack undoes track.
func (e *Engine) untrack(c closer) {
	e.mu.Lock()
	if c != nil {
		delete(e.active, c)
	}
	e.mu.Unlock()
	e.wg.Done()
}

// addActive registers c to be closed on Close; false if closing.
func (e *Engine) addActive(c closer) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return false
	}
	e.active[c] = struct{}{}
	return true
}

func (e *Engine) removeActive(c closer) {
	e.mu.Lock()
	delete(e.active, c)
	e.mu.Unlock()
}

func (e *Engine) isOverlay(a netip.Addr) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.overlay[a.Unmap()]
}

// newWindows returns the engine's in-flight windows (see package
// inflight): inbound from the bind to the TUN, outbound from the TUN to the
// bind.
func newWindows() (in, out *inflight.Window) {
	n := inflightWindow(runtime.GOMAXPROCS(0))
	if d, ok := debugInflight(); ok {
		n = d
	}
	if n == 0 {
		return nil, nil
	}
	return inflight.New(n, inflightPeriod), inflight.New(n, inflightPeriod)
}

// inflightWindow is how many packets each direction lets wireguard-go
// hold at once on a machine with procs processors: room for a batch in
// encryption or decryption on each and one being sent or delivered, from
// 128 to 256 packets (8-16 MiB of wireguard-go's 64 KiB buffers). Two real
// daemons on 2 busy cores, one bulk stream, medians of three interleaved
// rounds: no window 0.58 Gbit/s at 11.0 daemon CPU-s/GiB, 64 packets
// 0.63 at 8.1, 128 0.92 at 7.9, 256 1.01 at 7.2. Fewer packets waiting
// means fewer buffers touched (page faults, cache misses) and less
// queueing delay for TCP to see.
func inflightWindow(procs int) int { return min(max(64*procs, 128), 256) }

// inflightPeriod is how long a window remembers a packet at least (at
// most twice that): one wireguard-go took and dropped is released by
// then.
const inflightPeriod = 10 * time.Millisecond
