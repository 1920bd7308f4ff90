package coordclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	"beam.dev/beam/wire"
)

// RunResponses is the stream under Run, for programs that hold many
// streams at once (load generators such as coordinator/scalebench): it
// hands onResponse (never concurrently) each decoded MapResponse as it
// arrives (a message split across frames once, joined), keepalives
// included, instead of building a netmap per message, so a caller can
// keep only what it needs. first is true for the full map that starts every
// stream: Peers holds every peer, also when the stream resumed the
// peers the client held (wire.MapResponse.PeersKept; the client keeps
// the peers of every message it passes on, so that a new stream, after
// a coordinator restart, need not send them all again). The peers in
// Peers and PeersChanged may be held by the client: onResponse must not
// modify them. Reconnects (to the next coordinator when there are several;
// else with capped exponential backoff and jitter, or after the wait a
// coordinator that shuts down asks for), the dead stream timeout,
// endpoint updates (SetEndpoints), OnConnState and the errors returned
// are those of Run.
func (c *Client) RunResponses(ctx context.Context, onResponse func(resp *wire.MapResponse, first bool)) error {
	return c.runStreams(ctx, &decodedSink{held: &heldPeers{}, onResponse: onResponse})
}

// runStreams runs map streams until ctx is done or the node cannot
// stream, handing each stream's frames to sink.
func (c *Client) runStreams(ctx context.Context, sink streamSink) error {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() { c.endpointLoop(ctx) })

	var bo backoff
	c.resolve(ctx)
	// misses counts the targets that failed since a stream last got its
	// map; once every one has, the client backs off.
	misses := 0
	for {
		start := time.Now()
		got, t, err := c.responsesOnce(ctx, sink)
		// A stream that got its map but ended at once (a coordinator
		// that fails right after, or closes every stream) does not
		// count as a success: it resets no backoff.
		got = got && time.Since(start) >= stableStream
		if c.onConn != nil {
			c.onConn(false)
		}
		if ctx.Err() != nil {
			return nil
		}
		if isTerminal(err) {
			c.logger.Info("map stream ended for good", "err", err)
			return err
		}
		if e, ok := errors.AsType[*Error](err); ok && e.Unverified {
			c.logger.Warn("map stream: a final error (node removed, expired or not registered) came unsealed from a coordinator that binds its replies; taken as transient", "server", t.String(), "err", err)
		}
		if e, ok := errors.AsType[*KeyChangedError](err); ok {
			c.logger.Warn("coordinator refused: its machine key is not the one this node joined with", "server", t.String(), "err", err)
			if c.onRef != nil {
				c.onRef(e)
			}
		}
		if errors.Is(err, ErrUnboundReply) {
			c.logger.Warn("map stream refused: its frames were not sealed for this stream's request, in order (replayed by someone on the path?); dropped it", "server", t.String(), "err", err)
		}
		if got {
			bo.reset()
			misses = 0
		}
		n := c.advance(t)
		if n == 1 {
			d := bo.next()
			if e, ok := errors.AsType[*Error](err); ok && e.RetryAfter > 0 {
				// The coordinator is going away and said when to come back
				// (spread over its nodes): then reconnect promptly.
				d = e.RetryAfter
				bo.reset()
			}
			c.logger.Info("map stream lost; reconnecting", "err", err, "in", d.Round(time.Millisecond))
			if !wait(ctx, d) {
				return nil
			}
			continue
		}
		switch {
		case got:
			misses = 1
		case errors.Is(err, ErrUnreachable):
			misses = n // post tried every target
		default:
			misses++
		}
		if misses < n {
			// Another coordinator is likely up: go there at once, with a
			// little jitter so that the nodes of a coordinator that died
			// do not all arrive in the same instant.
			d := rand.N(failoverJitter)
			c.logger.Info("map stream lost; moving to the next coordinator", "from", t.String(), "to", c.ServerURL(), "err", err, "in", d.Round(time.Millisecond))
			if !wait(ctx, d) {
				return nil
			}
			continue
		}
		misses = 0
		d := bo.next()
		c.logger.Info("no coordinator reachable; trying them again", "err", err, "in", d.Round(time.Millisecond))
		if !wait(ctx, d) {
			return nil
		}
		c.resolve(ctx)
	}
}

// stableStream is how long a stream must have lasted, its map received,
// for the client to count the coordinator as working again.
const stableStream = 5 * time.Second

// silentMargin is how late past its keepalive interval a stream may be,
// with other coordinators to move to, before it counts as dead.
const silentMargin = 5 * time.Second

// failoverJitter bounds the wait before moving to the next coordinator.
const failoverJitter = 300 * time.Millisecond

// responsesOnce runs one map stream for runStreams, offering the
// peers held to resume. It reports whether it received a full map, and
// the target it tried last.
func (c *Client) responsesOnce(ctx context.Context, sink streamSink) (bool, *target, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	offered := sink.request() != nil
	var gen uint64 // of the endpoints the stream request carries
	rp, t, err := c.postAny(ctx, wire.PathMap, func(st stamp) any {
		var req *wire.MapRequest
		req, gen = c.mapRequest(st, true)
		req.Peers = sink.request()
		return req
	})
	if err != nil {
		return false, t, fmt.Errorf("coordclient: open map stream: %w", err)
	}
	c.streamOpened(gen)
	c.setStreaming(t)
	defer c.setStreaming(nil)
	got, err := c.readStream(cancel, rp, sink)
	if errors.Is(err, ErrBadResponse) || offered && !got {
		// Whatever came, the next stream starts afresh; so too after a
		// stream that offered the peers held and ended before its first
		// message: a coordinator that cannot send the resumed message
		// would fail every stream that offers them.
		sink.invalidate()
	}
	return got, t, err
}

// readStream reads the map stream resp until it ends; cancel ends it.
func (c *Client) readStream(cancel context.CancelFunc, rp *reply, sink streamSink) (bool, error) {
	resp := rp.resp
	defer resp.Body.Close()
	fo := &frameOpener{rp: rp}

	ka := defaultKeepAlive
	if ms, err := strconv.ParseInt(resp.Header.Get(wire.HeaderKeepAlive), 10, 64); err == nil && ms > 0 {
		ka = time.Duration(ms) * time.Millisecond
	}
	dead := 2 * ka
	if c.multi() {
		// Another coordinator can take over: give up on a silent one
		// sooner, a margin after the keepalive it owed.
		dead = ka + min(ka, silentMargin)
	}
	var silentMu sync.Mutex
	silent := false
	timer := time.AfterFunc(dead, func() {
		silentMu.Lock()
		silent = true
		silentMu.Unlock()
		cancel()
	})
	defer timer.Stop()

	sink.begin()
	got := false
	for {
		payload, err := readPayload(resp.Body, fo.open)
		if err == nil && len(payload) > 0 && payload[0] == wire.BlockedMapFrame {
			payload, err = c.readBlocks(resp.Body, payload, !fo.plain, lenderOf(sink))
		}
		whole := false
		if err == nil {
			whole, err = sink.frame(payload, !got)
		}
		if err != nil {
			silentMu.Lock()
			wasSilent := silent
			silentMu.Unlock()
			switch {
			case wasSilent:
				return got, fmt.Errorf("coordclient: map stream silent for %v", dead)
			case errors.Is(err, io.EOF):
				if t := resp.Trailer.Get(wire.TrailerError); t != "" {
					return got, fmt.Errorf("coordclient: map stream: %w", fo.streamEnd(t, resp.Trailer.Get(wire.TrailerErrorSealed), resp.Trailer.Get(wire.TrailerRetryAfter)))
				}
				return got, fmt.Errorf("coordclient: map stream ended: %w", err)
			case errors.Is(err, ErrBadResponse):
				return got, fmt.Errorf("coordclient: map stream: %w", err)
			}
			return got, fmt.Errorf("%w: map stream: %w", ErrUnreachable, err)
		}
		timer.Reset(dead)
		if !whole {
			continue // more of the message follows
		}
		first := !got
		if first {
			got = true
			if c.onConn != nil {
				c.onConn(true)
			}
		}
		sink.deliver(first)
	}
}

// streamSink takes the frames of a client's map streams and holds the
// peers that resume the next one. Only runStreams' goroutine uses it.
type streamSink interface {
	// request returns the digest to offer with a stream request, or nil.
	request() *wire.PeersDigest
	// invalidate forgets the peers held: the next stream gets a full map.
	invalidate()
	// begin starts a stream: a message the last one left unfinished is
	// dropped.
	begin()
	// frame takes one opened frame (wire.DecodeMapFrame's input), of the
	// stream's first message if first. It reports whether the frame ends
	// a message, which deliver then passes on; an error (matching
	// ErrBadResponse) ends the stream.
	frame(payload []byte, first bool) (whole bool, err error)
	// deliver passes on the message the last frame ended.
	deliver(first bool)
}

// decodedSink is RunResponses' sink: it decodes each frame, joins split
// messages, keeps the peers held up to date and hands each whole message
// to onResponse.
type decodedSink struct {
	held         *heldPeers
	onResponse   func(*wire.MapResponse, bool)
	joined       *wire.MapResponse // a message split across frames, so far
	joinedFrames int
	ready        *wire.MapResponse // the whole message deliver passes on
}

func (s *decodedSink) request() *wire.PeersDigest { return s.held.request() }

func (s *decodedSink) invalidate() { s.held.invalidate() }

func (s *decodedSink) begin() { s.joined, s.joinedFrames, s.ready = nil, 0, nil }

func (s *decodedSink) frame(payload []byte, first bool) (bool, error) {
	mr, err := decodeFrame(payload)
	if err == nil && (s.joined != nil || mr.More) {
		mr, err = join(&s.joined, &s.joinedFrames, mr)
	}
	if err != nil || mr == nil {
		return false, err
	}
	if err := s.held.apply(mr, first); err != nil {
		return false, err
	}
	s.ready = mr
	return true, nil
}

func (s *decodedSink) deliver(first bool) {
	mr := s.ready
	s.ready = nil
	s.onResponse(mr, first)
}
