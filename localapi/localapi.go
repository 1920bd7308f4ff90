// Package localapi serves the daemon's local API: HTTP over a Unix socket
// that only the daemon's owner can open, under /localapi/v0/<name>. The CLI
// reaches it through package localclient.
package localapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"beam.dev/beam/dnsserver"
	"beam.dev/beam/internal/privsock"
	"beam.dev/beam/internal/version"
	"beam.dev/beam/localapi/apitype"
	"beam.dev/beam/node"
)

// DialUpgrade is the Upgrade protocol of /localapi/v0/dial: after the 101
// answer the connection carries the dialed stream's bytes.
const DialUpgrade = "beam-dial"

// Options configures a Handler.
type Options struct {
	// Logger receives the handler's logs; nil discards them.
	Logger *slog.Logger
	// Shutdown, if not nil, is called (once per request) by POST
	// /localapi/v0/shutdown to stop the daemon; nil refuses the request.
	Shutdown func()
	// Socket is the path of the socket the handler is served on; its mode
	// follows the operator setting (0666 with an operator, else 0600).
	// Empty leaves the mode alone.
	Socket string
	// Metrics, if not nil, is served at GET /localapi/v0/metrics in
	// Prometheus's text format (beam metrics); nil answers 404.
	Metrics prometheus.Gatherer
}

// Handler serves the local API for one node.
type Handler struct {
	n      *node.Node
	opts   Options
	logger *slog.Logger
	mux    *http.ServeMux
}

// New returns the local API handler for n.
func New(n *node.Node, opts Options) *Handler {
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	h := &Handler{n: n, opts: opts, logger: logger, mux: http.NewServeMux()}
	h.mux.HandleFunc("GET /localapi/v0/prefs", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, h.n.Prefs()) })
	h.mux.HandleFunc("POST /localapi/v0/prefs", h.setPrefs)
	h.mux.HandleFunc("POST /localapi/v0/shutdown", h.shutdown)
	h.mux.HandleFunc("GET /localapi/v0/status", h.status)
	h.mux.HandleFunc("POST /localapi/v0/up", h.up)
	h.mux.HandleFunc("POST /localapi/v0/down", h.down)
	h.mux.HandleFunc("POST /localapi/v0/logout", h.logout)
	h.mux.HandleFunc("GET /localapi/v0/dns/query", h.dnsQuery)
	h.mux.HandleFunc("GET /localapi/v0/dns/status", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, h.n.DNSStatus()) })
	h.mux.HandleFunc("POST /localapi/v0/dial", h.dial)
	h.mux.HandleFunc("GET /localapi/v0/ping", h.ping)
	h.mux.HandleFunc("GET /localapi/v0/netcheck", h.netcheck)
	h.mux.HandleFunc("POST /localapi/v0/expose", h.expose)
	h.mux.HandleFunc("GET /localapi/v0/expose", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, h.n.ExposedRoutes()) })
	h.mux.HandleFunc("POST /localapi/v0/expose/stop", h.exposeStop)
	h.mux.HandleFunc("GET /localapi/v0/expose/watch", h.exposeWatch)
	h.mux.HandleFunc("POST /localapi/v0/expose/wait", h.exposeWait)
	h.mux.HandleFunc("GET /localapi/v0/debug/profile/{name}", h.debugProfile)
	if opts.Metrics != nil {
		h.mux.Handle("GET /localapi/v0/metrics", promhttp.HandlerFor(opts.Metrics, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}))
	}
	h.syncSocketMode()
	return h
}

// ServeHTTP implements http.Handler. Requests that carry an Origin or
// Referer header come from a browser and are refused, and so are requests
// from local users other than the daemon's own, root and the operator
// (where the server's ConnContext is ConnContext).
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Origin") != "" || r.Header.Get("Referer") != "" {
		writeError(w, http.StatusForbidden, errors.New("cross-origin requests are refused"))
		return
	}
	if err := h.checkAccess(r); err != nil {
		writeError(w, http.StatusForbidden, err)
		return
	}
	h.mux.ServeHTTP(w, r)
}

// ListenUnix creates the Unix socket at path, readable and writable only
// by the current user, replacing a stale socket file nobody answers on.
func ListenUnix(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create socket dir: %w", err)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("a daemon already answers on %s", path)
	}
	os.Remove(path)
	ln, err := privsock.Listen(path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("chmod %s: %w", path, err)
	}
	return ln, nil
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, code int, err error) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(apitype.Error{Error: err.Error(), Message: userMessage(err)})
}

func (h *Handler) status(w http.ResponseWriter, r *http.Request) {
	st := h.n.Status()
	st.Version = version.String()
	writeJSON(w, st)
}

func (h *Handler) up(w http.ResponseWriter, r *http.Request) {
	var req apitype.UpRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, fmt.Errorf("decode request: %w", err))
		return
	}
	if err := h.checkPrefsPatch(r, req.Prefs); err != nil {
		writeError(w, http.StatusForbidden, err)
		return
	}
	resp, err := h.n.Up(r.Context(), req)
	if req.Prefs != nil && req.Prefs.Operator != nil {
		h.syncSocketMode() // before the answer: the operator may connect next
	}
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	writeJSON(w, resp)
}

func (h *Handler) setPrefs(w http.ResponseWriter, r *http.Request) {
	var p apitype.PrefsPatch
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&p); err != nil {
		writeError(w, http.StatusBadRequest, fmt.Errorf("decode request: %w", err))
		return
	}
	if err := h.checkPrefsPatch(r, &p); err != nil {
		writeError(w, http.StatusForbidden, err)
		return
	}
	resp, err := h.n.SetPrefs(r.Context(), p)
	if p.Operator != nil {
		h.syncSocketMode()
	}
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	writeJSON(w, resp)
}

// shutdown answers, then asks the daemon to stop.
func (h *Handler) shutdown(w http.ResponseWriter, r *http.Request) {
	if h.opts.Shutdown == nil {
		writeError(w, http.StatusNotImplemented, errors.New("this daemon cannot be stopped through its local API"))
		return
	}
	writeJSON(w, struct{}{})
	http.NewResponseController(w).Flush()
	h.logger.Info("stop requested through the local API")
	h.opts.Shutdown()
}

func (h *Handler) down(w http.ResponseWriter, r *http.Request) {
	if err := h.n.Down(r.Context()); err != nil {
		writeError(w, http.StatusInternalServerError, err)
		return
	}
	writeJSON(w, struct{}{})
}

func (h *Handler) logout(w http.ResponseWriter, r *http.Request) {
	if err := h.n.Logout(r.Context()); err != nil {
		writeError(w, http.StatusBadGateway, err)
		return
	}
	writeJSON(w, struct{}{})
}

func (h *Handler) dnsQuery(w http.ResponseWriter, r *http.Request) {
	name := r.URL.Query().Get("name")
	typ := strings.ToUpper(r.URL.Query().Get("type"))
	if name == "" {
		writeError(w, http.StatusBadRequest, errors.New("missing name"))
		return
	}
	if typ == "" {
		typ = "A"
	}
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	qtype, err := dnsserver.ParseType(typ)
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	res, err := h.n.Resolver().Exchange(ctx, name, qtype)
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	out := apitype.DNSQueryResponse{Name: res.Name, Type: res.Type, Rcode: res.Rcode, Source: res.Source, Answers: []string{}}
	for _, a := range res.Answer {
		out.Answers = append(out.Answers, fmt.Sprintf("%s\t%d\tIN\t%s\t%s", a.Name, a.TTL, a.Type, a.Data))
	}
	writeJSON(w, out)
}

// dial connects to Dial-Host:Dial-Port through the node and, after a 101
// answer, relays bytes between the local API connection and the target.
func (h *Handler) dial(w http.ResponseWriter, r *http.Request) {
	if !strings.EqualFold(r.Header.Get("Upgrade"), DialUpgrade) {
		writeError(w, http.StatusBadRequest, errors.New("dial needs Upgrade: "+DialUpgrade))
		return
	}
	host, port := r.Header.Get("Dial-Host"), r.Header.Get("Dial-Port")
	network := r.Header.Get("Dial-Network")
	if network == "" {
		network = "tcp"
	}
	if network != "tcp" && network != "udp" {
		writeError(w, http.StatusBadRequest, fmt.Errorf("network %q not supported", network))
		return
	}
	if p, err := strconv.ParseUint(port, 10, 16); host == "" || err != nil || p == 0 {
		writeError(w, http.StatusBadRequest, fmt.Errorf("bad host or port %q:%q", host, port))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	out, err := h.n.DialContext(ctx, network, net.JoinHostPort(host, port))
	cancel()
	if err != nil {
		writeError(w, http.StatusBadGateway, fmt.Errorf("dial %s:%s: %w", host, port, err))
		return
	}
	defer out.Close()
	hj, ok := w.(http.Hijacker)
	if !ok {
		writeError(w, http.StatusInternalServerError, errors.New("cannot hijack"))
		return
	}
	c, brw, err := hj.Hijack()
	if err != nil {
		return
	}
	defer c.Close()
	if _, err := io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: "+DialUpgrade+"\r\nConnection: Upgrade\r\n\r\n"); err != nil {
		return
	}
	done := make(chan struct{}, 2)
	go func() {
		io.Copy(out, brw.Reader)
		if cw, ok := out.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		}
		done <- struct{}{}
	}()
	go func() {
		io.Copy(c, out)
		if cw, ok := c.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		}
		done <- struct{}{}
	}()
	<-done
	<-done
}

func (h *Handler) expose(w http.ResponseWriter, r *http.Request) {
	var req apitype.ExposeRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, fmt.Errorf("decode request: %w", err))
		return
	}
	resp, err := h.n.Expose(r.Context(), req)
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	writeJSON(w, resp)
}

func (h *Handler) exposeStop(w http.ResponseWriter, r *http.Request) {
	var req apitype.ExposeStopRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, fmt.Errorf("decode request: %w", err))
		return
	}
	if err := h.n.Unexpose(r.Context(), req.Name, req.Proto); err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	writeJSON(w, struct{}{})
}

// exposeWait answers once the route in the body is no longer published
// (apitype.RouteGone), or never if the client goes away first.
func (h *Handler) exposeWait(w http.ResponseWriter, r *http.Request) {
	var req apitype.Route
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, fmt.Errorf("decode request: %w", err))
		return
	}
	if reason := h.n.WaitRouteGone(r.Context(), req); reason != "" {
		writeJSON(w, apitype.RouteGone{Reason: reason})
	}
}

// exposeWatch streams one JSON line per request served through this
// device's HTTP routes until the client goes away.
func (h *Handler) exposeWatch(w http.ResponseWriter, r *http.Request) {
	ch := h.n.WatchRequests(r.Context())
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	rc.Flush()
	enc := json.NewEncoder(w)
	for {
		select {
		case <-r.Context().Done():
			return
		case l := <-ch:
			if err := enc.Encode(l); err != nil {
				return
			}
			if err := rc.Flush(); err != nil {
				return
			}
		}
	}
}

func (h *Handler) ping(w http.ResponseWriter, r *http.Request) {
	host := r.URL.Query().Get("host")
	if host == "" {
		writeError(w, http.StatusBadRequest, errors.New("missing host"))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	res, err := h.n.Ping(ctx, host)
	if err != nil {
		writeError(w, http.StatusBadGateway, err)
		return
	}
	writeJSON(w, res)
}

func (h *Handler) netcheck(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	res, err := h.n.Netcheck(ctx)
	if err != nil {
		writeError(w, http.StatusBadGateway, err)
		return
	}
	writeJSON(w, res)
}
