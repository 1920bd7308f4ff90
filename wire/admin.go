package wire

import (
	"fmt"
	"net/netip"
	"time"

	"beam.dev/beam/types/key"
)

// JSON types of the coordinator's admin API (bearer token, /api/v1/...),
// used by the coordinator to answer and by coordclient to ask.

// User is a person who owns nodes. Auth keys created for a user give
// their nodes that user; the policy refers to users by Name.
type User struct {
	ID        int64     `json:"id"`
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"created_at"`
}

// CreateUserRequest is the JSON body of POST /api/v1/users.
type CreateUserRequest struct {
	Name string `json:"name"`
}

// AuditEntry is one record of the audit log.
type AuditEntry struct {
	ID   int64     `json:"id"`
	Time time.Time `json:"time"`
	// Actor is who acted: "admin" (the admin API), "console:NAME" (the
	// web console), "node:NAME" or "coordinator".
	Actor string `json:"actor"`
	// Action is what happened, such as "node.register".
	Action string `json:"action"`
	// Target is what it happened to: a node or user name, a key prefix.
	Target string `json:"target,omitempty"`
	// Detail is free text; it never holds a secret.
	Detail string `json:"detail,omitempty"`
}

// PendingRegistration is a new node waiting for a person to approve it.
type PendingRegistration struct {
	Code     string         `json:"code"`
	NodeKey  key.NodePublic `json:"node_key"`
	Hostname string         `json:"hostname"`
	OS       string         `json:"os,omitempty"`
	Created  time.Time      `json:"created"`
	Expires  time.Time      `json:"expires"`
}

// ApproveRequest is the JSON body of POST
// /api/v1/registrations/{code}/approve: admit the pending node as a node
// of User, or carrying Tags (which the policy's tagOwners must list), or
// neither.
type ApproveRequest struct {
	User string   `json:"user,omitempty"`
	Tags []string `json:"tags,omitempty"`
}

// PolicyProblem is one problem the coordinator found in a policy.
type PolicyProblem struct {
	// Line and Column locate it (1-based); zero when unknown.
	Line   int `json:"line,omitempty"`
	Column int `json:"column,omitempty"`
	// Message says what is wrong.
	Message string `json:"message"`
	// TestFailed is set when an entry of the policy's tests did not hold.
	TestFailed bool `json:"test_failed,omitempty"`
}

// PolicyErrorBody is the JSON body of a refused policy (status 400, code
// CodeBadPolicy). Error holds every problem, one per line.
type PolicyErrorBody struct {
	Error    string          `json:"error"`
	Code     ErrorCode       `json:"code"`
	Problems []PolicyProblem `json:"problems"`
}

// DomainStatus is a network's claim on a custom domain.
type DomainStatus struct {
	Domain  string `json:"domain"`
	Network string `json:"network"`
	// TXTName and Token say what to publish: a TXT record TXTName with
	// the value Token. A CNAME of Domain to a name of the network under
	// the edge domain proves control too.
	TXTName string `json:"txt_name"`
	Token   string `json:"token"`
	// ACMEChallenge and ACMEChallengeCNAME are the CNAME record that
	// delegates the domain's ACME DNS-01 challenge to Beam's zone:
	// "_acme-challenge.DOMAIN" CNAME "DOMAIN._acme-challenge.EDGE". With it
	// a device exposing the domain with --tls-passthrough gets its own
	// certificate. Empty if the name would be too long.
	ACMEChallenge      string `json:"acme_challenge,omitempty"`
	ACMEChallengeCNAME string `json:"acme_challenge_cname,omitempty"`
	// Verified reports whether control was proved, and VerifiedAt when.
	Verified   bool      `json:"verified"`
	VerifiedAt time.Time `json:"verified_at,omitzero"`
	// Problem says why the last check failed.
	Problem string `json:"problem,omitempty"`
}

// CreateAuthKeyRequest is the JSON body of POST /api/v1/authkeys.
type CreateAuthKeyRequest struct {
	Network   string   `json:"network,omitempty"`
	Reusable  bool     `json:"reusable,omitempty"`
	Ephemeral bool     `json:"ephemeral,omitempty"`
	Expiry    string   `json:"expiry,omitempty"` // Go duration ("1h"); empty means never
	Tags      []string `json:"tags,omitempty"`
	User      string   `json:"user,omitempty"`
	Edge      bool     `json:"edge,omitempty"`
	// KeyExpiry is the node key expiry of nodes registered with the key:
	// a Go duration, "never" (or "0"), or empty for the default.
	KeyExpiry string `json:"key_expiry,omitempty"`
}

// CreateAuthKeyResponse answers POST /api/v1/authkeys. Key is shown only here.
type CreateAuthKeyResponse struct {
	Key  string      `json:"key"`
	Info AuthKeyInfo `json:"info"`
}

// AuthKeyInfo describes a stored auth key without its secret.
type AuthKeyInfo struct {
	Prefix    string    `json:"prefix"`
	Network   string    `json:"network"`
	Reusable  bool      `json:"reusable"`
	Ephemeral bool      `json:"ephemeral"`
	Expiry    time.Time `json:"expiry,omitzero"`
	Tags      []string  `json:"tags,omitempty"`
	User      string    `json:"user,omitempty"`
	UseCount  int       `json:"use_count"`
	CreatedAt time.Time `json:"created_at"`
	// Valid reports whether the key can still register a node.
	Valid bool `json:"valid"`
	// Edge reports whether the key registers public edge nodes.
	Edge bool `json:"edge,omitempty"`
	// KeyExpiry is the node key expiry of its nodes: a Go duration,
	// "never", or empty for the default.
	KeyExpiry string `json:"key_expiry,omitempty"`
}

// RouteInfo describes a published route for the admin API.
type RouteInfo struct {
	EdgeRoute
	// Network and NodeName name the serving node.
	Network  string `json:"network"`
	NodeName string `json:"node_name"`
	// Port is the node's port.
	Port      uint16    `json:"port"`
	URL       string    `json:"url"`
	CreatedAt time.Time `json:"created_at"`
}

// TXTBody is the JSON body of PUT /api/v1/dns/txt/{name}.
type TXTBody struct {
	Values []string `json:"values"`
}

// VerifyDomainRequest is the optional JSON body of
// POST /api/v1/domains/{domain}/verify.
type VerifyDomainRequest struct {
	// Network is the claiming network; empty means the coordinator's
	// default network ("default").
	Network string `json:"network,omitempty"`
}

// SetExpiryRequest is the JSON body of PUT /api/v1/nodes/{name}/expiry.
type SetExpiryRequest struct {
	// Expiry is a Go duration from now ("720h") or "never".
	Expiry string `json:"expiry"`
}

// RenameNodeRequest is the JSON body of POST /api/v1/nodes/{name}/rename.
type RenameNodeRequest struct {
	// Name is the new name: a DNS label (a-z, 0-9, '-'; upper case is
	// folded to lower case), unique within the node's network.
	Name string `json:"name"`
}

// DNSSettings is the operator's DNS configuration (MagicDNS), the body of
// GET and PUT /api/v1/dns/config. Every node gets it in its map, next to
// its network's domain. The JSON form is also the file of beam
// coordinator --dns-config:
//
//	{"nameservers": ["192.0.2.53:53"],
//	 "routes": {"corp.example": ["100.64.0.9:53"]},
//	 "extra_records": [{"name": "db.default.beam.internal", "type": "A", "value": "100.64.0.9"}]}
type DNSSettings struct {
	// Nameservers are the upstream resolvers; empty means the host's.
	Nameservers []netip.AddrPort `json:"nameservers,omitempty"`
	// Routes sends queries under a suffix to the given resolvers (split DNS).
	Routes map[string][]netip.AddrPort `json:"routes,omitempty"`
	// ExtraRecords are static records (A, AAAA or TXT).
	ExtraRecords []DNSRecord `json:"extra_records,omitempty"`
}

// String formats p as "line:column: message", or the message alone
// when the line is unknown.
func (p PolicyProblem) String() string {
	if p.Line == 0 {
		return p.Message
	}
	return fmt.Sprintf("%d:%d: %s", p.Line, p.Column, p.Message)
}
