package coordinator

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// Control protocol, as spoken with beam.dev/beam/coordclient:
//
//	GET  /key               -> text/plain key.MachinePublic ("mkey:<64 hex>")
//	POST /machine/register  <- envelope sealing a wire.RegisterRequest
//	                        -> 200, body = sealed JSON wire.RegisterResponse
//	POST /machine/map       <- envelope sealing a wire.MapRequest
//	                        -> Stream=false: 200, body = sealed JSON wire.MapResponse
//	                        -> Stream=true:  200, body = frames (below), until
//	                           the stream ends; a "Beam-Error" trailer then says
//	                           why ("node_removed: ...", "node_expired: ...")
//	POST /machine/expose    <- envelope sealing a wire.ExposeRequest
//	                        -> 200, body = sealed JSON wire.ExposeResponse
//	POST /machine/txt       <- envelope sealing a TXTRequest (edge nodes only)
//	                        -> 200, body = sealed JSON TXTResponse
//	GET  /server/setup      -> JSON wire.ServerSetup, unsealed (public), or
//	                           404 without Options.ServerSetup
//
// The envelope is JSON:
//
//	{"node_key": "nodekey:<64 hex>", "sealed": "<base64>"}
//
// where sealed = NodePrivate.SealTo(coordinator machine public, JSON request)
// (24B nonce | NaCl box). Opening it with the envelope's node key proves the
// sender holds that key. Responses are sealed with
// MachinePrivate.SealTo(node key).
//
// A map stream is a sequence of frames:
//
//	4B big-endian length N (1 <= N <= MaxFrameSize) | N bytes sealed JSON wire.MapResponse
//
// Errors are plain JSON {"error": "human text", "code": "<code>"} with the
// HTTP status below; codes are the ErrorCode constants.

// MaxFrameSize is the largest sealed map frame either side accepts.
const MaxFrameSize = 4 << 20

// maxRequestSize bounds a request body.
const maxRequestSize = 1 << 20

// MaxClockSkew is how far a request's Timestamp may be from the
// coordinator's clock. Sealed requests seen within this window are
// remembered and refused a second time.
const MaxClockSkew = 5 * time.Minute

// Response headers of a map stream.
const (
	// HeaderKeepAlive carries the stream's keepalive interval in
	// milliseconds, so the node can tell a dead stream from a quiet one.
	HeaderKeepAlive = "Beam-Keepalive-Ms"
	// TrailerError is the trailer that says why a stream ended.
	TrailerError = "Beam-Error"
)

// ErrorCode is the machine-readable code of an error response; the codes
// a user can act on are declared in wire, with their user messages.
type ErrorCode = wire.ErrorCode

// Error codes of the control and admin APIs.
const (
	CodeBadRequest        ErrorCode = "bad_request"              // 400: malformed envelope, box or JSON
	CodeBadSeal                     = wire.CodeBadSeal           // 401: the box does not open with the envelope's key and the coordinator's
	CodeKeyMismatch       ErrorCode = "key_mismatch"             // 401: sealed node key differs from the envelope's
	CodeReplay            ErrorCode = "replay"                   // 401: sealed request seen before
	CodeClockSkew                   = wire.CodeClockSkew         // 401: timestamp outside MaxClockSkew
	CodeAuthKeyInvalid              = wire.CodeAuthKeyInvalid    // 401: unknown, used or expired auth key
	CodeUnauthorized                = wire.CodeUnauthorized      // 401: admin API without a valid token
	CodeNodeNotRegistered           = wire.CodeNodeNotRegistered // 403: the node key is unknown (or was removed)
	CodeNodeExpired                 = wire.CodeNodeExpired       // 403: the node key expired
	CodeNodeRemoved                 = wire.CodeNodeRemoved       // stream trailer: the node was removed
	CodeForbidden         ErrorCode = "forbidden"                // 403: otherwise refused
	CodeNotFound          ErrorCode = "not_found"                // 404: admin API object missing
	CodeUnavailable                 = wire.CodeUnavailable       // 503: coordinator shutting down
	CodeInternal          ErrorCode = "internal"                 // 500
)

// ErrorBody is the JSON body of every error response.
type ErrorBody struct {
	Error string    `json:"error"`
	Code  ErrorCode `json:"code"`
}

func jsonMarshal(v any) ([]byte, error)   { return json.Marshal(v) }
func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }
func jsonEncode(w io.Writer, v any) error { return json.NewEncoder(w).Encode(v) }

// apiError is an error with a status and code that handlers return.
type apiError struct {
	status int
	code   ErrorCode
	msg    string
}

func (e *apiError) Error() string { return string(e.code) + ": " + e.msg }

func errorf(status int, code ErrorCode, format string, args ...any) *apiError {
	return &apiError{status: status, code: code, msg: fmt.Sprintf(format, args...)}
}

func writeError(w http.ResponseWriter, e *apiError) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(e.status)
	json.NewEncoder(w).Encode(ErrorBody{Error: e.msg, Code: e.code})
}

// envelope is the outer, unsealed JSON of a control request.
type envelope struct {
	NodeKey key.NodePublic `json:"node_key"`
	Sealed  []byte         `json:"sealed"`
}

// decodeEnvelope parses the outer JSON of a control request.
func decodeEnvelope(b []byte) (envelope, error) {
	var env envelope
	if err := json.Unmarshal(b, &env); err != nil {
		return env, fmt.Errorf("decode envelope: %w", err)
	}
	if env.NodeKey.IsZero() {
		return env, errors.New("decode envelope: missing node_key")
	}
	if len(env.Sealed) < key.SealOverhead {
		return env, errors.New("decode envelope: sealed box too short")
	}
	return env, nil
}

// openEnvelope opens env.Sealed with priv and decodes the JSON inside into v.
func openEnvelope(priv key.MachinePrivate, env envelope, v any) error {
	clear, ok := priv.OpenFrom(env.NodeKey, env.Sealed)
	if !ok {
		return errors.New("open sealed request: box does not open with the envelope's node key")
	}
	if err := json.Unmarshal(clear, v); err != nil {
		return fmt.Errorf("decode sealed request: %w", err)
	}
	return nil
}

// writeFrame writes one stream frame holding sealed.
func writeFrame(w io.Writer, sealed []byte) error {
	if len(sealed) == 0 || len(sealed) > MaxFrameSize {
		return fmt.Errorf("write frame: size %d out of range", len(sealed))
	}
	var hdr [4]byte
	binary.BigEndian.PutUint32(hdr[:], uint32(len(sealed)))
	if _, err := w.Write(hdr[:]); err != nil {
		return err
	}
	_, err := w.Write(sealed)
	return err
}

// replayCache remembers the hashes of sealed requests seen within the
// clock-skew window. It is safe for concurrent use.
type replayCache struct {
	mu   sync.Mutex // guards seen
	seen map[[32]byte]time.Time
}

// add records sealed, seen at now, and reports whether it was new.
func (c *replayCache) add(sealed []byte, now time.Time) bool {
	h := sha256.Sum256(sealed)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.seen == nil {
		c.seen = make(map[[32]byte]time.Time)
	}
	if until, ok := c.seen[h]; ok && now.Before(until) {
		return false
	}
	// A request is valid until its timestamp is MaxClockSkew old, and its
	// timestamp can be MaxClockSkew ahead of now: remember it 2x the window.
	c.seen[h] = now.Add(2 * MaxClockSkew)
	return true
}

// prune forgets entries that can no longer be replayed.
func (c *replayCache) prune(now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for h, until := range c.seen {
		if !now.Before(until) {
			delete(c.seen, h)
		}
	}
}
