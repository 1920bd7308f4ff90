package coordclient

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// Replies bound to their request (wire.CapabilityVersion 17): every
// sealed request carries a fresh random nonce, and the coordinator seals
// the reply, or each frame of the map stream, with the shared key bound
// to it (key.Shared.Bind), stream frames numbered (key.Shared.OpenSeq).
// A reply recorded for an earlier request, replayed by someone on the
// path, then does not open. A coordinator older than version 17 seals
// replies unbound: the client takes those only from a coordinator that
// has not said it is of version 17 or later (wire.HeaderVersion) and has
// not bound an earlier reply.

// ErrUnboundReply means a reply did not open with the key bound to its
// request where it had to: a reply or stream recorded earlier and
// replayed, a frame replayed or moved within its stream, or a
// coordinator that says it binds replies and did not. It matches
// ErrBadResponse too.
var ErrUnboundReply = errors.New("reply not bound to its request (replayed?)")

// newNonce returns a fresh reply nonce.
func newNonce() []byte {
	n := make([]byte, wire.ReplyNonceLen)
	rand.Read(n)
	return n
}

// reply opens the answer to one sealed request sent to t.
type reply struct {
	c     *Client
	t     *target
	resp  *http.Response
	plain key.Shared // the key shared with the coordinator
	bound key.Shared // plain bound to the request's nonce
}

// mayBeUnbound reports whether an unbound reply is acceptable: the
// coordinator says it is older than version 17 (or says nothing), and
// has bound no earlier reply to this client.
func (rp *reply) mayBeUnbound() bool {
	if v, err := strconv.Atoi(rp.resp.Header.Get(wire.HeaderVersion)); err == nil && v >= wire.BoundRepliesVersion {
		return false
	}
	return !rp.c.bindsReplies(rp.t)
}

// open opens the sealed reply b.
func (rp *reply) open(b []byte) ([]byte, error) {
	if clear, ok := rp.bound.Open(b); ok {
		rp.c.sawBound(rp.t)
		return clear, nil
	}
	return rp.openUnbound(b, "reply")
}

// openUnbound opens b, which did not open bound, with the unbound key
// if the coordinator may send it so.
func (rp *reply) openUnbound(b []byte, what string) ([]byte, error) {
	if !rp.mayBeUnbound() {
		return nil, fmt.Errorf("%w: %w: the coordinator binds its replies, and this %s was not sealed for this request", ErrBadResponse, ErrUnboundReply, what)
	}
	clear, ok := rp.plain.Open(b)
	if !ok {
		return nil, fmt.Errorf("%w: %s does not open with the coordinator's key", ErrBadResponse, what)
	}
	if isRequest(clear) {
		return nil, fmt.Errorf("%w: %w: this %s is a request of this node sent back", ErrBadResponse, ErrUnboundReply, what)
	}
	rp.c.warnUnbound(rp.t)
	return clear, nil
}

// isRequest reports whether clear, opened with the unbound key, is a
// sealed request of this node rather than a reply: requests and unbound
// replies share that key, so one sent back opens as a reply. Every
// request of version 17 and later carries a Nonce, which no reply has.
func isRequest(clear []byte) bool {
	var r struct {
		Nonce []byte `json:"nonce"`
	}
	return json.Unmarshal(clear, &r) == nil && len(r.Nonce) > 0
}

// frameOpener opens the frames of one map stream in order.
type frameOpener struct {
	rp    *reply
	seq   uint64 // the next frame's position
	plain bool   // the stream is unbound (a coordinator before version 17)
}

// open opens the stream's next frame b.
func (fo *frameOpener) open(b []byte) ([]byte, error) {
	if fo.plain {
		clear, ok := fo.rp.plain.Open(b)
		if !ok {
			return nil, fmt.Errorf("%w: frame does not open with the coordinator's key", ErrBadResponse)
		}
		if isRequest(clear) {
			return nil, fmt.Errorf("%w: %w: frame %d of the map stream is a request of this node sent back", ErrBadResponse, ErrUnboundReply, fo.seq)
		}
		fo.seq++
		return clear, nil
	}
	if clear, ok := fo.rp.bound.OpenSeq(b, fo.seq); ok {
		if fo.seq == 0 {
			fo.rp.c.sawBound(fo.rp.t)
		}
		fo.seq++
		return clear, nil
	}
	if fo.seq > 0 {
		return nil, fmt.Errorf("%w: %w: frame %d of the map stream does not open as frame %d of this stream (replayed, dropped or reordered)", ErrBadResponse, ErrUnboundReply, fo.seq, fo.seq)
	}
	clear, err := fo.rp.openUnbound(b, "map stream")
	if err != nil {
		return nil, err
	}
	fo.plain = true
	return clear, nil
}

// bindsReplies reports whether t's coordinator has bound a reply to this
// client. It is remembered by t's URL and address, across resolves.
func (c *Client) bindsReplies(t *target) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.binding[t.String()]
}

// sawBound records that t's coordinator binds its replies.
func (c *Client) sawBound(t *target) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.binding == nil {
		c.binding = make(map[string]bool)
	}
	c.binding[t.String()] = true
}

// Binds reports whether the coordinator is known to bind its replies:
// Options.ServerBinds, or one of its targets bound a reply to this
// client.
func (c *Client) Binds() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.binds || len(c.binding) > 0
}

// sealsErrors reports whether an unsealed terminal error from t is
// refused: t (or the coordinator) is known to bind its replies.
func (c *Client) sealsErrors(t *target) bool {
	return c.binds || c.bindsReplies(t)
}

// verifyError takes the sealed copy of the error body b (the answer to
// a request whose reply key is bound) when it opens, and marks e
// Unverified when it says the node cannot go on without being sealed,
// from a coordinator that binds its replies.
func (c *Client) verifyError(t *target, e *Error, b []byte, bound key.Shared) {
	var eb wire.ErrorBody
	if json.Unmarshal(b, &eb) == nil && len(eb.Sealed) > 0 {
		if clear, ok := bound.Open(eb.Sealed); ok {
			var in wire.ErrorBody
			if json.Unmarshal(clear, &in) == nil {
				e.Code, e.Message = in.Code, in.Error
				c.sawBound(t)
				return
			}
		}
	}
	if terminalCode(e.Code) && c.sealsErrors(t) {
		e.Unverified = true
	}
}

// streamEnd returns the error of a map stream's end from its trailers:
// the sealed one (wire.TrailerErrorSealed) when it opens as the frame
// after the last, else the plain one, marked Unverified when terminal
// and the stream was bound.
func (fo *frameOpener) streamEnd(plain, sealed, retryAfter string) *Error {
	if sealed != "" && !fo.plain {
		if raw, err := base64.StdEncoding.DecodeString(sealed); err == nil {
			if clear, ok := fo.rp.bound.OpenSeq(raw, fo.seq); ok {
				return errorFromTrailer(string(clear), retryAfter)
			}
		}
	}
	e := errorFromTrailer(plain, retryAfter)
	if terminalCode(e.Code) && !fo.plain && fo.rp.c.sealsErrors(fo.rp.t) {
		e.Unverified = true
	}
	return e
}

// warnUnbound logs, once per coordinator, that it does not bind replies.
func (c *Client) warnUnbound(t *target) {
	c.mu.Lock()
	if c.warnedUnbound == nil {
		c.warnedUnbound = make(map[string]bool)
	}
	warned := c.warnedUnbound[t.String()]
	c.warnedUnbound[t.String()] = true
	c.mu.Unlock()
	if !warned {
		c.logger.Warn("coordinator does not bind its replies to requests (protocol version before 17): an on-path attacker could replay its old replies; upgrade it", "server", t.String())
	}
}
