package coordinator

import (
	"bufio"
	"io"
	"sync"
)

// bigWriteSize is the buffer a map stream writes a message of several
// frames through (a full map, tens of frames of 20 to 40 KB): written
// one by one, each frame costs the coordinator a write (two, under
// HTTP/1.1's chunking) and the node as many reads; gathered in writes of
// this size the same bytes cost about half the CPU on both ends of a
// loopback connection.
const bigWriteSize = 256 << 10

// maxBigWriters bounds the big buffers in use at once (32 MiB): when
// thousands of streams send their full maps at once, as after a restart,
// those past it write their frames one by one, as every stream did.
const maxBigWriters = 128

// bigWriterPool lends the big buffers that streams write large messages
// through, at most n at once. Safe for concurrent use.
type bigWriterPool struct {
	sem  chan struct{}
	pool sync.Pool // of *bufio.Writer of bigWriteSize
}

func newBigWriterPool(n int) *bigWriterPool {
	return &bigWriterPool{sem: make(chan struct{}, n)}
}

// bigWriters is the pool of every stream of the process.
var bigWriters = newBigWriterPool(maxBigWriters)

// get returns a writer of bigWriteSize to w, or nil if as many as the
// pool allows are in use. Give it back with put.
func (p *bigWriterPool) get(w io.Writer) *bufio.Writer {
	select {
	case p.sem <- struct{}{}:
	default:
		return nil
	}
	bw, _ := p.pool.Get().(*bufio.Writer)
	if bw == nil {
		return bufio.NewWriterSize(w, bigWriteSize)
	}
	bw.Reset(w)
	return bw
}

// put gives back bw, from get; what it holds unflushed is dropped.
func (p *bigWriterPool) put(bw *bufio.Writer) {
	bw.Reset(nil)
	p.pool.Put(bw)
	<-p.sem
}
