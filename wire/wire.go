// Package wire defines the messages between a node and the coordinator:
// registration, the streamed map (netmap), and the pieces it carries
// (peers, relay map, DNS config, packet filter, edge routes); and the
// rest of the coordinator's contract, used by both sides: its endpoint
// paths (PathRegister, PathMap, ..., the admin API's under
// PathAdminPrefix), the envelope, frame limits, error codes and admin
// types.
//
// Messages are JSON, but for the peers and online states of map frames
// sent to nodes of version 16 or later (BinaryMapFrame, in peerbin.go).
// On the wire each message is sealed with NaCl box between the node key
// and the coordinator's machine key (see coordinator and coordclient), so
// a plain http:// coordinator URL still carries only encrypted,
// authenticated control traffic.
package wire

import (
	"net/netip"
	"time"

	"beam.dev/beam/types/key"
)

// CapabilityVersion is the version of the node⇄coordinator protocol the
// code speaks. Bump it on every protocol change and add a line below.
//
//   - 1 (2026-11-25): first version: register, map stream with deltas,
//     endpoints, DERP map, DNS config, packet filter.
//   - 2 (2026-11-25): public edge: ExposeRequest/ExposeResponse at
//     /machine/expose, EdgeRoutes in MapResponse, Node.Edge.
//   - 3 (2026-12-06): a rejoin (RegisterRequest without AuthKey of a known
//     key) whose Hostname differs from the registered one renames the node
//     to that hostname's label when it is free; NameChanged answers a
//     taken one (the node keeps its name).
//   - 4 (2026-12-06): public names have owners: ExposeRequest.Pool and
//     EdgeRoute.Pool; a name another node serves is refused unless both
//     ask for a pool; a node's second route of one protocol under its
//     default name gets a name of its own (NAME-2, ...).
//   - 5 (2026-12-06): ExposeRequest.Upstream and EdgeRoute.Upstream: an
//     http route may forward to another address the device reaches, or
//     to its app over TLS.
//   - 6 (2026-12-06): EdgeReportPreface and EdgeRefusal: edges report the
//     requests they refused to the device behind the route.
//   - 7 (2026-12-06): route options are typed (RouteOptions) instead of
//     a string map, validated by the CLI and the coordinator.
//   - 8 (2026-12-06): tcp routes may have an Upstream (host:port) too.
//   - 9 (2026-12-06): ExposeResponse.ACMEChallengeCNAME: a tls route on a
//     custom domain gets its DNS-01 challenge through a CNAME into the
//     edge domain's zone.
//   - 10 (2026-12-06): GET PathServerSetup: a public server's domain,
//     addresses, ports and certificate status, for beam netcheck --server.
//   - 11 (2026-12-06): RouteOptions.OIDC: an http route behind a sign-in at
//     the edge. Edges of older versions do not get such routes (they would
//     serve them open). RegisterRequest.Reauth: a known node key
//     authenticates again (a sign-in renews its key expiry).
//   - 12 (2026-12-06): MapRequest.PeerRelay and Node.PeerRelay: a node
//     runs a UDP peer relay server, which its peers may use between each
//     other when they have no direct path (disco Allocate).
//   - 13 (2026-12-06): MapResponse.More: a map message too large for one
//     frame (a full map of about 10,000 peers) comes as several, every
//     one but the last with More set; the node joins them before applying
//     them. Older nodes get one frame, up to MaxFrameSize.
//   - 14 (2026-12-06): packet filters over address sets: FilterRule.SrcSets
//     names sets that MapResponse.FilterSets sends whole with the filter
//     and FilterSetChanges updates, so one node joining costs each node
//     whose filter admits it a constant-size change instead of its whole
//     filter. Nodes of older versions get every set expanded into SrcIPs.
//   - 15 (2026-12-06): map resume: Node.Rev is a revision of what peers
//     see of a node; MapRequest.Peers is a digest (PeersDigest) of the
//     peers the node holds, and when it matches the peers the
//     coordinator would send, the first MapResponse of the stream has
//     PeersKept (the node keeps its peers) and PeersOffline instead of
//     Peers, so a node reconnecting after a coordinator restart does not
//     get every peer again.
//   - 16 (2026-12-06): binary map frames: the peers of a map frame
//     (MapResponse.Peers, PeersChanged) come as compact binary records
//     after a JSON head (BinaryMapFrame, AppendPeerRecord), which the
//     coordinator encodes once per peer change. Older nodes get JSON.
//     A record carries Node.Rev (version 15) like the JSON.
//   - 17 (2026-12-07): replies bound to their request: every sealed
//     request carries a fresh random Nonce (ReplyNonceLen bytes), and the
//     coordinator seals its reply, or each frame of the map stream it
//     opens, with the shared key bound to that nonce (key.Shared.Bind);
//     stream frames carry their position in the box's nonce
//     (key.Shared.SealSeqAppend), which the node checks. A reply or
//     stream recorded for one request, or a frame replayed, dropped or
//     moved within a stream, does not open. Responses carry
//     HeaderVersion; a node refuses an unbound reply from a coordinator
//     that says it is of this version, or that bound an earlier reply.
//     Nodes of older versions send no Nonce and get unbound replies.
//   - 18 (2026-12-07): an edge's EdgeRoutes may be cut across the frames
//     of a split message (MapResponse.More), each frame carrying some;
//     the node joins them in order (MapResponse.Merge appends). Edges of
//     older versions get at most what fits one frame, and the coordinator
//     logs the routes left out.
//   - 19 (2026-12-07): requests bound to the coordinator's start: every
//     coordinator draws a random boot epoch (BootEpochLen bytes) when it
//     starts and gives it out with its key (GET PathKey, header
//     HeaderBootEpoch); every sealed request carries it (Epoch), and a
//     request of version 19 or later with another epoch is refused with
//     CodeStaleEpoch, on which the node fetches the key and epoch again
//     and sends the request anew. A request recorded before a restart
//     (whose replay cache lived in memory), or sent to another replica,
//     cannot be replayed there. Nodes of older versions send no Epoch
//     and are checked as before.
//   - 20 (2026-12-07): sealed errors: an error answer to a request with a
//     Nonce carries its body sealed with the bound key too
//     (ErrorBody.Sealed), and a map stream's end its trailer sealed as
//     the frame after the last (TrailerErrorSealed). A node takes
//     node_removed, node_expired and node_not_registered as final only
//     when they open, from a coordinator it knows binds its replies; an
//     unsealed one (written by someone on the path) it retries.
//     Coordinators of versions 17 to 19 do not seal them: a node removed
//     there keeps retrying instead of stopping.
//   - 21 (2026-12-07): blocked map frames: the peers of a full map that
//     many nodes share come in blocks sealed once under a random key
//     each, which the node's own sealed frame names with their SHA-256
//     (BlockedMapFrame). Nodes of older versions, and streams not bound
//     to their request, get every frame sealed to them as before.
//   - 22 (2026-12-07): compact binary map frames: online states come by
//     node ID (MapResponse.PeersOnlineByID on the wire, AppendOnlineID;
//     1 to 4 bytes instead of 33), and peer records carry of the
//     overlay addresses the coordinator assigns the IPv4 one alone, no
//     Hostname equal to Name, and no DNSName that is Name and the
//     frame's MapResponse.PeerDNSSuffix (AppendPeerRecordCompact). The
//     node maps IDs back to the peers it holds. Older nodes get version
//     21's frames.
const CapabilityVersion = 22

// BootEpochVersion is the first CapabilityVersion whose sealed requests
// carry the coordinator's boot epoch, and are refused without the
// current one.
const BootEpochVersion = 19

// BootEpochLen is the length of a coordinator's boot epoch.
const BootEpochLen = 16

// HeaderBootEpoch is the header of a GET PathKey answer that carries the
// coordinator's boot epoch, in hex (since version 19). A coordinator
// draws it at random each time it starts; replicas on one database have
// one each.
const HeaderBootEpoch = "Beam-Boot-Epoch"

// BoundRepliesVersion is the first CapabilityVersion whose coordinators
// bind replies to their request's Nonce.
const BoundRepliesVersion = 17

// SealedErrorsVersion is the first CapabilityVersion whose coordinators
// seal their error answers and stream trailers (ErrorBody.Sealed,
// TrailerErrorSealed).
const SealedErrorsVersion = 20

// ReplyNonceLen is the length of a sealed request's Nonce.
const ReplyNonceLen = 32

// HeaderVersion is the response header with which a coordinator says
// the CapabilityVersion it speaks (since version 17).
const HeaderVersion = "Beam-Version"

// NodeID is the coordinator's stable identifier of a node.
type NodeID int64

// RegisterRequest asks the coordinator to admit the sending node key into a
// network. It is sealed with the node's private key, which proves the sender
// holds the key it registers.
type RegisterRequest struct {
	Version  int             `json:"version"`
	NodeKey  key.NodePublic  `json:"node_key"`
	DiscoKey key.DiscoPublic `json:"disco_key,omitzero"`
	// AuthKey is a pre-auth key. Empty means re-register an already known
	// node key (rejoin) or, where the coordinator allows it, an
	// interactive or dev-mode join.
	AuthKey string `json:"auth_key,omitempty"`
	// Hostname is the node's host name; its DNS label is the node's name
	// when the node is new. On a rejoin, a Hostname other than the one
	// last registered renames the node to its label if that name is free
	// (since version 3).
	Hostname string `json:"hostname"`
	OS       string `json:"os,omitempty"`
	// Logout asks the coordinator to deregister NodeKey.
	Logout bool `json:"logout,omitempty"`
	// Followup is the code of a pending interactive registration to wait on.
	Followup string `json:"followup,omitempty"`
	// Reauth asks to authenticate an already registered node key again
	// (beam up --force-reauth): with AuthKey, the key renews it; without,
	// it goes through interactive approval (a sign-in) as a new node
	// would. A node keeps its user: approval as another user is refused.
	// Since version 11.
	Reauth bool `json:"reauth,omitempty"`
	// Nonce is ReplyNonceLen fresh random bytes to which the
	// coordinator binds its reply (since version 17); empty asks for an
	// unbound reply, as older nodes get.
	Nonce []byte `json:"nonce,omitempty"`
	// Epoch is the boot epoch of the coordinator the request is sealed
	// for, as its GET PathKey said (HeaderBootEpoch; since version 19).
	// A coordinator refuses a request of version 19 or later whose Epoch
	// is not its own (CodeStaleEpoch).
	Epoch []byte `json:"epoch,omitempty"`
	// Timestamp is the node's clock when sealing; the coordinator refuses
	// requests too far from its own clock (replay window).
	Timestamp time.Time `json:"timestamp"`
}

// RegisterResponse answers a RegisterRequest.
type RegisterResponse struct {
	// Node is the registered node as peers will see it. Nil on error or
	// while waiting for interactive approval.
	Node *Node `json:"node,omitempty"`
	// NameChanged is set when the requested hostname was taken and the
	// node got another name (Node.Name).
	NameChanged bool `json:"name_changed,omitempty"`
	// AuthURL, when set, is where a human approves this node; the node
	// retries with Followup set to AuthCode.
	AuthURL  string `json:"auth_url,omitempty"`
	AuthCode string `json:"auth_code,omitempty"`
	// Error is a human-readable reason the registration was refused.
	Error string `json:"error,omitempty"`
}

// MapRequest opens (Stream) or updates the node's map session. It carries
// what the node knows about itself that peers need.
type MapRequest struct {
	Version   int              `json:"version"`
	NodeKey   key.NodePublic   `json:"node_key"`
	DiscoKey  key.DiscoPublic  `json:"disco_key,omitzero"`
	Endpoints []netip.AddrPort `json:"endpoints,omitempty"`
	// HomeDERP is the node's preferred relay region, 0 for none.
	HomeDERP int    `json:"home_derp,omitempty"`
	Hostname string `json:"hostname,omitempty"`
	// PeerRelay is the UDP port of the node's peer relay server; 0 for
	// none. Since version 14.
	PeerRelay uint16 `json:"peer_relay,omitempty"`
	// Stream asks for a long-lived stream of MapResponses. Without it the
	// request only updates the fields above and returns at once.
	Stream bool `json:"stream,omitempty"`
	// Peers is the digest of the peers the node holds from its last
	// stream, with which the coordinator may resume it (MapResponse.PeersKept);
	// nil asks for a full map. Since version 15.
	Peers *PeersDigest `json:"peers,omitempty"`
	// Nonce is ReplyNonceLen fresh random bytes to which the
	// coordinator binds its reply (since version 17); empty asks for an
	// unbound reply, as older nodes get.
	Nonce []byte `json:"nonce,omitempty"`
	// Epoch is the coordinator's boot epoch (see RegisterRequest.Epoch).
	Epoch     []byte    `json:"epoch,omitempty"`
	Timestamp time.Time `json:"timestamp"`
}

// MapResponse is one message of the map stream. The first one of a stream
// is full (Self and Peers set); later ones are deltas (PeersChanged,
// PeersRemoved, PeersOnline) or keepalives. Nil fields mean "unchanged".
//
// A message larger than a frame is sent, to nodes of version 13 or later,
// as several frames that each carry part of it, all but the last with
// More set: the first holds every field but part of Peers (or
// PeersChanged), the following ones only further peers. The node joins
// them with Merge and applies the result as one message.
type MapResponse struct {
	KeepAlive bool `json:"keep_alive,omitempty"`

	// More says the next frame continues this message (since version 13).
	More bool `json:"more,omitempty"`

	// Self is the receiving node as the coordinator sees it.
	Self *Node `json:"self,omitempty"`

	// Peers, when non-nil, is the complete peer list, replacing any earlier one.
	Peers []*Node `json:"peers,omitempty"`
	// PeersChanged are peers that are new or whose fields changed (full records).
	PeersChanged []*Node `json:"peers_changed,omitempty"`
	// PeersRemoved are peers to drop.
	PeersRemoved []key.NodePublic `json:"peers_removed,omitempty"`
	// PeersOnline updates only the online state of peers.
	PeersOnline map[key.NodePublic]bool `json:"peers_online,omitempty"`
	// PeersOnlineByID updates the online state of peers named by their
	// ID (Node.ID), as binary map frames carry them to nodes of version
	// 22 or later (AppendOnlineID); never JSON. coordclient resolves them
	// into PeersOnline with the peers the node holds, so the messages it
	// hands on never have them.
	PeersOnlineByID map[NodeID]bool `json:"-"`
	// PeerDNSSuffix, in the head of a binary map frame (since version
	// 22), completes the DNSName of the frame's peer records that leave
	// it out (AppendPeerRecordCompact): their Name, a dot, then this (a
	// network's domain and a dot). DecodeMapFrame clears it.
	PeerDNSSuffix string `json:"peer_dns_suffix,omitempty"`
	// PeersKept, in the first message of a stream, stands for Peers: the
	// node keeps the peers it holds, whose digest (MapRequest.Peers)
	// matched what the coordinator would send; they are online but for
	// PeersOffline. Every other field is as in a full map. Since
	// version 15.
	PeersKept bool `json:"peers_kept,omitempty"`
	// PeersOffline, with PeersKept, are the kept peers that are not online.
	PeersOffline []key.NodePublic `json:"peers_offline,omitempty"`

	DERPMap      *DERPMap     `json:"derp_map,omitempty"`
	DNS          *DNSConfig   `json:"dns,omitempty"`
	PacketFilter []FilterRule `json:"packet_filter,omitempty"`
	// PacketFilterSet distinguishes "no change" from "empty filter".
	PacketFilterSet bool `json:"packet_filter_set,omitempty"`
	// FilterSets holds, with a new PacketFilter, every address set its
	// rules name in SrcSets, replacing all earlier sets. Since version 14.
	FilterSets map[string][]netip.Prefix `json:"filter_sets,omitempty"`
	// FilterSetChanges update sets of the filter in force, in order,
	// after FilterSets: a node joining or leaving costs each node whose
	// filter admits it one small change. Since version 14.
	FilterSetChanges []FilterSetChange `json:"filter_set_changes,omitempty"`
	// EdgeRoutes, when non-nil, is the complete list of public routes this
	// node serves (for edges) or owns (for devices). A message split
	// across frames (More) may carry it in parts, one per frame, to be
	// joined in order (since version 18).
	EdgeRoutes []EdgeRoute `json:"edge_routes,omitzero"`

	// ControlTime is the coordinator's clock when sending; nodes use it to
	// correct for skew when judging expiry.
	ControlTime time.Time `json:"control_time,omitzero"`
}

// Node is a member of a network as peers and the node itself see it.
type Node struct {
	ID       NodeID          `json:"id"`
	Key      key.NodePublic  `json:"key"`
	DiscoKey key.DiscoPublic `json:"disco_key,omitzero"`
	// Name is the DNS label unique within the network ("beta", "beta-2").
	Name string `json:"name"`
	// DNSName is the fully qualified name with a trailing dot
	// ("beta.default.beam.internal.").
	DNSName  string `json:"dns_name"`
	Hostname string `json:"hostname,omitempty"`
	OS       string `json:"os,omitempty"`
	// Addresses are the node's overlay addresses as host prefixes (/32, /128).
	Addresses []netip.Prefix   `json:"addresses"`
	Endpoints []netip.AddrPort `json:"endpoints,omitempty"`
	HomeDERP  int              `json:"home_derp,omitempty"`
	// PeerRelay is the UDP port of the node's peer relay server, as it
	// reported it; 0 for none. Peers that have no direct path between
	// them may relay through it. Not stored: the node reports it in every
	// MapRequest. Since version 14.
	PeerRelay uint16 `json:"peer_relay,omitempty"`
	Online    bool   `json:"online"`
	// Rev is a revision of the node's fields as peers see them, but for
	// Online and LastSeen: the coordinator sets it on peers (since
	// version 15), the same for the same fields on every coordinator and
	// after restarts, and a node's digest of its peers (PeersDigest) is
	// made of them. Zero means none.
	Rev uint64 `json:"rev,omitempty"`
	// Unknown means the node streamed from a coordinator (one of several
	// on one database) that stopped answering its peers: whether it is
	// still up is not known until it streams from another coordinator, or
	// a timeout passes and it is offline. Online is false meanwhile, which
	// is what nodes that do not know this field show.
	Unknown  bool      `json:"unknown,omitempty"`
	LastSeen time.Time `json:"last_seen,omitzero"`
	// KeyExpiry is when the node key stops being valid; zero means never.
	KeyExpiry time.Time `json:"key_expiry,omitzero"`
	User      string    `json:"user,omitempty"`
	Tags      []string  `json:"tags,omitempty"`
	// UngrantedTags are the Tags the policy's tagOwners no longer list:
	// the node carries them but does not hold them for the policy. Set
	// only in the admin API's node list.
	UngrantedTags []string `json:"ungranted_tags,omitempty"`
	Ephemeral     bool     `json:"ephemeral,omitempty"`
	// Edge marks a public edge node: it receives every route in EdgeRoutes
	// and may reach only the exposed ports of the nodes that serve them.
	Edge bool `json:"edge,omitempty"`
}

// Expired reports whether n's key has expired at time now.
func (n *Node) Expired(now time.Time) bool {
	return !n.KeyExpiry.IsZero() && !now.Before(n.KeyExpiry)
}

// DERPMap describes the relays nodes may use, by region.
type DERPMap struct {
	Regions map[int]*DERPRegion `json:"regions"`
}

// DERPRegion is a set of relays in one place that mesh with each other.
type DERPRegion struct {
	RegionID   int         `json:"region_id"`
	RegionCode string      `json:"region_code"`
	Name       string      `json:"name,omitempty"`
	Nodes      []*DERPNode `json:"nodes"`
}

// DERPNode is one relay server.
type DERPNode struct {
	Name     string `json:"name"`
	RegionID int    `json:"region_id"`
	// URL is the relay's base URL (http:// or https://); the relay
	// protocol is at URL + "/derp".
	URL string `json:"url"`
	// STUNAddr is host:port of the STUN responder; empty for none.
	STUNAddr string `json:"stun_addr,omitempty"`
	// STUNAltPort is a second STUN responder's port on STUNAddr's host;
	// 0 for none. A node behind a NAT that maps each destination to
	// another port sees two mappings from the two ports, so one relay
	// suffices to tell a hard NAT.
	STUNAltPort uint16 `json:"stun_alt_port,omitempty"`
	// STUNOnly means the node does not relay.
	STUNOnly bool `json:"stun_only,omitempty"`
}

// DNSConfig is how nodes resolve names.
type DNSConfig struct {
	// Domain is the network's domain, without trailing dot ("default.beam.internal").
	Domain string `json:"domain"`
	// SearchDomains are appended to short names, in order.
	SearchDomains []string `json:"search_domains,omitempty"`
	// Nameservers are upstream resolvers; empty means the host's.
	Nameservers []netip.AddrPort `json:"nameservers,omitempty"`
	// Routes sends queries for a suffix ("corp.example") to resolvers
	// reachable over the mesh (split DNS).
	Routes map[string][]netip.AddrPort `json:"routes,omitempty"`
	// ExtraRecords are static records the coordinator adds.
	ExtraRecords []DNSRecord `json:"extra_records,omitempty"`
}

// DNSRecord is a static DNS record.
type DNSRecord struct {
	Name  string `json:"name"`           // FQDN without trailing dot
	Type  string `json:"type,omitempty"` // "A", "AAAA" or "TXT"; empty means A or AAAA by Value
	Value string `json:"value"`
}

// FilterRule allows packets from any of SrcIPs, or from any address of
// the sets named in SrcSets, to any of DstPorts. A node accepts an inbound
// flow if some rule matches; everything else is dropped.
type FilterRule struct {
	SrcIPs []netip.Prefix `json:"src_ips"`
	// SrcSets names address sets (MapResponse.FilterSets) whose addresses
	// are sources too; a set the node does not have matches nothing.
	// Since version 14.
	SrcSets  []string       `json:"src_sets,omitempty"`
	DstPorts []NetPortRange `json:"dst_ports"`
	// Protos lists IP protocol numbers (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6);
	// empty means TCP, UDP and ICMP.
	Protos []int `json:"protos,omitempty"`
}

// FilterSetChange changes one address set of the filter in force: with
// Replace, the set becomes Add; otherwise Remove's addresses leave it and
// then Add's join it.
type FilterSetChange struct {
	Name    string         `json:"name"`
	Replace bool           `json:"replace,omitempty"`
	Add     []netip.Prefix `json:"add,omitempty"`
	Remove  []netip.Prefix `json:"remove,omitempty"`
}

// NetPortRange is a destination prefix and port range.
type NetPortRange struct {
	IP    netip.Prefix `json:"ip"`
	First uint16       `json:"first"`
	Last  uint16       `json:"last"`
}

// ExposeRequest asks the coordinator to publish (or, with Remove, to stop
// publishing) one of the sending node's ports on the public edge. It is
// sealed like a MapRequest and sent to /machine/expose.
type ExposeRequest struct {
	Version int            `json:"version"`
	NodeKey key.NodePublic `json:"node_key"`
	// Nonce is ReplyNonceLen fresh random bytes to which the
	// coordinator binds its reply (since version 17); empty asks for an
	// unbound reply, as older nodes get.
	Nonce []byte `json:"nonce,omitempty"`
	// Epoch is the coordinator's boot epoch (see RegisterRequest.Epoch).
	Epoch     []byte    `json:"epoch,omitempty"`
	Timestamp time.Time `json:"timestamp"`
	// Name is the label under the edge domain ("app" for app.example.test);
	// empty means the node's own name.
	Name string `json:"name,omitempty"`
	// CustomDomain is a full domain the network proved it controls
	// (TXT record or CNAME to the edge); it replaces Name.
	CustomDomain string `json:"custom_domain,omitempty"`
	// Proto is "http", "tls" (SNI passthrough), "tcp" or "udp".
	Proto string `json:"proto"`
	// Port is the node's port the edge connects to (on its overlay address).
	Port uint16 `json:"port"`
	// Options is the route's edge policy; the coordinator refuses options
	// that do not Validate for Proto.
	Options RouteOptions `json:"options,omitzero"`
	// Pool lets other nodes of the same user or tag serve the name too,
	// and asks to join their pool when they already serve it with Pool
	// set. Without it a name belongs to the one node that claimed it.
	Pool bool `json:"pool,omitempty"`
	// Upstream is where the device forwards an http or tcp route:
	// "host:port" or, for http, "https://host:port" (TLS to the app),
	// with Port as the port. Empty means the device's own
	// 127.0.0.1:Port. The edge never sees it.
	Upstream string `json:"upstream,omitempty"`
	// Remove withdraws the route named by Name/CustomDomain and Proto.
	Remove bool `json:"remove,omitempty"`
}

// ExposeResponse answers an ExposeRequest.
type ExposeResponse struct {
	// Route is the route as published; nil after Remove or on error.
	Route *EdgeRoute `json:"route,omitempty"`
	// URL is what users open: "https://app.example.test" or
	// "tcp://edge.example.test:20001".
	URL string `json:"url,omitempty"`
	// ACMEChallengeCNAME is set for a tls route on a custom domain: the
	// name in the edge domain's zone where the route's node publishes its
	// ACME DNS-01 challenge. The domain's owner delegates to it once with
	// the CNAME "_acme-challenge.HOST" -> ACMEChallengeCNAME.
	ACMEChallengeCNAME string `json:"acme_challenge_cname,omitempty"`
	// Error is a human-readable reason the request was refused.
	Error string `json:"error,omitempty"`
}

// EdgeRoute is a public route from an edge to a node's overlay address.
// Several routes with the same Host and Proto (from nodes of one user or
// tag that all asked for it, see Pool) form a pool.
type EdgeRoute struct {
	// Host is the public name ("alpha.example.test"), lower case, no trailing dot.
	Host string `json:"host"`
	// Proto is "http", "tls" (SNI passthrough), "tcp" or "udp".
	Proto string `json:"proto"`
	// PublicPort is the edge port for "tcp" and "udp" routes.
	PublicPort uint16 `json:"public_port,omitempty"`
	// Node is the node that serves the route, Target its overlay address and port.
	Node   key.NodePublic `json:"node"`
	Target netip.AddrPort `json:"target"`
	// CustomDomain is set when Host is a verified custom domain rather
	// than a name under the edge domain.
	CustomDomain bool `json:"custom_domain,omitempty"`
	// Pool is set when the node published the route with
	// ExposeRequest.Pool: it shares the name with others.
	Pool bool `json:"pool,omitempty"`
	// Upstream is ExposeRequest.Upstream; it is sent only to the node
	// that serves the route.
	Upstream string `json:"upstream,omitempty"`
	// Options is the route's policy, enforced by the edge.
	Options RouteOptions `json:"options,omitzero"`
}

// EdgeReportPreface opens a connection on which an edge tells the device
// behind an http route about requests the edge refused itself (basic
// auth, IP lists, rate limits), so the device's owner sees them in
// `beam expose`. The edge dials the route's target like any request;
// the bytes that follow are JSON lines of EdgeRefusal. No request an
// edge proxies can start this way (a proxied request always carries a
// Host header), and devices accept it only from edge nodes.
const EdgeReportPreface = "BEAM-EDGE-REPORT * HTTP/1.1\r\n\r\n"

// MaxEdgeRefusalLine bounds one JSON line after EdgeReportPreface.
const MaxEdgeRefusalLine = 4096

// EdgeRefusal is a request an edge answered itself without reaching the
// device.
type EdgeRefusal struct {
	Time   time.Time `json:"time"`
	Host   string    `json:"host"`
	Method string    `json:"method"`
	Path   string    `json:"path"`
	// Status is what the client got: 401, 403 or 429.
	Status int `json:"status"`
	// Client is the client's IP address.
	Client string `json:"client,omitempty"`
}

// ReplyNonce returns r.Nonce.
func (r *RegisterRequest) ReplyNonce() []byte { return r.Nonce }

// ReplyNonce returns r.Nonce.
func (r *MapRequest) ReplyNonce() []byte { return r.Nonce }

// ReplyNonce returns r.Nonce.
func (r *ExposeRequest) ReplyNonce() []byte { return r.Nonce }

// SealedEpoch returns r.Version and r.Epoch, which the coordinator
// checks against its boot epoch.
func (r *RegisterRequest) SealedEpoch() (int, []byte) { return r.Version, r.Epoch }

// SealedEpoch returns r.Version and r.Epoch.
func (r *MapRequest) SealedEpoch() (int, []byte) { return r.Version, r.Epoch }

// SealedEpoch returns r.Version and r.Epoch.
func (r *ExposeRequest) SealedEpoch() (int, []byte) { return r.Version, r.Epoch }
