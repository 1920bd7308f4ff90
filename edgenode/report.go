package edgenode

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"beam.dev/beam/edge"
	"beam.dev/beam/wire"
)

// reportQueue is how many refusals wait for one target before new ones
// are dropped: a flood of refused requests must not cost the edge more
// than a line each.
const reportQueue = 64

// reportIdle closes a report connection after that long without a line.
const reportIdle = 30 * time.Second

// Reporter tells the devices behind http routes about the requests the
// edge refused itself (401, 403, 429) so that their owners see them in
// `beam expose`: per target, one connection to the route's target that
// starts with wire.EdgeReportPreface and carries wire.EdgeRefusal lines.
// Reports are best effort: lines are dropped when a device is slow or
// unreachable.
//
// Goroutines: one sender per target that had a refusal, counted in wg;
// SetRoutes stops the senders of targets no route has, Close stops all
// and waits.
type Reporter struct {
	dial   func(ctx context.Context, network, addr string) (net.Conn, error)
	logger *slog.Logger
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	hosts  atomic.Pointer[map[string][]netip.AddrPort] // http route host -> targets

	mu      sync.Mutex // guards senders
	senders map[netip.AddrPort]*reportSender
}

type reportSender struct {
	ch   chan wire.EdgeRefusal
	stop context.CancelFunc
}

// NewReporter returns a Reporter that reaches devices through dial (the
// edge's overlay dial). A nil logger discards logs.
func NewReporter(dial func(ctx context.Context, network, addr string) (net.Conn, error), logger *slog.Logger) *Reporter {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	r := &Reporter{dial: dial, logger: logger, senders: map[netip.AddrPort]*reportSender{}}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	r.hosts.Store(&map[string][]netip.AddrPort{})
	return r
}

// SetRoutes takes the targets of the current http routes.
func (r *Reporter) SetRoutes(routes []edge.Route) {
	hosts := map[string][]netip.AddrPort{}
	live := map[netip.AddrPort]bool{}
	for _, rt := range routes {
		if rt.Proto != edge.ProtoHTTP {
			continue
		}
		hosts[rt.Host] = rt.Targets
		for _, t := range rt.Targets {
			live[t] = true
		}
	}
	r.hosts.Store(&hosts)
	r.mu.Lock()
	defer r.mu.Unlock()
	for t, s := range r.senders {
		if !live[t] {
			s.stop()
			delete(r.senders, t)
		}
	}
}

// Observe is an edge.Options.OnRequest hook: it reports l to the devices
// of its route if the edge refused it itself.
func (r *Reporter) Observe(l edge.RequestLog) {
	switch l.Status {
	case http.StatusUnauthorized, http.StatusForbidden, http.StatusTooManyRequests:
	default:
		return
	}
	if l.Target.IsValid() {
		return // the device answered it and logged it itself
	}
	targets := (*r.hosts.Load())[l.Host]
	if len(targets) == 0 {
		return
	}
	line := wire.EdgeRefusal{Time: l.Time, Host: l.Host, Method: l.Method, Path: l.Path, Status: l.Status}
	if l.ClientIP.IsValid() {
		line.Client = l.ClientIP.String()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ctx.Err() != nil {
		return
	}
	for _, t := range targets {
		s := r.senders[t]
		if s == nil {
			ctx, stop := context.WithCancel(r.ctx)
			s = &reportSender{ch: make(chan wire.EdgeRefusal, reportQueue), stop: stop}
			r.senders[t] = s
			r.wg.Go(func() { r.sendLoop(ctx, t, s.ch) })
		}
		select {
		case s.ch <- line:
		default: // the device is behind; drop
		}
	}
}

// sendLoop writes the refusals for target t until ctx ends.
func (r *Reporter) sendLoop(ctx context.Context, t netip.AddrPort, ch <-chan wire.EdgeRefusal) {
	var c net.Conn
	var enc *json.Encoder
	idle := time.NewTimer(reportIdle)
	defer idle.Stop()
	closeConn := func() {
		if c != nil {
			c.Close()
			c, enc = nil, nil
		}
	}
	defer closeConn()
	for {
		select {
		case <-ctx.Done():
			return
		case <-idle.C:
			closeConn()
		case line := <-ch:
			idle.Reset(reportIdle)
			if c == nil {
				dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				nc, err := r.dial(dctx, "tcp", t.String())
				cancel()
				if err != nil {
					r.logger.Debug("edge report: dial", "target", t, "err", err)
					continue
				}
				if _, err := io.WriteString(nc, wire.EdgeReportPreface); err != nil {
					nc.Close()
					continue
				}
				c, enc = nc, json.NewEncoder(nc)
			}
			c.SetWriteDeadline(time.Now().Add(10 * time.Second))
			if err := enc.Encode(line); err != nil {
				r.logger.Debug("edge report: write", "target", t, "err", err)
				closeConn()
			}
		}
	}
}

// Close stops every sender and waits for them.
func (r *Reporter) Close() {
	r.mu.Lock()
	r.cancel()
	r.mu.Unlock()
	r.wg.Wait()
}
