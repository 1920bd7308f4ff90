package coordinator

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strconv"

	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// Replies bound to their request (wire.CapabilityVersion 17). A node puts
// a fresh random nonce in each sealed request (wire.RegisterRequest.Nonce
// and the others); the coordinator seals the reply, or each frame of the
// map stream the request opens, with the shared key bound to that nonce
// (key.Shared.Bind), and numbers the stream's frames in their box nonce
// (key.Shared.SealSeqAppend). So a reply or stream an on-path attacker
// recorded opens for no later request, and a frame cannot be replayed,
// dropped or moved within its stream. A request without a nonce (a node
// of an older version) gets unbound replies, as before.
//
// The nonce rides from openRequest to writeSealed and the stream's frame
// sealer on the handler's ResponseWriter (replyWriter), which
// bindReplies puts around each sealed endpoint's handler; the handlers
// themselves pass it on unchanged.

// replyNoncer is a sealed request that carries a reply nonce; every
// request type of the sealed endpoints is one.
type replyNoncer interface{ ReplyNonce() []byte }

var (
	_ replyNoncer = (*wire.RegisterRequest)(nil)
	_ replyNoncer = (*wire.MapRequest)(nil)
	_ replyNoncer = (*wire.ExposeRequest)(nil)
	_ replyNoncer = (*wire.TXTRequest)(nil)
)

// replyWriter is the ResponseWriter of a sealed endpoint: it holds the
// nonce of the request once openRequest has read it.
type replyWriter struct {
	http.ResponseWriter
	nonce []byte // nil: unbound replies
	// box is the key shared with the request's node bound to nonce,
	// which seals error answers (writeError); zero until setReplyBox.
	box key.Shared
}

// Unwrap gives http.ResponseController the connection's writer (flushes
// and write deadlines of map streams).
func (w *replyWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// versionHeader is wire.HeaderVersion's value.
var versionHeader = strconv.Itoa(wire.CapabilityVersion)

// bindReplies wraps the handler of a sealed endpoint so that its replies
// can be bound to the request, and says the coordinator's version in
// every response (wire.HeaderVersion).
func bindReplies(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(wire.HeaderVersion, versionHeader)
		h(&replyWriter{ResponseWriter: w}, r)
	}
}

// setReplyNonce records the reply nonce of the opened request v on w. It
// refuses a nonce of the wrong length.
func setReplyNonce(w http.ResponseWriter, v any) *apiError {
	rn, ok := v.(replyNoncer)
	if !ok {
		return nil
	}
	n := rn.ReplyNonce()
	if len(n) == 0 {
		return nil
	}
	if len(n) != wire.ReplyNonceLen {
		return errorf(http.StatusBadRequest, wire.CodeBadRequest, "reply nonce is %d bytes, want %d", len(n), wire.ReplyNonceLen)
	}
	if rw, ok := w.(*replyWriter); ok {
		rw.nonce = n
	}
	return nil
}

// setReplyBox records on w the key the answer to nk's request is bound
// with, so that an error answer is sealed too (sealedError).
func (s *Server) setReplyBox(w http.ResponseWriter, nk key.NodePublic) {
	if rw, ok := w.(*replyWriter); ok && rw.nonce != nil {
		rw.box = s.boxes.get(s.priv, nk).Bind(rw.nonce)
	}
}

// sealedError returns the error body eb sealed with the key bound to the
// request on w (wire.ErrorBody.Sealed), or nil when the request had no
// nonce or was not opened.
func sealedError(w http.ResponseWriter, eb wire.ErrorBody) []byte {
	rw, ok := w.(*replyWriter)
	if !ok || rw.box.IsZero() {
		return nil
	}
	b, err := json.Marshal(eb)
	if err != nil {
		return nil
	}
	return rw.box.Seal(b)
}

// sealTrailer sets the stream's sealed error trailer
// (wire.TrailerErrorSealed) to v sealed as the stream's next frame; an
// unbound stream (a node before version 17) gets none.
func (f *frameSealer) sealTrailer(h http.Header, v string) {
	if !f.bound {
		return
	}
	h.Set(wire.TrailerErrorSealed, base64.StdEncoding.EncodeToString(f.SealAppend(nil, []byte(v))))
}

// replyKey returns the key the reply to nk's request on w is sealed
// with: the shared key, bound to the request's nonce if it had one.
func (s *Server) replyKey(w http.ResponseWriter, nk key.NodePublic) (box key.Shared, bound bool) {
	box = s.boxes.get(s.priv, nk)
	if rw, ok := w.(*replyWriter); ok && rw.nonce != nil {
		return box.Bind(rw.nonce), true
	}
	return box, false
}

// frameSealer seals the frames of one map stream: with the shared key as
// before for a node that sent no nonce, else with the key bound to it,
// each frame numbered from 0.
type frameSealer struct {
	box   key.Shared
	bound bool
	seq   uint64 // the next frame's position
}

// frameSealer returns the sealer of the map stream nk's request on w
// opened: one X25519 per stream (cached), not per frame.
func (s *Server) frameSealer(w http.ResponseWriter, nk key.NodePublic) *frameSealer {
	box, bound := s.replyKey(w, nk)
	return &frameSealer{box: box, bound: bound}
}

// SealAppend appends the box of the stream's next frame b to dst.
func (f *frameSealer) SealAppend(dst, b []byte) []byte {
	if !f.bound {
		return f.box.SealAppend(dst, b)
	}
	dst = f.box.SealSeqAppend(dst, f.seq, b)
	f.seq++
	return dst
}
