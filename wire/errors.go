package wire

// ErrorCode is the machine-readable code of a coordinator error: the
// "code" of a JSON error answer (ErrorBody) or the CODE of a stream
// trailer ("CODE: MESSAGE", see TrailerError). The coordinator sends
// these codes and coordclient matches them; neither declares its own.
type ErrorCode string

// Error codes of the control and admin APIs, with the HTTP status they
// come with.
const (
	CodeBadRequest        ErrorCode = "bad_request"         // 400: malformed envelope, box or JSON
	CodeBadSeal           ErrorCode = "bad_seal"            // 401: the box does not open with the envelope's key and the coordinator's
	CodeKeyMismatch       ErrorCode = "key_mismatch"        // 401: sealed node key differs from the envelope's
	CodeReplay            ErrorCode = "replay"              // 401: sealed request seen before
	CodeClockSkew         ErrorCode = "clock_skew"          // 401: timestamp outside the coordinator's clock-skew window
	CodeStaleEpoch        ErrorCode = "stale_epoch"         // 401: sealed for another start of the coordinator, or another replica (version 19): fetch GET /key again and resend
	CodeAuthKeyInvalid    ErrorCode = "auth_key_invalid"    // 401: unknown, used or expired auth key
	CodeUnauthorized      ErrorCode = "unauthorized"        // 401: admin API without a valid token
	CodeNodeNotRegistered ErrorCode = "node_not_registered" // 403: the node key is unknown (or was removed)
	CodeNodeExpired       ErrorCode = "node_expired"        // 403: the node key expired
	CodeNodeRemoved       ErrorCode = "node_removed"        // stream trailer: the node was removed
	CodeForbidden         ErrorCode = "forbidden"           // 403: otherwise refused
	CodeNotFound          ErrorCode = "not_found"           // 404: admin API object missing
	CodeUnavailable       ErrorCode = "unavailable"         // 503: coordinator shutting down
	CodeInternal          ErrorCode = "internal"            // 500
	// CodeRateLimited: 429, too many sealed requests from the client's
	// address; the Retry-After header says in how many seconds to try
	// again, and coordclient waits that long.
	CodeRateLimited ErrorCode = "rate_limited"

	// CodeBadPolicy: 400, a policy that does not parse, names unknown
	// users, or fails its tests; the body is a PolicyErrorBody.
	CodeBadPolicy ErrorCode = "bad_policy"
	// CodeConflict: 409, an admin request that conflicts with existing
	// state (a taken user name, a user that still owns nodes).
	CodeConflict ErrorCode = "conflict"
	// CodeApprovalExpired: 403, the approval code of an interactive
	// registration's followup is unknown or expired; the node must
	// start over.
	CodeApprovalExpired ErrorCode = "approval_expired"
)

// Error codes of the public edge endpoints.
const (
	CodeNameInvalid         ErrorCode = "name_invalid"          // 400: bad name, proto, port or option
	CodeNameReserved        ErrorCode = "name_reserved"         // 400: a reserved name (www, edge, api, _*, the apex)
	CodeNameTaken           ErrorCode = "name_taken"            // 409: the name belongs to another node or network
	CodeDomainNotVerified   ErrorCode = "domain_not_verified"   // 403: custom domain without proof of control
	CodePortsExhausted      ErrorCode = "ports_exhausted"       // 503: no free edge port for a tcp/udp route
	CodeEdgeDisabled        ErrorCode = "edge_disabled"         // 501: the coordinator has no edge domain
	CodeNoZone              ErrorCode = "no_zone"               // 501: the coordinator has no public DNS zone
	CodeRouteNotFound       ErrorCode = "route_not_found"       // 404: Remove of a route that does not exist
	CodeEdgeProtoNotAllowed ErrorCode = "edge_proto_not_served" // 501: tcp/udp without an edge port range
	CodeQuotaExceeded       ErrorCode = "quota_exceeded"        // 403: the node or its user would pass a route quota (count, edge ports, option bytes)
)

// ErrorBody is the JSON body of every error answer:
//
//	{"error": "human text", "code": "<code>"}
type ErrorBody struct {
	Error string    `json:"error"`
	Code  ErrorCode `json:"code"`
	// Sealed is this body (Error and Code) sealed with the key shared
	// with the node bound to its request's Nonce, as the reply would
	// have been (since version 20), so that the node can tell the
	// coordinator's errors from ones someone on the path wrote.
	Sealed []byte `json:"sealed,omitempty"`
}

// userMessages say, for a user, what failed and what to do next.
var userMessages = map[ErrorCode]string{
	CodeBadSeal:           "the coordinator could not read this node's request (its key changed?): check the --coordinator URL, or run beam logout and join again",
	CodeClockSkew:         "the coordinator refused the request: this machine's clock is off; set the time and try again",
	CodeStaleEpoch:        "the coordinator restarted while this request was on its way: try again",
	CodeAuthKeyInvalid:    "the auth key is not valid (unknown, used up or expired): create a new one with beam admin authkey create and pass it with --authkey",
	CodeUnauthorized:      "the coordinator refused the admin token: check BEAM_ADMIN_TOKEN or --token-file",
	CodeNodeNotRegistered: "the coordinator does not know this node: join with beam up --authkey KEY",
	CodeNodeExpired:       "this node's key expired: join again with beam up --authkey KEY",
	CodeNodeRemoved:       "an admin removed this node from the network: join again with beam up --authkey KEY",
	CodeUnavailable:       "the coordinator is shutting down or busy: try again in a moment",
	CodeRateLimited:       "the coordinator is getting too many requests from this address: try again in a moment",
	CodeEdgeDisabled:      "the coordinator has no public edge: run beam server, or give beam coordinator --edge-domain",
}

// UserMessage returns the sentence to show a user for code: what failed
// and the next step; "" for a code without one (the coordinator's own
// message then says what failed).
func (c ErrorCode) UserMessage() string { return userMessages[c] }
