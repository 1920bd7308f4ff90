package coordinator

import (
	"container/heap"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
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
	// retryAfter, if set, is sent as the Retry-After header (whole
	// seconds, at least 1): how long the client should wait before it
	// tries again.
	retryAfter time.Duration
}

func (e *apiError) Error() string { return string(e.code) + ": " + e.msg }

func errorf(status int, code wire.ErrorCode, format string, args ...any) *apiError {
	return &apiError{status: status, code: code, msg: fmt.Sprintf(format, args...)}
}

func writeError(w http.ResponseWriter, e *apiError) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	if e.retryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(max(1, int((e.retryAfter+time.Second-1)/time.Second))))
	}
	w.WriteHeader(e.status)
	eb := wire.ErrorBody{Error: e.msg, Code: e.code}
	eb.Sealed = sealedError(w, eb)
	json.NewEncoder(w).Encode(eb)
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

// maxReplayEntries bounds the replayCache. Only requests of registered
// node keys and of valid auth keys are recorded (Server.seeRequest), so
// it fills only as fast as real nodes send: a quarter million requests
// in one clock-skew window is over 400 a second for ten minutes. At the
// bound the cache forgets its oldest requests (by timestamp) and refuses
// every request of the same sender no newer than them from then on
// (replayCache.floors).
const maxReplayEntries = 1 << 18

// replayCache remembers the hashes of sealed requests seen within the
// clock-skew window. It is safe for concurrent use.
//
// A request whose timestamp is ts is admitted until ts+MaxClockSkew (the
// freshness check), so it is remembered until then. When full, the cache
// drops the entry with the oldest timestamp and raises its sender's
// floor to it: a request of that sender with a timestamp at or before
// its floor is refused as if seen, so dropping an entry never lets its
// replay through (a replay has the sender's key: it opens with no
// other). The floors are the senders' own: one node stamping requests
// minutes ahead (its clock may be up to MaxClockSkew off) and filling
// the cache raises its floor alone, never the others'.
//
// A key's floor is also raised when it registers (raiseFloor, from
// Server.seeRequest) to just before its registering request's stamp: the
// requests it sent before were refused without being recorded (anyone
// can send such requests with keys of their own), and must stay refused
// once the key is known.
type replayCache struct {
	// max bounds the entries; zero means maxReplayEntries.
	max int

	mu     sync.Mutex               // guards the following fields
	seen   map[[32]byte]int64       // hash -> timestamp (Unix ns)
	order  replayHeap               // the same entries, oldest timestamp first
	floors map[key.NodePublic]int64 // sender -> refuse its timestamps <= this (Unix ns)
	swept  time.Time                // when floors were last pruned
}

// add records the sealed request of sender k whose SHA-256 is h and
// whose timestamp is ts, seen at now, and reports whether it was new. It
// drops what can no longer be replayed first.
func (c *replayCache) add(k key.NodePublic, h [32]byte, ts, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.pruneLocked(now)
	t := ts.UnixNano()
	if t <= c.floors[k] {
		return false
	}
	if _, ok := c.seen[h]; ok {
		return false
	}
	if c.seen == nil {
		c.seen = make(map[[32]byte]int64)
	}
	limit := c.max
	if limit <= 0 {
		limit = maxReplayEntries
	}
	for len(c.seen) >= limit {
		old := heap.Pop(&c.order).(replayEntry)
		delete(c.seen, old.hash)
		if c.floors == nil {
			c.floors = make(map[key.NodePublic]int64)
		}
		c.floors[old.sender] = max(c.floors[old.sender], old.ts)
		if old.sender == k && t <= c.floors[k] {
			return false
		}
	}
	c.seen[h] = t
	heap.Push(&c.order, replayEntry{ts: t, hash: h, sender: k})
	return true
}

// raiseFloor refuses, from now on, every request of sender k whose
// timestamp is at or before ts, as if seen: the requests of a key sent
// before it registered, which were refused without being recorded. The
// floor lasts while such requests could pass the freshness check.
func (c *replayCache) raiseFloor(k key.NodePublic, ts, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.pruneLocked(now)
	if c.floors == nil {
		c.floors = make(map[key.NodePublic]int64)
	}
	c.floors[k] = max(c.floors[k], ts.UnixNano())
}

// prune forgets entries that can no longer be replayed.
func (c *replayCache) prune(now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.pruneLocked(now)
}

func (c *replayCache) pruneLocked(now time.Time) {
	stale := now.Add(-MaxClockSkew).UnixNano()
	for len(c.order) > 0 && c.order[0].ts < stale {
		old := heap.Pop(&c.order).(replayEntry)
		delete(c.seen, old.hash)
	}
	// A floor below the window refuses nothing the freshness check
	// does not already refuse.
	if len(c.floors) > 0 && now.Sub(c.swept) >= time.Minute {
		c.swept = now
		for k, f := range c.floors {
			if f < stale {
				delete(c.floors, k)
			}
		}
	}
}

// len returns the number of requests remembered.
func (c *replayCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.seen)
}

type replayEntry struct {
	ts     int64
	hash   [32]byte
	sender key.NodePublic
}

// replayHeap is a min-heap of replayEntry by ts (container/heap).
type replayHeap []replayEntry

func (q replayHeap) Len() int           { return len(q) }
func (q replayHeap) Less(i, j int) bool { return q[i].ts < q[j].ts }
func (q replayHeap) Swap(i, j int)      { q[i], q[j] = q[j], q[i] }
func (q *replayHeap) Push(x any)        { *q = append(*q, x.(replayEntry)) }
func (q *replayHeap) Pop() any {
	old := *q
	e := old[len(old)-1]
	*q = old[:len(old)-1]
	return e
}
