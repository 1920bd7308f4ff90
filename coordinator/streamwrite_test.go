package coordinator_test

import (
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"beam.dev/beam/coordinator"
	"beam.dev/beam/wire"
)

// writeCounter is a listener whose connections count their writes.
type writeCounter struct {
	net.Listener
	writes, bytes atomic.Int64
}

func (l *writeCounter) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &writeCountedConn{Conn: c, l: l}, nil
}

type writeCountedConn struct {
	net.Conn
	l *writeCounter
}

func (c *writeCountedConn) Write(b []byte) (int, error) {
	c.l.writes.Add(1)
	c.l.bytes.Add(int64(len(b)))
	return c.Conn.Write(b)
}

// TestFullMapLargeWrites checks that a full map of many frames (blocked
// map frames and their blocks) goes to the connection in a few writes of
// up to a big buffer (coordinator.BigWriteSize), not two or more per
// frame, and that the node puts it together whole; and that with every
// big buffer in use it goes frame by frame, whole too.
func TestFullMapLargeWrites(t *testing.T) {
	const n = 800
	c := startCoord(t, func(o *coordinator.Options) { o.KeepAliveInterval = time.Minute })
	ak := c.authKey(t, coordinator.AuthKeyOptions{Reusable: true})
	privs := registerMany(t, c, ak, "peer", n)

	// The same coordinator, served on a listener that counts writes.
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := &writeCounter{Listener: inner}
	hs := &http.Server{Handler: c.Server}
	go hs.Serve(ln)
	defer hs.Close()
	counted := *c
	counted.URL = "http://" + ln.Addr().String()

	for _, taken := range []bool{false, true} {
		if taken {
			defer coordinator.TakeBigWriters()()
		}
		writes0, bytes0 := ln.writes.Load(), ln.bytes.Load()
		names, blocked := readFullMap(t, &counted, privs[n/2], wire.BlockedFramesVersion, true)
		writes, bytes := ln.writes.Load()-writes0, ln.bytes.Load()-bytes0
		t.Logf("big buffers taken %v: %d writes, %d bytes, %d blocked frames", taken, writes, bytes, blocked)
		if len(names) != n-1 {
			t.Errorf("big buffers taken %v: %d peers, want %d", taken, len(names), n-1)
		}
		if blocked < n/200 {
			t.Fatalf("%d blocked map frames, want %d or more", blocked, n/200)
		}
		// Each big write is two writes to the connection (HTTP/1.1's
		// chunk head goes out with the start of it); then the response's
		// head, the end of the last chunk, and one to spare.
		bound := 2*(bytes/coordinator.BigWriteSize+1) + 4
		if !taken && writes > bound {
			t.Errorf("%d writes for %d bytes, want at most %d", writes, bytes, bound)
		}
		if taken && writes < int64(blocked) {
			t.Errorf("big buffers taken: %d writes for %d blocked frames, want one or more per frame", writes, blocked)
		}
	}
}
