package copybuf

import (
	"net/http/httputil"
	"testing"
)

var _ httputil.BufferPool = Pool

func TestPool(t *testing.T) {
	b := Pool.Get()
	if len(b) != Size || cap(b) != Size {
		t.Fatalf("Get: len %d cap %d, want %d", len(b), cap(b), Size)
	}
	Pool.Put(b[:10]) // a resliced buffer still goes back whole
	if b := Pool.Get(); len(b) != Size {
		t.Fatalf("Get after Put: len %d, want %d", len(b), Size)
	}
	Pool.Put(make([]byte, 100)) // foreign buffers are dropped, not kept
	if b := Pool.Get(); len(b) != Size {
		t.Fatalf("Get after a foreign Put: len %d, want %d", len(b), Size)
	}
}
