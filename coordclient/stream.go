package coordclient

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"time"

	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// Reconnect backoff and liveness.
const (
	backoffMin = 250 * time.Millisecond
	backoffMax = 30 * time.Second
	// defaultKeepAlive is assumed when the coordinator does not say.
	defaultKeepAlive = 30 * time.Second
	// coalesceDelay gathers bursts of SetEndpoints into one update.
	coalesceDelay = 50 * time.Millisecond
)

// backoff is capped exponential backoff with jitter.
type backoff struct{ n int }

func (b *backoff) reset() { b.n = 0 }

// next returns the next wait: a random duration in [d/2, d) where d
// doubles from backoffMin up to backoffMax.
func (b *backoff) next() time.Duration {
	d := backoffMin << min(b.n, 10)
	d = min(d, backoffMax)
	b.n++
	return d/2 + rand.N(d/2)
}

// wait waits d or until ctx is done; it reports whether the wait ran out.
func wait(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// isTerminal reports whether err means the node cannot stream any more.
func isTerminal(err error) bool {
	return errors.Is(err, ErrNodeRemoved) || errors.Is(err, ErrNodeExpired) || errors.Is(err, ErrNodeNotRegistered)
}

// Run streams the node's netmap: it calls onNetMap (never concurrently)
// with each new netmap, which the callback may keep but must not modify,
// built from the full map that starts every stream and the deltas after
// it. While the coordinator is unreachable it
// reconnects with capped exponential backoff and jitter; the caller keeps
// using the last netmap meanwhile. With several coordinators
// (Options.ServerURL), it moves to the next one at once when its
// coordinator fails, and backs off only once every one has. A stream that
// sends nothing for twice the coordinator's keepalive interval is
// considered dead (with several coordinators, for the interval plus 5 s).
// Run also sends the endpoints given to SetEndpoints.
//
// Run returns nil when ctx is done, or an error matching ErrNodeRemoved,
// ErrNodeExpired or ErrNodeNotRegistered when the node cannot stream.
func (c *Client) Run(ctx context.Context, onNetMap func(*wire.NetMap)) error {
	var nm *wire.NetMap
	return c.RunResponses(ctx, func(mr *wire.MapResponse, first bool) {
		now := c.now()
		if first {
			// Every stream starts with a full map: rebuild from scratch so
			// nothing of an earlier stream lingers.
			nm = (*wire.NetMap)(nil).Apply(mr, now)
		} else {
			nm = nm.Apply(mr, now)
			if isKeepAlive(mr) {
				return
			}
		}
		onNetMap(nm)
	})
}

// join adds the frame mr to the split message *joined. It returns the
// whole message once mr is its last frame, else nil; *frames counts the
// message's frames so far against wire.MaxMapFrames.
func join(joined **wire.MapResponse, frames *int, mr *wire.MapResponse) (*wire.MapResponse, error) {
	*frames++
	if *frames > wire.MaxMapFrames {
		return nil, fmt.Errorf("%w: map message split across more than %d frames", ErrBadResponse, wire.MaxMapFrames)
	}
	switch {
	case *joined == nil:
		*joined = mr
	case isKeepAlive(mr):
		return nil, nil // not part of the message
	default:
		(*joined).Merge(mr)
	}
	if (*joined).More {
		return nil, nil
	}
	whole := *joined
	*joined, *frames = nil, 0
	return whole, nil
}

func isKeepAlive(mr *wire.MapResponse) bool {
	return mr.KeepAlive && mr.Self == nil && mr.Peers == nil && len(mr.PeersChanged) == 0 && len(mr.PeersRemoved) == 0 &&
		len(mr.PeersOnline) == 0 && len(mr.PeersOnlineByID) == 0 && mr.DERPMap == nil && mr.DNS == nil && !mr.PacketFilterSet && mr.PacketFilter == nil && len(mr.FilterSetChanges) == 0 && mr.EdgeRoutes == nil
}

// readFrame reads one frame: 4B big-endian length N, then N bytes of a
// wire.MapResponse (JSON or a binary map frame, wire.DecodeMapFrame) sealed by the coordinator to the node (box, the key they share).
// io.EOF means the stream ended cleanly between frames.
func readFrame(r io.Reader, box key.Shared) (*wire.MapResponse, error) {
	p, err := readPayload(r, func(b []byte) ([]byte, error) {
		clear, ok := box.Open(b)
		if !ok {
			return nil, fmt.Errorf("%w: frame does not open with the coordinator's key", ErrBadResponse)
		}
		return clear, nil
	})
	if err != nil {
		return nil, err
	}
	return decodeFrame(p)
}

// readPayload reads one frame as readFrame does and returns its payload
// opened with open, undecoded. open must return a copy: the sealed
// bytes it is given are read into a buffer reused for later frames.
func readPayload(r io.Reader, open func([]byte) ([]byte, error)) ([]byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n == 0 || n > wire.MaxFrameSize {
		return nil, fmt.Errorf("%w: frame size %d out of range", ErrBadResponse, n)
	}
	buf := getSealed(int(n))
	defer putSealed(buf)
	if _, err := io.ReadFull(r, buf); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return open(buf)
}

// sealedBufs holds buffers for sealed frames and blocks as they are read,
// which opening copies out of: a node reading a full map of thousands
// of peers (and a process that runs thousands of streams) would
// otherwise allocate, clear and collect every frame twice.
var sealedBufs sync.Pool // of *[]byte

// maxPooledSealed is the largest buffer sealedBufs keeps: frames are
// cut at about 40 KB; the rare larger one is not held on to.
const maxPooledSealed = 256 << 10

// getSealed returns a buffer of n bytes from sealedBufs; give it back
// with putSealed once what was read into it is opened.
func getSealed(n int) []byte {
	if p, _ := sealedBufs.Get().(*[]byte); p != nil && cap(*p) >= n {
		return (*p)[:n]
	}
	return make([]byte, n)
}

// putSealed gives b, from getSealed, back; it must not be used after.
func putSealed(b []byte) {
	if cap(b) > 0 && cap(b) <= maxPooledSealed {
		sealedBufs.Put(&b)
	}
}

// decodeFrame decodes one opened frame.
func decodeFrame(clear []byte) (*wire.MapResponse, error) {
	mr, err := wire.DecodeMapFrame(clear)
	if err != nil {
		return nil, fmt.Errorf("%w: decode frame: %w", ErrBadResponse, err)
	}
	return mr, nil
}

// endpointLoop sends endpoint updates from SetEndpoints until ctx is done.
func (c *Client) endpointLoop(ctx context.Context) {
	var sent uint64
	var bo backoff
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.epsWake:
		}
		if !wait(ctx, coalesceDelay) {
			return
		}
		for {
			c.mu.Lock()
			gen := c.epsGen
			c.mu.Unlock()
			if gen == sent {
				break
			}
			g, err := c.sendUpdate(ctx)
			if err == nil {
				sent = g
				bo.reset()
				continue
			}
			if ctx.Err() != nil {
				return
			}
			if isTerminal(err) {
				// Run's stream sees the same and returns; nothing to retry.
				c.logger.Debug("endpoint update refused", "err", err)
				break
			}
			d := bo.next()
			c.logger.Debug("endpoint update failed; retrying", "err", err, "in", d)
			if !wait(ctx, d) {
				return
			}
		}
	}
}
