package wire

// ErrorCode is the machine-readable code of a coordinator error: the
// "code" of a JSON error answer ({"error": MESSAGE, "code": CODE}) or the
// CODE of a stream trailer ("CODE: MESSAGE"). coordinator.ErrorCode is
// this type; the codes declared here are those a user can act on, each
// with what to tell them, and both sides use these definitions.
type ErrorCode string

// Codes with a user message.
const (
	CodeBadSeal           ErrorCode = "bad_seal"
	CodeClockSkew         ErrorCode = "clock_skew"
	CodeAuthKeyInvalid    ErrorCode = "auth_key_invalid"
	CodeUnauthorized      ErrorCode = "unauthorized"
	CodeNodeNotRegistered ErrorCode = "node_not_registered"
	CodeNodeExpired       ErrorCode = "node_expired"
	CodeNodeRemoved       ErrorCode = "node_removed"
	CodeUnavailable       ErrorCode = "unavailable"
	CodeEdgeDisabled      ErrorCode = "edge_disabled"
)

// userMessages say, for a user, what failed and what to do next.
var userMessages = map[ErrorCode]string{
	CodeBadSeal:           "the coordinator could not read this node's request (its key changed?): check the --coordinator URL, or run beam logout and join again",
	CodeClockSkew:         "the coordinator refused the request: this machine's clock is off; set the time and try again",
	CodeAuthKeyInvalid:    "the auth key is not valid (unknown, used up or expired): create a new one with beam admin authkey create and pass it with --authkey",
	CodeUnauthorized:      "the coordinator refused the admin token: check BEAM_ADMIN_TOKEN or --token-file",
	CodeNodeNotRegistered: "the coordinator does not know this node: join with beam up --authkey KEY",
	CodeNodeExpired:       "this node's key expired: join again with beam up --authkey KEY",
	CodeNodeRemoved:       "an admin removed this node from the network: join again with beam up --authkey KEY",
	CodeUnavailable:       "the coordinator is shutting down or busy: try again in a moment",
	CodeEdgeDisabled:      "the coordinator has no public edge: run beam server, or give beam coordinator --edge-domain",
}

// UserMessage returns the sentence to show a user for code: what failed
// and the next step; "" for a code without one (the coordinator's own
// message then says what failed).
func (c ErrorCode) UserMessage() string { return userMessages[c] }
