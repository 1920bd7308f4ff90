package edgenode

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"

	"beam.dev/beam/edge"
	"beam.dev/beam/wire"
)

// Options configures a Server.
type Options struct {
	// Edge serves the routes. Required.
	Edge *edge.Edge
	// HTTPAddr serves plain HTTP (and h2c); empty means none.
	HTTPAddr string
	// HTTPSAddr serves TLS (terminated with GetCertificate, or passed
	// through by SNI for "tls" routes); empty means none.
	HTTPSAddr string
	// GetCertificate returns certificates for TLS termination; required
	// with HTTPSAddr.
	GetCertificate func(*tls.ClientHelloInfo) (*tls.Certificate, error)
	// BindHost is the address tcp and udp route ports listen on; empty
	// means all addresses.
	BindHost string
	// Reporter, if not nil, learns the http routes on every Update so it
	// can report refused requests to their devices.
	Reporter *Reporter
	// Logger receives logs; nil discards them.
	Logger *slog.Logger
}

// Server runs an edge's listeners: fixed HTTP/HTTPS listeners and one
// listener per public TCP or UDP port, opened and closed as routes come
// and go.
//
// Goroutines: one per listener, each counted in wg and stopped by closing
// its context (Close, or the route going away).
type Server struct {
	opts   Options
	logger *slog.Logger
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu    sync.Mutex                    // guards the following fields
	ports map[string]context.CancelFunc // "tcp:20001" -> stop
	// Addrs are the actual addresses of the fixed listeners (for tests
	// that listen on port 0).
	addrs map[string]net.Addr
}

// New starts the fixed listeners.
func New(opts Options) (*Server, error) {
	if opts.Edge == nil {
		return nil, errors.New("edgenode: Options.Edge is required")
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{opts: opts, logger: logger, ports: map[string]context.CancelFunc{}, addrs: map[string]net.Addr{}}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	if opts.HTTPAddr != "" {
		ln, err := net.Listen("tcp", opts.HTTPAddr)
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("edge http listen: %w", err)
		}
		s.addrs["http"] = ln.Addr()
		s.serve("http", func() error { return opts.Edge.ServeHTTPListener(s.ctx, ln) })
	}
	if opts.HTTPSAddr != "" {
		if opts.GetCertificate == nil {
			s.Close()
			return nil, errors.New("edgenode: HTTPSAddr needs GetCertificate")
		}
		ln, err := net.Listen("tcp", opts.HTTPSAddr)
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("edge https listen: %w", err)
		}
		s.addrs["https"] = ln.Addr()
		s.serve("https", func() error { return opts.Edge.ServeTLSListener(s.ctx, ln, opts.GetCertificate) })
	}
	return s, nil
}

// Addr returns the address of the "http" or "https" listener, or nil.
func (s *Server) Addr(name string) net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addrs[name]
}

func (s *Server) serve(name string, fn func() error) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := fn(); err != nil && s.ctx.Err() == nil && !errors.Is(err, context.Canceled) && !errors.Is(err, edge.ErrClosed) {
			s.logger.Warn("edge listener stopped", "listener", name, "err", err)
		}
	}()
}

// Update installs the routes from a netmap: it sets the edge's route table
// and opens or closes TCP and UDP port listeners to match. Routes that do
// not parse are skipped (and reported in the error); the rest apply.
func (s *Server) Update(in []wire.EdgeRoute) error {
	routes, convErr := Routes(in)
	setErr := s.opts.Edge.SetRoutes(routes)
	if s.opts.Reporter != nil {
		s.opts.Reporter.SetRoutes(routes)
	}
	want := map[string]uint16{}
	for _, r := range routes {
		switch r.Proto {
		case edge.ProtoTCP, edge.ProtoUDP:
			want[string(r.Proto)+":"+strconv.Itoa(int(r.PublicPort))] = r.PublicPort
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ctx.Err() != nil {
		return errors.New("edgenode: closed")
	}
	for k, stop := range s.ports {
		if _, ok := want[k]; !ok {
			stop()
			delete(s.ports, k)
		}
	}
	var errs []error
	for k, port := range want {
		if _, ok := s.ports[k]; ok {
			continue
		}
		addr := net.JoinHostPort(s.opts.BindHost, strconv.Itoa(int(port)))
		ctx, cancel := context.WithCancel(s.ctx)
		if k[:3] == "tcp" {
			ln, err := net.Listen("tcp", addr)
			if err != nil {
				cancel()
				errs = append(errs, fmt.Errorf("listen tcp %s: %w", addr, err))
				continue
			}
			s.serve(k, func() error { return s.opts.Edge.ServeTCP(ctx, port, ln) })
		} else {
			pc, err := net.ListenPacket("udp", addr)
			if err != nil {
				cancel()
				errs = append(errs, fmt.Errorf("listen udp %s: %w", addr, err))
				continue
			}
			s.serve(k, func() error { return s.opts.Edge.ServeUDP(ctx, port, pc) })
		}
		s.ports[k] = cancel
	}
	return errors.Join(append([]error{convErr, setErr}, errs...)...)
}

// Close stops every listener and waits for them.
func (s *Server) Close() error {
	s.cancel()
	s.wg.Wait()
	return nil
}
