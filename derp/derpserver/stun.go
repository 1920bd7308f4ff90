package derpserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/pion/stun/v3"

	"beam.dev/beam/derp"
)

// ServeSTUN answers STUN Binding requests arriving on pc with a Binding
// success response that carries the source address as XOR-MAPPED-ADDRESS.
// Anything else is ignored, and so are requests past a per-source rate
// limit (see stunRate), so that spoofed requests cannot turn the
// responder into a reflector. It returns nil once ctx is done (leaving
// pc's read deadline in the past) and an error if reading from pc fails
// otherwise. It does not close pc. logger may be nil.
//
// Each call has its own limiter; Server.ServeSTUN shares the server's
// between its responders and counts the requests it drops.
func ServeSTUN(ctx context.Context, pc net.PacketConn, logger *slog.Logger) error {
	return serveSTUN(ctx, pc, logger, newSTUNLimiter(stunRate, stunBurst, stunMaxSources), nil)
}

// ServeSTUN is like the function ServeSTUN, with one rate limiter for all
// of s's responders and the requests it drops counted in
// Stats.STUNDropped. It logs to the server's logger.
func (s *Server) ServeSTUN(ctx context.Context, pc net.PacketConn) error {
	return serveSTUN(ctx, pc, s.opts.Logger, s.stunLimit, &s.stunDropped)
}

// serveSTUN is ServeSTUN with limiter lim; dropped (if not nil) counts the
// requests lim refused.
func serveSTUN(ctx context.Context, pc net.PacketConn, logger *slog.Logger, lim *stunLimiter, dropped *atomic.Int64) error {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = logger.With("component", "stun")
	stop := context.AfterFunc(ctx, func() { pc.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	buf := make([]byte, 2048)
	for {
		n, addr, err := pc.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
				continue
			}
			return fmt.Errorf("stun: read: %w", err)
		}
		ap, ok := addrPort(addr)
		if !ok {
			continue
		}
		resp, ok := stunResponse(buf[:n], ap)
		if !ok {
			continue
		}
		if !lim.allow(ap.Addr()) {
			if dropped != nil {
				dropped.Add(1)
			}
			continue
		}
		if _, err := pc.WriteTo(resp, addr); err != nil {
			logger.Debug("write response", "to", addr.String(), "err", err)
		}
	}
}

// addrPort returns addr as a netip.AddrPort.
func addrPort(addr net.Addr) (netip.AddrPort, bool) {
	if a, ok := addr.(*net.UDPAddr); ok {
		return a.AddrPort(), true
	}
	ap, err := netip.ParseAddrPort(addr.String())
	return ap, err == nil
}

// stunResponse returns the answer to a Binding request from ap.
func stunResponse(p []byte, ap netip.AddrPort) ([]byte, bool) {
	if !derp.IsSTUN(p) {
		return nil, false
	}
	m := &stun.Message{Raw: p}
	if err := m.Decode(); err != nil || m.Type != stun.BindingRequest {
		return nil, false
	}
	if m.Contains(stun.AttrFingerprint) && stun.Fingerprint.Check(m) != nil {
		return nil, false
	}
	return derp.STUNBindingResponse(m.TransactionID, ap), true
}
