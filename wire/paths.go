package wire

import (
	"net/url"
	"strings"
)

// The coordinator's HTTP endpoints. Each constant is a path as the
// coordinator registers it on its net/http.ServeMux (with the method in
// front); {name} is a path wildcard, which a client fills with the helper
// function next to it, path-escaping the value. The coordinator registers
// exactly these paths, and a test holds both sides to that.
//
// Control protocol: requests are sealed Envelopes (see Envelope), answers
// sealed JSON, except PathKey and PathServerSetup.
const (
	// PathKey answers GET with the coordinator's machine public key, as
	// text (key.MachinePublic's text form), and its boot epoch in the
	// HeaderBootEpoch header (since version 19).
	PathKey = "/key"
	// PathKeyProof answers GET ?node=NODEKEY&challenge=HEX (16 to 64
	// random bytes, hex) with the proof that the coordinator holds the
	// machine key it gives out: key.Shared.Proof of the challenge, with
	// the key the machine key shares with NODEKEY, as hex text. A client
	// makes a fresh node key for it, and computes the same proof with that
	// key's private half. beam admin asks for it before it sends the
	// admin token to a coordinator it found on its host. Coordinators
	// before 2026-12-07 answer 404.
	PathKeyProof = "/key/proof"
	// PathRegister takes a sealed RegisterRequest (POST) and answers a
	// sealed RegisterResponse.
	PathRegister = "/machine/register"
	// PathMap takes a sealed MapRequest (POST) and answers with the map
	// stream: frames of sealed MapResponses (see MaxFrameSize,
	// StreamHeader).
	PathMap = "/machine/map"
	// PathExpose takes a sealed ExposeRequest (POST) and answers a sealed
	// ExposeResponse.
	PathExpose = "/machine/expose"
	// PathTXT takes a sealed TXTRequest (POST) and answers a sealed
	// TXTResponse.
	PathTXT = "/machine/txt"
	// PathServerSetup answers GET with a public server's ServerSetup as
	// JSON, to anyone: everything in it is what the world can see of the
	// server by DNS and by connecting to its ports, and the state of its
	// certificate's ACME orders. Coordinators without a public setup
	// answer 404.
	PathServerSetup = "/server/setup"
	// PathApprovalPage is the page a node waiting for interactive approval
	// sends its user to (GET; HTML). See ApprovalPagePath.
	PathApprovalPage = "/register/{code}"
	// PathDERPVerify answers a relay's GET ?key=NODEKEY with a
	// DERPVerifyResponse: whether the node key may use the relay (also
	// as the status: 200, or 403 when not). It takes the relay token (or
	// the admin token) as a bearer token.
	PathDERPVerify = "/api/v1/derp/verify"
)

// PathAdminPrefix is the prefix of the admin API: every path under it,
// except PathDERPVerify, needs the admin bearer token (or an admin's
// sign-in). Bodies are JSON; errors are ErrorBody.
const PathAdminPrefix = "/api/v1/"

// The admin API (under PathAdminPrefix). The comment of each names the
// methods it answers and its bodies.
const (
	// PathAuthKeys: POST CreateAuthKeyRequest -> CreateAuthKeyResponse;
	// GET -> []AuthKeyInfo.
	PathAuthKeys = "/api/v1/authkeys"
	// PathAuthKey: DELETE -> 204. See AuthKeyPath.
	PathAuthKey = "/api/v1/authkeys/{prefix}"
	// PathNodes: GET -> []Node.
	PathNodes = "/api/v1/nodes"
	// PathNode: DELETE -> 204. {name} is a node's name, key or ID. See
	// NodePath.
	PathNode = "/api/v1/nodes/{name}"
	// PathNodeExpire: POST -> 204. See NodeExpirePath.
	PathNodeExpire = "/api/v1/nodes/{name}/expire"
	// PathNodeRename: POST RenameNodeRequest -> Node. See NodeRenamePath.
	PathNodeRename = "/api/v1/nodes/{name}/rename"
	// PathNodeExpiry: PUT SetExpiryRequest -> Node. See NodeExpiryPath.
	PathNodeExpiry = "/api/v1/nodes/{name}/expiry"
	// PathUsers: POST CreateUserRequest -> User; GET -> []User.
	PathUsers = "/api/v1/users"
	// PathUser: DELETE -> 204 (?nodes=delete deletes the user's nodes
	// too). See UserPath.
	PathUser = "/api/v1/users/{name}"
	// PathPolicy: GET -> HuJSON text; PUT HuJSON -> 204, or 400
	// PolicyErrorBody.
	PathPolicy = "/api/v1/policy"
	// PathPolicyCheck: POST HuJSON -> 204, or 400 PolicyErrorBody.
	PathPolicyCheck = "/api/v1/policy/check"
	// PathRegistrations: GET -> []PendingRegistration.
	PathRegistrations = "/api/v1/registrations"
	// PathRegistrationApprove: POST ApproveRequest -> 204. See
	// RegistrationApprovePath.
	PathRegistrationApprove = "/api/v1/registrations/{code}/approve"
	// PathAudit: GET (?limit=N) -> []AuditEntry.
	PathAudit = "/api/v1/audit"
	// PathRoutes: GET -> []RouteInfo.
	PathRoutes = "/api/v1/routes"
	// PathRoute: DELETE -> 204 (every route of the host). See RoutePath.
	PathRoute = "/api/v1/routes/{host}"
	// PathDomains: GET -> []DomainStatus.
	PathDomains = "/api/v1/domains"
	// PathDomainVerify: POST VerifyDomainRequest (optional) ->
	// DomainStatus. See DomainVerifyPath.
	PathDomainVerify = "/api/v1/domains/{domain}/verify"
	// PathDomain: DELETE (?network=NAME) -> 204: removes the claims on
	// the domain (the network's, or every network's) and withdraws their
	// routes on it. See DomainPath.
	PathDomain = "/api/v1/domains/{domain}"
	// PathDNSTXT: PUT TXTBody -> 204; DELETE -> 204. See DNSTXTPath.
	PathDNSTXT = "/api/v1/dns/txt/{name}"
	// PathDNSConfig: GET -> DNSSettings; PUT DNSSettings (strict) ->
	// DNSSettings.
	PathDNSConfig = "/api/v1/dns/config"
)

// fillPath replaces the one {…} wildcard of pattern with value,
// path-escaped.
func fillPath(pattern, value string) string {
	i := strings.IndexByte(pattern, '{')
	j := strings.IndexByte(pattern, '}')
	return pattern[:i] + url.PathEscape(value) + pattern[j+1:]
}

// ApprovalPagePath returns PathApprovalPage for the approval code.
func ApprovalPagePath(code string) string { return fillPath(PathApprovalPage, code) }

// AuthKeyPath returns PathAuthKey for the auth key prefix.
func AuthKeyPath(prefix string) string { return fillPath(PathAuthKey, prefix) }

// NodePath returns PathNode for a node's name, key or ID.
func NodePath(name string) string { return fillPath(PathNode, name) }

// NodeExpirePath returns PathNodeExpire for a node's name, key or ID.
func NodeExpirePath(name string) string { return fillPath(PathNodeExpire, name) }

// NodeRenamePath returns PathNodeRename for a node's name, key or ID.
func NodeRenamePath(name string) string { return fillPath(PathNodeRename, name) }

// NodeExpiryPath returns PathNodeExpiry for a node's name, key or ID.
func NodeExpiryPath(name string) string { return fillPath(PathNodeExpiry, name) }

// UserPath returns PathUser for the user name.
func UserPath(name string) string { return fillPath(PathUser, name) }

// RegistrationApprovePath returns PathRegistrationApprove for the
// approval code.
func RegistrationApprovePath(code string) string { return fillPath(PathRegistrationApprove, code) }

// RoutePath returns PathRoute for the public host.
func RoutePath(host string) string { return fillPath(PathRoute, host) }

// DomainVerifyPath returns PathDomainVerify for the custom domain.
func DomainVerifyPath(domain string) string { return fillPath(PathDomainVerify, domain) }

// DomainPath returns PathDomain for the custom domain.
func DomainPath(domain string) string { return fillPath(PathDomain, domain) }

// DNSTXTPath returns PathDNSTXT for the TXT record's name.
func DNSTXTPath(name string) string { return fillPath(PathDNSTXT, name) }

// DERPVerifyResponse is the answer to GET PathDERPVerify. Relays
// (derp/derpserver, which does not import wire) decode it on their own:
// keep the field's JSON name.
type DERPVerifyResponse struct {
	// Allow says whether the node key may use the relay: it is
	// registered and its key has not expired.
	Allow bool `json:"allow"`
}
