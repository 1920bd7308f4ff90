// Package telemetry serves a process's Prometheus metrics and Go's pprof
// profiles, each on a listener of its own that stays on this machine
// (the --metrics-addr and --debug-addr flags of every role).
//
// Metrics come from per-role registries (prometheus.NewRegistry, never the
// global default one), so several roles in one process (beam server) and
// tests each keep their own; MetricsHandler serves their union.
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"beam.dev/beam/internal/version"
)

// ErrNotLoopback is the error of a listen address off this machine.
var ErrNotLoopback = errors.New("not a loopback address")

// LoopbackAddr checks a listen address that must stay on this machine
// and returns it ready for net.Listen: a port alone (":9464") means
// 127.0.0.1; the host must be a loopback IP or "localhost". Anything else
// is refused with ErrNotLoopback: metrics name every peer and route, and
// profiles show memory, so they are not served to the network (scrape
// through a local agent, or an SSH tunnel).
func LoopbackAddr(addr string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("listen address %q: want HOST:PORT or :PORT: %w", addr, err)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return "", fmt.Errorf("listen address %q: bad port %q", addr, port)
	}
	switch {
	case host == "":
		host = "127.0.0.1"
	case strings.EqualFold(host, "localhost"):
		host = "127.0.0.1"
	default:
		a, err := netip.ParseAddr(host)
		if err != nil || !a.IsLoopback() {
			return "", fmt.Errorf("listen address %q: %w (use 127.0.0.1:PORT or [::1]:PORT)", addr, ErrNotLoopback)
		}
	}
	return net.JoinHostPort(host, port), nil
}

// NewProcessRegistry returns a registry of what every Beam process has
// once, whatever its roles: beam_build_info{version}, the Go runtime's
// statistics as beam_go_* and the process's as beam_process_*.
func NewProcessRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	r := prometheus.WrapRegistererWithPrefix("beam_", reg)
	r.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	info := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "beam_build_info",
		Help:        "Always 1; the version label is Beam's version.",
		ConstLabels: prometheus.Labels{"version": version.String()},
	})
	info.Set(1)
	reg.MustRegister(info)
	return reg
}

// MetricsHandler serves the union of gs in Prometheus's text format (or
// OpenMetrics, when the scraper asks for it).
func MetricsHandler(gs ...prometheus.Gatherer) http.Handler {
	return promhttp.HandlerFor(prometheus.Gatherers(gs), promhttp.HandlerOpts{
		ErrorHandling:     promhttp.ContinueOnError,
		EnableOpenMetrics: true,
	})
}

// PprofHandler serves Go's net/http/pprof pages under /debug/pprof/ (the
// index, every runtime profile, cmdline, a CPU profile, symbol and trace).
func PprofHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux.Handle("/", http.RedirectHandler("/debug/pprof/", http.StatusFound))
	return mux
}

// Server serves one handler on one loopback listener until Close.
type Server struct {
	ln      net.Listener
	srv     *http.Server
	done    chan struct{}
	release func() // undoes the Guard; nil without one
}

// Guard wraps a listener of the process's own, and returns a func that
// undoes what it did once the listener is closed. A daemon's guard keeps
// its peers from the listener (node.Node.GuardListener): a peer that may
// reach the node's ports would otherwise reach its loopback listeners
// through the engine's forwarding.
type Guard func(net.Listener) (guarded net.Listener, release func())

// Listen checks addr with LoopbackAddr, listens there and serves h. name
// ("metrics", "debug") names it in errors and logs. guard, if not nil,
// wraps the listener.
func Listen(ctx context.Context, name, addr string, h http.Handler, guard Guard, logger *slog.Logger) (*Server, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	a, err := LoopbackAddr(addr)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", a)
	if err != nil {
		return nil, fmt.Errorf("%s: listen: %w", name, err)
	}
	s := &Server{
		ln: ln, // the address to report; Serve gets the guarded one
		srv: &http.Server{
			Handler:           h,
			ReadHeaderTimeout: 10 * time.Second,
			ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelDebug),
		},
		done: make(chan struct{}),
	}
	if guard != nil {
		ln, s.release = guard(ln)
	}
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			logger.Warn(name+" listener stopped", "err", err)
		}
	}()
	return s, nil
}

// Addr returns the address the server listens on.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Close stops the server and waits for it.
func (s *Server) Close() error {
	err := s.srv.Close()
	<-s.done
	if s.release != nil {
		s.release()
	}
	return err
}
