package netstack

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"beam.dev/beam/netstack/internal/udprelay"
)

// PeerRelayOptions runs a UDP peer relay server on the node: it forwards
// UDP between two of its peers that cannot reach each other directly
// (WireGuard stays end to end; the relay cannot read the traffic). Peers
// learn that the node offers it from Peer.RelayServer in their config.
type PeerRelayOptions struct {
	// Port is the relay socket's UDP port, on all addresses; it should be
	// public or mapped (peers reach it at the node's endpoint IPs). Zero
	// picks a free port.
	Port uint16
	// MaxSessions and MaxSessionsPerPeer bound the sessions in all and
	// per peer. Zero means 1024 and 32.
	MaxSessions, MaxSessionsPerPeer int
	// PacketsPerSecond and BytesPerSecond bound one session's traffic.
	// Zero means 100,000 packets and 128 MiB per second.
	PacketsPerSecond, BytesPerSecond int
	// IdleTimeout expires sessions that forward nothing for this long.
	// Zero means 2 minutes.
	IdleTimeout time.Duration
}

// PeerRelayStats are the peer relay server's counters.
type PeerRelayStats struct {
	// Port is the relay socket's port.
	Port uint16
	// Sessions is the number of live sessions; Bound of them have both
	// peers bound.
	Sessions, Bound int
	// Allocated, Refused, Expired and Released count sessions created,
	// refused by a bound, timed out, and ended because a peer left the
	// netmap (or the policy), took a new disco key, or the node stopped
	// offering the relay.
	Allocated, Refused, Expired, Released uint64
	// Packets and Bytes count what was forwarded; DroppedRate what a
	// session's rate bound dropped, DroppedOther what was not for a
	// bound session.
	Packets, Bytes            uint64
	DroppedRate, DroppedOther uint64
	// MaxSessions, MaxSessionsPerPeer, PacketsPerSecond and
	// BytesPerSecond are the bounds in force (defaults filled in).
	MaxSessions, MaxSessionsPerPeer  int
	PacketsPerSecond, BytesPerSecond int
	// Mapped is the public address the NAT gateway maps to Port
	// (Options.PortMapping), by MappingProtocol; invalid and "" if none.
	Mapped          netip.AddrPort
	MappingProtocol string
}

// peerRelayServer is a running peer relay server.
type peerRelayServer struct {
	srv  *udprelay.Server
	conn *net.UDPConn
	port uint16
	wg   sync.WaitGroup
	// pmap is the mapping of port at the NAT gateway
	// (Options.PortMapping; see portMapLoop).
	pmap portMapState
}

// startPeerRelay opens the relay socket and starts the server; the bind
// must be given the result before it opens.
func (e *Engine) startPeerRelay(o *PeerRelayOptions) (*peerRelayServer, error) {
	conn, err := net.ListenUDP("udp", &net.UDPAddr{Port: int(o.Port)})
	if err != nil {
		return nil, fmt.Errorf("peer relay: listen on UDP port %d: %w", o.Port, err)
	}
	conn.SetReadBuffer(7 << 20)
	conn.SetWriteBuffer(7 << 20)
	port := uint16(conn.LocalAddr().(*net.UDPAddr).Port)
	pr := &peerRelayServer{conn: conn, port: port}
	srv, err := udprelay.New(udprelay.Options{
		DiscoKey:           e.opts.DiscoKey,
		Addrs:              func() []netip.AddrPort { return e.peerRelayAddrs(pr) },
		MaxSessions:        o.MaxSessions,
		MaxSessionsPerPeer: o.MaxSessionsPerPeer,
		PacketsPerSecond:   o.PacketsPerSecond,
		BytesPerSecond:     o.BytesPerSecond,
		IdleTimeout:        o.IdleTimeout,
		Logger:             e.log,
	})
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("peer relay: %w", err)
	}
	pr.srv = srv
	pr.wg.Go(func() {
		if err := srv.Serve(conn); err != nil {
			e.log.Warn("peer relay server stopped", "err", err)
		}
	})
	e.log.Info("peer relay server listening", "port", port)
	return pr, nil
}

func (pr *peerRelayServer) close() {
	if pr == nil {
		return
	}
	pr.conn.Close()
	pr.wg.Wait()
}

// peerRelayAddrs are the relay socket's addresses peers bind to: the
// address the NAT gateway maps to the relay port, if any (port mapping),
// then each IP of the node's endpoints (interface and STUN-mapped
// addresses) with the relay port; public ones first, loopback last.
func (e *Engine) peerRelayAddrs(pr *peerRelayServer) []netip.AddrPort {
	port := pr.port
	mapped, _ := pr.pmap.current()
	var ips []netip.Addr
	for _, ap := range e.Endpoints() {
		ip := ap.Addr().Unmap()
		if !ip.IsLinkLocalUnicast() && !ip.IsUnspecified() && !slices.Contains(ips, ip) {
			ips = append(ips, ip)
		}
	}
	rank := func(ip netip.Addr) int {
		switch {
		case ip.IsLoopback():
			return 2
		case ip.IsPrivate():
			return 1
		}
		return 0
	}
	slices.SortStableFunc(ips, func(a, b netip.Addr) int { return rank(a) - rank(b) })
	out := make([]netip.AddrPort, 0, len(ips)+1)
	if mapped.IsValid() {
		out = append(out, mapped)
	}
	for _, ip := range ips {
		if ap := netip.AddrPortFrom(ip, port); ap != mapped {
			out = append(out, ap)
		}
	}
	return out
}

// PeerRelay returns the peer relay server's counters; ok is false when
// the engine runs none (Options.PeerRelay).
func (e *Engine) PeerRelay() (st PeerRelayStats, ok bool) {
	if e.prs == nil {
		return PeerRelayStats{}, false
	}
	s, l := e.prs.srv.Stats(), e.prs.srv.Limits()
	mapped, proto := e.prs.pmap.current()
	return PeerRelayStats{
		Mapped: mapped, MappingProtocol: proto,
		Port: e.prs.port, Sessions: s.Sessions, Bound: s.Bound,
		Allocated: s.Allocated, Refused: s.Refused, Expired: s.Expired, Released: s.Released,
		Packets: s.Packets, Bytes: s.Bytes, DroppedRate: s.DroppedRate, DroppedOther: s.DroppedOther,
		MaxSessions: l.MaxSessions, MaxSessionsPerPeer: l.MaxSessionsPerPeer,
		PacketsPerSecond: l.PacketsPerSecond, BytesPerSecond: l.BytesPerSecond,
	}, true
}

// SetPeerRelayLimits changes the peer relay server's bounds at once:
// o's MaxSessions, MaxSessionsPerPeer, PacketsPerSecond and
// BytesPerSecond (zero: the defaults; its other fields are ignored). Live
// sessions take the new rates; sessions beyond new count bounds stay
// until they expire. It reports false if the engine runs no peer relay
// server.
func (e *Engine) SetPeerRelayLimits(o PeerRelayOptions) bool {
	if e.prs == nil {
		return false
	}
	e.prs.srv.SetLimits(udprelay.Limits{
		MaxSessions: o.MaxSessions, MaxSessionsPerPeer: o.MaxSessionsPerPeer,
		PacketsPerSecond: o.PacketsPerSecond, BytesPerSecond: o.BytesPerSecond,
	})
	return true
}

var errPeerRelayPort = errors.New("netstack: peer relay port is the WireGuard port")

// SetPeerRelayOffered says whether the node's peer relay server is offered
// to its peers (the coordinator's policy designates the node, as its
// netmap says): while it is not, the server refuses new sessions. On
// until set; nothing if the engine runs no server.
func (e *Engine) SetPeerRelayOffered(on bool) { e.bind.SetRelayOffered(on) }
