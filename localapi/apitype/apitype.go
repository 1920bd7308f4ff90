// Package apitype holds the JSON request and response types of the
// daemon's local API (see package localapi), shared by the daemon and the
// CLI's client.
package apitype

import (
	"net/netip"
	"time"

	"beam.dev/beam/wire"
)

// State is the daemon's lifecycle state.
//
//	NoState --up--> Starting --first netmap--> Running
//	   ^                |                        |
//	   |             (error)                   down
//	 logout             v                        v
//	   +--------- NeedsLogin <------------- Stopped
//	Running --key expired--> Expired --up with a new key--> Starting
type State string

// The daemon's states.
const (
	StateNoState    State = "NoState"    // never registered
	StateNeedsLogin State = "NeedsLogin" // registered before, or key refused: needs `beam up` (Health says why; a coordinator that no longer knows the node needs `beam up --authkey`)
	StateStopped    State = "Stopped"    // `beam down`: state kept, not in the mesh
	StateStarting   State = "Starting"   // registered, waiting for the first netmap
	StateRunning    State = "Running"    // in the mesh
	StateExpired    State = "Expired"    // node key expired: re-authenticate with `beam up --authkey`
	// StateNeedsApproval: a new node without an auth key waits for
	// `beam admin nodes approve CODE`.
	StateNeedsApproval State = "NeedsApproval"
)

// Status is the answer of GET /localapi/v0/status.
type Status struct {
	// Version is the daemon's build (internal/version.String).
	Version string `json:"version,omitempty"`
	State   State  `json:"state"`
	// Coordinator is the coordinator URL, or the URLs of several sharing
	// one database, comma-separated.
	Coordinator string `json:"coordinator,omitempty"`
	// CoordinatorStream is the URL the map stream is connected to when
	// Coordinator names several (with the address dialed when the URL's
	// name has several); empty otherwise.
	CoordinatorStream string `json:"coordinator_stream,omitempty"`
	// CoordinatorOnline reports whether the map stream is connected.
	CoordinatorOnline bool         `json:"coordinator_online"`
	Self              *PeerStatus  `json:"self,omitempty"`
	Peers             []PeerStatus `json:"peers"`
	// Health lists human-readable problems ("coordinator unreachable").
	Health []string `json:"health,omitempty"`
	// CoordinatorKeyChange is set while the node refuses its coordinator
	// because it answers with a machine key other than the one the node
	// joined with (pinned): the coordinator was reset, or someone on the
	// path poses as it. nil if not.
	CoordinatorKeyChange *KeyChange `json:"coordinator_key_change,omitempty"`
	// DNSDomain is the network's MagicDNS domain.
	DNSDomain string `json:"dns_domain,omitempty"`
	// AuthURL and AuthCode are set while the node waits for a person to
	// approve it (StateNeedsApproval).
	AuthURL  string `json:"auth_url,omitempty"`
	AuthCode string `json:"auth_code,omitempty"`
	// TUN names the kernel TUN device the daemon runs the overlay on
	// (beam daemon --tun); empty in userspace mode.
	TUN string `json:"tun,omitempty"`
	// PeerRelay is this node's peer relay server (beam set
	// --relay-server); nil if it runs none.
	PeerRelay *PeerRelayStatus `json:"peer_relay,omitempty"`
}

// KeyChange is a coordinator machine key the node refused: not the one
// it joined with.
type KeyChange struct {
	// Server is the coordinator's URL (and address dialed, if it has several).
	Server string `json:"server"`
	// Pinned is the machine key the node joined with; Got the one the
	// coordinator answered with.
	Pinned string `json:"pinned_key"`
	Got    string `json:"offered_key"`
	// Since is when the node first refused Got.
	Since time.Time `json:"since"`
	// Recovery says what to do if the coordinator was really reset.
	Recovery string `json:"recovery"`
}

// PeerRelayStatus are the counters of a node's UDP peer relay server.
type PeerRelayStatus struct {
	// Port is the relay socket's UDP port.
	Port uint16 `json:"port"`
	// Sessions are the live sessions; Bound of them have both peers bound.
	Sessions int `json:"sessions"`
	Bound    int `json:"bound"`
	// Allocated, Refused, Expired and Released count sessions created,
	// refused by a bound (count per relay or per peer), timed out, and
	// ended because a peer left the netmap (or the policy), took a new
	// disco key, or the node stopped offering the relay.
	Allocated uint64 `json:"allocated"`
	Refused   uint64 `json:"refused"`
	Expired   uint64 `json:"expired"`
	Released  uint64 `json:"released"`
	// Packets and Bytes count what was forwarded; DroppedRate what a
	// session's rate bound dropped; DroppedOther what was for no bound
	// session (unknown session, unbound or forged source).
	Packets      uint64 `json:"packets"`
	Bytes        uint64 `json:"bytes"`
	DroppedRate  uint64 `json:"dropped_rate"`
	DroppedOther uint64 `json:"dropped_other"`
	// MaxSessions, MaxSessionsPerPeer, PacketsPerSecond and
	// BytesPerSecond are the bounds in force (per session for the rates).
	MaxSessions        int `json:"max_sessions"`
	MaxSessionsPerPeer int `json:"max_sessions_per_peer"`
	PacketsPerSecond   int `json:"packets_per_second"`
	BytesPerSecond     int `json:"bytes_per_second"`
	// Offered is set while the coordinator offers the server to the
	// node's peers (the policy's "peerRelays" names the node); while it
	// does not, the server refuses new sessions.
	Offered bool `json:"offered"`
	// Mapped is the public address the NAT gateway maps to Port
	// (--port-mapping), which peers bind to, and MappingProtocol the
	// protocol ("PCP", "NAT-PMP", "UPnP"); empty if none.
	Mapped          string `json:"mapped,omitempty"`
	MappingProtocol string `json:"mapping_protocol,omitempty"`
}

// PeerStatus describes one node: the daemon itself or a peer.
type PeerStatus struct {
	Name    string       `json:"name"`
	DNSName string       `json:"dns_name"`
	IPs     []netip.Addr `json:"ips"`
	Key     string       `json:"key"`
	OS      string       `json:"os,omitempty"`
	Online  bool         `json:"online"`
	// Unknown means the peer streamed from a coordinator (one of several
	// on one database) that stopped answering: it may be up or not, until
	// it streams from another coordinator or a timeout passes.
	Unknown bool `json:"unknown,omitempty"`
	// Path is "direct", "peer-relay", "relay" or "none".
	Path string `json:"path"`
	// Endpoint is the UDP address of a direct path, or of the peer relay
	// server on a peer-relay path, if any.
	Endpoint string `json:"endpoint,omitempty"`
	// Relay names the relay region of a relayed path.
	Relay string `json:"relay,omitempty"`
	// Via names the node whose peer relay server carries a peer-relay
	// path.
	Via string `json:"via,omitempty"`
	// PeerRelay marks a node that runs a UDP peer relay server.
	PeerRelay     bool      `json:"peer_relay,omitempty"`
	RxBytes       uint64    `json:"rx_bytes"`
	TxBytes       uint64    `json:"tx_bytes"`
	LastHandshake time.Time `json:"last_handshake,omitzero"`
	KeyExpiry     time.Time `json:"key_expiry,omitzero"`
	Expired       bool      `json:"expired,omitempty"`
	User          string    `json:"user,omitempty"`
	Tags          []string  `json:"tags,omitempty"`
}

// UpRequest is the body of POST /localapi/v0/up.
type UpRequest struct {
	// Coordinator is the coordinator URL, or the URLs of several
	// coordinators sharing one database, comma-separated (the node
	// streams from one and moves to another when it dies); empty reuses
	// the stored one.
	Coordinator string `json:"coordinator,omitempty"`
	// AuthKey is a pre-auth key; empty rejoins with the stored node key.
	AuthKey  string `json:"auth_key,omitempty"`
	Hostname string `json:"hostname,omitempty"`
	// ShieldsUp refuses all inbound connections from peers.
	ShieldsUp *bool `json:"shields_up,omitempty"`
	// ForceReauth registers again with AuthKey even if a node key is stored.
	ForceReauth bool `json:"force_reauth,omitempty"`
	// Prefs, if not nil, changes daemon settings before joining (see
	// POST /localapi/v0/prefs).
	Prefs *PrefsPatch `json:"prefs,omitempty"`
}

// Prefs are the daemon's settings that persist in its state directory and
// change at run time (beam set, beam up): a restarted daemon keeps them.
type Prefs struct {
	// Hostname is the name the node registers with.
	Hostname string `json:"hostname,omitempty"`
	// ShieldsUp refuses all inbound connections from peers.
	ShieldsUp bool `json:"shields_up,omitempty"`
	// SOCKS5, HTTPProxy and DNSListen are the loopback addresses the
	// daemon serves a SOCKS5 proxy, an HTTP proxy and MagicDNS on for host
	// applications; empty serves none.
	SOCKS5    string `json:"socks5,omitempty"`
	HTTPProxy string `json:"http_proxy,omitempty"`
	DNSListen string `json:"dns_listen,omitempty"`
	// DNSUpstreams are the resolvers (IP or IP:PORT) MagicDNS forwards
	// other names to when the coordinator names none; empty uses the
	// host's resolvers.
	DNSUpstreams []string `json:"dns_upstreams,omitempty"`
	// Port is the UDP port for WireGuard; 0 is the daemon's default.
	Port uint16 `json:"port,omitempty"`
	// Operator is a local user who may use the daemon's socket besides
	// the daemon's own user and root.
	Operator string `json:"operator,omitempty"`
	// RelayServer runs a UDP peer relay server on RelayServerPort (0: a
	// free port): peers of this node with no direct path between them
	// may relay through it.
	RelayServer     bool   `json:"relay_server,omitempty"`
	RelayServerPort uint16 `json:"relay_server_port,omitempty"`
	// RelayServerMaxSessions and RelayServerMaxSessionsPerPeer bound the
	// relay server's sessions in all and per peer, and
	// RelayServerSessionRate one session's traffic in bytes per second;
	// zero means the defaults (1024, 32, 128 MiB/s).
	RelayServerMaxSessions        int   `json:"relay_server_max_sessions,omitempty"`
	RelayServerMaxSessionsPerPeer int   `json:"relay_server_max_sessions_per_peer,omitempty"`
	RelayServerSessionRate        int64 `json:"relay_server_session_rate,omitempty"`
}

// Bounds of Prefs' peer relay limits.
const (
	// MaxRelayServerSessions is the most RelayServerMaxSessions and
	// RelayServerMaxSessionsPerPeer may be.
	MaxRelayServerSessions = 1 << 20
	// MinRelayServerSessionRate and MaxRelayServerSessionRate bound
	// RelayServerSessionRate, in bytes per second: 64 kbit/s (less would
	// not reliably carry a busy session's handshakes and keepalives) to
	// 100 Gbit/s.
	MinRelayServerSessionRate = 8_000
	MaxRelayServerSessionRate = 12_500_000_000
)

// PrefsPatch changes some Prefs: a nil field is left as it is.
type PrefsPatch struct {
	Hostname     *string   `json:"hostname,omitempty"`
	ShieldsUp    *bool     `json:"shields_up,omitempty"`
	SOCKS5       *string   `json:"socks5,omitempty"`
	HTTPProxy    *string   `json:"http_proxy,omitempty"`
	DNSListen    *string   `json:"dns_listen,omitempty"`
	DNSUpstreams *[]string `json:"dns_upstreams,omitempty"`
	Port         *uint16   `json:"port,omitempty"`
	Operator     *string   `json:"operator,omitempty"`
	// RelayServer and RelayServerPort change Prefs' fields; either
	// restarts the engine.
	RelayServer     *bool   `json:"relay_server,omitempty"`
	RelayServerPort *uint16 `json:"relay_server_port,omitempty"`
	// RelayServerMaxSessions, RelayServerMaxSessionsPerPeer and
	// RelayServerSessionRate change Prefs' fields; a running relay
	// server takes them at once.
	RelayServerMaxSessions        *int   `json:"relay_server_max_sessions,omitempty"`
	RelayServerMaxSessionsPerPeer *int   `json:"relay_server_max_sessions_per_peer,omitempty"`
	RelayServerSessionRate        *int64 `json:"relay_server_session_rate,omitempty"`
}

// IsZero reports whether p changes nothing.
func (p PrefsPatch) IsZero() bool { return p == PrefsPatch{} }

// SetPrefsResponse is the answer of POST /localapi/v0/prefs.
type SetPrefsResponse struct {
	// Prefs are the settings now in effect.
	Prefs Prefs `json:"prefs"`
	// Name is the node's name at the coordinator after a hostname change
	// of a registered node; NameChanged is set when the name the hostname
	// asked for was taken, so the node kept Name.
	Name        string `json:"name,omitempty"`
	NameChanged bool   `json:"name_changed,omitempty"`
}

// UpResponse is the answer of POST /localapi/v0/up.
type UpResponse struct {
	Name    string       `json:"name"`
	DNSName string       `json:"dns_name"`
	IPs     []netip.Addr `json:"ips"`
	// NameChanged is set when the requested hostname was taken.
	NameChanged bool `json:"name_changed,omitempty"`
	// AuthURL is set when a human must approve the node.
	AuthURL string `json:"auth_url,omitempty"`
}

// DNSQueryResponse is the answer of GET /localapi/v0/dns/query.
type DNSQueryResponse struct {
	Name  string `json:"name"`
	Type  string `json:"type"`
	Rcode string `json:"rcode"`
	// Source says who answered: "local", "cache" or an upstream address.
	Source  string   `json:"source,omitempty"`
	Answers []string `json:"answers"`
}

// Error is the body of every non-2xx local API answer.
type Error struct {
	// Error is the daemon's full error text.
	Error string `json:"error"`
	// Message, if set, is what a user should read: what failed and the
	// next step, without the daemon's internal detail.
	Message string `json:"message,omitempty"`
}

// DNSStatus is the answer of GET /localapi/v0/dns/status.
type DNSStatus struct {
	// Domain is the network's MagicDNS domain.
	Domain        string   `json:"domain"`
	SearchDomains []string `json:"search_domains"`
	// Resolvers are the addresses MagicDNS answers on inside the overlay.
	Resolvers []string `json:"resolvers"`
	Upstreams []string `json:"upstreams"`
	// Routes are split-DNS routes: suffix to resolvers.
	Routes map[string][]string `json:"routes,omitempty"`
	// Names counts the names MagicDNS answers locally.
	Names int `json:"names"`
}

// ExposeRequest is the body of POST /localapi/v0/expose.
type ExposeRequest struct {
	// Port is the local port to publish (on 127.0.0.1 / [::1] of this device).
	Port uint16 `json:"port"`
	// Proto is "http" (default), "tls" (passthrough), "tcp" or "udp".
	Proto string `json:"proto,omitempty"`
	// Name is the label under the edge domain; empty means the node's name.
	Name string `json:"name,omitempty"`
	// Domain is a verified custom domain to publish under instead.
	Domain string `json:"domain,omitempty"`
	// Options is the route's edge policy; the daemon and the coordinator
	// refuse options that do not Validate for Proto.
	Options wire.RouteOptions `json:"options,omitzero"`
	// Pool shares the name with other devices of the same user or tag
	// that publish it with Pool too (see wire.ExposeRequest.Pool).
	Pool bool `json:"pool,omitempty"`
	// Upstream, for http routes, is where the daemon forwards instead of
	// 127.0.0.1:Port: "host:port" (another address the device reaches)
	// or "https://host:port" (TLS to the app); its port is Port.
	Upstream string `json:"upstream,omitempty"`
	// Inspect asks the daemon to serve the request inspector (on
	// 127.0.0.1:4040 or the next free port) if it does not yet. Without
	// it, the exchanges of the routes of Port are kept out of the
	// inspector (beam expose --inspect=false).
	Inspect bool `json:"inspect,omitempty"`
}

// ExposeResponse is the answer of POST /localapi/v0/expose.
type ExposeResponse struct {
	URL        string `json:"url"`
	Host       string `json:"host,omitempty"`
	Proto      string `json:"proto"`
	PublicPort uint16 `json:"public_port,omitempty"`
	Port       uint16 `json:"port"`
	// Upstream is where the daemon forwards: "127.0.0.1:PORT", another
	// host:port, or https://host:port.
	Upstream string `json:"upstream,omitempty"`
	// Warning says when nothing listens on the local port yet.
	Warning string `json:"warning,omitempty"`
	// ACMEChallengeCNAME is set for a tls route on a custom domain HOST:
	// the name the domain's owner points "_acme-challenge.HOST" to with a
	// CNAME, so that the device gets its certificate by DNS-01.
	ACMEChallengeCNAME string `json:"acme_challenge_cname,omitempty"`
	// InspectURL is the request inspector's address, when asked for
	// (ExposeRequest.Inspect) and serving.
	InspectURL string `json:"inspect_url,omitempty"`
}

// ExposeStopRequest is the body of POST /localapi/v0/expose/stop.
type ExposeStopRequest struct {
	// Name is the route's host ("app.example.test"), its label ("app") or,
	// for tcp/udp routes, "tcp:PORT" / "udp:PORT" with the public port.
	Name string `json:"name"`
	// Proto, if set, withdraws only the route of that protocol; empty
	// means every route Name matches.
	Proto string `json:"proto,omitempty"`
}

// RouteGone is the answer of POST /localapi/v0/expose/wait (body: the
// Route to watch), sent once the route is no longer published.
type RouteGone struct {
	// Reason says why: withdrawn, or this device left the network.
	Reason string `json:"reason"`
}

// Route is one published route of this device, as listed by GET
// /localapi/v0/expose.
type Route struct {
	Host       string            `json:"host,omitempty"`
	Proto      string            `json:"proto"`
	PublicPort uint16            `json:"public_port,omitempty"`
	Port       uint16            `json:"port"`
	Upstream   string            `json:"upstream,omitempty"`
	Options    wire.RouteOptions `json:"options,omitzero"`
}

// RequestLog is one line of GET /localapi/v0/expose/watch (JSON lines):
// a request served through an exposed HTTP route.
type RequestLog struct {
	Time     time.Time     `json:"time"`
	Host     string        `json:"host"`
	Method   string        `json:"method"`
	Path     string        `json:"path"`
	Status   int           `json:"status"`
	Duration time.Duration `json:"duration"`
	Port     uint16        `json:"port"`
	Client   string        `json:"client,omitempty"`
	// Edge is set for a request the edge refused itself (basic auth, IP
	// lists, rate limit: Status 401, 403 or 429); it never reached this
	// device.
	Edge bool `json:"edge,omitempty"`
}

// PingResult is the answer of GET /localapi/v0/ping: one disco ping.
type PingResult struct {
	Name string     `json:"name"`
	IP   netip.Addr `json:"ip"`
	// Latency is the round trip.
	Latency time.Duration `json:"latency"`
	// Path is "direct", "peer-relay" or "relay".
	Path string `json:"path"`
	// Endpoint is the peer's UDP address on a direct path, the peer
	// relay server's on a peer-relay path.
	Endpoint string `json:"endpoint,omitempty"`
	// Via names the node whose peer relay server carried the ping.
	Via string `json:"via,omitempty"`
	// Relay names the relay region ("DERP(code)") on a relayed path.
	Relay string `json:"relay,omitempty"`
}

// NetcheckReport is the answer of GET /localapi/v0/netcheck.
type NetcheckReport struct {
	UDP      bool   `json:"udp"`
	GlobalV4 string `json:"global_v4,omitempty"`
	GlobalV6 string `json:"global_v6,omitempty"`
	// MappingVariesByDestIP is nil when unknown.
	MappingVariesByDestIP *bool `json:"mapping_varies_by_dest_ip,omitempty"`
	// RegionLatency maps a relay region's code to its STUN round trip.
	RegionLatency  map[string]time.Duration `json:"region_latency,omitempty"`
	PreferredRelay string                   `json:"preferred_relay,omitempty"`
	// LocalAddrs are the node's own UDP endpoints (interface addresses
	// and the WireGuard port), known without any STUN server.
	LocalAddrs []string `json:"local_addrs,omitempty"`
	// Missing says, one sentence each, what the report could not learn
	// and why (for example, the relay map has no STUN servers).
	Missing []string `json:"missing,omitempty"`
	// PortMapping is what the NAT gateway offers for port mapping; nil
	// when the daemon runs without port mapping (then nothing asks the
	// gateway).
	PortMapping *PortMapping `json:"port_mapping,omitempty"`
}

// PortMapping is the port mapping part of a NetcheckReport.
type PortMapping struct {
	// Gateway is the gateway asked; empty if the host has none.
	Gateway string `json:"gateway,omitempty"`
	// Protocols are those the gateway answered: "PCP", "NAT-PMP",
	// "UPnP".
	Protocols []string `json:"protocols"`
	// Protocol and Mapped are the current mapping of the WireGuard
	// port, which the node advertises as an endpoint; empty if none.
	Protocol string `json:"protocol,omitempty"`
	Mapped   string `json:"mapped,omitempty"`
}
