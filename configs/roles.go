package configs

import (
	"errors"
	"fmt"
	"maps"
	"math"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"beam.dev/beam/localapi/apitype"
	"beam.dev/beam/types/key"
)

// The settings of each role, as its flags and its config file give them
// (the flag --tcp-ports is the key "tcp_ports"), checked before the role
// starts: a bad domain, address, port range, URL or prefix is an error
// that names the flag and the key, never a failure (or a panic) deep
// inside a component. Validate returns every problem found, joined. The
// Default* functions are the one place defaults live: the flags take
// theirs from them, and a file's absent keys keep them.

// Telemetry is the metrics and pprof listeners every role has.
type Telemetry struct {
	// MetricsAddr serves Prometheus metrics at /metrics; "" disables.
	MetricsAddr string `json:"metrics_addr"`
	// DebugAddr serves Go's pprof at /debug/pprof/; "" disables.
	DebugAddr string `json:"debug_addr"`
}

// Zone is the public DNS zone's settings (part of beam server).
type Zone struct {
	// DNSAddr is the zone's UDP and TCP listener; "" disables it.
	DNSAddr string `json:"dns_addr"`
	// PublicIPs are the edge's public addresses, the zone's A/AAAA records.
	PublicIPs []string `json:"public_ip"`
}

// Validate checks z.
func (z *Zone) Validate() error {
	var c checker
	z.check(&c)
	return c.err()
}

func (z *Zone) check(c *checker) {
	c.listen("--dns-addr", z.DNSAddr, false)
	for _, ip := range z.PublicIPs {
		c.ip("--public-ip", ip)
	}
}

// Server is beam server's settings: coordinator, relay, STUN, edge and
// public zone in one process.
type Server struct {
	DataDir string `json:"data"`
	// DB is as Coordinator.DB.
	DB         string `json:"db"`
	Domain     string `json:"domain"`
	Addr       string `json:"addr"`
	PublicURL  string `json:"public_url"`
	HTTPAddr   string `json:"http_addr"`
	HTTPSAddr  string `json:"https_addr"`
	NoRedirect bool   `json:"no_https_redirect"`
	// RedirectPort is the port the HTTP-to-HTTPS redirect names; 0 means
	// the HTTPS listener's own.
	RedirectPort uint16 `json:"https_redirect_port"`
	TCPPorts     string `json:"tcp_ports"`
	UDPPorts     string `json:"udp_ports"`
	STUNAddr     string `json:"stun_addr"`
	// STUNAltAddr is the second STUN responder (see STUNAltUsage).
	STUNAltAddr string `json:"stun_alt_addr"`
	Zone
	ACMECA     string `json:"acme_ca"`
	ACMECARoot string `json:"acme_ca_root"`
	ACMEEmail  string `json:"acme_email"`
	// ACMEStaging selects Let's Encrypt's staging directory.
	ACMEStaging bool   `json:"acme_staging"`
	Dev         bool   `json:"dev"`
	LogLevel    string `json:"log_level"`
	// NodeKeyExpiry is as Coordinator.NodeKeyExpiry.
	NodeKeyExpiry string `json:"node_key_expiry"`
	// PolicyFile is as Coordinator.PolicyFile.
	PolicyFile string `json:"policy_file"`
	// MaxConns caps the connections of the coordinator and relay
	// listener, EdgeMaxConns those of the edge's listeners; 0 derives
	// them from the open files limit, negative means none.
	MaxConns     int `json:"max_conns"`
	EdgeMaxConns int `json:"edge_max_conns"`
	// MachineRate and NodeRate are as Coordinator's.
	MachineRate int `json:"machine_rate"`
	NodeRate    int `json:"node_rate"`
	ReplicaTimes
	RouteQuota
	RelayLimits
	// BodyTimeout bounds request bodies at the edge.
	BodyTimeout Duration `json:"body_timeout"`
	// Telemetry: one listener each for all of the server's roles.
	Telemetry
	OIDC
}

// DefaultBodyTimeout is the edge's default body timeout (as
// edge.DefaultBodyTimeout, which configs may not import).
const DefaultBodyTimeout = Duration(30 * time.Second)

// DefaultServer returns beam server's defaults.
func DefaultServer() Server {
	return Server{
		DataDir: "beam-server", Addr: ":8080", HTTPAddr: ":80", HTTPSAddr: ":443",
		TCPPorts: "20000-20999", UDPPorts: "21000-21999", STUNAddr: ":3478",
		Zone:     Zone{DNSAddr: ":53"},
		LogLevel: "info", NodeKeyExpiry: "180d", BodyTimeout: DefaultBodyTimeout,
		OIDC: OIDC{OIDCProvider: DefaultOIDCProvider()},
	}
}

// Validate checks s.
func (s *Server) Validate() error {
	var c checker
	c.domain("--domain", s.Domain, true)
	c.listen("--addr", s.Addr, true)
	c.db(s.DB)
	checkMachineRate(&c, s.MachineRate)
	checkNodeRate(&c, s.NodeRate)
	s.ReplicaTimes.check(&c)
	s.RouteQuota.check(&c)
	s.RelayLimits.check(&c)
	s.OIDCProvider.check(&c)
	c.url("--public-url", s.PublicURL, false)
	c.listen("--http-addr", s.HTTPAddr, false)
	c.listen("--https-addr", s.HTTPSAddr, false)
	c.portRange("--tcp-ports", s.TCPPorts)
	c.portRange("--udp-ports", s.UDPPorts)
	c.listen("--stun-addr", s.STUNAddr, false)
	c.stunAlt(s.STUNAltAddr)
	s.Zone.check(&c)
	c.url("--acme-ca", s.ACMECA, false)
	c.logLevel(s.LogLevel)
	c.nonNegative("--body-timeout", time.Duration(s.BodyTimeout))
	return c.err()
}

// Coordinator is beam coordinator's settings.
type Coordinator struct {
	// Addr is the TCP address to serve on.
	Addr string `json:"addr"`
	// DataDir holds coordinator.db, coordinator.key and admin.token.
	DataDir string `json:"data"`
	// DB is a PostgreSQL URL (postgres://USER:PASSWORD@HOST:PORT/DATABASE)
	// for the coordinator's database; empty means SQLite, coordinator.db
	// in DataDir.
	DB string `json:"db"`
	// DERPURLs each become a region with one relay.
	DERPURLs []string `json:"derp"`
	// STUN overrides the relays' STUN addresses (host:port), one per
	// DERPURLs entry or one for all; an entry may list several,
	// comma-separated (a relay's IPv4 and IPv6 addresses), the ones after
	// the first becoming STUN-only nodes of its region.
	STUN []string `json:"stun"`
	// STUNAltPort is the port of the relays' second STUN responder, on
	// the host of their STUN address: 0 means that address's port + 1
	// (what beam derp serves by default), -1 none.
	STUNAltPort int `json:"stun_alt_port"`
	// DERPMapFile is a JSON relay map file, used instead of DERPURLs.
	DERPMapFile string `json:"derp_map"`
	// BaseDomain is the parent domain of the networks' domains.
	BaseDomain string `json:"base_domain"`
	// Dev lets loopback nodes register without an auth key.
	Dev bool `json:"dev"`
	// NodeKeyExpiry is the default key expiry of untagged nodes ("180d",
	// "720h", "never"); empty means the coordinator's default.
	NodeKeyExpiry string `json:"node_key_expiry"`
	// PolicyFile is a HuJSON access policy applied at start and on each
	// reload; "" leaves the stored policy (set with beam admin policy).
	PolicyFile string `json:"policy_file"`
	// LogLevel is debug, info, warn or error.
	LogLevel string `json:"log_level"`
	// MaxConns caps the coordinator's connections; 0 derives it from the
	// open files limit, negative means none.
	MaxConns int `json:"max_conns"`
	// MachineRate is how many sealed requests (register, map, expose) a
	// second each client address (an IPv4 address, an IPv6 /64) may
	// send, in bursts of 10 times as many; 0 means 200, -1 no limit.
	// Raise it for a coordinator behind a reverse proxy, where every node
	// comes from the proxy's address.
	MachineRate int `json:"machine_rate"`
	// NodeRate is how many sealed requests a second one registered node
	// (its key) may send, in bursts of 10 times as many, wherever it
	// comes from; 0 means 20, -1 no limit.
	NodeRate int `json:"node_rate"`
	ReplicaTimes
	RouteQuota
	CoordinatorEdge
	Telemetry
	OIDC
}

// CoordinatorEdge is the coordinator's public edge and DNS settings.
type CoordinatorEdge struct {
	// Domain is the edge domain; routes get NAME.Domain. Empty disables expose.
	Domain string `json:"edge_domain"`
	// Host is the edge host in tcp:// and udp:// URLs (default Domain).
	Host string `json:"edge_host"`
	// TCPPorts and UDPPorts are edge port ranges ("20000-20999").
	TCPPorts string `json:"edge_tcp_ports"`
	UDPPorts string `json:"edge_udp_ports"`
	// HTTPURL is the URL template of http routes ("http://{host}:18081").
	HTTPURL string `json:"edge_http_url"`
	// DNSConfigFile is a JSON DNS settings file applied at start.
	DNSConfigFile string `json:"dns_config"`
}

// ReplicaTimes are the map stream and replica timers of beam coordinator
// and beam server (the same flags, keys and bounds in both).
type ReplicaTimes struct {
	// KeepAlive is how often an idle map stream gets a keepalive (0: the
	// coordinator's default, 30 s). A node with other coordinators to
	// move to counts a stream silent 5 s longer as dead, so it bounds
	// how long nodes stay on a coordinator whose machine vanished.
	KeepAlive Duration `json:"keepalive"`
	// StaleAfter is how long a coordinator sharing the --db database may
	// miss heartbeats (it beats every 3 s) before the others show its
	// nodes as unknown (0: 15 s). UnknownTimeout is how long they stay
	// unknown, unless they stream from another coordinator, before they
	// are offline (0: 2 minutes). Give every replica the same.
	StaleAfter     Duration `json:"stale_after"`
	UnknownTimeout Duration `json:"unknown_timeout"`
	// OnlineGrace is how long the nodes streaming when a coordinator
	// shuts down stay online without a stream, while they come back to
	// its restart or to another replica (0: 45.5 s); those not back by
	// then are offline.
	OnlineGrace Duration `json:"online_grace"`
}

// check checks the timers.
func (r *ReplicaTimes) check(c *checker) {
	if d := time.Duration(r.KeepAlive); d != 0 && (d < time.Second || d > 5*time.Minute) {
		c.add("--keepalive", d.String(), "want 1s to 5m, or 0 for the default (30s)")
	}
	if d := time.Duration(r.StaleAfter); d != 0 && (d < 6*time.Second || d > 10*time.Minute) {
		c.add("--stale-after", d.String(), "want 6s (two heartbeats) to 10m, or 0 for the default (15s)")
	}
	if d := time.Duration(r.UnknownTimeout); d != 0 && (d < 5*time.Second || d > 24*time.Hour) {
		c.add("--unknown-timeout", d.String(), "want 5s to 24h, or 0 for the default (2m)")
	}
	if d := time.Duration(r.OnlineGrace); d != 0 && (d < 12*time.Second || d > 10*time.Minute) {
		c.add("--online-grace", d.String(), "want 12s (longer than the 10.5s a shutdown may ask nodes to wait) to 10m, or 0 for the default (45.5s)")
	}
}

// RouteQuota bounds what one device (node), the devices of one user
// (or, for devices of no user, of one auth key) together, and those of
// one network, may publish on the public edge (beam coordinator and beam
// server: the same flags and keys). Zero means the coordinator's default
// (coordinator.DefaultRouteQuota), -1 no limit.
type RouteQuota struct {
	// MaxRoutesPerNode and MaxRoutesPerUser are the most routes
	// published (0: 32 and 128).
	MaxRoutesPerNode int `json:"max_routes_per_node"`
	MaxRoutesPerUser int `json:"max_routes_per_user"`
	// MaxEdgePortsPerNode and MaxEdgePortsPerUser are the most edge tcp
	// and udp ports held (0: 4 and 16).
	MaxEdgePortsPerNode int `json:"max_edge_ports_per_node"`
	MaxEdgePortsPerUser int `json:"max_edge_ports_per_user"`
	// MaxEdgePortsPerNetwork is the most edge ports of each of tcp and
	// udp the devices of one network may hold (0: half of each range).
	MaxEdgePortsPerNetwork int `json:"max_edge_ports_per_network"`
	// MaxRouteOptions is the most bytes of options (headers, basic auth
	// users, IP lists, ...) one route may have (0: 65536);
	// MaxRouteOptionsPerNode and MaxRouteOptionsPerUser bound their sum
	// (0: 262144 and 1048576).
	MaxRouteOptions        int `json:"max_route_options"`
	MaxRouteOptionsPerNode int `json:"max_route_options_per_node"`
	MaxRouteOptionsPerUser int `json:"max_route_options_per_user"`
}

// check checks the quotas: each -1 or more.
func (q *RouteQuota) check(c *checker) {
	for _, f := range q.Fields() {
		if *f.V < -1 {
			c.add("--"+f.Flag, strconv.Itoa(*f.V), "want a number, 0 for the default or -1 for no limit")
		}
	}
}

// RouteQuotaField is one setting of RouteQuota: its flag (without
// "--"), help and value.
type RouteQuotaField struct {
	Flag, Usage string
	V           *int
}

// Fields lists q's settings, for binding them to flags.
func (q *RouteQuota) Fields() []RouteQuotaField {
	return []RouteQuotaField{
		{"max-routes-per-node", "edge routes one device may publish (0: 32; -1: no limit)", &q.MaxRoutesPerNode},
		{"max-routes-per-user", "edge routes the devices of one user (without one: of one auth key) may publish together (0: 128; -1: no limit)", &q.MaxRoutesPerUser},
		{"max-edge-ports-per-node", "edge tcp/udp ports one device may hold (0: 4; -1: no limit)", &q.MaxEdgePortsPerNode},
		{"max-edge-ports-per-user", "edge tcp/udp ports the devices of one user (without one: of one auth key) may hold together (0: 16; -1: no limit)", &q.MaxEdgePortsPerUser},
		{"max-edge-ports-per-network", "edge ports of each of tcp and udp the devices of one network may hold together (0: half of each range; -1: no limit)", &q.MaxEdgePortsPerNetwork},
		{"max-route-options", "bytes of options (headers, basic auth, IP lists...) one route may have (0: 65536; -1: no limit)", &q.MaxRouteOptions},
		{"max-route-options-per-node", "bytes of route options one device's routes may have together (0: 262144; -1: no limit)", &q.MaxRouteOptionsPerNode},
		{"max-route-options-per-user", "bytes of route options the routes of one user's (or auth key's) devices may have together (0: 1048576; -1: no limit)", &q.MaxRouteOptionsPerUser},
	}
}

// MachineRateUsage is the help of --machine-rate.
const MachineRateUsage = "sealed requests (register, map, expose) a second each client address may send, in bursts of 10x (0: 200; -1: no limit); raise it behind a reverse proxy, where every node has the proxy's address"

// checkMachineRate checks --machine-rate.
func checkMachineRate(c *checker, rate int) {
	if rate < -1 || rate > 1_000_000 {
		c.add("--machine-rate", strconv.Itoa(rate), "want 1 to 1000000 requests a second, 0 for the default (200) or -1 for no limit")
	}
}

// NodeRateUsage is the help of --node-rate.
const NodeRateUsage = "sealed requests (map, expose, endpoint updates) a second one registered device may send, whatever its address, in bursts of 10x (0: 20; -1: no limit)"

// checkNodeRate checks --node-rate.
func checkNodeRate(c *checker, rate int) {
	if rate < -1 || rate > 1_000_000 {
		c.add("--node-rate", strconv.Itoa(rate), "want 1 to 1000000 requests a second, 0 for the default (20) or -1 for no limit")
	}
}

// DefaultBaseDomain is the coordinator's default base domain (as
// coordinator.DefaultBaseDomain, which configs may not import).
const DefaultBaseDomain = "beam.internal"

// DefaultCoordinator returns beam coordinator's defaults.
func DefaultCoordinator() Coordinator {
	return Coordinator{
		Addr: "127.0.0.1:8080", DataDir: "coordinator-data", BaseDomain: DefaultBaseDomain,
		NodeKeyExpiry: "180d", LogLevel: "info",
		CoordinatorEdge: CoordinatorEdge{TCPPorts: "20000-20999", UDPPorts: "21000-21999"},
		OIDC:            OIDC{OIDCProvider: DefaultOIDCProvider()},
	}
}

// Validate checks co.
func (co *Coordinator) Validate() error {
	var c checker
	c.listen("--addr", co.Addr, true)
	c.db(co.DB)
	c.domain("--base-domain", co.BaseDomain, true)
	for _, u := range co.DERPURLs {
		c.url("--derp", u, true)
	}
	for _, list := range co.STUN {
		for a := range strings.SplitSeq(list, ",") {
			c.hostPort("--stun", a)
		}
	}
	if co.STUNAltPort < -1 || co.STUNAltPort > 65535 {
		c.add("--stun-alt-port", strconv.Itoa(co.STUNAltPort), "want 1-65535, 0 (the STUN port + 1) or -1 (none)")
	}
	c.domain("--edge-domain", co.Domain, false)
	if co.Host != "" {
		if _, err := netip.ParseAddr(co.Host); err != nil {
			c.domain("--edge-host", co.Host, true)
		}
	}
	c.portRange("--edge-tcp-ports", co.TCPPorts)
	c.portRange("--edge-udp-ports", co.UDPPorts)
	if co.HTTPURL != "" {
		c.url("--edge-http-url", strings.ReplaceAll(co.HTTPURL, "{host}", "host.example"), true)
	}
	checkMachineRate(&c, co.MachineRate)
	checkNodeRate(&c, co.NodeRate)
	co.OIDCProvider.check(&c)
	co.RouteQuota.check(&c)
	co.ReplicaTimes.check(&c)
	c.logLevel(co.LogLevel)
	return c.err()
}

// Edge is beam edge's settings.
type Edge struct {
	// Coordinator is the coordinator URL, or several comma-separated
	// (replicas on one database).
	Coordinator string `json:"coordinator"`
	AuthKey     string `json:"authkey"`
	Domain      string `json:"domain"`
	HTTPAddr    string `json:"http_addr"`
	HTTPSAddr   string `json:"https_addr"`
	NoRedirect  bool   `json:"no_https_redirect"`
	// RedirectPort is the port the HTTP-to-HTTPS redirect names; 0 means
	// the HTTPS listener's own.
	RedirectPort uint16 `json:"https_redirect_port"`
	BindHost     string `json:"bind_host"`
	ACMECA       string `json:"acme_ca"`
	ACMECARoot   string `json:"acme_ca_root"`
	ACMEEmail    string `json:"acme_email"`
	TLSCert      string `json:"tls_cert"`
	TLSKey       string `json:"tls_key"`
	// StateDir is the edge node's state directory (--state).
	StateDir string `json:"state"`
	Port     uint16 `json:"port"`
	Hostname string `json:"hostname"`
	LogLevel string `json:"log_level"`
	// MaxConns caps the client connections of all listeners; 0 derives
	// it from the open files limit, negative means none.
	MaxConns int `json:"max_conns"`
	// BodyTimeout bounds request bodies.
	BodyTimeout Duration `json:"body_timeout"`
	Telemetry
	OIDCProvider
}

// DefaultEdge returns beam edge's defaults.
func DefaultEdge() Edge {
	return Edge{HTTPAddr: ":80", HTTPSAddr: ":443", Hostname: "edge", LogLevel: "info", BodyTimeout: DefaultBodyTimeout,
		OIDCProvider: DefaultOIDCProvider()}
}

// Validate checks e.
func (e *Edge) Validate() error {
	var c checker
	c.urlList("--coordinator", e.Coordinator)
	c.domain("--domain", e.Domain, true)
	c.listen("--http-addr", e.HTTPAddr, false)
	c.listen("--https-addr", e.HTTPSAddr, false)
	if e.BindHost != "" {
		c.ip("--bind-host", e.BindHost)
	}
	c.url("--acme-ca", e.ACMECA, false)
	if (e.TLSCert == "") != (e.TLSKey == "") {
		c.add("--tls-cert", e.TLSCert, "--tls-cert and --tls-key go together")
	}
	c.logLevel(e.LogLevel)
	c.nonNegative("--body-timeout", time.Duration(e.BodyTimeout))
	e.OIDCProvider.check(&c)
	return c.err()
}

// DERP is beam derp's settings.
type DERP struct {
	// Addr is the TCP address to serve HTTP(S) on.
	Addr string `json:"addr"`
	// STUNAddr is the UDP address of the STUN responder; empty disables it.
	STUNAddr string `json:"stun_addr"`
	// STUNAltAddr is the second STUN responder (see STUNAltUsage).
	STUNAltAddr string `json:"stun_alt_addr"`
	// TLSCert and TLSKey are PEM files; both empty serves plain HTTP.
	TLSCert string `json:"tls_cert"`
	TLSKey  string `json:"tls_key"`
	// VerifyClients is the coordinator's base URL; when set, only node
	// keys it admits may connect.
	VerifyClients string `json:"verify_clients"`
	// VerifyTokenFile holds the coordinator's relay token.
	VerifyTokenFile string `json:"verify_token_file"`
	// MeshWith lists the region's other relays as "URL" or "URL#KEY"
	// (see ParseMeshPeer).
	MeshWith []string `json:"mesh_with"`
	// MeshKeyFile holds the region's mesh key.
	MeshKeyFile string `json:"mesh_key_file"`
	// KeyFile holds the relay's machine key; StateDir/derp.key if empty.
	KeyFile string `json:"key_file"`
	// StateDir is where KeyFile defaults to.
	StateDir string `json:"state"`
	LogLevel string `json:"log_level"`
	// MaxConns caps the relay's connections; 0 derives it from the open
	// files limit, negative means none.
	MaxConns int `json:"max_conns"`
	RelayLimits
	Telemetry
}

// DefaultDERP returns beam derp's defaults.
func DefaultDERP() DERP {
	return DERP{Addr: ":3340", STUNAddr: ":3478", StateDir: "derp-data", LogLevel: "info"}
}

// Validate checks d.
func (d *DERP) Validate() error {
	var c checker
	c.listen("--addr", d.Addr, true)
	c.listen("--stun-addr", d.STUNAddr, false)
	c.stunAlt(d.STUNAltAddr)
	for _, m := range d.MeshWith {
		u, _, err := ParseMeshPeer(m)
		if err != nil {
			c.add("--mesh-with", m, err.Error())
			continue
		}
		c.url("--mesh-with", u, true)
	}
	c.url("--verify-clients", d.VerifyClients, false)
	if (d.TLSCert == "") != (d.TLSKey == "") {
		c.add("--tls-cert", d.TLSCert, "--tls-cert and --tls-key go together")
	}
	c.logLevel(d.LogLevel)
	d.RelayLimits.check(&c)
	return c.err()
}

// RelayLimits bound what each client of a relay (beam derp, beam server)
// may send through it, so that one client cannot take a relay's bandwidth
// from the others. Mesh peers (other relays of the region) are not
// limited.
type RelayLimits struct {
	// RelayRate is each client's sustained send rate, such as "50Mbit"
	// or "6MiB" (per second; see ParseByteRate); "" or "0" means
	// DefaultRelayRate, "off" no limit.
	RelayRate string `json:"relay_rate"`
	// RelayBurst is how much a client may send at once before RelayRate
	// holds it back, such as "4MiB" (ParseByteRate's units, read as
	// bytes); "" or "0" means DefaultRelayBurst.
	RelayBurst string `json:"relay_burst"`
}

// Defaults of RelayLimits. A relay carries the traffic of devices that
// have no direct path, for as long as they have none: calls, remote
// desktops and file copies between a user's own machines. 50 Mbit/s per
// client carries those at the speed of a typical home uplink, and the
// burst (about two thirds of a second at that rate) lets a short
// exchange, such as loading a page, go at full speed; a relay of 10
// Gbit/s still serves 200 clients sending all they can at once.
const (
	DefaultRelayRate  = 50_000_000 / 8 // bytes per second
	DefaultRelayBurst = 4 << 20        // bytes
)

// RelayRateUsage and RelayBurstUsage are the help of --relay-rate and
// --relay-burst.
const (
	RelayRateUsage  = `most each relay client may send per second, e.g. 50Mbit or 6MiB (0: 50Mbit; "off": no limit)`
	RelayBurstUsage = "most a relay client may send at once before --relay-rate holds it back, e.g. 4MiB (0: 4MiB)"
)

// Bytes returns the limits in bytes per second and bytes, the defaults
// filled in; rate 0 means no limit. r must have passed Validate.
func (r *RelayLimits) Bytes() (rate, burst int64) {
	burst, _ = ParseByteRate(r.RelayBurst)
	if burst == 0 {
		burst = DefaultRelayBurst
	}
	if strings.EqualFold(strings.TrimSpace(r.RelayRate), "off") {
		return 0, burst
	}
	rate, _ = ParseByteRate(r.RelayRate)
	if rate == 0 {
		rate = DefaultRelayRate
	}
	return rate, burst
}

// check checks the limits.
func (r *RelayLimits) check(c *checker) {
	if !strings.EqualFold(strings.TrimSpace(r.RelayRate), "off") {
		if _, err := ParseByteRate(r.RelayRate); err != nil {
			c.add("--relay-rate", r.RelayRate, err.Error()+`, or "off" for no limit`)
		}
	}
	b, err := ParseByteRate(r.RelayBurst)
	switch {
	case err != nil:
		c.add("--relay-burst", r.RelayBurst, strings.Replace(err.Error(), " (per second)", "", 1))
	case b != 0 && (b < 64<<10 || b > 1<<30):
		c.add("--relay-burst", r.RelayBurst, "want 64KiB to 1GiB, or 0 for the default")
	}
}

// Daemon is beam daemon's settings. Those the daemon keeps in its state
// (Port, SOCKS5, HTTPProxy, DNSListen, DNSUpstreams, Operator) replace the
// stored ones when a flag or the file gives them.
type Daemon struct {
	// StateDir and Socket are the state directory and the local API
	// socket (the --state and --socket flags of beam, and BEAM_STATE and
	// BEAM_SOCKET, win over them); empty: as without a file.
	StateDir     string   `json:"state"`
	Socket       string   `json:"socket"`
	Port         uint16   `json:"port"`
	SOCKS5       string   `json:"socks5"`
	HTTPProxy    string   `json:"http_proxy"`
	DNSListen    string   `json:"dns_listen"`
	DNSUpstreams []string `json:"dns_upstream"`
	LogLevel     string   `json:"log_level"`
	Hostname     string   `json:"hostname"`
	WGName       string   `json:"wg_name"`
	// ACMECA is the ACME directory for the certificates of tls routes.
	ACMECA string `json:"acme_ca"`
	// ACMECARoot is a PEM file: roots trusted for the ACME server's HTTPS.
	ACMECARoot string `json:"acme_ca_root"`
	ACMEEmail  string `json:"acme_email"`
	Operator   string `json:"operator"`
	// RelayServer runs a UDP peer relay server: "on", a UDP port, or
	// "off" (see beam set --relay-server).
	RelayServer string `json:"relay_server"`
	// RelayServerMaxSessions and RelayServerMaxSessionsPerPeer bound the
	// peer relay server's sessions in all and per peer; 0 means the
	// defaults (1024 and 32).
	RelayServerMaxSessions        int `json:"relay_server_max_sessions"`
	RelayServerMaxSessionsPerPeer int `json:"relay_server_max_sessions_per_peer"`
	// RelayServerSessionRate bounds one relay session's traffic, both
	// directions together: a rate such as "100Mbit" or "12MiB" (per
	// second; see ParseByteRate); "" or "0" means the default, 128 MiB/s.
	RelayServerSessionRate string `json:"relay_server_session_rate"`
	// TUN names the kernel TUN device; empty runs the userspace data plane.
	TUN string `json:"tun"`
	// PortMapping asks the NAT gateway for a mapping of the WireGuard
	// port (PCP, NAT-PMP or UPnP) and advertises it; off unless set, since it
	// sends to the default route's next hop.
	PortMapping bool `json:"port_mapping"`
	// PortMappingLifetime is the mapping lifetime asked (renewed halfway
	// through); zero means 2 hours.
	PortMappingLifetime Duration `json:"port_mapping_lifetime"`
	Telemetry
}

// DefaultDaemon returns beam daemon's defaults.
func DefaultDaemon() Daemon { return Daemon{LogLevel: "info"} }

// Validate checks d.
func (d *Daemon) Validate() error {
	n := Node{SOCKS5: d.SOCKS5, HTTPProxy: d.HTTPProxy, DNSListen: d.DNSListen, DNSUpstreams: d.DNSUpstreams, ACMECA: d.ACMECA, LogLevel: d.LogLevel}
	return errors.Join(n.Validate(), d.ValidateRelayLimits())
}

// ValidateRelayLimits checks the peer relay server's limits.
func (d *Daemon) ValidateRelayLimits() error {
	var c checker
	for _, f := range []struct {
		flag string
		v    int
	}{{"--relay-server-max-sessions", d.RelayServerMaxSessions}, {"--relay-server-max-sessions-per-peer", d.RelayServerMaxSessionsPerPeer}} {
		if f.v < 0 || f.v > apitype.MaxRelayServerSessions {
			c.add(f.flag, strconv.Itoa(f.v), fmt.Sprintf("want 0 (the default) or 1 to %d", apitype.MaxRelayServerSessions))
		}
	}
	if m, p := d.RelayServerMaxSessions, d.RelayServerMaxSessionsPerPeer; m > 0 && p > m {
		c.add("--relay-server-max-sessions-per-peer", strconv.Itoa(p), fmt.Sprintf("more than --relay-server-max-sessions (%d)", m))
	}
	if _, err := ParseByteRate(d.RelayServerSessionRate); err != nil {
		c.add("--relay-server-session-rate", d.RelayServerSessionRate, err.Error())
	}
	return c.err()
}

// Byte rate units of ParseByteRate, in bytes per second.
var byteRateUnits = []struct {
	name string
	per  float64
}{
	{"kbit", 1e3 / 8}, {"mbit", 1e6 / 8}, {"gbit", 1e9 / 8}, {"bit", 1.0 / 8},
	{"kib", 1 << 10}, {"mib", 1 << 20}, {"gib", 1 << 30},
	{"kb", 1e3}, {"mb", 1e6}, {"gb", 1e9}, {"b", 1},
}

// ParseByteRate reads a rate per second such as "100Mbit", "2.5Gbit",
// "12MiB" or "500kB" (a number and a unit, optionally "/s": bit, kbit,
// Mbit, Gbit; B, kB, MB, GB; KiB, MiB, GiB; any case) and returns it in
// bytes per second. "" and "0" are 0 (the default). A rate below 64
// kbit/s or above 100 Gbit/s is refused.
func ParseByteRate(s string) (int64, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	if t == "" || t == "0" {
		return 0, nil
	}
	t = strings.TrimSuffix(t, "/s")
	num := strings.TrimRightFunc(t, func(r rune) bool { return r >= 'a' && r <= 'z' })
	unit := strings.TrimSpace(t[len(num):])
	num = strings.TrimSpace(num)
	if unit == "" {
		return 0, errors.New("want a number and a unit, e.g. 100Mbit or 12MiB (per second)")
	}
	per := 0.0
	for _, u := range byteRateUnits {
		if u.name == unit {
			per = u.per
		}
	}
	if per == 0 {
		return 0, fmt.Errorf("unknown unit %q: want bit, kbit, Mbit, Gbit, B, kB, MB, GB, KiB, MiB or GiB", unit)
	}
	v, err := strconv.ParseFloat(num, 64)
	if err != nil || v < 0 || math.IsInf(v, 0) || math.IsNaN(v) {
		return 0, fmt.Errorf("%q is not a number", num)
	}
	r := math.Round(v * per)
	if r < apitype.MinRelayServerSessionRate || r > apitype.MaxRelayServerSessionRate {
		return 0, errors.New("want 64kbit to 100Gbit (per second), or 0 for the default")
	}
	return int64(r), nil
}

// FormatByteRate writes bytes per second as ParseByteRate reads it: in
// Mbit (or kbit, Gbit) when whole, else in bytes.
func FormatByteRate(r int64) string {
	bits := r * 8
	for _, u := range []struct {
		name string
		n    int64
	}{{"Gbit", 1e9}, {"Mbit", 1e6}, {"kbit", 1e3}} {
		if bits >= u.n && bits%u.n == 0 {
			return strconv.FormatInt(bits/u.n, 10) + u.name
		}
	}
	for _, u := range []struct {
		name string
		n    int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if r >= u.n && r%u.n == 0 {
			return strconv.FormatInt(r/u.n, 10) + u.name
		}
	}
	return strconv.FormatInt(r, 10) + "B"
}

// ParseMeshPeer splits a --mesh-with entry, "URL" or "URL#KEY", into the
// relay's URL and its pinned machine key (KEY is the "mkey:..." text the
// relay logs as machine_key at start). The key is zero when none is given.
func ParseMeshPeer(s string) (u string, k key.MachinePublic, err error) {
	u, frag, pinned := strings.Cut(s, "#")
	if !pinned {
		return u, k, nil
	}
	if k, err = key.ParseMachinePublic(frag); err != nil {
		return "", key.MachinePublic{}, fmt.Errorf("the part after # must be the relay's key (mkey:<64 hex>, the machine_key it logs at start): %w", err)
	}
	return u, k, nil
}

// Node is the settings of beam daemon and beam up.
type Node struct {
	// Coordinator is a coordinator URL, or several comma-separated.
	Coordinator                  string
	SOCKS5, HTTPProxy, DNSListen string
	DNSUpstreams                 []string
	ACMECA                       string
	LogLevel                     string
}

// Validate checks n. The proxy and DNS listeners must be on loopback:
// anywhere else they would open the mesh to the host's network.
func (n *Node) Validate() error {
	var c checker
	c.urlList("--coordinator", n.Coordinator)
	for _, l := range []struct{ flag, v string }{{"--socks5", n.SOCKS5}, {"--http-proxy", n.HTTPProxy}, {"--dns-listen", n.DNSListen}} {
		if l.v == "" {
			continue
		}
		ap, err := netip.ParseAddrPort(l.v)
		switch {
		case err != nil:
			c.add(l.flag, l.v, "want a loopback IP:PORT, e.g. 127.0.0.1:1080")
		case !ap.Addr().IsLoopback():
			c.add(l.flag, l.v, "only loopback addresses are allowed")
		}
	}
	for _, u := range n.DNSUpstreams {
		if _, err := netip.ParseAddrPort(u); err == nil {
			continue
		}
		if _, err := netip.ParseAddr(u); err != nil {
			c.add("--dns-upstream", u, "want IP or IP:PORT")
		}
	}
	c.url("--acme-ca", n.ACMECA, false)
	c.logLevel(n.LogLevel)
	return c.err()
}

// checker collects problems.
type checker struct{ errs []error }

// add records a problem with the value v of flag, naming its config
// file key too.
func (c *checker) add(flag, v, problem string) {
	c.errs = append(c.errs, fmt.Errorf("bad %s %q (config key %s): %s", flag, v, FlagKey(flag), problem))
}

// FlagKey returns the config file key of a flag: --tcp-ports is tcp_ports.
func FlagKey(flag string) string {
	return strings.ReplaceAll(strings.TrimLeft(flag, "-"), "-", "_")
}

func (c *checker) nonNegative(flag string, d time.Duration) {
	if d < 0 {
		c.add(flag, d.String(), "must not be negative")
	}
}

func (c *checker) err() error { return errors.Join(c.errs...) }

// domain checks a DNS name (required: it may not be empty).
func (c *checker) domain(flag, v string, required bool) {
	if v == "" && !required {
		return
	}
	if err := CheckDomain(v); err != nil {
		c.add(flag, v, err.Error())
	}
}

// listen checks a listen address, host:port ("" disables it unless
// required).
func (c *checker) listen(flag, v string, required bool) {
	if v == "" && !required {
		return
	}
	if err := checkAddr(v, true); err != nil {
		c.add(flag, v, err.Error())
	}
}

// STUNAltOff is the STUNAltAddr that turns the second STUN responder off.
const STUNAltOff = "off"

// STUNAltUsage describes --stun-alt-addr. A node compares the mappings
// two STUN ports saw: if they differ, its NAT maps each destination to
// another port (a hard NAT) and it turns on birthday probing, which a
// single relay could not tell without the second port.
const STUNAltUsage = `second STUN responder, so nodes can tell a hard NAT with one relay: "" is --stun-addr's port + 1 (an ephemeral port if that is 0; skipped with a warning if taken), "off" none`

// stunAlt checks --stun-alt-addr: "", "off" or a listen address.
func (c *checker) stunAlt(v string) {
	if v == "" || v == STUNAltOff {
		return
	}
	c.listen("--stun-alt-addr", v, false)
}

// hostPort checks a host:port to reach (port 1-65535).
func (c *checker) hostPort(flag, v string) {
	if err := checkAddr(v, false); err != nil {
		c.add(flag, v, err.Error())
	}
}

func (c *checker) url(flag, v string, required bool) {
	if v == "" && !required {
		return
	}
	u, err := url.Parse(v)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		c.add(flag, v, "want http(s)://host[:port]")
		return
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.ParseUint(p, 10, 16); err != nil || n == 0 {
			c.add(flag, v, "the port must be 1-65535")
		}
	}
}

// urlList checks a comma-separated list of http(s) URLs, each as url
// does; empty is allowed.
func (c *checker) urlList(flag, v string) {
	for u := range strings.SplitSeq(v, ",") {
		c.url(flag, strings.TrimSpace(u), false)
	}
}

// db checks --db: empty, or a PostgreSQL URL. A problem is reported
// with the URL's password masked.
func (c *checker) db(v string) {
	if v == "" {
		return
	}
	const want = "want postgres://USER:PASSWORD@HOST:PORT/DATABASE (empty: SQLite in the data directory)"
	u, err := url.Parse(v)
	if err != nil {
		c.add("--db", RedactDB(v), want)
		return
	}
	if u.Scheme != "postgres" && u.Scheme != "postgresql" {
		c.add("--db", RedactDB(v), want)
		return
	}
	if u.Host == "" && u.Query().Get("host") == "" {
		c.add("--db", RedactDB(v), "no server: "+want)
		return
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.ParseUint(p, 10, 16); err != nil || n == 0 {
			c.add("--db", RedactDB(v), "the port must be 1-65535")
		}
	}
}

// RedactDB returns the database URL v with its password (in the user
// part or a password parameter) masked, for logs and error messages.
func RedactDB(v string) string {
	u, err := url.Parse(v)
	if err == nil {
		q, masked := u.Query(), false
		for _, k := range []string{"password", "sslpassword"} {
			if q.Has(k) {
				q.Set(k, "xxxxx")
				masked = true
			}
		}
		if masked {
			u.RawQuery = q.Encode()
		}
		return u.Redacted()
	}
	// Unparsable: mask whatever sits between "user:" and the last "@".
	scheme, rest, ok := strings.Cut(v, "://")
	i := strings.LastIndex(rest, "@")
	if !ok || i < 0 {
		return scheme + "://(unparsable)"
	}
	if user, _, ok := strings.Cut(rest[:i], ":"); ok {
		return scheme + "://" + user + ":xxxxx" + rest[i:]
	}
	return v
}

func (c *checker) ip(flag, v string) {
	if _, err := netip.ParseAddr(v); err != nil {
		c.add(flag, v, "want an IP address")
	}
}

func (c *checker) portRange(flag, v string) {
	if v == "" {
		return
	}
	if _, _, err := ParsePortRange(v); err != nil {
		c.add(flag, v, err.Error())
	}
}

func (c *checker) logLevel(v string) {
	switch strings.ToLower(v) {
	case "", "debug", "info", "warn", "error":
	default:
		c.add("--log-level", v, "want debug, info, warn or error")
	}
}

// CheckDomain reports what is wrong with a DNS name: it must be labels of
// lower-case letters, digits and hyphens (not first or last), each 1-63
// bytes, at most 253 bytes in all, without a trailing dot.
func CheckDomain(s string) error {
	switch {
	case s == "":
		return errors.New("empty domain")
	case len(s) > 253:
		return errors.New("longer than 253 bytes")
	case strings.HasSuffix(s, "."):
		return errors.New("drop the trailing dot")
	}
	for label := range strings.SplitSeq(s, ".") {
		if label == "" {
			return errors.New("empty label (two dots in a row, or a leading dot)")
		}
		if len(label) > 63 {
			return fmt.Errorf("label %q is longer than 63 bytes", label)
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("label %q starts or ends with a hyphen", label)
		}
		for i := 0; i < len(label); i++ {
			switch b := label[i]; {
			case b >= 'a' && b <= 'z', b >= '0' && b <= '9', b == '-':
			case b >= 'A' && b <= 'Z':
				return errors.New("use lower case")
			default:
				return fmt.Errorf("label %q has %q: only letters, digits and hyphens", label, b)
			}
		}
	}
	return nil
}

// ParsePortRange parses "FIRST-LAST" (or one port) with 1 <= FIRST <=
// LAST <= 65535.
func ParsePortRange(s string) (first, last uint16, err error) {
	a, b, ok := strings.Cut(s, "-")
	if !ok {
		b = a
	}
	f, err1 := strconv.ParseUint(strings.TrimSpace(a), 10, 16)
	l, err2 := strconv.ParseUint(strings.TrimSpace(b), 10, 16)
	if err1 != nil || err2 != nil || f == 0 || l < f {
		return 0, 0, errors.New("want FIRST-LAST, ports 1-65535, FIRST no more than LAST")
	}
	return uint16(f), uint16(l), nil
}

// checkAddr checks host:port: the host empty (only to listen), an IP or a
// DNS name; the port a number, 0 only to listen.
func checkAddr(s string, listen bool) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return errors.New("want HOST:PORT, e.g. 127.0.0.1:8080 or :8080")
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil || n == 0 && !listen {
		if listen {
			return errors.New("the port must be a number 0-65535")
		}
		return errors.New("the port must be a number 1-65535")
	}
	if host == "" {
		if !listen {
			return errors.New("a host is needed")
		}
		return nil
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return nil
	}
	if err := CheckDomain(strings.ToLower(host)); err != nil {
		return fmt.Errorf("host %q: %v", host, err)
	}
	return nil
}

// Tunnels is a beam expose config file: every route in it is published at
// once (beam expose --config FILE).
type Tunnels struct {
	// Tunnels maps a label to a route. The label is the route's name
	// under the edge domain unless the route gives one.
	Tunnels map[string]Tunnel `json:"tunnels"`
}

// Tunnel is one route of a tunnels file, with beam expose's options: the
// key basic_auth is --basic-auth, and so on.
type Tunnel struct {
	// Port is the local port to publish (127.0.0.1:Port); Target is what
	// beam expose takes as its argument instead ("localhost:3000",
	// "https://localhost:8443", "192.0.2.10:80"). Give one of them.
	Port   uint16 `json:"port"`
	Target string `json:"target"`
	// Name is the name under the edge domain; the tunnel's label if empty
	// (http and tls routes).
	Name           string   `json:"name"`
	Domain         string   `json:"domain"`
	TCP            bool     `json:"tcp"`
	UDP            bool     `json:"udp"`
	TLSPassthrough bool     `json:"tls_passthrough"`
	BasicAuth      []string `json:"basic_auth"`
	AllowIP        []string `json:"allow_ip"`
	DenyIP         []string `json:"deny_ip"`
	RateLimit      string   `json:"rate_limit"`
	HeaderAdd      []string `json:"header_add"`
	HeaderRemove   []string `json:"header_remove"`
	CORS           []string `json:"cors"`
	ProxyProtocol  string   `json:"proxy_protocol"`
	Pool           bool     `json:"pool"`
	// Inspect serves the request inspector for the route; nil means yes.
	Inspect *bool `json:"inspect"`
}

// Labels returns t's labels, sorted.
func (t *Tunnels) Labels() []string {
	return slices.Sorted(maps.Keys(t.Tunnels))
}

// Validate checks what can be checked without the daemon: each tunnel has
// a valid label, one target and at most one of tcp, udp and
// tls_passthrough. beam expose checks the route options as for its flags.
func (t *Tunnels) Validate() error {
	var errs []error
	if len(t.Tunnels) == 0 {
		errs = append(errs, errors.New("tunnels: none given (want \"tunnels\": {\"web\": {\"port\": 3000}})"))
	}
	for _, label := range t.Labels() {
		tu := t.Tunnels[label]
		bad := func(format string, args ...any) {
			errs = append(errs, fmt.Errorf("tunnel %q: %s", label, fmt.Sprintf(format, args...)))
		}
		if err := CheckDomain(label); err != nil || strings.Contains(label, ".") {
			bad("the label must be one DNS label (letters, digits, hyphens)")
		}
		if (tu.Port == 0) == (tu.Target == "") {
			bad("give port or target (one of them)")
		}
		n := 0
		for _, b := range []bool{tu.TCP, tu.UDP, tu.TLSPassthrough} {
			if b {
				n++
			}
		}
		if n > 1 {
			bad("choose one of tcp, udp and tls_passthrough")
		}
		if tu.Name != "" {
			if err := CheckDomain(tu.Name); err != nil {
				bad("bad name %q: %v", tu.Name, err)
			}
		}
	}
	return errors.Join(errs...)
}
