package coordinator

import (
	"bytes"
	"testing"
)

// TestBigWriterPoolCap checks that a bigWriterPool lends at most as many
// writers as it was made for, lends again once one is given back, and
// that a writer lent again writes to its new writer only, with nothing
// of what its last holder left unflushed.
func TestBigWriterPoolCap(t *testing.T) {
	p := newBigWriterPool(2)
	var a, b, c bytes.Buffer
	w1, w2 := p.get(&a), p.get(&b)
	if w1 == nil || w2 == nil {
		t.Fatal("a pool of 2 lends fewer than 2")
	}
	if w := p.get(&c); w != nil {
		t.Fatal("a pool of 2 lends a third")
	}
	w1.WriteString("left unflushed")
	p.put(w1)
	w3 := p.get(&c)
	if w3 == nil {
		t.Fatal("no writer lent after one was given back")
	}
	if w3.Size() != bigWriteSize {
		t.Errorf("writer of %d bytes, want %d", w3.Size(), bigWriteSize)
	}
	w3.WriteString("x")
	if err := w3.Flush(); err != nil {
		t.Fatal(err)
	}
	if a.Len() != 0 || c.String() != "x" {
		t.Errorf("after flush: first writer got %q, third %q; want nothing and %q", a.String(), c.String(), "x")
	}
	p.put(w2)
	p.put(w3)
	if len(p.sem) != 0 {
		t.Errorf("%d lent after all were given back", len(p.sem))
	}
}
