package edge

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"html"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"beam.dev/beam/internal/bodyrate"
	"beam.dev/beam/internal/copybuf"
)

// reqState travels with a proxied request through the ReverseProxy
// callbacks.
type reqState struct {
	in       *http.Request
	rt       *route
	client   netip.Addr
	target   *target
	who      *Identity // the signed-in person on a route with Policy.SignIn
	canRetry bool      // a failed dial may be retried on another member
	retry    bool      // set by the error handler: try another member
	// bodyErr is the first error reading the client's request body
	// (clientBody); the transport's writer goroutine sets it.
	bodyErr atomic.Pointer[error]
	// gone watches the client of an HTTP/1 request for the lean path;
	// nil for HTTP/2, where stopWatch stops the context's AfterFunc.
	gone      *goneWatch
	stopWatch func() bool
}

// watchClient closes u when the client goes away, until unwatchClient.
// It reports false if the client is gone already.
func (st *reqState) watchClient(u *upstream) bool {
	if st.gone != nil {
		return st.gone.watch(u)
	}
	st.stopWatch = context.AfterFunc(st.in.Context(), u.closeConn)
	return true
}

// unwatchClient stops closing u when the client goes away, and reports
// whether the client is still there: false if its going closed u.
func (st *reqState) unwatchClient(u *upstream) bool {
	if st.gone != nil {
		return st.gone.unwatch(u)
	}
	return st.stopWatch()
}

// clientGone reports whether the client went away.
func (st *reqState) clientGone() bool {
	return st.in.Context().Err() != nil || st.gone != nil && st.gone.gone.Load()
}

// clientBody notes in st the first error reading a client's request body
// (a malformed chunk, a body too slow), so that a round trip it ends is
// answered as the client's fault, not the device's.
type clientBody struct {
	io.ReadCloser
	st *reqState
}

func (b *clientBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil && err != io.EOF {
		b.st.bodyErr.CompareAndSwap(nil, &err)
	}
	return n, err
}

type ctxKey int

const (
	stateKey ctxKey = iota // *reqState
	connKey                // net.Conn given to http.Server (for *h1Conn)
)

func (e *Edge) initProxy() {
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		ap, err := netip.ParseAddrPort(addr)
		if err != nil {
			return nil, fmt.Errorf("edge: dial %q: %w", addr, err)
		}
		t := e.routes.Load().targets[ap]
		if t == nil {
			return nil, fmt.Errorf("edge: dial %v: not a target of any route", ap)
		}
		return e.dialTarget(ctx, "tcp", t)
	}
	e.h1 = &http.Transport{
		DialContext: dial,
		// Keep a connection to the device for each request under way:
		// past the idle cap, every request beyond it opened (and the
		// device then dialed the app for) a connection of its own. With
		// 128 clients a cap of 64 cost 48% more edge CPU per request.
		// Idle ones go after IdleConnTimeout.
		MaxIdleConnsPerHost:    512,
		IdleConnTimeout:        90 * time.Second,
		ExpectContinueTimeout:  time.Second,
		DisableCompression:     true,
		MaxResponseHeaderBytes: 1 << 20,
	}
	e.h2c = &http.Transport{
		DialContext:        dial,
		IdleConnTimeout:    90 * time.Second,
		DisableCompression: true,
		Protocols:          new(http.Protocols),
	}
	e.h2c.Protocols.SetUnencryptedHTTP2(true)
	e.proxy = &httputil.ReverseProxy{
		Rewrite:   e.rewrite,
		Transport: overlayTransport{e},
		// FlushInterval stays 0: ReverseProxy flushes every write of
		// server-sent events and of responses without a Content-Length
		// by itself. A negative interval would flush the header alone,
		// from a timer goroutine, before every body: two writes to the
		// client where one does.
		ErrorLog:       slog.NewLogLogger(e.log.Handler(), slog.LevelDebug),
		ErrorHandler:   e.proxyError,
		ModifyResponse: e.modifyResponse,
		// Without a pool ReverseProxy allocates (and zeroes) a 32 KiB
		// copy buffer for every response body.
		BufferPool: copybuf.Pool,
	}
}

// overlayTransport sends gRPC as h2c (prior knowledge) and everything else
// as HTTP/1.1 toward the device.
type overlayTransport struct{ e *Edge }

func (t overlayTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
		return t.e.h2c.RoundTrip(r)
	}
	if r.Body == nil || r.Body == http.NoBody {
		r = r.WithContext(httptrace.WithClientTrace(r.Context(), onceOnReused()))
	}
	return t.e.h1.RoundTrip(r)
}

// onceOnReused returns the trace of one request that bounds the
// transport's retries: http.Transport sends a request without a body
// again on the next kept-alive connection as long as one fails before
// any byte of a response, and the device closes without an answer on
// purpose (its app closed as the request arrived, and may have read it),
// so one request could reach the app once per idle connection. After
// the first attempt the trace closes every reused connection the
// transport picks before anything is written on it, so the request goes
// at most once more, on a new connection, which the transport does not
// retry.
func onceOnReused() *httptrace.ClientTrace {
	first := true
	return &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
		if !first && info.Reused {
			info.Conn.Close()
		}
		first = false
	}}
}

// ServeHTTP is the Host-routed reverse proxy for http routes. It can be
// mounted on any server; the edge's own listeners add the connection limits
// and smuggling checks. The client IP is always the TCP peer (RemoteAddr).
func (e *Edge) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	bodyrate.Wrap(w, r, bodyrate.Limit{Timeout: time.Duration(e.bodyTimeout.Load()), MinRate: e.opts.BodyMinRate})
	// One allocation for both: they live as long as the request.
	both := &struct {
		rec recorder
		st  reqState
	}{}
	rec, st := &both.rec, &both.st
	rec.ResponseWriter = w
	st.in = r
	if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
		st.client = ap.Addr()
	}
	if c := h1ConnOf(r); c != nil {
		st.gone = &c.gone
	}
	host, _ := normalizeHost(r.Host)
	e.serveHTTP(rec, r, st, host)
	e.observeRequest(host, rec.status, time.Since(start))
	if fn := e.opts.OnRequest; fn != nil {
		rl := RequestLog{
			Time:     start,
			Host:     host,
			Method:   r.Method,
			Path:     r.URL.Path,
			Proto:    r.Proto,
			Status:   rec.status,
			Duration: time.Since(start),
			Bytes:    rec.bytes,
			ClientIP: st.client,
		}
		if rl.Status == 0 {
			rl.Status = http.StatusOK
		}
		if st.target != nil {
			rl.Target = st.target.addr
		}
		fn(rl)
	}
}

func (e *Edge) serveHTTP(w http.ResponseWriter, r *http.Request, st *reqState, host string) {
	if r.ProtoMajor == 1 && len(r.TransferEncoding) > 0 {
		if c := h1ConnOf(r); c != nil && c.suspect.Load() {
			w.Header().Set("Connection", "close")
			e.writeError(w, r, http.StatusBadRequest, "Bad request",
				"A request with both Content-Length and Transfer-Encoding is refused.", errors.New("CL+TE request"))
			return
		}
	}
	rt := e.routes.Load().hosts[host]
	if rt == nil || rt.Proto != ProtoHTTP {
		e.writeError(w, r, http.StatusNotFound, "Not found",
			fmt.Sprintf("No Beam service is published at %s.", r.Host), nil)
		return
	}
	st.rt = rt
	if port := e.httpsPort.Load(); port != 0 && r.TLS == nil {
		u := "https://" + host
		if port != 443 {
			u += ":" + strconv.Itoa(int(port))
		}
		w.Header().Set("Location", u+r.URL.RequestURI())
		w.WriteHeader(http.StatusPermanentRedirect)
		return
	}
	if r.TLS != nil && r.TLS.ServerName != "" {
		if sni, _ := normalizeHost(r.TLS.ServerName); sni != host {
			e.writeError(w, r, http.StatusMisdirectedRequest, "Misdirected request",
				"This connection was opened for another name; open a new connection for this one.", nil)
			return
		}
	}
	p := rt.policy
	if !p.admitted(st.client) {
		e.writeError(w, r, http.StatusForbidden, "Forbidden", "Your address may not reach this service.", nil)
		return
	}
	if d := p.allowRate(st.client, time.Now()); d > 0 {
		w.Header().Set("Retry-After", retryAfter(d))
		e.writeError(w, r, http.StatusTooManyRequests, "Too many requests", "Slow down and try again later.", nil)
		return
	}
	if r.Method == http.MethodOptions && len(p.CORSOrigins) > 0 &&
		r.Header.Get("Origin") != "" && r.Header.Get("Access-Control-Request-Method") != "" {
		e.preflight(w, r, p)
		return
	}
	if len(p.users) > 0 {
		// An attempt counts before its password is checked: many sent
		// at once must not all be checked before the first one fails.
		var d time.Duration
		var attempt *authFails
		_, _, creds := r.BasicAuth()
		if creds {
			d, attempt = e.authFails.begin(st.client, time.Now())
		} else {
			d = e.authFails.wait(st.client, time.Now())
		}
		if d > 0 {
			w.Header().Set("Retry-After", retryAfter(d))
			e.writeError(w, r, http.StatusTooManyRequests, "Too many attempts", "Too many wrong passwords from your address; try again later.", nil)
			return
		}
		ok := p.authorized(r)
		if creds {
			e.authFails.end(attempt, time.Now(), !ok)
		}
		if !ok {
			w.Header().Set("WWW-Authenticate", `Basic realm="`+host+`", charset="UTF-8"`)
			e.writeError(w, r, http.StatusUnauthorized, "Unauthorized", "This service needs a user name and password.", nil)
			return
		}
	}
	if len(p.SignIn) > 0 {
		if e.opts.SignIn == nil {
			e.writeError(w, r, http.StatusServiceUnavailable, "Service unavailable",
				"This service needs a sign-in that this edge is not set up for.", errors.New("route needs sign-in; edge has no SignIn"))
			return
		}
		id, ok := e.opts.SignIn.Authenticate(w, r, p.SignIn)
		if !ok {
			return
		}
		st.who = &id
	}
	st.canRetry = r.ContentLength == 0 && len(rt.targets) > 1
	var skip map[*target]bool // made on the first retry
	for {
		t, err := rt.pick(time.Now(), skip)
		if err != nil {
			e.writeError(w, r, http.StatusBadGateway, "Service unavailable",
				"Every device behind this name is unreachable right now.", err)
			return
		}
		st.target, st.retry = t, false
		e.proxyTo(w, r, st)
		if !st.retry {
			return
		}
		if skip == nil {
			skip = map[*target]bool{}
		}
		skip[t] = true
	}
}

// h1ConnOf returns the client connection of an HTTP/1 request on the
// edge's own listeners, or nil.
func h1ConnOf(r *http.Request) *h1Conn {
	if r.ProtoMajor != 1 {
		return nil
	}
	switch v := r.Context().Value(connKey).(type) {
	case *h1Conn:
		return v
	case h1TLSConn:
		return v.h1Conn
	}
	return nil
}

// proxyTo proxies r to st.target, counting it among the target's
// active requests while it is under way (also when the proxy aborts the
// response with a panic).
func (e *Edge) proxyTo(w http.ResponseWriter, r *http.Request, st *reqState) {
	t := st.target
	t.active.Add(1)
	defer t.active.Add(-1)
	switch {
	case isWebSocketH2(r):
		e.proxyWebSocketH2(w, r.WithContext(context.WithValue(r.Context(), stateKey, st)))
	case plainRequest(r, st):
		e.proxyPlain(w, r, st)
	default:
		if r.Body != nil && r.Body != http.NoBody {
			r.Body = &clientBody{ReadCloser: r.Body, st: st}
		}
		e.proxy.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), stateKey, st)))
	}
}

// preflight answers a CORS preflight request at the edge.
func (e *Edge) preflight(w http.ResponseWriter, r *http.Request, p *policy) {
	allow := p.corsOrigin(r.Header.Get("Origin"))
	h := w.Header()
	h.Add("Vary", "Origin")
	h.Add("Vary", "Access-Control-Request-Method")
	h.Add("Vary", "Access-Control-Request-Headers")
	if allow == "" {
		e.writeError(w, r, http.StatusForbidden, "Forbidden", "This origin may not call this service.", nil)
		return
	}
	h.Set("Access-Control-Allow-Origin", allow)
	h.Set("Access-Control-Allow-Methods", "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS")
	if rh := r.Header.Get("Access-Control-Request-Headers"); rh != "" {
		h.Set("Access-Control-Allow-Headers", rh)
	}
	if allow != "*" {
		h.Set("Access-Control-Allow-Credentials", "true")
	}
	h.Set("Access-Control-Max-Age", "600")
	w.WriteHeader(http.StatusNoContent)
}

func (e *Edge) rewrite(pr *httputil.ProxyRequest) {
	st := pr.In.Context().Value(stateKey).(*reqState)
	pr.SetURL(&url.URL{Scheme: "http", Host: st.target.addr.String()})
	pr.Out.Host = pr.In.Host
	dropUnderscored(pr.Out.Header)
	pr.SetXForwarded()
	pr.Out.Header.Set("X-Real-Ip", st.client.String())
	// Only the edge says who signed in.
	pr.Out.Header.Del(SignInUserHeader)
	pr.Out.Header.Del(SignInEmailHeader)
	if st.who != nil {
		pr.Out.Header.Set(SignInUserHeader, st.who.User)
		if st.who.Email != "" {
			pr.Out.Header.Set(SignInEmailHeader, st.who.Email)
		}
	}
	p := st.rt.policy
	if len(p.users) > 0 {
		// The credentials were checked here and are the edge's: the app
		// behind the route never sees them.
		pr.Out.Header.Del("Authorization")
	}
	for _, k := range p.RequestHeaderRemove {
		pr.Out.Header.Del(k)
	}
	for k, v := range p.RequestHeaderAdd {
		pr.Out.Header.Set(k, v)
	}
}

// dropUnderscored deletes the fields whose names hold an underscore, as
// nginx does by default: CGI, WSGI and other stacks that turn names into
// HTTP_X_BEAM_USER read X_Beam_User as X-Beam-User, so a client could
// pass off its own value as one the edge sets.
func dropUnderscored(h http.Header) {
	for k := range h {
		if strings.IndexByte(k, '_') >= 0 {
			delete(h, k)
		}
	}
}

func (e *Edge) modifyResponse(resp *http.Response) error {
	st := resp.Request.Context().Value(stateKey).(*reqState)
	p := st.rt.policy
	for _, k := range p.ResponseHeaderRemove {
		resp.Header.Del(k)
	}
	for k, v := range p.ResponseHeaderAdd {
		resp.Header.Set(k, v)
	}
	if allow := p.corsOrigin(st.in.Header.Get("Origin")); allow != "" {
		resp.Header.Set("Access-Control-Allow-Origin", allow)
		if allow != "*" {
			resp.Header.Set("Access-Control-Allow-Credentials", "true")
			resp.Header.Add("Vary", "Origin")
		}
	}
	return nil
}

// proxyError handles a failed round trip to the device.
func (e *Edge) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	e.proxyFailed(w, r, r.Context().Value(stateKey).(*reqState), err)
}

// proxyFailed answers a request whose round trip to st.target failed
// with err, or marks it for a retry on another member of its pool.
func (e *Edge) proxyFailed(w http.ResponseWriter, r *http.Request, st *reqState, err error) {
	var de *dialError
	if errors.As(err, &de) {
		if st.canRetry && st.in.Context().Err() == nil {
			st.retry = true
			return
		}
		if errors.Is(err, syscall.ECONNREFUSED) {
			e.writeError(w, r, http.StatusBadGateway, "Nothing listens yet",
				fmt.Sprintf("The device is connected but nothing listens on port %d yet. Start the service on the device and reload.", de.target.Port()), err)
			return
		}
		e.writeError(w, r, http.StatusBadGateway, "Device unreachable",
			"The device behind this name cannot be reached right now. It may be offline.", err)
		return
	}
	if st.clientGone() {
		// The client went away; nobody reads this response.
		w.WriteHeader(499)
		return
	}
	if p := st.bodyErr.Load(); p != nil {
		err := *p
		// The client's body broke off or was malformed: the device has
		// nothing to do with it, and the connection cannot carry
		// another request.
		w.Header().Set("Connection", "close")
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			e.writeError(w, r, http.StatusRequestTimeout, "Request timeout", "The request body came too slowly.", err)
			return
		}
		e.writeError(w, r, http.StatusBadRequest, "Bad request", "The request body is malformed.", err)
		return
	}
	e.writeError(w, r, http.StatusBadGateway, "Bad gateway",
		"The device closed the connection without a valid response.", err)
}

// writeError writes an edge error page. The page shows a log ID under
// which err (never shown to the client) is logged.
func (e *Edge) writeError(w http.ResponseWriter, r *http.Request, status int, title, detail string, err error) {
	var b [6]byte
	rand.Read(b[:])
	id := hex.EncodeToString(b[:])
	level := slog.LevelDebug
	if status >= 500 {
		level = slog.LevelWarn
	}
	e.log.Log(r.Context(), level, "request refused", "status", status, "host", r.Host,
		"path", r.URL.Path, "client", r.RemoteAddr, "log_id", id, "err", err)
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Beam-Log-Id", id)
	w.WriteHeader(status)
	if r.Method == http.MethodHead {
		return
	}
	fmt.Fprintf(w, `<!doctype html>
<html><head><meta charset="utf-8"><title>%d %s</title></head>
<body style="font-family:sans-serif;max-width:40em;margin:4em auto">
<h1>%d %s</h1>
<p>%s</p>
<p><small>Beam edge &middot; log ID %s</small></p>
</body></html>
`, status, html.EscapeString(title), status, html.EscapeString(title), html.EscapeString(detail), id)
}

// recorder notes the status and body size of a response. It keeps
// Flush and, through Unwrap, Hijack and the other ResponseController
// features working.
type recorder struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (r *recorder) WriteHeader(code int) {
	if r.status == 0 && code >= 200 || code == http.StatusSwitchingProtocols {
		r.status = code
	}
	if code == 499 {
		return // client gone; log only
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(p []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	n, err := r.ResponseWriter.Write(p)
	r.bytes += int64(n)
	return n, err
}

func (r *recorder) Flush() {
	http.NewResponseController(r.ResponseWriter).Flush()
}

func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }
