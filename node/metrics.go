package node

import (
	"net"
	"net/http"
	"strings"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"beam.dev/beam/localapi/apitype"
	"beam.dev/beam/netstack"
	"beam.dev/beam/types/key"
)

// nodeMetrics are the daemon's own counters; everything else is read from
// the engine, the resolver and the netmap when scraped.
type nodeMetrics struct {
	socks5Conns    atomic.Uint64
	httpProxyConns atomic.Uint64
}

// httpProxyConnState is the HTTP proxy server's ConnState hook: it counts
// new connections.
func (m *nodeMetrics) httpProxyConnState(_ net.Conn, s http.ConnState) {
	if s == http.StateNew {
		m.httpProxyConns.Add(1)
	}
}

// GuardListener makes ln one of the daemon's own loopback listeners, like
// its proxies: the engine never forwards a peer's connection to its
// address (a peer must not read the node's metrics or profiles because the
// policy lets it reach the node's ports), and the returned listener closes
// any such connection that gets through. Call release once ln is closed.
func (n *Node) GuardListener(ln net.Listener) (guarded net.Listener, release func()) {
	release = n.ownListener(ln.Addr())
	return refuseOverlay{Listener: ln, n: n}, release
}

// Collector returns a Prometheus collector of the daemon's metrics
// (beam_daemon_*): traffic per peer and path, handshakes, path changes,
// MagicDNS queries and proxy connections. It reads the engine's per-peer
// counters when scraped; the data path only does atomic adds.
func (n *Node) Collector() prometheus.Collector { return nodeCollector{n} }

var (
	daemonUpDesc = prometheus.NewDesc("beam_daemon_running",
		"1 while the daemon is in the mesh (state Running), else 0.", nil, nil)
	daemonCoordDesc = prometheus.NewDesc("beam_daemon_coordinator_connected",
		"1 while the daemon's map stream to the coordinator is up, else 0.", nil, nil)
	daemonPeersDesc = prometheus.NewDesc("beam_daemon_peers",
		"Peers in the netmap.", nil, nil)
	peerLabels         = []string{"peer", "path"}
	daemonRxBytesDesc  = prometheus.NewDesc("beam_daemon_peer_rx_bytes_total", "WireGuard bytes received from a peer, by path: direct (UDP), peer-relay or relay.", peerLabels, nil)
	daemonTxBytesDesc  = prometheus.NewDesc("beam_daemon_peer_tx_bytes_total", "WireGuard bytes sent to a peer, by path: direct (UDP), peer-relay or relay.", peerLabels, nil)
	daemonRxPktsDesc   = prometheus.NewDesc("beam_daemon_peer_rx_packets_total", "WireGuard datagrams received from a peer, by path.", peerLabels, nil)
	daemonTxPktsDesc   = prometheus.NewDesc("beam_daemon_peer_tx_packets_total", "WireGuard datagrams sent to a peer, by path.", peerLabels, nil)
	daemonPathDesc     = prometheus.NewDesc("beam_daemon_peer_path", "1 for the path packets to a peer take now: direct, peer-relay, relay or none.", peerLabels, nil)
	daemonPathChgDesc  = prometheus.NewDesc("beam_daemon_peer_path_changes_total", "Switches of a peer's path between direct and relay.", []string{"peer"}, nil)
	daemonHandshkDesc  = prometheus.NewDesc("beam_daemon_peer_handshakes_total", "WireGuard handshake messages sent to a peer, by kind: initiated (initiations, retries included) or answered (responses).", []string{"peer", "kind"}, nil)
	daemonLastHsDesc   = prometheus.NewDesc("beam_daemon_peer_last_handshake_timestamp_seconds", "Unix time of the last completed handshake with a peer; absent if none.", []string{"peer"}, nil)
	daemonDNSDesc      = prometheus.NewDesc("beam_daemon_dns_queries_total", "MagicDNS queries answered, by answer: local, cached, forwarded or failed.", []string{"answer"}, nil)
	daemonProxyConnDsc = prometheus.NewDesc("beam_daemon_proxy_connections_total", "Connections to the daemon's loopback proxies, by proxy: socks5 or http.", []string{"proxy"}, nil)
	prSessionsDesc     = prometheus.NewDesc("beam_daemon_peer_relay_sessions", "Sessions of the daemon's UDP peer relay server, by state: bound (both peers) or binding.", []string{"state"}, nil)
	prSessionOpsDesc   = prometheus.NewDesc("beam_daemon_peer_relay_session_events_total", "Sessions of the peer relay server, by event: allocated, refused (a count bound), expired, or released (a peer left the netmap or took a new disco key, or the node stopped offering the relay).", []string{"event"}, nil)
	prPacketsDesc      = prometheus.NewDesc("beam_daemon_peer_relay_packets_total", "Datagrams at the peer relay server, by result: forwarded, dropped_rate (over a session's rate) or dropped_other.", []string{"result"}, nil)
	prBytesDesc        = prometheus.NewDesc("beam_daemon_peer_relay_forwarded_bytes_total", "Bytes the peer relay server forwarded.", nil, nil)
)

type nodeCollector struct{ n *Node }

func (c nodeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{daemonUpDesc, daemonCoordDesc, daemonPeersDesc, daemonRxBytesDesc, daemonTxBytesDesc,
		daemonRxPktsDesc, daemonTxPktsDesc, daemonPathDesc, daemonPathChgDesc, daemonHandshkDesc, daemonLastHsDesc,
		daemonDNSDesc, daemonProxyConnDsc, prSessionsDesc, prSessionOpsDesc, prPacketsDesc, prBytesDesc} {
		ch <- d
	}
}

func (c nodeCollector) Collect(ch chan<- prometheus.Metric) {
	n := c.n
	n.mu.Lock()
	nm, eng, state := n.netmap, n.engine, n.state
	coordUp := n.controlOnline && n.sess != nil
	n.mu.Unlock()
	gauge := func(d *prometheus.Desc, v float64, lv ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, lv...)
	}
	counter := func(d *prometheus.Desc, v uint64, lv ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), lv...)
	}
	gauge(daemonUpDesc, b2f(state == apitype.StateRunning))
	gauge(daemonCoordDesc, b2f(coordUp))
	q := n.resolver.QueryCounts()
	counter(daemonDNSDesc, q.Local, "local")
	counter(daemonDNSDesc, q.Cached, "cached")
	counter(daemonDNSDesc, q.Forwarded, "forwarded")
	counter(daemonDNSDesc, q.Failed, "failed")
	counter(daemonProxyConnDsc, n.met.socks5Conns.Load(), "socks5")
	counter(daemonProxyConnDsc, n.met.httpProxyConns.Load(), "http")
	if nm == nil {
		gauge(daemonPeersDesc, 0)
		return
	}
	gauge(daemonPeersDesc, float64(len(nm.Peers)))
	if eng == nil {
		return
	}
	if rs, ok := eng.PeerRelay(); ok {
		gauge(prSessionsDesc, float64(rs.Bound), "bound")
		gauge(prSessionsDesc, float64(rs.Sessions-rs.Bound), "binding")
		counter(prSessionOpsDesc, rs.Allocated, "allocated")
		counter(prSessionOpsDesc, rs.Refused, "refused")
		counter(prSessionOpsDesc, rs.Expired, "expired")
		counter(prSessionOpsDesc, rs.Released, "released")
		counter(prPacketsDesc, rs.Packets, "forwarded")
		counter(prPacketsDesc, rs.DroppedRate, "dropped_rate")
		counter(prPacketsDesc, rs.DroppedOther, "dropped_other")
		counter(prBytesDesc, rs.Bytes)
	}
	status := make(map[key.NodePublic]netstack.PeerStatus, len(nm.Peers))
	for _, st := range eng.Status() {
		status[st.Key] = st
	}
	used := make(map[string]bool, len(nm.Peers))
	for _, p := range nm.Peers {
		// The name is unique in a network; a node that sees several
		// networks (an edge) falls back to the full DNS name.
		name := p.Name
		if name == "" || used[name] {
			name = strings.TrimSuffix(p.DNSName, ".")
		}
		if name == "" || used[name] {
			name = p.Key.ShortString()
		}
		used[name] = true
		t := eng.PeerTraffic(p.Key)
		for _, pt := range []struct {
			path string
			t    netstack.PathTraffic
		}{{"direct", t.Direct}, {"relay", t.Relay}, {"peer-relay", t.PeerRelay}} {
			counter(daemonRxBytesDesc, pt.t.RxBytes, name, pt.path)
			counter(daemonTxBytesDesc, pt.t.TxBytes, name, pt.path)
			counter(daemonRxPktsDesc, pt.t.RxPackets, name, pt.path)
			counter(daemonTxPktsDesc, pt.t.TxPackets, name, pt.path)
		}
		counter(daemonHandshkDesc, t.HandshakesInitiated, name, "initiated")
		counter(daemonHandshkDesc, t.HandshakesAnswered, name, "answered")
		counter(daemonPathChgDesc, t.PathChanges, name)
		st := status[p.Key]
		path := st.Path
		if path == "" {
			path = "none"
		}
		gauge(daemonPathDesc, 1, name, path)
		if !st.LastHandshake.IsZero() {
			gauge(daemonLastHsDesc, float64(st.LastHandshake.UnixNano())/1e9, name)
		}
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
