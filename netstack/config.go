package netstack

import (
	"bufio"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"beam.dev/beam/types/key"
)

type atomicPolicy = atomic.Pointer[policy]

// Config is the engine's desired state, applied whole by Reconfig.
type Config struct {
	// Addresses are the node's overlay addresses (a /32 IPv4 in
	// 100.64.0.0/10 and a /128 IPv6 ULA). Inbound connections to them
	// are forwarded to the host's loopback. Empty: the node has none.
	Addresses []netip.Prefix
	// ServiceAddrs are extra local addresses (for example 100.100.100.100
	// for MagicDNS) served only by the engine's own Listen/ListenPacket
	// sockets; traffic to them is never forwarded to the host.
	ServiceAddrs []netip.Addr
	// Peers are the WireGuard peers. Empty: no peers.
	Peers []Peer
	// ShieldsUp refuses every inbound connection or flow from peers,
	// except to the ports in AllowInbound.
	ShieldsUp bool
	// AllowInbound are the ports still open to every peer with
	// ShieldsUp. Ignored when ShieldsUp is false.
	AllowInbound []uint16
	// EdgeInbound are the ports still open with ShieldsUp to the
	// addresses in Edges alone: the ports `beam expose` publishes, which
	// only the edge nodes forward to. Ignored when ShieldsUp is false.
	EdgeInbound []uint16
	// Edges are the overlay addresses of the edge nodes (see EdgeInbound).
	// They also get a larger share of the forwarded inbound UDP flows and
	// TCP connections (Options.MaxUDPFlows, MaxTCPConns).
	Edges []netip.Addr
	// Filter, if non-nil, is enforced statefully on inbound packets:
	// new flows must match a rule, replies to flows this node opened
	// always pass. Nil accepts every inbound flow.
	Filter *Filter
	// OwnListeners are the host addresses of the program's own loopback
	// services (a node's SOCKS5 and HTTP proxies, its DNS listener, ...).
	// Inbound connections and flows from peers are never forwarded to
	// them, whatever Filter says: a TCP SYN gets a RST and UDP datagrams
	// are dropped, for both protocols on each address. An unspecified
	// address (0.0.0.0 or ::) stands for every address of its port.
	// Without this a peer allowed to reach the node's ports could use the
	// node's proxy to reach what the policy denies it. Empty: none.
	OwnListeners []netip.AddrPort
	// DERPMap maps relay region IDs to the region's relay and STUN
	// servers. Nil: no relays and no STUN, peers are reached over direct
	// UDP only and the node's endpoints are its interface addresses.
	DERPMap map[int]DERPRegion
	// Routes are the prefixes routed through the TUN device in kernel
	// TUN mode (Options.TUN): the overlay's ranges. The userspace stack
	// ignores them (it receives whatever WireGuard's allowed IPs send it).
	Routes []netip.Prefix
	// HomeDERP is a hint for this node's home relay region: the engine
	// starts there and stays connected to it (peers that were told it can
	// reach the node there), but makes the region with the lowest STUN
	// latency its home once it is clearly better, and reports its choice
	// through Options.OnEndpoints. 0: the engine chooses from the start.
	HomeDERP int
}

// DERPRegion is one relay region as the engine uses it.
type DERPRegion struct {
	// URLs are the region's relays (http:// or https://, path /derp),
	// which mesh with each other; the engine uses one at a time and moves
	// to the next when it cannot connect. Empty: the region only has STUN
	// servers.
	URLs []string
	// STUNAddrs are the host:port addresses of the region's STUN
	// servers, used for endpoint discovery and relay latency. Empty: none.
	STUNAddrs []string
}

// Peer is one WireGuard peer.
type Peer struct {
	// Key is the peer's node key.
	Key key.NodePublic
	// DiscoKey is the peer's disco key, for path discovery (pings,
	// hole punching); zero if unknown: the peer is then reached through
	// its advertised endpoints and relay, and paths are learned only from
	// WireGuard traffic.
	DiscoKey key.DiscoPublic
	// AllowedIPs are the peer's overlay addresses: packets to them go to
	// this peer, packets from it must come from them.
	AllowedIPs []netip.Prefix
	// Endpoints are candidate UDP addresses of the peer.
	Endpoints []netip.AddrPort
	// HomeDERP is the peer's home relay region, used while no direct
	// path to the peer is confirmed; 0 means none.
	HomeDERP int
	// RelayServer: the peer runs a UDP peer relay server, which may
	// carry traffic between this node and peers it has no direct path
	// to (see PeerRelayOptions).
	RelayServer bool
}

// Reconfig applies cfg. It may be called any number of times; peers that
// stay keep their sessions and flows, and only differences are applied.
func (e *Engine) Reconfig(cfg Config) error {
	if err := validate(&cfg); err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return errEngineClosed
	}

	// Addresses first, so the stack accepts traffic as soon as peers
	// can send it.
	var addrs []netip.Addr
	overlay := make(map[netip.Addr]bool)
	for _, p := range cfg.Addresses {
		addrs = append(addrs, p.Addr().Unmap())
		overlay[p.Addr().Unmap()] = true
	}
	for _, a := range cfg.ServiceAddrs {
		addrs = append(addrs, a.Unmap())
	}
	if e.stack != nil {
		if err := e.stack.SetAddresses(addrs); err != nil {
			return fmt.Errorf("netstack: set addresses: %w", err)
		}
	} else {
		var src []netip.Addr
		for _, p := range cfg.Addresses {
			src = append(src, p.Addr())
		}
		if err := e.host.setAddrs(addrs, cfg.Routes, src); err != nil {
			// Keep going: what could be set is, and the next Reconfig
			// with a change tries the rest again.
			e.log.Warn("set TUN device addresses and routes", "err", err)
		}
		e.tun.ownPorts.Store(newOwnPortSet(cfg.OwnListeners, overlay, cfg.ServiceAddrs))
	}
	e.overlay = overlay
	own := make(map[netip.AddrPort]bool, len(cfg.OwnListeners))
	for _, ap := range cfg.OwnListeners {
		own[netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())] = true
	}
	e.own = own
	e.pf.pol.Store(newPolicy(&cfg))

	e.setDERPMapLocked(cfg.DERPMap, cfg.HomeDERP)
	// Peers: only those that changed reach the bind and the device.
	set, remove := e.diffPeersLocked(cfg.Peers)
	if err := e.applyPeersLocked(set, remove); err != nil {
		return err
	}
	// Keep the config's order of peers (applyPeersLocked appends new
	// ones and moves the last into a removed one's place).
	peers := slices.Clone(cfg.Peers)
	for i, p := range peers {
		e.ps.byKey[p.Key].idx = i
	}
	cfg.Peers = peers
	e.cfg = cfg
	return nil
}

var errEngineClosed = errors.New("netstack: engine closed")

func validate(cfg *Config) error {
	var errs []error
	for _, p := range cfg.Addresses {
		if !p.IsValid() {
			errs = append(errs, fmt.Errorf("invalid address %v", p))
		}
	}
	seen := make(map[key.NodePublic]bool)
	for i, p := range cfg.Peers {
		if p.Key.IsZero() {
			errs = append(errs, fmt.Errorf("peer %d: zero key", i))
		}
		if seen[p.Key] {
			errs = append(errs, fmt.Errorf("peer %d: duplicate key %s", i, p.Key.ShortString()))
		}
		seen[p.Key] = true
		for _, ip := range p.AllowedIPs {
			if !ip.IsValid() {
				errs = append(errs, fmt.Errorf("peer %s: invalid allowed IP", p.Key.ShortString()))
			}
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("netstack: invalid config: %w", errors.Join(errs...))
	}
	return nil
}

// PeerStatus is a peer's state as the engine sees it.
type PeerStatus struct {
	// Key is the peer's node key.
	Key key.NodePublic
	// Endpoint is the UDP address packets to the peer go to; invalid if
	// none is confirmed.
	Endpoint netip.AddrPort
	// Path is "direct", "peer-relay", "relay" or "none".
	Path string
	// Via is the peer relay server's node when Path is "peer-relay".
	Via key.NodePublic
	// DERPRegion is the relay region packets go through when Path is
	// "relay"; 0 otherwise.
	DERPRegion int
	// Latency is the last measured round trip of the direct path; zero
	// if unknown or not direct.
	Latency time.Duration
	// RxBytes and TxBytes count WireGuard bytes received from and sent to
	// the peer.
	RxBytes, TxBytes uint64
	// LastHandshake is when the last handshake completed; zero if never.
	LastHandshake time.Time
}

// Status returns the state of every peer of the config, in the config's
// order (peers added by UpdatePeers after it), whether or not it is
// configured in wireguard-go at the moment (see peers.go): the counters
// of a peer asleep are those of its earlier stays there, zero if none.
func (e *Engine) Status() []PeerStatus {
	e.mu.Lock()
	peers := slices.Clone(e.cfg.Peers)
	e.mu.Unlock()
	text, err := e.dev.IpcGet()
	if err != nil {
		e.log.Warn("read device status", "err", err)
	}
	counters := parseUAPIPeers(text)
	carried := e.carriedCounters()
	out := make([]PeerStatus, 0, len(peers))
	for _, p := range peers {
		st := carry(carried[p.Key], counters[p.Key])
		st.Key = p.Key
		pp := e.bind.PeerPath(p.Key)
		st.Endpoint = pp.Endpoint
		st.Path = pp.Path
		st.DERPRegion = pp.Region
		st.Via = pp.Via
		st.Latency = pp.Latency
		out = append(out, st)
	}
	return out
}

// parseUAPIPeers reads the per-peer counters from wireguard-go's UAPI
// "get" text (key=value lines; each peer starts with public_key=).
// Unknown keys and malformed lines are skipped.
func parseUAPIPeers(text string) map[key.NodePublic]PeerStatus {
	out := make(map[key.NodePublic]PeerStatus)
	var (
		cur  key.NodePublic
		have bool
		st   PeerStatus
		sec  int64
		nsec int64
	)
	flush := func() {
		if have {
			if sec != 0 || nsec != 0 {
				st.LastHandshake = time.Unix(sec, nsec)
			}
			out[cur] = st
		}
	}
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		if !ok {
			continue
		}
		switch k {
		case "public_key":
			flush()
			have = false
			raw, err := hex.DecodeString(v)
			if err != nil || len(raw) != 32 {
				continue
			}
			cur = key.NodePublicFromRaw32([32]byte(raw))
			have = true
			st, sec, nsec = PeerStatus{}, 0, 0
		case "rx_bytes":
			st.RxBytes, _ = strconv.ParseUint(v, 10, 64)
		case "tx_bytes":
			st.TxBytes, _ = strconv.ParseUint(v, 10, 64)
		case "last_handshake_time_sec":
			sec, _ = strconv.ParseInt(v, 10, 64)
		case "last_handshake_time_nsec":
			nsec, _ = strconv.ParseInt(v, 10, 64)
		}
	}
	flush()
	return out
}
