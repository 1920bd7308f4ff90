package expose

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/http2"

	"beam.dev/beam/internal/streamcopy"
	"beam.dev/beam/localapi/apitype"
	"beam.dev/beam/wire"
)

// The device side of an exposed HTTP port relays each connection from the
// edge to one connection to the app and copies HTTP/1.x messages through
// as they are, byte for byte. It reads only the heads, to find where each
// message ends (expose_http1.go), to log each exchange for beam expose,
// to answer the "nothing is listening" page while the app is down, and to
// follow a switch of protocols (WebSocket). HTTP/2 connections (h2c with
// prior knowledge, which the edge uses for gRPC) go to a full HTTP/2
// server instead.

const (
	// relayBufSize is the read buffer of each direction of a relayed
	// connection: the most a single write carries. It holds at least a
	// chunk-size line (maxChunkLine).
	relayBufSize = 16 << 10
	// maxPipelined caps requests sent to the app ahead of their
	// responses; the relay stops reading the client beyond it.
	maxPipelined = 16
	// relayHeadTimeout bounds the arrival of a request head once its
	// first byte is in.
	relayHeadTimeout = 60 * time.Second
	// lingerTimeout and lingerBytes bound how long and how much the
	// relay reads and drops after refusing a request, before it closes.
	lingerTimeout = 500 * time.Millisecond
	lingerBytes   = 1 << 20
)

// h2Preface is how an HTTP/2 connection with prior knowledge starts; the
// relay's head reader sees its first part as a request head.
const h2Preface = "PRI * HTTP/2.0\r\n\r\n"

var relayReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, relayBufSize) }}

// exposeRelay relays connections to one exposed HTTP port of the device.
type exposeRelay struct {
	port uint16
	// dial connects to the app.
	dial func(ctx context.Context) (net.Conn, error)
	// h2 serves HTTP/2 connections with h2Handler.
	h2        *http2.Server
	h2Handler http.Handler
	// watching reports whether anyone reads the request log; publish
	// sends a line to it.
	watching func() bool
	publish  func(apitype.RequestLog)
	// capture returns the inspector's body limit, or 0 while nobody
	// inspects; record keeps a captured exchange. Both may be nil.
	capture func() int
	record  func(*Exchange)
	logger  *slog.Logger
	// edges are the overlay addresses of the edge nodes, whose reports of
	// refused requests (wire.EdgeReportPreface) go to the log; the node
	// stores them on every netmap. Nil: none.
	edges atomic.Pointer[[]netip.Addr]
}

// relayConn is one relayed connection. Its run goroutine reads requests
// from the client and writes them to the app; a second goroutine,
// started once the app is dialed, reads responses and writes them to the
// client.
type relayConn struct {
	x      *exposeRelay
	client net.Conn
	cr     splicer // client -> app
	or     splicer // app -> client
	queue  chan *exchange
	done   chan struct{} // closed by end
	ended  sync.Once
	wg     sync.WaitGroup // the response goroutine

	// remote is the client's address, taken at accept: the netstack's
	// connections have none once reset or closed (addrPortOf).
	remote netip.AddrPort

	mu          sync.Mutex // guards the following fields
	origin      net.Conn   // the connection to the app, once dialed
	appGone     bool       // the app closed origin between responses; dial again for the next request
	outstanding int        // requests sent to the app whose responses are not through yet
	clientEOF   bool       // the client finished sending; end once outstanding is 0
	final       []byte     // a response to write once outstanding is 0, before ending
}

// exchange is one request sent to the app, waiting for its response.
type exchange struct {
	kind     reqKind
	replay   bool                // the client may send it again: an idempotent method and no body
	switched chan bool           // with kind.mayUpgrade: whether the response switched protocols
	answered chan struct{}       // with kind.head: closed once the response went to the client
	log      *apitype.RequestLog // nil unless someone watches the request log or inspects; else &logLine
	cap      *capture            // nil unless someone inspects; else &capLine

	// logLine and capLine hold what log and cap point to, so that an
	// inspected request costs no allocations of its own for them.
	logLine apitype.RequestLog
	capLine capture
}

// newExchange returns the exchange of a request with head h, parsed as
// rh, capturing it if someone inspects and making its log line if
// someone watches the request log or inspects.
func (x *exposeRelay) newExchange(h []byte, rh *reqHead) *exchange {
	ex := &exchange{kind: rh.kind(), replay: rh.framing == bodyNone && idempotent(rh.method)}
	if ex.kind.mayUpgrade {
		ex.switched = make(chan bool, 1)
	}
	if ex.kind.head {
		ex.answered = make(chan struct{})
	}
	if limit := x.captureLimit(); limit > 0 {
		ex.cap = &ex.capLine
		ex.cap.init(limit)
		ex.cap.reqHead = len(h)
		ex.cap.req.grow(len(h))
	}
	if ex.cap != nil || x.watching() {
		ex.log = &ex.logLine
		// One string holds the four fields.
		host, method, path, client := rh.host, rh.method, rh.target, firstAddr(rh.forwarded)
		var b strings.Builder
		b.Grow(len(host) + len(method) + len(path) + len(client))
		b.Write(host)
		b.Write(method)
		b.Write(path)
		b.Write(client)
		s := b.String()
		i, j, k := len(host), len(host)+len(method), len(host)+len(method)+len(path)
		*ex.log = apitype.RequestLog{
			Time:   time.Now(),
			Host:   s[:i],
			Method: s[i:j],
			Path:   s[j:k],
			Port:   x.port,
			Client: s[k:],
		}
	}
	return ex
}

func newRelayConn(x *exposeRelay, c net.Conn) *relayConn {
	return &relayConn{x: x, client: c, remote: addrPortOf(c.RemoteAddr()), done: make(chan struct{})}
}

// end closes both connections, which stops both goroutines. It may be
// called from anywhere, any number of times.
func (rc *relayConn) end() {
	rc.ended.Do(func() {
		close(rc.done)
		rc.client.Close()
		rc.mu.Lock()
		o := rc.origin
		rc.mu.Unlock()
		if o != nil {
			o.Close()
		}
	})
}

// run relays the connection until either side closes or fails.
func (rc *relayConn) run(ctx context.Context) {
	cbr := relayReaders.Get().(*bufio.Reader)
	cbr.Reset(rc.client)
	rc.cr = splicer{r: cbr}
	h2 := false
	defer func() {
		rc.end()
		rc.wg.Wait()
		if !h2 {
			// (The HTTP/2 server's reader may outlive ServeConn.)
			cbr.Reset(nil)
			relayReaders.Put(cbr)
		}
		if rc.or.r != nil {
			rc.or.r.Reset(nil)
			relayReaders.Put(rc.or.r)
		}
	}()
	first := true
	for {
		h, err := rc.nextHead()
		if err != nil {
			switch {
			case err == io.EOF:
				rc.clientDone()
			case errors.Is(err, errHeadTooLarge):
				rc.refuse(&headError{status: http.StatusRequestHeaderFieldsTooLarge, reason: "request header too large"})
			}
			return
		}
		if first && string(h) == h2Preface {
			h2 = true
			rc.serveHTTP2(ctx, cbr)
			return
		}
		if first && string(h) == wire.EdgeReportPreface && rc.fromEdge() {
			cbr.Discard(len(h))
			rc.readEdgeReports(cbr)
			return
		}
		first = false
		rh, herr := parseRequestHead(h)
		if herr != nil {
			rc.refuse(herr)
			return
		}
		ex := rc.x.newExchange(h, &rh)
		counted := false
		if rc.cr.w != nil {
			// Whether the app closed its idle connection is decided
			// in the same critical section that counts this request:
			// either the response goroutine saw the close first and
			// nothing of this request was written (dial again, for
			// any method), or this request counts as sent and a close
			// before its response is answered with a clear 502.
			rc.mu.Lock()
			gone := rc.appGone
			if !gone {
				rc.outstanding++
				counted = true
			}
			rc.mu.Unlock()
			if gone {
				rc.dropApp()
			}
		}
		if rc.cr.w == nil {
			ok, keep := rc.dialApp(ctx, h, &rh, ex)
			if !ok {
				if !keep {
					return
				}
				continue
			}
		}
		if !counted {
			rc.mu.Lock()
			rc.outstanding++
			rc.mu.Unlock()
		}
		select {
		case rc.queue <- ex:
		case <-rc.done:
			return
		}
		if ex.cap != nil {
			rc.cr.tap = &ex.cap.req
		}
		if err := rc.cr.takeHead(h); err != nil {
			return
		}
		if err := rc.cr.copyBody(rh.framing, rh.length, true); err != nil {
			rc.x.logger.Debug("expose relay: request body", "port", rc.x.port, "err", err)
			return
		}
		if err := rc.cr.flush(); err != nil {
			return
		}
		rc.cr.tap = nil
		if ex.answered != nil {
			// The connection to the app is not used again after a
			// HEAD (see respond): the next request waits for its
			// answer, then goes on a new one.
			select {
			case <-ex.answered:
			case <-rc.done:
				return
			}
		}
		if ex.kind.mayUpgrade {
			select {
			case sw := <-ex.switched:
				if sw {
					rc.cr.copyAll()
					return
				}
			case <-rc.done:
				return
			}
		}
	}
}

// nextHead waits for the next request head from the client. It skips
// empty lines before it (RFC 9112 section 2.2) and bounds the time the
// rest of a head may take once its first byte is in.
func (rc *relayConn) nextHead() ([]byte, error) {
	b, err := rc.cr.fill(1)
	if len(b) == 0 {
		return nil, err
	}
	if b[0] != '\r' && headEnd(b, 0) >= 0 {
		return rc.cr.readHead() // the whole head is in: the common case
	}
	rc.client.SetReadDeadline(time.Now().Add(relayHeadTimeout))
	defer rc.client.SetReadDeadline(time.Time{})
	for {
		b, err := rc.cr.fill(2)
		if len(b) < 2 || b[0] != '\r' || b[1] != '\n' {
			if len(b) == 0 {
				return nil, err
			}
			return rc.cr.readHead()
		}
		if err := rc.cr.drop(2); err != nil {
			return nil, err
		}
	}
}

// dropApp forgets the connection to the app, which the app closed between
// responses, once the response goroutine has ended.
func (rc *relayConn) dropApp() {
	rc.wg.Wait()
	rc.mu.Lock()
	rc.origin, rc.appGone = nil, false
	rc.mu.Unlock()
	rc.or.r.Reset(nil)
	relayReaders.Put(rc.or.r)
	rc.or = splicer{}
	rc.cr.w = nil
}

// dialApp connects to the app for the first request and starts the
// response goroutine. When the app cannot be reached it answers the
// request with 502 itself (ok false) and says whether the connection may
// carry another request (keep).
func (rc *relayConn) dialApp(ctx context.Context, h []byte, rh *reqHead, ex *exchange) (ok, keep bool) {
	c, err := rc.x.dial(ctx)
	if err == nil {
		rc.mu.Lock()
		select {
		case <-rc.done:
			rc.mu.Unlock()
			c.Close()
			return false, false
		default:
		}
		rc.origin = c
		rc.mu.Unlock()
		obr := relayReaders.Get().(*bufio.Reader)
		obr.Reset(c)
		rc.or = splicer{r: obr, w: rc.client}
		rc.cr.w = c
		rc.queue = make(chan *exchange, maxPipelined)
		rc.wg.Go(rc.respond)
		return true, true
	}
	if ex.cap != nil {
		ex.cap.req.write(h)
		ex.cap.by = ByBeam
	}
	if err := rc.cr.dropHead(h); err != nil {
		return false, false
	}
	// A request with a body (whose client may be waiting for 100
	// Continue) gets its answer and the connection closes.
	keep = !rh.close && rh.framing == bodyNone
	var resp []byte
	if errors.Is(err, syscall.ECONNREFUSED) {
		resp = localResponse(http.StatusBadGateway, "text/html; charset=utf-8", nothingListeningHTML(rc.x.port), ex.kind.head, !keep)
	} else {
		resp = localResponse(http.StatusBadGateway, "text/plain; charset=utf-8", appUnreachable(err)+"\n", ex.kind.head, !keep)
	}
	if _, err := rc.client.Write(resp); err != nil {
		keep = false
	}
	ex.localAnswer(resp)
	rc.x.logDone(ex, http.StatusBadGateway)
	return false, keep
}

// clientDone handles the client's EOF between requests: the connection
// ends once the app has answered what it was sent.
func (rc *relayConn) clientDone() {
	rc.mu.Lock()
	rc.clientEOF = true
	n, o := rc.outstanding, rc.origin
	rc.mu.Unlock()
	if n == 0 || o == nil {
		return
	}
	closeWrite(o)
	<-rc.done
}

// refuse answers a request the relay will not forward and ends the
// connection, after the responses to requests before it.
func (rc *relayConn) refuse(e *headError) {
	resp := localResponse(e.status, "text/plain; charset=utf-8", strconv.Itoa(e.status)+" "+http.StatusText(e.status)+": "+e.reason+"\n", false, true)
	rc.mu.Lock()
	if rc.outstanding > 0 {
		rc.final = resp
		rc.mu.Unlock()
		<-rc.done
		return
	}
	rc.mu.Unlock()
	if _, err := rc.client.Write(resp); err != nil {
		return
	}
	// Close gently, like net/http: a close with unread input (the rest
	// of a refused head or body) resets the connection, and the reset
	// can destroy the answer before the client reads it.
	closeWrite(rc.client)
	rc.client.SetReadDeadline(time.Now().Add(lingerTimeout))
	rc.cr.r.Discard(rc.cr.r.Buffered())
	io.CopyN(io.Discard, rc.client, lingerBytes)
}

// serveHTTP2 hands an HTTP/2 connection (its preface still unread in br)
// to the HTTP/2 server.
func (rc *relayConn) serveHTTP2(ctx context.Context, br *bufio.Reader) {
	rc.x.h2.ServeConn(&bufferedConn{Conn: rc.client, r: br}, &http2.ServeConnOpts{
		Context: ctx,
		Handler: rc.x.h2Handler,
	})
}

// spliceRaw copies bytes both ways between the client and the app, for a
// tcp route whose upstream is not the device's own port, and for a peer
// that is not an edge (exposeProxy.peerToHost). It ends both connections
// once the app is done sending. hdr, if not empty, goes to the app
// before the client's bytes (peerProxyHeader).
func (rc *relayConn) spliceRaw(ctx context.Context, hdr []byte) {
	start := time.Now()
	var in, out int64
	var dialErr error
	defer func() {
		rc.end()
		rc.wg.Wait()
		if rc.x.captureLimit() > 0 && rc.x.record != nil {
			x := &Exchange{Kind: "tcp", Start: start, Duration: time.Since(start), Client: addrString(rc.remote),
				Port: rc.x.port, AnsweredBy: ByApp, Size: out, BytesIn: in}
			if dialErr != nil {
				x.AnsweredBy, x.Error = ByBeam, dialErr.Error()
			}
			rc.x.record(x)
		}
	}()
	o, err := rc.x.dial(ctx)
	if err != nil {
		dialErr = err
		rc.x.logger.Debug("expose relay: dial upstream", "port", rc.x.port, "err", err)
		return
	}
	rc.mu.Lock()
	select {
	case <-rc.done:
		rc.mu.Unlock()
		o.Close()
		return
	default:
	}
	rc.origin = o
	rc.mu.Unlock()
	if len(hdr) > 0 {
		if _, err := o.Write(hdr); err != nil {
			rc.x.logger.Debug("expose relay: write PROXY header", "port", rc.x.port, "err", err)
			return
		}
	}
	rc.wg.Go(func() {
		in, _ = streamcopy.Copy(o, rc.client)
		closeWrite(o)
	})
	out, _ = streamcopy.Copy(rc.client, o)
}

// fromEdge reports whether the client is an edge node.
func (rc *relayConn) fromEdge() bool {
	edges := rc.x.edges.Load()
	return rc.remote.IsValid() && edges != nil && slices.Contains(*edges, rc.remote.Addr().Unmap())
}

// readEdgeReports publishes the edge's refused requests (JSON lines of
// wire.EdgeRefusal) to the request log until the edge closes.
func (rc *relayConn) readEdgeReports(br *bufio.Reader) {
	for {
		line, err := readLine(br, wire.MaxEdgeRefusalLine)
		if err != nil {
			return
		}
		var r wire.EdgeRefusal
		if err := json.Unmarshal(line, &r); err != nil {
			rc.x.logger.Debug("expose relay: edge report", "err", err)
			return
		}
		if rc.x.captureLimit() > 0 && rc.x.record != nil {
			rc.x.record(&Exchange{
				Kind: "http", Start: r.Time, Method: r.Method, Host: r.Host, Path: r.Path, Status: r.Status,
				Client: r.Client, Port: rc.x.port, AnsweredBy: ByEdge, dial: rc.x.dial,
			})
		}
		if !rc.x.watching() {
			continue
		}
		rc.x.publish(apitype.RequestLog{
			Time: r.Time, Host: r.Host, Method: r.Method, Path: r.Path, Status: r.Status,
			Port: rc.x.port, Client: r.Client, Edge: true,
		})
	}
}

// readLine reads one line of at most max bytes, without its newline.
func readLine(br *bufio.Reader, max int) ([]byte, error) {
	var line []byte
	for {
		b, err := br.ReadSlice('\n')
		line = append(line, b...)
		if len(line) > max {
			return nil, errors.New("line too long")
		}
		if err == nil {
			return bytes.TrimRight(line, "\r\n"), nil
		}
		if err != bufio.ErrBufferFull {
			return nil, err
		}
	}
}

// bufferedConn reads through r, which holds bytes already read from Conn.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// respond is the response goroutine: it reads the app's responses, in the
// order of the requests in rc.queue, and writes them to the client.
func (rc *relayConn) respond() {
	ended := true
	defer func() {
		if ended {
			rc.end()
		}
	}()
	for {
		b, err := rc.or.fill(1)
		if len(b) == 0 {
			ended = !rc.appClosed(err)
			return
		}
		var ex *exchange
		select {
		case ex = <-rc.queue:
		default:
			rc.x.logger.Debug("expose relay: app sent bytes nobody asked for", "port", rc.x.port)
			return
		}
		if ex.cap != nil {
			rc.or.tap = &ex.cap.resp
		}
		var rh respHead
		for {
			h, err := rc.or.readHead()
			if err == nil {
				rh, err = parseResponseHead(h, ex.kind)
			}
			if err != nil {
				rc.or.tap = nil
				rc.badGateway(ex, err)
				return
			}
			if ex.cap != nil {
				if ex.cap.respAt.IsZero() {
					ex.cap.respAt = time.Now()
				}
				ex.cap.respHead += len(h)
				ex.cap.resp.grow(len(h))
			}
			if err := rc.or.takeHead(h); err != nil {
				return
			}
			if rh.status >= 200 || rh.framing == bodyTunnel {
				break
			}
			// An interim response (100 Continue): the client may be
			// waiting for it.
			if err := rc.or.flush(); err != nil {
				return
			}
		}
		if rh.framing == bodyTunnel {
			if err := rc.or.flush(); err != nil {
				return
			}
			rc.or.tap = nil
			ex.switched <- true
			rc.or.copyAll()
			rc.x.logDone(ex, rh.status)
			return
		}
		if ex.switched != nil {
			ex.switched <- false
		}
		// After a response whose end the message does not mark (to a
		// HEAD, a 204, a 304), an app may still send a body (do_HEAD =
		// do_GET), which would pass for the response to the next
		// request: the connection to the app is not used again. With
		// only this request on it, the next request dials a new one
		// (as when the app closes between requests); with more already
		// sent on it (pipelined behind a 204 or 304; the run loop holds
		// requests behind a HEAD), the client's connection ends after
		// this response.
		unmarked := ex.kind.head || rh.status == http.StatusNoContent || rh.status == http.StatusNotModified
		reopen := false
		if unmarked {
			rc.mu.Lock()
			if rc.outstanding == 1 && !rc.clientEOF && rc.final == nil {
				rc.appGone, reopen = true, true
			}
			rc.mu.Unlock()
		}
		err = rc.or.copyBody(rh.framing, rh.length, false)
		if ferr := rc.or.flush(); err == nil {
			err = ferr
		}
		rc.or.tap = nil
		rc.x.logDone(ex, rh.status)
		if err != nil || rh.framing == bodyUntilClose {
			if err != nil {
				rc.x.logger.Debug("expose relay: response body", "port", rc.x.port, "err", err)
			}
			return
		}
		rc.mu.Lock()
		rc.outstanding--
		last := rc.outstanding == 0 && (rc.clientEOF || rc.final != nil)
		final := rc.final
		o := rc.origin
		rc.mu.Unlock()
		if ex.answered != nil {
			close(ex.answered)
		}
		if last {
			if final != nil {
				rc.client.Write(final)
			}
			return
		}
		if unmarked {
			if !reopen {
				return // ends the connection (see above)
			}
			o.Close()
			ended = false
			return
		}
	}
}

// appClosed handles the app's close (or failure) of its connection
// between responses. With no request sent on it, the app merely closed
// an idle keep-alive connection: the client's connection stays, and the
// next request goes on a new connection to the app (appClosed reports
// true). Otherwise the app closed as a request arrived, and may have
// read it. An idempotent request without a body gets no answer, so the
// client may send it again (Go's HTTP client, the edge's, does on a
// reused connection); any other one, which sending again could repeat
// (a POST), is answered with a 502 that says so. Either way the
// connection ends (false).
func (rc *relayConn) appClosed(err error) (keep bool) {
	select {
	case <-rc.done:
		return false
	default:
	}
	rc.mu.Lock()
	if rc.outstanding == 0 && !rc.clientEOF && rc.final == nil {
		rc.appGone = true
		o := rc.origin
		rc.mu.Unlock()
		o.Close()
		return true
	}
	rc.mu.Unlock()
	var ex *exchange
	select {
	case ex = <-rc.queue:
	case <-rc.done:
		return false
	}
	if ex.replay {
		// Closing without an answer lets the client (the edge's
		// HTTP client) send it again on another connection.
		return false
	}
	if rc.or.flush() != nil {
		return false
	}
	reason := "closed its connection"
	if err != nil && err != io.EOF {
		reason = "failed its connection (" + err.Error() + ")"
	}
	rc.x.logger.Debug("expose relay: app closed with a request outstanding", "port", rc.x.port, "err", err)
	resp := localResponse(http.StatusBadGateway, "text/plain; charset=utf-8",
		"beam: the device's app "+reason+" as this request arrived, without answering. The request may have reached the app, so it was not sent again.\n", ex.kind.head, true)
	rc.client.Write(resp)
	ex.localAnswer(resp)
	rc.x.logDone(ex, http.StatusBadGateway)
	return false
}

// badGateway answers a request whose response from the app was malformed
// (nothing of it was forwarded yet), then the connection ends.
func (rc *relayConn) badGateway(ex *exchange, err error) {
	rc.x.logger.Debug("expose relay: bad response from the app", "port", rc.x.port, "err", err)
	if rc.or.flush() != nil {
		return
	}
	resp := localResponse(http.StatusBadGateway, "text/plain; charset=utf-8",
		"beam: the device's app sent a malformed response: "+err.Error()+"\n", ex.kind.head, true)
	rc.client.Write(resp)
	ex.localAnswer(resp)
	rc.x.logDone(ex, http.StatusBadGateway)
}

// idempotent reports whether method is one RFC 9110 section 9.2.2 lets a
// client repeat, minus PUT and DELETE, which Go's HTTP client does not
// send again on its own either.
func idempotent(method []byte) bool {
	switch string(method) {
	case "GET", "HEAD", "OPTIONS", "TRACE":
		return true
	}
	return false
}

// appUnreachable is the 502 text when dialing the app fails for a reason
// other than nothing listening.
func appUnreachable(err error) string {
	return "beam: the device could not reach its app: " + err.Error()
}

// logDone publishes the request log line of a finished exchange, and
// hands its capture, if any, to the inspector.
func (x *exposeRelay) logDone(ex *exchange, status int) {
	if ex.log == nil {
		return
	}
	l := *ex.log
	l.Status = status
	l.Duration = time.Since(l.Time)
	x.publish(l)
	if ex.cap != nil && x.record != nil {
		x.record(ex.cap.exchange(l, x.dial))
	}
}

// captureLimit returns the inspector's body limit, 0 if nobody inspects.
func (x *exposeRelay) captureLimit() int {
	if x.capture == nil {
		return 0
	}
	return x.capture()
}

// localAnswer captures resp, which the relay answered itself instead of
// the app (whose partial response, if any, is dropped from the capture).
func (ex *exchange) localAnswer(resp []byte) {
	if ex.cap == nil {
		return
	}
	c := ex.cap
	c.by = ByBeam
	c.resp.mu.Lock()
	c.resp.b, c.resp.total = nil, 0
	c.respHead = bytes.Index(resp, []byte("\r\n\r\n")) + 4
	c.resp.limit = len(resp)
	c.resp.mu.Unlock()
	c.resp.write(resp)
}

// firstAddr returns the first element of an X-Forwarded-For list.
func firstAddr(b []byte) []byte {
	if i := bytes.IndexByte(b, ','); i >= 0 {
		b = b[:i]
	}
	return trimOWS(b)
}

// localResponse formats a complete response the relay answers itself.
func localResponse(status int, contentType, body string, head, close bool) []byte {
	b := make([]byte, 0, 256+len(body))
	b = fmt.Appendf(b, "HTTP/1.1 %d %s\r\n", status, http.StatusText(status))
	b = append(b, "Content-Type: "...)
	b = append(b, contentType...)
	b = append(b, "\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nDate: "...)
	b = time.Now().UTC().AppendFormat(b, http.TimeFormat)
	b = append(b, "\r\nContent-Length: "...)
	b = strconv.AppendInt(b, int64(len(body)), 10)
	if close {
		b = append(b, "\r\nConnection: close"...)
	}
	b = append(b, "\r\n\r\n"...)
	if !head {
		b = append(b, body...)
	}
	return b
}
