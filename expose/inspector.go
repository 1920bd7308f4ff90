package expose

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// The inspector is a web page and a JSON API on the device's loopback
// (like ngrok's localhost:4040) that lists the exchanges of the device's
// routes with their heads and bodies, and sends one to the app again,
// as it was or edited.
//
// Nothing but the user's own browser tab and scripts may drive it: a web
// page the user visits could otherwise replay requests against the app
// (CSRF) or read them through a DNS name rebound to 127.0.0.1. So every
// request must come from loopback with a Host naming the inspector's own
// address, a request from another origin or site is refused (Origin,
// Sec-Fetch-Site; only a plain top-level navigation to a page is let in
// from elsewhere), and whatever changes something (replay, clear) needs
// the session token that the inspector's pages embed and GET
// /api/session returns to same-origin callers.
//
// Other users of the machine reach its loopback too, and captures hold
// cookies and passwords: every request needs the access token, which
// only the daemon's owner learns (AccessURL, which the daemon hands out
// on its private socket, and beam expose prints). A browser opens
// AccessURL (/?token=T) once; the inspector then sets an HttpOnly,
// SameSite=Strict cookie and sends it to /. Scripts send the token in
// the X-Beam-Inspector-Token header instead.
//
// Cookies are not kept apart by port: the browser sends a cookie to
// every server on 127.0.0.1 it visits, which could send it on to the
// inspector's port. So the cookie is bound to a path with a secret in it
// instead: the pages a browser opens are served under the base path
// /s/KEY (KEY derived from the token and the port), the cookie has that
// Path, so the browser sends it to no other path on any port, and the
// inspector takes it nowhere else. A server on another port gets it only
// if the browser asks it for that path, which takes knowing KEY; and the
// value alone, without KEY, opens nothing. The value is not the token
// either but an HMAC of the port under it: a server that got it could not
// use it as the token (in the header or AccessURL), nor on another
// inspector. The session token that pages embed and /api/session returns
// is derived from the token too (it lets the page change things, with
// the cookie), so a cookie replayed to the inspector does not lead to the
// token either. Scripts, which send the token in the header, use the
// paths without the base.

// Inspector serves the inspector's pages and API for a Server.
type Inspector struct {
	s      *Server
	addr   netip.AddrPort
	limit  int
	token  string // the access token
	cookie string // the access cookie's value, derived from token and the port
	// base is the secret path prefix (/s/KEY) the browser's pages are
	// served under and the access cookie is scoped to, derived from
	// token and the port.
	base string
	// session is the session token the pages embed, derived from token:
	// with the cookie (or token), it lets a request change something.
	session string
	logger  *slog.Logger
	mux     *http.ServeMux
}

// InspectorOptions configures an Inspector.
type InspectorOptions struct {
	// Addr is the loopback address the inspector is served on; requests
	// must name it in their Host header. Required.
	Addr netip.AddrPort
	// BodyLimit caps each captured request and response body; 0 means
	// DefaultBodyLimit.
	BodyLimit int
	// Logger receives debug logs; nil discards them.
	Logger *slog.Logger
}

// TokenHeader carries the inspector's session token on API requests that
// change something.
const TokenHeader = "X-Beam-Inspector-Token"

// NewInspector returns the inspector of s and starts capturing the
// exchanges of s's routes.
func NewInspector(s *Server, o InspectorOptions) (*Inspector, error) {
	if !o.Addr.IsValid() || !o.Addr.Addr().Unmap().IsLoopback() {
		return nil, fmt.Errorf("expose: inspector address %v is not on loopback", o.Addr)
	}
	if o.BodyLimit <= 0 {
		o.BodyLimit = DefaultBodyLimit
	}
	logger := o.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	token := rand.Text()
	i := &Inspector{
		s: s, addr: o.Addr, limit: o.BodyLimit, logger: logger, mux: http.NewServeMux(),
		token:   token,
		cookie:  derive(token, "beam inspector access cookie", strconv.Itoa(int(o.Addr.Port()))),
		base:    "/s/" + derive(token, "beam inspector page path", strconv.Itoa(int(o.Addr.Port())))[:22],
		session: derive(token, "beam inspector session token"),
	}
	i.mux.HandleFunc("GET /{$}", i.servePage)
	i.mux.HandleFunc("GET /requests/{id}", i.serveDetail)
	i.mux.HandleFunc("POST /requests/{id}/replay", i.serveReplayForm)
	i.mux.HandleFunc("GET /api/session", i.serveSession)
	i.mux.HandleFunc("GET /api/requests/http", i.serveList)
	i.mux.HandleFunc("GET /api/requests/http/{id}", i.serveOne)
	i.mux.HandleFunc("POST /api/requests/http", i.serveReplayAPI)
	i.mux.HandleFunc("DELETE /api/requests/http", i.serveClear)
	i.mux.HandleFunc("GET /api/events", i.serveEvents)
	s.limit.Store(int64(o.BodyLimit))
	return i, nil
}

// Close stops capturing; the pages keep what was captured.
func (i *Inspector) Close() { i.s.limit.Store(0) }

// ServeHTTP refuses what is not the user's own tab or script (see the
// file comment), then serves the page or API call.
func (i *Inspector) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "same-origin") // not no-referrer: Chromium then sends "Origin: null" with the page's own form posts
	h.Set("Cross-Origin-Resource-Policy", "same-origin")
	// The browser's pages are under the base path, which the access
	// cookie is scoped to; the mux serves them without it.
	inBase := false
	if rest, ok := strings.CutPrefix(r.URL.Path, i.base+"/"); ok {
		u := *r.URL
		u.Path, u.RawPath = "/"+rest, ""
		r = r.WithContext(context.WithValue(r.Context(), baseKey{}, i.base))
		r.URL = &u
		inBase = true
	}
	if status, why := i.refuse(r); status != 0 {
		i.logger.Debug("inspector: refused", "method", r.Method, "path", r.URL.Path, "host", r.Host, "origin", r.Header.Get("Origin"), "why", why)
		http.Error(w, "beam inspector: "+why, status)
		return
	}
	if r.URL.Path == "/" && r.URL.Query().Has("token") && (r.Method == http.MethodGet || r.Method == http.MethodHead) {
		i.signIn(w, r)
		return
	}
	if !i.accessOK(r, inBase) {
		http.Error(w, "beam inspector: this needs the inspector's access token; open the address beam expose printed (it ends in ?token=...)", http.StatusUnauthorized)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead && !i.tokenOK(r) {
		http.Error(w, "beam inspector: missing or wrong session token", http.StatusForbidden)
		return
	}
	i.mux.ServeHTTP(w, r)
}

// signIn answers AccessURL: with the right token it sets the access
// cookie and sends the browser to the list, without the token in the
// address bar.
func (i *Inspector) signIn(w http.ResponseWriter, r *http.Request) {
	if subtle.ConstantTimeCompare([]byte(r.URL.Query().Get("token")), []byte(i.token)) != 1 {
		http.Error(w, "beam inspector: wrong access token; open the address beam expose printed", http.StatusForbidden)
		return
	}
	http.SetCookie(w, &http.Cookie{
		Name: i.cookieName(), Value: i.cookie, Path: i.base + "/",
		HttpOnly: true, SameSite: http.SameSiteStrictMode,
	})
	http.Redirect(w, r, i.base+"/", http.StatusSeeOther)
}

// baseKey is the context key of the base path a request came under:
// the pages it gets link under it.
type baseKey struct{}

// pageBase returns the path prefix r's page links under: the base path
// if r came under it, else "".
func pageBase(r *http.Request) string {
	b, _ := r.Context().Value(baseKey{}).(string)
	return b
}

// cookieName names the access cookie; cookies are not kept apart by
// port, and each inspector (each daemon) has its own token.
func (i *Inspector) cookieName() string {
	return "beam_inspector_" + strconv.Itoa(int(i.addr.Port()))
}

// accessOK reports whether r carries the access token in the token
// header, or the access cookie under the base path (inBase).
func (i *Inspector) accessOK(r *http.Request, inBase bool) bool {
	if equal(r.Header.Get(TokenHeader), i.token) {
		return true
	}
	if !inBase {
		return false
	}
	// Another server on 127.0.0.1 may have set a cookie of the same name
	// for a wider path: the browser sends both.
	ok := false
	for _, c := range r.CookiesNamed(i.cookieName()) {
		ok = equal(c.Value, i.cookie) || ok
	}
	return ok
}

// derive returns a value derived from token for one use: the HMAC-SHA256
// of the parts under it, in base64url.
func derive(token string, parts ...string) string {
	m := hmac.New(sha256.New, []byte(token))
	for _, p := range parts {
		m.Write([]byte(p))
		m.Write([]byte{0})
	}
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// equal compares a secret in constant time.
func equal(got, want string) bool {
	return subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1
}

// refuse returns the status and reason to refuse r with, or 0.
func (i *Inspector) refuse(r *http.Request) (int, string) {
	if ap, err := netip.ParseAddrPort(r.RemoteAddr); err != nil || !ap.Addr().Unmap().IsLoopback() {
		return http.StatusForbidden, "only for clients on this device"
	}
	if !i.ownHost(r.Host) {
		// A DNS name rebound to 127.0.0.1 arrives with its own name.
		return http.StatusMisdirectedRequest, "unknown Host " + strconv.Quote(r.Host) + "; open " + i.URL()
	}
	if o := r.Header.Get("Origin"); o != "" && !i.ownOrigin(o) {
		return http.StatusForbidden, "cross-origin requests are refused"
	}
	safe := r.Method == http.MethodGet || r.Method == http.MethodHead
	switch site := r.Header.Get("Sec-Fetch-Site"); site {
	case "", "same-origin", "none":
	default:
		// A link from elsewhere may open a page, nothing more.
		if !safe || r.Header.Get("Sec-Fetch-Mode") != "navigate" || strings.HasPrefix(r.URL.Path, "/api/") {
			return http.StatusForbidden, "cross-site requests are refused (Sec-Fetch-Site: " + site + ")"
		}
	}
	return 0, ""
}

// ownHost reports whether a Host header names the inspector itself.
func (i *Inspector) ownHost(host string) bool {
	h, p, err := net.SplitHostPort(host)
	if err != nil || p != strconv.Itoa(int(i.addr.Port())) {
		return false
	}
	if strings.EqualFold(h, "localhost") {
		return true
	}
	a, err := netip.ParseAddr(h)
	return err == nil && a == i.addr.Addr()
}

func (i *Inspector) ownOrigin(o string) bool {
	rest, ok := strings.CutPrefix(o, "http://")
	return ok && i.ownHost(rest)
}

// tokenOK reports whether r carries the session token or the access
// token, in the token header or a form field, as changes need.
func (i *Inspector) tokenOK(r *http.Request) bool {
	t := r.Header.Get(TokenHeader)
	if t == "" && r.Method == http.MethodPost {
		t = r.PostFormValue("token")
	}
	return equal(t, i.session) || equal(t, i.token)
}

// URL returns the inspector's address as a URL, without the access
// token: it opens nothing by itself.
func (i *Inspector) URL() string { return "http://" + i.addr.String() }

// AccessURL returns the URL that opens the inspector in a browser: URL
// with the access token. Only the daemon's owner may learn it.
func (i *Inspector) AccessURL() string { return i.URL() + "/?token=" + url.QueryEscape(i.token) }

// Token returns the access token, which scripts send in TokenHeader.
func (i *Inspector) Token() string { return i.token }

// filter selects exchanges by path (substring), status ("404", "4xx" or
// "4") and method.
type filter struct {
	path, status, method string
}

func filterOf(r *http.Request) filter {
	q := r.URL.Query()
	return filter{path: strings.TrimSpace(q.Get("path")), status: strings.TrimSpace(q.Get("status")), method: strings.TrimSpace(q.Get("method"))}
}

func (f filter) match(x *Exchange) bool {
	if f.path != "" && !strings.Contains(x.Path, f.path) {
		return false
	}
	if f.method != "" && !strings.EqualFold(f.method, x.Method) {
		return false
	}
	if f.status != "" {
		// "404" is that status; "4xx", "40x" and "4" are prefixes.
		st, want := strconv.Itoa(x.Status), strings.TrimRight(strings.ToLower(f.status), "x")
		if len(f.status) == 3 && want == f.status && st != want || !strings.HasPrefix(st, want) {
			return false
		}
	}
	return true
}

func (f filter) query() string {
	var b []string
	for _, kv := range [][2]string{{"path", f.path}, {"status", f.status}, {"method", f.method}} {
		if kv[1] != "" {
			b = append(b, kv[0]+"="+url.QueryEscape(kv[1]))
		}
	}
	return strings.Join(b, "&")
}

// summary is an exchange in lists and live updates: no heads or bodies.
type summary struct {
	ID         string        `json:"id"`
	Seq        uint64        `json:"seq"`
	Kind       string        `json:"kind"`
	Start      time.Time     `json:"start"`
	Time       string        `json:"time"` // Start as HH:MM:SS.mmm, for the page
	Duration   time.Duration `json:"duration"`
	Took       string        `json:"took"` // Duration, rounded, for the page
	Method     string        `json:"method,omitempty"`
	Host       string        `json:"host,omitempty"`
	Path       string        `json:"path,omitempty"`
	Status     int           `json:"status,omitempty"`
	Size       int64         `json:"size"`
	Client     string        `json:"client,omitempty"`
	Port       uint16        `json:"port"`
	AnsweredBy Answerer      `json:"answered_by"`
	Replay     bool          `json:"replay,omitempty"`
	ReplayOf   string        `json:"replay_of,omitempty"`
	Edited     bool          `json:"edited,omitempty"`
}

func summarize(x *Exchange) summary {
	took := roundDuration(x.Duration)
	if x.Kind != "http" && x.Duration == 0 {
		took = "open"
	}
	return summary{
		ID: x.ID, Seq: x.seq, Kind: x.Kind, Start: x.Start, Time: x.Start.Format("15:04:05.000"),
		Duration: x.Duration, Took: took, Method: x.Method, Host: x.Host, Path: x.Path,
		Status: x.Status, Size: x.Size, Client: x.Client, Port: x.Port, AnsweredBy: x.AnsweredBy,
		Replay: x.Replay, ReplayOf: x.ReplayOf, Edited: x.Edited,
	}
}

func roundDuration(d time.Duration) string {
	switch {
	case d < time.Millisecond:
		return d.Round(time.Microsecond).String()
	case d < time.Second:
		return d.Round(100 * time.Microsecond).String()
	}
	return d.Round(time.Millisecond).String()
}

// matching returns the stored exchanges that f selects, newest first.
func (i *Inspector) matching(f filter) []*Exchange {
	all, _ := i.s.rec.since(0)
	var out []*Exchange
	for k := len(all) - 1; k >= 0; k-- {
		if f.match(all[k]) {
			out = append(out, all[k])
		}
	}
	return out
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

func jsonError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}

func (i *Inspector) serveSession(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"token": i.session, "token_header": TokenHeader})
}

// serveList answers GET /api/requests/http: {"requests": [...]}, newest
// first, with the filters path, status and method and a limit.
func (i *Inspector) serveList(w http.ResponseWriter, r *http.Request) {
	xs := i.matching(filterOf(r))
	if n, err := strconv.Atoi(r.URL.Query().Get("limit")); err == nil && n >= 0 && n < len(xs) {
		xs = xs[:n]
	}
	out := make([]summary, 0, len(xs))
	for _, x := range xs {
		out = append(out, summarize(x))
	}
	writeJSON(w, http.StatusOK, map[string]any{"requests": out})
}

// serveOne answers GET /api/requests/http/{id}: the whole exchange,
// bodies in base64.
func (i *Inspector) serveOne(w http.ResponseWriter, r *http.Request) {
	x := i.s.rec.get(r.PathValue("id"))
	if x == nil {
		jsonError(w, http.StatusNotFound, "no such request")
		return
	}
	writeJSON(w, http.StatusOK, x)
}

func (i *Inspector) serveClear(w http.ResponseWriter, r *http.Request) {
	i.s.rec.clear()
	w.WriteHeader(http.StatusNoContent)
}

// replayRequest is the body of POST /api/requests/http: the exchange to
// send again and, for edit-and-replay, what to change.
type replayRequest struct {
	ID      string              `json:"id"`
	Method  string              `json:"method,omitempty"`
	Path    string              `json:"path,omitempty"`
	Headers map[string][]string `json:"headers,omitempty"` // replaces every header but Host
	Body    *string             `json:"body,omitempty"`    // replaces the body
	// BodyBase64 replaces the body with binary data.
	BodyBase64 *string `json:"body_base64,omitempty"`
}

// serveReplayAPI answers POST /api/requests/http: it replays the exchange
// and returns the new one.
func (i *Inspector) serveReplayAPI(w http.ResponseWriter, r *http.Request) {
	var rr replayRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, int64(i.limit)*2+64<<10)).Decode(&rr); err != nil {
		jsonError(w, http.StatusBadRequest, "body: "+err.Error())
		return
	}
	orig := i.s.rec.get(rr.ID)
	if orig == nil {
		jsonError(w, http.StatusNotFound, "no such request")
		return
	}
	e := edit{method: rr.Method, path: rr.Path}
	if rr.Headers != nil {
		e.header = http.Header(rr.Headers).Clone()
	}
	switch {
	case rr.BodyBase64 != nil:
		b, err := base64.StdEncoding.DecodeString(*rr.BodyBase64)
		if err != nil {
			jsonError(w, http.StatusBadRequest, "body_base64: "+err.Error())
			return
		}
		e.body = &b
	case rr.Body != nil:
		b := []byte(*rr.Body)
		e.body = &b
	}
	x, err := i.replay(r.Context(), orig, e)
	if err != nil {
		jsonError(w, http.StatusBadRequest, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, x)
}

// serveReplayForm answers the detail page's replay and edit-and-replay
// forms, then shows the new exchange.
func (i *Inspector) serveReplayForm(w http.ResponseWriter, r *http.Request) {
	orig := i.s.rec.get(r.PathValue("id"))
	if orig == nil {
		http.Error(w, "no such request", http.StatusNotFound)
		return
	}
	var e edit
	if r.PostFormValue("edit") != "" {
		e.method = strings.TrimSpace(r.PostFormValue("method"))
		e.path = strings.TrimSpace(r.PostFormValue("path"))
		h, err := parseHeaderLines(r.PostFormValue("headers"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		e.header = h
		if _, ok := r.PostForm["body"]; ok {
			// Browsers send a textarea's line ends as CRLF: an unchanged
			// body stays as it was.
			b := []byte(strings.ReplaceAll(r.PostFormValue("body"), "\r\n", "\n"))
			if orig.Request != nil && string(b) == strings.ReplaceAll(string(orig.Request.Body), "\r\n", "\n") {
				b = orig.Request.Body
			}
			e.body = &b
		}
	}
	x, err := i.replay(r.Context(), orig, e)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	http.Redirect(w, r, pageBase(r)+"/requests/"+x.ID, http.StatusSeeOther)
}

// parseHeaderLines reads "Name: value" lines.
func parseHeaderLines(s string) (http.Header, error) {
	h := http.Header{}
	for line := range strings.Lines(s) {
		line = strings.TrimRight(line, "\r\n")
		if strings.TrimSpace(line) == "" {
			continue
		}
		k, v, ok := strings.Cut(line, ":")
		k = strings.TrimSpace(k)
		if !ok || !isToken([]byte(k)) || !validValue([]byte(strings.TrimSpace(v))) {
			return nil, fmt.Errorf("bad header line %q: want Name: value", line)
		}
		h.Add(k, strings.TrimSpace(v))
	}
	return h, nil
}

// edit is what edit-and-replay changes; zero fields keep the original.
type edit struct {
	method string
	path   string
	header http.Header // nil: the original's
	body   *[]byte     // nil: the original's
}

func (e edit) edited() bool {
	return e.method != "" || e.path != "" || e.header != nil || e.body != nil
}

// hopHeaders are set by the replay's own HTTP client, not copied.
var hopHeaders = []string{"Host", "Content-Length", "Transfer-Encoding", "Connection", "Keep-Alive", "Upgrade", "Te", "Trailer", "Proxy-Connection"}

// replayTimeout bounds one replay, response body included.
const replayTimeout = 30 * time.Second

// replay sends orig's request, changed by e, to the app again and keeps
// the new exchange, which it returns.
func (i *Inspector) replay(ctx context.Context, orig *Exchange, e edit) (*Exchange, error) {
	if orig.Kind != "http" || orig.dial == nil || orig.Request == nil && orig.AnsweredBy != ByEdge {
		return nil, errNotReplayable
	}
	method, path, host := orig.Method, orig.Path, orig.Host
	var header http.Header
	var body []byte
	if orig.Request != nil {
		header, body = orig.Request.Header.Clone(), orig.Request.Body
		if orig.Request.Truncated && e.body == nil {
			return nil, fmt.Errorf("expose: the request body was longer than the inspector keeps (%d of %d bytes); edit it to replay", len(body), orig.Request.BodySize)
		}
	}
	if header == nil {
		header = http.Header{}
	}
	if e.method != "" {
		if !isToken([]byte(e.method)) {
			return nil, fmt.Errorf("expose: bad method %q", e.method)
		}
		method = strings.ToUpper(e.method)
	}
	if e.path != "" {
		if !strings.HasPrefix(e.path, "/") || strings.ContainsAny(e.path, " \r\n\t") {
			return nil, fmt.Errorf("expose: bad path %q: want /PATH?QUERY", e.path)
		}
		path = e.path
	}
	if e.header != nil {
		if h := e.header.Get("Host"); h != "" {
			host = h
		}
		header = e.header.Clone()
	}
	if e.body != nil {
		body = *e.body
	}
	for _, k := range hopHeaders {
		header.Del(k)
	}

	ctx, cancel := context.WithTimeout(ctx, replayTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, "http://replay"+path, bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("expose: replay: %w", err)
	}
	req.Host = host
	req.Header = header
	if len(body) == 0 {
		req.Body, req.ContentLength = http.NoBody, 0
	}
	tr := &http.Transport{
		DialContext:        func(ctx context.Context, _, _ string) (net.Conn, error) { return orig.dial(ctx) },
		DisableKeepAlives:  true,
		DisableCompression: true,
	}
	defer tr.CloseIdleConnections()

	sent := header.Clone()
	sent.Set("Host", host)
	x := &Exchange{
		Kind: "http", Start: time.Now(), Method: method, Host: host, Path: path, Client: "inspector",
		Port: orig.Port, AnsweredBy: ByApp, Replay: true, ReplayOf: orig.ID, Edited: e.edited(), dial: orig.dial,
		Request: &Message{Proto: "HTTP/1.1", Header: sent, Body: body, BodySize: int64(len(body))},
	}
	resp, err := tr.RoundTrip(req)
	if err != nil {
		x.Duration = time.Since(x.Start)
		x.Status, x.AnsweredBy, x.Error = http.StatusBadGateway, ByBeam, "the app could not be reached: "+err.Error()
		i.s.record(x)
		return x, nil
	}
	x.FirstByte = time.Since(x.Start)
	rb, _ := io.ReadAll(io.LimitReader(resp.Body, int64(i.limit)))
	rest, _ := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	x.Duration = time.Since(x.Start)
	x.Status = resp.StatusCode
	x.Response = &Message{Proto: resp.Proto, Header: resp.Header, Body: rb, BodySize: int64(len(rb)) + rest, Truncated: rest > 0}
	x.Size = x.Response.BodySize
	i.s.record(x)
	return x, nil
}

// serveEvents streams new exchanges that match the filters as server-sent
// events (one summary per event, its seq as the event ID), from after=SEQ
// or the Last-Event-ID a reconnecting EventSource sends.
func (i *Inspector) serveEvents(w http.ResponseWriter, r *http.Request) {
	f := filterOf(r)
	after, _ := strconv.ParseUint(r.URL.Query().Get("after"), 10, 64)
	if id, err := strconv.ParseUint(r.Header.Get("Last-Event-ID"), 10, 64); err == nil {
		after = id
	}
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.WriteHeader(http.StatusOK)
	if err := rc.Flush(); err != nil {
		return
	}
	keepAlive := time.NewTicker(15 * time.Second)
	defer keepAlive.Stop()
	for {
		xs, changed := i.s.rec.since(after)
		for _, x := range xs {
			after = max(after, x.seq) // a changed exchange comes again, in its place
			if !f.match(x) {
				continue
			}
			b, _ := json.Marshal(summarize(x))
			fmt.Fprintf(w, "id: %d\ndata: %s\n\n", x.seq, b)
		}
		if len(xs) > 0 {
			if err := rc.Flush(); err != nil {
				return
			}
		}
		select {
		case <-r.Context().Done():
			return
		case <-changed:
		case <-keepAlive.C:
			if _, err := io.WriteString(w, ": keep-alive\n\n"); err != nil {
				return
			}
			if err := rc.Flush(); err != nil {
				return
			}
		}
	}
}
