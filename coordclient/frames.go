package coordclient

import (
	"context"
	"fmt"

	"beam.dev/beam/wire"
)

// MessageHandler takes the messages of RunScanned's map streams, their
// frames opened and scanned (wire.ScanMapFrame) but their peers not
// decoded, and holds the peers they give in place of the client. It is
// for load generators that run thousands of clients in one process
// (coordinator/scalebench), so that each reads peers without decoding
// them into Nodes and keeps only what it needs. A handler must hold peers
// as RunResponses' client does to resume a stream: the digest
// (wire.PeersDigest) of the peers of the last full map, kept up to date
// with each message's PeersChanged and PeersRemoved, where a message that
// keeps the peers (wire.MapResponse.PeersKept) stands for a full map of
// those held. The client calls it on one goroutine at a time.
type MessageHandler interface {
	// Digest returns the digest of the peers held, offered with the next
	// stream request to resume them; ok false offers none (the stream
	// then starts with a full map).
	Digest() (d wire.PeersDigest, ok bool)
	// Forget drops the peers held, so that the next stream starts with
	// a full map. The client calls it where it drops its own: after a
	// malformed message, and after a stream that offered a digest ended
	// before its first message.
	Forget()
	// Message takes one whole message: the frames it came in, in order
	// (one unless it was split, wire.MapResponse.More), valid only during
	// the call: the client reuses their bytes. first says it is the stream's first message: a full map,
	// or a resumed one. An error ends the stream as a malformed one
	// (ErrBadResponse).
	Message(frames []*wire.ScannedFrame, first bool) error
}

// RunScanned is RunResponses for a MessageHandler: it runs the node's
// map streams, resuming each with the digest h gives, and hands h each
// message once its frames are opened and scanned. Reconnects, backoff,
// the dead stream timeout, endpoint updates, OnConnState and the errors
// returned are those of Run.
func (c *Client) RunScanned(ctx context.Context, h MessageHandler) error {
	return c.runStreams(ctx, &scannedSink{h: h})
}

// scannedSink is RunScanned's sink: it scans each frame, gathers the
// frames of a split message and hands each whole message to the handler.
type scannedSink struct {
	h      MessageHandler
	frames []*wire.ScannedFrame // of the message so far
	n      int                  // frames of the message so far, keepalives too
	lent   [][]byte             // buffers of the message so far (lendFrame)
}

func (s *scannedSink) request() *wire.PeersDigest {
	d, ok := s.h.Digest()
	if !ok {
		return nil
	}
	return &d
}

func (s *scannedSink) invalidate() { s.h.Forget() }

func (s *scannedSink) begin() {
	s.frames, s.n = nil, 0
	s.giveBack()
}

// lendFrame lends a buffer for a frame of the message so far, until the
// handler has taken the message (frameLender).
func (s *scannedSink) lendFrame(n int) []byte {
	b := getFrameBuf(n)
	s.lent = append(s.lent, b)
	return b
}

// giveBack gives back the buffers lent for the message so far.
func (s *scannedSink) giveBack() {
	for _, b := range s.lent {
		putFrameBuf(b)
	}
	clear(s.lent)
	s.lent = s.lent[:0]
}

func (s *scannedSink) frame(payload []byte, first bool) (bool, error) {
	f, err := wire.ScanMapFrame(payload)
	if err != nil {
		return false, fmt.Errorf("%w: decode frame: %w", ErrBadResponse, err)
	}
	s.n++
	if s.n > wire.MaxMapFrames {
		return false, fmt.Errorf("%w: map message split across more than %d frames", ErrBadResponse, wire.MaxMapFrames)
	}
	if len(s.frames) > 0 && f.List == wire.ListNone && f.OnlineCount() == 0 && isKeepAlive(f.Head) {
		return false, nil // a keepalive amid a split message is not part of it
	}
	s.frames = append(s.frames, f)
	if f.Head.More {
		return false, nil
	}
	frames := s.frames
	s.frames, s.n = nil, 0
	err = s.h.Message(frames, first)
	s.giveBack()
	if err != nil {
		return false, fmt.Errorf("%w: %w", ErrBadResponse, err)
	}
	return true, nil
}

func (s *scannedSink) deliver(bool) {}
