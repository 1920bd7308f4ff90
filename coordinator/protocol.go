package coordinator

import (
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

// The control protocol (wire.Envelope, frames, headers, error codes) is
// defined in beam.dev/beam/wire.

// maxRequestSize bounds a request body.
const maxRequestSize = 1 << 20

// MaxClockSkew is how far a request's Timestamp may be from the
// coordinator's clock. Sealed requests seen within this window are
// remembered and refused a second time.
const MaxClockSkew = 5 * time.Minute

func jsonMarshal(v any) ([]byte, error)   { return json.Marshal(v) }
func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }
func jsonEncode(w io.Writer, v any) error { return json.NewEncoder(w).Encode(v) }

// apiError is an error with a status and code that handlers return.
type apiError struct {
	status int
	code   wire.ErrorCode
	msg    string
}

func (e *apiError) Error() string { return string(e.code) + ": " + e.msg }

func errorf(status int, code wire.ErrorCode, format string, args ...any) *apiError {
	return &apiError{status: status, code: code, msg: fmt.Sprintf(format, args...)}
}

func writeError(w http.ResponseWriter, e *apiError) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(e.status)
	json.NewEncoder(w).Encode(wire.ErrorBody{Error: e.msg, Code: e.code})
}

// decodeEnvelope parses the outer JSON of a control request.
func decodeEnvelope(b []byte) (wire.Envelope, error) {
	var env wire.Envelope
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
func openEnvelope(priv key.MachinePrivate, env wire.Envelope, v any) error {
	clear, ok := priv.OpenFrom(env.NodeKey, env.Sealed)
	if !ok {
		return errors.New("open sealed request: box does not open with the envelope's node key")
	}
	if err := json.Unmarshal(clear, v); err != nil {
		return fmt.Errorf("decode sealed request: %w", err)
	}
	return nil
}

// replayCache remembers the hashes of sealed requests seen within the
// clock-skew window. It is safe for concurrent use.
type replayCache struct {
	mu   sync.Mutex // guards seen
	seen map[[32]byte]time.Time
}

// add records the sealed request whose SHA-256 is h, seen at now, and
// reports whether it was new.
func (c *replayCache) add(h [32]byte, now time.Time) bool {
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
