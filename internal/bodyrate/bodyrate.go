// Package bodyrate bounds how slowly an HTTP client may send a request
// body. net/http bounds the time to read a request's header
// (ReadHeaderTimeout) but nothing bounds its body short of ReadTimeout,
// one deadline for the whole request that no upload size suits: without
// a bound, a body that trickles in a byte every few seconds holds its
// connection, and a file descriptor, forever.
package bodyrate

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"
)

// Limit says how slowly a body may arrive.
type Limit struct {
	// Timeout is the longest wait for a byte of the body, and the grace
	// before MinRate applies. Zero or negative means no limit.
	Timeout time.Duration
	// MinRate is the slowest rate, in bytes a second, a body may keep
	// up after the first Timeout: every MinRate bytes received extend
	// the body's deadline by a second. Zero or negative means 1.
	MinRate int
}

// ErrTooSlow is wrapped by the error a body read returns when the client
// sent the body too slowly.
var ErrTooSlow = errors.New("request body sent too slowly")

// Wrap bounds the body of r by l: its reads fail with an error wrapping
// ErrTooSlow (and the connection's read deadline) when the client is too
// slow. w must be r's ResponseWriter, or unwrap to it: the deadlines are
// set through http.ResponseController. Requests without a body and gRPC
// requests (whose bodies are streams that may idle) are left alone, as
// are servers that cannot set read deadlines.
func Wrap(w http.ResponseWriter, r *http.Request, l Limit) {
	if l.Timeout <= 0 || r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 ||
		strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
		return
	}
	if l.MinRate <= 0 {
		l.MinRate = 1
	}
	// The first deadline is set now: a handler may never read the body,
	// and net/http then reads what is left of it to discard it.
	rc := http.NewResponseController(w)
	start := time.Now()
	if rc.SetReadDeadline(start.Add(l.Timeout)) != nil {
		return // the server cannot: it keeps its own limits
	}
	r.Body = &body{ReadCloser: r.Body, rc: rc, l: l, start: start}
}

// Handler returns h with every request body bounded by l.
func Handler(h http.Handler, l Limit) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		Wrap(w, r, l)
		h.ServeHTTP(w, r)
	})
}

// maxCounted caps the bytes that earn time, so the grace cannot overflow.
const maxCounted = 1 << 32

// body sets the connection's read deadline before each read: no later
// than Timeout from now, nor than Timeout plus a second per MinRate bytes
// received from the start of the request. It clears it at the end of the body.
// After a failed read it sets no deadline again (later reads fail the
// same way).
type body struct {
	io.ReadCloser
	rc     *http.ResponseController
	l      Limit
	start  time.Time
	n      int64
	off    bool // deadlines cleared or unsupported
	failed bool // a read failed: its deadline stays
}

func (b *body) Read(p []byte) (int, error) {
	if b.off || b.failed {
		return b.ReadCloser.Read(p)
	}
	now := time.Now()
	grace := time.Duration(min(b.n, maxCounted) * int64(time.Second) / int64(b.l.MinRate))
	dl := b.start.Add(b.l.Timeout + grace)
	if idle := now.Add(b.l.Timeout); idle.Before(dl) {
		dl = idle
	}
	b.rc.SetReadDeadline(dl)
	n, err := b.ReadCloser.Read(p)
	b.n += int64(n)
	switch {
	case err == io.EOF:
		// The whole body is in: later reads of the connection (the
		// next request, or net/http watching for the client going
		// away) get no deadline from it.
		b.off = true
		b.rc.SetReadDeadline(time.Time{})
	case err != nil:
		b.failed = true
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			break
		}
		// The deadline stays: net/http would otherwise wait for the
		// rest of the body to discard it, at the same trickle.
		err = fmt.Errorf("%w (%d bytes in %v): %w", ErrTooSlow, b.n, time.Since(b.start).Round(time.Millisecond), err)
	}
	return n, err
}
