package coordclient

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"

	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// readBlocks reads from r the sealed blocks that the blocked map frame p
// names (wire.BlockedMapFrame), the frames that follow it, and returns
// the binary map frame they make with it. Each block must have the size
// and SHA-256 that p, sealed to this node and bound to its request
// (bound), gives it before it is opened with its key: a block that
// another node sealed under the same key, or one of another frame, is
// refused. The frame is joined in a buffer lent by into, if not nil.
func (c *Client) readBlocks(r io.Reader, p []byte, bound bool, into frameLender) ([]byte, error) {
	if !bound {
		return nil, fmt.Errorf("%w: blocked map frame on a stream not bound to its request", ErrBadResponse)
	}
	refs, at, inner, err := wire.ParseBlockedMapFrame(p)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadResponse, err)
	}
	total := 0
	for _, ref := range refs {
		total += ref.Size
	}
	var out []byte
	if into != nil {
		out = into.lendFrame(len(inner) + total)
	} else {
		out = make([]byte, 0, len(inner)+total)
	}
	out = append(out, inner[:at]...)
	var buf []byte
	defer func() { putSealed(buf) }()
	for i, ref := range refs {
		var hdr [4]byte
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return nil, noEOF(err)
		}
		if n := binary.BigEndian.Uint32(hdr[:]); int64(n) != int64(ref.Size) {
			return nil, fmt.Errorf("%w: block %d of a blocked map frame is %d bytes, want %d", ErrBadResponse, i, n, ref.Size)
		}
		if cap(buf) < ref.Size {
			putSealed(buf)
			buf = getSealed(ref.Size)
		}
		buf = buf[:ref.Size]
		if _, err := io.ReadFull(r, buf); err != nil {
			return nil, noEOF(err)
		}
		if out, err = c.blocks.open(out, buf, ref); err != nil {
			return nil, fmt.Errorf("%w: block %d of a blocked map frame: %w", ErrBadResponse, i, err)
		}
	}
	return append(out, inner[at:]...), nil
}

// frameLender is a streamSink that lends the buffers blocked map frames
// are joined in (readBlocks) and takes each back once no one uses the
// frame: a process that runs thousands of streams (RunScanned) joins
// every node's full map, a tenth of the bytes it reads, and allocating,
// clearing and collecting each buffer afresh was a fifth of its CPU.
type frameLender interface {
	// lendFrame returns an empty buffer of capacity n or more.
	lendFrame(n int) []byte
}

// lenderOf returns sink as a frameLender, or nil if it lends none.
func lenderOf(sink streamSink) frameLender {
	l, _ := sink.(frameLender)
	return l
}

// frameBufs holds the buffers frameLenders lend.
var frameBufs sync.Pool // of *[]byte

// getFrameBuf returns an empty buffer of capacity n or more from
// frameBufs; give it back with putFrameBuf once the frame is not used.
func getFrameBuf(n int) []byte {
	if p, _ := frameBufs.Get().(*[]byte); p != nil && cap(*p) >= n {
		return (*p)[:0]
	}
	// Rounded up, so that a buffer fits the next frame of about the
	// same size.
	return make([]byte, 0, (n+16<<10-1)&^(16<<10-1))
}

// putFrameBuf gives b, from getFrameBuf, back; it must not be used after.
func putFrameBuf(b []byte) {
	if cap(b) > 0 && cap(b) <= maxPooledSealed {
		frameBufs.Put(&b)
	}
}

// noEOF makes an end of the stream within a frame an unexpected one.
func noEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// errBlockHash and errBlockOpen are why a block is refused.
var (
	errBlockHash = errors.New("does not match its hash")
	errBlockOpen = errors.New("does not open with its key")
)

// openBlock checks the sealed block against ref and appends its records
// to dst.
func openBlock(dst, sealed []byte, ref wire.BlockRef) ([]byte, error) {
	if wire.BlockHash(sealed) != ref.Hash {
		return nil, errBlockHash
	}
	out, ok := key.BlockKeyFromRaw32(ref.Key).OpenBlockAppend(dst, sealed)
	if !ok {
		return nil, errBlockOpen
	}
	return out, nil
}

// maxCachedBlocks bounds a BlockCache: past it, it starts afresh.
const maxCachedBlocks = 4096

// BlockCache holds blocks of blocked map frames that clients checked and
// opened (Options.BlockCache). A block is taken from it only when it is
// byte for byte the one checked, under the same key, so a client that
// uses it refuses what one that does not would. Safe for concurrent use.
type BlockCache struct {
	mu sync.Mutex
	m  map[[32]byte]*cachedBlock // by the block's hash
}

type cachedBlock struct {
	key    [32]byte
	sealed []byte
	plain  []byte
}

// open is openBlock through the cache, if c is not nil.
func (c *BlockCache) open(dst, sealed []byte, ref wire.BlockRef) ([]byte, error) {
	if c == nil {
		return openBlock(dst, sealed, ref)
	}
	c.mu.Lock()
	cb := c.m[ref.Hash]
	c.mu.Unlock()
	if cb != nil && cb.key == ref.Key && bytes.Equal(cb.sealed, sealed) {
		return append(dst, cb.plain...), nil
	}
	start := len(dst)
	out, err := openBlock(dst, sealed, ref)
	if err != nil {
		return nil, err
	}
	cb = &cachedBlock{key: ref.Key, sealed: bytes.Clone(sealed), plain: bytes.Clone(out[start:])}
	c.mu.Lock()
	if c.m == nil || len(c.m) >= maxCachedBlocks {
		c.m = make(map[[32]byte]*cachedBlock)
	}
	c.m[ref.Hash] = cb
	c.mu.Unlock()
	return out, nil
}
