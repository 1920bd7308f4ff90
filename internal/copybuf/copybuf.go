// Package copybuf pools the 32 KiB buffers that reverse proxies copy
// response bodies with; without a pool, httputil.ReverseProxy allocates
// and zeroes one for every response.
package copybuf

import "sync"

// Size is the length of the pooled buffers.
const Size = 32 << 10

var buffers = sync.Pool{New: func() any { return new([Size]byte) }}

// Pool is an httputil.BufferPool handing out Size-byte buffers.
var Pool pool

type pool struct{}

// Get returns a Size-byte buffer.
func (pool) Get() []byte { return buffers.Get().(*[Size]byte)[:] }

// Put returns b to the pool; buffers of another capacity are dropped.
func (pool) Put(b []byte) {
	if cap(b) == Size {
		buffers.Put((*[Size]byte)(b[:Size]))
	}
}
