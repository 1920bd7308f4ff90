package wire

import (
	"time"

	"beam.dev/beam/types/key"
)

// Control protocol, as spoken between the coordinator and coordclient:
//
//	GET  /key               -> text/plain key.MachinePublic ("mkey:<64 hex>"),
//	                           and since version 19 the boot epoch in the
//	                           HeaderBootEpoch header (hex)
//	POST /machine/register  <- Envelope sealing a RegisterRequest
//	                        -> 200, body = sealed JSON RegisterResponse
//	POST /machine/map       <- Envelope sealing a MapRequest
//	                        -> Stream=false: 200, body = sealed JSON MapResponse
//	                        -> Stream=true:  200, body = frames (below), until
//	                           the stream ends; a TrailerError trailer then
//	                           says why ("node_removed: ...", "node_expired: ...")
//	                           and, on shutdown, TrailerRetryAfter when to come back
//	POST /machine/expose    <- Envelope sealing an ExposeRequest
//	                        -> 200, body = sealed JSON ExposeResponse
//	POST /machine/txt       <- Envelope sealing a TXTRequest (edge nodes only)
//	                        -> 200, body = sealed JSON TXTResponse
//	GET  /server/setup      -> JSON ServerSetup, unsealed (public), or 404
//
// The Envelope is JSON:
//
//	{"node_key": "nodekey:<64 hex>", "sealed": "<base64>"}
//
// where sealed = NodePrivate.SealTo(coordinator machine public, JSON request)
// (24B nonce | NaCl box). Opening it with the envelope's node key proves the
// sender holds that key. Responses are sealed with the key the node key
// and the coordinator's machine key share (key.Shared, the same box as
// MachinePrivate.SealTo(node key)), bound, since version 17, to the
// request: a request's Nonce (ReplyNonceLen random bytes, fresh for each
// request) makes the reply's key Shared.Bind(Nonce), so a recorded reply
// opens for no other request. Every response to a sealed request carries
// HeaderVersion.
//
// Since version 19 a sealed request also carries the boot epoch of the
// coordinator it is sealed for (RegisterRequest.Epoch): a random value
// each coordinator draws when it starts and gives out with its key. A
// coordinator remembers the requests it took within the clock-skew
// window (in memory, and on a database shared by several coordinators),
// so that none is taken twice; a request of version 19 or later sealed
// for an earlier start, or for another replica, is refused
// (CodeStaleEpoch), which keeps a request recorded before a restart
// from being replayed after it. The node then fetches GET /key again
// and sends the request anew.
//
// A map stream is a sequence of frames:
//
//	4B big-endian length N (1 <= N <= MaxFrameSize) | N bytes sealed JSON MapResponse
//
// or, to nodes of version 16 or later, a sealed binary map frame when the
// message carries peers or online states (BinaryMapFrame: a JSON head,
// then binary peer records and online states; DecodeMapFrame reads both).
//
// A MapResponse with More set continues in the next frame (version 13);
// one message spans at most MaxMapFrames frames.
//
// Since version 17 (a MapRequest with a Nonce) each frame is sealed with
// the request's bound key and the box's 24B nonce is the frame's
// position in the stream (from 0, 8B big-endian) then 16 random bytes
// (key.Shared.SealSeqAppend); the node opens frame i only as frame i.
//
// Errors are JSON ErrorBody values with the HTTP status noted at each
// ErrorCode.

// Envelope is the outer, unsealed JSON of a control request.
type Envelope struct {
	// NodeKey is the sender's node key; Sealed opens only with it.
	NodeKey key.NodePublic `json:"node_key"`
	// Sealed is the JSON request sealed from NodeKey to the
	// coordinator's machine key (24B nonce | NaCl box).
	Sealed []byte `json:"sealed"`
}

// MaxFrameSize is the largest sealed map frame either side accepts.
const MaxFrameSize = 4 << 20

// MaxMapFrames is the most frames one map message may be split across
// (MapResponse.More). The coordinator sends a full map in frames of tens
// of kilobytes (so that a slow node costs it one frame, not its whole
// map): 4,096 of them carry far more than the largest network's map.
const MaxMapFrames = 4096

// Response headers of a map stream.
const (
	// HeaderKeepAlive carries the stream's keepalive interval in
	// milliseconds, so the node can tell a dead stream from a quiet one.
	HeaderKeepAlive = "Beam-Keepalive-Ms"
	// TrailerError is the trailer that says why a stream ended, as
	// "CODE: MESSAGE" with an ErrorCode.
	TrailerError = "Beam-Error"
	// TrailerErrorSealed carries TrailerError's value sealed (base64)
	// with the stream's bound key as the frame after the last one
	// (key.Shared.SealSeqAppend), since version 20: the node takes a
	// stream's end as the coordinator's only when it opens.
	TrailerErrorSealed = "Beam-Error-Sealed"
	// TrailerRetryAfter comes with TrailerError when the coordinator
	// shuts down (CodeUnavailable): the milliseconds the node should wait
	// before it opens its stream again. Each stream is given its own
	// wait, spread over a few seconds, so that a restart brings its
	// nodes back promptly but not all in the same instant.
	TrailerRetryAfter = "Beam-Retry-After-Ms"
)

// TXTRequest is the sealed body of POST /machine/txt: an edge node sets
// (or, with no Values, deletes) the TXT records of Name in the public zone.
type TXTRequest struct {
	Version   int            `json:"version"`
	NodeKey   key.NodePublic `json:"node_key"`
	Timestamp time.Time      `json:"timestamp"`
	// Name is absolute ("_acme-challenge.app.example.test").
	Name   string   `json:"name"`
	Values []string `json:"values,omitempty"`
	// Nonce binds the reply (see RegisterRequest.Nonce).
	Nonce []byte `json:"nonce,omitempty"`
	// Epoch is the coordinator's boot epoch (see RegisterRequest.Epoch).
	Epoch []byte `json:"epoch,omitempty"`
}

// ReplyNonce returns r.Nonce.
func (r *TXTRequest) ReplyNonce() []byte { return r.Nonce }

// SealedEpoch returns r.Version and r.Epoch.
func (r *TXTRequest) SealedEpoch() (int, []byte) { return r.Version, r.Epoch }

// TXTResponse answers a TXTRequest.
type TXTResponse struct {
	// Error is a human-readable reason the request was refused.
	Error string `json:"error,omitempty"`
}
