package edge

import (
	"bufio"
	"context"
	"errors"
	"io"
	"math"
	"mime"
	"net"
	"net/http"
	"net/textproto"
	"net/url"
	"strings"
	"time"

	"beam.dev/beam/internal/copybuf"
)

// This file is the edge's lean HTTP/1.1 path for the plain request: a
// GET or HEAD without a body, on a route whose policy edits no header,
// that asks for no protocol switch. It writes the request head straight
// to a kept-alive connection of the target and reads the response on the
// handler's own goroutine, instead of going through httputil.ReverseProxy
// and http.Transport, which clone the request and its header and hand
// every exchange to a writer and a reader goroutine of the connection and
// back (three goroutine switches a request, and the allocations that go
// with them). What reaches the device and the client is what the reverse
// proxy sends: the same header, minus the hop-by-hop fields, plus
// X-Forwarded-For, -Host, -Proto and X-Real-Ip. Everything else (request
// bodies, upgrades, gRPC, header rules, CORS, sign-in) takes the reverse
// proxy.

const (
	// maxIdlePerTarget caps the idle connections kept to one target,
	// like the transport's MaxIdleConnsPerHost.
	maxIdlePerTarget = 512
	// idleConnTimeout drops a connection idle for longer, like the
	// transport's IdleConnTimeout.
	idleConnTimeout = 90 * time.Second
	// maxResponseHead caps a response head from a device, like the
	// transport's MaxResponseHeaderBytes.
	maxResponseHead = 1 << 20
	// max1xx caps the informational responses before the final one, as
	// the transport does.
	max1xx = 5
)

// upstream is a kept-alive HTTP/1.1 connection to a target.
type upstream struct {
	c         *targetConn
	lr        io.LimitedReader // under br: caps the response head
	br        *bufio.Reader
	bw        *bufio.Writer
	idleSince time.Time
	body      io.LimitedReader // a response body on the lean path (plainhead.go)
	// closeConn closes c; made once, so that watching each request's
	// context for the client going away does not allocate it again.
	closeConn func()
}

// plainRequest reports whether r can take the lean path (see above).
func plainRequest(r *http.Request, st *reqState) bool {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return false
	}
	if r.ContentLength != 0 || len(r.TransferEncoding) > 0 || r.URL.Opaque != "" {
		return false
	}
	p := st.rt.policy
	if st.who != nil || len(p.users) > 0 || len(p.CORSOrigins) > 0 ||
		len(p.RequestHeaderAdd) > 0 || len(p.RequestHeaderRemove) > 0 ||
		len(p.ResponseHeaderAdd) > 0 || len(p.ResponseHeaderRemove) > 0 {
		return false
	}
	h := r.Header
	return h["Upgrade"] == nil && h["Expect"] == nil && !strings.HasPrefix(h.Get("Content-Type"), "application/grpc")
}

// getUpstream returns an idle connection to t, or dials one (always
// with fresh).
func (e *Edge) getUpstream(ctx context.Context, t *target, fresh bool) (u *upstream, reused bool, err error) {
	now := time.Now()
	t.mu.Lock()
	for len(t.idle) > 0 && !fresh {
		u = t.idle[len(t.idle)-1]
		t.idle[len(t.idle)-1] = nil
		t.idle = t.idle[:len(t.idle)-1]
		if !u.c.closed.Load() && now.Sub(u.idleSince) < idleConnTimeout {
			t.mu.Unlock()
			return u, true, nil
		}
		t.mu.Unlock()
		u.c.Close()
		t.mu.Lock()
	}
	t.mu.Unlock()
	c, err := e.dialTarget(ctx, "tcp", t)
	if err != nil {
		return nil, false, err
	}
	// (A closure over the result u would move it to the heap on every
	// call, reused connections included.)
	nu := &upstream{c: c.(*targetConn)}
	nu.lr.R = nu.c
	nu.br = bufio.NewReader(&nu.lr)
	nu.bw = bufio.NewWriter(nu.c)
	nu.closeConn = func() { nu.c.Close() }
	return nu, false, nil
}

// putUpstream keeps u as an idle connection of t, or closes it.
func (t *target) putUpstream(u *upstream) {
	u.idleSince = time.Now()
	t.mu.Lock()
	if t.removed.Load() || len(t.idle) >= maxIdlePerTarget || u.c.closed.Load() {
		t.mu.Unlock()
		u.c.Close()
		return
	}
	t.idle = append(t.idle, u)
	t.mu.Unlock()
}

// pruneIdle closes the connections of t idle since before cutoff.
func (t *target) pruneIdle(cutoff time.Time) {
	t.mu.Lock()
	var old []*upstream
	keep := t.idle[:0]
	for _, u := range t.idle {
		if u.idleSince.Before(cutoff) {
			old = append(old, u)
		} else {
			keep = append(keep, u)
		}
	}
	clear(t.idle[len(keep):])
	t.idle = keep
	t.mu.Unlock()
	for _, u := range old {
		u.c.Close()
	}
}

// errPlainRetry is an exchange on a reused connection that failed before
// any byte of a response came: the device closed the connection while it
// was idle, and the request may go again on a new one.
var errPlainRetry = errors.New("edge: kept-alive connection closed by the device")

// errClientGone is an exchange the client went away from.
var errClientGone = errors.New("edge: the client went away")

// proxyPlain proxies r, a plain request (plainRequest), to st.target.
// A request that fails on a reused connection before any byte of a
// response came goes once more, on a new connection, and no more: the
// device also closes without an answer on purpose, when its app closed
// as the request arrived (it may have read it), and trying every idle
// connection in turn would hand the app one request as many times.
func (e *Edge) proxyPlain(w http.ResponseWriter, r *http.Request, st *reqState) {
	for fresh := false; ; fresh = true {
		u, reused, err := e.getUpstream(r.Context(), st.target, fresh)
		if err != nil {
			e.proxyFailed(w, r, st, err)
			return
		}
		err = e.exchangePlain(w, r, st, u, reused)
		if err == nil {
			return
		}
		u.c.Close()
		if err != errPlainRetry || fresh {
			e.proxyFailed(w, r, st, err)
			return
		}
	}
}

// exchangePlain sends r on u and writes the response to w. It returns
// errPlainRetry, or an error only while nothing has been written to w. It
// keeps u for the next request when the exchange leaves it clean, and
// closes it otherwise, except on an error (the caller closes it then).
func (e *Edge) exchangePlain(w http.ResponseWriter, r *http.Request, st *reqState, u *upstream, reused bool) error {
	// A client that goes away ends the exchange at once.
	if !st.watchClient(u) {
		return errClientGone
	}
	defer st.unwatchClient(u)
	writeRequestHead(u.bw, r, st)
	if err := u.bw.Flush(); err != nil {
		if reused {
			return errPlainRetry
		}
		return err
	}
	u.lr.N = maxResponseHead
	if _, err := u.br.Peek(1); err != nil {
		if reused && u.lr.N == maxResponseHead && !st.clientGone() {
			return errPlainRetry // not a byte came back
		}
		return err
	}
	if ph, ok := readPlainHead(u.br, w.Header(), r.Method == http.MethodHead); ok {
		u.lr.N = math.MaxInt64
		flush := streamedType(w.Header().Get("Content-Type"))
		w.WriteHeader(ph.status)
		if ph.length > 0 {
			u.body = io.LimitedReader{R: u.br, N: ph.length}
			err := copyBody(w, &u.body, flush)
			if err == nil && u.body.N > 0 {
				err = io.ErrUnexpectedEOF
			}
			if err != nil {
				e.abortBody(r, st, u, err)
			}
		}
		if !st.unwatchClient(u) || ph.close || u.br.Buffered() > 0 {
			u.c.Close()
			return nil
		}
		st.target.putUpstream(u)
		return nil
	}
	var resp *http.Response
	for n := 0; ; n++ {
		var err error
		resp, err = http.ReadResponse(u.br, r)
		if err != nil {
			if reused && n == 0 && u.lr.N == maxResponseHead && !st.clientGone() {
				return errPlainRetry // not a byte came back
			}
			return err
		}
		code := resp.StatusCode
		if code >= 200 || code == http.StatusSwitchingProtocols {
			break
		}
		if n == max1xx {
			return errors.New("edge: too many 1xx informational responses")
		}
		if code == http.StatusContinue {
			continue // nobody asked for it
		}
		// Other informational responses (103 Early Hints) go to the
		// client as the reverse proxy sends them.
		h := w.Header()
		for k, vv := range resp.Header {
			h[k] = vv
		}
		w.WriteHeader(code)
		clear(h)
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		return errors.New("edge: 101 Switching Protocols to a request that asked for no switch")
	}
	u.lr.N = math.MaxInt64
	removeHopHeaders(resp.Header)
	h := w.Header()
	for k, vv := range resp.Header {
		if h[k] == nil {
			h[k] = vv
		} else {
			h[k] = append(h[k], vv...)
		}
	}
	announced := len(resp.Trailer)
	if announced > 0 {
		keys := make([]string, 0, announced)
		for k := range resp.Trailer {
			keys = append(keys, k)
		}
		h.Add("Trailer", strings.Join(keys, ", "))
	}
	w.WriteHeader(resp.StatusCode)
	if err := copyBody(w, resp.Body, resp.ContentLength == -1 || streamedType(resp.Header.Get("Content-Type"))); err != nil {
		e.abortBody(r, st, u, err)
	}
	if len(resp.Trailer) > 0 {
		if announced == 0 {
			for k, vv := range resp.Trailer {
				h[http.TrailerPrefix+k] = vv
			}
		} else {
			for k, vv := range resp.Trailer {
				h[k] = vv
			}
		}
	}
	// A response without a length ended with the connection (Close);
	// bytes after the response are not a response to anything.
	if !st.unwatchClient(u) || resp.Close || u.br.Buffered() > 0 {
		u.c.Close()
		return nil
	}
	st.target.putUpstream(u)
	return nil
}

// abortBody ends the response whose body from u failed with err: as the
// reverse proxy does, the client must see it cut short, not complete.
func (e *Edge) abortBody(r *http.Request, st *reqState, u *upstream, err error) {
	u.c.Close()
	if !st.clientGone() {
		e.log.Debug("response body", "host", r.Host, "target", st.target.addr, "err", err)
	}
	panic(http.ErrAbortHandler)
}

// streamedType reports whether the reverse proxy would flush every write
// of a body of Content-Type ct (server-sent events; it also flushes
// bodies of unknown length).
func streamedType(ct string) bool {
	const sse = "text/event-stream"
	if len(ct) < len(sse) || !strings.EqualFold(ct[:len(sse)], sse) {
		return false // spares ParseMediaType's allocations
	}
	ct, _, _ = mime.ParseMediaType(ct)
	return ct == sse
}

// copyBody copies a response body to w, flushing after each write if
// flush (a body of unknown length: server-sent events and other streams).
func copyBody(w http.ResponseWriter, body io.Reader, flush bool) error {
	buf := copybuf.Pool.Get()
	defer copybuf.Pool.Put(buf)
	var rc *http.ResponseController
	if flush {
		rc = http.NewResponseController(w)
	}
	for {
		n, rerr := body.Read(buf)
		if n > 0 {
			if _, err := w.Write(buf[:n]); err != nil {
				return err
			}
			if rc != nil {
				rc.Flush()
			}
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			return rerr
		}
	}
}

// hopHeaderList are the hop-by-hop header fields (RFC 9110 section
// 7.6.1) that a proxy does not forward, as httputil.ReverseProxy lists
// them; hopHeaders is the same as a set.
var (
	hopHeaderList = []string{
		"Connection",
		"Proxy-Connection",
		"Keep-Alive",
		"Proxy-Authenticate",
		"Proxy-Authorization",
		"Te",
		"Trailer",
		"Transfer-Encoding",
		"Upgrade",
	}
	hopHeaders = func() map[string]bool {
		m := map[string]bool{}
		for _, k := range hopHeaderList {
			m[k] = true
		}
		return m
	}()
)

// removeHopHeaders removes the hop-by-hop fields from h, and those the
// Connection field names.
func removeHopHeaders(h http.Header) {
	for _, f := range h["Connection"] {
		for sf := range strings.SplitSeq(f, ",") {
			if sf = textproto.TrimString(sf); sf != "" {
				delete(h, http.CanonicalHeaderKey(sf))
			}
		}
	}
	for _, k := range hopHeaderList {
		delete(h, k)
	}
}

// edgeSetHeaders are request fields the edge sets itself (or strips): a
// client's own are never forwarded.
var edgeSetHeaders = map[string]bool{
	"Forwarded":         true,
	"X-Forwarded-For":   true,
	"X-Forwarded-Host":  true,
	"X-Forwarded-Proto": true,
	"X-Real-Ip":         true,
	SignInUserHeader:    true,
	SignInEmailHeader:   true,
	"Content-Length":    true,
	"Host":              true,
}

// writeRequestHead writes the head of r as the reverse proxy (rewrite)
// would send it to the device: the client's fields minus the hop-by-hop
// ones and those with an underscore in the name (dropUnderscored), the
// forwarding fields the edge sets, no body.
func writeRequestHead(bw *bufio.Writer, r *http.Request, st *reqState) {
	bw.WriteString(r.Method)
	bw.WriteByte(' ')
	if q := cleanQuery(r.URL.RawQuery); q != r.URL.RawQuery {
		u := *r.URL
		u.RawQuery = q
		bw.WriteString(u.RequestURI())
	} else {
		bw.WriteString(r.URL.RequestURI())
	}
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	bw.WriteString(r.Host)
	bw.WriteString("\r\n")
	var dropped map[string]bool // the fields Connection names
	for _, f := range r.Header["Connection"] {
		for sf := range strings.SplitSeq(f, ",") {
			if sf = textproto.TrimString(sf); sf != "" {
				if dropped == nil {
					dropped = map[string]bool{}
				}
				dropped[http.CanonicalHeaderKey(sf)] = true
			}
		}
	}
	for k, vv := range r.Header {
		if hopHeaders[k] || edgeSetHeaders[k] || dropped[k] || strings.IndexByte(k, '_') >= 0 {
			if k == "Te" && teTrailers(vv) {
				bw.WriteString("Te: trailers\r\n")
			}
			continue
		}
		for _, v := range vv {
			bw.WriteString(k)
			bw.WriteString(": ")
			bw.WriteString(v)
			bw.WriteString("\r\n")
		}
	}
	if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		bw.WriteString("X-Forwarded-For: ")
		bw.WriteString(host)
		bw.WriteString("\r\n")
	}
	bw.WriteString("X-Forwarded-Host: ")
	bw.WriteString(r.Host)
	if r.TLS == nil {
		bw.WriteString("\r\nX-Forwarded-Proto: http\r\nX-Real-Ip: ")
	} else {
		bw.WriteString("\r\nX-Forwarded-Proto: https\r\nX-Real-Ip: ")
	}
	if st.client.IsValid() {
		bw.Write(st.client.AppendTo(bw.AvailableBuffer()))
	} else {
		bw.WriteString(st.client.String())
	}
	bw.WriteString("\r\n\r\n")
}

// teTrailers reports whether a TE field asks for trailers, which the
// reverse proxy forwards (gRPC needs them).
func teTrailers(vv []string) bool {
	for _, v := range vv {
		for sf := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(textproto.TrimString(sf), "trailers") {
				return true
			}
		}
	}
	return false
}

// cleanQuery drops the query parameters that url.ParseQuery cannot parse
// (a semicolon, a bad escape), as the reverse proxy does: the device
// never sees a query that the edge and it could split differently.
func cleanQuery(q string) string {
	for i := 0; i < len(q); {
		switch q[i] {
		case ';':
			v, _ := url.ParseQuery(q)
			return v.Encode()
		case '%':
			if i+2 >= len(q) || !ishex(q[i+1]) || !ishex(q[i+2]) {
				v, _ := url.ParseQuery(q)
				return v.Encode()
			}
			i += 3
		default:
			i++
		}
	}
	return q
}

func ishex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}
