package coordclient

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// Sentinel errors. Errors from the Client and Admin match them with
// errors.Is.
var (
	// ErrAuthKeyInvalid means the auth key is unknown, already used, or expired.
	ErrAuthKeyInvalid = errors.New("auth key invalid")
	// ErrNodeNotRegistered means the coordinator does not know the node key.
	ErrNodeNotRegistered = errors.New("node not registered")
	// ErrNodeExpired means the node key expired; register again with an auth key.
	ErrNodeExpired = errors.New("node key expired")
	// ErrNodeRemoved means an admin (or logout, or the ephemeral timeout)
	// removed the node while it was streaming.
	ErrNodeRemoved = errors.New("node removed")
	// ErrUnreachable wraps network errors reaching the coordinator.
	ErrUnreachable error = &userSentinel{msg: "coordinator unreachable",
		user: "the coordinator is unreachable: check the --coordinator URL and that the coordinator runs"}
	// ErrBadResponse means the coordinator's answer could not be opened or decoded.
	ErrBadResponse = errors.New("bad response from coordinator")
	// ErrUnauthorized means the admin token is missing or wrong.
	ErrUnauthorized = errors.New("unauthorized")
	// ErrNotFound means the admin API found no such object.
	ErrNotFound = errors.New("not found")
	// ErrServerKeyChanged means the coordinator answered with a machine
	// key other than the one pinned (Options.ServerKey); see
	// KeyChangedError.
	ErrServerKeyChanged = errors.New("coordinator's machine key changed")
)

// KeyChangedError is a coordinator that answers with a machine key other
// than the pinned one the node registered with. It matches
// ErrServerKeyChanged.
type KeyChangedError struct {
	Server string            // the coordinator's URL
	Pinned key.MachinePublic // the key the node registered with
	Got    key.MachinePublic // the key the coordinator gave
}

func (e *KeyChangedError) Error() string {
	return fmt.Sprintf("the coordinator at %s now has machine key %s, not %s which this node joined with: "+
		"refused, as someone on the network path may be posing as the coordinator (use an https:// URL). "+
		"If the coordinator was really reset or given a new key, run `beam logout` and join again with `beam up --authkey KEY`",
		e.Server, e.Got, e.Pinned)
}

// UserMessage returns the sentence for a user.
func (e *KeyChangedError) UserMessage() string { return e.Error() }

// Is reports whether target is ErrServerKeyChanged.
func (e *KeyChangedError) Is(target error) bool { return target == ErrServerKeyChanged }

// userSentinel is a sentinel error that also says, for a user, what
// failed and what to do next.
type userSentinel struct{ msg, user string }

func (e *userSentinel) Error() string { return e.msg }

// UserMessage returns the sentence for a user.
func (e *userSentinel) UserMessage() string { return e.user }

// Error is an error answer from the coordinator. It matches the sentinel
// errors of its Code with errors.Is.
type Error struct {
	// Status is the HTTP status (200 for in-band errors and stream trailers).
	Status int
	// Code is the coordinator's machine-readable code, empty if none.
	Code wire.ErrorCode
	// Message is the coordinator's human-readable text.
	Message string
	// RetryAfter is how long the coordinator asked the node to wait
	// before it comes back (a stream ended by its shutdown, a request it
	// could not serve in time: 503 with Retry-After); zero if it did not
	// say.
	RetryAfter time.Duration
	// Unverified means the error says the node cannot go on (removed,
	// expired, not registered) but was not sealed for its request by a
	// coordinator known to bind its replies: someone on the path may
	// have written it. It then matches none of those sentinels, and the
	// client retries.
	Unverified bool
}

func (e *Error) Error() string {
	msg := e.Message
	if msg == "" {
		msg = http.StatusText(e.Status)
	}
	if e.Unverified {
		return fmt.Sprintf("unsealed %s answer from a coordinator that binds its replies, not taken (written by someone on the path?): %s", e.Code, msg)
	}
	return "coordinator: " + msg
}

// terminalCode reports whether code says the node cannot stream any more.
func terminalCode(code wire.ErrorCode) bool {
	return code == wire.CodeNodeRemoved || code == wire.CodeNodeExpired || code == wire.CodeNodeNotRegistered
}

// UserMessage returns what a user should read: the sentence for e's
// code (what failed and the next step), else the coordinator's message.
func (e *Error) UserMessage() string {
	if m := e.Code.UserMessage(); m != "" {
		return m
	}
	msg := e.Message
	if msg == "" {
		msg = http.StatusText(e.Status)
	}
	return "the coordinator refused: " + msg
}

// Is reports whether target is the sentinel for e's code.
func (e *Error) Is(target error) bool {
	if e.Unverified && terminalCode(e.Code) {
		return false
	}
	if s, ok := edgeCodes[e.Code]; ok {
		return target == s
	}
	switch e.Code {
	case wire.CodeAuthKeyInvalid:
		return target == ErrAuthKeyInvalid
	case wire.CodeNodeNotRegistered:
		return target == ErrNodeNotRegistered
	case wire.CodeNodeExpired:
		return target == ErrNodeExpired
	case wire.CodeNodeRemoved:
		return target == ErrNodeRemoved
	case wire.CodeUnauthorized:
		return target == ErrUnauthorized
	case wire.CodeNotFound:
		return target == ErrNotFound
	}
	return false
}

// errorFromBody builds an *Error from a JSON error body.
func errorFromBody(status int, body []byte) *Error {
	var eb wire.ErrorBody
	e := &Error{Status: status}
	if json.Unmarshal(body, &eb) == nil {
		e.Code, e.Message = eb.Code, eb.Error
	} else {
		e.Message = strings.TrimSpace(string(body))
		if len(e.Message) > 200 {
			e.Message = e.Message[:200]
		}
		if e.Message == "" {
			e.Message = http.StatusText(status)
		}
	}
	if e.Code == "" && status == http.StatusUnauthorized {
		e.Code = wire.CodeUnauthorized
	}
	return e
}

// minRetryAfter and maxRetryAfter bound the wait a coordinator may ask
// for: one that asks for none between streams (buggy, or hostile) gets
// no more than two streams a second.
const (
	minRetryAfter = 500 * time.Millisecond
	maxRetryAfter = time.Minute
)

// maxRateLimitedRetries bounds how often one request is sent again after
// the coordinator answered wire.CodeRateLimited.
const maxRateLimitedRetries = 5

// maxUnavailableRetries bounds how often one request is sent again after
// the coordinator answered 503 with a Retry-After (a registration its
// database did not answer in time): each attempt may take the
// coordinator's whole deadline, so once is enough before the error
// reaches the user.
const maxUnavailableRetries = 1

// retryAfterHeader parses a Retry-After header in seconds, bounded by
// minRetryAfter and maxRetryAfter (minRetryAfter if absent or bad).
func retryAfterHeader(v string) time.Duration {
	secs, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil || secs <= 0 {
		return minRetryAfter
	}
	return min(max(time.Duration(secs)*time.Second, minRetryAfter), maxRetryAfter)
}

// errorFromTrailer parses a stream's "code: message" trailer and its
// retry-after trailer (milliseconds; empty for none).
func errorFromTrailer(v, retryAfter string) *Error {
	e := &Error{Status: http.StatusOK, Message: v}
	if code, msg, ok := strings.Cut(v, ": "); ok {
		e.Code, e.Message = wire.ErrorCode(code), msg
	}
	if ms, err := strconv.ParseInt(retryAfter, 10, 64); err == nil && ms > 0 {
		e.RetryAfter = min(max(time.Duration(ms)*time.Millisecond, minRetryAfter), maxRetryAfter)
	}
	return e
}
